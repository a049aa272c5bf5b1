"""The reconnect storm on a small fleet: 50 devices (each the product's signaling
client with its real backoff) connected to a real server process, the server killed
with SIGKILL and started again on the same port: every device comes back. No timing
is asserted; bench.faults.reconnect measures it with 1,000 devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import reconnect


@pytest.mark.timeout(180)
async def test_every_device_comes_back_after_a_server_restart(tmp_path: Path) -> None:
    result = await reconnect.storm(50, folder=tmp_path)

    assert result["returned"] == 50
    assert sum(result["histogram_per_100ms"]) == 50
    rows = reconnect.rows(result, None)
    assert [row["measure"] for row in rows] == [
        "reconnect time after the restart, p50",
        "reconnect time after the restart, p95",
        "reconnect time after the restart, max",
    ]


def test_the_comparison_backoff_has_no_jitter_and_the_product_one_has() -> None:
    synchronized = reconnect.SynchronizedBackoff()
    assert [synchronized.delay(n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert len(synchronized.planned) == 4
    jittered = reconnect.PlannedBackoff()
    delays = [jittered.delay(3) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 150  # spread, not one value
