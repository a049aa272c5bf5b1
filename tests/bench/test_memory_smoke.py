"""The memory harness (bench/memory_per_connection.py) on a small fleet: the TLS floor
and our server, each in a process of its own with its clients in another. Checks that
every connection was held and every figure was produced; no figure is asserted
(``python -m bench.memory_per_connection --devices 2000`` measures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import memory_per_connection as bench


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layer", ["tls", "server"])
async def test_the_memory_harness_holds_every_connection_and_reports(
    tmp_path: Path, layer: str
) -> None:
    result = await bench.measure(layer, 40, trace=False, folder=tmp_path, watch_s=0.0)

    assert result["online"] == 40
    for figure in ("rss", "c_in_use", "py_blocks", "py_arenas", "cpu_ms"):
        assert isinstance(result["per_connection"][figure], float), figure
    assert result["full"]["rss"] > result["start"]["rss"]
    report = bench.report(result)
    assert f"== {layer}: 40 connections" in report
    assert "after malloc_trim" in report
