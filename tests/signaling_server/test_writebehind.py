"""Notification progress and last-seen times written behind, in batches
(signaling_server/writebehind.py): against a real SQLite store, and through a real
server for what devices and consoles see."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from bench.faults._restartable import insert_devices
from protocol.enums import DeviceAck, NotificationState
from protocol.messages import (
    NotifyAck,
    NotifyAnswer,
    NotifyDeliver,
    NotifySend,
    NotifySent,
    NotifyUpdate,
)
from signaling_server.store import DeviceRow, NotificationTargetRow, Store
from signaling_server.writebehind import OnWritten, WriteBehind
from tests.conftest import Lab, lab_config, open_lab
from tests.integration.harness import until
from tests.signaling_server.wire import clients, enrol, hub_of

#: Longer than any test: nothing is flushed by the timer, only by flush() or a full batch.
NEVER_S = 3600.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    yield opened
    await opened.close()


async def states(store: Store, notification_id: str) -> dict[str, tuple[str, str | None]]:
    query = select(
        NotificationTargetRow.device_id, NotificationTargetRow.state, NotificationTargetRow.answer
    ).where(NotificationTargetRow.notification_id == notification_id)
    async with store.tx() as db:
        return {d: (s, a) for d, s, a in (await db.execute(query)).all()}


async def notify(store: Store, device_ids: list[str]) -> str:
    row = await store.create_notification(
        technician_id="tech-1",
        sender_name="Tech",
        title="Hello",
        body="Body",
        ttl_s=3600,
        device_ids=device_ids,
    )
    return row.id


async def test_targets_are_stored_in_bulk_and_many_acks_are_one_transaction(
    store: Store,
) -> None:
    device_ids = [f"dev-{i:05}" for i in range(3000)]
    note = await notify(store, device_ids)
    assert set((await states(store, note)).values()) == {("sent", None)}

    writes = WriteBehind(store, interval_s=NEVER_S, batch_max=10_000)
    for device_id in device_ids:
        await writes.note_progress(note, device_id, NotificationState.DELIVERED, 1)
    # Coalesced in memory: a later, higher state replaces a pending one; a late lower
    # one (``delivered`` after ``read``) does not undo it.
    await writes.note_progress(note, "dev-00001", NotificationState.READ, 2)
    await writes.note_progress(note, "dev-00001", NotificationState.DELIVERED, 3)
    assert writes.pending_progress(note, "dev-00001") == (NotificationState.READ, None)
    assert writes.pending == 3000
    assert set((await states(store, note)).values()) == {("sent", None)}  # not yet

    await writes.flush()
    assert writes.stats["transactions"] == 1
    assert writes.stats["items"] == 3000
    assert writes.pending == 0
    stored = await states(store, note)
    assert stored.pop("dev-00001") == ("read", None)
    assert set(stored.values()) == {("delivered", None)}


async def test_a_batch_never_moves_a_stored_state_back(store: Store) -> None:
    note = await notify(store, ["dev-a", "dev-b"])
    writes = WriteBehind(store, interval_s=NEVER_S)
    await writes.note_progress(note, "dev-a", NotificationState.ANSWERED, 5, "Yes")
    await writes.flush()
    # Another writer (another node's batch, an older one) lands after it.
    await writes.note_progress(note, "dev-a", NotificationState.DELIVERED, 6)
    await writes.note_progress(note, "dev-b", NotificationState.READ, 6)
    await writes.flush()
    assert await states(store, note) == {"dev-a": ("answered", "Yes"), "dev-b": ("read", None)}
    assert writes.stats["transactions"] == 2


async def test_a_durable_write_is_stored_when_it_returns(store: Store) -> None:
    note = await notify(store, ["dev-a"])
    writes = WriteBehind(store, interval_s=0.05)
    await writes.note_progress(
        note, "dev-a", NotificationState.ANSWERED, 7, "Done,\nit is docked.", durable=True
    )
    assert await states(store, note) == {"dev-a": ("answered", "Done,\nit is docked.")}
    assert writes.pending == 0


async def test_a_store_error_in_a_batch_loses_only_the_failing_item(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    note = await notify(store, ["dev-a", "dev-bad", "dev-c"])
    # A real refusal by the database for one row of the batch.
    async with store.tx() as db:
        await db.execute(
            text(
                "CREATE TRIGGER refuse_bad BEFORE UPDATE ON notification_targets "
                "WHEN NEW.device_id = 'dev-bad' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    # The three go into one batch: the durable one waits for it, the timer writes it.
    told: list[str] = []

    def teller(device_id: str) -> OnWritten:
        async def tell() -> None:
            told.append(device_id)

        return tell

    writes = WriteBehind(store, interval_s=0.05)
    for device_id, state in (
        ("dev-a", NotificationState.DELIVERED),
        ("dev-c", NotificationState.READ),
    ):
        await writes.note_progress(note, device_id, state, 1, on_written=teller(device_id))
    caplog.set_level(logging.ERROR, logger="signaling_server.writebehind")
    with pytest.raises(Exception, match="refused"):
        await writes.note_progress(
            note,
            "dev-bad",
            NotificationState.ANSWERED,
            1,
            "text",
            durable=True,
            on_written=teller("dev-bad"),
        )
    assert told == ["dev-a", "dev-c"]  # what failed is not told as done
    assert await states(store, note) == {
        "dev-a": ("delivered", None),
        "dev-bad": ("sent", None),
        "dev-c": ("read", None),
    }
    assert writes.stats["failed_items"] == 1
    assert writes.pending == 0
    failures = [r.getMessage() for r in caplog.records if "store write failed" in r.getMessage()]
    assert len(failures) == 2  # the batch, then the one item that failed alone
    assert "dev-bad" in failures[1]
    assert "text" not in failures[1]  # ids, never the answer


async def test_memory_is_bounded_writers_wait_for_a_flush(store: Store) -> None:
    device_ids = [f"dev-{i}" for i in range(50)]
    note = await notify(store, device_ids)
    writes = WriteBehind(store, interval_s=NEVER_S, batch_max=10, pending_max=10)
    for device_id in device_ids:
        await writes.note_progress(note, device_id, NotificationState.DELIVERED, 1)
        assert writes.pending <= 10
    await writes.flush()
    assert set((await states(store, note)).values()) == {("delivered", None)}
    assert writes.stats["transactions"] == 5


async def test_many_acks_are_one_write_and_the_console_hears_of_them_once_stored(
    lab: Lab,
) -> None:
    hub = hub_of(lab.server)
    hub.writes.interval_s = NEVER_S  # only a full batch or flush() writes
    async with clients(lab) as c:
        devices = [await enrol(lab, name=f"Tablet {i}") for i in range(20)]
        wires = [await c.device(d) for d in devices]
        console = await c.console("tech")
        sent = await console.ok(NotifySend(group_id=lab.tablets.id, title="T", body="B"))
        assert isinstance(sent, NotifySent)
        note = sent.notification_id
        for wire in wires:
            await wire.expect(NotifyDeliver)
            # The device's ``ok`` does not wait for the write.
            await wire.ok(NotifyAck(notification_id=note, state=DeviceAck.DELIVERED))
        assert hub.writes.pending == len(devices)
        # Not stored yet, so not told: what a console saw survives a crash.
        await console.round_trip()
        assert not console.pending(NotifyUpdate)
        assert set((await states(lab.store, note)).values()) == {("sent", None)}

        before = hub.writes.stats["transactions"]
        await hub.writes.flush()
        assert hub.writes.stats["transactions"] == before + 1
        assert set((await states(lab.store, note)).values()) == {("delivered", None)}
        updates = [await console.expect(NotifyUpdate) for _ in devices]
        assert {(u.device_id, u.state) for u in updates} == {
            (d.device_id, NotificationState.DELIVERED) for d in devices
        }

        # What the user did is stored before the ``ok`` (the agent drops it then): the
        # timer's flush, not the test's.
        hub.writes.interval_s = 0.05
        await wires[0].ok(NotifyAnswer(notification_id=note, text="Yes"))
        assert (await states(lab.store, note))[devices[0].device_id] == ("answered", "Yes")
        answered = await console.expect(NotifyUpdate)
        assert (answered.device_id, answered.state, answered.answer) == (
            devices[0].device_id,
            NotificationState.ANSWERED,
            "Yes",
        )


async def test_last_seen_times_are_written_behind_and_flushed_at_shutdown(
    tmp_path: Path,
) -> None:
    async with open_lab(tmp_path) as lab:
        hub = hub_of(lab.server)
        hub.writes.interval_s = NEVER_S
        async with clients(lab) as c:
            device = await enrol(lab)
            wire = await c.device(device)
            async with lab.store.tx() as db:  # older than anything the server writes
                await db.execute(
                    update(DeviceRow).where(DeviceRow.id == device.device_id).values(last_seen_ms=1)
                )
            await wire.close()
            await until(lambda: hub.writes.pending == 1)
            found = await lab.store.device(device.device_id)
            assert found is not None
            assert found.last_seen_ms == 1  # behind, until shutdown
    # The server stopped: its shutdown flushed before the store closed.
    reopened = await Store.open(lab_config(tmp_path).database_url)
    try:
        found = await reopened.device(device.device_id)
        assert found is not None
        assert found.last_seen_ms is not None
        assert found.last_seen_ms > 1
    finally:
        await reopened.close()


async def test_status_reports_are_a_group_commit_each_caller_back_after_its_own(
    store: Store,
) -> None:
    """Reports are written at once (not after the interval, here never), those that
    arrive together in one transaction; a caller returns only once its report is
    stored."""
    group = await store.create_group("Fleet")
    ids = [device_id for device_id, _ in await insert_devices(store, group, 50)]
    reported = []
    for i, device_id in enumerate(ids):
        device = await store.device(device_id)
        assert device is not None
        reported.append(
            store.reported(
                device,
                service_installed=True,
                service_enabled=True,
                chat_services=(),
                name=f"Reported {i}",
                model="Tablet",
                os="Android",
            )
        )
    writes = WriteBehind(store, interval_s=NEVER_S, batch_max=10_000)
    await asyncio.wait_for(asyncio.gather(*(writes.write_report(d) for d in reported)), 10)
    # All 50 were queued before the flusher's first turn: one transaction.
    assert writes.stats["transactions"] == 1
    assert writes.stats["items"] == 50
    names = {d.id: d.name for d in await store.devices()}
    assert names == {d.id: d.name for d in reported}


async def test_a_fleet_leaving_at_once_is_written_in_batches_and_leaves_no_grown_table(
    store: Store,
) -> None:
    """18,000 devices leaving at once leave 18,000 last-seen times: written in batches,
    oldest first, every one of them; then the pending table is a small one again (a
    dict keeps the table it grew to when its entries are deleted one by one)."""
    group = await store.create_group("Fleet")
    ids = [device_id for device_id, _ in await insert_devices(store, group, 2_500)]
    writes = WriteBehind(store, interval_s=NEVER_S, batch_max=1_000)
    empty_table = sys.getsizeof({})
    for at_ms, device_id in enumerate(ids, 1_000):
        writes.touch(device_id, at_ms)
    await writes.flush()
    assert writes.pending == 0
    assert writes.stats["transactions"] == 3  # 1,000 + 1,000 + 500
    assert sys.getsizeof(writes._last_seen) == empty_table
    async with store.engine.connect() as conn:
        stored = dict((await conn.execute(select(DeviceRow.id, DeviceRow.last_seen_ms))).all())
    assert stored == {device_id: at_ms for at_ms, device_id in enumerate(ids, 1_000)}
