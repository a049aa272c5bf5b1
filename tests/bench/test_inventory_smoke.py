"""The inventory benchmark's own code, end to end, with 200 devices (50 online): the
lab process (real server, SQLite store, device websockets), the real console window
on a qasync loop, the table and the JSON.

Only that it runs, that every figure is there and that every row arrived are checked;
no timing is asserted (this machine's figures mean nothing in a test).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import inventory
from tech_console.ui.inventory import Column

DEVICES = 200
LIVE = 50


def test_the_benchmark_runs_and_reports_every_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    out = tmp_path / "inventory.json"
    bench = inventory.run(DEVICES, LIVE, loads=1)
    rows = inventory.report(bench, out)

    data = json.loads(out.read_text())
    figures = data["figures"]
    assert set(figures) == set(inventory.FIGURES)
    for name in inventory.FIGURES:
        assert figures[name]["measured"] is not None, name
        assert figures[name]["result"] in (None, "PASS", "FAIL"), name
    # Every row arrived: in the window's table and in the client alone.
    assert figures["load_rows"]["measured"] == DEVICES
    assert figures["load_rows"]["floor"] == DEVICES
    assert [load["rows_shown"] for load in data["loads"]] == [DEVICES]
    assert data["loads"][0]["rows_model"] == DEVICES
    # After each filter and sort step the table showed what plain Python keeps.
    steps = data["steps"]
    assert {step["kind"] for step in steps} == {"filter", "sort"}
    assert all(step["shows_right_rows"] for step in steps), [
        step["label"] for step in steps if not step["shows_right_rows"]
    ]
    assert len([s for s in steps if s["kind"] == "sort"]) == len(Column)
    # Both kinds of burst, both sort orders, and their floors; every change shown.
    bursts = [(b["source"], b["sort"], b["changes"]) for b in data["bursts"]]
    assert bursts == [
        ("server", "sorted by name", LIVE),
        ("server", "sorted by status", LIVE),
        ("direct", "sorted by name", LIVE),
        ("direct", "sorted by status", LIVE),
    ]
    assert [b["source"] for b in data["burst_floors"]] == ["server", "direct"]
    assert data["lab"]["bulk_inserted"] + data["lab"]["enrolled_via_tokens"] == DEVICES
    # The table printed has a row per figure group and a verdict.
    assert len(data["table"]) == len(rows)
    printed = capsys.readouterr().out
    assert "figure" in printed
    assert "written:" in printed
