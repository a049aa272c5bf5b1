"""The resident device agent, without any display.

It enrols, keeps the signaling connection (pinned, authenticated by signing the
server's challenge, reconnecting with jittered backoff), reports the local conditions
the Live Support status derives from, answers invites through an ``InviteHandler``
(the Qt prompt, or a scripted policy when headless), and handles notifications.

The call itself runs in a separate per-session process (``device_agent.call_process``)
that this agent starts when an invite arrives and ends when the session closes. The
agent relays its signaling, signs its consent receipt with the device key, and never
holds chat content: chat travels peer to peer inside that process. Neither aiortc
nor PyAV is imported here, so the resident agent stays small.

Privacy: the agent logs events, never content.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from device_agent import ipc
from device_agent.admin import StateWatcher
from device_agent.session_host import SessionHost
from device_agent.state import AgentState, DeviceIdentity, ServiceConfig, device_description
from peer.chat import Listeners
from peer.signaling import (
    Backoff,
    LinkState,
    NotConnected,
    RequestError,
    SignalingClient,
    api_post,
)
from protocol import identity
from protocol.codec import Message
from protocol.enrolment import EnrolmentCode
from protocol.enums import (
    AudioInterruption,
    DeviceAck,
    LiveSupportStatus,
    Mode,
    RejectReason,
    SdpType,
    SessionState,
    derive_status,
)
from protocol.errors import ErrorCode
from protocol.messages import (
    AuthChallenge,
    AuthDevice,
    AuthOk,
    CallConnected,
    CallHangup,
    DeviceStatus,
    NotifyAck,
    NotifyAnswer,
    NotifyDeliver,
    SessionAccept,
    SessionAttach,
    SessionConsent,
    SessionInvite,
    SessionReject,
    SessionResume,
    SessionUpdate,
    SignalCandidate,
    SignalSdp,
    StatusReport,
)

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"

#: Makes the handle of a session: ``(on_frame, extra_args=...) -> SessionHost``.
HostFactory = Callable[..., SessionHost]

#: Decides an invite: the mode to accept as, or None to decline (or the reason to
#: give, such as "no answer" when a prompt's countdown ran out). Called with the
#: invite; must answer before ``invite.expires_at_ms`` or the server rejects for it.
InviteHandler = Callable[[SessionInvite], Awaitable[Mode | RejectReason | None]]
NotificationHandler = Callable[[NotifyDeliver], Awaitable[None]]


async def enrol(state: AgentState, code_text: str, *, name: str | None = None) -> DeviceIdentity:
    """Enrol this device with a one-time code: make a key, register it, pin the server."""
    code = EnrolmentCode.parse(code_text)
    key = state.new_key()
    default_name, model, os_name = device_description()
    reply = await api_post(
        code.server,
        code.fingerprint,
        "/api/v1/enrol",
        {
            "token": code.token,
            "public_key": identity.public_key_b64(key),
            "name": name or default_name,
            "model": model,
            "os": os_name,
        },
    )
    if reply.get("server_fingerprint") != code.fingerprint:
        raise RequestError("pin_mismatch", "the server announced another fingerprint")
    device = DeviceIdentity(
        device_id=str(reply["device_id"]),
        server=code.server,
        fingerprint=code.fingerprint,
        group_id=str(reply["group_id"]),
    )
    state.save_identity(device)
    return device


@dataclass
class ActiveSession:
    """The agent's view of its one session: metadata, never content."""

    invite: SessionInvite
    mode: Mode
    accepted_at_ms: int
    host: SessionHost
    state: SessionState = SessionState.CONNECTING
    #: The session process's latest report (states, counts, device names, stats).
    report: dict[str, Any] = field(default_factory=dict)
    #: ICE servers and policy from the server's latest ``connecting`` update (None
    #: before it): handed to the session process, and again to a restarted one.
    ice: ipc.IceConfig | None = None
    #: Fingerprints of the call the last consent receipt was signed for.
    consented: tuple[str, str] | None = None
    #: When (monotonic) the call's media path was lost, until a call is up again.
    path_lost_at: float | None = None
    #: The technician's newest offer held while the user is asked again (past grace).
    held_offer: SignalSdp | None = None

    @property
    def session_id(self) -> str:
        return self.invite.session_id


