"""Recovery time after a media path is lost mid-call (a network change).

Run (from the project root, as root: it adds and removes loopback routes)::

    .venv/bin/python -m bench.faults.path_loss

What is real: the server (``livesupport server`` in its own process, TLS, SQLite);
the device (the real agent, its call in a real session process with the synthetic
camera and microphone at 320x240); the technician (the real ConsoleClient and its
PeerCall). Both ends offer only two loopback addresses of their own ("Wi-Fi" and
"cellular", ``_loopback_paths.HOSTS``); the signaling stays on 127.0.0.1.

Each run cuts the address the call's path uses (a blackhole route in the kernel's
local table: ``_loopback_paths``), with the other one up, and measures from the cut:

- **detection**: the console's connection dropped (consent checks failed, see
  ``peer.ice.CONSENT_INTERVAL_S``), and the device's (its agent heard
  ``session.path_lost``);
- **recovery**: a new connection is up with video frames decoded on the console
  from it and the chat channel open: what the technician sees come back;
- **renegotiation**: recovery minus the console's detection (offer, answer, ICE,
  DTLS and the first frame of the new connection).

Then the cut address comes back, and the next run cuts the one the call moved to.
The figures are the median (p50) and the maximum over ``RUNS`` runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.faults._loopback_paths import HOSTS, LoopbackPaths
from bench.faults._restartable import PASSWORD, ServerProcess, enrolment_code, make_fleet
from device_agent.agent import DeviceAgent, enrol
from device_agent.state import AgentState
from peer import ice
from peer.call_media import MediaOptions
from peer.signaling import Backoff
from protocol.enums import Mode, SessionState
from protocol.messages import SessionInvite
from tech_console.client import ConsoleClient, ConsoleSession

RUNS = 3
#: Per wait; the whole measurement stays well under two minutes when things work.
DEADLINE_S = 30.0
BACKOFF = Backoff(base_s=0.05, cap_s=0.5)
#: Targets: a path loss noticed within a few seconds, the call back soon after.
DETECTION_TARGET_S = 6.0
RECOVERY_TARGET_S = 10.0
RENEGOTIATION_TARGET_S = 3.0


async def _until(predicate: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


def _frames(session: ConsoleSession) -> int:
    media = session.media
    video_in = media.video_in if media is not None else None
    return video_in.frames if video_in is not None else 0


async def run(folder: Path) -> dict[str, Any]:
    previous = os.environ.get(ice.ENV)
    # Both ends (this process and the session process it starts) use our two addresses.
    os.environ[ice.ENV] = ",".join(HOSTS)
    try:
        with LoopbackPaths() as paths:
            return await _run(folder, paths)
    finally:
        if previous is None:
            os.environ.pop(ice.ENV, None)
        else:
            os.environ[ice.ENV] = previous
        ice.restrict_host_addresses(previous.split(",") if previous else None)


async def _run(folder: Path, paths: LoopbackPaths) -> dict[str, Any]:
    server = ServerProcess(folder / "server", grace_s=60.0, log=folder / "server.log")
    fleet = await make_fleet(server)
    await server.start()
    state = AgentState(folder / "agent")
    await enrol(state, await enrolment_code(server, fleet.group), name="Bench tablet")

    prompts: list[str] = []

    async def accept(invite: SessionInvite) -> Mode:
        prompts.append(invite.session_id)  # the invite, and any prompt after a loss
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
    runs: list[dict[str, Any]] = []
    try:
        await agent.start()
        await agent.client.wait_online()
        await console.login(fleet.technician.username, PASSWORD)
        device_id = agent.device.device_id
        await _until(lambda: device_id in console.devices, "the device is not in the inventory")
        session = await console.start_session(device_id, Mode.VIDEO, "bench NET-1")
        await console.wait_session(session, [SessionState.IN_CALL], timeout_s=DEADLINE_S)
        await _until(lambda: session.consent_verified and _frames(session) > 10, "no video")
        for _ in range(RUNS):
            runs.append(await _one_run(session, agent, paths))
        return {
            "runs": runs,
            "session_state": session.state.value,
            "recoveries": session.recoveries,
            "prompts": len(prompts),
        }
    finally:
        await console.close()
        await agent.stop()
        await server.stop()


async def _one_run(
    session: ConsoleSession, agent: DeviceAgent, paths: LoopbackPaths
) -> dict[str, Any]:
    paths.restore_all()  # every network up but the one about to go
    call = session.call
    assert call is not None
    hosts = call.selected_hosts()
    if hosts is None:
        raise RuntimeError("the call has no selected path")
    device_session = agent.session
    assert device_session is not None
    recoveries = session.recoveries
    lost = hosts[1]
    paths.cut(lost)
    cut_at = time.monotonic()
    seen: dict[str, float] = {}

    def back() -> bool:
        # Sampled every 10 ms: each end's loss is recorded while it stands (the
        # device's ends at the new connection; the console may even replace the
        # connection before the device noticed, and then the device never does).
        if session.path_lost_at is not None:
            seen.setdefault("console", session.path_lost_at)
        if device_session.path_lost_at is not None:
            seen.setdefault("device", device_session.path_lost_at)
        return (
            session.recoveries > recoveries
            and session.call is not None
            and session.call.chat_open
            and _frames(session) > 0
        )

    await _until(back, "the call did not come back")
    back_at = time.monotonic()
    console_lost_at = seen["console"]
    device_lost_at = seen.get("device")
    new_hosts = session.call.selected_hosts() if session.call is not None else None
    return {
        "cut": lost,
        "moved_to": new_hosts,
        "console_detection_s": round(console_lost_at - cut_at, 3),
        "device_detection_s": (
            round(device_lost_at - cut_at, 3) if device_lost_at is not None else None
        ),
        "recovery_s": round(back_at - cut_at, 3),
        "renegotiation_s": round(back_at - console_lost_at, 3),
    }


def summary(result: dict[str, Any]) -> dict[str, float]:
    runs = result["runs"]
    figures: dict[str, float] = {}
    for key in ("console_detection_s", "device_detection_s", "recovery_s", "renegotiation_s"):
        values = [run[key] for run in runs if run[key] is not None]
        figures[f"{key}_n"] = len(values)
        if values:
            figures[f"{key}_p50"] = round(statistics.median(values), 2)
            figures[f"{key}_max"] = round(max(values), 2)
    return figures


def rows(result: dict[str, Any]) -> list[dict[str, object]]:
    fault = "media path lost mid-call (the address in use blackholed, another up)"
    s = summary(result)
    n = len(result["runs"])
    in_call = result["session_state"] == "in_call" and result["prompts"] == 1

    def row(
        what: str, key: str, target_s: float, target: str, ok: bool = True
    ) -> dict[str, object]:
        count = int(s[f"{key}_n"])
        if not count:
            return {}
        return {
            "fault": fault,
            "measure": f"{what}, p50 of {count}/{n} (max {s[f'{key}_max']} s)",
            "value": s[f"{key}_p50"],
            "unit": "s",
            "target": target,
            "ok": ok and s[f"{key}_max"] <= target_s,
        }

    made = [
        row(
            "detection: console noticed the loss",
            "console_detection_s",
            DETECTION_TARGET_S,
            f"<= {DETECTION_TARGET_S:g} s (aioice alone: about 30 s)",
        ),
        # The device notices too unless the console's new offer came first.
        row(
            "detection: device noticed the loss",
            "device_detection_s",
            DETECTION_TARGET_S,
            f"<= {DETECTION_TARGET_S:g} s",
        ),
        row(
            "recovery: cut until video and chat flow again",
            "recovery_s",
            RECOVERY_TARGET_S,
            f"<= {RECOVERY_TARGET_S:g} s, same session, no new prompt",
            in_call,
        ),
        row(
            "renegotiation: console's detection until media flows",
            "renegotiation_s",
            RENEGOTIATION_TARGET_S,
            f"<= {RENEGOTIATION_TARGET_S:g} s",
        ),
    ]
    return [r for r in made if r]


async def measure() -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="path-loss-") as folder:
        return rows(await run(Path(folder)))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="path-loss-") as folder:
        result = asyncio.run(run(Path(folder)))
    for row in rows(result):
        print(f"{row['measure']:<78} {row['value']:>6} {row['unit']:<2} {row['target']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
