"""The technician console's logic, without any display.

Logs in over REST (pinned TLS), keeps the signaling connection, mirrors the devices in
scope with their live statuses, starts and closes sessions, runs the call as the
offerer, verifies the device's consent receipt, and sends notifications and follows
their progress. The Qt console is a thin view over this object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiortc import RTCIceServer

from peer.call import CallState, NoCandidates, PeerCall
from peer.call_media import CallMedia, MediaOptions
from peer.chat import Listeners
from peer.media import MediaDevices
from peer.relay import rtc_ice_servers
from peer.signaling import Backoff, LinkState, RequestError, SignalingClient, api_post
from protocol import identity
from protocol.codec import Message
from protocol.enums import Mode, NotificationState, Role, SessionState
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    AuthChallenge,
    AuthOk,
    AuthTechnician,
    CallConnected,
    CallHangup,
    ConsentReceipt,
    DeviceInfo,
    DevicesSnapshot,
    DevicesSubscribe,
    DeviceUpdate,
    IceServer,
    NotifySend,
    NotifySent,
    NotifyUpdate,
    SessionAttach,
    SessionClose,
    SessionConsent,
    SessionStart,
    SessionUpdate,
    SignalCandidate,
    SignalSdp,
)

log = logging.getLogger(__name__)

FINAL = (SessionState.CLOSED, SessionState.REJECTED, SessionState.EXPIRED)

#: Pause before each new connection after a lost path: the first at once, then
#: slower while the path stays gone (a failed attempt without any working address
#: fails within a second; this keeps that from turning into a loop of offers).
RECOVERY_DELAYS_S = (0.0, 1.0, 2.0, 4.0)
#: How long an answered new connection may take to come up before the next is tried.
RECOVERY_ATTEMPT_S = 10.0


@dataclass
class ConsoleSession:
    """One session as the console sees it (metadata and the live call)."""

    session_id: str
    device_id: str
    mode: Mode
    reason: str
    state: SessionState = SessionState.INVITED
    last_update: SessionUpdate | None = None
    call: PeerCall | None = None
    consent: ConsentReceipt | None = None
    consent_verified: bool = False
    consent_error: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Connections that replaced one whose media path was lost and came up
    #: (docs/calls.md, "Path loss").
    recoveries: int = 0
    #: Replacements tried since the path was lost (paces the next one).
    recovery_attempts: int = 0
    #: When (monotonic) the path was lost, until a new connection is up.
    path_lost_at: float | None = None
    #: The connection being replaced (its failure is handled once).
    replacing: PeerCall | None = None
    #: From the latest ``connecting`` update: the ICE servers (with this end's TURN
    #: credential) and the relay-only policy the calls of this session use.
    ice_servers: tuple[IceServer, ...] = ()
    relay_only: bool = False

    @property
    def media(self) -> CallMedia | None:
        """The live call's voice and video (None without a call, or in a text call)."""
        return self.call.media if self.call is not None else None

    def touch(self) -> None:
        """Wake whoever waits on a change; they check the state themselves."""
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class NotificationProgress:
    notification_id: str
    device_ids: tuple[str, ...]
    states: dict[str, NotificationState]
    title: str = ""
    answers: dict[str, str] = field(default_factory=dict)
    #: Every state each device reported, in order (the console shows the timeline).
    history: dict[str, list[NotificationState]] = field(default_factory=dict)


