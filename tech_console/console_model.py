"""What the technician console shows and does, without Qt.

The Qt console (``tech_console.ui``) is a thin view of these pieces: which devices a
filter keeps, why a session cannot be started, what a session's window shows (state,
consent, controls, call quality, unread chat), the closing summary's form and the
console's own settings. All of it is tested without a display.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from peer.call import CallStats, PeerCall, StreamStats
from peer.chat import ChatEntry, ChatLog, DeliveryState, Listeners
from peer.devices import DeviceKind
from peer.media import DisplayFrame
from peer.signaling import RequestError
from protocol.enums import LiveSupportStatus, Mode, RejectReason, Role, SessionState
from protocol.errors import ProtocolError
from protocol.messages import DeviceInfo
from protocol.permissions import Action, allows
from tech_console.client import FINAL, ConsoleClient, ConsoleSession

log = logging.getLogger(__name__)

MODE_LABELS = {Mode.TEXT: "Text", Mode.VOICE: "Voice", Mode.VIDEO: "Video"}


# --- the inventory ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InventoryFilter:
    """What the technician narrowed the inventory to. Empty fields keep everything."""

    text: str = ""
    group_id: str | None = None
    statuses: frozenset[LiveSupportStatus] = frozenset()
    online: bool | None = None

    def matches(self, device: DeviceInfo) -> bool:
        if self.group_id is not None and device.group_id != self.group_id:
            return False
        if self.statuses and device.status not in self.statuses:
            return False
        if self.online is not None and device.online is not self.online:
            return False
        needle = self.text.strip().casefold()
        if not needle:
            return True
        fields = (device.name, device.model, device.os, device.group_name, device.device_id)
        return any(needle in text.casefold() for text in fields)


def start_blocker(device: DeviceInfo, mode: Mode, role: Role | None) -> str | None:
    """Why the technician cannot start a ``mode`` session with ``device`` now (None: they
    can). The server refuses the same cases; saying why here saves a round trip and
    tells the technician what to do about it."""
    if role is None or not allows(role, Action.START_SESSION):
        who = role.value if role is not None else "signed-out"
        return f"Your role ({who}) may not start Live Support sessions."
    if device.status is LiveSupportStatus.NOT_INSTALLED:
        return "Live Support is not installed on this device."
    if device.status is LiveSupportStatus.DISABLED:
        return "Live Support is disabled on this device (by policy or on the device)."
    if device.session_id is not None or device.status is LiveSupportStatus.CONNECTED:
        return "The device is already in a Live Support session."
    if not device.online:
        return "The device is offline."
    if mode not in device.allowed_modes:
        allowed = ", ".join(MODE_LABELS[m].lower() for m in device.allowed_modes) or "nothing"
        wanted = MODE_LABELS[mode].lower()
        return f"Policy does not allow {wanted} sessions here (allowed: {allowed})."
    return None


def last_seen_text(device: DeviceInfo, now_ms: int) -> str:
    if device.online:
        return "Online now"
    if device.last_seen_ms is None:
        return "Never seen"
    minutes = max(0, (now_ms - device.last_seen_ms) // 60_000)
    if minutes < 1:
        return "Just now"
    if minutes < 60:
        return f"{minutes} min ago"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h ago"
    return f"{hours // 24} days ago"


# --- call quality ----------------------------------------------------------------------


class Quality(StrEnum):
    UNKNOWN = "unknown"
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"


#: Round trip (ms) and loss (fraction) above which a call is fair, then poor. Past
#: ~200 ms people start talking over each other; past ~400 ms a call is hard work.
FAIR_RTT_MS, POOR_RTT_MS = 200.0, 400.0
FAIR_LOSS, POOR_LOSS = 0.02, 0.05


def _loss(stream: StreamStats | None) -> float | None:
    if stream is None or stream["packets_lost"] is None:
        return None
    lost = max(0, stream["packets_lost"])
    total = stream["packets"] + lost
    return lost / total if total else 0.0


@dataclass(frozen=True, slots=True)
class CallQuality:
    quality: Quality
    rtt_ms: float | None
    loss: float | None
    bitrate_kbps: float | None
    fps: float | None
    route: str | None

    def lines(self) -> list[str]:
        """The figures as the session window lists them."""
        route = {"direct": "Direct (peer to peer)", "relayed": "Relayed (TURN)"}
        return [
            f"Round trip: {_num(self.rtt_ms, '{:.0f} ms')}",
            f"Loss: {_num(None if self.loss is None else self.loss * 100, '{:.1f} %')}",
            f"Bitrate in: {_num(self.bitrate_kbps, '{:.0f} kbit/s')}",
            f"Frame rate in: {_num(self.fps, '{:.0f} fps')}",
            f"Route: {route.get(self.route or '', '—')}",
        ]


def _num(value: float | None, form: str) -> str:
    return "—" if value is None else form.format(value)


def call_quality(stats: CallStats) -> CallQuality:
    """The figures the technician needs, and one word for them (worst figure wins)."""
    received = [s for s in (stats["video_received"], stats["audio_received"]) if s is not None]
    losses = [x for x in (_loss(s) for s in received) if x is not None]
    loss = max(losses) if losses else None
    rates = [s["bitrate_kbps"] for s in received if s["bitrate_kbps"] is not None]
    bitrate = sum(rates) if rates else None
    video = stats["video_received"]
    fps = video["fps"] if video is not None else None
    rtt = stats["rtt_ms"]
    if rtt is None and loss is None:
        quality = Quality.UNKNOWN
    elif (rtt or 0) > POOR_RTT_MS or (loss or 0) > POOR_LOSS:
        quality = Quality.POOR
    elif (rtt or 0) > FAIR_RTT_MS or (loss or 0) > FAIR_LOSS:
        quality = Quality.FAIR
    else:
        quality = Quality.GOOD
    return CallQuality(quality, rtt, loss, bitrate, fps, stats["route"])


# --- the closing summary ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryField:
    name: str
    label: str
    hint: str
    required: bool


#: The structured summary written when a session closes (good practice: what was done,
#: the effect on the user, expected vs actual, the evidence, who owns what is next).
SUMMARY_FIELDS = (
    SummaryField("summary", "Summary", "What was wrong and what was done", True),
    SummaryField("impact", "Impact", "Who or what was affected, and how badly", False),
    SummaryField("expected_vs_actual", "Expected vs actual", "What should happen; what did", False),
    SummaryField("evidence", "Evidence", "Ticket, logs, error messages (no chat content)", False),
    SummaryField("next_owner", "Next owner", "Who acts next, or 'none: resolved'", True),
)

#: The server keeps at most this many characters per field.
SUMMARY_FIELD_MAX = 4000


def summary_problems(values: dict[str, str]) -> dict[str, str]:
    """Field name → what is wrong with it (empty: the summary can be sent)."""
    problems: dict[str, str] = {}
    for spec in SUMMARY_FIELDS:
        value = values.get(spec.name, "").strip()
        if spec.required and not value:
            problems[spec.name] = f"{spec.label} is required."
        elif len(value) > SUMMARY_FIELD_MAX:
            problems[spec.name] = f"{spec.label}: at most {SUMMARY_FIELD_MAX} characters."
    return problems


# --- one session's window --------------------------------------------------------------


class SessionControl(StrEnum):
    """The technician's buttons in a session window, in the order shown."""

    MUTE = "mute"
    CAMERA = "camera"
    SWITCH_CAMERA = "switch_camera"
    AUDIO_OUTPUT = "audio_output"
    HANG_UP = "hang_up"
    CLOSE_SESSION = "close_session"


