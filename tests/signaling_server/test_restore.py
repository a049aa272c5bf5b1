"""Open sessions outlive the server process: kept in the store, taken back at start-up
(``Hub.restore_sessions``), and taken up again by their members with
``session.attach``, which only the members may send.

These run the server in this process, stopped and started again on the same data
folder; tests/integration/test_recovery.py kills a server process with SIGKILL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from protocol.enums import CloseReason, Mode, Role, SdpType, SessionState
from protocol.errors import ErrorCode
from protocol.messages import (
    CallConnected,
    SessionAccept,
    SessionAttach,
    SessionClose,
    SessionStart,
    SessionUpdate,
    SignalSdp,
)
from signaling_server.config import ServerConfig
from signaling_server.server import RunningServer
from signaling_server.store import Group, Store
from tests.conftest import PASSWORD, lab_config
from tests.signaling_server.wire import (
    FINGERPRINT_A,
    FINGERPRINT_B,
    EnrolledDevice,
    Wire,
    clients,
    enrol,
    hub_of,
    sdp,
)


@dataclasses.dataclass
class Site:
    """One run of the server on the data folder (the wire helpers' ``Server``)."""

    server: RunningServer
    tablets: Group

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fingerprint(self) -> str:
        return self.server.fingerprint

    @property
    def store(self) -> Store:
        from signaling_server.app import STORE

        assert self.server.app is not None
        return self.server.app[STORE]


@asynccontextmanager
async def running(config: ServerConfig, tablets: Group) -> AsyncIterator[Site]:
    server = await RunningServer(config).start()
    try:
        yield Site(server, tablets)
    finally:
        await server.stop()


async def prepare(config: ServerConfig) -> Group:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.database_url)
    try:
        tablets = await store.create_group("Tablets")
        for username, role in (
            ("tech", Role.TECHNICIAN),
            ("other-tech", Role.TECHNICIAN),
            ("viewer", Role.VIEWER),
        ):
            await store.create_technician(
                username, PASSWORD, display_name=username.title(), role=role, groups=[tablets.id]
            )
    finally:
        await store.close()
    return tablets


async def call_in_progress(console: Wire, device_wire: Wire, device: EnrolledDevice) -> str:
    """A video session up to ``in_call``, with an offer and an answer exchanged."""
    update = await console.ok(
        SessionStart(device_id=device.device_id, mode=Mode.VIDEO, reason="Ticket #7")
    )
    assert isinstance(update, SessionUpdate)
    session_id = update.session_id
    await device_wire.ok(SessionAccept(session_id=session_id, mode=Mode.VOICE))
    await console.send(
        SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(FINGERPRINT_A))
    )
    await device_wire.expect(SignalSdp)
    await device_wire.send(
        SignalSdp(session_id=session_id, sdp_type=SdpType.ANSWER, sdp=sdp(FINGERPRINT_B))
    )
    await console.expect(SignalSdp)
    await console.ok(CallConnected(session_id=session_id))
    return session_id


