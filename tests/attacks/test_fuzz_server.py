"""Fuzzing the real server over real websockets (tests/attacks/fuzzing.py): hypothesis
frames from an authenticated device, an authenticated technician and an
unauthenticated connection. No case may crash the server: each is answered by a
typed ``error`` or a documented close, ``/api/v1/health`` keeps answering and a
bystander device's status keeps reaching the console watching it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.attacks.fuzzing import Tally, fuzz_server

#: Examples per target (the bench runs more): the whole file stays well under a minute.
EXAMPLES = 80


async def test_fuzzed_frames_never_crash_the_server_nor_disturb_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tallies, fanouts = await fuzz_server(tmp_path, EXAMPLES)

    cases = sum(t.cases for t in tallies)
    with capsys.disabled():
        for tally in tallies:
            print(f"\n  {tally.target}: {tally.cases} cases, {_summary(tally)}", end="")
        print(f"\n  fuzz cases run: {cases}, crashes: {sum(t.crashes for t in tallies)}")
    for tally in tallies:
        assert tally.crashes == 0, (tally.target, tally.failures[:5])
        # Every case was judged: rejected with a type, or still valid after mutation.
        assert tally.rejections + tally.accepted == tally.cases, tally
        assert tally.cases > 0
    # The bystander's change reached the console after every single case.
    assert fanouts == cases
    by_name = {t.target: t for t in tallies}
    # Garbage is refused, not accepted: raw frames never pass.
    for name in ("device: raw frames", "technician: raw frames"):
        assert by_name[name].accepted == 0, by_name[name]
    # Oversized frames close the sender's connection with 1009, nothing else.
    assert set(by_name["oversized frames"].codes) == {"close 1009"}
    # Most mutations are refused with a field- or frame-level code.
    mutated = by_name["device: mutated messages"]
    assert mutated.typed_errors > mutated.accepted


def _summary(tally: Tally) -> str:
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(tally.codes.items()))
    return f"{tally.accepted} still valid, rejected: {codes}; crashes: {tally.crashes}"
