"""Relayed calls: what the TURN relay costs against a direct call, on loopback.

Real parts: coturn's ``turnserver`` (tests/relay/coturn.py), the server minting TURN
credentials from the secret it shares with coturn, a device agent whose call runs in
a real session process, and the console. The same device is called several times
directly, then several times with its group relay-only (every packet through
coturn). Per call: the setup time (``session.start`` sent until the console sees the
session ``in_call``) and the round trip the console measures from RTCP in a voice
call. On loopback the relay adds coturn's own forwarding, not a network detour: the
figures bound what the relay software costs, not what a real relay far away would.

    .venv/bin/python -m bench.faults.turn
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peer.call_media import MediaOptions
from protocol.enums import Mode, SessionState
from tests.conftest import open_lab
from tests.integration.harness import Pair, make_pair, until
from tests.relay.coturn import Coturn

CALLS = 3
SMALL = ["--fake-media", "--video-size", "320x240"]
#: Targets: a relayed call sets up within this much of a direct one, and the relay
#: adds at most this much round trip on loopback.
SETUP_EXTRA_TARGET_MS = 1000.0
RTT_EXTRA_TARGET_MS = 20.0


async def one_call(pair: Pair, label: str) -> dict[str, Any]:
    pair.decision[0] = Mode.VOICE
    started = time.perf_counter()
    session = await pair.console.start_session(pair.device_id, Mode.VOICE, f"bench {label}")
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=30)
    setup_ms = (time.perf_counter() - started) * 1000
    call = session.call
    assert call is not None
    rtts: list[float] = []
    route = None
    deadline = time.monotonic() + 15
    # RTCP receiver reports come every second or so: a few of them per call.
    while len(rtts) < 3 and time.monotonic() < deadline:
        stats = await call.stats()
        route = stats["route"]
        if stats["rtt_ms"] is not None and (not rtts or stats["rtt_ms"] != rtts[-1]):
            rtts.append(stats["rtt_ms"])
        await asyncio.sleep(0.5)
    await pair.console.close_session(session.session_id)
    await pair.console.wait_session(session, [SessionState.CLOSED])
    await until(lambda: pair.agent.session is None)  # the device's side is done too
    return {
        "setup_ms": setup_ms,
        "rtt_ms": statistics.median(rtts) if rtts else None,
        "route": route,
    }


async def run(folder: Path) -> dict[str, Any]:
    coturn = await Coturn(folder / "coturn").start()
    try:
        async with (
            open_lab(
                folder, turn_urls=(coturn.url,), turn_secret=coturn.secret, turn_ttl_s=600
            ) as lab,
            make_pair(lab, folder, session_args=SMALL) as pair,
        ):
            pair.console.media_options = MediaOptions(width=320, height=240)
            direct = [await one_call(pair, f"direct {i}") for i in range(CALLS)]
            await lab.store.set_group_policy(lab.tablets.id, relay_only=True)
            relayed = [await one_call(pair, f"relayed {i}") for i in range(CALLS)]
    finally:
        await coturn.stop()
    return {"direct": direct, "relayed": relayed}


def _median(calls: list[dict[str, Any]], key: str) -> float | None:
    values = [c[key] for c in calls if c[key] is not None]
    return round(statistics.median(values), 1) if values else None


def rows(result: dict[str, Any]) -> list[dict[str, object]]:
    direct, relayed = result["direct"], result["relayed"]
    setup_d, setup_r = _median(direct, "setup_ms"), _median(relayed, "setup_ms")
    rtt_d, rtt_r = _median(direct, "rtt_ms"), _median(relayed, "rtt_ms")
    all_relayed = all(c["route"] == "relayed" for c in relayed)
    all_direct = all(c["route"] == "direct" for c in direct)
    fault = "TURN relay (relay-only group, coturn on loopback)"
    out: list[dict[str, object]] = [
        {
            "fault": fault,
            "measure": f"call setup, direct (median of {len(direct)})",
            "value": setup_d if setup_d is not None else -1,
            "unit": "ms",
            "target": "reference",
            "ok": setup_d is not None and all_direct,
        },
        {
            "fault": fault,
            "measure": f"call setup, relayed (median of {len(relayed)})",
            "value": setup_r if setup_r is not None else -1,
            "unit": "ms",
            "target": f"<= direct + {SETUP_EXTRA_TARGET_MS:.0f} ms",
            "ok": setup_r is not None
            and setup_d is not None
            and setup_r <= setup_d + SETUP_EXTRA_TARGET_MS,
        },
        {
            "fault": fault,
            "measure": "round trip (RTCP), direct",
            "value": rtt_d if rtt_d is not None else -1,
            "unit": "ms",
            "target": "reference",
            "ok": rtt_d is not None,
        },
        {
            "fault": fault,
            "measure": "round trip (RTCP), relayed",
            "value": rtt_r if rtt_r is not None else -1,
            "unit": "ms",
            "target": f"<= direct + {RTT_EXTRA_TARGET_MS:.0f} ms",
            "ok": rtt_r is not None and rtt_d is not None and rtt_r <= rtt_d + RTT_EXTRA_TARGET_MS,
        },
        {
            "fault": fault,
            "measure": "relay-only calls whose stats say 'relayed'",
            "value": sum(c["route"] == "relayed" for c in relayed),
            "unit": "calls",
            "target": f"{len(relayed)} of {len(relayed)}",
            "ok": all_relayed,
        },
    ]
    return out


async def measure() -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="bench-turn-") as folder:
        return rows(await run(Path(folder)))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-turn-") as folder:
        result = asyncio.run(run(Path(folder)))
    for row in rows(result):
        print(f"{row['measure']:<48} {row['value']:>8} {row['unit']:<5} {row['target']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
