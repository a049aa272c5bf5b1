"""A scripted technician: the headless demo session, measured step by step.

Plays: wait for the device → invite (video by default) → accepted → data channel open
(setup time) → first decoded video frame → consent verified → chat both ways with
delivered and read receipts → the device user's controls, each checked by its effect
on what arrives here (silence, no frames, the other camera's picture...) → close →
summary → a notification round (delivered, read, answered). Returns a flat report;
it contains counts and timings only, never chat content.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from peer.call_media import CallMedia
from peer.chat import DeliveryState
from peer.devices import Facing
from peer.media import identify_pattern
from protocol.chat import MediaState
from protocol.enums import (
    AudioInterruption,
    CameraFacing,
    LiveSupportStatus,
    Mode,
    NotificationState,
    SessionState,
)
from tech_console.client import ConsoleClient

#: The controls the demo's device user operates, in order (``--controls`` of the agent).
DEVICE_CONTROLS = (
    "mute",
    "unmute",
    "camera_off",
    "camera_on",
    "switch_camera",
    "audio_output",
    "phone_call",
    "phone_call_end",
)
#: The demo's pictures of the console's main window, in the order they are taken.
CONSOLE_SCREENSHOTS = (
    "console-inventory.png",
    "console-session.png",
    "console-notifications.png",
)
#: Audio levels (RMS of full scale) that tell the synthetic tone from silence.
SOUND = 0.02
SILENCE = 0.005

DEMO_MESSAGES = (
    "Hello, this is the service desk. I can see the printer queue is stuck.",
    "Could you tell me which printer you were using?",
    "Thanks, I have cleared the queue. Please try printing again.",
)


async def _until(predicate: Callable[[], bool], timeout_s: float, poke: asyncio.Event) -> None:
    async def wait() -> None:
        while not predicate():
            poke.clear()
            await poke.wait()

    await asyncio.wait_for(wait(), timeout_s)


class ControlWatcher:
    """Follows the device's media state and checks each control by its effect here.

    A control counts as seen only when both the device's ``call.media`` said so and
    the media that arrives agrees: sound gone or back, frames stopped or flowing, the
    other camera's picture, our own microphone silenced by the phone call.
    """

    def __init__(self, media: CallMedia) -> None:
        self.media = media
        self.seen: dict[str, bool] = dict.fromkeys(DEVICE_CONTROLS, False)
        self._previous: MediaState | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        media.peer_listeners.add(self._on_state)

    def _on_state(self, state: MediaState) -> None:
        before, self._previous = self._previous, state
        if before is None:
            return
        if before.interruption != state.interruption:
            started = state.interruption is AudioInterruption.PHONE_CALL
            self._check("phone_call" if started else "phone_call_end", self._interruption(started))
        elif before.microphone != state.microphone:
            self._check("unmute" if state.microphone else "mute", self._sound(state.microphone))
        if before.camera != state.camera:
            self._check("camera_on" if state.camera else "camera_off", self._frames(state.camera))
        elif state.camera and before.camera_facing != state.camera_facing:
            self._check("switch_camera", self._picture(state.camera_facing))
        if before.audio_output != state.audio_output and state.audio_output:
            self.seen["audio_output"] = True
            self.changed.set()

    def _check(self, name: str, check: Any) -> None:
        async def run() -> None:
            try:
                self.seen[name] = await asyncio.wait_for(check, 5)
            except TimeoutError:
                self.seen[name] = False
            self.changed.set()

        task = asyncio.ensure_future(run())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _poll(self, predicate: Callable[[], bool]) -> bool:
        while not predicate():  # noqa: ASYNC110 (media counters have no events)
            await asyncio.sleep(0.02)
        return True

    def _level(self) -> float:
        audio_in = self.media.audio_in
        return audio_in.level if audio_in is not None else 0.0

    async def _sound(self, on: bool) -> bool:
        return await self._poll(lambda: self._level() > SOUND if on else self._level() < SILENCE)

    async def _frames(self, on: bool) -> bool:
        video_in = self.media.video_in
        if video_in is None:
            return False
        start = video_in.frames
        if on:
            return await self._poll(lambda: video_in.frames > start + 5)
        # Off: at most the frames already in flight arrive within half a second.
        await asyncio.sleep(0.5)
        return video_in.frames <= start + 3

    async def _picture(self, facing: CameraFacing) -> bool:
        wanted = Facing.BACK if facing is CameraFacing.BACK else Facing.FRONT
        video_in = self.media.video_in
        return video_in is not None and await self._poll(
            lambda: video_in.latest is not None and identify_pattern(video_in.latest) is wanted
        )

    async def _interruption(self, started: bool) -> bool:
        # Our own microphone follows the device's phone call, and its sound stops.
        track = self.media.audio_track
        return (
            track is not None
            and await self._poll(lambda: track.muted is started)
            and await self._sound(not started)
        )

    def all_seen(self) -> bool:
        return all(self.seen.values())

    async def stop(self) -> None:
        for task in list(self._checks):
            task.cancel()


async def run_demo_session(
    console: ConsoleClient,
    *,
    expected_replies: int,
    mode: Mode = Mode.VIDEO,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    changed = asyncio.Event()
    console.device_listeners.add(lambda _d: changed.set())
    console.session_listeners.add(lambda _s: changed.set())
    console.notification_listeners.add(lambda _n: changed.set())

    def ready_device() -> str | None:
        for device in console.devices.values():
            if device.online and device.status is LiveSupportStatus.DISCONNECTED:
                return device.device_id
        return None

    await _until(lambda: ready_device() is not None, timeout_s, changed)
    device_id = ready_device()
    assert device_id is not None
    report["device.status_before"] = console.devices[device_id].status.value

    started = time.monotonic()
    session = await console.start_session(device_id, mode, "Demo: ticket DEMO-1")
    state = await console.wait_session(
        session,
        [SessionState.CONNECTING, SessionState.REJECTED, SessionState.EXPIRED],
        timeout_s,
    )
    report["session.accepted"] = state is SessionState.CONNECTING
    if not report["session.accepted"]:
        return report
    await _until(lambda: session.call is not None, timeout_s, changed)
    call = session.call
    assert call is not None
    watcher = ControlWatcher(call.media) if call.media is not None else None
    await asyncio.wait_for(call.connected.wait(), timeout_s)
    report["session.setup_ms"] = round((time.monotonic() - started) * 1000, 1)
    report["call.mode"] = session.mode.value
    media = call.media
    if media is not None and media.has_video:
        await _until(lambda: media.video_in is not None, timeout_s, changed)
        assert media.video_in is not None
        await asyncio.wait_for(media.video_in.first_frame.wait(), timeout_s)
        report["call.first_frame_ms"] = round((media.video_in.first_frame_at - started) * 1000, 1)
    await _until(lambda: session.consent is not None, timeout_s, changed)
    report["session.consent_verified"] = session.consent_verified
    await _until(
        lambda: console.devices[device_id].status is LiveSupportStatus.CONNECTED, timeout_s, changed
    )
    report["device.status_during"] = console.devices[device_id].status.value

    chat_changed = asyncio.Event()
    call.chat.listeners.add(lambda _e: chat_changed.set())

    async def read_incoming() -> None:
        unread = [e.message_id for e in call.chat.unread_incoming()]
        if unread:
            await call.mark_read(unread)

    for text in DEMO_MESSAGES:
        await call.send_chat(text)
        await read_incoming()

    def done() -> bool:
        outgoing = [e for e in call.chat.entries() if e.outgoing]
        incoming = [e for e in call.chat.entries() if not e.outgoing]
        return (
            all(e.state is DeliveryState.READ for e in outgoing)
            and len(incoming) >= expected_replies
        )

    async def pump() -> None:
        while not done():
            chat_changed.clear()
            await read_incoming()
            if done():
                break
            await chat_changed.wait()
        await read_incoming()

    await asyncio.wait_for(pump(), timeout_s)
    entries = call.chat.entries()
    outgoing = [e for e in entries if e.outgoing]
    incoming = [e for e in entries if not e.outgoing]
    rtts = list(call.chat.delivery_rtts_ms().values())
    report["chat.console_sent"] = len(outgoing)
    report["chat.console_delivered"] = sum(e.state >= DeliveryState.DELIVERED for e in outgoing)
    report["chat.console_read"] = sum(e.state is DeliveryState.READ for e in outgoing)
    report["chat.device_messages_received"] = len(incoming)
    report["chat.device_messages_read_receipts_sent"] = sum(
        e.state is DeliveryState.READ for e in incoming
    )
    report["chat.rtt_ms_p50"] = round(statistics.median(rtts), 2) if rtts else None
    report["chat.rtt_ms_max"] = round(max(rtts), 2) if rtts else None
    if watcher is not None:

        async def controls_done() -> None:
            while not watcher.all_seen():
                watcher.changed.clear()
                await watcher.changed.wait()

        # On a timeout the report says which controls were not seen.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(controls_done(), timeout_s)
        await watcher.stop()
        report["call.controls"] = dict(watcher.seen)
        report["call.controls_all_seen"] = watcher.all_seen()
    stats = await call.stats()
    report["call.route"] = stats.get("route")
    report["call.rtt_ms"] = stats.get("rtt_ms")
    if media is not None and media.video_in is not None:
        video_in = media.video_in
        span = video_in.last_frame_at - video_in.first_frame_at
        # The average over the call (camera off and switches included), and now.
        report["call.fps_received.console_avg"] = (
            round(video_in.frames / span, 1) if span > 0 else None
        )
        report["call.fps_received.console_now"] = round(video_in.fps, 1)
        report["call.video_received.console"] = f"{video_in.width}x{video_in.height}"

    await console.close_session(session.session_id)
    final = await console.wait_session(session, [SessionState.CLOSED], timeout_s)
    report["session.closed"] = final is SessionState.CLOSED
    report["session.chat_cleared"] = len(call.chat) == 0
    await _until(
        lambda: console.devices[device_id].status is LiveSupportStatus.DISCONNECTED,
        timeout_s,
        changed,
    )
    report["device.status_after"] = console.devices[device_id].status.value
    await console.write_summary(
        session.session_id,
        summary="Cleared a stuck print queue.",
        impact="One user could not print for an hour.",
        expected_vs_actual="Expected printing; the queue was stuck.",
        evidence="Queue cleared; test page printed.",
        next_owner="none",
    )
    report["session.summary_stored"] = True

    progress = await console.notify(
        title="Maintenance tonight",
        body="The tablet will restart at 22:00. Reply if that is a problem.",
        device_ids=[device_id],
    )

    def answered() -> bool:
        return progress.states.get(device_id) is NotificationState.ANSWERED

    await _until(answered, timeout_s, changed)
    seen = set(progress.history.get(device_id, []))
    report["notification.delivered"] = NotificationState.DELIVERED in seen
    report["notification.read"] = NotificationState.READ in seen
    report["notification.answered"] = NotificationState.ANSWERED in seen
    report["notification.answer_received"] = bool(progress.answers.get(device_id))
    return report
