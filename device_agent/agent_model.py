"""What the resident agent's windows show and do, without Qt.

The tray (or the agent window), the incoming-call prompt and the notification
pop-ups and inbox (``device_agent.ui``) are thin views of this model; it is tested
without a display. It binds itself to a :class:`~device_agent.agent.DeviceAgent` as
its invite and notification handler.

Like the agent, it holds no conversation: a notification's text stays in memory
until the user answers it or marks it read, and is never written anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from device_agent.agent import ActiveSession, DeviceAgent
from peer.chat import Listeners
from peer.signaling import RequestError
from protocol.enums import LiveSupportStatus, Mode, RejectReason
from protocol.messages import NotifyDeliver, SessionInvite

log = logging.getLogger(__name__)

#: The prompt gives up this long before the server would, so that its own "no
#: answer" reaches the server while the invite is still open.
PROMPT_MARGIN_S = 0.5

#: Longest answer to a notification (the protocol's limit for user text).
MAX_ANSWER_CHARS = 4000

_EXPLANATIONS = {
    LiveSupportStatus.NOT_INSTALLED: "The Live Support service is not installed on this device.",
    LiveSupportStatus.DISABLED: (
        "Live Support is turned off on this device, by the administration utility "
        "or by your organisation."
    ),
    LiveSupportStatus.CONNECTED: (
        "A support session is open. Choose Live Support to return to the call."
    ),
    LiveSupportStatus.DISCONNECTED: "No support session is in progress.",
}

_ACCEPT_LABELS = {
    Mode.VIDEO: "Accept with video",
    Mode.VOICE: "Accept with voice",
    Mode.TEXT: "Accept as text chat",
}


#: Why the agent stopped trying, said for the device user (peer.signaling's codes).
_REFUSALS = {
    "pin_mismatch": (
        "Refused: the server's certificate does not match the one this device was "
        "enrolled with. Not connecting; contact your IT administrator"
    ),
    "closed": "Disconnected by the server",
}


def _offline_label(fatal: RequestError | None) -> str:
    """A link that will not retry says why; only a dropped link is 'reconnecting'."""
    if fatal is None:
        return "Offline, reconnecting"
    refusal = _REFUSALS.get(fatal.code)
    if refusal is None:
        return f"Not connecting: {fatal.message}"
    return f"{refusal} ({fatal.message})" if fatal.code == "closed" else refusal


@dataclass(frozen=True, slots=True)
class StatusView:
    status: LiveSupportStatus
    #: One of the four names: Not Installed, Disabled, Connected, Disconnected.
    label: str
    explanation: str
    online: bool
    online_label: str
    #: "Live Support" reopens the call window (only while Connected).
    can_open_call: bool
    unread_notifications: int

    @property
    def summary(self) -> str:
        """One line for a tray tooltip or a screen reader."""
        return f"Live Support: {self.label}. {self.online_label}."


class PromptState(StrEnum):
    WAITING = "waiting"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NO_ANSWER = "no_answer"
    #: The invite went away without the user (the technician cancelled, or it ran out
    #: on the server first).
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class AcceptChoice:
    mode: Mode
    label: str


def decode_photo(photo_b64: str) -> bytes | None:
    """The technician's photo, if it is a PNG or a JPEG; anything else is ignored
    (a broken photo must not stop the prompt)."""
    if not photo_b64:
        return None
    try:
        data = base64.b64decode(photo_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff"):
        return data
    return None


class IncomingCall:
    """One invite as the prompt shows it, until the user answers or time runs out."""

    def __init__(
        self,
        invite: SessionInvite,
        allowed: tuple[Mode, ...],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.invite = invite
        self._clock = clock
        card = invite.technician
        self.technician = card.display_name
        self.organisation = card.organisation
        self.reason = invite.reason
        self.photo = decode_photo(card.photo)
        #: The mode the technician asked for.
        self.requested = invite.mode
        # Best first: video, then voice, then text; only what was offered and what
        # the chat-service configuration allows.
        self.choices = [
            AcceptChoice(mode, _ACCEPT_LABELS[mode])
            for mode in (Mode.VIDEO, Mode.VOICE, Mode.TEXT)
            if mode in invite.offered_modes and mode in allowed
        ]
        self.state = PromptState.WAITING
        self.changed: Listeners[PromptState] = Listeners()
        self.decision: asyncio.Future[Mode | None] = asyncio.get_running_loop().create_future()

    @property
    def deadline(self) -> float:
        return self.invite.expires_at_ms / 1000 - PROMPT_MARGIN_S

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - self._clock())

    def countdown_text(self) -> str:
        seconds = int(self.remaining_s() + 0.999)  # 0.2 s left still shows "1 s"
        return f"Declines automatically in {seconds} s"

    @property
    def headline(self) -> str:
        kind = {Mode.VIDEO: "video call", Mode.VOICE: "voice call", Mode.TEXT: "text chat"}
        return f"{self.technician} wants to start a {kind[self.requested]} with you"

    def accept(self, mode: Mode) -> None:
        if mode not in {c.mode for c in self.choices}:
            raise ValueError(f"{mode.value} is not offered or not allowed")
        self._decide(PromptState.ACCEPTED, mode)

    def reject(self) -> None:
        self._decide(PromptState.REJECTED, None)

    def time_out(self) -> None:
        """The countdown ran out: the prompt declines for the user."""
        self._decide(PromptState.NO_ANSWER, None)

    def withdraw(self) -> None:
        self._decide(PromptState.WITHDRAWN, None)

    def _decide(self, state: PromptState, mode: Mode | None) -> None:
        if self.state is not PromptState.WAITING:
            return
        self.state = state
        if not self.decision.done():
            self.decision.set_result(mode)
        self.changed.fire(state)


@dataclass(frozen=True, slots=True)
class InboxItem:
    notification_id: str
    sender: str
    title: str
    #: Shown as plain text; kept in memory only until answered or read.
    body: str
    sent_at_ms: int
    expires_at_ms: int


class AgentModel:
    """The resident agent as its windows see it."""

    def __init__(self, agent: DeviceAgent, *, clock: Callable[[], float] = time.time) -> None:
        self.agent = agent
        self._clock = clock
        agent.invite_handler = self.on_invite
        agent.notification_handler = self.on_notification
        #: Fired with the new status view whenever status, presence or inbox change.
        self.status_changed: Listeners[StatusView] = Listeners()
        #: Fired with each new incoming call (the prompt opens), and None when it ends.
        self.incoming_changed: Listeners[IncomingCall | None] = Listeners()
        #: Fired with each notification that should pop up (new, not a resend).
        self.popups: Listeners[InboxItem] = Listeners()
        #: Fired (with None) when the inbox changed.
        self.inbox_changed: Listeners[None] = Listeners()
        self.incoming: IncomingCall | None = None
        self._inbox: dict[str, InboxItem] = {}
        self._unsubscribe = [
            agent.status_listeners.add(lambda _s: self._status_changed()),
            agent.session_listeners.add(self._on_session),
            agent.invite_withdrawn.add(self.withdraw_invite),
        ]

    # -- status ------------------------------------------------------------------------

    def status_view(self) -> StatusView:
        agent = self.agent
        status = agent.status
        online = agent.online
        return StatusView(
            status=status,
            label=status.label,
            explanation=_EXPLANATIONS[status],
            online=online,
            online_label="Online" if online else _offline_label(agent.client.fatal),
            can_open_call=status is LiveSupportStatus.CONNECTED and agent.session is not None,
            unread_notifications=len(self.inbox()),
        )

    def _status_changed(self) -> None:
        self.status_changed.fire(self.status_view())

    def _on_session(self, _session: ActiveSession | None) -> None:
        self._status_changed()

    async def open_call_window(self) -> bool:
        """ "Live Support": bring back the call window of the open session."""
        if not self.status_view().can_open_call:
            return False
        return await self.agent.show_call_window()

    # -- the incoming call ---------------------------------------------------------------

    async def on_invite(self, invite: SessionInvite) -> Mode | RejectReason | None:
        """The agent's invite handler: show the prompt and wait for the user or the
        countdown. Time running out is an explicit "no answer" to the server."""
        call = IncomingCall(invite, self.agent.chat_services, clock=self._clock)
        if not call.choices:
            # Nothing the user could accept: say no at once rather than show a prompt
            # without buttons.
            return RejectReason.UNAVAILABLE
        self.incoming = call
        self.incoming_changed.fire(call)
        timer = asyncio.get_running_loop().call_later(call.remaining_s(), call.time_out)
        try:
            mode = await call.decision
        finally:
            timer.cancel()
            call.withdraw()  # a no-op once decided; ends the prompt if we were cancelled
            if self.incoming is call:
                self.incoming = None
                self.incoming_changed.fire(None)
        if call.state is PromptState.NO_ANSWER:
            return RejectReason.NO_ANSWER
        return mode

    def withdraw_invite(self, session_id: str) -> None:
        """The server says the invite is over (cancelled, or expired there first)."""
        call = self.incoming
        if call is not None and call.invite.session_id == session_id:
            call.withdraw()

    # -- notifications --------------------------------------------------------------------

    async def on_notification(self, note: NotifyDeliver) -> None:
        """The agent's notification handler: a new one pops up and waits in the inbox
        (a resend after a reconnect is already there and does not pop up again)."""
        if note.notification_id in self._inbox:
            return
        item = InboxItem(
            notification_id=note.notification_id,
            sender=note.sender_name,
            title=note.title,
            body=note.body,
            sent_at_ms=note.sent_at_ms,
            expires_at_ms=note.expires_at_ms,
        )
        self._inbox[item.notification_id] = item
        self.inbox_changed.fire(None)
        self._status_changed()
        self.popups.fire(item)

    def inbox(self) -> list[InboxItem]:
        """Unread, unexpired notifications, oldest first."""
        now_ms = self._clock() * 1000
        for nid in [n for n, item in self._inbox.items() if item.expires_at_ms <= now_ms]:
            del self._inbox[nid]
        return sorted(self._inbox.values(), key=lambda item: item.sent_at_ms)

    async def reply(self, notification_id: str, text: str) -> None:
        """Answer a notification (this also marks it read). Raises ValueError for an
        empty or too long answer; ``peer.signaling.RequestError`` if the server refused
        it (expired, answered already)."""
        answer = text.strip()
        if not answer:
            raise ValueError("Write an answer first.")
        if len(answer) > MAX_ANSWER_CHARS:
            raise ValueError(f"An answer has at most {MAX_ANSWER_CHARS} characters.")
        await self.agent.answer_notification(notification_id, answer)
        self._drop(notification_id)

    async def mark_read(self, notification_id: str) -> None:
        await self.agent.mark_notification_read(notification_id)
        self._drop(notification_id)

    def _drop(self, notification_id: str) -> None:
        if self._inbox.pop(notification_id, None) is not None:
            self.inbox_changed.fire(None)
            self._status_changed()

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