@dataclass(frozen=True, slots=True)
class ControlView:
    control: SessionControl
    label: str
    description: str
    visible: bool
    enabled: bool
    active: bool


_REJECTIONS = {
    RejectReason.DECLINED: "declined",
    RejectReason.NO_ANSWER: "did not answer",
    RejectReason.BUSY: "is busy",
    RejectReason.UNAVAILABLE: "cannot take calls now (Live Support unavailable)",
}

#: Replies a technician sends often; the list is theirs to edit in the settings file.
DEFAULT_SAVED_REPLIES = (
    "Hello, I'm here to help. Could you describe what you see?",
    "Thank you, one moment please while I check.",
    "Could you try restarting the app and tell me what happens?",
    "Is there anything else I can help you with?",
)


class SessionModel:
    """The technician's view of one session: state, consent, controls, quality, chat."""

    def __init__(
        self,
        client: ConsoleClient,
        session: ConsoleSession,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.session = session
        self._clock = clock
        device = client.devices.get(session.device_id)
        self.device_name = device.name if device is not None else session.device_id
        #: Fired (with None) whenever anything shown changed.
        self.changed: Listeners[None] = Listeners()
        #: The device's picture and the technician's own, converted for display.
        self.remote_frames: Listeners[DisplayFrame] = Listeners()
        self.local_frames: Listeners[DisplayFrame] = Listeners()
        #: Fired with the chat log of each new call (the chat view follows it).
        self.chat_logs: Listeners[ChatLog | None] = Listeners()
        #: A new message from the device user (the view alerts when in the background).
        self.incoming: Listeners[ChatEntry] = Listeners()
        self.quality: CallQuality | None = None
        #: The structured summary was stored on the server.
        self.summary_written = False
        #: A short message about the last action that failed (None: all well).
        self.error: str | None = None
        self._call: PeerCall | None = None
        self._connected_at: float | None = None
        self._unhook_chat: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = client.session_listeners.add(self._on_session)
        self._follow_call()

    # -- what is shown ----------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def mode(self) -> Mode:
        return self.session.mode

    @property
    def open(self) -> bool:
        return self.session.state not in FINAL

    @property
    def call(self) -> PeerCall | None:
        return self.session.call

    @property
    def chat(self) -> ChatLog | None:
        return self._call.chat if self._call is not None else None

    @property
    def title(self) -> str:
        return f"{self.device_name} · {MODE_LABELS[self.mode]}"

    def state_text(self) -> str:
        update = self.session.last_update
        state = self.session.state
        who = self.device_name
        if state is SessionState.INVITED:
            return f"Calling {who}… waiting for the device user to answer."
        call = self.session.call
        if call is not None and call.failure is not None and state is not SessionState.CLOSED:
            # Said at once rather than "Connecting…" for ever (a relay that refused
            # this end's TURN credential in a relay-only group).
            return f"The call to {who} cannot connect: {call.failure}."
        if state is SessionState.CONNECTING:
            return f"{who} accepted ({MODE_LABELS[self.mode].lower()}). Connecting…"
        if state is SessionState.IN_CALL and self.session.path_lost_at is not None:
            return f"Connection to {who} lost. Reconnecting…"
        if state is SessionState.IN_CALL:
            return f"In call with {who}."
        if state is SessionState.CALL_ENDED:
            return "The device user hung up. The session stays open until you close it."
        if state is SessionState.REJECTED:
            reason = update.reject_reason if update is not None else None
            said = _REJECTIONS.get(reason, "declined") if reason else "declined"
            return f"The device user {said}."
        if state is SessionState.EXPIRED:
            return "Nobody answered in time."
        why = update.close_reason if update is not None else None
        return f"Session closed ({why.value.replace('_', ' ')})." if why else "Session closed."

    def consent_text(self) -> tuple[str, bool]:
        """What the window says about the device user's consent, and whether it is
        a warning (a receipt that did not verify)."""
        s = self.session
        if s.consent is None:
            return ("No consent receipt yet.", False) if self.open else ("", False)
        if s.consent_verified:
            return (f"Consent verified: signed by {self.device_name}'s key for this call.", False)
        if s.consent_error is None:
            # A new connection (a lost path replaced) waits for its own receipt.
            return ("Waiting for the consent receipt of the new connection.", False)
        return (f"Consent NOT verified: {s.consent_error or 'bad receipt'}. Call ended.", True)

    def elapsed_s(self) -> float | None:
        if self._connected_at is None or self.call is None:
            return None
        return self._clock() - self._connected_at

    def unread(self) -> int:
        chat = self.chat
        return len(chat.unread_incoming()) if chat is not None else 0

    def remote_placeholder(self) -> str:
        media = self.session.media
        if self.call is None:
            return self.state_text()
        if self.mode is Mode.VOICE:
            return f"Voice call with {self.device_name}"
        if media is not None and media.peer_state is not None and not media.peer_state.camera:
            return f"{self.device_name}'s camera is off"
        return f"Waiting for {self.device_name}'s video…"

    def controls(self) -> list[ControlView]:
        media = self.session.media
        up = self.call is not None
        has_audio = self.mode in (Mode.VOICE, Mode.VIDEO)
        has_video = self.mode is Mode.VIDEO
        muted = media.muted if media is not None else False
        camera_on = media.camera_on if media is not None else False
        cameras = len(self.client.media_devices.devices(DeviceKind.CAMERA))
        speakers = self.client.media_devices.devices(DeviceKind.SPEAKER)
        return [
            ControlView(
                SessionControl.MUTE,
                "Unmute" if muted else "Mute",
                "Microphone muted; press to unmute" if muted else "Mute your microphone",
                has_audio,
                up and media is not None,
                muted,
            ),
            ControlView(
                SessionControl.CAMERA,
                "Start camera" if not camera_on else "Stop camera",
                "Your camera is off; press to start it" if not camera_on else "Stop your camera",
                has_video,
                up and media is not None,
                not camera_on,
            ),
            ControlView(
                SessionControl.SWITCH_CAMERA,
                "Switch camera",
                "Use your other camera",
                has_video,
                up and media is not None and camera_on and cameras > 1,
                False,
            ),
            ControlView(
                SessionControl.AUDIO_OUTPUT,
                "Audio output",
                "Choose where you hear the call",
                has_audio,
                up and media is not None and bool(speakers),
                False,
            ),
            ControlView(
                SessionControl.HANG_UP,
                "Hang up",
                "End the call; the session stays open (the user can call you back)",
                True,
                up,
                False,
            ),
            # A session the server ended (the device went away, the invite timed out)
            # still needs its summary: the same button then only writes it.
            ControlView(
                SessionControl.CLOSE_SESSION,
                "Close session…" if self.open else "Write summary…",
                "End the session and write its summary"
                if self.open
                else "The session has ended: write its summary",
                True,
                self.open or not self.summary_written,
                False,
            ),
        ]

    def control(self, which: SessionControl) -> ControlView:
        return next(c for c in self.controls() if c.control is which)

    def audio_outputs(self) -> list[tuple[str, str, bool]]:
        """(device id, name, current) for each speaker."""
        media = self.session.media
        current = media.speaker if media is not None else None
        return [
            (d.device_id, d.name, current is not None and d == current)
            for d in self.client.media_devices.devices(DeviceKind.SPEAKER)
        ]

    # -- actions ----------------------------------------------------------------------

    def press(self, which: SessionControl) -> None:
        """A button was pressed (Close session: see :meth:`close_with_summary`)."""
        view = self.control(which)
        media = self.session.media
        if not (view.visible and view.enabled):
            log.info("control %s is not available now", which.value)
            return
        if which is SessionControl.MUTE and media is not None:
            media.set_muted(not media.muted)
        elif which is SessionControl.CAMERA and media is not None:
            media.set_camera(not media.camera_on)
        elif which is SessionControl.SWITCH_CAMERA and media is not None:
            media.switch_camera()
        elif which is SessionControl.AUDIO_OUTPUT:
            outputs = self.audio_outputs()
            if outputs:
                index = next((i for i, o in enumerate(outputs) if o[2]), -1)
                self.choose_output(outputs[(index + 1) % len(outputs)][0])
        elif which is SessionControl.HANG_UP:
            self._spawn(lambda: self.client.hang_up(self.session_id))
        self._on_change()

    def choose_output(self, device_id: str) -> None:
        media = self.session.media
        device = next(
            (
                d
                for d in self.client.media_devices.devices(DeviceKind.SPEAKER)
                if d.device_id == device_id
            ),
            None,
        )
        if media is not None and device is not None:
            media.set_audio_output(device)
            self._on_change()

    async def close_with_summary(self, values: dict[str, str]) -> None:
        """Close the session and store its summary (the server takes a summary only
        for a closed session). Raises ValueError for an incomplete summary, before
        anything is closed."""
        problems = summary_problems(values)
        if problems:
            raise ValueError(" ".join(problems.values()))
        fields = {spec.name: values.get(spec.name, "").strip() for spec in SUMMARY_FIELDS}
        if self.open:
            await self.client.close_session(self.session_id)
            await self.client.wait_session(self.session, FINAL)
        await self.client.write_summary(self.session_id, **fields)
        self.summary_written = True
        self._on_change()

    def send_chat(self, text: str) -> None:
        call = self.call
        if call is None or not call.chat_open:
            self._fail("Not connected: the message was not sent.")
            return
        self._spawn(lambda: call.send_chat(text))

    def seen(self, message_ids: Iterable[str]) -> None:
        """The chat view shows these incoming messages to the technician now."""
        call = self.call
        ids = list(message_ids)
        if ids and call is not None:
            self._spawn(lambda: call.mark_read(ids))

    def set_typing(self, active: bool) -> None:
        call = self.call
        if call is not None and call.chat_open:
            self._spawn(lambda: call.send_typing(active))

    async def refresh_quality(self) -> CallQuality | None:
        """Take the call's statistics now (the view asks every couple of seconds)."""
        call = self.call
        if call is None or self.mode is Mode.TEXT:
            self.quality = None
        else:
            self.quality = call_quality(await call.stats())
        self._on_change()
        return self.quality

    def close(self) -> None:
        self._unsubscribe()
        if self._unhook_chat is not None:
            self._unhook_chat()
        for task in list(self._tasks):
            task.cancel()

    # -- internals --------------------------------------------------------------------

    def _on_session(self, session: ConsoleSession) -> None:
        if session is self.session:
            self._follow_call()

    def _follow_call(self) -> None:
        call = self.session.call
        if call is not self._call and call is not None:
            # A connection that replaced one whose path was lost continues the same
            # call (the same chat log): its timer goes on.
            continued = self._call is not None and self._call.chat is call.chat
            self._call = call
            if not continued:
                self._connected_at = None
            if self._unhook_chat is not None:
                self._unhook_chat()
            self._unhook_chat = call.chat.listeners.add(self._on_chat_entry)

            async def connected() -> None:
                await call.connected.wait()
                if self.call is call:
                    if self._connected_at is None:
                        self._connected_at = self._clock()
                    self._on_change()

            self._spawn(connected)
            self.chat_logs.fire(call.chat)
        self._on_change()

    def _on_chat_entry(self, entry: ChatEntry) -> None:
        # An incoming message first appears as DELIVERED; READ is the same one again.
        if not entry.outgoing and entry.state is DeliveryState.DELIVERED:
            self.incoming.fire(entry)
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

    def _fail(self, message: str) -> None:
        self.error = message
        self._on_change()

    def _spawn(self, action: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            self.error = None
            try:
                await action()
            except (RequestError, ProtocolError, ValueError, ConnectionError) as exc:
                log.info("session action failed: %s", exc)
                self._fail(f"That did not work: {exc}")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# --- the console's own settings --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownServer:
    """A server the technician logged in to: its address and the pinned certificate.
    Never a password or a token."""

    address: str
    fingerprint: str
    username: str = ""


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    servers: tuple[KnownServer, ...] = ()
    saved_replies: tuple[str, ...] = DEFAULT_SAVED_REPLIES

    def remember(self, server: KnownServer) -> ConsoleSettings:
        """This server first (the login window preselects it), once."""
        others = tuple(s for s in self.servers if s.address != server.address)
        return replace(self, servers=(server, *others)[:20])

    def forget(self, address: str) -> ConsoleSettings:
        return replace(self, servers=tuple(s for s in self.servers if s.address != address))


def settings_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "livesupport" / "console.json"


def load_settings(path: Path) -> ConsoleSettings:
    """The saved settings; defaults for a missing or unreadable file (said in the log)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        servers = tuple(
            KnownServer(str(s["address"]), str(s["fingerprint"]), str(s.get("username", "")))
            for s in raw.get("servers", [])
        )
        replies = tuple(str(r) for r in raw.get("saved_replies", DEFAULT_SAVED_REPLIES))
        return ConsoleSettings(servers, replies)
    except FileNotFoundError:
        return ConsoleSettings()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("console settings in %s unreadable (%s); using defaults", path, exc)
        return ConsoleSettings()


def save_settings(path: Path, settings: ConsoleSettings) -> None:
    data = {
        "servers": [
            {"address": s.address, "fingerprint": s.fingerprint, "username": s.username}
            for s in settings.servers
        ],
        "saved_replies": list(settings.saved_replies),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
    with contextlib.suppress(OSError):
        temporary.chmod(0o600)
    temporary.replace(path)
