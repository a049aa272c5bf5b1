"""Call gap during a server restart: a video call with chat running, the signaling
server killed with SIGKILL and started again on the same port and data folder.

Run (from the project root)::

    .venv/bin/python -m bench.faults.restart

What is real: the server (``livesupport server`` in its own process, TLS, SQLite);
the device (the real agent, its call in a real session process with the synthetic
camera and microphone at 320x240); the technician (the real ConsoleClient and its
PeerCall). Everything runs on loopback.

Measured on the console's side, sampling every 10 ms: the longest time without a new
video frame arriving, and the longest time without a chat line sent every 200 ms
being acknowledged by the device (the receipt crosses the data channel both ways),
over the whole restart (from the kill until both ends have attached again, and one
second more); the same before the kill as the baseline. Media and chat go peer to
peer, so the restart should not show in either. Also: how long the server was away,
and how long after it listened again both ends had taken up the session.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.faults._restartable import PASSWORD, ServerProcess, enrolment_code, make_fleet
from device_agent.agent import ActiveSession, DeviceAgent, enrol
from device_agent.state import AgentState
from peer import ice
from peer.call import PeerCall
from peer.call_media import MediaOptions
from peer.chat import DeliveryState
from peer.signaling import Backoff
from protocol.enums import Mode, SessionState
from protocol.messages import SessionInvite
from tech_console.client import ConsoleClient, ConsoleSession

SAMPLE_S = 0.01
CHAT_EVERY_S = 0.2
BASELINE_S = 3.0
AFTER_S = 1.0
DEADLINE_S = 60.0
#: The product's backoff, only faster: a test of the call, not of the backoff.
BACKOFF = Backoff(base_s=0.05, cap_s=0.5)


async def _until(predicate: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


class Recorder:
    """Samples the console's call: when the frame count moved, when a chat line was
    acknowledged; sends a chat line every CHAT_EVERY_S."""

    def __init__(self, session: ConsoleSession, call: PeerCall) -> None:
        self.session = session
        self.call = call
        self.frame_times: list[float] = []
        self.ack_times: list[float] = []
        self._sent: list[str] = []
        self._acked: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def frames(self) -> int:
        media = self.session.media
        video_in = media.video_in if media is not None else None
        return video_in.frames if video_in is not None else 0

    async def _run(self) -> None:
        last_frames = self.frames()
        next_chat = time.monotonic()
        while True:
            now = time.monotonic()
            frames = self.frames()
            if frames != last_frames:
                self.frame_times.append(now)
                last_frames = frames
            if now >= next_chat:
                self._sent.append(await self.call.send_chat(f"tick {len(self._sent)}"))
                next_chat = now + CHAT_EVERY_S
            for message_id in self._sent:
                entry = self.call.chat.outgoing(message_id)
                if (
                    message_id not in self._acked
                    and entry is not None
                    and entry.state >= DeliveryState.DELIVERED
                ):
                    self._acked.add(message_id)
                    self.ack_times.append(now)
            await asyncio.sleep(SAMPLE_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest time in [start, end] with no event (the edges count as events)."""
    inside = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


async def run(folder: Path) -> dict[str, Any]:
    # Calls stay on loopback: this process's and the session process's candidates.
    previous = os.environ.get(ice.ENV)
    os.environ[ice.ENV] = "127.0.0.1"
    try:
        return await _run(folder)
    finally:
        if previous is None:
            os.environ.pop(ice.ENV, None)
        else:
            os.environ[ice.ENV] = previous
        ice.restrict_host_addresses(previous.split(",") if previous else None)


