"""Attacks refused: the server fuzzer of ``tests/attacks/fuzzing.py`` run with a fixed,
larger example count (and Hypothesis derandomized, so a run is repeatable) for the
reliability report.

Run (from the project root)::

    .venv/bin/python -m bench.faults.attacks            # 250 examples per target
    .venv/bin/python -m bench.faults.attacks --examples 60

What is real: the server (``RunningServer``: aiohttp, TLS, SQLite) on loopback, its
websocket, and every sender (an authenticated device, an authenticated technician,
an unauthenticated connection) speaking over real websockets; a bystander device and
the console watching it; ``/api/v1/health``. Nothing is mocked.

Measured per target (kind of sender and frame): the fuzz cases run, the crashes
(an ``internal`` error, an undocumented close, no answer, an undecodable reply, an
unhealthy server or a bystander that stopped hearing), and the share of refused
cases refused with a type (an ``error`` frame with its code, or a documented close
code). And over the whole run: the share of cases after which the bystander's status
change still reached its console.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from tests.attacks.fuzzing import Tally, fuzz_server

#: Examples per target: about a thousand cases in all, well under two minutes.
EXAMPLES = 250
SEED = 6


def _rows(tallies: list[Tally], fanouts: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for tally in tallies:
        refused = tally.cases - tally.accepted
        typed = 100.0 * tally.rejections / refused if refused else 100.0
        rows += [
            {
                "fault": f"fuzz: {tally.target}",
                "measure": "fuzz cases run",
                "value": tally.cases,
                "unit": "cases",
                "target": "> 0",
                "ok": tally.cases > 0,
            },
            {
                "fault": f"fuzz: {tally.target}",
                "measure": "crashes",
                "value": tally.crashes,
                "unit": "crashes",
                "target": "0",
                "ok": tally.crashes == 0,
            },
            {
                "fault": f"fuzz: {tally.target}",
                "measure": "rejections with a typed error or documented close",
                "value": round(typed, 1),
                "unit": "%",
                "target": "100",
                "ok": typed == 100.0,
            },
        ]
    cases = sum(t.cases for t in tallies)
    crashes = sum(t.crashes for t in tallies)
    heard = 100.0 * fanouts / cases if cases else 0.0
    rows += [
        {
            "fault": "fuzz: all targets",
            "measure": "fuzz cases run",
            "value": cases,
            "unit": "cases",
            "target": "> 0",
            "ok": cases > 0,
        },
        {
            "fault": "fuzz: all targets",
            "measure": "crashes",
            "value": crashes,
            "unit": "crashes",
            "target": "0",
            "ok": crashes == 0,
        },
        {
            "fault": "fuzz: all targets",
            "measure": "bystander's status fan-out heard after each case",
            "value": round(heard, 1),
            "unit": "%",
            "target": "100",
            "ok": heard == 100.0,
        },
    ]
    return rows


async def measure(examples: int = EXAMPLES) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as folder:
        tallies, fanouts = await fuzz_server(Path(folder), examples, seed=SEED)
    return _rows(tallies, fanouts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=EXAMPLES)
    args = parser.parse_args()
    for row in asyncio.run(measure(args.examples)):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
