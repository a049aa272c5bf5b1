"""Persistent state of the signaling server, on SQLAlchemy 2 (async).

SQLite (aiosqlite) by default, any SQLAlchemy async URL otherwise (PostgreSQL through
asyncpg). The store keeps metadata only: who, whom, when, mode, consent, duration,
reason and summary of a session; never a word of its chat. Notification bodies and
answers are kept because store-and-forward needs them, and they expire.

Secrets are stored as hashes: passwords with scrypt (memory-hard), bearer and
enrolment tokens as SHA-256 (they are long random strings, so a fast hash is enough).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Engine,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from protocol.enums import Mode, NotificationState, Role


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- passwords (scrypt: memory-hard, in the standard library) ---------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1  # 16 MiB and ~50 ms per hash


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


#: A hash to verify against when the user does not exist, so that a login for an
#: unknown name costs as much as one for a known name (no user enumeration by timing).
#: Made on first use, not at import: every process that imports the store would pay.
_dummy_hash: str | None = None


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_hex(8))
    return _dummy_hash


# --- tables ---------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class DeviceGroupRow(Base):
    __tablename__ = "device_groups"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: Chat services policy allows in this group, comma-separated modes.
    allowed_modes: Mapped[str] = mapped_column(String(32), default="text,voice,video")
    #: Live Support enabled by policy for this group.
    service_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Calls of this group's devices use relayed (TURN) candidates only.
    relay_only: Mapped[bool] = mapped_column(Boolean, default=False)


class TechnicianRow(Base):
    __tablename__ = "technicians"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    organisation: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    photo: Mapped[str] = mapped_column(Text, default="")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class TechnicianGroupRow(Base):
    __tablename__ = "technician_groups"
    technician_id: Mapped[str] = mapped_column(ForeignKey("technicians.id"), primary_key=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("device_groups.id"), primary_key=True)


class DeviceRow(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    group_id: Mapped[str] = mapped_column(ForeignKey("device_groups.id"))
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(128), default="")
    os: Mapped[str] = mapped_column(String(128), default="")
    enrolled_at_ms: Mapped[int] = mapped_column(BigInteger)
    last_seen_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # Last reported local conditions (kept so an offline device still shows its status).
    service_installed: Mapped[bool] = mapped_column(Boolean, default=True)
    service_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    chat_services: Mapped[str] = mapped_column(String(32), default="text,voice,video")


class EnrolmentTokenRow(Base):
    __tablename__ = "enrolment_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("device_groups.id"))
    created_by: Mapped[str] = mapped_column(String(64))
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    used_at_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_by_device: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuthTokenRow(Base):
    __tablename__ = "auth_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    technician_id: Mapped[str] = mapped_column(ForeignKey("technicians.id"))
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class SessionRow(Base):
    """Metadata of a session. There is deliberately no column for chat content."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    technician_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(64))
    offered_mode: Mapped[str] = mapped_column(String(8))
    accepted_mode: Mapped[str | None] = mapped_column(String(8), nullable=True)
    reason: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    accepted_at_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    closed_at_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    consent_receipt: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)


class LiveSessionRow(Base):
    """What a session still open needs beyond its metadata row to survive a restart
    of the server: the modes offered and the DTLS fingerprints of the current call
    (the consent receipt must bind them). The row goes when the session ends, so the
    table lists exactly the sessions a starting server takes back.

    ``device_id`` is unique: a device has one live session, whichever node started
    it. Two starts in the same instant (two nodes, or two consoles on one node) both
    pass their own checks; the database lets one row in (``record_live_session``)."""

    __tablename__ = "live_sessions"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    #: Null only in rows written before the column existed.
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    offered_modes: Mapped[str] = mapped_column(String(32))
    offer_fingerprint: Mapped[str | None] = mapped_column(String(128), nullable=True)
    answer_fingerprint: Mapped[str | None] = mapped_column(String(128), nullable=True)


class NotificationRow(Base):
    __tablename__ = "notifications"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    technician_id: Mapped[str] = mapped_column(String(64))
    sender_name: Mapped[str] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    sent_at_ms: Mapped[int] = mapped_column(BigInteger)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)


