"""The device's per-session process: it owns the call, the chat and the media.

The resident agent starts it when an invite arrives, so that the slow part (importing
aiortc and PyAV) overlaps with the user reading the prompt; until the agent sends
``session.begin`` (after the user accepted) it holds nothing: no peer connection, no
device, no candidate. It ends when the agent says the session is over (or the agent
itself disappears), closing the call and releasing the camera and microphone first.

Everything of the conversation lives here, in memory, and dies with the process. It
writes no file: logs go to the agent's stderr and carry events, never content.

Run by the agent as ``python -m device_agent.call_process --ipc-fd N [options]``.
Headless, a scripted device user may read and answer chat and operate the controls
(``--reply``, ``--controls``), for tests and the demo; the Qt call window (a later
issue) drives the same :class:`CallSession`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from device_agent.ipc import (
    TO_AGENT,
    TO_SESSION,
    Begin,
    CallUp,
    Control,
    ControlIn,
    End,
    Ended,
    Fingerprints,
    HangUp,
    IceConfig,
    Interruption,
    Link,
    PathLost,
    Query,
    RemoteHangup,
    Report,
    Resume,
    Show,
    SignalIn,
    SignalOut,
    unwrap_signal,
    wrap_signal,
)
from peer import encoders
from peer.call import CallState, PeerCall
from peer.call_media import CallMedia, MediaOptions
from peer.chat import ChatEntry, ChatLog, DeliveryState, Listeners
from peer.devices import DeviceKind, MediaDevice
from peer.media import MediaDevices
from peer.relay import rtc_ice_servers
from protocol.codec import Message, to_wire_dict
from protocol.enums import AudioInterruption, Mode, SdpType
from protocol.errors import ProtocolError
from protocol.messages import SignalCandidate, SignalSdp

log = logging.getLogger(__name__)


class CallSession:
    """One session on the device: its calls one after another, their chat and media.

    Qt-free: the headless process and the Qt call window both drive it. Every public
    method is a control of the device user; each one's effect reaches the technician.
    """

    def __init__(
        self,
        link: Link,
        begin: Begin,
        devices: MediaDevices,
        options: MediaOptions | None = None,
    ) -> None:
        self.link = link
        self.begin = begin
        self.devices = devices
        self.options = options or MediaOptions()
        self.call: PeerCall | None = None
        #: ICE servers and policy for the next call (the server's, once it sent them).
        self.ice = IceConfig(ice_servers=begin.ice_servers)
        #: Calls made in this session (1, then one more per resume).
        self.calls = 0
        #: Connections that replaced one whose media path was lost (same call, same
        #: chat, same devices; docs/calls.md, "Path loss").
        self.recoveries = 0
        self.interruption = AudioInterruption.NONE
        #: Fired with each new call (the view attaches to its chat and media).
        self.call_listeners: Listeners[PeerCall] = Listeners()
        #: Fired with the new call state, the call's or the session's (hung up: None).
        self.changed_listeners: Listeners[None] = Listeners()
        #: Fired when the user asked the agent to bring the call window back.
        self.show_listeners: Listeners[None] = Listeners()
        #: Metadata counts for the report: never what was said.
        self.counts = {"chat_received": 0, "chat_sent": 0, "chat_delivered": 0, "chat_read": 0}
        #: Per finished call: frames and rates received (metadata for the report).
        self.call_summaries: list[dict[str, Any]] = []
        self.ended = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- frames from the agent ------------------------------------------------------

    async def handle(self, message: Message) -> None:
        if isinstance(message, SignalIn):
            await self._on_signal(unwrap_signal(message.frame, self.begin.session_id))
        elif isinstance(message, RemoteHangup):
            await self._end_call()
            await self.report()
        elif isinstance(message, ControlIn):
            await self.control(message.control, message.argument)
        elif isinstance(message, Interruption):
            await self.set_interruption(message.interruption)
        elif isinstance(message, Show):
            self.show_listeners.fire(None)
        elif isinstance(message, IceConfig):
            self.ice = message
        elif isinstance(message, Query):
            await self.report()
        elif isinstance(message, End):
            await self.end()

    async def _on_signal(self, message: SignalSdp | SignalCandidate) -> None:
        if self.call is None:
            if not (isinstance(message, SignalSdp) and message.sdp_type is SdpType.OFFER):
                log.info("a signal before the call's offer was dropped")
                return
            self.call = self._new_call()
        elif isinstance(message, SignalSdp) and message.sdp_type is SdpType.OFFER:
            # An offer during a call: the technician's side replaces a connection
            # whose path was lost (aiortc has no ICE restart). The agent already
            # decided that it may come through (within the grace period, or after
            # a new prompt); the chat and the open devices carry over.
            await self._replace_call(self.call)
        call = self.call
        await call.handle_signal(message)
        if isinstance(message, SignalSdp) and message.sdp_type is SdpType.OFFER:
            assert call.local_fingerprint
            assert call.remote_fingerprint
            await self.link.send(
                Fingerprints(
                    offer_fingerprint=call.remote_fingerprint,
                    answer_fingerprint=call.local_fingerprint,
                )
            )

    async def _replace_call(self, lost: PeerCall) -> None:
        self.call = self._new_call(predecessor=lost)
        self.recoveries += 1
        log.info("replacing the call's connection (path lost)")
        await lost.detach()

    def _new_call(self, predecessor: PeerCall | None = None) -> PeerCall:
        begin = self.begin
        media = None
        if predecessor is not None:
            media = predecessor.media  # its listeners stay as they were
        elif begin.mode is not Mode.TEXT:
            media = CallMedia(self.devices, begin.mode, self.options)
            if self.interruption is not AudioInterruption.NONE:
                media.set_interruption(self.interruption)
            media.peer_listeners.add(lambda _state: self._on_media_change())
            media.remote_listeners.add(lambda _kind: self._on_media_change())
            media.local_listeners.add(lambda _state: self.changed_listeners.fire(None))
        call = PeerCall(
            session_id=begin.session_id,
            is_offerer=False,
            author=begin.device_name,
            send_signal=self._send_signal,
            ice_servers=rtc_ice_servers(self.ice.ice_servers),
            relay_only=self.ice.relay_only,
            media=media,
            chat=predecessor.chat if predecessor is not None else None,
        )
        if predecessor is None:
            self.calls += 1
            call.chat.listeners.add(self._count)
        call.state_listeners.add(lambda state: self._on_call_state(call, state))

        async def report_connected() -> None:
            await call.connected.wait()
            await self.link.send(CallUp())
            await self.report()

        self._spawn(report_connected())
        self.call_listeners.fire(call)
        self.changed_listeners.fire(None)
        return call

    def _on_call_state(self, call: PeerCall, state: CallState) -> None:
        self.changed_listeners.fire(None)
        if call.dropped and call is self.call and state in (CallState.FAILED, CallState.CLOSED):
            self._spawn(self.link.send(PathLost()))
            self._spawn(self.report())

    def _on_media_change(self) -> None:
        self.changed_listeners.fire(None)
        self._spawn(self.report())

    async def _send_signal(self, message: Message) -> None:
        assert isinstance(message, SignalSdp | SignalCandidate)
        await self.link.send(SignalOut(frame=wrap_signal(message)))

    def _count(self, entry: ChatEntry) -> None:
        if entry.outgoing:
            key = {DeliveryState.DELIVERED: "chat_delivered", DeliveryState.READ: "chat_read"}
            if entry.state in key:
                self.counts[key[entry.state]] += 1
            elif entry.state is DeliveryState.SENT:
                self.counts["chat_sent"] += 1
        elif entry.state is DeliveryState.DELIVERED:
            self.counts["chat_received"] += 1

    # -- the device user's controls -------------------------------------------------

    @property
    def media(self) -> CallMedia | None:
        return self.call.media if self.call is not None else None

    async def control(self, control: Control, argument: str = "") -> None:
        if control is Control.HANG_UP:
            await self.hang_up()
        elif control is Control.RESUME:
            await self.resume()
        else:
            media = self.media
            if media is None:
                log.info("control %s without a call with media", control.value)
                return
            if control in (Control.MUTE, Control.UNMUTE):
                media.set_muted(control is Control.MUTE)
            elif control in (Control.CAMERA_ON, Control.CAMERA_OFF):
                media.set_camera(control is Control.CAMERA_ON)
            elif control is Control.SWITCH_CAMERA:
                media.switch_camera()
            elif control is Control.AUDIO_OUTPUT:
                media.set_audio_output(self._speaker(argument, media))
        await self.report()

    def _speaker(self, device_id: str, media: CallMedia) -> MediaDevice:
        speakers = self.devices.devices(DeviceKind.SPEAKER)
        if device_id:
            for device in speakers:
                if device.device_id == device_id:
                    return device
            raise ValueError("no such audio output")
        # No choice given: the next output after the current one.
        if not speakers:
            raise ValueError("no audio output")
        index = speakers.index(media.speaker) if media.speaker in speakers else -1
        return speakers[(index + 1) % len(speakers)]

    async def hang_up(self) -> None:
        """End the call, not the session: the agent tells the server."""
        if self.call is None:
            return
        await self._end_call()
        await self.link.send(HangUp())

    async def resume(self) -> None:
        """Reopen the call with the same technician; the technician's side re-offers."""
        if self.call is not None:
            return
        await self.link.send(Resume())

    async def set_interruption(self, interruption: AudioInterruption) -> None:
        self.interruption = interruption
        if self.media is not None:
            self.media.set_interruption(interruption)
        self.changed_listeners.fire(None)
        await self.report()

    # -- ending ---------------------------------------------------------------------

    async def _end_call(self) -> None:
        call, self.call = self.call, None
        if call is None:
            return
        summary: dict[str, Any] = {"mode": self.begin.mode.value}
        video_in = call.media.video_in if call.media is not None else None
        if video_in is not None and video_in.frames:
            span = video_in.last_frame_at - video_in.first_frame_at
            summary["video_frames_received"] = video_in.frames
            summary["fps_received_avg"] = round(video_in.frames / span, 1) if span > 0 else None
            summary["video_received"] = f"{video_in.width}x{video_in.height}"
        self.call_summaries.append(summary)
        await call.close()
        self.changed_listeners.fire(None)

    async def abort(self) -> None:
        """The agent is gone: close the call and release the devices, say nothing."""
        await self._end_call()
        self.devices.close()

    async def end(self) -> None:
        """Close the call, release every device, say so, and let the process exit."""
        await self._end_call()
        for task in list(self._tasks):
            task.cancel()
        released = not self.devices.open_devices()
        self.devices.close()
        await self.report()
        await self.link.send(Ended(media_released=released))
        self.ended.set()

    # -- reporting ------------------------------------------------------------------

    async def report(self) -> None:
        await self.link.send(Report.of(await self.snapshot()))

    async def snapshot(self) -> dict[str, Any]:
        """What the agent (and tests) may know: states, counts, device names, stats."""
        call, media = self.call, self.media
        return {
            "calls": self.calls,
            "recoveries": self.recoveries,
            "call_state": call.state.value if call is not None else None,
            "call_failure": call.failure if call is not None else None,
            "chat_open": call.chat_open if call is not None else False,
            "interruption": self.interruption.value,
            "local_media": to_wire_dict(media.state()) if media is not None else None,
            "peer_media": (
                to_wire_dict(media.peer_state)
                if media is not None and media.peer_state is not None
                else None
            ),
            "audio_paused": bool(media and media.audio_in and media.audio_in.paused),
            "audio_played_frames": (
                media.counters()["audio_played_frames"] if media is not None else None
            ),
            "open_devices": [d.name for d in self.devices.open_devices()],
            "stats": await call.stats() if call is not None else None,
            "counts": dict(self.counts),
            "call_summaries": list(self.call_summaries),
        }

    def _spawn(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except (ConnectionError, ProtocolError) as exc:
                log.info("session task stopped: %s", type(exc).__name__)
            except Exception:
                log.exception("session task failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ScriptedDeviceUser:
    """A device user for tests and the demo: reads every message as it arrives,
    answers with the given replies in turn, and operates the given controls one after
    another once the call is up. Counts, never keeps, content."""

    def __init__(
        self, session: CallSession, replies: Sequence[str], controls: Sequence[str], step_s: float
    ) -> None:
        self.session = session
        self.replies = list(replies)
        self.controls = list(controls)
        self.step_s = step_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._chat: ChatLog | None = None
        session.call_listeners.add(self._on_call)

    def _on_call(self, call: PeerCall) -> None:
        if call.chat is self._chat:
            return  # a recovered connection of the same call: same log, same user
        self._chat = call.chat

        def on_entry(entry: ChatEntry) -> None:
            if not entry.outgoing and entry.state is DeliveryState.DELIVERED:
                self._run(self._read_and_reply(entry.message_id))

        call.chat.listeners.add(on_entry)
        if self.controls:
            controls, self.controls = self.controls, []  # once per session
            self._run(self._play_controls(call, controls))

    async def _read_and_reply(self, message_id: str) -> None:
        call = self.session.call  # the connection of the moment (it may have been replaced)
        if call is None:
            return
        await call.mark_read([message_id])
        if self.replies:
            await call.send_chat(self.replies.pop(0))

    async def _play_controls(self, call: PeerCall, controls: list[str]) -> None:
        await call.connected.wait()
        for step in controls:
            await asyncio.sleep(self.step_s)  # paced like a person, so each is seen
            if step == "phone_call":
                await self.session.set_interruption(AudioInterruption.PHONE_CALL)
            elif step == "phone_call_end":
                await self.session.set_interruption(AudioInterruption.NONE)
            else:
                await self.session.control(Control(step))

    def _run(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except ProtocolError as exc:
                log.info("scripted user: %s", exc.code.value)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="device_agent.call_process", description=__doc__)
    parser.add_argument("--ipc-fd", type=int, required=True, help="the agent's socket")
    parser.add_argument(
        "--ui",
        choices=["qt", "none"],
        default="none",
        help="qt: the call window (Qt Multimedia devices where present); none: headless",
    )
    parser.add_argument("--fake-media", action="store_true", help="synthetic devices only")
    parser.add_argument("--video-size", default="640x480", help="WIDTHxHEIGHT asked of cameras")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--encoders",
        choices=["interactive", "aiortc"],
        default="interactive",
        help="video encoder settings: ours for interactive calls, or aiortc's own",
    )
    parser.add_argument("--reply", action="append", default=[], help="headless: chat replies")
    parser.add_argument(
        "--controls",
        default="",
        help="headless: comma-separated controls to operate once the call is up "
        f"({', '.join(c.value for c in Control)}, phone_call, phone_call_end)",
    )
    parser.add_argument("--control-step-s", type=float, default=1.0)
    parser.add_argument(
        "--screenshots",
        type=Path,
        default=None,
        help="demo only: save pictures of the call window in this folder",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


#: Makes the session once ``session.begin`` arrived (the UI, if any, attaches here).
SessionFactory = Callable[[Begin], CallSession]


async def serve(link: Link, make_session: SessionFactory) -> int:
    """Serve one session over ``link``: wait for ``session.begin``, then handle the
    agent's frames until the session ends. Returns the process's exit code."""
    first = await link.receive()
    if first is None or isinstance(first, End):
        return 0  # the invite was rejected or expired: nothing was ever opened
    if not isinstance(first, Begin):
        log.error("the first frame was %s, not session.begin", first.TYPE)
        return 2
    session = make_session(first)
    while not session.ended.is_set():
        try:
            message = await link.receive()
        except ProtocolError as exc:
            log.error("bad frame from the agent: %s", exc.code.value)
            continue
        if message is None:
            # The agent is gone: nobody can end this session properly, so end it
            # here; the devices must not stay open.
            log.warning("the agent went away; ending the session")
            await session.abort()
            return 1
        try:
            await session.handle(message)
        except (ProtocolError, ValueError) as exc:
            log.warning("session frame %s refused: %s", message.TYPE, type(exc).__name__)
    return 0


def media_options(args: argparse.Namespace) -> MediaOptions:
    width, height = (int(v) for v in args.video_size.lower().split("x"))
    return MediaOptions(width=width, height=height, fps=args.fps)


async def run(args: argparse.Namespace) -> int:
    sock = socket.socket(fileno=args.ipc_fd)
    link = await Link.open(sock, inbound=TO_SESSION, outbound=TO_AGENT)
    options = media_options(args)
    controls = [c for c in args.controls.split(",") if c]
    windows: list[Any] = []  # kept alive for the session's life

    def make_session(begin: Begin) -> CallSession:
        if args.ui == "qt":
            # Imported here: the headless process never loads Qt.
            from device_agent.ui.call_window import open_call_window
            from peer.qt_media import qt_backend_or_none

            real = None if args.fake_media else qt_backend_or_none()
            devices = MediaDevices(real, fake=args.fake_media)
        else:
            # Headless there is no Qt application: the devices are the synthetic ones.
            devices = MediaDevices(None, fake=args.fake_media)
        session = CallSession(link, begin, devices, options)
        ScriptedDeviceUser(session, args.reply, controls, args.control_step_s)
        if args.ui == "qt":
            windows.append(open_call_window(session, screenshots=args.screenshots))
        return session

    try:
        return await serve(link, make_session)
    finally:
        for window in windows:
            window.close_for_good()
        await link.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s session[{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiortc offers no encoder settings; ours are tuned for interactive calls
    # (AIORTC_DEFAULT keeps aiortc's, still metered, for benchmarks).
    interactive = args.encoders == "interactive"
    encoders.install(encoders.INTERACTIVE if interactive else encoders.AIORTC_DEFAULT)
    if args.ui == "qt":
        from peer.ui.app import run_with_qt

        return run_with_qt(run(args), app_name="Live Support call")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
