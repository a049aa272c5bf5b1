"""The heart of the signaling server: connections, presence, sessions and routing.

The hub knows nothing of aiohttp: a connection is anything with ``send_frame`` and
``close`` (see :class:`Transport`), so the rules here are tested with real websockets
and could serve another transport unchanged. Every frame a client sends goes through
:meth:`Hub.handle_frame`: decoded strictly, rate-limited, authorized against the
permission table, checked against the session state machine, and only then acted on.
Any refusal is an ``error`` frame to the sender; nothing else is disturbed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from protocol import identity
from protocol.codec import MAX_FRAME_BYTES, Message, Sender, peek_rid, wire_size
from protocol.enums import (
    CloseReason,
    DeviceAck,
    LiveSupportStatus,
    Mode,
    NotificationState,
    RejectReason,
    Role,
    SdpType,
    SessionState,
    derive_status,
)
from protocol.errors import (
    CloseCode,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.messages import (
    SIGNALING,
    AuthChallenge,
    AuthDevice,
    AuthOk,
    AuthTechnician,
    CallConnected,
    CallHangup,
    DeviceInfo,
    DevicesSnapshot,
    DevicesSubscribe,
    DeviceStatus,
    DevicesUnsubscribe,
    DeviceUpdate,
    Error,
    IceServer,
    NotifyAck,
    NotifyAnswer,
    NotifyDeliver,
    NotifySend,
    NotifySent,
    NotifyUpdate,
    Ok,
    SessionAccept,
    SessionAttach,
    SessionClose,
    SessionConsent,
    SessionInvite,
    SessionReject,
    SessionResume,
    SessionStart,
    SessionUpdate,
    SignalCandidate,
    SignalSdp,
    StatusReport,
    TechnicianCard,
)
from protocol.permissions import REQUIRED_ACTION, UNSCOPED_ROLES, authorize
from protocol.session import FINAL_STATES, Party, SessionEvent, SessionMachine
from signaling_server import limits, turn
from signaling_server.bus import Event, LocalBus, make_bus
from signaling_server.config import ServerConfig
from signaling_server.store import (
    STATE_RANK,
    Conflict,
    Device,
    NotificationRow,
    SessionRow,
    Store,
    Technician,
    new_id,
    now_ms,
    token_hash,
)
from signaling_server.turn import TurnSettings
from signaling_server.writebehind import WriteBehind

log = logging.getLogger(__name__)

#: Modes offered for a requested mode: video can be taken as voice or text, voice as text.
_OFFERED: dict[Mode, tuple[Mode, ...]] = {
    Mode.TEXT: (Mode.TEXT,),
    Mode.VOICE: (Mode.VOICE, Mode.TEXT),
    Mode.VIDEO: (Mode.VIDEO, Mode.VOICE, Mode.TEXT),
}

#: Notification states only move forward (the store writes them in this order too).
_NOTE_RANK = STATE_RANK
_READ_OR_ANSWERED = frozenset({NotificationState.READ, NotificationState.ANSWERED})


class Transport(Protocol):
    """What the hub needs of a connection."""

    async def send_frame(self, frame: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class TokenBucket:
    """Per-connection rate limit: ``rate`` messages a second, bursts up to ``burst``."""

    # One per connection: slots instead of a __dict__ (docs/scale.md, "One process").
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


_conn_ids = itertools.count(1)


# One per connection: slots instead of a __dict__ (docs/scale.md, "One process").
@dataclass(eq=False, slots=True)
class Connection:
    transport: Transport
    address: str
    bucket: TokenBucket
    conn_id: int = field(default_factory=lambda: next(_conn_ids))
    nonce: str = field(default_factory=lambda: identity.b64encode(secrets.token_bytes(32)))
    role: Role | None = None
    principal_id: str = ""
    technician: Technician | None = None
    device: Device | None = None
    subscribed: bool = False
    #: SHA-256 of the bearer token a console authenticated with (to end it on logout).
    token_hash: str = ""
    #: Ends a console's socket when its bearer token runs out.
    token_expiry: asyncio.TimerHandle | None = None
    violations: int = 0
    closed: bool = False
    #: The last device.status sent on this connection (a device's own).
    status_sent: DeviceStatus | None = None
    #: Snapshots of the devices being read for this console, and the device updates
    #: held meanwhile (device id -> its latest frame), sent once they are out: a
    #: snapshot read before a change was committed, sent after that change's update,
    #: would undo it on the console.
    snapshots: int = 0
    held_updates: dict[str, str] | None = None

    @property
    def sender(self) -> Sender:
        if self.role is Role.DEVICE:
            return Sender.DEVICE
        if self.role is None:
            return Sender.CLIENT
        return Sender.CONSOLE

    @property
    def party(self) -> Party:
        return Party.DEVICE if self.role is Role.DEVICE else Party.TECHNICIAN


@dataclass(eq=False)
class LiveSession:
    """A session the hub is running. Metadata only: no chat passes through here."""

    id: str
    technician: Technician
    device_id: str
    device_group: str
    mode: Mode
    offered_modes: tuple[Mode, ...]
    reason: str
    created_at_ms: int
    machine: SessionMachine = field(default_factory=SessionMachine)
    accepted_mode: Mode | None = None
    accepted_at_ms: int | None = None
    offer_fingerprint: str | None = None
    answer_fingerprint: str | None = None
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    #: The technician's newest offer, kept while the device is away: a network change
    #: takes the device's signaling link along with the media path, and the offer
    #: replacing the lost connection must reach the device when it is back.
    pending_offer: SignalSdp | None = None
    #: The device group's relay-only policy (kept current by group_policy_changed).
    relay_only: bool = False

    def cancel_timer(self, name: str) -> None:
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()


@dataclass(slots=True)
class RemoteSession:
    """A live session another node owns (docs/scale.md, "Several nodes")."""

    id: str
    device_id: str
    technician_id: str
    node: str
    open: bool


class RelayTransport:
    """A client connected to another node, as the node owning its session sees it:
    what is sent to it goes over the bus to that node, which sends it on."""

    def __init__(self, hub: Hub, node: str, conn_id: int) -> None:
        self.hub, self.node, self.conn_id = hub, node, conn_id

    async def send_frame(self, frame: str) -> None:
        await self.hub.bus.publish_node(
            self.node, {"k": "reply", "conn": self.conn_id, "frame": frame}
        )

    async def close(self, code: int, reason: str) -> None:
        await self.hub.bus.publish_node(
            self.node, {"k": "close", "conn": self.conn_id, "code": int(code), "reason": reason}
        )


Handler = Callable[[Connection, Any], Awaitable[None]]


#: Session states whose updates carry the member's ICE servers (see Hub._with_ice).
CALL_STATES = frozenset({SessionState.CONNECTING, SessionState.IN_CALL})
#: Notification deliveries sent between two yields to the event loop.
NOTIFY_BATCH = 500


class Hub:
    def __init__(self, store: Store, config: ServerConfig, server_fingerprint: str) -> None:
        self.store = store
        self.config = config
        self.server_fingerprint = server_fingerprint
        self.connections: set[Connection] = set()
        self.devices_online: dict[str, Connection] = {}
        self.consoles: dict[str, set[Connection]] = {}  # technician id -> connections
        #: The fan-out index: subscribed consoles by the device groups they see, and
        #: those that see every group (unscoped roles); what each was indexed under.
        self._watchers: dict[str, set[Connection]] = {}
        self._watch_all: set[Connection] = set()
        self._watch_keys: dict[Connection, tuple[str, ...]] = {}
        self.sessions: dict[str, LiveSession] = {}
        self.device_sessions: dict[str, str] = {}  # device id -> its one live session
        #: Notification progress and last-seen times, written in batches.
        self.writes = WriteBehind(store)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set by shutdown(): no new background task after it (see _spawn).
        self._shut_down = False
        self._handlers: dict[type[Message], Handler] = {
            StatusReport: self._on_status_report,
            DevicesSubscribe: self._on_subscribe,
            DevicesUnsubscribe: self._on_unsubscribe,
            SessionStart: self._on_session_start,
            SessionAccept: self._on_session_accept,
            SessionReject: self._on_session_reject,
            SessionConsent: self._on_session_consent,
            SessionResume: self._on_session_resume,
            SessionAttach: self._on_session_attach,
            SessionClose: self._on_session_close,
            CallConnected: self._on_call_connected,
            CallHangup: self._on_call_hangup,
            SignalSdp: self._on_signal,
            SignalCandidate: self._on_signal,
            NotifySend: self._on_notify_send,
            NotifyAck: self._on_notify_ack,
            NotifyAnswer: self._on_notify_answer,
        }
        self.metrics: dict[str, int] = {"frames_in": 0, "frames_refused": 0, "frames_out": 0}
        #: Where calls are relayed, and the secret credentials are minted from.
        self.turn: TurnSettings | None = (
            TurnSettings(config.turn_urls, config.turn_secret, config.turn_ttl_s)
            if config.turn_urls
            else None
        )
        #: Several nodes (docs/scale.md): the bus, and what it told us of the others.
        self.bus: LocalBus = make_bus(config.redis_url, refresh_s=config.bus_refresh_s)
        self.remote_devices: dict[str, tuple[str, int]] = {}  # device -> (node, conn id)
        #: device -> its group, from the others' ``online``: a device's group is set at
        #: enrolment and never changes (see _fan_out_remote).
        self.remote_groups: dict[str, str] = {}
        self.remote_sessions: dict[str, RemoteSession] = {}
        self.remote_device_sessions: dict[str, str] = {}  # device id -> session id
        self.remote_consoles: dict[str, dict[int, str]] = {}  # technician -> conn -> node
        #: Our own authenticated connections by id: replies from other nodes find them.
        self.conns_by_id: dict[int, Connection] = {}
        #: Requests forwarded to another node and not answered yet, by that node: if it
        #: dies first, their senders hear so instead of waiting for a reply never sent.
        self.forwarded: dict[str, dict[tuple[int, int], Connection]] = {}

    # -- connection lifecycle -------------------------------------------------------

    async def connect(self, transport: Transport, address: str) -> Connection:
        conn = Connection(
            transport, address, TokenBucket(self.config.rate_per_s, self.config.rate_burst)
        )
        self.connections.add(conn)
        await self.send(
            conn,
            AuthChallenge(
                nonce=conn.nonce,
                server_time_ms=now_ms(),
                server_fingerprint=self.server_fingerprint,
            ),
        )
        return conn

    async def disconnect(self, conn: Connection) -> None:
        conn.closed = True
        if conn.token_expiry is not None:
            conn.token_expiry.cancel()
        self.connections.discard(conn)
        self._unwatch(conn)
        self.conns_by_id.pop(conn.conn_id, None)
        if conn.role is Role.DEVICE and conn.device is not None:
            device_id = conn.device.id
            if self.devices_online.get(device_id) is conn:
                del self.devices_online[device_id]
                if self.bus.remote:
                    await self._bus_call(self.bus.clear_presence(device_id))
                    await self._bus_call(
                        self.bus.publish_all(
                            {"k": "offline", "device": device_id, "node": self.bus.node_id}
                        )
                    )
                self._start_grace(device_id=device_id, lost=Party.DEVICE)
                # Written behind, in batches (a fleet leaving at once queued a
                # transaction each behind the pool); shutdown() flushes it.
                self.writes.touch(device_id, now_ms())
                # As read at authentication and kept current since (reports, policy
                # changes), with the last-seen time being written: no read per leave.
                left = dataclasses.replace(conn.device, last_seen_ms=now_ms())
                await self._fan_out_device(device_id, device=left)
        elif conn.technician is not None:
            tech_id = conn.technician.id
            conns = self.consoles.get(tech_id, set())
            conns.discard(conn)
            if self.bus.remote:
                await self._bus_call(
                    self.bus.publish_all(
                        {"k": "tech_offline", "tech": tech_id, "conn": conn.conn_id}
                    )
                )
            if not conns and not self.remote_consoles.get(tech_id):
                self.consoles.pop(tech_id, None)
                for session in list(self.sessions.values()):
                    if session.technician.id == tech_id:
                        self._start_grace(session=session, lost=Party.TECHNICIAN)

    def compact(self) -> None:
        """Rebuild the tables a fleet grew, once it left (a dict or set keeps its
        size after deletions; see limits.shrink). Called by the open-files watcher
        before it trims the heap."""
        for table in (
            self.connections,
            self.devices_online,
            self.conns_by_id,
            self._watch_keys,
            self.remote_devices,
        ):
            limits.shrink(table)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop the timers and the background tasks; the store closes after this.

        A task cancelled inside a store call leaves SQLAlchemy terminating its
        connection in a shielded task of its own; if the store closed under that, the
        event loop could never finish. So tasks in flight (a session being ended on a
        lost member) may finish first, and cancelled ones are awaited. Then what is
        written behind (notification progress, last-seen times) is flushed.
        """
        self._shut_down = True
        for session in self.sessions.values():
            for handle in session.timers.values():
                handle.cancel()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace_s)
        await self.writes.close()

    # -- frames in and out ----------------------------------------------------------

    async def send(self, conn: Connection, message: Message) -> None:
        if not conn.closed:
            if isinstance(message, SessionUpdate) and message.state in CALL_STATES:
                message = self._with_ice(conn, message)
            await self._send_encoded(conn, SIGNALING.encode(message))

    def _with_ice(self, conn: Connection, update: SessionUpdate) -> SessionUpdate:
        """A ``connecting`` update asks its receiver to build a peer connection: it
        carries that member's own TURN credential, minted now, and the group's
        relay-only policy as it stands now (a change applies from the next call).
        ``in_call`` updates carry a fresh one too: a connection that replaces a lost
        one (path loss) needs a credential that has not expired, and the members
        hear an update after every reconnect of theirs (``session.attach``).
        Nothing here awaits: the frames of a broadcast go out back to back."""
        return self._with_ice_for(conn.party, update)

    def _with_ice_for(self, party: Party, update: SessionUpdate) -> SessionUpdate:
        session = self.sessions.get(update.session_id)
        relay_only = session is not None and session.relay_only
        servers: tuple[IceServer, ...] = ()
        if self.turn is not None:
            who = f"{update.session_id}.{party.value}"
            servers = (turn.mint(self.turn, who),)
        return dataclasses.replace(update, ice_servers=servers, relay_only=relay_only)

    async def _send_encoded(self, conn: Connection, frame: str) -> None:
        """Send a frame encoded once for many receivers (a fan-out)."""
        if conn.closed:
            return
        self.metrics["frames_out"] += 1
        try:
            await conn.transport.send_frame(frame)
        except (ConnectionError, RuntimeError) as exc:
            # The socket went away under us; its reader will unregister it.
            log.debug("send to connection %s failed: %s", conn.conn_id, exc)

    async def _refuse(self, conn: Connection, error: ProtocolError, rid: int | None) -> None:
        self.metrics["frames_refused"] += 1
        await self.send(conn, Error(code=error.code, message=error.message[:500], rid=rid))

    async def handle_frame(self, conn: Connection, frame: str | bytes) -> None:
        """Everything a client sends comes through here."""
        self.metrics["frames_in"] += 1
        if not conn.bucket.take():
            conn.violations += 1
            if conn.violations >= self.config.max_rate_violations:
                await conn.transport.close(CloseCode.RATE_LIMITED, "too many messages")
                return
            await self._refuse(
                conn, LocalProtocolError(ErrorCode.RATE_LIMITED, "slow down"), peek_rid(frame)
            )
            return
        # Until the frame decodes, its rid is only a guess; it lets a client match the
        # refusal of a malformed request to the request it sent.
        rid: int | None = peek_rid(frame)
        try:
            try:
                message = SIGNALING.decode(frame, conn.sender)
            except RemoteProtocolError as refusal:
                if conn.role is not None and refusal.code is ErrorCode.UNKNOWN_TYPE:
                    await self._audit_wrong_sender(conn, frame, refusal)
                raise
            rid = message.rid
            if conn.role is None:
                await self._authenticate(conn, message)
                return
            action = REQUIRED_ACTION.get(type(message))
            if action is None:
                raise LocalProtocolError(
                    ErrorCode.UNKNOWN_TYPE, f"{message.TYPE!r} is not a request"
                )
            try:
                authorize(conn.role, action)
            except ProtocolError as denial:
                await self._audit_denial(conn, message, denial)
                raise
            if self.bus.remote and await self._forward(conn, message, frame):
                return
            try:
                await self._handlers[type(message)](conn, message)
            except ProtocolError as refusal:
                # NOT_FOUND keeps other people's sessions and notifications secret
                # from the sender, but an attempt on one that exists is a denial.
                if refusal.code is ErrorCode.NOT_FOUND and await self._foreign_target(
                    conn, message
                ):
                    await self._audit_denial(conn, message, refusal)
                raise
        except ProtocolError as error:
            if error.close_code is not None:
                await self._refuse(conn, error, rid)
                await conn.transport.close(error.close_code, error.code.value)
                return
            await self._refuse(conn, error, rid)
        except Exception:
            # Our bug (or the store's), not the client's: say so, keep the connection
            # and every other one serving.
            log.exception("internal error handling a frame from connection %s", conn.conn_id)
            internal = LocalProtocolError(ErrorCode.INTERNAL, "internal server error")
            await self._refuse(conn, internal, rid)
        else:
            conn.violations = 0

    async def _audit_denial(
        self, conn: Connection, message: Message, denial: ProtocolError
    ) -> None:
        target = (
            getattr(message, "device_id", "")
            or _session_id_of(message)
            or getattr(message, "notification_id", "")
        )
        await self._store_call(
            self.store.audit(
                conn.principal_id,
                message.TYPE,
                target=str(target),
                outcome=denial.code.value,
                role=conn.role.value if conn.role else None,
            )
        )

    async def _foreign_target(self, conn: Connection, message: Message) -> bool:
        """Whether the session or notification a request names exists and is someone
        else's (a member's attempt on its own ended session is no denial)."""
        session_id = _session_id_of(message)
        if session_id:
            if session_id in self.sessions:
                return True  # live, and _member_session found the sender no member
            row = await self.store.session(session_id)
            return row is not None and conn.principal_id not in (row.technician_id, row.device_id)
        notification_id = getattr(message, "notification_id", "")
        if isinstance(notification_id, str) and notification_id:
            return await self.store.notification_exists(notification_id)
        return False

    async def _audit_wrong_sender(
        self, conn: Connection, frame: str | bytes, refusal: ProtocolError
    ) -> None:
        """A well-formed request of a type this kind of client may not send (a device's
        ``session.start``, a console's ``session.accept``) is a permission denial like
        any other and is audited as one. The codec refuses it before the permission
        table is read, so it is decoded again here, without the sender check; frames
        that do not decode at all are garbage, not attempts, and are not recorded."""
        try:
            attempted = SIGNALING.decode(frame)
        except ProtocolError:
            return
        await self._audit_denial(conn, attempted, refusal)

    async def _store_call(self, awaitable: Awaitable[Any]) -> Any:
        """Store writes whose failure must not take the connection down with it."""
        try:
            return await awaitable
        except Exception:
            log.exception("store write failed")
            return None

    # -- authentication -------------------------------------------------------------

    async def _authenticate(self, conn: Connection, message: Message) -> None:
        fail = CloseCode.AUTH_FAILED
        if isinstance(message, AuthDevice):
            device = await self.store.device(message.device_id)
            if device is None:
                raise LocalProtocolError(
                    ErrorCode.UNAUTHENTICATED, "unknown device", close_code=fail
                )
            if device.revoked:
                await self.store.audit(device.id, "auth.device", outcome="revoked")
                raise LocalProtocolError(
                    ErrorCode.REVOKED, "this device was revoked", close_code=CloseCode.REVOKED
                )
            try:
                identity.verify_challenge(
                    identity.load_public_key(device.public_key),
                    message.signature,
                    nonce_b64=conn.nonce,
                    device_id=device.id,
                    server_fingerprint=self.server_fingerprint,
                )
            except ProtocolError as exc:
                await self.store.audit(device.id, "auth.device", outcome="bad_signature")
                raise LocalProtocolError(exc.code, exc.message, close_code=fail) from None
            # Each nonce signs one login only: a replayed answer meets a fresh nonce.
            conn.nonce = ""
            conn.role = Role.DEVICE
            conn.principal_id = device.id
            conn.device = device
            previous = self.devices_online.get(device.id)
            self.devices_online[device.id] = conn
            if previous is not None:
                await previous.transport.close(CloseCode.REPLACED, "connected again elsewhere")
            self._cancel_grace(device_id=device.id)
            if self.bus.remote:
                await self._announce_device(conn)
            await self.send(conn, self._auth_ok(device.id, Role.DEVICE, device.name, message.rid))
            await self._send_device_status(device.id)
            await self._fan_out_device(device.id, device=device)
            await self._deliver_pending(conn)
            await self._resend_session_state(conn)
            return
        if isinstance(message, AuthTechnician):
            tech = await self.store.technician_for_token(message.token)
            if tech is None:
                raise LocalProtocolError(
                    ErrorCode.UNAUTHENTICATED, "invalid or expired token", close_code=fail
                )
            conn.role = tech.role
            conn.principal_id = tech.id
            conn.technician = tech
            conn.token_hash = token_hash(message.token)
            expires_at_ms = await self.store.token_expires_at_ms(message.token)
            if expires_at_ms is not None:
                # A token's lifetime bounds the socket opened with it, not only the
                # REST calls: an expired console must log in again.
                conn.token_expiry = self._later(
                    max(0.0, (expires_at_ms - now_ms()) / 1000),
                    conn.transport.close,
                    CloseCode.AUTH_FAILED,
                    "token expired",
                )
            conn.nonce = ""
            self.consoles.setdefault(tech.id, set()).add(conn)
            for session in self.sessions.values():
                if session.technician.id == tech.id:
                    session.cancel_timer("technician_grace")
            await self.send(conn, self._auth_ok(tech.id, tech.role, tech.display_name, message.rid))
            await self._resend_session_state(conn)
            if self.bus.remote:
                self.conns_by_id[conn.conn_id] = conn
                await self._bus_call(
                    self.bus.publish_all(
                        {
                            "k": "tech_online",
                            "tech": tech.id,
                            "node": self.bus.node_id,
                            "conn": conn.conn_id,
                        }
                    )
                )
            return
        raise LocalProtocolError(ErrorCode.UNAUTHENTICATED, "authenticate first")

    def _auth_ok(self, principal_id: str, role: Role, name: str, rid: int | None) -> AuthOk:
        return AuthOk(
            principal_id=principal_id,
            role=role,
            display_name=name,
            heartbeat_s=max(1, math.ceil(self.config.heartbeat_s)),
            # Rounded up: a client must never believe it has less time than it has.
            invite_timeout_s=max(1, math.ceil(self.config.invite_timeout_s)),
            rid=rid,
        )

    # -- device status --------------------------------------------------------------

    def _device_status(self, device: Device) -> LiveSupportStatus:
        session_id = self.device_sessions.get(device.id)
        session = self.sessions.get(session_id) if session_id else None
        session_open = session is not None and session.machine.is_open
        if session is None and self.remote_device_sessions:
            remote = self.remote_sessions.get(self.remote_device_sessions.get(device.id, ""))
            session_open = remote is not None and remote.open
        return derive_status(
            service_installed=device.service_installed,
            service_enabled=device.service_enabled,
            policy_enabled=device.policy_enabled,
            session_open=session_open,
        )

    def _session_id_for(self, device_id: str) -> str | None:
        """The device's one live session, whichever node owns it."""
        return self.device_sessions.get(device_id) or self.remote_device_sessions.get(device_id)

    def _is_online(self, device_id: str) -> bool:
        return device_id in self.devices_online or device_id in self.remote_devices

    @staticmethod
    def _allowed_modes(device: Device) -> tuple[Mode, ...]:
        return tuple(m for m in Mode if m in device.policy_modes and m in device.chat_services)

    def _device_info(self, device: Device) -> DeviceInfo:
        return DeviceInfo(
            device_id=device.id,
            name=device.name,
            group_id=device.group_id,
            group_name=device.group_name,
            model=device.model,
            os=device.os,
            status=self._device_status(device),
            online=self._is_online(device.id),
            last_seen_ms=device.last_seen_ms,
            allowed_modes=self._allowed_modes(device),
            public_key=device.public_key,
            session_id=self._session_id_for(device.id),
        )

    async def _send_device_status(self, device_id: str) -> None:
        conn = self.devices_online.get(device_id)
        if conn is None or conn.device is None:
            return
        device = conn.device
        status = DeviceStatus(
            status=self._device_status(device),
            policy_enabled=device.policy_enabled,
            allowed_modes=self._allowed_modes(device),
            session_id=self._session_id_for(device_id),
        )
        # The device knows already: a report that changed nothing (every connect
        # has one) costs no frame, and a frame is a send() on a TLS socket.
        if status != conn.status_sent:
            conn.status_sent = status
            await self.send(conn, status)

    async def _fan_out_device(
        self, device_id: str, *, publish: bool = True, device: Device | None = None
    ) -> None:
        """Tell every subscribed console that can see this device how it is now (on
        every node: the others read the device afresh from the shared store).
        ``device``: as just read, if the caller has it."""
        online = self.devices_online.get(device_id)
        known = device or (online.device if online is not None else None)
        # Nobody here watches its group: no read, no frame (most devices, most times).
        if known is None or self._watchers_of(known.group_id):
            # A device online here is known (its record as authenticated, kept
            # current by its reports and policy changes): read only the others.
            device = known or await self.store.device(device_id)
            if device is not None:
                await self._fan_out(device)
        if publish:
            await self._publish_device(device_id, known.group_id if known else None)

    async def _publish_device(self, device_id: str, group_id: str | None) -> None:
        """Tell the other nodes the device changed (they read it from the store)."""
        if not self.bus.remote:
            return
        event: Event = {"k": "device", "device": device_id}
        if group_id is not None:
            # Its group lets a node where nobody watches that group skip the read.
            event["group"] = group_id
        await self._bus_call(self.bus.publish_all(event))

    async def _fan_out(self, device: Device) -> None:
        """O(watchers): the index holds, per group, the subscribed consoles in scope."""
        watchers = self._watchers_of(device.group_id)
        if not watchers:
            return
        frame = SIGNALING.encode(DeviceUpdate(device=self._device_info(device)))
        for conn in watchers:
            if conn.snapshots:
                if conn.held_updates is None:
                    conn.held_updates = {}
                conn.held_updates[device.id] = frame
            else:
                await self._send_encoded(conn, frame)

    def _watchers_of(self, group_id: str) -> list[Connection]:
        return [*self._watch_all, *self._watchers.get(group_id, ())]

    def _watch(self, conn: Connection) -> None:
        """(Re-)index a subscribed console under the groups its technician sees."""
        self._unwatch(conn)
        tech = conn.technician
        if tech is None or not conn.subscribed:
            return
        if tech.role in UNSCOPED_ROLES:
            self._watch_all.add(conn)
            self._watch_keys[conn] = ()
            return
        keys = tuple(tech.groups)
        for group_id in keys:
            self._watchers.setdefault(group_id, set()).add(conn)
        self._watch_keys[conn] = keys

    def _unwatch(self, conn: Connection) -> None:
        keys = self._watch_keys.pop(conn, None)
        if keys is None:
            return
        self._watch_all.discard(conn)
        for group_id in keys:
            watchers = self._watchers.get(group_id)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self._watchers[group_id]

    async def _on_status_report(self, conn: Connection, msg: StatusReport) -> None:
        assert conn.device is not None
        known = conn.device
        reported = (msg.service_installed, msg.service_enabled, tuple(msg.chat_services))
        stored = (known.service_installed, known.service_enabled, tuple(known.chat_services))
        changed = (reported, msg.name, msg.model, msg.os) != (
            stored,
            known.name,
            known.model,
            known.os,
        )
        # What a device reports on every connect, unchanged: no write (a fleet
        # reconnecting after a restart would wait on the database for nothing); its
        # last-seen time is written when it leaves.
        device = known
        if changed:
            device = conn.device = self.store.reported(
                known,
                service_installed=msg.service_installed,
                service_enabled=msg.service_enabled,
                chat_services=msg.chat_services,
                name=msg.name,
                model=msg.model,
                os=msg.os,
            )
            # The consoles here hear of it first, the store follows: a report is the
            # device's live state, and the write (a round trip to the database thread:
            # 2.4 ms at p50, 26 ms at p99 with 18,000 devices held, measured) was most
            # of a status change's way to them. Other nodes read the device from the
            # store: they hear of it once it is written.
            await self._fan_out_device(device.id, device=device, publish=False)
            try:
                await self.writes.write_report(device)
            except Exception:
                # Not stored: the consoles here go back to what is.
                conn.device = known
                await self._fan_out_device(known.id, device=known, publish=False)
                raise
        # A service switched off during a session ends it: the user withdrew consent.
        session = self._session_of_device(device.id)
        if session is not None and not (msg.service_installed and msg.service_enabled):
            await self._end_session(session, CloseReason.SERVICE_DISABLED, Party.SERVER)
        await self.send(conn, Ok(rid=msg.rid))
        await self._send_device_status(device.id)
        if changed:
            await self._publish_device(device.id, device.group_id)
        else:
            await self._fan_out_device(device.id, device=device)

    async def _on_subscribe(self, conn: Connection, msg: DevicesSubscribe) -> None:
        conn.subscribed = True
        self._watch(conn)
        await self._send_snapshot(conn, msg.rid)

    async def _send_snapshot(self, conn: Connection, rid: int | None) -> None:
        tech = conn.technician
        assert tech is not None
        groups = None if tech.role is Role.ADMIN else sorted(tech.groups)
        conn.snapshots += 1
        try:
            devices = await self.store.devices(groups)
            infos = [self._device_info(d) for d in devices if not d.revoked]
            parts = _split(infos, wire_size)
            for index, part in enumerate(parts):
                complete = index == len(parts) - 1
                await self.send(
                    conn, DevicesSnapshot(devices=tuple(part), complete=complete, rid=rid)
                )
        finally:
            conn.snapshots -= 1
            # Taken out even when the snapshot failed: kept, they would go out after
            # a later snapshot, older than it.
            held = conn.held_updates if not conn.snapshots else None
            if held is not None:
                conn.held_updates = None
        for frame in (held or {}).values():
            await self._send_encoded(conn, frame)

    async def _on_unsubscribe(self, conn: Connection, msg: DevicesUnsubscribe) -> None:
        conn.subscribed = False
        self._unwatch(conn)
        await self.send(conn, Ok(rid=msg.rid))

    # -- sessions -------------------------------------------------------------------

    def _session_of_device(self, device_id: str) -> LiveSession | None:
        session_id = self.device_sessions.get(device_id)
        return self.sessions.get(session_id) if session_id else None

    def _member_session(self, conn: Connection, session_id: str) -> LiveSession:
        """The session, if ``conn`` is one of its two members; NOT_FOUND otherwise, so
        that an outsider learns nothing about sessions that are not theirs."""
        session = self.sessions.get(session_id)
        if session is not None:
            if conn.role is Role.DEVICE and conn.device and conn.device.id == session.device_id:
                return session
            if conn.technician is not None and conn.technician.id == session.technician.id:
                return session
        raise LocalProtocolError(ErrorCode.NOT_FOUND, f"no session {session_id!r} of yours")

    def _update(self, session: LiveSession, **extra: Any) -> SessionUpdate:
        return SessionUpdate(
            session_id=session.id,
            device_id=session.device_id,
            technician_id=session.technician.id,
            state=session.machine.state,
            mode=session.accepted_mode or session.mode,
            **extra,
        )

    async def _to_technician(self, session: LiveSession, message: Message) -> None:
        for conn in list(self.consoles.get(session.technician.id, ())):
            await self.send(conn, message)
        if self.remote_consoles.get(session.technician.id):
            await self._to_remote_technician(session.technician.id, message)

    async def _to_device(self, session: LiveSession, message: Message) -> None:
        conn = self.devices_online.get(session.device_id)
        if conn is not None:
            await self.send(conn, message)
        elif session.device_id in self.remote_devices:
            await self._to_remote_device(session.device_id, message)

    async def _broadcast(self, session: LiveSession, message: Message) -> None:
        # The device first: a ``connecting`` update hands it its ICE servers, which
        # must be there before the technician's offer (sent as soon as the console
        # has its own update) reaches it.
        await self._to_device(session, message)
        await self._to_technician(session, message)

    async def _on_session_start(self, conn: Connection, msg: SessionStart) -> None:
        assert conn.technician is not None
        # Read afresh, not as of the login: the invite's card shows the name and photo
        # the technician has now, and a role or scope changed elsewhere (another
        # node, the admin CLI) applies to this session already.
        tech = await self.store.technician(conn.technician.id)
        if tech is None:
            raise LocalProtocolError(
                ErrorCode.UNAUTHENTICATED,
                "this account is disabled",
                close_code=CloseCode.AUTH_FAILED,
            )
        conn.technician, conn.role = tech, tech.role
        device = await self.store.device(msg.device_id)
        if device is None or device.revoked:
            raise LocalProtocolError(ErrorCode.NOT_FOUND, f"no device {msg.device_id!r}")
        try:
            authorize(
                tech.role,
                REQUIRED_ACTION[SessionStart],
                scope_groups=tech.groups,
                target_group=device.group_id,
            )
        except ProtocolError as denial:
            await self._audit_denial(conn, msg, denial)
            raise
        status = self._device_status(device)
        unavailable = {
            LiveSupportStatus.NOT_INSTALLED: "Live Support is not installed on the device",
            LiveSupportStatus.DISABLED: "Live Support is disabled on the device",
        }
        if status in unavailable:
            raise LocalProtocolError(ErrorCode.UNAVAILABLE, unavailable[status])
        if self._session_id_for(device.id) is not None:
            raise LocalProtocolError(ErrorCode.CONFLICT, "the device already has a session")
        if not self._is_online(device.id):
            raise LocalProtocolError(ErrorCode.UNAVAILABLE, "the device is offline")
        allowed = self._allowed_modes(device)
        if msg.mode not in allowed:
            raise LocalProtocolError(
                ErrorCode.FORBIDDEN, f"{msg.mode.value} sessions are not allowed on this device"
            )
        if device.relay_only and self.turn is None:
            # Refused before the device user is asked: without a relay the call
            # could never connect.
            raise LocalProtocolError(
                ErrorCode.UNAVAILABLE,
                "the device's group allows relayed calls only, and no TURN server is set up",
            )
        offered = tuple(m for m in _OFFERED[msg.mode] if m in allowed)
        session = LiveSession(
            id=new_id("ses"),
            technician=tech,
            device_id=device.id,
            device_group=device.group_id,
            mode=msg.mode,
            offered_modes=offered,
            reason=msg.reason,
            created_at_ms=now_ms(),
            relay_only=device.relay_only,
        )
        # Made before the session is registered: an invite that could not be sent
        # must not leave a session behind that the device never heard of.
        invite = self._invite(session)
        # Stored first: the store is where a start on another node in the same
        # instant (or a second console here) meets this one; one of them gets in.
        try:
            await self.store.record_live_session(
                SessionRow(
                    id=session.id,
                    technician_id=tech.id,
                    device_id=device.id,
                    offered_mode=msg.mode.value,
                    reason=msg.reason,
                    state=SessionState.INVITED.value,
                    created_at_ms=session.created_at_ms,
                ),
                offered,
            )
        except Conflict:
            raise LocalProtocolError(
                ErrorCode.CONFLICT, "the device already has a session"
            ) from None
        self.sessions[session.id] = session
        self.device_sessions[device.id] = session.id
        await self._publish_session(session)
        await self.store.audit(
            tech.id,
            "session.start",
            target=device.id,
            session_id=session.id,
            mode=msg.mode.value,
            reason=msg.reason,
        )
        session.timers["invite"] = self._later(
            self.config.invite_timeout_s, self._invite_timed_out, session
        )
        await self.send(conn, self._update(session, rid=msg.rid))
        await self._to_device(session, invite)

    def _invite(self, session: LiveSession) -> SessionInvite:
        tech = session.technician
        card = TechnicianCard(
            technician_id=tech.id,
            display_name=tech.display_name,
            organisation=tech.organisation,
            photo=tech.photo,
        )
        invite = SessionInvite(
            session_id=session.id,
            technician=card,
            mode=session.mode,
            offered_modes=session.offered_modes,
            reason=session.reason,
            expires_at_ms=session.created_at_ms + int(self.config.invite_timeout_s * 1000),
        )
        try:
            SIGNALING.encode(invite)
        except LocalProtocolError:
            if not card.photo:
                raise
            # A photo the invite has no room for (stored by the admin CLI, or before
            # the profile route limited it) must not keep the technician from calling
            # anyone: the card goes without it.
            log.warning("technician %s: photo too large for an invite, sent without", tech.id)
            invite = dataclasses.replace(invite, technician=dataclasses.replace(card, photo=""))
        return invite

    async def _move(self, session: LiveSession, event: SessionEvent, by: Party) -> None:
        session.machine.handle(event, by)
        await self.store.update_session(session.id, state=session.machine.state.value)
        await self._publish_session(session)

    async def _on_session_accept(self, conn: Connection, msg: SessionAccept) -> None:
        session = self._member_session(conn, msg.session_id)
        if msg.mode not in session.offered_modes:
            raise LocalProtocolError(
                ErrorCode.FORBIDDEN, f"the session was not offered as {msg.mode.value}"
            )
        await self._move(session, SessionEvent.ACCEPT, Party.DEVICE)
        session.cancel_timer("invite")
        session.accepted_mode = msg.mode
        session.accepted_at_ms = now_ms()
        await self.store.update_session(
            session.id, accepted_mode=msg.mode.value, accepted_at_ms=session.accepted_at_ms
        )
        await self.store.audit(
            session.device_id,
            "session.accept",
            target=session.technician.id,
            session_id=session.id,
            mode=msg.mode.value,
        )
        await self.send(conn, Ok(rid=msg.rid))
        await self._broadcast(session, self._update(session))
        await self._send_device_status(session.device_id)
        await self._fan_out_device(session.device_id)

    async def _on_session_reject(self, conn: Connection, msg: SessionReject) -> None:
        session = self._member_session(conn, msg.session_id)
        await self._move(session, SessionEvent.REJECT, Party.DEVICE)
        await self.send(conn, Ok(rid=msg.rid))
        await self._finish(session, reject_reason=msg.reason)

    async def _invite_timed_out(self, session: LiveSession) -> None:
        session.timers.pop("invite", None)
        if not session.machine.allowed(SessionEvent.TIMEOUT, Party.SERVER):
            return
        await self._move(session, SessionEvent.TIMEOUT, Party.SERVER)
        await self._finish(session, reject_reason=RejectReason.NO_ANSWER)

    async def _on_session_consent(self, conn: Connection, msg: SessionConsent) -> None:
        receipt = msg.receipt
        session = self._member_session(conn, receipt.session_id)
        assert conn.device is not None
        if not session.machine.is_open or session.accepted_mode is None:
            raise LocalProtocolError(ErrorCode.BAD_STATE, "the session is not accepted")
        expected = {
            "device_id": conn.device.id,
            "technician_id": session.technician.id,
            "mode": session.accepted_mode,
            "offer_fingerprint": session.offer_fingerprint,
            "answer_fingerprint": session.answer_fingerprint,
        }
        for name, value in expected.items():
            if getattr(receipt, name) != value:
                raise LocalProtocolError(
                    ErrorCode.INVALID_FIELD, f"the receipt's {name} does not match the session"
                )
        identity.verify_consent(identity.load_public_key(conn.device.public_key), receipt)
        stored = SIGNALING.encode(SessionConsent(receipt=receipt))
        await self.store.update_session(session.id, consent_receipt=stored)
        await self.store.audit(
            session.device_id,
            "session.consent",
            target=session.technician.id,
            session_id=session.id,
            mode=receipt.mode.value,
        )
        await self.send(conn, Ok(rid=msg.rid))
        await self._to_technician(session, SessionConsent(receipt=receipt))

    async def _on_session_resume(self, conn: Connection, msg: SessionResume) -> None:
        session = self._member_session(conn, msg.session_id)
        await self._move(session, SessionEvent.RESUME, Party.DEVICE)
        await self.send(conn, Ok(rid=msg.rid))
        await self._broadcast(session, self._update(session, resumed=True))

    async def _on_session_attach(self, conn: Connection, msg: SessionAttach) -> None:
        """A member that came back (after its own reconnect or a restart of the
        server) takes up the session it holds. Authentication already ended its grace
        period; the reply tells it where the session stands. An end whose session is
        gone gets NOT_FOUND and ends its side (see docs/recovery.md)."""
        session = self._member_session(conn, msg.session_id)
        session.cancel_timer("device_grace" if conn.party is Party.DEVICE else "technician_grace")
        await self.send(conn, self._update(session, rid=msg.rid))

    async def _on_session_close(self, conn: Connection, msg: SessionClose) -> None:
        session = self._member_session(conn, msg.session_id)
        await self._end_session(session, CloseReason.CLOSED_BY_TECHNICIAN, Party.TECHNICIAN)
        await self.send(conn, Ok(rid=msg.rid))

    async def _on_call_connected(self, conn: Connection, msg: CallConnected) -> None:
        session = self._member_session(conn, msg.session_id)
        if session.machine.state is not SessionState.IN_CALL:
            await self._move(session, SessionEvent.CALL_CONNECTED, conn.party)
            await self._broadcast(session, self._update(session))
        self._schedule_ice_refresh(session)
        await self.send(conn, Ok(rid=msg.rid))

    def _schedule_ice_refresh(self, session: LiveSession) -> None:
        """While a call runs, its members get fresh TURN credentials (an ``in_call``
        update, see _with_ice) before the ones they hold expire: a connection that
        replaces a lost one (path loss) may be made at any time in the call."""
        if self.turn is None or "ice_refresh" in session.timers:
            return
        every_s = self.config.turn_refresh_s or self.turn.ttl_s / 2
        session.timers["ice_refresh"] = self._later(every_s, self._refresh_ice, session)

    async def _refresh_ice(self, session: LiveSession) -> None:
        session.timers.pop("ice_refresh", None)
        if self.sessions.get(session.id) is not session:
            return  # ended meanwhile
        if session.machine.state is SessionState.IN_CALL:
            await self._broadcast(session, self._update(session))
            self._schedule_ice_refresh(session)

    async def _on_call_hangup(self, conn: Connection, msg: CallHangup) -> None:
        session = self._member_session(conn, msg.session_id)
        await self._move(session, SessionEvent.HANG_UP, conn.party)
        session.offer_fingerprint = session.answer_fingerprint = None
        session.pending_offer = None
        await self._store_call(self.store.set_live_fingerprints(session.id, None, None))
        await self.send(conn, Ok(rid=msg.rid))
        other = self._to_device if conn.party is Party.TECHNICIAN else self._to_technician
        await other(session, CallHangup(session_id=session.id))
        await self._broadcast(session, self._update(session))

    async def _on_signal(self, conn: Connection, msg: SignalSdp | SignalCandidate) -> None:
        session = self._member_session(conn, msg.session_id)
        if not session.machine.may_signal:
            raise LocalProtocolError(
                ErrorCode.BAD_STATE,
                f"no signaling while the session is {session.machine.state.value}",
            )
        if isinstance(msg, SignalSdp):
            # The technician offers and the device answers, never the other way: a
            # device cannot push media at a technician who did not ask for it.
            expected = SdpType.OFFER if conn.party is Party.TECHNICIAN else SdpType.ANSWER
            if msg.sdp_type is not expected:
                raise LocalProtocolError(
                    ErrorCode.FORBIDDEN, f"the {conn.party.value} may only send an {expected.value}"
                )
            fingerprint = identity.sdp_fingerprint(msg.sdp)
            if msg.sdp_type is SdpType.OFFER and session.answer_fingerprint is not None:
                # A new connection for a call that had one: its media path was lost
                # (aiortc has no ICE restart; docs/calls.md, "Path loss"). The new keys
                # replace the old, and only a receipt binding them is accepted now.
                await self._store_call(
                    self.store.audit(
                        session.technician.id,
                        "call.renegotiate",
                        target=session.device_id,
                        session_id=session.id,
                    )
                )
            if msg.sdp_type is SdpType.OFFER:
                session.offer_fingerprint, session.answer_fingerprint = fingerprint, None
            else:
                session.answer_fingerprint = fingerprint
            # Kept for a restart: a consent receipt signed after it must still match.
            await self._store_call(
                self.store.set_live_fingerprints(
                    session.id, session.offer_fingerprint, session.answer_fingerprint
                )
            )
        relay = dataclasses.replace(msg, rid=None)
        if conn.party is Party.TECHNICIAN:
            if isinstance(relay, SignalSdp):
                away = not self._is_online(session.device_id)
                session.pending_offer = relay if away else None
            await self._to_device(session, relay)
        else:
            await self._to_technician(session, relay)

    async def _end_session(self, session: LiveSession, reason: CloseReason, by: Party) -> None:
        if session.machine.is_final:
            return
        await self._move(session, SessionEvent.CLOSE, by)
        await self._finish(session, close_reason=reason)

    async def _finish(
        self,
        session: LiveSession,
        *,
        close_reason: CloseReason | None = None,
        reject_reason: RejectReason | None = None,
    ) -> None:
        """The session reached a final state: tell both, record it, forget it."""
        for name in list(session.timers):
            session.cancel_timer(name)
        closed_at = now_ms()
        end = close_reason.value if close_reason else (reject_reason.value if reject_reason else "")
        await self._store_call(
            self.store.end_live_session(
                session.id,
                state=session.machine.state.value,
                closed_at_ms=closed_at,
                end_reason=end,
            )
        )
        duration = closed_at - (session.accepted_at_ms or closed_at)
        await self._store_call(
            self.store.audit(
                session.technician.id,
                f"session.{session.machine.state.value}",
                target=session.device_id,
                session_id=session.id,
                reason=end,
                duration_ms=duration,
            )
        )
        await self._broadcast(
            session, self._update(session, close_reason=close_reason, reject_reason=reject_reason)
        )
        self.sessions.pop(session.id, None)
        if self.device_sessions.get(session.device_id) == session.id:
            del self.device_sessions[session.device_id]
        if self.bus.remote:
            await self._bus_call(self.bus.drop_session(session.id))
            await self._bus_call(
                self.bus.publish_all(
                    {"k": "session_end", "session": session.id, "device": session.device_id}
                )
            )
        await self._send_device_status(session.device_id)
        await self._fan_out_device(session.device_id)

    async def _resend_session_state(self, conn: Connection) -> None:
        """After a reconnect, tell the client where its open sessions stand."""
        for session in list(self.sessions.values()):
            try:
                self._member_session(conn, session.id)
            except ProtocolError:
                continue
            await self.send(conn, self._update(session))
            if conn.role is Role.DEVICE and session.machine.state is SessionState.INVITED:
                # A device that reconnects while invited has lost its prompt (the
                # invite's card and offered modes): without them it could not answer.
                await self.send(conn, self._invite(session))
            offer = session.pending_offer
            if conn.role is Role.DEVICE and offer is not None and session.machine.may_signal:
                # The offer sent while it was away (docs/calls.md, "Path loss").
                session.pending_offer = None
                await self.send(conn, offer)

    # -- restart: taking back the sessions that were open ---------------------------

    async def restore_sessions(self) -> int:
        """Take back the sessions that were open when the server stopped (killed or
        not): the peer-to-peer call went on without us, and its two ends come back and
        attach. Nobody is connected yet, so each member starts its grace period now;
        an invite keeps what was left of its answer time. Returns how many came back."""
        restored = 0
        owners: dict[str, str] = {}
        if self.bus.remote:
            owners = {
                sid: str(info.get("node")) for sid, info in (await self.bus.sessions()).items()
            }
        for row, live in await self.store.live_sessions():
            if row.id in self.sessions:
                continue
            if self.bus.remote:
                # Several nodes share the table: a session a live node owns is not ours
                # to take; an orphan goes to the one node that claims it first
                # (docs/scale.md, "Several nodes").
                owner = owners.get(row.id, "")
                if self.bus.alive(owner) and owner != self.bus.node_id:
                    continue
                if not await self.bus.claim(f"takeover:{row.id}:{owner}"):
                    continue
            tech = await self.store.technician(row.technician_id)
            device = await self.store.device(row.device_id)
            state = SessionState(row.state)
            if tech is None or device is None or device.revoked or state in FINAL_STATES:
                # Its technician was disabled or its device revoked while we were down
                # (the admin CLI works on the store directly): it cannot go on.
                await self._store_call(
                    self.store.end_live_session(
                        row.id,
                        state=SessionState.CLOSED.value,
                        closed_at_ms=now_ms(),
                        end_reason=CloseReason.SERVICE_DISABLED.value
                        if device is None or device.revoked
                        else CloseReason.TECHNICIAN_LOST.value,
                    )
                )
                continue
            session = LiveSession(
                id=row.id,
                technician=tech,
                device_id=device.id,
                device_group=device.group_id,
                mode=Mode(row.offered_mode),
                offered_modes=tuple(Mode(m) for m in live.offered_modes.split(",") if m),
                reason=row.reason,
                created_at_ms=row.created_at_ms,
                machine=SessionMachine(state=state),
                accepted_mode=Mode(row.accepted_mode) if row.accepted_mode else None,
                accepted_at_ms=row.accepted_at_ms,
                offer_fingerprint=live.offer_fingerprint,
                answer_fingerprint=live.answer_fingerprint,
                relay_only=device.relay_only,
            )
            self.sessions[session.id] = session
            self.device_sessions[session.device_id] = session.id
            await self._publish_session(session)
            if state is SessionState.INVITED:
                left_s = (
                    session.created_at_ms + self.config.invite_timeout_s * 1000 - now_ms()
                ) / 1000
                session.timers["invite"] = self._later(
                    max(0.0, left_s), self._invite_timed_out, session
                )
            for timer, reason in (
                ("device_grace", CloseReason.DEVICE_LOST),
                ("technician_grace", CloseReason.TECHNICIAN_LOST),
            ):
                session.timers[timer] = self._later(
                    self.config.grace_s, self._end_session, session, reason, Party.SERVER
                )
            restored += 1
        if restored:
            log.info("took back %d open sessions", restored)
        return restored

    # -- grace periods for lost members ---------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        if self._shut_down:
            # The store closes next: a member's handler finishing late (a lost
            # console's grace, a timer) must not start store work under it; such work
            # was left waiting on a closed connection, then destroyed with the loop.
            if inspect.iscoroutine(coro):
                coro.close()
            return

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("background hub task failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _later(
        self, delay_s: float, function: Callable[..., Awaitable[None]], *args: Any
    ) -> asyncio.TimerHandle:
        """Run ``function(*args)`` as a task after ``delay_s``. The coroutine is made
        only when the timer fires, so a cancelled timer leaves nothing un-awaited."""
        loop = asyncio.get_running_loop()
        return loop.call_later(delay_s, lambda: self._spawn(function(*args)))

    def _start_grace(
        self,
        *,
        lost: Party,
        device_id: str | None = None,
        session: LiveSession | None = None,
    ) -> None:
        if session is None and device_id is not None:
            session = self._session_of_device(device_id)
        if session is None:
            return
        timer = "device_grace" if lost is Party.DEVICE else "technician_grace"
        reason = CloseReason.DEVICE_LOST if lost is Party.DEVICE else CloseReason.TECHNICIAN_LOST
        if session.machine.state is SessionState.INVITED and lost is Party.TECHNICIAN:
            # An invite nobody is waiting for any more is withdrawn at once.
            self._spawn(self._end_session(session, CloseReason.CANCELLED, Party.SERVER))
            return
        session.cancel_timer(timer)
        session.timers[timer] = self._later(
            self.config.grace_s, self._end_session, session, reason, Party.SERVER
        )

    def _cancel_grace(self, *, device_id: str) -> None:
        session = self._session_of_device(device_id)
        if session is not None:
            session.cancel_timer("device_grace")

    # -- notifications --------------------------------------------------------------

    async def _on_notify_send(self, conn: Connection, msg: NotifySend) -> None:
        tech = conn.technician
        assert tech is not None
        # Ids only, in order and without repeats (a dict): a device both listed and
        # in the group is notified once.
        targets: dict[str, None] = {}
        for device_id in msg.device_ids:
            device = await self.store.device(device_id)
            if device is None or device.revoked:
                raise LocalProtocolError(ErrorCode.NOT_FOUND, f"no device {device_id!r}")
            await self._authorize_target(conn, msg, device.group_id, device.id)
            targets[device.id] = None
        if msg.group_id is not None:
            await self._authorize_target(conn, msg, msg.group_id, msg.group_id)
            targets.update(dict.fromkeys(await self.store.device_ids(msg.group_id)))
        if not targets:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "no device to notify")
        row = await self.store.create_notification(
            technician_id=tech.id,
            sender_name=tech.display_name,
            title=msg.title,
            body=msg.body,
            ttl_s=msg.ttl_s,
            device_ids=list(targets),
        )
        await self.store.audit(
            tech.id,
            "notify.send",
            target=msg.group_id or "",
            notification_id=row.id,
            devices=len(targets),
        )
        parts = _split(list(targets), wire_size)
        for index, part in enumerate(parts):
            await self.send(
                conn,
                NotifySent(
                    notification_id=row.id,
                    device_ids=tuple(part),
                    expires_at_ms=row.expires_at_ms,
                    complete=index == len(parts) - 1,
                    rid=msg.rid,
                ),
            )
        deliver = _deliver_message(row)
        frame = SIGNALING.encode(deliver)  # once for every device of the group
        for count, device_id in enumerate(targets, 1):
            device_conn = self.devices_online.get(device_id)
            if device_conn is not None:
                await self._send_encoded(device_conn, frame)
            elif device_id in self.remote_devices:
                await self._to_remote_device(device_id, deliver)
            if count % NOTIFY_BATCH == 0:
                # A group of thousands must not hold the loop: other connections'
                # frames (and their heartbeats) go on between batches.
                await asyncio.sleep(0)

    async def _authorize_target(
        self, conn: Connection, msg: NotifySend, group_id: str, target: str
    ) -> None:
        """The scope check of one notification target; a refusal is audited."""
        tech = conn.technician
        assert tech is not None
        try:
            authorize(
                tech.role,
                REQUIRED_ACTION[NotifySend],
                scope_groups=tech.groups,
                target_group=group_id,
            )
        except ProtocolError as denial:
            await self._store_call(
                self.store.audit(
                    conn.principal_id,
                    msg.TYPE,
                    target=target,
                    outcome=denial.code.value,
                    role=tech.role.value,
                )
            )
            raise

    async def _deliver_pending(self, conn: Connection) -> None:
        assert conn.device is not None
        for row in await self.store.pending_notifications(conn.device.id):
            unwritten = self.writes.pending_progress(row.id, conn.device.id)
            if unwritten is not None and unwritten[0] in _READ_OR_ANSWERED:
                continue  # read or answered a moment ago, not in the store yet
            await self.send(
                conn,
                _deliver_message(row),
            )

    async def _note_progress(
        self,
        conn: Connection,
        notification_id: str,
        state: NotificationState,
        answer: str | None,
        rid: int | None,
    ) -> None:
        assert conn.device is not None
        device_id = conn.device.id
        found = await self.store.notification_target(notification_id, device_id)
        if found is None:
            raise LocalProtocolError(ErrorCode.NOT_FOUND, f"no notification {notification_id!r}")
        note, target = found
        if note.expires_at_ms < now_ms():
            raise LocalProtocolError(ErrorCode.EXPIRED, "the notification has expired")
        current, current_answer = NotificationState(target.state), target.answer
        # Progress written behind is ahead of the store's row until it is flushed.
        unwritten = self.writes.pending_progress(notification_id, device_id)
        if unwritten is not None and _NOTE_RANK[unwritten[0]] > _NOTE_RANK[current]:
            current, current_answer = unwritten[0], unwritten[1] or current_answer
        # The same answer again is a device resending what a dropped link may have
        # lost: the same act, so it changes nothing (below) and is not refused.
        answered = current is NotificationState.ANSWERED
        if state is NotificationState.ANSWERED and answered and current_answer != answer:
            raise LocalProtocolError(ErrorCode.CONFLICT, "the notification is answered already")
        if _NOTE_RANK[state] <= _NOTE_RANK[current]:
            await self.send(conn, Ok(rid=rid))
            return  # a late or repeated acknowledgement changes nothing
        update = NotifyUpdate(
            notification_id=notification_id,
            device_id=device_id,
            state=state,
            at_ms=now_ms(),
            answer=answer,
        )
        technician_id = note.technician_id

        async def tell_sender() -> None:
            await self._tell_progress(technician_id, update)

        # Written behind, in batches (docs/scale.md, "Written behind"): 10,000
        # ``delivered`` are a handful of transactions. The sender's consoles hear of a
        # change once it is stored (what they saw survives a crash). What the user did
        # (read, answered) is stored before the ``ok`` too: the agent drops its copy
        # on the ``ok`` (docs/recovery.md, store and forward); a ``delivered`` lost to
        # a crash only delivers the pop-up again.
        await self.writes.note_progress(
            notification_id,
            device_id,
            state,
            update.at_ms,
            answer,
            durable=state is not NotificationState.DELIVERED,
            on_written=tell_sender,
        )
        await self.send(conn, Ok(rid=rid))

    async def _tell_progress(self, technician_id: str, update: NotifyUpdate) -> None:
        for console in list(self.consoles.get(technician_id, ())):
            await self.send(console, update)
        if self.remote_consoles.get(technician_id):
            await self._to_remote_technician(technician_id, update)

    async def _on_notify_ack(self, conn: Connection, msg: NotifyAck) -> None:
        state = (
            NotificationState.DELIVERED
            if msg.state is DeviceAck.DELIVERED
            else NotificationState.READ
        )
        await self._note_progress(conn, msg.notification_id, state, None, msg.rid)

    async def _on_notify_answer(self, conn: Connection, msg: NotifyAnswer) -> None:
        await self._note_progress(
            conn, msg.notification_id, NotificationState.ANSWERED, msg.text, msg.rid
        )

    # -- administration hooks (REST and admin CLI) ----------------------------------

    async def device_revoked(self, device_id: str) -> None:
        """Disconnect a revoked device at once and close its session."""
        session = self._session_of_device(device_id)
        if session is not None:
            await self._end_session(session, CloseReason.DEVICE_REVOKED, Party.SERVER)
        conn = self.devices_online.get(device_id)
        if conn is not None:
            await conn.transport.close(CloseCode.REVOKED, "device revoked")

    async def technician_changed(self, technician_id: str) -> None:
        """An admin changed a technician's account: it applies to their live
        connections at once.

        A disabled account has its consoles closed and its sessions ended (an invite
        withdrawn, a call closed): the device user must not stay in a call with
        someone who no longer has access. Otherwise each connection takes the new
        role, scope and name, and a subscribed console gets a fresh snapshot, so
        devices newly in scope appear (devices that left the scope get no more
        updates and refuse every action; the console drops them on its next
        subscribe).
        """
        tech = await self.store.technician(technician_id)
        conns = list(self.consoles.get(technician_id, ()))
        if tech is None:
            for session in list(self.sessions.values()):
                if session.technician.id == technician_id:
                    reason = (
                        CloseReason.CANCELLED
                        if session.machine.state is SessionState.INVITED
                        else CloseReason.TECHNICIAN_LOST
                    )
                    await self._end_session(session, reason, Party.SERVER)
            for conn in conns:
                await conn.transport.close(CloseCode.AUTH_FAILED, "account disabled")
            return
        for conn in conns:
            before = conn.technician
            conn.technician, conn.role = tech, tech.role
            self._watch(conn)  # a new role or new groups: indexed anew
            scope_changed = before is None or (before.role, before.groups) != (
                tech.role,
                tech.groups,
            )
            # A new name or photo needs no snapshot (an inventory may be large).
            if conn.subscribed and scope_changed:
                await self._send_snapshot(conn, None)

    async def group_policy_changed(self, group_id: str) -> None:
        """A group's policy changed: its devices and the consoles that see them hear
        of it at once. Live Support switched off by policy ends a session in the
        group, as switching the service off on the device does; a narrower set of
        modes applies to the next session, a running one goes on."""
        for device in await self.store.devices([group_id]):
            if device.revoked:
                continue
            conn = self.devices_online.get(device.id)
            if conn is not None:
                conn.device = device
            session = self._session_of_device(device.id)
            if session is not None:
                session.relay_only = device.relay_only  # from its next call
            if session is not None and not device.policy_enabled:
                # _end_session tells the device and the consoles itself.
                await self._end_session(session, CloseReason.SERVICE_DISABLED, Party.SERVER)
                continue
            await self._send_device_status(device.id)
            await self._fan_out(device)

    async def token_revoked(self, token: str) -> None:
        """A logout ends every connection that authenticated with that token."""
        revoked = token_hash(token)
        for conn in [c for conns in self.consoles.values() for c in conns]:
            if conn.token_hash == revoked:
                await conn.transport.close(CloseCode.AUTH_FAILED, "logged out")

    # -- several nodes (docs/scale.md, "Several nodes") -----------------------------

    async def start_bus(self) -> None:
        """Join the other nodes (nothing to do for one node) and learn what they hold."""
        await self.bus.start(self.on_bus_event)
        if not self.bus.remote:
            return
        for device_id, node in (await self.bus.presence()).items():
            if node != self.bus.node_id:
                self.remote_devices[device_id] = (node, 0)
        for session_id, info in (await self.bus.sessions()).items():
            self._remember_session(session_id, info)

    async def stop_bus(self) -> None:
        await self.bus.stop()

    async def _bus_call(self, awaitable: Awaitable[Any]) -> Any:
        """A bus call whose failure (Redis away for a moment) must not take the
        connection being served down with it; the node's heartbeat recovers."""
        try:
            return await awaitable
        except Exception:
            log.exception("bus call failed")
            return None

    async def _announce_device(self, conn: Connection) -> None:
        assert conn.device is not None
        self.conns_by_id[conn.conn_id] = conn
        self.remote_devices.pop(conn.device.id, None)
        await self._bus_call(self.bus.set_presence(conn.device.id))
        await self._bus_call(
            self.bus.publish_all(
                {
                    "k": "online",
                    "device": conn.device.id,
                    "group": conn.device.group_id,
                    "node": self.bus.node_id,
                    "conn": conn.conn_id,
                }
            )
        )

    async def _publish_session(self, session: LiveSession) -> None:
        if not self.bus.remote:
            return
        info = {
            "session": session.id,
            "device": session.device_id,
            "tech": session.technician.id,
            "node": self.bus.node_id,
            "open": session.machine.is_open,
        }
        await self._bus_call(self.bus.put_session(session.id, info))
        await self._bus_call(self.bus.publish_all({"k": "session", **info}))

    def _remember_session(self, session_id: str, info: Event) -> None:
        if session_id in self.sessions:
            return
        remote = RemoteSession(
            id=session_id,
            device_id=str(info["device"]),
            technician_id=str(info["tech"]),
            node=str(info["node"]),
            open=bool(info["open"]),
        )
        self.remote_sessions[session_id] = remote
        self.remote_device_sessions[remote.device_id] = session_id

    def _forget_session(self, session_id: str) -> None:
        remote = self.remote_sessions.pop(session_id, None)
        if remote is not None and self.remote_device_sessions.get(remote.device_id) == session_id:
            del self.remote_device_sessions[remote.device_id]

    async def _to_remote_device(self, device_id: str, message: Message) -> None:
        node, _ = self.remote_devices[device_id]
        if isinstance(message, SessionUpdate) and message.state in CALL_STATES:
            message = self._with_ice_for(Party.DEVICE, message)
        frame = SIGNALING.encode(message)
        await self._bus_call(
            self.bus.publish_node(node, {"k": "to_device", "device": device_id, "frame": frame})
        )

    async def _to_remote_technician(self, technician_id: str, message: Message) -> None:
        if isinstance(message, SessionUpdate) and message.state in CALL_STATES:
            message = self._with_ice_for(Party.TECHNICIAN, message)
        frame = SIGNALING.encode(message)
        for node in set(self.remote_consoles.get(technician_id, {}).values()):
            await self._bus_call(
                self.bus.publish_node(node, {"k": "to_tech", "tech": technician_id, "frame": frame})
            )

    async def _forward(self, conn: Connection, message: Message, frame: str | bytes) -> bool:
        """A request about a session another node owns goes to that node, which
        authorizes and handles it as its own (its replies come back as ``reply``)."""
        session_id = _session_id_of(message)
        if not session_id or session_id in self.sessions:
            return False
        remote = self.remote_sessions.get(session_id)
        if remote is None or not self.bus.alive(remote.node):
            row = await self.store.session(session_id)
            if row is not None and SessionState(row.state) not in FINAL_STATES:
                # Open, and no live node owns it: its owner just died and another node
                # is taking it over. Not NOT_FOUND, which would end the client's side.
                raise LocalProtocolError(
                    ErrorCode.UNAVAILABLE, "the session's node is gone; try again shortly"
                )
            return False
        self.conns_by_id[conn.conn_id] = conn
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        heard = await self.bus.publish_node(
            remote.node,
            {
                "k": "frame",
                "party": conn.party.value,
                "principal": conn.principal_id,
                "node": self.bus.node_id,
                "conn": conn.conn_id,
                "frame": text,
            },
        )
        if not heard:
            # Its owner stopped listening (killed) before its key expired.
            raise LocalProtocolError(
                ErrorCode.UNAVAILABLE, "the session's node is gone; try again shortly"
            )
        if message.rid is not None:
            self.forwarded.setdefault(remote.node, {})[(conn.conn_id, message.rid)] = conn
        return True

    async def _proxy(self, party: str, principal: str, node: str, conn_id: int) -> Connection:
        """A client of another node, as a connection of ours (see RelayTransport)."""
        conn = Connection(
            RelayTransport(self, node, conn_id),
            f"node:{node}",
            TokenBucket(self.config.rate_per_s, self.config.rate_burst),
        )
        conn.nonce, conn.principal_id = "", principal
        if party == Party.DEVICE.value:
            conn.role, conn.device = Role.DEVICE, await self.store.device(principal)
            if conn.device is None:
                raise LocalProtocolError(ErrorCode.NOT_FOUND, "no such device")
        else:
            tech = await self.store.technician(principal)
            if tech is None:
                raise LocalProtocolError(ErrorCode.UNAUTHENTICATED, "no such technician")
            conn.role, conn.technician = tech.role, tech
        return conn

    async def _handle_forwarded(self, event: Event) -> None:
        """A frame another node took from its authenticated client (it checked the
        signature or token): decoded, authorized and handled here like a local one."""
        conn = await self._proxy(
            str(event["party"]), str(event["principal"]), str(event["node"]), int(event["conn"])
        )
        frame = str(event["frame"])
        rid = peek_rid(frame)
        try:
            message = SIGNALING.decode(frame, conn.sender)
            rid = message.rid
            action = REQUIRED_ACTION.get(type(message))
            if action is None:
                raise LocalProtocolError(ErrorCode.UNKNOWN_TYPE, f"{message.TYPE!r}")
            assert conn.role is not None
            authorize(conn.role, action)
            await self._handlers[type(message)](conn, message)
        except ProtocolError as error:
            await self._refuse(conn, error, rid)
        except Exception:
            log.exception("internal error handling a frame from node %s", event["node"])
            internal = LocalProtocolError(ErrorCode.INTERNAL, "internal server error")
            await self._refuse(conn, internal, rid)

    async def on_bus_event(self, event: Event) -> None:
        """What another node told us; see the list in docs/scale.md."""
        kind = event.get("k")
        if kind == "device":
            device_id = str(event["device"])
            if "group" in event:
                self.remote_groups[device_id] = str(event["group"])
            session = self._session_of_device(device_id)
            if session is not None:
                # Our session's device switched its service off on another node: the
                # user withdrew consent (as _on_status_report does for a local one).
                device = await self.store.device(device_id)
                if device is not None and not (device.service_installed and device.service_enabled):
                    await self._end_session(session, CloseReason.SERVICE_DISABLED, Party.SERVER)
            await self._send_device_status(device_id)
            await self._fan_out_remote(device_id)
        elif kind == "online":
            await self._remote_device_online(event)
        elif kind == "offline":
            device_id = str(event["device"])
            held = self.remote_devices.get(device_id)
            if held is not None and held[0] == event["node"]:
                del self.remote_devices[device_id]
                self._start_grace(device_id=device_id, lost=Party.DEVICE)
        elif kind == "session":
            self._remember_session(str(event["session"]), event)
        elif kind == "session_end":
            self._forget_session(str(event["session"]))
        elif kind == "to_device":
            conn = self.devices_online.get(str(event["device"]))
            if conn is not None:
                await self._send_encoded(conn, str(event["frame"]))
        elif kind == "to_tech":
            for conn in list(self.consoles.get(str(event["tech"]), ())):
                await self._send_encoded(conn, str(event["frame"]))
        elif kind == "frame":
            await self._handle_forwarded(event)
        elif kind == "reply":
            target = self.conns_by_id.get(int(event["conn"]))
            rid = peek_rid(str(event["frame"]))
            if rid is not None:
                self.forwarded.get(str(event["from"]), {}).pop((int(event["conn"]), rid), None)
            if target is not None:
                await self._send_encoded(target, str(event["frame"]))
        elif kind == "close":
            target = self.conns_by_id.get(int(event["conn"]))
            if target is not None:
                await target.transport.close(int(event["code"]), str(event["reason"]))
        elif kind == "tech_online":
            await self._remote_technician_online(event)
        elif kind == "tech_offline":
            tech_id = str(event["tech"])
            conns = self.remote_consoles.get(tech_id, {})
            conns.pop(int(event["conn"]), None)
            if not conns and not self.consoles.get(tech_id):
                self.remote_consoles.pop(tech_id, None)
                for session in list(self.sessions.values()):
                    if session.technician.id == tech_id:
                        self._start_grace(session=session, lost=Party.TECHNICIAN)
        elif kind == "node_dead":
            await self._node_died(str(event["node"]), [str(d) for d in event.get("devices", [])])

    async def _remote_device_online(self, event: Event) -> None:
        device_id, node, conn_id = str(event["device"]), str(event["node"]), int(event["conn"])
        stale = self.devices_online.pop(device_id, None)
        if stale is not None:
            # It connected again through another node: this socket is a dead path.
            await stale.transport.close(CloseCode.REPLACED, "connected again elsewhere")
        self.remote_devices[device_id] = (node, conn_id)
        if "group" in event:
            self.remote_groups[device_id] = str(event["group"])
        session = self._session_of_device(device_id)
        if session is not None:
            # Our session's device is back, on another node: as a local reconnect.
            session.cancel_timer("device_grace")
            await self._resend_session_state(
                await self._proxy(Party.DEVICE.value, device_id, node, conn_id)
            )

    async def _fan_out_remote(self, device_id: str) -> None:
        """Another node's device changed: our consoles that watch it hear of it. A
        node with no console watching the device's group reads nothing: a connect
        storm on the other nodes (two changes a device) read every device afresh from
        the shared store, one at a time on the bus, and delayed a watched device's
        change behind them by seconds (docs/scale.md, "Several nodes")."""
        group = self.remote_groups.get(device_id)
        if group is None or self._watchers_of(group):
            await self._fan_out_device(device_id, publish=False)

    async def _remote_technician_online(self, event: Event) -> None:
        tech_id, node, conn_id = str(event["tech"]), str(event["node"]), int(event["conn"])
        self.remote_consoles.setdefault(tech_id, {})[conn_id] = node
        mine = [s for s in self.sessions.values() if s.technician.id == tech_id]
        for session in mine:
            session.cancel_timer("technician_grace")
        if mine:
            await self._resend_session_state(
                await self._proxy(Party.TECHNICIAN.value, tech_id, node, conn_id)
            )

    async def _node_died(self, node: str, devices: list[str]) -> None:
        """Another node is gone: its devices are offline (until they reconnect to one
        of us), its consoles gone, and its sessions orphans one of us takes over."""
        gone = LocalProtocolError(
            ErrorCode.UNAVAILABLE, "the session's node is gone; try again shortly"
        )
        for (_, rid), conn in self.forwarded.pop(node, {}).items():
            await self._refuse(conn, gone, rid)
        for device_id, (held_by, _) in list(self.remote_devices.items()):
            if held_by == node:
                devices.append(device_id)
        for device_id in set(devices):
            held = self.remote_devices.get(device_id)
            if held is not None and held[0] == node:
                del self.remote_devices[device_id]
                self._start_grace(device_id=device_id, lost=Party.DEVICE)
                await self._fan_out_remote(device_id)
        for tech_id, conns in list(self.remote_consoles.items()):
            for conn_id, held_by in list(conns.items()):
                if held_by == node:
                    del conns[conn_id]
            if not conns:
                del self.remote_consoles[tech_id]
                if not self.consoles.get(tech_id):
                    for session in list(self.sessions.values()):
                        if session.technician.id == tech_id:
                            self._start_grace(session=session, lost=Party.TECHNICIAN)
        orphans = [s for s in self.remote_sessions.values() if s.node == node]
        if orphans and await self.restore_sessions():
            await self._adopt_members()
        for orphan in orphans:
            # Taken here, or by another node (its ``session`` event names the new
            # owner), or ended: no longer the dead node's.
            current = self.remote_sessions.get(orphan.id)
            if orphan.id in self.sessions or (current is not None and current.node == node):
                self._forget_session(orphan.id)

    async def _adopt_members(self) -> None:
        """After a take-over: the members still connected (here or on another node)
        are no lost members; they hear where their session stands."""
        for session in list(self.sessions.values()):
            held = self.remote_devices.get(session.device_id)
            if session.device_id in self.devices_online or held is not None:
                session.cancel_timer("device_grace")
            if self.consoles.get(session.technician.id) or self.remote_consoles.get(
                session.technician.id
            ):
                session.cancel_timer("technician_grace")
            device_conn = self.devices_online.get(session.device_id)
            if device_conn is not None:
                await self._resend_session_state(device_conn)
            elif held is not None:
                proxy = await self._proxy(Party.DEVICE.value, session.device_id, *held)
                await self._resend_session_state(proxy)
            for conn in list(self.consoles.get(session.technician.id, ())):
                await self._resend_session_state(conn)
            for conn_id, node in self.remote_consoles.get(session.technician.id, {}).items():
                proxy = await self._proxy(
                    Party.TECHNICIAN.value, session.technician.id, node, conn_id
                )
                await self._resend_session_state(proxy)

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "devices_online": len(self.devices_online),
            "consoles": sum(len(c) for c in self.consoles.values()),
            "sessions": len(self.sessions),
            **self.metrics,
        }


#: Room left in a frame for the envelope around a split list.
_PART_BUDGET = MAX_FRAME_BYTES - 4096

_Item = TypeVar("_Item")


def _split(items: list[_Item], size: Callable[[_Item], int]) -> list[list[_Item]]:
    """Cut a list into parts that each fit in one frame (always at least one part)."""
    parts: list[list[_Item]] = [[]]
    used = 0
    for item in items:
        cost = size(item) + 1  # the comma
        if parts[-1] and used + cost > _PART_BUDGET:
            parts.append([])
            used = 0
        parts[-1].append(item)
        used += cost
    return parts


def _session_id_of(message: Message) -> str:
    """The session a request is about ('' if none): a consent names it in its receipt."""
    if isinstance(message, SessionConsent):
        return message.receipt.session_id
    session_id = getattr(message, "session_id", "")
    return session_id if isinstance(session_id, str) else ""


def _deliver_message(row: NotificationRow) -> NotifyDeliver:
    return NotifyDeliver(
        notification_id=row.id,
        sender_name=row.sender_name,
        title=row.title,
        body=row.body,
        sent_at_ms=row.sent_at_ms,
        expires_at_ms=row.expires_at_ms,
    )