class NotificationTargetRow(Base):
    __tablename__ = "notification_targets"
    notification_id: Mapped[str] = mapped_column(ForeignKey("notifications.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    state: Mapped[str] = mapped_column(String(16))
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="{}")


# --- value objects handed to the rest of the server -----------------------------------


@dataclass(frozen=True, slots=True)
class Technician:
    id: str
    username: str
    display_name: str
    organisation: str
    role: Role
    photo: str
    groups: frozenset[str]
    #: A disabled technician cannot log in; only the admin listing shows them.
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    name: str
    group_id: str
    group_name: str
    public_key: str
    model: str
    os: str
    last_seen_ms: int | None
    revoked: bool
    service_installed: bool
    service_enabled: bool
    chat_services: tuple[Mode, ...]
    policy_enabled: bool
    policy_modes: tuple[Mode, ...]
    enrolled_at_ms: int = 0
    #: The group's relay-only policy (see DeviceGroupRow.relay_only).
    relay_only: bool = False


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    name: str
    allowed_modes: tuple[Mode, ...]
    service_enabled: bool
    relay_only: bool = False


@dataclass(frozen=True, slots=True)
class SessionHistory:
    """A session's metadata with the names an audit view shows beside it."""

    session: SessionRow
    #: The technician's and the device's names today (empty if they are gone).
    technician_name: str
    device_name: str
    device_public_key: str
    group_id: str


@dataclass(frozen=True, slots=True)
class NotificationTargetHistory:
    """How far one device got with a notification; never the answer's text."""

    device_id: str
    device_name: str
    group_id: str
    state: NotificationState
    updated_at_ms: int
    answered: bool


@dataclass(frozen=True, slots=True)
class NotificationHistory:
    notification: NotificationRow
    targets: tuple[NotificationTargetHistory, ...]


@dataclass(frozen=True, slots=True)
class ProgressWrite:
    """How far one device got with a notification, to be written (see write_batch)."""

    notification_id: str
    device_id: str
    state: NotificationState
    at_ms: int
    #: The answer's text; None keeps what is stored.
    answer: str | None = None


#: Notification states only move forward: their order, as the store compares them.
STATE_RANK: dict[NotificationState, int] = {
    NotificationState.SENT: 0,
    NotificationState.DELIVERED: 1,
    NotificationState.READ: 2,
    NotificationState.ANSWERED: 3,
    NotificationState.EXPIRED: 4,
}


class StoreError(Exception):
    """A request the store refuses (unknown name, used token...), said for people."""


class NotFound(StoreError):
    """The named group, technician or device does not exist."""


class Conflict(StoreError):
    """The request clashes with what exists (a name that is taken)."""


def _table(row: type[Base]) -> Table:
    """A mapped class's table, for SQLAlchemy Core statements (bulk writes)."""
    return Base.metadata.tables[row.__tablename__]


def _notification_target_query() -> Any:
    notes, targets = _table(NotificationRow), _table(NotificationTargetRow)
    return (
        select(
            notes,
            targets.c.state.label("target_state"),
            targets.c.updated_at_ms.label("target_updated_at_ms"),
            targets.c.answer.label("target_answer"),
        )
        .join(targets, targets.c.notification_id == notes.c.id)
        .where(
            notes.c.id == bindparam("b_notification"),
            targets.c.device_id == bindparam("b_device"),
        )
    )


#: Built once: an acknowledgement's read (Store.notification_target) runs 10,000
#: times after a big send, and building the statement was a third of its cost.
_NOTIFICATION_TARGET = _notification_target_query()


# The device reads run on every device connect, status change and console
# subscription: plain rows (SQLAlchemy Core), not ORM objects, which cost about
# twice as much per row for values the store copies into a Device at once.
_DEVICE_COLUMNS = (
    DeviceRow.id,
    DeviceRow.name,
    DeviceRow.group_id,
    DeviceGroupRow.name.label("group_name"),
    DeviceRow.public_key,
    DeviceRow.model,
    DeviceRow.os,
    DeviceRow.last_seen_ms,
    DeviceRow.revoked,
    DeviceRow.service_installed,
    DeviceRow.service_enabled,
    DeviceRow.chat_services,
    DeviceGroupRow.service_enabled.label("policy_enabled"),
    DeviceGroupRow.allowed_modes,
    DeviceRow.enrolled_at_ms,
    DeviceGroupRow.relay_only,
)


def _device_query() -> Any:
    return select(*_DEVICE_COLUMNS).join(DeviceGroupRow, DeviceRow.group_id == DeviceGroupRow.id)


def _pending_query() -> Any:
    notes, targets = _table(NotificationRow), _table(NotificationTargetRow)
    return (
        select(notes)
        .join(targets, targets.c.notification_id == notes.c.id)
        .where(
            targets.c.device_id == bindparam("b_device"),
            targets.c.state.in_([NotificationState.SENT.value, NotificationState.DELIVERED.value]),
            notes.c.expires_at_ms > bindparam("b_now"),
        )
        .order_by(notes.c.sent_at_ms)
    )


#: Built once (with their values bound at each run) for the reads every connect makes
#: (Store.device, Store.pending_notifications): building a statement and its cache
#: key cost ~0.3 ms of CPU each time, five times the read itself (measured).
_DEVICE_BY_ID = _device_query().where(DeviceRow.id == bindparam("b_device"))
_PENDING = _pending_query()


def _modes(text: str) -> tuple[Mode, ...]:
    return tuple(Mode(m) for m in text.split(",") if m)


def _modes_text(modes: Sequence[Mode]) -> str:
    return ",".join(m.value for m in Mode if m in modes)


def _add_relay_only_column(conn: Connection) -> None:
    """A database made before groups had a relay-only policy gets the column
    (``create_all`` makes missing tables, never missing columns)."""
    columns = {c["name"] for c in inspect(conn).get_columns("device_groups")}
    if "relay_only" not in columns:
        conn.execute(
            text("ALTER TABLE device_groups ADD COLUMN relay_only BOOLEAN NOT NULL DEFAULT FALSE")
        )


def _add_live_session_device_column(conn: Connection) -> None:
    """A database made before live sessions named their device gets the column and
    its unique index (its rows keep a null: they were started before, one a device)."""
    columns = {c["name"] for c in inspect(conn).get_columns("live_sessions")}
    if "device_id" not in columns:
        conn.execute(text("ALTER TABLE live_sessions ADD COLUMN device_id VARCHAR(64)"))
        conn.execute(
            text(
                "CREATE UNIQUE INDEX IF NOT EXISTS uq_live_sessions_device_id "
                "ON live_sessions (device_id)"
            )
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL: readers do not wait for the writer. synchronous=NORMAL: a commit is no
    fsync (the log is synced at checkpoints); a power cut may lose the last commits,
    never the database. With an fsync per commit, the status report every device
    sends when it connects held one server at ~70 connects/s (bench/load).
    busy_timeout: a writer waits up to 30 s for another's commit (5 s by default):
    under a connect storm a loaded loop is slow to commit, and the 5 s ran out."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _loop_read_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """The loop's reader (``Store._read``) never writes and never waits: a read that
    would (busy) goes the asynchronous way instead of stalling the event loop."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=1")
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()


class Store:
    def __init__(self, engine: AsyncEngine, loop_reads: Engine | None = None) -> None:
        self.engine = engine
        #: A SQLite file's small reads by key, on the event loop (``_read``).
        self.loop_reads = loop_reads
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str) -> Store:
        engine = create_async_engine(url)
        loop_reads = None
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            if engine.url.database not in (None, "", ":memory:"):
                # The same file through the standard library's driver (an in-memory
                # database is one connection's alone: it has none).
                loop_reads = create_engine(engine.url.set(drivername="sqlite+pysqlite"))
                event.listen(loop_reads, "connect", _loop_read_pragmas)
        store = cls(engine, loop_reads)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(_add_relay_only_column)
            await conn.run_sync(_add_live_session_device_column)
        return store

    async def close(self) -> None:
        await self.engine.dispose()
        if self.loop_reads is not None:
            self.loop_reads.dispose()

    async def _read(self, statement: Any, params: Mapping[str, Any]) -> Sequence[Row[Any]]:
        """A small read by key (a device, its pending notifications, one target):
        those every connect and every acknowledgement make.

        On a SQLite file it runs here, on the event loop's thread, through a
        synchronous connection: 0.10 ms of CPU for a device by id, against 1.08 ms
        through aiosqlite, which hops to its thread and back five times per query
        (cursor, execute, fetch, close, rollback) and held a reconnecting fleet's
        server at ~2.5 ms of its ~6 ms per connect (measured; docs/scale.md). WAL
        lets a reader go on beside the writer; a read that would still wait (busy:
        the database being recovered or its log reset) goes the asynchronous way
        rather than stall the loop. Other databases (PostgreSQL) take the
        asynchronous way, which is their driver's own."""
        if self.loop_reads is not None:
            try:
                with self.loop_reads.connect() as conn:
                    return conn.execute(statement, params).all()
            except OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
        async with self.engine.connect() as conn:
            return (await conn.execute(statement, params)).all()

    async def drop_pooled(self) -> None:
        """Forget the compiled statements and close the pool's idle connections; both
        are made again on their next use. Called once a fleet has left
        (``limits.OpenFilesGuard.drop_fleet_leftovers``): made during its connect
        storm, they (each connection's thread and SQLite statement cache, each
        compiled statement's objects) kept Python arenas of the fleet's alive
        (measured at 2,000 devices: 7-9 of ~35). A connection in use goes on until
        given back. An in-memory database keeps its only connection (its data)."""
        self.engine.clear_compiled_cache()
        if self.engine.url.database not in (None, "", ":memory:"):
            await self.engine.dispose()
        if self.loop_reads is not None:
            self.loop_reads.clear_compiled_cache()
            self.loop_reads.dispose()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as db, db.begin():
            yield db

    # -- groups ---------------------------------------------------------------------

    async def create_group(
        self,
        name: str,
        *,
        allowed_modes: Sequence[Mode] = tuple(Mode),
        enabled: bool = True,
        relay_only: bool = False,
    ) -> Group:
        async with self.tx() as db:
            if await db.scalar(select(DeviceGroupRow).where(DeviceGroupRow.name == name)):
                raise Conflict(f"a device group named {name!r} exists already")
            row = DeviceGroupRow(
                id=new_id("grp"),
                name=name,
                allowed_modes=_modes_text(allowed_modes),
                service_enabled=enabled,
                relay_only=relay_only,
            )
            db.add(row)
        return self._group(row)

    async def set_group_policy(
        self,
        group: str,
        *,
        allowed_modes: Sequence[Mode] | None = None,
        enabled: bool | None = None,
        relay_only: bool | None = None,
    ) -> Group:
        async with self.tx() as db:
            row = await self._group_row(db, group)
            if allowed_modes is not None:
                row.allowed_modes = _modes_text(allowed_modes)
            if enabled is not None:
                row.service_enabled = enabled
            if relay_only is not None:
                row.relay_only = relay_only
        return self._group(row)

    async def groups(self) -> list[Group]:
        async with self.tx() as db:
            rows = (await db.scalars(select(DeviceGroupRow).order_by(DeviceGroupRow.name))).all()
        return [self._group(r) for r in rows]

    async def group(self, id_or_name: str) -> Group:
        """The group with this id or name; NotFound if there is none."""
        async with self.tx() as db:
            return self._group(await self._group_row(db, id_or_name))

    async def device_counts(self) -> dict[str, int]:
        """Enrolled devices per group id, revoked ones not counted."""
        query = (
            select(DeviceRow.group_id, func.count())
            .where(DeviceRow.revoked.is_(False))
            .group_by(DeviceRow.group_id)
        )
        async with self.tx() as db:
            rows = (await db.execute(query)).all()
        return {str(group_id): int(count) for group_id, count in rows}

    async def _group_row(self, db: AsyncSession, id_or_name: str) -> DeviceGroupRow:
        row = await db.scalar(
            select(DeviceGroupRow).where(
                (DeviceGroupRow.id == id_or_name) | (DeviceGroupRow.name == id_or_name)
            )
        )
        if row is None:
            raise NotFound(f"no device group {id_or_name!r}")
        return row

    @staticmethod
    def _group(row: DeviceGroupRow) -> Group:
        return Group(
            row.id, row.name, _modes(row.allowed_modes), row.service_enabled, bool(row.relay_only)
        )

    # -- technicians ----------------------------------------------------------------

    async def create_technician(
        self,
        username: str,
        password: str,
        *,
        display_name: str,
        role: Role,
        organisation: str = "",
        groups: Sequence[str] = (),
        photo: str = "",
    ) -> Technician:
        if role is Role.DEVICE:
            raise StoreError("a technician cannot have the device role")
        if len(password) < 8:
            raise StoreError("a password needs at least 8 characters")
        # scrypt is ~50 ms of CPU: off the event loop, so other connections go on.
        password_hash = await asyncio.to_thread(hash_password, password)
        async with self.tx() as db:
            if await db.scalar(select(TechnicianRow).where(TechnicianRow.username == username)):
                raise Conflict(f"a technician named {username!r} exists already")
            row = TechnicianRow(
                id=new_id("tech"),
                username=username,
                display_name=display_name,
                organisation=organisation,
                role=role.value,
                password_hash=password_hash,
                photo=photo,
            )
            db.add(row)
            await db.flush()
            group_ids = [(await self._group_row(db, g)).id for g in groups]
            for gid in group_ids:
                db.add(TechnicianGroupRow(technician_id=row.id, group_id=gid))
        return Technician(
            row.id, username, display_name, organisation, role, photo, frozenset(group_ids)
        )

    async def technician(
        self, technician_id: str, *, include_disabled: bool = False
    ) -> Technician | None:
        async with self.tx() as db:
            row = await db.get(TechnicianRow, technician_id)
            if row is None or (row.disabled and not include_disabled):
                return None
            return await self._technician(db, row)

    async def update_technician(
        self,
        technician_id: str,
        *,
        display_name: str | None = None,
        photo: str | None = None,
        role: Role | None = None,
        groups: Sequence[str] | None = None,
        disabled: bool | None = None,
    ) -> Technician:
        """Change what is given, in one transaction; ``groups`` (ids or names) replaces
        the technician's scope. NotFound for an unknown technician or group."""
        if role is Role.DEVICE:
            raise StoreError("a technician cannot have the device role")
        async with self.tx() as db:
            row = await db.get(TechnicianRow, technician_id)
            if row is None:
                raise NotFound(f"no technician {technician_id!r}")
            if display_name is not None:
                row.display_name = display_name
            if photo is not None:
                row.photo = photo
            if role is not None:
                row.role = role.value
            if disabled is not None:
                row.disabled = disabled
            if groups is not None:
                group_ids = {(await self._group_row(db, g)).id for g in groups}
                await db.execute(
                    delete(TechnicianGroupRow).where(
                        TechnicianGroupRow.technician_id == technician_id
                    )
                )
                db.add_all(
                    TechnicianGroupRow(technician_id=technician_id, group_id=gid)
                    for gid in sorted(group_ids)
                )
            await db.flush()
            return await self._technician(db, row)

    async def revoke_technician_tokens(self, technician_id: str) -> None:
        """End every bearer token of a technician (they were disabled): re-enabling
        the account later must not bring old tokens back to life."""
        async with self.tx() as db:
            await db.execute(
                update(AuthTokenRow)
                .where(AuthTokenRow.technician_id == technician_id)
                .values(revoked=True)
            )

    async def technicians(self) -> list[Technician]:
        async with self.tx() as db:
            rows = (await db.scalars(select(TechnicianRow).order_by(TechnicianRow.username))).all()
            return [await self._technician(db, r) for r in rows]

    async def _technician(self, db: AsyncSession, row: TechnicianRow) -> Technician:
        groups = await db.scalars(
            select(TechnicianGroupRow.group_id).where(TechnicianGroupRow.technician_id == row.id)
        )
        return Technician(
            row.id,
            row.username,
            row.display_name,
            row.organisation,
            Role(row.role),
            row.photo,
            frozenset(groups.all()),
            row.disabled,
        )

    async def login(self, username: str, password: str, *, ttl_s: int) -> tuple[str, Technician]:
        """A new bearer token for a correct password. Raises StoreError otherwise."""
        async with self.tx() as db:
            row = await db.scalar(select(TechnicianRow).where(TechnicianRow.username == username))
        stored = row.password_hash if row is not None else await asyncio.to_thread(_dummy)
        # scrypt is ~50 ms of CPU: off the event loop, so other connections go on.
        ok = await asyncio.to_thread(verify_password, password, stored)
        if row is None or not ok or row.disabled:
            raise StoreError("wrong username or password")
        async with self.tx() as db:
            token = secrets.token_urlsafe(32)
            db.add(
                AuthTokenRow(
                    token_hash=token_hash(token),
                    technician_id=row.id,
                    expires_at_ms=now_ms() + ttl_s * 1000,
                )
            )
            return token, await self._technician(db, row)

    async def technician_for_token(self, token: str) -> Technician | None:
        async with self.tx() as db:
            row = await db.get(AuthTokenRow, token_hash(token))
            if row is None or row.revoked or row.expires_at_ms < now_ms():
                return None
            tech = await db.get(TechnicianRow, row.technician_id)
            if tech is None or tech.disabled:
                return None
            return await self._technician(db, tech)

    async def token_expires_at_ms(self, token: str) -> int | None:
        """When a bearer token runs out (None: unknown); the hub ends a console's
        websocket then, as a REST call with it would be refused from then on."""
        async with self.tx() as db:
            row = await db.get(AuthTokenRow, token_hash(token))
            return None if row is None else row.expires_at_ms

    async def revoke_token(self, token: str) -> bool:
        async with self.tx() as db:
            result = await db.execute(
                update(AuthTokenRow)
                .where(AuthTokenRow.token_hash == token_hash(token))
                .values(revoked=True)
            )
            return bool(getattr(result, "rowcount", 0))

    # -- enrolment and devices ------------------------------------------------------

    async def issue_enrolment_token(self, group: str, *, created_by: str, ttl_s: int) -> str:
        token, _, _ = await self.issue_enrolment(group, created_by=created_by, ttl_s=ttl_s)
        return token

    async def issue_enrolment(
        self, group: str, *, created_by: str, ttl_s: int
    ) -> tuple[str, str, int]:
        """A one-time enrolment token for ``group`` (id or name): the token, the
        group's id and when the token expires (ms)."""
        expires_at_ms = now_ms() + ttl_s * 1000
        async with self.tx() as db:
            group_row = await self._group_row(db, group)
            token = secrets.token_urlsafe(24)
            db.add(
                EnrolmentTokenRow(
                    token_hash=token_hash(token),
                    group_id=group_row.id,
                    created_by=created_by,
                    expires_at_ms=expires_at_ms,
                )
            )
        return token, group_row.id, expires_at_ms

    async def enrol_device(
        self, token: str, *, public_key: str, name: str, model: str, os: str
    ) -> Device:
        """Consume a one-time enrolment token and register the device key."""
        async with self.tx() as db:
            row = await db.get(EnrolmentTokenRow, token_hash(token))
            if row is None:
                raise StoreError("unknown enrolment token")
            if row.used_at_ms is not None:
                raise StoreError("this enrolment token was used already")
            if row.expires_at_ms < now_ms():
                raise StoreError("this enrolment token has expired")
            if await db.scalar(select(DeviceRow).where(DeviceRow.public_key == public_key)):
                raise StoreError("this device key is enrolled already")
            device = DeviceRow(
                id=new_id("dev"),
                name=name,
                group_id=row.group_id,
                public_key=public_key,
                model=model,
                os=os,
                enrolled_at_ms=now_ms(),
            )
            # Consume the token with a conditional update, so two enrolments racing
            # with the same token cannot both succeed, whatever the database.
            consumed = await db.execute(
                update(EnrolmentTokenRow)
                .where(
                    EnrolmentTokenRow.token_hash == row.token_hash,
                    EnrolmentTokenRow.used_at_ms.is_(None),
                )
                .values(used_at_ms=now_ms(), used_by_device=device.id)
            )
            if getattr(consumed, "rowcount", 0) != 1:
                raise StoreError("this enrolment token was used already")
            db.add(device)
        found = await self.device(device.id)
        assert found is not None
        return found

    @staticmethod
    def _device(row: Any) -> Device:
        return Device(
            id=row.id,
            name=row.name,
            group_id=row.group_id,
            group_name=row.group_name,
            public_key=row.public_key,
            model=row.model,
            os=row.os,
            last_seen_ms=row.last_seen_ms,
            revoked=bool(row.revoked),
            service_installed=bool(row.service_installed),
            service_enabled=bool(row.service_enabled),
            chat_services=_modes(row.chat_services),
            policy_enabled=bool(row.policy_enabled),
            policy_modes=_modes(row.allowed_modes),
            enrolled_at_ms=row.enrolled_at_ms,
            relay_only=bool(row.relay_only),
        )

    async def device(self, device_id: str) -> Device | None:
        found = await self._read(_DEVICE_BY_ID, {"b_device": device_id})
        return self._device(found[0]) if found else None

    async def devices(self, groups: Sequence[str] | None = None) -> list[Device]:
        """Every device, or those in ``groups`` (ids)."""
        query = _device_query().order_by(DeviceRow.name)
        if groups is not None:
            query = query.where(DeviceRow.group_id.in_(list(groups)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._device(r) for r in rows]

    async def device_ids(self, group_id: str) -> list[str]:
        """The ids of a group's devices that are not revoked (a notification's
        targets: a group of 10,000 needs no more than that)."""
        query = select(DeviceRow.id).where(DeviceRow.group_id == group_id, ~DeviceRow.revoked)
        async with self.engine.connect() as conn:
            return list((await conn.scalars(query)).all())

    @staticmethod
    def reported(
        device: Device,
        *,
        service_installed: bool,
        service_enabled: bool,
        chat_services: Sequence[Mode],
        name: str,
        model: str,
        os: str,
    ) -> Device:
        """The device as it reported itself now (nothing written: see
        ``update_device_report``)."""
        return replace(
            device,
            service_installed=service_installed,
            service_enabled=service_enabled,
            chat_services=_modes(_modes_text(chat_services)),
            name=name,
            model=model,
            os=os,
            last_seen_ms=now_ms(),
        )

    @staticmethod
    async def _write_reports(conn: AsyncConnection, devices: Sequence[Device]) -> None:
        """What each device reported (``reported``'s record): the rest of each record
        is the caller's, read at authentication, and is not written."""
        rows = _table(DeviceRow)
        await conn.execute(
            update(rows)
            .where(rows.c.id == bindparam("b_device"))
            .values(
                service_installed=bindparam("b_installed"),
                service_enabled=bindparam("b_enabled"),
                chat_services=bindparam("b_chat"),
                name=bindparam("b_name"),
                model=bindparam("b_model"),
                os=bindparam("b_os"),
                last_seen_ms=bindparam("b_seen"),
            ),
            [
                {
                    "b_device": d.id,
                    "b_installed": d.service_installed,
                    "b_enabled": d.service_enabled,
                    "b_chat": _modes_text(d.chat_services),
                    "b_name": d.name,
                    "b_model": d.model,
                    "b_os": d.os,
                    "b_seen": d.last_seen_ms,
                }
                for d in devices
            ],
        )

    async def revoked_among(self, device_ids: Collection[str]) -> list[str]:
        """Which of these devices are revoked (the admin CLI revokes out of process).

        Asked every few seconds about every online device: the revoked ones are read
        and intersected here, since an ``IN`` of 18,000 bound ids cost the event loop
        tens of milliseconds to build each time, and revoked devices are few."""
        if not device_ids:
            return []
        async with self.engine.connect() as conn:
            revoked = (await conn.scalars(select(DeviceRow.id).where(DeviceRow.revoked))).all()
        return [device_id for device_id in revoked if device_id in device_ids]

    async def revoke_device(self, device_id: str) -> None:
        async with self.tx() as db:
            result = await db.execute(
                update(DeviceRow).where(DeviceRow.id == device_id).values(revoked=True)
            )
            if not getattr(result, "rowcount", 0):
                raise NotFound(f"no device {device_id!r}")

    # -- sessions (metadata only) ---------------------------------------------------

    async def record_session(self, row: SessionRow) -> None:
        async with self.tx() as db:
            await db.merge(row)

    async def update_session(self, session_id: str, **values: Any) -> None:
        async with self.tx() as db:
            await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))

    async def record_live_session(self, row: SessionRow, offered_modes: Sequence[Mode]) -> None:
        """A new session: its metadata and what resuming it after a restart needs,
        in one transaction (a restart between the two must not lose either).

        Raises Conflict, and stores nothing, if the device has a live session already
        (started elsewhere in the same instant: see LiveSessionRow)."""
        try:
            async with self.tx() as db:
                db.add(row)
                await db.flush()
                db.add(
                    LiveSessionRow(
                        session_id=row.id,
                        device_id=row.device_id,
                        # In the order offered (the invite lists them so), not Mode's.
                        offered_modes=",".join(m.value for m in offered_modes),
                    )
                )
        except IntegrityError:
            raise Conflict("the device already has a session") from None

    async def set_live_fingerprints(
        self, session_id: str, offer: str | None, answer: str | None
    ) -> None:
        async with self.tx() as db:
            await db.execute(
                update(LiveSessionRow)
                .where(LiveSessionRow.session_id == session_id)
                .values(offer_fingerprint=offer, answer_fingerprint=answer)
            )

    async def end_live_session(self, session_id: str, **values: Any) -> None:
        """The session reached a final state: its metadata says how, and it is no
        longer one a restarted server takes back (one transaction)."""
        async with self.tx() as db:
            await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))
            await db.execute(delete(LiveSessionRow).where(LiveSessionRow.session_id == session_id))

    async def live_sessions(self) -> list[tuple[SessionRow, LiveSessionRow]]:
        """Sessions still open when the server stopped, oldest first."""
        query = (
            select(SessionRow, LiveSessionRow)
            .join(LiveSessionRow, LiveSessionRow.session_id == SessionRow.id)
            .order_by(SessionRow.created_at_ms)
        )
        async with self.tx() as db:
            return [(s, live) for s, live in (await db.execute(query)).all()]

    async def session(self, session_id: str) -> SessionRow | None:
        async with self.tx() as db:
            return await db.get(SessionRow, session_id)

    async def sessions(self, limit: int = 1000) -> list[SessionRow]:
        async with self.tx() as db:
            query = select(SessionRow).order_by(SessionRow.created_at_ms.desc()).limit(limit)
            return list((await db.scalars(query)).all())

    async def session_history(
        self,
        *,
        limit: int,
        groups: Sequence[str] | None = None,
        technician_id: str | None = None,
        device_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[SessionHistory]:
        """Sessions, newest first, started in [since_ms, until_ms], of devices in
        ``groups`` (ids; None: every group), with the names an audit view shows."""
        query = (
            select(
                SessionRow,
                TechnicianRow.display_name,
                DeviceRow.name,
                DeviceRow.public_key,
                DeviceRow.group_id,
            )
            .outerjoin(TechnicianRow, TechnicianRow.id == SessionRow.technician_id)
            .outerjoin(DeviceRow, DeviceRow.id == SessionRow.device_id)
            .order_by(SessionRow.created_at_ms.desc(), SessionRow.id)
            .limit(limit)
        )
        if groups is not None:
            query = query.where(DeviceRow.group_id.in_(list(groups)))
        if technician_id is not None:
            query = query.where(SessionRow.technician_id == technician_id)
        if device_id is not None:
            query = query.where(SessionRow.device_id == device_id)
        if since_ms is not None:
            query = query.where(SessionRow.created_at_ms >= since_ms)
        if until_ms is not None:
            query = query.where(SessionRow.created_at_ms <= until_ms)
        async with self.tx() as db:
            rows = (await db.execute(query)).all()
        return [
            SessionHistory(session, tech_name or "", device_name or "", key or "", group or "")
            for session, tech_name, device_name, key, group in rows
        ]

    # -- notifications --------------------------------------------------------------

    async def create_notification(
        self,
        *,
        technician_id: str,
        sender_name: str,
        title: str,
        body: str,
        ttl_s: int,
        device_ids: Sequence[str],
    ) -> NotificationRow:
        """The notification and one target row per device, in one transaction. The
        targets go in as one executemany of SQLAlchemy Core, not ORM objects: for a
        group of 10,000 the ORM's unit of work cost seconds of the loop (docs/scale.md)."""
        sent = now_ms()
        row = NotificationRow(
            id=new_id("ntf"),
            technician_id=technician_id,
            sender_name=sender_name,
            title=title,
            body=body,
            sent_at_ms=sent,
            expires_at_ms=sent + ttl_s * 1000,
        )
        notes, targets = _table(NotificationRow), _table(NotificationTargetRow)
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(notes).values(
                    id=row.id,
                    technician_id=technician_id,
                    sender_name=sender_name,
                    title=title,
                    body=body,
                    sent_at_ms=sent,
                    expires_at_ms=row.expires_at_ms,
                )
            )
            sent_state = NotificationState.SENT.value
            await conn.execute(
                insert(targets),
                [
                    {
                        "notification_id": row.id,
                        "device_id": device_id,
                        "state": sent_state,
                        "updated_at_ms": sent,
                        "answer": None,
                    }
                    for device_id in device_ids
                ],
            )
        return row

    async def pending_notifications(self, device_id: str) -> list[NotificationRow]:
        """Unexpired notifications the device has not read or answered yet: delivered
        ones too, so a pop-up shown before the agent restarted is shown again.

        Read on every device connect, so as plain rows (Core), handed out as detached
        row objects (no session: nothing is loaded from them later)."""
        rows = await self._read(_PENDING, {"b_device": device_id, "b_now": now_ms()})
        return [NotificationRow(**row._mapping) for row in rows]

    async def notification_target(
        self, notification_id: str, device_id: str
    ) -> tuple[NotificationRow, NotificationTargetRow] | None:
        """The notification and this device's row of it, or None if it was not
        addressed to the device. Read on every acknowledgement (10,000 after a big
        send), so one Core query, not two ORM loads (~1 ms of CPU each time): the rows
        come back detached, to be read, not changed."""
        params = {"b_notification": notification_id, "b_device": device_id}
        rows = await self._read(_NOTIFICATION_TARGET, params)
        if not rows:
            return None
        values = rows[0]._mapping
        note = NotificationRow(**{c.name: values[c] for c in _table(NotificationRow).columns})
        target = NotificationTargetRow(
            notification_id=notification_id,
            device_id=device_id,
            state=values["target_state"],
            updated_at_ms=values["target_updated_at_ms"],
            answer=values["target_answer"],
        )
        return note, target

    async def notification_exists(self, notification_id: str) -> bool:
        async with self.tx() as db:
            return await db.get(NotificationRow, notification_id) is not None

    async def write_batch(
        self,
        progress: Sequence[ProgressWrite],
        last_seen: Mapping[str, int],
        reports: Sequence[Device] = (),
    ) -> None:
        """Notification progress, devices' last-seen times and status reports
        (``_write_reports``), in one transaction (one executemany each): the
        write-behind's flush (signaling_server/writebehind.py).

        Both only move forward, whatever order batches land in: a state is written
        only over a lower one (a late ``delivered`` never undoes ``read``), and a
        last-seen time only over an older one (a device that left and came back has a
        newer one from its status report)."""
        targets, devices = _table(NotificationTargetRow), _table(DeviceRow)
        stored_rank = case(
            {state.value: rank for state, rank in STATE_RANK.items()},
            value=targets.c.state,
            else_=-1,
        )
        async with self.engine.begin() as conn:
            if reports:
                # First: a report's last-seen time is its own, and a later one (the
                # device left) in this batch must not be written over by it.
                await self._write_reports(conn, reports)
            if progress:
                await conn.execute(
                    update(targets)
                    .where(
                        targets.c.notification_id == bindparam("b_notification"),
                        targets.c.device_id == bindparam("b_device"),
                        stored_rank < bindparam("b_rank"),
                    )
                    .values(
                        state=bindparam("b_state"),
                        updated_at_ms=bindparam("b_at"),
                        answer=func.coalesce(bindparam("b_answer", type_=Text), targets.c.answer),
                    ),
                    [
                        {
                            "b_notification": p.notification_id,
                            "b_device": p.device_id,
                            "b_rank": STATE_RANK[p.state],
                            "b_state": p.state.value,
                            "b_at": p.at_ms,
                            "b_answer": p.answer,
                        }
                        for p in progress
                    ],
                )
            if last_seen:
                await conn.execute(
                    update(devices)
                    .where(
                        devices.c.id == bindparam("b_device"),
                        or_(
                            devices.c.last_seen_ms.is_(None),
                            devices.c.last_seen_ms < bindparam("b_at"),
                        ),
                    )
                    .values(last_seen_ms=bindparam("b_at")),
                    [{"b_device": d, "b_at": at} for d, at in last_seen.items()],
                )

    async def notification_history(
        self,
        *,
        limit: int,
        groups: Sequence[str] | None = None,
        technician_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[NotificationHistory]:
        """Notifications, newest first, sent in [since_ms, until_ms]. With ``groups``
        (ids), only those that reached a device of these groups, and only the targets
        in them: a scoped reader learns nothing of devices outside their groups."""
        in_groups = DeviceRow.group_id.in_(list(groups or ()))
        query = (
            select(NotificationRow)
            .order_by(NotificationRow.sent_at_ms.desc(), NotificationRow.id)
            .limit(limit)
        )
        if groups is not None:
            query = query.where(
                select(NotificationTargetRow.device_id)
                .join(DeviceRow, DeviceRow.id == NotificationTargetRow.device_id)
                .where(NotificationTargetRow.notification_id == NotificationRow.id, in_groups)
                .exists()
            )
        if technician_id is not None:
            query = query.where(NotificationRow.technician_id == technician_id)
        if since_ms is not None:
            query = query.where(NotificationRow.sent_at_ms >= since_ms)
        if until_ms is not None:
            query = query.where(NotificationRow.sent_at_ms <= until_ms)
        async with self.tx() as db:
            notes = list((await db.scalars(query)).all())
            targets_query = (
                select(NotificationTargetRow, DeviceRow.name, DeviceRow.group_id)
                .outerjoin(DeviceRow, DeviceRow.id == NotificationTargetRow.device_id)
                .where(NotificationTargetRow.notification_id.in_([n.id for n in notes]))
                .order_by(NotificationTargetRow.device_id)
            )
            if groups is not None:
                targets_query = targets_query.where(in_groups)
            target_rows = (await db.execute(targets_query)).all()
        targets: dict[str, list[NotificationTargetHistory]] = {}
        for target, device_name, group_id in target_rows:
            state = NotificationState(target.state)
            targets.setdefault(target.notification_id, []).append(
                NotificationTargetHistory(
                    device_id=target.device_id,
                    device_name=device_name or "",
                    group_id=group_id or "",
                    state=state,
                    updated_at_ms=target.updated_at_ms,
                    answered=state is NotificationState.ANSWERED or target.answer is not None,
                )
            )
        return [NotificationHistory(n, tuple(targets.get(n.id, ()))) for n in notes]

    # -- audit ----------------------------------------------------------------------

    async def audit(
        self, actor: str, action: str, *, target: str = "", outcome: str = "ok", **detail: Any
    ) -> None:
        async with self.tx() as db:
            db.add(
                AuditRow(
                    at_ms=now_ms(),
                    actor=actor,
                    action=action,
                    target=target,
                    outcome=outcome,
                    detail=json.dumps(detail, sort_keys=True, default=str),
                )
            )

    async def audit_rows(self, limit: int = 1000) -> list[AuditRow]:
        async with self.tx() as db:
            query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            return list((await db.scalars(query)).all())
