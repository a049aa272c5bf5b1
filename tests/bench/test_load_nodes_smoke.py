"""The load tester's three-node step on a small fleet: a real redis-server and
PostgreSQL, three real nodes, 60 simulated devices and 3 consoles (one on each node)
in worker processes. Every probe must reach every console, the two on the nodes
that do not hold the probe devices through Redis; no timing is asserted
(``python -m bench.load`` measures 3,000 devices and 50 consoles)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.load import nodes, run


def children() -> set[int]:
    """This process's children: nothing the step started may outlive it, except
    multiprocessing's resource tracker (one per interpreter, started with the first
    worker and kept until the interpreter exits)."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"multiprocessing.resource_tracker" not in command:
                found.add(int(pid))
    return found


@pytest.mark.timeout(300)
async def test_the_three_node_step_brings_every_probe_to_every_console(tmp_path: Path) -> None:
    before = children()
    results = await nodes.measure(
        run.Run(devices=60, device_processes=nodes.NODES, consoles=3, probes=10, folder=tmp_path)
    )

    assert results["devices_per_node"] == [20, 20, 20]
    assert results["consoles_per_node"] == [1, 1, 1]
    assert results["connected"] == 60
    assert results["held_by_nodes"] == [20, 20, 20]
    assert results["probe_arrivals"] == results["probe_arrivals_expected"] == 10 * 3
    assert results["client_errors"] == 0, results["client_error_examples"]
    assert results["server_errors"] == 0
    for figure in ("propagation_p50_ms", "propagation_p99_ms", "other_nodes_p99_ms"):
        assert isinstance(results[figure], float | int), figure
    # The load tester's table shows the step's rows beside the one-node step's.
    table = run.table({"devices": 0, "consoles": 0, "nodes": results})
    for name, *_ in run.nodes_rows(results):
        assert name in table
    assert children() <= before