async def test_an_open_session_is_taken_back_and_only_its_members_attach(
    tmp_path: Path,
) -> None:
    config = lab_config(tmp_path, grace_s=30.0)
    tablets = await prepare(config)
    async with running(config, tablets) as first, clients(first) as c:
        device, outsider = await enrol(first, name="Tablet"), await enrol(first, name="Other")
        session_id = await call_in_progress(await c.console("tech"), await c.device(device), device)
        before = hub_of(first.server).sessions[session_id]
        assert before.machine.state is SessionState.IN_CALL

    async with running(config, tablets) as second, clients(second) as c:
        restored = hub_of(second.server).sessions[session_id]
        assert restored.machine.state is SessionState.IN_CALL
        assert (restored.device_id, restored.technician.id) == (
            before.device_id,
            before.technician.id,
        )
        assert restored.mode is Mode.VIDEO
        assert restored.offered_modes == (Mode.VIDEO, Mode.VOICE, Mode.TEXT)
        assert restored.accepted_mode is Mode.VOICE
        assert restored.accepted_at_ms == before.accepted_at_ms
        assert (restored.offer_fingerprint, restored.answer_fingerprint) == (
            before.offer_fingerprint,
            before.answer_fingerprint,
        )
        assert restored.offer_fingerprint is not None
        # Nobody is connected yet: both members are in their grace period.
        assert {"device_grace", "technician_grace"} <= set(restored.timers)

        # Outsiders learn nothing; a viewer may not take part in a call at all.
        stranger = await c.device(outsider)
        await stranger.refused(SessionAttach(session_id=session_id), ErrorCode.NOT_FOUND)
        other_tech = await c.console("other-tech")
        await other_tech.refused(SessionAttach(session_id=session_id), ErrorCode.NOT_FOUND)
        viewer = await c.console("viewer")
        await viewer.refused(SessionAttach(session_id=session_id), ErrorCode.FORBIDDEN)
        assert {"device_grace", "technician_grace"} <= set(restored.timers)

        # The members come back: each attaches and hears where the session stands.
        device_wire = await c.device(device)
        console = await c.console("tech")
        for member in (device_wire, console):
            update = await member.ok(SessionAttach(session_id=session_id))
            assert isinstance(update, SessionUpdate)
            assert (update.session_id, update.state, update.mode) == (
                session_id,
                SessionState.IN_CALL,
                Mode.VOICE,
            )
        assert not {"device_grace", "technician_grace"} & set(restored.timers)

        # It goes on as before: the technician closes it, and then it is gone.
        await console.ok(SessionClose(session_id=session_id))
        closed = await device_wire.expect(
            SessionUpdate, where=lambda u: u.state is SessionState.CLOSED
        )
        assert closed.close_reason is CloseReason.CLOSED_BY_TECHNICIAN
        await device_wire.refused(SessionAttach(session_id=session_id), ErrorCode.NOT_FOUND)
        assert await second.store.live_sessions() == []

    async with running(config, tablets) as third:
        assert hub_of(third.server).sessions == {}


async def test_a_session_of_a_device_revoked_meanwhile_is_closed_at_start_up(
    tmp_path: Path,
) -> None:
    config = lab_config(tmp_path, grace_s=30.0)
    tablets = await prepare(config)
    async with running(config, tablets) as first, clients(first) as c:
        device = await enrol(first, name="Tablet")
        session_id = await call_in_progress(await c.console("tech"), await c.device(device), device)

    # The admin CLI revokes the device while the server is down.
    store = await Store.open(config.database_url)
    try:
        await store.revoke_device(device.device_id)
    finally:
        await store.close()

    async with running(config, tablets) as second:
        assert session_id not in hub_of(second.server).sessions
        row = await second.store.session(session_id)
        assert row is not None
        assert row.state == SessionState.CLOSED.value
        assert row.closed_at_ms is not None
        assert await second.store.live_sessions() == []


async def test_a_database_from_before_gets_the_live_sessions_device_column(
    tmp_path: Path,
) -> None:
    """A live_sessions table made before its rows named their device gets the column
    and its unique index on open; its old rows (a null device) stay and load."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE sessions (id VARCHAR(64) PRIMARY KEY, technician_id VARCHAR(64), "
            "device_id VARCHAR(64), offered_mode VARCHAR(8), accepted_mode VARCHAR(8), "
            "reason VARCHAR(500), state VARCHAR(16), created_at_ms BIGINT, "
            "accepted_at_ms BIGINT, closed_at_ms BIGINT, end_reason VARCHAR(32), "
            "consent_receipt TEXT, summary TEXT)"
        )
        old.execute(
            "CREATE TABLE live_sessions (session_id VARCHAR(64) PRIMARY KEY "
            "REFERENCES sessions (id), offered_modes VARCHAR(32), "
            "offer_fingerprint VARCHAR(128), answer_fingerprint VARCHAR(128))"
        )
        old.execute(
            "INSERT INTO sessions VALUES ('ses-old', 'tech-1', 'dev-1', 'text', NULL, 'r', "
            "'invited', 1, NULL, NULL, NULL, NULL, NULL)"
        )
        old.execute("INSERT INTO live_sessions VALUES ('ses-old', 'text', NULL, NULL)")
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        (row, live), *_ = await store.live_sessions()
        assert (row.id, live.device_id) == ("ses-old", None)
    finally:
        await store.close()
    with sqlite3.connect(path) as migrated:
        indexes = migrated.execute("PRAGMA index_list(live_sessions)").fetchall()
    assert any(index[1] == "uq_live_sessions_device_id" and index[2] == 1 for index in indexes)