async def _run(folder: Path) -> dict[str, Any]:
    server = ServerProcess(folder / "server", grace_s=60.0, log=folder / "server.log")
    fleet = await make_fleet(server)
    await server.start()
    state = AgentState(folder / "agent")
    await enrol(state, await enrolment_code(server, fleet.group), name="Bench tablet")

    async def accept(invite: SessionInvite) -> Mode:
        return Mode.VIDEO

    agent = DeviceAgent(
        state,
        invite_handler=accept,
        session_args=["--fake-media", "--video-size", "320x240"],
        backoff=BACKOFF,
    )
    console = ConsoleClient(
        server.url,
        server.fingerprint,
        backoff=BACKOFF,
        media_options=MediaOptions(width=320, height=240),
    )
    device_attached: list[float] = []

    def on_session(session: ActiveSession | None) -> None:
        device_attached.append(time.monotonic())

    recorder: Recorder | None = None
    try:
        await agent.start()
        await agent.client.wait_online()
        await console.login(fleet.technician.username, PASSWORD)
        device_id = agent.device.device_id
        await _until(lambda: device_id in console.devices, "the device is not in the inventory")
        session = await console.start_session(device_id, Mode.VIDEO, "bench REST-1")
        await console.wait_session(session, [SessionState.IN_CALL], timeout_s=DEADLINE_S)
        call = session.call
        assert call is not None
        await _until(lambda: session.consent_verified and call.chat_open, "no consent")
        recorder = Recorder(session, call)
        await _until(lambda: recorder is not None and recorder.frames() > 0, "no video")
        recorder.start()
        await asyncio.sleep(BASELINE_S)  # the baseline is a span of time, by definition

        before = session.last_update
        agent.session_listeners.add(on_session)
        killed_at = await server.kill()
        ready_at = await server.start()
        await _until(
            lambda: (
                session.last_update is not before
                and console.link.online.is_set()
                and agent.online
                and any(t > ready_at for t in device_attached)
            ),
            "the ends did not attach again",
        )
        attached_at = time.monotonic()
        await asyncio.sleep(AFTER_S)  # the span after re-attachment that is measured
        end = time.monotonic()
        await recorder.stop()
        baseline_start = killed_at - BASELINE_S
        result = {
            "server_away_s": round(ready_at - killed_at, 2),
            "attached_after_ready_s": round(attached_at - ready_at, 2),
            "same_call": session.call is call,
            "session_state": session.state.value,
            "video_gap_restart_ms": round(
                longest_gap(recorder.frame_times, killed_at, end) * 1000, 1
            ),
            "video_gap_baseline_ms": round(
                longest_gap(recorder.frame_times, baseline_start, killed_at) * 1000, 1
            ),
            "chat_gap_restart_ms": round(longest_gap(recorder.ack_times, killed_at, end) * 1000, 1),
            "chat_gap_baseline_ms": round(
                longest_gap(recorder.ack_times, baseline_start, killed_at) * 1000, 1
            ),
            "frames_during_restart": sum(1 for t in recorder.frame_times if killed_at < t < end),
            "chat_acked_during_restart": sum(1 for t in recorder.ack_times if killed_at < t < end),
        }
        await console.close_session(session.session_id)
        await console.wait_session(session, [SessionState.CLOSED], timeout_s=DEADLINE_S)
        return result
    finally:
        if recorder is not None:
            await recorder.stop()
        await console.close()
        await agent.stop()
        await server.stop()


def rows(result: dict[str, Any]) -> list[dict[str, object]]:
    fault = "signaling server killed (SIGKILL) and restarted mid-call"
    # A gap is "none" when it is within the call's own frame and chat rhythm.
    video_ok = result["video_gap_restart_ms"] <= max(250.0, 2 * result["video_gap_baseline_ms"])
    chat_ok = result["chat_gap_restart_ms"] <= max(
        2 * CHAT_EVERY_S * 1000, 2 * result["chat_gap_baseline_ms"]
    )
    return [
        {
            "fault": fault,
            "measure": "call gap: longest time without a video frame",
            "value": result["video_gap_restart_ms"],
            "unit": "ms",
            "target": (f"no gap: <= max(250 ms, 2x baseline {result['video_gap_baseline_ms']} ms)"),
            "ok": video_ok and result["same_call"],
        },
        {
            "fault": fault,
            "measure": "chat gap: longest time without a chat line acknowledged",
            "value": result["chat_gap_restart_ms"],
            "unit": "ms",
            "target": (f"no gap: <= max(400 ms, 2x baseline {result['chat_gap_baseline_ms']} ms)"),
            "ok": chat_ok,
        },
        {
            "fault": fault,
            "measure": "both ends attached again, after the server listened",
            "value": result["attached_after_ready_s"],
            "unit": "s",
            "target": "< 60 s (the grace period)",
            "ok": result["attached_after_ready_s"] < 60 and result["session_state"] == "in_call",
        },
    ]


async def measure() -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="restart-") as folder:
        return rows(await run(Path(folder)))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="restart-") as folder:
        result = asyncio.run(run(Path(folder)))
    for row in rows(result):
        print(f"{row['measure']:<58} {row['value']:>8} {row['unit']:<3} {row['target']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
