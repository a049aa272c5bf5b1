"""What the device's call window shows and does, without Qt.

The call window (``device_agent.ui.call_window``) is a thin view of this model: it
reads the controls, banner, timer, chat and video from here, and calls the actions.
Everything a control does goes through :class:`~device_agent.call_process.CallSession`,
so the headless session and the window behave the same, and this model is tested
without a display.

The functions follow the reference product's call window (Text, Audio Output,
Mute/Unmute, Camera, Switch Camera, Hang Up), each shown only when the chat-service
configuration and the accepted mode allow it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from device_agent.call_process import CallSession
from device_agent.ipc import Control
from peer.call import CallState, PeerCall
from peer.chat import ChatLog, Listeners
from peer.devices import DeviceKind
from peer.media import DisplayFrame
from protocol.enums import AudioInterruption, Mode
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)


class CallControl(StrEnum):
    """The buttons of the call window, in the order shown."""

    TEXT = "text"
    AUDIO_OUTPUT = "audio_output"
    MUTE = "mute"
    CAMERA = "camera"
    SWITCH_CAMERA = "switch_camera"
    HANG_UP = "hang_up"
    CALL_AGAIN = "call_again"


@dataclass(frozen=True, slots=True)
class ControlView:
    """One button as it should look now."""

    control: CallControl
    #: The button's text (it names what pressing it does: "Mute" or "Unmute").
    label: str
    #: For screen readers: the action and the current state.
    description: str
    visible: bool
    enabled: bool
    #: Shown pressed: muted, camera off, chat open.
    active: bool


class BannerKind(StrEnum):
    CONNECTING = "connecting"
    RECOVERING = "recovering"
    PHONE_CALL = "phone_call"
    PEER_INTERRUPTED = "peer_interrupted"
    CALL_ENDED = "call_ended"


@dataclass(frozen=True, slots=True)
class Banner:
    kind: BannerKind
    text: str
    #: Warnings (audio interrupted, connection lost) are drawn to stand out.
    warning: bool


@dataclass(frozen=True, slots=True)
class AudioOutputChoice:
    device_id: str
    name: str
    current: bool


def banner_for(
    *,
    technician: str,
    call_state: CallState | None,
    interruption: AudioInterruption,
    peer_interruption: AudioInterruption,
) -> Banner | None:
    """The one banner to show, most important first: the user must know why they
    hear nothing before anything else."""
    if interruption is not AudioInterruption.NONE:
        reason = "a phone call" if interruption is AudioInterruption.PHONE_CALL else "another app"
        return Banner(
            BannerKind.PHONE_CALL,
            f"Call audio paused: {reason} is using the audio. It resumes when it ends.",
            True,
        )
    if call_state is None or call_state is CallState.CLOSED:
        return Banner(BannerKind.CALL_ENDED, f"Call with {technician} ended.", False)
    if call_state in (CallState.DISCONNECTED, CallState.FAILED):
        return Banner(BannerKind.RECOVERING, "Connection lost. Trying to reconnect…", True)
    if call_state in (CallState.NEW, CallState.CONNECTING):
        return Banner(BannerKind.CONNECTING, f"Connecting to {technician}…", False)
    if peer_interruption is not AudioInterruption.NONE:
        return Banner(
            BannerKind.PEER_INTERRUPTED,
            f"{technician}'s audio is interrupted; the call audio is paused both ways.",
            True,
        )
    return None


def clock_text(seconds: float) -> str:
    """A call timer: 0:07, 12:34, 1:02:03."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class CallWindowModel:
    """The device user's view of one session: its calls, chat, media and controls."""

    def __init__(
        self, session: CallSession, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session = session
        self._clock = clock
        begin = session.begin
        self.technician = begin.technician_name
        self.organisation = begin.technician_organisation
        self.mode = begin.mode
        self.services = frozenset(begin.chat_services)
        #: Whether the window is shown (read receipts are sent only while it is).
        self.window_visible = begin.show_window
        #: The chat panel is open: always in a text session, on demand otherwise.
        self.chat_open = self.mode is Mode.TEXT
        #: Fired (with None) whenever anything shown changed.
        self.changed: Listeners[None] = Listeners()
        #: Fired when the window should come back to the front.
        self.show_requests: Listeners[None] = Listeners()
        #: The technician's picture and the user's own, converted for display.
        self.remote_frames: Listeners[DisplayFrame] = Listeners()
        self.local_frames: Listeners[DisplayFrame] = Listeners()
        #: Fired with the chat log of each new call (the chat view follows it).
        self.chat_logs: Listeners[ChatLog | None] = Listeners()
        #: A short message about the last action that failed (None: all well).
        self.error: str | None = None
        self._connected_at: float | None = None
        #: The chat log of the last call seen: a new connection with the same log
        #: replaced one whose path was lost, and the call (and its timer) goes on.
        self._last_chat: ChatLog | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: list[Callable[[], None]] = [
            session.call_listeners.add(self._on_call),
            session.changed_listeners.add(lambda _none: self._on_change()),
            session.show_listeners.add(lambda _none: self._on_show()),
        ]
        if session.call is not None:
            self._on_call(session.call)

    # -- what is shown ----------------------------------------------------------------

    @property
    def call(self) -> PeerCall | None:
        return self.session.call

    @property
    def chat(self) -> ChatLog | None:
        return self.call.chat if self.call is not None else None

    @property
    def has_video(self) -> bool:
        return self.mode is Mode.VIDEO

    @property
    def title(self) -> str:
        who = f"{self.technician} ({self.organisation})" if self.organisation else self.technician
        return f"Live Support: {who}"

    def elapsed_s(self) -> float | None:
        """Time since the current call connected (None when no call is up)."""
        if self._connected_at is None or self.call is None:
            return None
        return self._clock() - self._connected_at

    def timer_text(self) -> str:
        elapsed = self.elapsed_s()
        return clock_text(elapsed) if elapsed is not None else ""

    def banner(self) -> Banner | None:
        call = self.call
        media = self.session.media
        peer = media.peer_state if media is not None else None
        state = call.state if call is not None else None
        if call is not None and call.dropped:
            # It dropped by itself (its path was lost, and aiortc closes it) and is
            # being replaced: "reconnecting", not "ended".
            state = CallState.FAILED
        return banner_for(
            technician=self.technician,
            call_state=state,
            interruption=self.session.interruption,
            peer_interruption=peer.interruption if peer is not None else AudioInterruption.NONE,
        )

    def unread(self) -> int:
        chat = self.chat
        return len(chat.unread_incoming()) if chat is not None else 0

    def remote_placeholder(self) -> str:
        """What the large video area says when it shows no picture."""
        media = self.session.media
        if self.call is None:
            return f"Call with {self.technician} ended"
        if self.mode is Mode.VOICE:
            return f"Voice call with {self.technician}"
        if media is not None and media.peer_state is not None and not media.peer_state.camera:
            return f"{self.technician} turned the camera off"
        return f"Waiting for {self.technician}'s video…"

    def local_camera_on(self) -> bool:
        media = self.session.media
        return media is not None and media.camera_on and media.camera is not None

    def controls(self) -> list[ControlView]:
        media = self.session.media
        up = self.call is not None
        has_audio = self.mode in (Mode.VOICE, Mode.VIDEO)
        video_allowed = self.has_video and Mode.VIDEO in self.services
        muted = media.muted if media is not None else False
        camera_on = media.camera_on if media is not None else False
        cameras = len(self.session.devices.devices(DeviceKind.CAMERA))
        outputs = self.audio_outputs()
        current_output = next((o.name for o in outputs if o.current), "")
        unread = self.unread()
        text_label = f"Text ({unread})" if unread and not self.chat_open else "Text"
        return [
            ControlView(
                CallControl.TEXT,
                text_label,
                ("Hide the chat" if self.chat_open else "Open the chat")
                + (f", {unread} unread" if unread else ""),
                visible=Mode.TEXT in self.services and self.mode is not Mode.TEXT,
                enabled=True,
                active=self.chat_open,
            ),
            ControlView(
                CallControl.AUDIO_OUTPUT,
                "Audio output",
                f"Choose where you hear the call; now {current_output or 'none'}",
                visible=has_audio,
                enabled=up and media is not None and bool(outputs),
                active=False,
            ),
            ControlView(
                CallControl.MUTE,
                "Unmute" if muted else "Mute",
                "Microphone muted; press to unmute" if muted else "Mute the microphone",
                visible=has_audio,
                enabled=up and media is not None,
                active=muted,
            ),
            ControlView(
                CallControl.CAMERA,
                "Start camera" if not camera_on else "Stop camera",
                "Camera off; press to start it" if not camera_on else "Stop the camera",
                visible=video_allowed,
                enabled=up and media is not None,
                active=not camera_on,
            ),
            ControlView(
                CallControl.SWITCH_CAMERA,
                "Switch camera",
                "Use the other camera",
                visible=video_allowed,
                enabled=up and media is not None and camera_on and cameras > 1,
                active=False,
            ),
            ControlView(
                CallControl.HANG_UP,
                "Hang up",
                "End the call; the technician can still reach you while the session is open",
                visible=up,
                enabled=up,
                active=False,
            ),
            ControlView(
                CallControl.CALL_AGAIN,
                f"Call {self.technician}",
                f"Reopen the call with {self.technician}",
                visible=not up,
                enabled=not up,
                active=False,
            ),
        ]

    def control(self, which: CallControl) -> ControlView:
        return next(c for c in self.controls() if c.control is which)

    def audio_outputs(self) -> list[AudioOutputChoice]:
        media = self.session.media
        current = media.speaker if media is not None else None
        return [
            AudioOutputChoice(d.device_id, d.name, current is not None and d == current)
            for d in self.session.devices.devices(DeviceKind.SPEAKER)
        ]

    # -- actions ----------------------------------------------------------------------

    def press(self, which: CallControl) -> None:
        """The user pressed a button (Audio output opens a menu: see ``choose_output``)."""
        view = self.control(which)
        if not (view.visible and view.enabled):
            log.info("control %s is not available now", which.value)
            return
        media = self.session.media
        if which is CallControl.TEXT:
            self.set_chat_open(not self.chat_open)
        elif which is CallControl.MUTE:
            self._run(Control.UNMUTE if media is not None and media.muted else Control.MUTE)
        elif which is CallControl.CAMERA:
            on = media is not None and media.camera_on
            self._run(Control.CAMERA_OFF if on else Control.CAMERA_ON)
        elif which is CallControl.SWITCH_CAMERA:
            self._run(Control.SWITCH_CAMERA)
        elif which is CallControl.HANG_UP:
            self._run(Control.HANG_UP)
        elif which is CallControl.CALL_AGAIN:
            self._run(Control.RESUME)
        elif which is CallControl.AUDIO_OUTPUT:
            self._run(Control.AUDIO_OUTPUT)  # the next output, as a plain press

    def choose_output(self, device_id: str) -> None:
        self._run(Control.AUDIO_OUTPUT, device_id)

    def set_chat_open(self, open_: bool) -> None:
        self.chat_open = open_ or self.mode is Mode.TEXT
        self._on_change()

    def set_window_visible(self, visible: bool) -> None:
        self.window_visible = visible
        self._on_change()

    def send_chat(self, text: str) -> None:
        call = self.call
        if call is None or not call.chat_open:
            self._fail("Not connected: the message was not sent.")
            return
        self._spawn(lambda: call.send_chat(text))

    def seen(self, message_ids: Iterable[str]) -> None:
        """The chat view shows these incoming messages to the user now: read receipts
        go out (the technician's checks turn blue). Only while the window and the chat
        are shown, so a message the user never saw is never reported read."""
        call = self.call
        ids = list(message_ids)
        if not ids or call is None or not (self.window_visible and self.chat_open):
            return
        self._spawn(lambda: call.mark_read(ids))

    def set_typing(self, active: bool) -> None:
        call = self.call
        if call is not None and call.chat_open:
            self._spawn(lambda: call.send_typing(active))

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for task in list(self._tasks):
            task.cancel()

    # -- internals --------------------------------------------------------------------

    def _on_call(self, call: PeerCall) -> None:
        if call.chat is not self._last_chat:
            self._connected_at = None
        self._last_chat = call.chat

        async def connected() -> None:
            await call.connected.wait()
            if self.call is call:
                if self._connected_at is None:
                    self._connected_at = self._clock()
                self._on_change()

        self._spawn(connected)
        self.chat_logs.fire(call.chat)
        self._on_change()

    def _on_show(self) -> None:
        self.window_visible = True
        self.show_requests.fire(None)
        self._on_change()

    def _on_change(self) -> None:
        self._hook_video()
        if self.call is None:
            self._connected_at = None
        self.changed.fire(None)

    def _hook_video(self) -> None:
        media = self.session.media
        if media is not None:
            media.route_display(self.remote_frames.fire, self.local_frames.fire)

    def _run(self, control: Control, argument: str = "") -> None:
        self._spawn(lambda: self.session.control(control, argument))

    def _fail(self, message: str) -> None:
        self.error = message
        self._on_change()

    def _spawn(self, action: Callable[[], Awaitable[Any]]) -> None:
        """Run ``action`` in the background. The coroutine is made inside the task, so
        a task cancelled before it started (the window closed) leaves none unawaited."""

        async def run() -> None:
            self.error = None
            try:
                await action()
            except (ProtocolError, ValueError, ConnectionError) as exc:
                log.info("call window action failed: %s", type(exc).__name__)
                self._fail("That did not work; please try again.")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
