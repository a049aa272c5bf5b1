"""The resident device agent, without any display.

It enrols, keeps the signaling connection (pinned, authenticated by signing the
server's challenge, reconnecting with jittered backoff), reports the local conditions
the Live Support status derives from, answers invites through an ``InviteHandler``
(the Qt prompt, or a scripted policy when headless), runs the call, and handles
notifications.

Privacy: the agent logs events, never content. The call's chat lives in memory in the
call object and is cleared when the call closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiortc import RTCIceServer

from device_agent.state import AgentState, DeviceIdentity, ServiceConfig, device_description
from peer.call import PeerCall
from peer.chat import Listeners
from peer.signaling import Backoff, LinkState, RequestError, SignalingClient, api_post
from protocol import identity
from protocol.codec import Message
from protocol.enrolment import EnrolmentCode
from protocol.enums import (
    DeviceAck,
    LiveSupportStatus,
    Mode,
    RejectReason,
    SdpType,
    SessionState,
    derive_status,
)
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

#: Decides an invite: the mode to accept as, or None to reject. Called with the
#: invite; must answer before ``invite.expires_at_ms`` or the server rejects for it.
InviteHandler = Callable[[SessionInvite], Awaitable[Mode | None]]
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
    state: SessionState = SessionState.CONNECTING
    call: PeerCall | None = None


class DeviceAgent:
    def __init__(
        self,
        state: AgentState,
        *,
        invite_handler: InviteHandler,
        notification_handler: NotificationHandler | None = None,
        name: str | None = None,
        ice_servers: Sequence[RTCIceServer] = (),
        backoff: Backoff = Backoff(),
    ) -> None:
        self.state = state
        self.device, self._key = state.load()
        #: The local service configuration, read once; set_service changes both copies.
        self.service = state.service()
        self._invite_handler = invite_handler
        self._notification_handler = notification_handler
        default_name, self.model, self.os = device_description()
        self.name = name or default_name
        self.ice_servers = list(ice_servers)
        self.server_status: DeviceStatus | None = None
        self.session: ActiveSession | None = None
        self.status_listeners: Listeners[LiveSupportStatus] = Listeners()
        self.session_listeners: Listeners[ActiveSession | None] = Listeners()
        self.call_listeners: Listeners[PeerCall] = Listeners()
        self.notifications: dict[str, NotifyDeliver] = {}
        self._tasks: set[asyncio.Task[None]] = set()
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

    async def start(self) -> None:
        self.client.start()

    async def stop(self) -> None:
        await self._end_call()
        self.session = None
        for task in list(self._tasks):
            task.cancel()
        await self.client.close()

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
        await self.report_status()

    def _on_link_state(self, link: LinkState) -> None:
        self.status_listeners.fire(self.status)

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
            if self.session is not None and message.session_id == self.session.invite.session_id:
                await self._end_call()
                self.session.state = SessionState.CALL_ENDED
                self.session_listeners.fire(self.session)
        elif isinstance(message, NotifyDeliver):
            await self._on_notification(message)

    # -- sessions -------------------------------------------------------------------

    async def _answer_invite(self, invite: SessionInvite) -> None:
        service = self.service
        if not (service.installed and service.enabled):
            await self.client.request(
                SessionReject(session_id=invite.session_id, reason=RejectReason.UNAVAILABLE)
            )
            return
        if self.session is not None:
            await self.client.request(
                SessionReject(session_id=invite.session_id, reason=RejectReason.BUSY)
            )
            return
        remaining_s = max(0.0, invite.expires_at_ms / 1000 - time.time())
        try:
            mode = await asyncio.wait_for(self._invite_handler(invite), remaining_s)
        except TimeoutError:
            return  # the server has expired the invite: nothing to send
        if mode is None:
            await self.client.request(SessionReject(session_id=invite.session_id))
            return
        if mode not in invite.offered_modes:
            raise ValueError(f"{mode} was not offered")
        session = ActiveSession(invite=invite, mode=mode, accepted_at_ms=int(time.time() * 1000))
        self.session = session
        session.call = self._new_call(session)
        try:
            await self.client.request(SessionAccept(session_id=invite.session_id, mode=mode))
        except RequestError:
            await self._end_call()
            self.session = None
            raise
        self.session_listeners.fire(session)

    def _new_call(self, session: ActiveSession) -> PeerCall:
        session_id = session.invite.session_id
        call = PeerCall(
            session_id=session_id,
            is_offerer=False,
            author=self.name,
            send_signal=self.client.send,
            ice_servers=self.ice_servers,
        )

        async def report_connected() -> None:
            await call.connected.wait()
            await self.client.request(CallConnected(session_id=session_id))

        self._spawn(report_connected())
        self.call_listeners.fire(call)
        return call

    async def _on_signal(self, message: SignalSdp | SignalCandidate) -> None:
        session = self.session
        if session is None or message.session_id != session.invite.session_id:
            log.warning("signal for a session we do not have")
            return
        if session.call is None:
            session.call = self._new_call(session)
        call = session.call
        await call.handle_signal(message)
        if isinstance(message, SignalSdp) and message.sdp_type is SdpType.OFFER:
            await self._send_consent(session, call)

    async def _send_consent(self, session: ActiveSession, call: PeerCall) -> None:
        """Sign the consent receipt bound to this call's two DTLS fingerprints."""
        assert call.local_fingerprint
        assert call.remote_fingerprint
        receipt = identity.sign_consent(
            self._key,
            session_id=session.invite.session_id,
            device_id=self.device.device_id,
            technician_id=session.invite.technician.technician_id,
            mode=session.mode,
            accepted_at_ms=session.accepted_at_ms,
            offer_fingerprint=call.remote_fingerprint,
            answer_fingerprint=call.local_fingerprint,
        )
        await self.client.request(SessionConsent(receipt=receipt))

    async def _on_session_update(self, update: SessionUpdate) -> None:
        session = self.session
        if session is None or update.session_id != session.invite.session_id:
            return
        session.state = update.state
        if update.state in (SessionState.CLOSED, SessionState.EXPIRED, SessionState.REJECTED):
            await self._end_call()
            self.session = None
            self.session_listeners.fire(None)
            return
        if update.state is SessionState.CONNECTING and update.resumed and session.call is None:
            session.call = self._new_call(session)
        self.session_listeners.fire(session)

    async def _end_call(self) -> None:
        session = self.session
        if session is not None and session.call is not None:
            call, session.call = session.call, None
            await call.close()

    async def hang_up(self) -> None:
        """The device user ends the call; the session stays open (status Connected)."""
        session = self.session
        if session is None:
            return
        await self._end_call()
        with contextlib.suppress(RequestError):
            await self.client.request(CallHangup(session_id=session.invite.session_id))
        session.state = SessionState.CALL_ENDED
        self.session_listeners.fire(session)

    async def resume(self) -> None:
        """Reopen the call with the same technician; no new consent prompt."""
        session = self.session
        if session is None or session.state is not SessionState.CALL_ENDED:
            return
        session.call = self._new_call(session)
        await self.client.request(SessionResume(session_id=session.invite.session_id))

    # -- notifications --------------------------------------------------------------

    async def _on_notification(self, message: NotifyDeliver) -> None:
        self.notifications[message.notification_id] = message
        await self.client.request(
            NotifyAck(notification_id=message.notification_id, state=DeviceAck.DELIVERED)
        )
        if self._notification_handler is not None:
            self._spawn(self._notification_handler(message))

    async def mark_notification_read(self, notification_id: str) -> None:
        await self.client.request(NotifyAck(notification_id=notification_id, state=DeviceAck.READ))
        self.notifications.pop(notification_id, None)

    async def answer_notification(self, notification_id: str, text: str) -> None:
        await self.client.request(NotifyAnswer(notification_id=notification_id, text=text))
        self.notifications.pop(notification_id, None)