class ConsoleClient:
    def __init__(
        self,
        server: str,
        fingerprint: str,
        *,
        ice_servers: Sequence[RTCIceServer] = (),
        media_devices: MediaDevices | None = None,
        media_options: MediaOptions | None = None,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.server = server
        #: The technician's camera, microphone and speakers (synthetic where none exist).
        self.media_devices = media_devices or MediaDevices(None)
        self.media_options = media_options or MediaOptions()
        self.fingerprint = fingerprint
        self.ice_servers = list(ice_servers)
        self.token: str | None = None
        self.display_name = ""
        self.technician_id = ""
        #: The technician's role (None until logged in): the console greys out what
        #: the server would refuse.
        self.role: Role | None = None
        self.devices: dict[str, DeviceInfo] = {}
        self.sessions: dict[str, ConsoleSession] = {}
        self.notifications: dict[str, NotificationProgress] = {}
        self.device_listeners: Listeners[DeviceInfo] = Listeners()
        self.session_listeners: Listeners[ConsoleSession] = Listeners()
        self.notification_listeners: Listeners[NotificationProgress] = Listeners()
        #: The signaling link's state (online, reconnecting...), for the status bar.
        self.link_listeners: Listeners[LinkState] = Listeners()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Calls being closed (see _end_call): close() waits for them.
        self._closing_calls: set[asyncio.Future[None]] = set()
        #: Parts and updates of a notification that arrived before notify() returned.
        self._early_parts: dict[str, list[NotifySent | NotifyUpdate]] = {}
        self._backoff = backoff
        self.client: SignalingClient | None = None

    # -- login and connection ---------------------------------------------------------

    async def login(self, username: str, password: str) -> AuthOk:
        reply = await api_post(
            self.server,
            self.fingerprint,
            "/api/v1/login",
            {"username": username, "password": password},
        )
        self.token = str(reply["token"])
        self.display_name = str(reply["display_name"])
        self.technician_id = str(reply["technician_id"])
        self.role = Role(str(reply["role"]))
        self.client = SignalingClient(
            self.server,
            self.fingerprint,
            authenticate=self._authenticate,
            on_message=self._on_message,
            on_online=self._on_online,
            on_state=self.link_listeners.fire,
            backoff=self._backoff,
        )
        self.client.start()
        return await self.client.wait_online()

    async def logout(self) -> None:
        await self.close()
        if self.token is not None:
            await api_post(self.server, self.fingerprint, "/api/v1/logout", {}, token=self.token)
            self.token = None

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await self._end_call(session)
        # Closes started by a handler of the link (a hang-up, a closed session) finish
        # before the link goes: cancelled half-way, aiortc leaves a socket open (a TURN
        # allocation's, for one).
        await asyncio.gather(*self._closing_calls, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        self.media_devices.close()
        if self.client is not None:
            await self.client.close()

    @property
    def link(self) -> SignalingClient:
        if self.client is None:
            raise RequestError("unauthenticated", "log in first")
        return self.client

    def _authenticate(self, challenge: AuthChallenge) -> Message:
        assert self.token is not None
        return AuthTechnician(token=self.token)

    async def _on_online(self, auth: AuthOk) -> None:
        # The snapshot may come in several parts: the first is the request's reply,
        # the others arrive as messages. Each part is merged, in whatever order.
        self.devices.clear()
        first = await self.link.request(DevicesSubscribe())
        if isinstance(first, DevicesSnapshot):
            self._merge_snapshot(first)
        for session in list(self.sessions.values()):
            if session.state not in FINAL:
                try:
                    await self._attach(session)
                except (RequestError, TimeoutError) as exc:
                    # The next reconnect tries again; the other sessions go on.
                    log.warning("attaching to %s failed: %s", session.session_id, exc)

    async def _attach(self, session: ConsoleSession) -> None:
        """Take up a session again after a reconnect or a server restart: the call
        went on peer to peer meanwhile. One the server no longer knows ended while we
        were away (its grace period ran out): its call ends here too."""
        try:
            reply = await self.link.request(SessionAttach(session_id=session.session_id))
        except RequestError as exc:
            if exc.code != ErrorCode.NOT_FOUND.value:
                raise
            log.info("session %s ended while the console was away", session.session_id)
            session.state = SessionState.CLOSED
            await self._end_call(session)
            session.touch()
            self.session_listeners.fire(session)
            return
        if isinstance(reply, SessionUpdate):
            await self._on_session_update(reply)

    def _merge_snapshot(self, snapshot: DevicesSnapshot) -> None:
        for device in snapshot.devices:
            self.devices[device.device_id] = device
            self.device_listeners.fire(device)

    def _spawn(self, coro: Awaitable[None] | Callable[[], Awaitable[None]]) -> None:
        """Run ``coro`` as a task whose failure is logged. Given a function, the
        coroutine is made only when the task runs: a task cancelled before it started
        (the console closing) then leaves no coroutine that was never awaited."""

        async def run() -> None:
            try:
                await (coro() if callable(coro) else coro)
            except (RequestError, ProtocolError) as exc:
                log.warning("console task refused: %s", exc)
            except Exception:
                log.exception("console task failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, message: Message) -> None:
        if isinstance(message, DevicesSnapshot):
            self._merge_snapshot(message)
        elif isinstance(message, NotifySent):
            # A further part of a long list of devices; the first part may still be
            # on its way to notify(), so parts are kept until it has made the record.
            progress = self.notifications.get(message.notification_id)
            if progress is None:
                self._keep_early(message)
            else:
                self._merge_sent(progress, message)
        elif isinstance(message, DeviceUpdate):
            self.devices[message.device.device_id] = message.device
            self.device_listeners.fire(message.device)
        elif isinstance(message, SessionUpdate):
            await self._on_session_update(message)
        elif isinstance(message, SignalSdp | SignalCandidate):
            session = self.sessions.get(message.session_id)
            if session is not None and session.call is not None:
                await session.call.handle_signal(message)
        elif isinstance(message, SessionConsent):
            self._on_consent(message.receipt)
        elif isinstance(message, CallHangup):
            session = self.sessions.get(message.session_id)
            if session is not None and session.call is not None:
                await self._end_call(session)
                session.touch()
        elif isinstance(message, NotifyUpdate):
            progress = self.notifications.get(message.notification_id)
            if progress is None:
                self._keep_early(message)
            else:
                self._apply_update(progress, message)

    def _keep_early(self, message: NotifySent | NotifyUpdate) -> None:
        # Updates about notifications of an earlier console run would also land here:
        # keep only the most recent few so they cannot pile up.
        if len(self._early_parts) >= 256 and message.notification_id not in self._early_parts:
            del self._early_parts[next(iter(self._early_parts))]
        self._early_parts.setdefault(message.notification_id, []).append(message)

    def _apply_update(self, progress: NotificationProgress, message: NotifyUpdate) -> None:
        progress.states[message.device_id] = message.state
        progress.history.setdefault(message.device_id, []).append(message.state)
        if message.answer is not None:
            progress.answers[message.device_id] = message.answer
        self.notification_listeners.fire(progress)

    # -- sessions ---------------------------------------------------------------------

    async def start_session(self, device_id: str, mode: Mode, reason: str) -> ConsoleSession:
        reply = await self.link.request(SessionStart(device_id=device_id, mode=mode, reason=reason))
        assert isinstance(reply, SessionUpdate)
        session = ConsoleSession(reply.session_id, device_id, mode, reason, reply.state, reply)
        self.sessions[session.session_id] = session
        self.session_listeners.fire(session)
        return session

    async def _on_session_update(self, update: SessionUpdate) -> None:
        session = self.sessions.get(update.session_id)
        if session is None:
            # A session of ours from before a reconnect of the console.
            session = ConsoleSession(
                update.session_id, update.device_id, update.mode, "", update.state
            )
            self.sessions[session.session_id] = session
        session.state = update.state
        session.mode = update.mode
        session.last_update = update
        if update.state in (SessionState.CONNECTING, SessionState.IN_CALL):
            # This end's TURN credential (minted afresh for every such update) and
            # the device group's relay-only policy, for the next peer connection.
            session.ice_servers, session.relay_only = update.ice_servers, update.relay_only
        if update.state is SessionState.CONNECTING and session.call is None:
            # Accepted (or resumed): the technician's side offers.
            session.call = self._new_call(session)
            self._spawn(session.call.start())
        if update.state in FINAL:
            await self._end_call(session)
        session.touch()
        self.session_listeners.fire(session)

    async def _end_call(self, session: ConsoleSession) -> None:
        """Take the session's call off it and close it. The close runs shielded: the
        handler awaiting it may be cancelled (the link closing) and the close still
        completes, and close() waits for it."""
        call, session.call = session.call, None
        if call is None:
            return
        closing = asyncio.ensure_future(call.close())
        self._closing_calls.add(closing)
        closing.add_done_callback(self._closing_calls.discard)
        await asyncio.shield(closing)

    def _new_call(self, session: ConsoleSession, predecessor: PeerCall | None = None) -> PeerCall:
        media = None
        if predecessor is not None:
            media = predecessor.media  # the open devices carry over to the new connection
        elif session.mode is not Mode.TEXT:
            # The accepted mode, not the one asked for: the user may have chosen voice.
            media = CallMedia(self.media_devices, session.mode, self.media_options)
            media.peer_listeners.add(lambda _state: session.touch())
            media.remote_listeners.add(lambda _kind: session.touch())
        call = PeerCall(
            session_id=session.session_id,
            is_offerer=True,
            author=self.display_name or "Technician",
            send_signal=self.link.send,
            ice_servers=rtc_ice_servers(session.ice_servers, self.ice_servers),
            relay_only=session.relay_only,
            media=media,
            chat=predecessor.chat if predecessor is not None else None,
        )
        call.state_listeners.add(lambda state: self._on_call_state(session, call, state))

        async def report_connected() -> None:
            await call.connected.wait()
            if predecessor is not None:
                session.recoveries += 1
            session.recovery_attempts = 0
            session.path_lost_at = None
            await self.link.request(CallConnected(session_id=session.session_id))
            session.touch()

        self._spawn(report_connected())
        return call

    def _on_call_state(self, session: ConsoleSession, call: PeerCall, state: CallState) -> None:
        if call.dropped and session.call is call and session.state not in FINAL:
            self._spawn(lambda: self._recover(session, call))

    async def _recover(self, session: ConsoleSession, lost: PeerCall) -> None:
        """The call's media path is gone (its consent checks failed; the peer closing
        its end looks the same until its hang-up arrives). aiortc has no
        ICE restart, so a new peer connection replaces it in the same session: a new
        offer through the server, which the device answers at once within its grace
        period, or after asking its user again past it. The chat log and the open
        devices carry over. A new connection that fails too is replaced again, paced
        (``RECOVERY_DELAYS_S``), for as long as the session is open."""
        if session.replacing is lost:
            return  # its "failed" and its "closed" both come here: one replacement
        session.replacing = lost
        if session.path_lost_at is None:
            session.path_lost_at = time.monotonic()
        delay = RECOVERY_DELAYS_S[min(session.recovery_attempts, len(RECOVERY_DELAYS_S) - 1)]
        session.recovery_attempts += 1
        if delay:
            await asyncio.sleep(delay)
        if session.call is not lost or session.state in FINAL:
            return  # hung up or closed meanwhile
        call = self._new_call(session, predecessor=lost)
        # Set before anything awaits: a hang-up meanwhile closes the new call (and
        # with it the devices), never the detached one.
        session.call = call
        session.consent_verified = False  # until the receipt for the new keys comes
        await lost.detach()
        session.touch()
        self.session_listeners.fire(session)
        try:
            await call.start(require_candidates=True)
        except (NoCandidates, RequestError, ConnectionError) as exc:
            # No network on this end either (no address, or our own signaling link is
            # down and reconnecting): nothing offered; try again later, paced.
            log.info("session %s: no new connection yet (%s)", session.session_id, exc)
            call.dropped = True
            self._spawn(lambda: self._recover(session, call))
            return
        log.info("session %s: path lost, offered a new connection", session.session_id)
        while not call.connected.is_set():
            try:
                await asyncio.wait_for(call.connected.wait(), RECOVERY_ATTEMPT_S)
            except TimeoutError:
                if session.call is not call or session.state in FINAL:
                    return
                if call.remote_fingerprint is not None:
                    # Answered, yet nothing connects (no address pair works; aiortc
                    # does not even start ICE without a local candidate): next one.
                    call.dropped = True
                    self._spawn(lambda: self._recover(session, call))
                    return
                # Not answered yet: the device user may be being asked again.

    def _on_consent(self, receipt: ConsentReceipt) -> None:
        """Verify the device's signature and that it binds *this* call's fingerprints."""
        session = self.sessions.get(receipt.session_id)
        if session is None:
            return
        session.consent = receipt
        device = self.devices.get(receipt.device_id)
        call = session.call
        try:
            if device is None:
                raise RequestError("not_found", "the device is not in the inventory")
            identity.verify_consent(identity.load_public_key(device.public_key), receipt)
            if call is None or (
                receipt.offer_fingerprint != call.local_fingerprint
                or receipt.answer_fingerprint != call.remote_fingerprint
            ):
                raise RequestError(
                    "fingerprint_mismatch", "the receipt is not bound to this call's DTLS keys"
                )
        except (RequestError, ProtocolError) as exc:
            session.consent_verified = False
            session.consent_error = str(exc)
            log.error("consent receipt refused for %s: %s", receipt.session_id, exc)
            # No proof that the device user consented to *this* call (or someone sits
            # between us): end the call, visibly. The session stays for the technician.
            if call is not None:
                self._spawn(self.hang_up(receipt.session_id))
        else:
            session.consent_verified = True
            session.consent_error = None
        session.touch()
        self.session_listeners.fire(session)

    async def wait_session(
        self, session: ConsoleSession, states: Sequence[SessionState], timeout_s: float = 30.0
    ) -> SessionState:
        async def wait() -> SessionState:
            while session.state not in states:
                await session.changed.wait()
            return session.state

        return await asyncio.wait_for(wait(), timeout_s)

    async def hang_up(self, session_id: str) -> None:
        await self._end_call(self.sessions[session_id])
        await self.link.request(CallHangup(session_id=session_id))

    async def close_session(self, session_id: str) -> None:
        await self.link.request(SessionClose(session_id=session_id))

    async def write_summary(self, session_id: str, **fields: str) -> None:
        assert self.token is not None
        await api_post(
            self.server,
            self.fingerprint,
            f"/api/v1/sessions/{session_id}/summary",
            fields,
            token=self.token,
        )

    # -- notifications ----------------------------------------------------------------

    async def notify(
        self,
        *,
        title: str,
        body: str,
        device_ids: Sequence[str] = (),
        group_id: str | None = None,
        ttl_s: int = 24 * 3600,
    ) -> NotificationProgress:
        reply = await self.link.request(
            NotifySend(
                device_ids=tuple(device_ids),
                group_id=group_id,
                title=title,
                body=body,
                ttl_s=ttl_s,
            )
        )
        assert isinstance(reply, NotifySent)
        progress = NotificationProgress(
            reply.notification_id,
            reply.device_ids,
            dict.fromkeys(reply.device_ids, NotificationState.SENT),
            title=title,
        )
        self.notifications[progress.notification_id] = progress
        for early in self._early_parts.pop(progress.notification_id, []):
            if isinstance(early, NotifySent):
                self._merge_sent(progress, early)
            else:
                self._apply_update(progress, early)
        self.notification_listeners.fire(progress)
        return progress

    def _merge_sent(self, progress: NotificationProgress, part: NotifySent) -> None:
        progress.device_ids += part.device_ids
        for device_id in part.device_ids:
            progress.states.setdefault(device_id, NotificationState.SENT)
        self.notification_listeners.fire(progress)
