"""The hub-only notification benchmark on a small group: every device's delivery is
acknowledged and told to the console, in fewer write transactions than
acknowledgements. No timing is asserted (``python -m bench.notify_fanout`` measures
10,000)."""

from __future__ import annotations

from pathlib import Path

from bench import notify_fanout


async def test_every_acknowledgement_reaches_the_console_in_few_writes(tmp_path: Path) -> None:
    results = await notify_fanout.measure(300, tmp_path)

    assert results["devices"] == 300
    assert 1 <= results["write_transactions"] < 300
    for figure in ("send_handled_s", "last_delivery_s", "all_acks_told_to_console_s"):
        assert results[figure] > 0
