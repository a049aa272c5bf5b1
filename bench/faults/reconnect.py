"""Reconnect storm: a fleet of devices connected to a real server process, the server
killed with SIGKILL and started again on the same port; how long until each device
is back, and how the reconnects spread over time.

Run (from the project root)::

    .venv/bin/python -m bench.faults.reconnect            # 1,000 devices
    .venv/bin/python -m bench.faults.reconnect --devices 200

What is real: the server (``livesupport server`` in its own process, TLS, SQLite);
the devices' identities (Ed25519 keys in the server's store, inserted in one
transaction: enrolling a thousand through tokens would time the enrolment); the
devices' link, each one the product's ``SignalingClient`` (pinned TLS, the server's
challenge signed with the device key, reconnection with the default ``Backoff``: full
jitter, 0.5 s doubling up to 30 s). What is light: a device is only its link (no
agent, no session process), all of them in this process, which is not the server's.

Measured, after the restart: for each device the time from the moment the new server
listened (its ready file) until the device was authenticated again (``auth.ok``
received), as p50, p95 and max; and the connects the server completed per 100 ms
(``auth.ok`` arrivals, bucketed): the busiest bucket against the fleet size says
whether the reconnects came as one wave or spread out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.faults._restartable import (
    ServerProcess,
    bulk_devices,
    make_fleet,
    raise_open_files_limit,
)
from peer.signaling import Backoff, LinkState, SignalingClient
from protocol import identity
from protocol.codec import Message
from protocol.messages import AuthChallenge, AuthDevice

DEVICES = 1000
BUCKET_S = 0.1
#: Deadlines (not targets): how long the fleet may take to connect, and to come back.
CONNECT_DEADLINE_S = 90.0
RETURN_DEADLINE_S = 90.0


@dataclass(frozen=True, slots=True)
class PlannedBackoff(Backoff):
    """The product's backoff (full jitter), noting when each attempt is planned.

    The planned times are the load the fleet's backoff offers the server. The
    attempts this process then makes can bunch up on their own: a thousand devices
    share its one event loop here, and timers due while it was busy fire together.
    Real devices each have their own CPU, so the plan is what a server would see."""

    planned: list[float] = field(default_factory=list)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        chosen = self.ceiling(attempt) if self.synchronized else Backoff.delay(self, attempt, rng)
        self.planned.append(time.monotonic() + chosen)
        return chosen

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * float(2 ** min(attempt, 30)))

    @property
    def synchronized(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class SynchronizedBackoff(PlannedBackoff):
    """The same exponential backoff without the jitter: every device waits exactly
    min(cap, base·2^n). Only for comparison: it is what makes a storm."""

    @property
    def synchronized(self) -> bool:
        return True


@dataclass
class FleetDevice:
    device_id: str
    key: Any
    fingerprint: str = ""
    online_at: list[float] = field(default_factory=list)
    attempts_at: list[float] = field(default_factory=list)
    client: SignalingClient | None = None

    def authenticate(self, challenge: AuthChallenge) -> Message:
        return AuthDevice(
            device_id=self.device_id,
            signature=identity.sign_challenge(
                self.key,
                nonce_b64=challenge.nonce,
                device_id=self.device_id,
                server_fingerprint=self.fingerprint,
            ),
        )

    def on_state(self, state: LinkState) -> None:
        if state is LinkState.ONLINE:
            self.online_at.append(time.monotonic())
        elif state is LinkState.CONNECTING:
            self.attempts_at.append(time.monotonic())


async def _ignore(message: Message) -> None:
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]


async def _until(predicate: Any, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def storm(
    devices: int = DEVICES, *, backoff: Backoff | None = None, folder: Path | None = None
) -> dict[str, Any]:
    """Connect ``devices`` devices, restart the server, measure their return."""
    if backoff is None:
        backoff = PlannedBackoff()
    planned = backoff.planned if isinstance(backoff, PlannedBackoff) else []
    raise_open_files_limit(devices * 4 + 1024)
    with tempfile.TemporaryDirectory(prefix="reconnect-") as scratch:
        base = folder or Path(scratch)
        server = ServerProcess(base / "server", grace_s=60.0, log=base / "server.log")
        fleet = await make_fleet(server)
        ids_keys = await bulk_devices(server, fleet.group, devices)
        await server.start()
        fleet_devices = [
            FleetDevice(device_id, key, server.fingerprint) for device_id, key in ids_keys
        ]
        try:
            started = time.monotonic()
            for device in fleet_devices:
                device.client = SignalingClient(
                    server.url,
                    server.fingerprint,
                    authenticate=device.authenticate,
                    on_message=_ignore,
                    on_state=device.on_state,
                    backoff=backoff,
                )
                device.client.start()
            await _until(
                lambda: all(d.online_at for d in fleet_devices),
                CONNECT_DEADLINE_S,
                "the fleet did not connect",
            )
            connected_s = time.monotonic() - started

            killed_at = await server.kill()
            ready_at = await server.start()
            await _until(
                lambda: all(d.online_at and d.online_at[-1] > killed_at for d in fleet_devices),
                RETURN_DEADLINE_S,
                "the fleet did not come back",
            )
            back = [next(t for t in d.online_at if t > killed_at) for d in fleet_devices]
        finally:
            await asyncio.gather(
                *(d.client.close() for d in fleet_devices if d.client is not None),
                return_exceptions=True,
            )
            await server.stop()
    after_ready = [max(0.0, t - ready_at) for t in back]
    # A device may be back a moment before the ready file (the server listens, then
    # freezes its start-up and writes the file): it counts in the first bucket, as
    # its time counts as 0 above.
    buckets = Counter(max(0, int((t - ready_at) // BUCKET_S)) for t in back)
    # Connection attempts once the new server listened: the load the fleet offers it.
    tried = Counter(
        int((t - ready_at) // BUCKET_S)
        for d in fleet_devices
        for t in d.attempts_at
        if ready_at <= t <= max(back)
    )
    planned_buckets = Counter(
        int((t - ready_at) // BUCKET_S) for t in planned if ready_at <= t <= max(back)
    )
    spread_s = max(back) - min(back)
    return {
        "backoff": "no jitter" if isinstance(backoff, SynchronizedBackoff) else "full jitter",
        "devices": devices,
        "returned": len(back),
        "initial_connect_s": round(connected_s, 2),
        "restart_s": round(ready_at - killed_at, 2),
        "reconnect_p50_s": round(statistics.median(after_ready), 2),
        "reconnect_p95_s": round(_percentile(after_ready, 0.95), 2),
        "reconnect_max_s": round(max(after_ready), 2),
        "back_p95_after_kill_s": round(_percentile([t - killed_at for t in back], 0.95), 2),
        "spread_s": round(spread_s, 2),
        "peak_per_100ms": max(buckets.values()),
        "mean_per_100ms": round(devices / max(1, len(buckets)), 1),
        "peak_per_s": max(
            Counter(int((t - ready_at) // 1.0) for t in back).values(),
        ),
        "peak_attempts_per_100ms": max(tried.values()),
        "peak_planned_per_100ms": max(planned_buckets.values(), default=0),
        "histogram_per_100ms": [buckets.get(i, 0) for i in range(max(buckets) + 1)],
        "attempts_per_100ms": [tried.get(i, 0) for i in range(max(tried) + 1)],
    }


def rows(jitter: dict[str, Any], synchronized: dict[str, Any] | None) -> list[dict[str, object]]:
    n = int(jitter["devices"])
    fault = f"server restart, {n:,} devices connected"
    found = [
        {
            "fault": fault,
            "measure": "reconnect time after the restart, p50",
            "value": jitter["reconnect_p50_s"],
            "unit": "s",
            "target": "< 10 s",
            "ok": jitter["reconnect_p50_s"] < 10,
        },
        {
            "fault": fault,
            "measure": "reconnect time after the restart, p95",
            "value": jitter["reconnect_p95_s"],
            "unit": "s",
            "target": "< 30 s (the backoff's cap)",
            "ok": jitter["reconnect_p95_s"] < 30,
        },
        {
            "fault": fault,
            "measure": "reconnect time after the restart, max",
            "value": jitter["reconnect_max_s"],
            "unit": "s",
            "target": "every device back, < 60 s (the grace period)",
            "ok": jitter["reconnect_max_s"] < 60,
        },
    ]
    if synchronized is None:
        return found
    return [
        *found,
        {
            "fault": fault,
            "measure": "peak reconnect attempts planned in 100 ms, full jitter",
            "value": jitter["peak_planned_per_100ms"],
            "unit": "attempts",
            "target": (
                f"< 1/2 of the wave without jitter ({synchronized['peak_planned_per_100ms']})"
            ),
            "ok": 2 * jitter["peak_planned_per_100ms"] < synchronized["peak_planned_per_100ms"],
        },
        {
            "fault": fault,
            "measure": "peak reconnect attempts made in 100 ms, full jitter",
            "value": jitter["peak_attempts_per_100ms"],
            "unit": "attempts",
            "target": f"< the wave without jitter ({synchronized['peak_attempts_per_100ms']})",
            "ok": jitter["peak_attempts_per_100ms"] < synchronized["peak_attempts_per_100ms"],
        },
        {
            "fault": fault,
            "measure": "peak connects completed in 100 ms, full jitter",
            "value": jitter["peak_per_100ms"],
            "unit": "devices",
            "target": (
                f"< 1/4 of the fleet, not one wave ({n // 4}; "
                f"without jitter: {synchronized['peak_per_100ms']})"
            ),
            "ok": jitter["peak_per_100ms"] < n / 4,
        },
    ]


async def measure() -> list[dict[str, object]]:
    jitter = await storm(DEVICES)
    synchronized = await storm(DEVICES, backoff=SynchronizedBackoff())
    return rows(jitter, synchronized)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.faults.reconnect", description=__doc__)
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--no-compare", action="store_true", help="skip the run without jitter")
    args = parser.parse_args(argv)
    jitter = asyncio.run(storm(args.devices))
    synchronized = (
        None if args.no_compare else asyncio.run(storm(args.devices, backoff=SynchronizedBackoff()))
    )
    for row in rows(jitter, synchronized):
        print(f"{row['measure']:<52} {row['value']:>8} {row['unit']:<9} {row['target']}")
    for result in (jitter, synchronized):
        if result is not None:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
