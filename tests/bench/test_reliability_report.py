"""The reliability report's script: which modules it runs, how it checks and shows their
rows, and that the committed report still answers what issue 6 asks of it."""

from __future__ import annotations

from pathlib import Path

from bench import reliability


def row(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "fault": "server restart",
        "measure": "reconnect p95",
        "value": 1.5,
        "unit": "s",
        "target": "< 10 s",
        "ok": True,
    }
    return base | overrides


def test_every_fault_module_with_a_measure_is_run() -> None:
    modules = reliability.fault_modules()
    assert {"attacks", "reconnect", "restart", "path_loss", "trust"} <= set(modules)
    assert not any(name.startswith("_") for name in modules)


def test_rows_are_checked_and_a_bad_module_is_a_failed_row() -> None:
    assert reliability.checked_rows("x", [row()])[0]["module"] == "x"
    for bad in ([], None, [{"fault": "only"}], ["text"]):
        (failed,) = reliability.checked_rows("x", bad)
        assert failed["ok"] is False
        assert failed["value"] == "failed"


def test_the_table_shows_each_figure_beside_its_target() -> None:
    rows = reliability.checked_rows(
        "restart",
        [row(), row(measure="a | pipe", value=0, ok=False), row(value=12345.0, unit="")],
    )
    rows.append(reliability.failed("turn", "exit 1: no turnserver"))
    text = reliability.render(rows, {"restart": 12.0}, "2 CPUs", "now")
    assert "| server restart | reconnect p95 | 1.5 s | < 10 s | yes |" in text
    assert "a \\| pipe" in text
    assert "| **no** |" in text
    assert "12,345" in text
    assert "2 of 4 figures within their target" in text
    assert "`turn`: exit 1: no turnserver" in text


def test_the_committed_report_answers_the_issue() -> None:
    """docs/reliability.md is generated; this checks a generated one is committed and
    holds the figures issue 6 names (not their values, which are measurements)."""
    text = (Path(reliability.ROOT) / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert text.startswith("# Reliability report")
    lowered = text.lower()
    for needed in ("p50", "p95", "1,000", "gap", "path", "fuzz cases run", "crashes"):
        assert needed in lowered, needed
