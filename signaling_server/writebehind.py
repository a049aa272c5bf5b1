"""Store writes that may lag behind the frames that caused them, written in batches.

A notification to 10,000 devices brings 10,000 ``delivered`` acknowledgements within
seconds, and a fleet leaving at once 18,000 last-seen times; a transaction each queued
them behind the connection pool, took the loop's time between the deliveries of a big
notification and timed some out ("store write failed", docs/scale.md). Here they are
kept in memory, coalesced (the latest state per notification and device, the latest
last-seen time per device), and written by one flusher task, ``batch_max`` items per
transaction, ``interval_s`` after the first of them arrived (or at once when a batch
is full). ``Hub.shutdown`` flushes what is left before the store closes.

What a crash can lose is written down in docs/scale.md ("Written behind"): only
``delivered`` acknowledgements and last-seen times of the last ``interval_s``. A
caller that promised durability (a read or an answer, acknowledged to the device only
once stored) passes ``durable=True`` and waits for its batch's commit.

Status reports go the same way as a group commit (``write_report``): the first is
written at once, those that arrive meanwhile together in the next transaction, and
each caller waits for its own commit. A fleet connecting at 300 devices/s, each with
a report that changed, held the connection pool with a transaction each: 15,206
reports were refused after the pool's 30 s wait at 18,000 devices (measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from protocol.enums import NotificationState
from signaling_server.store import STATE_RANK, Device, ProgressWrite, Store

Key = TypeVar("Key")
Value = TypeVar("Value")

log = logging.getLogger(__name__)

#: Seconds between the first pending write and its flush.
FLUSH_INTERVAL_S = 0.05
#: Items per transaction; a batch this full is flushed without waiting.
BATCH_MAX = 1000
#: Pending notification progress beyond which writers wait for a flush (bounded memory
#: when the store is slower than the acknowledgements coming in).
PENDING_MAX = 20_000


#: What to do once a write is committed (tell the sender's consoles).
OnWritten = Callable[[], Awaitable[None]]


def _take_oldest(pending: dict[Key, Value], room: int) -> tuple[dict[Key, Value], dict[Key, Value]]:
    """Up to ``room`` of the oldest pending entries, and the rest. All of them, when
    they fit: the pending dict itself, its table freed with the batch (a dict keeps
    the table it grew to after its entries are deleted: 0.4 MiB after 18,000 devices
    left at once, measured), and no entries deleted one by one from its front, where
    each next first entry is found past every deleted one (~100 ms for 18,000)."""
    if len(pending) <= room:
        return pending, {}
    taken = dict(itertools.islice(pending.items(), max(room, 0)))
    for key in taken:
        del pending[key]
    return taken, pending


@dataclass(slots=True)
class _Progress:
    state: NotificationState
    at_ms: int
    answer: str | None
    #: Callers waiting for this item's commit (durable writes).
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: One per act that moved the state on, in their order (coalesced acts keep theirs).
    on_written: list[OnWritten] = field(default_factory=list)


@dataclass(slots=True)
class _Report:
    device: Device
    #: Every caller whose report this one is (a later report replaces an earlier one
    #: not written yet: the device's latest state is what is stored).
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class WriteBehindClosed(Exception):
    """A durable write asked for after the last flush (the server is stopping)."""


class WriteBehind:
    def __init__(
        self,
        store: Store,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        batch_max: int = BATCH_MAX,
        pending_max: int = PENDING_MAX,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.batch_max = batch_max
        self.pending_max = pending_max
        self._progress: dict[tuple[str, str], _Progress] = {}
        #: The batch being written: taken out of the pending ones, not committed yet.
        self._in_flight: dict[tuple[str, str], _Progress] = {}
        #: Device id -> last-seen time. Coalesced per device, so it holds at most one
        #: entry per device of the fleet, whatever the rate of disconnects.
        self._last_seen: dict[str, int] = {}
        #: Device id -> its latest status report not written yet.
        self._reports: dict[str, _Report] = {}
        self._flusher: asyncio.Task[None] | None = None
        #: Callers of ``flush`` waiting: every pending item is written at once.
        self._flushes = 0
        #: Set by close(): no flush starts after it.
        self._closed = False
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        #: What was flushed, for the tests and the load figures.
        self.stats: dict[str, int] = {"transactions": 0, "items": 0, "failed_items": 0}

    # -- what callers see ------------------------------------------------------------

    def pending_progress(
        self, notification_id: str, device_id: str
    ) -> tuple[NotificationState, str | None] | None:
        """The state (and answer) of a target not written yet: until it is, the store's
        row is behind, and whoever compares against it must look here too."""
        key = (notification_id, device_id)
        item = self._progress.get(key) or self._in_flight.get(key)
        return None if item is None else (item.state, item.answer)

    @property
    def pending(self) -> int:
        return len(self._progress) + len(self._last_seen) + len(self._reports)

    async def note_progress(
        self,
        notification_id: str,
        device_id: str,
        state: NotificationState,
        at_ms: int,
        answer: str | None = None,
        *,
        durable: bool = False,
        on_written: OnWritten | None = None,
    ) -> None:
        """Queue a target's new state (merged with one pending: the higher state wins,
        an answer is kept). With ``durable``, return once it is committed, and raise
        if its write failed. ``on_written`` runs (in the flusher) once it is committed,
        never if its write failed: what is told of it is stored."""
        if self._closed:
            # After the last flush (the server is stopping): nothing would write it.
            raise WriteBehindClosed("the server is stopping; the state was not stored")
        while len(self._progress) >= self.pending_max:
            self._full.set()
            self._room.clear()
            await self._room.wait()
        key = (notification_id, device_id)
        item = self._progress.get(key)
        if item is None:
            item = self._progress[key] = _Progress(state, at_ms, answer)
        elif STATE_RANK[state] > STATE_RANK[item.state]:
            item.state, item.at_ms = state, at_ms
            item.answer = answer if answer is not None else item.answer
        if on_written is not None:
            item.on_written.append(on_written)
        waiter: asyncio.Future[None] | None = None
        if durable:
            waiter = asyncio.get_running_loop().create_future()
            item.waiters.append(waiter)
        self._wake()
        if waiter is not None:
            await waiter

    async def write_report(self, device: Device) -> None:
        """Store what the device reported (``Store.reported``'s record) and return
        once it is committed; raise if its write failed. Not delayed by
        ``interval_s``: a flush starts at once if none is under way."""
        if self._closed:
            raise WriteBehindClosed("the server is stopping; the report was not stored")
        item = self._reports.get(device.id)
        if item is None:
            item = self._reports[device.id] = _Report(device)
        else:
            item.device = device
        waiter = asyncio.get_running_loop().create_future()
        item.waiters.append(waiter)
        self._full.set()
        self._wake()
        await waiter

    def touch(self, device_id: str, at_ms: int) -> None:
        """A device was last seen at ``at_ms`` (it left): written behind, a crash may
        lose it."""
        self._last_seen[device_id] = max(at_ms, self._last_seen.get(device_id, 0))
        self._wake()

    async def flush(self) -> None:
        """Write everything pending now (and wait for a flush in progress)."""
        self._flushes += 1
        try:
            while self._flusher is not None:
                self._full.set()
                await asyncio.shield(self._flusher)
        finally:
            self._flushes -= 1

    async def close(self) -> None:
        """Flush before the store closes (Hub.shutdown). Nothing starts a flush after
        this: a connection whose handler ends late (during the shutdown) would write on
        a store being closed, the write left waiting on a closed connection; its
        last-seen time is lost, as a crash would lose it."""
        self._closed = True
        await self.flush()

    # -- the flusher -----------------------------------------------------------------

    def _wake(self) -> None:
        if self.pending >= self.batch_max:
            self._full.set()
        if self._flusher is None and not self._closed:
            # One task, only while there is something to write: an idle server has
            # no timer for this.
            self._flusher = asyncio.get_running_loop().create_task(self._run(), name="write-behind")

    async def _run(self) -> None:
        try:
            while self.pending:
                # A full batch waiting (18,000 devices leaving at once) or a flush
                # asked for: the next batch at once, not after the interval.
                if not (self._full.is_set() or self._flushes or self.pending >= self.batch_max):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.interval_s)
                self._full.clear()
                await self._write_some()
                self._room.set()
        finally:
            self._flusher = None
            self._room.set()

    async def _write_some(self) -> None:
        """One transaction of up to ``batch_max`` items, taken out of the pending ones
        first: what arrives while it is written goes into the next batch."""
        taken, self._progress = _take_oldest(self._progress, self.batch_max)
        self._in_flight.update(taken)
        progress = [
            (ProgressWrite(key[0], key[1], item.state, item.at_ms, item.answer), item)
            for key, item in taken.items()
        ]
        room = self.batch_max - len(progress)
        last_seen, self._last_seen = _take_oldest(self._last_seen, room)
        room -= len(last_seen)
        taken_reports, self._reports = _take_oldest(self._reports, room)
        reports = list(taken_reports.values())
        size = len(progress) + len(last_seen) + len(reports)
        try:
            await self.store.write_batch(
                [p for p, _ in progress], last_seen, [r.device for r in reports]
            )
        except Exception:
            log.exception("store write failed: a batch of %d items; writing them one by one", size)
            await self._write_one_by_one(progress, last_seen, reports)
            return
        finally:
            self._in_flight.clear()
        self.stats["transactions"] += 1
        self.stats["items"] += size
        for report in reports:
            _settle(report.waiters, None)
        for _, item in progress:
            await self._written(item, None)

    async def _write_one_by_one(
        self,
        progress: list[tuple[ProgressWrite, _Progress]],
        last_seen: dict[str, int],
        reports: list[_Report],
    ) -> None:
        """A failed batch is not lost as a whole: each item gets its own transaction,
        and only the ones that fail again are dropped (logged; a durable caller hears
        of it)."""
        for report in reports:
            _settle(report.waiters, await self._write_alone([], {}, [report.device]))
        for write, item in progress:
            await self._written(item, await self._write_alone([write], {}))
        for device_id, at_ms in last_seen.items():
            await self._write_alone([], {device_id: at_ms})

    async def _written(self, item: _Progress, error: Exception | None) -> None:
        _settle(item.waiters, error)
        if error is not None:
            return
        for callback in item.on_written:
            try:
                await callback()
            except Exception:
                log.exception("after a write-behind commit")

    async def _write_alone(
        self,
        progress: list[ProgressWrite],
        last_seen: dict[str, int],
        reports: Sequence[Device] = (),
    ) -> Exception | None:
        try:
            await self.store.write_batch(progress, last_seen, reports)
        except Exception as error:
            # Ids only: an answer's text is the user's, not the log's.
            what = [(p.notification_id, p.device_id, p.state.value) for p in progress]
            reported = [d.id for d in reports]
            log.exception("store write failed: %s %s %s", what or "", list(last_seen), reported)
            self.stats["failed_items"] += 1
            return error
        self.stats["transactions"] += 1
        self.stats["items"] += 1
        return None


def _settle(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
    """Tell each caller waiting for a commit how it went."""
    for waiter in waiters:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
