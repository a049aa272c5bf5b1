"""``livesupport agent``: enrol the device, then run the resident agent.

With a display, the agent shows its windows (``device_agent.ui``): the tray or the
agent window, the incoming-call prompt, notification pop-ups and the inbox, and the
call window in each session process. ``--headless`` (or no display) runs it without
windows, with a scripted device user for tests and the demo: it accepts invites as
``--accept`` and reads and answers notifications; in the session process it reads
every chat message as it arrives, replies with the ``--reply`` lines in turn and
operates the ``--controls`` one after another. ``--autopilot`` does the same through
the windows (for the demo's pictures).

The platform's audio interruption (a phone call) can be raised from outside: SIGUSR1
starts one, SIGUSR2 ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_agent.agent import DeviceAgent, enrol
from device_agent.session_host import process_alive
from device_agent.state import AgentState, default_state_dir
from peer.discovery import discover, pick
from peer.signaling import RequestError
from protocol.enrolment import BadEnrolmentCode, EnrolmentCode
from protocol.enums import AudioInterruption, Mode
from protocol.messages import NotifyDeliver, SessionInvite

log = logging.getLogger(__name__)


class ScriptedUser:
    """A device user who always answers invites and notifications the same way.
    (Chat is answered in the session process: the resident agent never sees it.)"""

    def __init__(self, agent_ref: list[DeviceAgent], args: argparse.Namespace) -> None:
        self._agent_ref = agent_ref
        self.accept: str = args.accept
        self.accept_delay_s: float = args.accept_delay_s
        self.notification_answer: str | None = args.notification_answer
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts = {
            "invites": 0,
            "accepted": 0,
            "notifications": 0,
        }

    @property
    def agent(self) -> DeviceAgent:
        return self._agent_ref[0]

    async def on_invite(self, invite: SessionInvite) -> Mode | None:
        self.counts["invites"] += 1
        if self.accept_delay_s:
            await asyncio.sleep(self.accept_delay_s)  # a person reading the prompt
        if self.accept == "reject":
            return None
        wanted = Mode(self.accept)
        mode = wanted if wanted in invite.offered_modes else invite.offered_modes[-1]
        self.counts["accepted"] += 1
        return mode

    async def on_notification(self, note: NotifyDeliver) -> None:
        self.counts["notifications"] += 1
        await self.agent.mark_notification_read(note.notification_id)
        if self.notification_answer:
            await self.agent.answer_notification(note.notification_id, self.notification_answer)


def _session_args(args: argparse.Namespace, *, qt: bool) -> list[str]:
    """What the session processes are started with."""
    extra = ["--video-size", args.video_size, "--control-step-s", str(args.control_step_s)]
    if qt:
        extra += ["--ui", "qt"]
        if args.screenshots is not None:
            extra += ["--screenshots", str(args.screenshots)]
    extra += ["--encoders", args.encoders]
    for reply in args.reply:
        extra += ["--reply", reply]
    if args.controls:
        extra += ["--controls", args.controls]
    if args.fake_media:
        extra.append("--fake-media")
    if args.verbose:
        extra.append("--verbose")
    return extra


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "admin":  # the local admin utility: livesupport agent admin ...
        from device_agent import admin

        return admin.main(argv[1:])
    parser = argparse.ArgumentParser(prog="livesupport agent", description=__doc__)
    parser.add_argument("--state", type=Path, default=None, help="state folder")
    parser.add_argument("--enrol", metavar="CODE", help="enrol with this one-time code first")
    parser.add_argument("--name", help="device name shown to technicians")
    parser.add_argument(
        "--discover",
        action="store_true",
        help="find the server on the LAN (zeroconf) when its address changed; the pinned "
        "certificate still decides whom the agent trusts",
    )
    parser.add_argument("--headless", action="store_true", help="run without a display")
    parser.add_argument(
        "--accept",
        choices=["text", "voice", "video", "reject"],
        default="text",
        help="headless: how the scripted user answers invites",
    )
    parser.add_argument(
        "--accept-delay-s", type=float, default=0.0, help="headless: time taken to answer"
    )
    parser.add_argument(
        "--prewarm",
        action="store_true",
        help="keep one idle session process ready (faster call start, more memory while idle)",
    )
    parser.add_argument("--reply", action="append", default=[], help="headless: chat replies")
    parser.add_argument(
        "--controls",
        default="",
        help="headless: call controls the user operates once the call is up, in order "
        "(mute,unmute,camera_off,camera_on,switch_camera,audio_output,phone_call,...)",
    )
    parser.add_argument("--control-step-s", type=float, default=1.0)
    parser.add_argument(
        "--fake-media", action="store_true", help="synthetic camera, tone and silent speaker"
    )
    parser.add_argument("--video-size", default="640x480", help="WIDTHxHEIGHT for the camera")
    parser.add_argument(
        "--encoders",
        choices=["interactive", "aiortc"],
        default="interactive",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--notification-answer", help="headless: answer notifications so")
    parser.add_argument(
        "--autopilot",
        action="store_true",
        help="with windows: answer the prompt (--accept, --accept-delay-s) and notifications "
        "(--notification-answer, else mark read) through the windows, for demos",
    )
    parser.add_argument(
        "--screenshots", type=Path, default=None, help="demo: save pictures of the windows here"
    )
    parser.add_argument("--report-stdout", action="store_true", help="print counts on exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s agent %(name)s: %(message)s",
        stream=sys.stderr,
    )
    state = AgentState(args.state or default_state_dir())
    qt = not args.headless and has_display()
    if not args.headless and not qt:
        print("livesupport agent: no display; running headless", file=sys.stderr)
    try:
        if qt:
            from peer.ui.app import run_with_qt

            return run_with_qt(_run(state, args, qt=True), app_name="Live Support")
        return asyncio.run(_run(state, args, qt=False))
    except (RequestError, BadEnrolmentCode) as exc:
        print(f"livesupport agent: {exc}", file=sys.stderr)
        return 2


def has_display() -> bool:
    """Whether Qt can open windows here (a display, or a platform chosen explicitly,
    such as ``offscreen`` for tests and the headless demo)."""
    env = os.environ
    return bool(env.get("QT_QPA_PLATFORM") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


async def locate_server(pin: str, known: str) -> str:
    """The address of the server holding ``pin`` on the LAN, else ``known``.

    Discovery only proposes an address: every connection to it is checked against the
    pin, so a forged advertisement ends in a refused connection, never in trust."""
    found = pick(await discover(want_fingerprint=pin), pin)
    if found is None:
        print(
            f"livesupport agent: no server with our pin on the LAN; using {known}", file=sys.stderr
        )
        return known
    if found.url != known:
        print(f"livesupport agent: found our server at {found.url} ({found.name})", file=sys.stderr)
    return found.url


async def _run(state: AgentState, args: argparse.Namespace, *, qt: bool) -> int:
    if args.enrol:
        code_text = args.enrol
        if args.discover:
            code = EnrolmentCode.parse(code_text)
            server = await locate_server(code.fingerprint, code.server)
            code_text = dataclasses.replace(code, server=server).encode()
        device = await enrol(state, code_text, name=args.name)
        print(f"enrolled as {device.device_id} with {device.server}", file=sys.stderr)
    elif args.discover and state.enrolled:
        device, _key = state.load()
        server = await locate_server(device.fingerprint, device.server)
        if server != device.server:
            state.save_identity(dataclasses.replace(device, server=server))
    if not state.enrolled:
        print("livesupport agent: not enrolled: pass --enrol CODE", file=sys.stderr)
        return 2
    agent_ref: list[DeviceAgent] = []
    user = ScriptedUser(agent_ref, args)
    agent = DeviceAgent(
        state,
        invite_handler=user.on_invite,
        notification_handler=user.on_notification,
        name=args.name,
        session_args=_session_args(args, qt=qt),
        prewarm=args.prewarm,
    )
    agent_ref.append(agent)
    counts = user.counts
    face: Any = None
    if qt:
        from device_agent.ui.main import AgentFace

        # The windows answer invites and notifications now (the model rebinds the
        # agent's handlers); an autopilot may press their buttons for a demo.
        face = AgentFace(agent, args)
        counts = face.counts
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: set[asyncio.Future[None]] = set()

    def interruption(kind: AudioInterruption) -> None:
        task = asyncio.ensure_future(agent.audio_interruption(kind))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGUSR1, interruption, AudioInterruption.PHONE_CALL)
    loop.add_signal_handler(signal.SIGUSR2, interruption, AudioInterruption.NONE)
    await agent.start()
    stopped = asyncio.ensure_future(agent.client.stopped.wait())
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({stopped, waiter}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    waiter.cancel()
    fatal = agent.client.fatal
    if face is not None:
        face.close()
    await agent.stop()
    if args.report_stdout:
        sessions = [
            {
                "pid": host.pid,
                "exit_code": host.returncode,
                "exited": host.exited.is_set() and not process_alive(host.pid or 0),
                "media_released": host.ended.media_released if host.ended else None,
                "counts": host.last_report.get("counts"),
                "calls": host.last_report.get("call_summaries"),
            }
            for host in agent.hosts
        ]
        print(json.dumps({"agent": counts, "session_processes": sessions}), flush=True)
    if fatal is not None:
        print(f"livesupport agent: {fatal}", file=sys.stderr)
        return 3
    return 0
