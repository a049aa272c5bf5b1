"""The load tester on a small fleet: 200 simulated devices in 2 worker processes, 3
consoles, a real server process. Checks that every step ran and produced its
figure; no timing is asserted (``python -m bench.load`` measures 18,000)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import run


@pytest.mark.timeout(300)
async def test_the_load_tester_runs_every_step_and_reports_every_figure(tmp_path: Path) -> None:
    results = await run.measure(
        run.Run(devices=200, device_processes=2, consoles=3, probes=10, folder=tmp_path)
    )

    assert results["connected"] == results["held_by_server"] == 200
    assert results["probe_arrivals"] == results["probe_arrivals_expected"] == 10 * 3
    assert results["notify_received"] == results["notify_group"] > 0
    assert results["reconnected"] == 200
    assert results["client_errors"] == 0, results["client_error_examples"]
    assert results["server_errors"] == 0
    for figure in (
        "kib_per_connection",
        "connect_rate_per_s",
        "propagation_p50_ms",
        "propagation_p99_ms",
        "notify_s",
        "reconnect_s",
        "memory_back_ratio",
        "server_cpu_ms_per_connect",
        "clients_cpu_ms_per_connect",
        "server_cpu_ms_per_reconnect",
    ):
        assert isinstance(results[figure], float | int), figure
    results["floor"] = await run.floor(tmp_path, 40, fleet=200, processes=2)
    assert results["floor"]["devices"] == 40
    assert results["floor"]["connect_devices"] == 200
    assert results["floor"]["connect_failed"] == 0, results["floor"]["connect_failures"]
    for figure in (
        "kib_per_connection",
        "cpu_ms_per_connect",
        "tls_kib_per_connection",
        "connect_s",
        "connect_server_cpu_ms",
        "connect_clients_cpu_ms",
    ):
        assert isinstance(results["floor"][figure], float | int), figure
    table = run.table(results)
    for name, *_ in run.rows(results):
        assert name in table
