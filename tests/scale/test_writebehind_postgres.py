"""The notification bulk insert and the write-behind's batches on a real PostgreSQL
(asyncpg): the same statements as on SQLite (tests/signaling_server/test_writebehind.py),
another dialect's executemany."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from protocol import identity
from protocol.enums import NotificationState
from signaling_server.store import NotificationTargetRow, Store
from signaling_server.writebehind import WriteBehind

#: Longer than the test: only flush() writes.
NEVER_S = 3600.0


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    import asyncpg  # type: ignore[import-untyped]

    name = "writebehind"
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    opened = await Store.open(postgres_url.rsplit("/", 1)[0] + f"/{name}")
    yield opened
    await opened.close()


async def test_bulk_targets_and_batched_progress_and_last_seen_on_postgres(store: Store) -> None:
    group = await store.create_group("Tablets")
    token = await store.issue_enrolment_token(group.id, created_by="test", ttl_s=600)
    device = await store.enrol_device(
        token,
        public_key=identity.public_key_b64(identity.generate_key()),
        name="Tablet",
        model="M",
        os="OS",
    )
    device_ids = [device.id, *(f"dev-{i:05}" for i in range(4999))]
    note = await store.create_notification(
        technician_id="tech-1",
        sender_name="Tech",
        title="Hello",
        body="Body",
        ttl_s=3600,
        device_ids=device_ids,
    )

    writes = WriteBehind(store, interval_s=NEVER_S, batch_max=10_000)
    for device_id in device_ids:
        await writes.note_progress(note.id, device_id, NotificationState.DELIVERED, 10)
    await writes.note_progress(note.id, "dev-00001", NotificationState.ANSWERED, 11, "Yes")
    writes.touch(device.id, 2**41)
    await writes.flush()
    assert writes.stats["transactions"] == 1
    # A later batch with a lower state and an older last-seen time moves nothing back.
    await writes.note_progress(note.id, "dev-00001", NotificationState.DELIVERED, 12)
    writes.touch(device.id, 5)
    await writes.flush()

    query = select(
        NotificationTargetRow.device_id, NotificationTargetRow.state, NotificationTargetRow.answer
    ).where(NotificationTargetRow.notification_id == note.id)
    async with store.tx() as db:
        stored = {d: (s, a) for d, s, a in (await db.execute(query)).all()}
    assert len(stored) == 5000
    assert stored.pop("dev-00001") == ("answered", "Yes")
    assert set(stored.values()) == {("delivered", None)}
    found = await store.device(device.id)
    assert found is not None
    assert found.last_seen_ms == 2**41
