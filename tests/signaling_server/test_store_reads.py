"""The store's small reads by key on a SQLite file run on the event loop's thread
(``Store._read``): they see every commit at once, and a read the database would make
wait goes the asynchronous way instead of stalling the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.faults._restartable import insert_devices
from protocol.enums import NotificationState
from signaling_server.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    yield opened
    await opened.close()


async def one_device(store: Store) -> str:
    group = await store.create_group("Fleet")
    [(device_id, _key)] = await insert_devices(store, group, 1)
    return device_id


async def test_a_file_reads_on_the_loop_and_sees_each_commit_at_once(store: Store) -> None:
    assert store.loop_reads is not None
    with store.loop_reads.connect() as conn:
        # Never waits (on the loop, a wait would stall every connection) and never writes.
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 0
        assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
    device_id = await one_device(store)
    before = await store.device(device_id)
    assert before is not None
    assert before.name == "Fleet 0000"
    assert await store.pending_notifications(device_id) == []

    # Written through the asynchronous engine (its own connection, in its thread):
    # the loop's next read sees it, with no stale snapshot held between reads.
    renamed = store.reported(
        before,
        service_installed=True,
        service_enabled=True,
        chat_services=(),
        name="Renamed",
        model="Tablet",
        os="Android",
    )
    await store.write_batch([], {}, [renamed])
    after = await store.device(device_id)
    assert after is not None
    assert after.name == "Renamed"
    note = await store.create_notification(
        technician_id="tech-1",
        sender_name="Tech",
        title="Hello",
        body="Body",
        ttl_s=3600,
        device_ids=[device_id],
    )
    assert [n.id for n in await store.pending_notifications(device_id)] == [note.id]
    found = await store.notification_target(note.id, device_id)
    assert found is not None
    assert (found[0].title, found[1].state) == ("Hello", NotificationState.SENT.value)
    assert await store.device("dev-nobody") is None
    assert await store.notification_target(note.id, "dev-nobody") is None


async def test_a_read_the_database_would_hold_goes_to_the_thread_not_the_loop(
    store: Store, tmp_path: Path
) -> None:
    device_id = await one_device(store)
    await store.drop_pooled()  # no connection open: the lock below is taken first
    # Another process's connection holding the file exclusively: any reader must wait.
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE devices SET name = 'Held' WHERE id = ?", (device_id,))
    try:
        read = asyncio.create_task(store.device(device_id))
        # The loop goes on while the read waits (on the loop, it would have raised
        # "database is locked" or blocked this very loop until its timeout).
        for _ in range(5):
            await asyncio.sleep(0.02)
        assert not read.done()
    finally:
        holder.execute("COMMIT")
        holder.execute("PRAGMA locking_mode=NORMAL")
        holder.execute("SELECT 1 FROM devices").fetchall()  # gives the lock up
        holder.close()
    device = await asyncio.wait_for(read, 30)
    assert device is not None
    assert device.name == "Held"