class DeviceAgent:
    def __init__(
        self,
        state: AgentState,
        *,
        invite_handler: InviteHandler,
        notification_handler: NotificationHandler | None = None,
        name: str | None = None,
        ice_servers: Sequence[ipc.IceServer] = (),
        session_args: Sequence[str] = (),
        server_grace_s: float = 60.0,
        path_grace_s: float = 60.0,
        prewarm: bool = False,
        backoff: Backoff = Backoff(),
        host_factory: HostFactory = SessionHost,
    ) -> None:
        self.state = state
        self.device, self._key = state.load()
        #: The local service configuration, read once; set_service changes both copies.
        self.service = state.service()
        #: Settable after construction: a UI model that needs the agent binds itself.
        self.invite_handler = invite_handler
        self.notification_handler = notification_handler
        default_name, self.model, self.os = device_description()
        self.name = name or default_name
        self.ice_servers = tuple(ice_servers)
        #: Extra arguments for every session process (media options, a scripted user).
        self.session_args = list(session_args)
        #: The platform's audio interruption, as last raised (see ``audio_interruption``).
        self.interruption = AudioInterruption.NONE
        #: How long a session outlives the lost server (the server's own grace period
        #: for a lost device has the same default): past it, nobody can close the
        #: session properly, so the device ends it and releases its devices.
        self.server_grace_s = server_grace_s
        #: How long after the call's media path was lost the technician's new offer
        #: (the recovery) is answered without asking the user again; after it, the
        #: user is prompted as for the invite (docs/calls.md, "Path loss").
        self.path_grace_s = path_grace_s
        self._server_lost: asyncio.TimerHandle | None = None
        #: Keep one idle session process started ahead of the next invite. It holds
        #: nothing (no session, device or candidate) but has aiortc and PyAV loaded,
        #: so a call starts as fast as in one process; it costs its memory while idle.
        #: Off by default: the process then starts at the invite, while the prompt
        #: shows, which a person's reaction time hides.
        self.prewarm = prewarm
        #: Where sessions run: a process of their own (tests may run one in-process).
        self.host_factory = host_factory
        self._spare: SessionHost | None = None
        self.server_status: DeviceStatus | None = None
        self.session: ActiveSession | None = None
        self.status_listeners: Listeners[LiveSupportStatus] = Listeners()
        self.session_listeners: Listeners[ActiveSession | None] = Listeners()
        #: Fired with each report of the session process.
        self.report_listeners: Listeners[ActiveSession] = Listeners()
        #: Every session process started, ended or not (pids, for checks and reports).
        self.hosts: list[SessionHost] = []
        self.notifications: dict[str, NotifyDeliver] = {}
        #: Reads and answers given while the server was out of reach, by notification
        #: id, sent on reconnect (see ``_send_or_queue``).
        self.outbox: dict[str, NotifyAck | NotifyAnswer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._preparing = False
        #: The invite being answered, and whether it ended before the user answered.
        self._answering: str | None = None
        self._answering_over = False
        #: Fired with the id of an invite that ended before the user answered it (the
        #: technician cancelled, or the server's timeout came first): the prompt goes.
        self.invite_withdrawn: Listeners[str] = Listeners()
        self.client = SignalingClient(
            self.device.server,
            self.device.fingerprint,
            authenticate=self._authenticate,
            on_message=self._on_message,
            on_online=self._on_online,
            on_state=self._on_link_state,
            backoff=backoff,
        )

    # -- lifecycle ------------------------------------------------------------------

    #: Set by start(): the watcher of the state folder, and what writes the runtime
    #: status file (``state.RUNTIME_FILE``) for the admin utility.
    _state_watcher: StateWatcher | None = None
    _runtime_hooks: tuple[Callable[[], None], ...] = ()
    _runtime_written: tuple[str, bool, bool] | None = None

    async def start(self) -> None:
        self.client.start()
        # The state folder's files are the truth: the admin utility changes them, and
        # the agent picks each change up and reports it by itself.
        self._state_watcher = StateWatcher(
            self.state.folder,
            {"service.json": self.reload_service, "identity.json": self.reload_identity},
        )
        self._state_watcher.start()
        self._runtime_hooks = (
            self.status_listeners.add(lambda _status: self._write_runtime_status()),
            self.session_listeners.add(lambda _session: self._write_runtime_status()),
        )
        self._write_runtime_status()
        if self.prewarm:
            self._spawn(self._refill_spare())

    async def _refill_spare(self) -> None:
        if self._spare is None or self._spare.exited.is_set():
            spare = self.host_factory(self._on_session_frame, extra_args=self.session_args)
            self.hosts.append(spare)
            self._spare = spare
            await spare.start()

    async def _session_host(self) -> SessionHost:
        """The spare process if one is ready, else a new one."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.started and not spare.exited.is_set():
            return spare
        host = self.host_factory(self._on_session_frame, extra_args=self.session_args)
        self.hosts.append(host)
        await host.start()
        return host

    async def stop(self) -> None:
        if self._state_watcher is not None:
            await self._state_watcher.stop()
            self._state_watcher = None
        for remove in self._runtime_hooks:
            remove()
        self._runtime_hooks = ()
        await self._end_session("agent stopping")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A process still warming up for an invite that was being answered.
        for host in self.hosts:
            await host.end("agent stopping")
        await self.client.close()
        if self._runtime_written is not None:
            runtime = self.state.load_runtime()
            if runtime is not None and runtime.get("pid") == os.getpid():
                self.state.clear_runtime()
            self._runtime_written = None

    def _write_runtime_status(self) -> None:
        """Tell the admin utility how this agent stands, when that changes: its pid,
        status, whether it is online and whether a session is open. Metadata only."""
        now = (self.status.value, self.online, self.session is not None)
        if now == self._runtime_written:
            return
        self._runtime_written = now
        status, online, session_open = now
        try:
            self.state.save_runtime(
                {
                    "pid": os.getpid(),
                    "status": status,
                    "online": online,
                    "session_open": session_open,
                    "updated_at_ms": int(time.time() * 1000),
                }
            )
        except OSError as exc:
            log.warning("cannot write the runtime status file: %s", exc)

    async def reload_service(self) -> None:
        """service.json changed (the admin utility): apply it as ``set_service`` does."""
        config = self.state.service()
        if config != self.service:
            await self._apply_service(config)

    async def reload_identity(self) -> None:
        """identity.json changed: the device was enrolled again (the admin utility's
        re-enrol). End any open session, leave the server as the old device and
        connect as the new one."""
        device, key = self.state.load()
        if device == self.device and identity.public_key_b64(key) == identity.public_key_b64(
            self._key
        ):
            return
        log.info("enrolled again as %s: reconnecting", device.device_id)
        await self._end_session("enrolled again")
        old = self.client
        # Whoever waits for the link to stop for good (the agent's main loop) now waits
        # for the new link: replacing the link is not the agent stopping.
        stopped, old.stopped = old.stopped, asyncio.Event()
        await old.close()
        self.device, self._key = device, key
        self.server_status = None
        self.client = SignalingClient(
            device.server,
            device.fingerprint,
            authenticate=self._authenticate,
            on_message=self._on_message,
            on_online=self._on_online,
            on_state=self._on_link_state,
            backoff=old.backoff,
        )
        if not stopped.is_set():
            self.client.stopped = stopped
        self.client.start()
        self.status_listeners.fire(self.status)

    @property
    def online(self) -> bool:
        return self.client.state is LinkState.ONLINE

    @property
    def status(self) -> LiveSupportStatus:
        """From the server when online; derived from local conditions otherwise."""
        service = self.service
        if self.online and self.server_status is not None:
            return self.server_status.status
        return derive_status(
            service_installed=service.installed,
            service_enabled=service.enabled,
            policy_enabled=self.server_status.policy_enabled if self.server_status else True,
            session_open=self.session is not None,
        )

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except RequestError as exc:
                log.warning("request refused: %s", exc)
            except Exception:
                log.exception("agent task failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- signaling ------------------------------------------------------------------

    def _authenticate(self, challenge: AuthChallenge) -> Message:
        if challenge.server_fingerprint != self.device.fingerprint:
            # The TLS pin already guarantees this; a mismatch means a confused server.
            log.error("the server announced an unexpected fingerprint")
        return AuthDevice(
            device_id=self.device.device_id,
            signature=identity.sign_challenge(
                self._key,
                nonce_b64=challenge.nonce,
                device_id=self.device.device_id,
                server_fingerprint=self.device.fingerprint,
            ),
            agent_version=AGENT_VERSION,
        )

    async def _on_online(self, auth: AuthOk) -> None:
        # Whatever changed here while we were away (the service switched off, a chat
        # service removed) reaches the server first, then the session and the
        # notification answers the user gave meanwhile. Each step on its own: one
        # refused (or cut off by the link dropping again) must not skip the others.
        for step in (self.report_status, self._attach_session, self._flush_outbox):
            try:
                await step()
            except (RequestError, TimeoutError) as exc:
                log.warning("after reconnecting, %s failed: %s", step.__name__, exc)

    async def _attach_session(self) -> None:
        """Take up the open session again after a reconnect or a server restart. A
        session the server no longer knows ended while we were away: end it here too,
        which ends its process and releases the camera and microphone."""
        session = self.session
        if session is None:
            return
        try:
            reply = await self.client.request(SessionAttach(session_id=session.session_id))
        except RequestError as exc:
            if exc.code == ErrorCode.NOT_FOUND.value and self.session is session:
                log.info("the session ended while we were away")
                await self._end_session("ended while offline")
                return
            raise
        if isinstance(reply, SessionUpdate):
            await self._on_session_update(reply)

    def _on_link_state(self, link: LinkState) -> None:
        self.status_listeners.fire(self.status)
        if link is LinkState.ONLINE:
            self._cancel_server_lost()
        elif self.session is not None and self._server_lost is None:
            self._server_lost = asyncio.get_running_loop().call_later(
                self.server_grace_s, self._on_server_lost
            )

    def _on_server_lost(self) -> None:
        self._server_lost = None
        if self.session is not None and not self.online:
            log.warning("the server is gone past the grace period: ending the session")
            self._spawn(self._end_session("server lost"))

    def _cancel_server_lost(self) -> None:
        if self._server_lost is not None:
            self._server_lost.cancel()
            self._server_lost = None

    async def report_status(self) -> None:
        service = self.service
        await self.client.request(
            StatusReport(
                service_installed=service.installed,
                service_enabled=service.enabled,
                chat_services=service.chat_services,
                name=self.name,
                model=self.model,
                os=self.os,
            )
        )

    async def set_service(self, config: ServiceConfig) -> None:
        """What the admin utility does: change the service and report it."""
        self.state.save_service(config)
        await self._apply_service(config)

    async def _apply_service(self, config: ServiceConfig) -> None:
        self.service = config
        if self.online:
            await self.report_status()
        self.status_listeners.fire(self.status)

    async def _on_message(self, message: Message) -> None:
        if isinstance(message, DeviceStatus):
            self.server_status = message
            self.status_listeners.fire(self.status)
        elif isinstance(message, SessionInvite):
            self._spawn(self._answer_invite(message))
        elif isinstance(message, SessionUpdate):
            await self._on_session_update(message)
        elif isinstance(message, SignalSdp | SignalCandidate):
            await self._on_signal(message)
        elif isinstance(message, CallHangup):
            session = self.session
            if session is not None and message.session_id == session.session_id:
                session.path_lost_at = None
                await session.host.send(ipc.RemoteHangup())
                session.state = SessionState.CALL_ENDED
                self.session_listeners.fire(session)
        elif isinstance(message, NotifyDeliver):
            await self._on_notification(message)

    # -- sessions -------------------------------------------------------------------

    async def _answer_invite(self, invite: SessionInvite) -> None:
        if invite.session_id in (
            self._answering,
            self.session.session_id if self.session is not None else None,
        ):
            # The same invite again: the server sends it to a device that reconnects
            # while invited (it may have lost its prompt, not this one), and after a
            # restart of its own. The prompt showing answers it; it is not "busy".
            return
        service = self.service
        if not (service.installed and service.enabled):
            await self.client.request(
                SessionReject(session_id=invite.session_id, reason=RejectReason.UNAVAILABLE)
            )
            return
        if self.session is not None or self._preparing:
            await self.client.request(
                SessionReject(session_id=invite.session_id, reason=RejectReason.BUSY)
            )
            return
        # Start the session process now, while the user reads the prompt: importing
        # aiortc and PyAV takes a few hundred ms that would otherwise delay the call.
        # It holds nothing until session.begin (after acceptance): no peer
        # connection, no device, no candidate.
        self._preparing = True
        self._answering, self._answering_over = invite.session_id, False
        host: SessionHost | None = None
        try:
            host = await self._session_host()
            remaining_s = max(0.0, invite.expires_at_ms / 1000 - time.time())
            mode: Mode | None = None
            try:
                answer = await asyncio.wait_for(self.invite_handler(invite), remaining_s)
            except TimeoutError:
                pass  # the server has expired the invite: nothing to send
            else:
                if self._answering_over:
                    pass  # withdrawn while the user looked at it: nothing to answer
                elif isinstance(answer, Mode):
                    mode = answer
                else:
                    reason = answer or RejectReason.DECLINED
                    await self.client.request(
                        SessionReject(session_id=invite.session_id, reason=reason)
                    )
            if mode is not None and mode not in invite.offered_modes:
                mode = None
                log.error("the invite handler chose a mode that was not offered")
                await self.client.request(SessionReject(session_id=invite.session_id))
            if mode is None:
                await host.end("rejected")
                return
            session = ActiveSession(
                invite=invite, mode=mode, accepted_at_ms=int(time.time() * 1000), host=host
            )
            self.session = session
            await self._begin(session)
            try:
                await self.client.request(SessionAccept(session_id=invite.session_id, mode=mode))
            except RequestError:
                await self._end_session("accept refused")
                raise
            self.session_listeners.fire(session)
        finally:
            self._preparing = False
            self._answering = None
            if host is not None and (self.session is None or self.session.host is not host):
                await host.end("not accepted")
            if self.prewarm and self.session is None:
                self._spawn(self._refill_spare())

    async def _begin(self, session: ActiveSession) -> None:
        """Hand the accepted session to its process, and watch that process."""
        host = session.host
        await host.send(
            ipc.Begin(
                session_id=session.session_id,
                mode=session.mode,
                technician_name=session.invite.technician.display_name,
                technician_organisation=session.invite.technician.organisation,
                device_name=self.name[:128],
                ice_servers=self.ice_servers,
                chat_services=self.chat_services,
            )
        )
        if self.interruption is not AudioInterruption.NONE:
            await host.send(ipc.Interruption(interruption=self.interruption))
        if session.ice is not None:
            await host.send(session.ice)
        self._spawn(self._watch(session, host))

    async def _watch(self, session: ActiveSession, host: SessionHost) -> None:
        """A session process that dies on its own (a crash in a codec, killed by the
        platform) takes the call with it, not the session: the call is hung up, and a
        fresh process waits so that the user can resume it without a new prompt."""
        await host.exited.wait()
        if self.session is not session or session.host is not host or host.ended is not None:
            return  # ended as it should be
        log.error("the session process exited unexpectedly (%s)", host.returncode)
        with contextlib.suppress(RequestError):
            await self.client.request(CallHangup(session_id=session.session_id))
        session.state = SessionState.CALL_ENDED
        session.host = self.host_factory(self._on_session_frame, extra_args=self.session_args)
        self.hosts.append(session.host)
        await session.host.start()
        await self._begin(session)
        self.session_listeners.fire(session)

    async def _on_session_frame(self, host: SessionHost, message: Message) -> None:
        """A frame from the session process: relay, sign, or record it. Only the
        process of the accepted session is heard: a spare or a process whose invite
        was not accepted has nothing to say to the server."""
        session = self.session
        if session is None or session.host is not host or isinstance(message, ipc.Ended):
            return
        sid = session.session_id
        if isinstance(message, ipc.SignalOut):
            # Checked like any frame from outside: a signal, for this session only.
            await self.client.send(ipc.unwrap_signal(message.frame, sid))
        elif isinstance(message, ipc.Fingerprints):
            await self._send_consent(session, message)
        elif isinstance(message, ipc.CallUp):
            session.path_lost_at = None
            await self.client.request(CallConnected(session_id=sid))
        elif isinstance(message, ipc.PathLost):
            # Not after a hang-up: the peer closing its end looks the same to the process.
            in_call = session.state in (SessionState.CONNECTING, SessionState.IN_CALL)
            if session.path_lost_at is None and in_call:
                session.path_lost_at = time.monotonic()
                log.info("the call's media path was lost")
        elif isinstance(message, ipc.HangUp):
            session.path_lost_at = None  # a resumed call is a new call, not a recovery
            with contextlib.suppress(RequestError):
                await self.client.request(CallHangup(session_id=sid))
            session.state = SessionState.CALL_ENDED
            self.session_listeners.fire(session)
        elif isinstance(message, ipc.Resume):
            if session.state is SessionState.CALL_ENDED:
                await self.client.request(SessionResume(session_id=sid))
        elif isinstance(message, ipc.Report):
            session.report = session.host.last_report
            self.report_listeners.fire(session)

    async def _on_signal(self, message: SignalSdp | SignalCandidate) -> None:
        session = self.session
        if session is None or message.session_id != session.session_id:
            log.warning("signal for a session we do not have")
            return
        if self.path_grace_over(session) or session.held_offer is not None:
            # A recovery offer past the grace period: nothing reaches the session
            # process (no answer, no candidate) until the user agreed again.
            if isinstance(message, SignalSdp) and message.sdp_type is SdpType.OFFER:
                asking = session.held_offer is not None
                session.held_offer = message  # the newest offer is the one answered
                if not asking:
                    self._spawn(self._ask_again(session))
            return
        await session.host.send(ipc.SignalIn(frame=ipc.wrap_signal(message)))

    def path_grace_over(self, session: ActiveSession) -> bool:
        """Whether the call's path has been lost for longer than the grace period."""
        lost_at = session.path_lost_at
        return lost_at is not None and time.monotonic() - lost_at > self.path_grace_s

    async def _ask_again(self, session: ActiveSession) -> None:
        """The path was lost for longer than the grace period: the new connection
        needs the user's consent again, asked with the same prompt as the invite. A
        yes signs the new connection's receipt with the new acceptance time; a no (or
        no answer) hangs the call up, and the session stays as after any hang-up."""
        log.info("the path was lost past the grace period: asking the user again")
        # The invite as it was, but for the call's own mode only and with a fresh
        # deadline (the prompt counts down to the invite's expiry, long past).
        again = dataclasses.replace(
            session.invite,
            mode=session.mode,
            offered_modes=(session.mode,),
            expires_at_ms=int((time.time() + self.path_reconsent_timeout_s) * 1000),
        )
        try:
            answer = await asyncio.wait_for(
                self.invite_handler(again), self.path_reconsent_timeout_s
            )
        except TimeoutError:
            answer = None
        offer, session.held_offer = session.held_offer, None
        if self.session is not session:
            return
        if isinstance(answer, Mode) and offer is not None:
            session.accepted_at_ms = int(time.time() * 1000)
            session.path_lost_at = None  # consent is fresh: the grace starts over
            await session.host.send(ipc.SignalIn(frame=ipc.wrap_signal(offer)))
        else:
            session.path_lost_at = None
            await session.host.send(ipc.ControlIn(control=ipc.Control.HANG_UP))

    #: How long the user has to answer the prompt after a long path loss.
    path_reconsent_timeout_s = 60.0

    async def _send_consent(self, session: ActiveSession, prints: ipc.Fingerprints) -> None:
        """Sign the consent receipt bound to this call's two DTLS fingerprints.

        The agent signs, never the session process: the device key stays here."""
        receipt = identity.sign_consent(
            self._key,
            session_id=session.session_id,
            device_id=self.device.device_id,
            technician_id=session.invite.technician.technician_id,
            mode=session.mode,
            accepted_at_ms=session.accepted_at_ms,
            offer_fingerprint=prints.offer_fingerprint,
            answer_fingerprint=prints.answer_fingerprint,
        )
        session.consented = (prints.offer_fingerprint, prints.answer_fingerprint)
        await self.client.request(SessionConsent(receipt=receipt))

    async def _on_session_update(self, update: SessionUpdate) -> None:
        session = self.session
        terminal = (SessionState.CLOSED, SessionState.EXPIRED, SessionState.REJECTED)
        if update.session_id == self._answering and update.state in terminal:
            self._answering_over = True
            self.invite_withdrawn.fire(update.session_id)
            return
        if session is None or update.session_id != session.session_id:
            return
        session.state = update.state
        if update.state in (SessionState.CLOSED, SessionState.EXPIRED, SessionState.REJECTED):
            await self._end_session(update.state.value)
            return
        if update.state in (SessionState.CONNECTING, SessionState.IN_CALL):
            # Before the technician's offer (the server sends this update to the
            # device first): the call the offer starts uses this end's credential.
            # An in_call update brings a fresh one for a connection that replaces
            # a lost one.
            session.ice = ipc.IceConfig(
                ice_servers=tuple(
                    ipc.IceServer(urls=s.urls, username=s.username, credential=s.credential)
                    for s in update.ice_servers
                )
                + self.ice_servers,
                relay_only=update.relay_only,
            )
            await session.host.send(session.ice)
        self.session_listeners.fire(session)

    async def _end_session(self, reason: str) -> None:
        """The session is over: its process closes the call, releases the camera and
        microphone and exits; we wait for that."""
        session, self.session = self.session, None
        if session is None:
            return
        self._cancel_server_lost()
        await session.host.end(reason)
        self.session_listeners.fire(None)
        if self.prewarm and reason != "agent stopping":
            self._spawn(self._refill_spare())

    @property
    def chat_services(self) -> tuple[Mode, ...]:
        """What the chat-service configuration allows: policy (as the server last said)
        and the local service both."""
        local = self.service.chat_services
        if self.server_status is None:
            return local
        return tuple(m for m in local if m in self.server_status.allowed_modes)

    async def show_call_window(self) -> bool:
        """The user chose "Live Support" while Connected: the session process brings
        its call window back (from where the user can also resume a hung-up call)."""
        session = self.session
        if session is None:
            return False
        return await session.host.send(ipc.Show())

    async def control(self, control: ipc.Control, argument: str = "") -> None:
        """Operate a call control from outside the call window (tray, automation)."""
        session = self.session
        if session is not None:
            await session.host.send(ipc.ControlIn(control=control, argument=argument))

    async def hang_up(self) -> None:
        """The device user ends the call; the session stays open (status Connected)."""
        await self.control(ipc.Control.HANG_UP)

    async def resume(self) -> None:
        """Reopen the call with the same technician; no new consent prompt."""
        await self.control(ipc.Control.RESUME)

    async def audio_interruption(self, interruption: AudioInterruption) -> None:
        """The platform hook: a phone call (or another app) took the audio, or gave it
        back. Live Support audio is muted both ways until it ends."""
        self.interruption = interruption
        session = self.session
        if session is not None:
            await session.host.send(ipc.Interruption(interruption=interruption))

    async def query_session(self) -> dict[str, Any]:
        """Ask the session process for a fresh report and wait for it."""
        session = self.session
        if session is None:
            return {}
        got = asyncio.Event()
        remove = self.report_listeners.add(lambda _s: got.set())
        try:
            await session.host.send(ipc.Query())
            await asyncio.wait_for(got.wait(), 10)
        finally:
            remove()
        return session.report

    # -- notifications --------------------------------------------------------------

    async def _on_notification(self, message: NotifyDeliver) -> None:
        """The server delivers each notification until it is read or answered: again
        after every reconnect, so one shown before an agent restart comes back. One
        shown already in this run, or read or answered while offline, is not shown
        again (the ack is repeated; the server ignores a repeated one)."""
        nid = message.notification_id
        seen = nid in self.notifications or nid in self.outbox
        if nid not in self.outbox:
            self.notifications[nid] = message
        await self.client.request(NotifyAck(notification_id=nid, state=DeviceAck.DELIVERED))
        if self.notification_handler is not None and not seen:
            self._spawn(self.notification_handler(message))

    async def mark_notification_read(self, notification_id: str) -> None:
        await self._send_or_queue(NotifyAck(notification_id=notification_id, state=DeviceAck.READ))

    async def answer_notification(self, notification_id: str, text: str) -> None:
        await self._send_or_queue(NotifyAnswer(notification_id=notification_id, text=text))

    async def _send_or_queue(self, message: NotifyAck | NotifyAnswer) -> None:
        """Send what the user did with a notification; while the server is out of
        reach, keep it (in memory, the latest per notification: an answer replaces an
        unsent read) and send it when the link is back. The server takes a repeat as
        the same act (a resent read or the same answer changes nothing), so a reply
        lost with a dropping link makes no duplicate. The server's refusals (expired,
        answered already) still raise ``RequestError``."""
        nid = message.notification_id
        self.notifications.pop(nid, None)
        if not (isinstance(self.outbox.get(nid), NotifyAnswer) and isinstance(message, NotifyAck)):
            self.outbox[nid] = message
        try:
            await self._send_queued(nid)
        except (NotConnected, TimeoutError):
            log.info("offline: notification %s kept to send on reconnect", nid)

    async def _send_queued(self, notification_id: str) -> None:
        message = self.outbox.get(notification_id)
        if message is None:
            return
        try:
            await self.client.request(message)
        except NotConnected:
            raise
        except RequestError:
            self.outbox.pop(notification_id, None)  # refused for good: no retry
            raise
        if self.outbox.get(notification_id) is message:
            del self.outbox[notification_id]

    async def _flush_outbox(self) -> None:
        """Send, in order, what the user did with notifications while offline."""
        for nid in list(self.outbox):
            try:
                await self._send_queued(nid)
            except (NotConnected, TimeoutError):
                return  # offline again: the next reconnect goes on
            except RequestError as exc:
                log.warning("notification %s: the server refused a queued reply: %s", nid, exc)
