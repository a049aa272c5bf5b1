"""What one server process needs to hold tens of thousands of idle connections.

* **One TLS read buffer per process.** asyncio's TLS protocol gives every connection
  its own 256 KiB read buffer (``SSLProtocol.max_size``), filled with zeros, so
  resident: 18,000 idle devices would cost 4.5 GiB for buffers that only ever hold
  bytes between one ``recv`` and the decryption that follows it on the same call
  stack (``get_buffer`` then ``buffer_updated``, no await between them). One buffer
  shared by every connection of the loop is therefore enough.
* **Open files.** Every connection is a file descriptor. The server raises its soft
  limit to the hard one at start, warns in its log (and in ``/api/v1/health``) when
  it holds 90 % of it, and refuses new websockets (503) a little before the cap,
  while it can still answer, instead of meeting ``EMFILE`` in ``accept``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import gc
import importlib
import logging
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, MutableSet
from dataclasses import dataclass, field
from typing import Any

import multidict
from aiohttp import web

log = logging.getLogger(__name__)

_shared = bytearray(256 * 1024)
_shared_view = memoryview(_shared)


def share_tls_read_buffer() -> None:
    """Make every asyncio TLS connection of this process read into one buffer.

    Idempotent. Patches ``asyncio.sslproto.SSLProtocol`` (CPython 3.11+'s
    implementation, the one with ``get_buffer``)."""
    from asyncio import sslproto

    cls: Any = sslproto.SSLProtocol
    if getattr(cls, "_livesupport_shared_buffer", False):
        return
    original_init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # The original allocates ``bytearray(self.max_size)``: make that empty.
        self.max_size = 0
        try:
            original_init(self, *args, **kwargs)
        finally:
            del self.max_size
        self._ssl_buffer = _shared
        self._ssl_buffer_view = _shared_view

    cls.max_size = len(_shared)
    cls.__init__ = __init__
    cls._livesupport_shared_buffer = True


def raise_open_files_to_hard() -> tuple[int, int]:
    """Soft limit of open files up to the hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, hard


#: Connections gone since the last trim that make a trim worth its few milliseconds.
TRIM_AFTER_LEAVING = 1000
#: Fewer gone than this never trim (their memory is small), even when most have left.
TRIM_MIN_LEFT = 100


def resident_mib() -> float | None:
    """The process's resident memory (MiB), for the log; None where /proc has none."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def trim_heap(*, collect: bool = True) -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim).

    Thousands of connections leave thousands of freed TLS states and buffers in the
    C heap (and in the arenas of the database threads); glibc keeps that memory
    mapped, so a server a fleet has left would keep its size at the fleet's peak.

    ``collect``: a full garbage collection first. A closed connection leaves a
    reference cycle (aiohttp's handler, request and websocket, the transports: ~31
    objects) that only the oldest generation's collection frees, which may not come
    for a long time; trimming before it gave back a third less (measured:
    bench/memory_per_connection.py). It costs a stall of its own, though (~180 ms
    with 2,000 connections held), in proportion to the objects still alive."""
    if collect:
        gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return
    libc.malloc_trim(0)


#: Objects made of each free-listed type to renew its list: far more than any list
#: keeps (asyncio's: 255; aiohttp's parser's: 250; multidict's: 32), so that the
#: highest-addressed of them are likely in the arenas that stay.
FREE_LIST_RENEWAL = 8192


def _free_listed() -> list[Callable[[], object]]:
    """Makers of objects whose type keeps freed instances on a free list of its own
    (C code; the garbage collector does not see them; its full pass empties Python's
    built-in free lists, which later work refills)."""
    makers: list[Callable[[], object]] = [contextvars.copy_context]  # every task's
    with contextlib.suppress(RuntimeError):  # no running loop: no future to wait on
        future = asyncio.get_running_loop().create_future()
        makers.append(future.__await__)  # asyncio's FutureIter: every ``await future``
    with contextlib.suppress(ImportError):  # aiohttp without its C extensions
        parser: Any = importlib.import_module("aiohttp._http_parser")  # no stubs
        # The parsed request line and headers of every upgrade and of every response.
        makers.append(lambda: parser.RawRequestMessage(*[None] * 10))
        makers.append(lambda: parser.RawResponseMessage(None, 0, "", *[None] * 6))
    # Every request's headers (aiohttp's parser) and every response's.
    makers += [multidict.CIMultiDict, lambda: multidict.CIMultiDictProxy(multidict.CIMultiDict())]
    # Cython keeps the scopes of its closures and generators on free lists too
    # (SQLAlchemy's result rows, aiohttp's websocket reader); made without argument.
    types: list[type] = [object]
    while types:
        a_type = types.pop()
        types += type.__subclasses__(a_type)
        if a_type.__name__.startswith("__pyx_scope_struct"):
            makers.append(a_type)
    return makers


def renew_free_lists(makers: list[Callable[[], object]] | None = None) -> None:
    """Make the C free lists hold objects in the arenas that stay.

    A free list keeps the last few hundred instances a type freed, for reuse; after
    a fleet left they are instances the fleet freed, one or a few in each of its
    arenas, and an arena goes back to the system only once nothing in it is alive:
    these alone kept dozens (measured with bench/memory_per_connection.py's pool
    walker, docs/memory-walker.md). So, for each type: take everything its list holds
    and make many more, then free them highest address first: Linux maps the arenas
    top down, so the highest are the oldest, start-up's (none of 153 arenas made
    after start-up lay above the lowest of them, measured); freed first, those fill
    the list, and the rest go back to their arenas. Run after a full collection,
    when the arenas the fleet used are empty. Costs ~100 ms (the server's ~24
    free-listed types; ~250 ms with PostgreSQL's driver, 44), once a fleet left,
    when few are connected."""
    for make in _free_listed() if makers is None else makers:
        try:
            made = sorted((make() for _ in range(FREE_LIST_RENEWAL)), key=id)
        except Exception:  # memory is not worth a failure: the watcher goes on
            log.exception("renewing the free list of %r failed", make)
            continue
        while made:
            made.pop()


#: What ``shrink`` rebuilds.
Table = MutableSet[Any] | MutableMapping[Any, Any]


def shrink(table: Table) -> None:
    """Rebuild a set or dict in place at the size of what it holds now.

    A dict or set never shrinks when entries leave: one that held 18,000
    connections keeps its table (about 1 MiB) after they are gone. Emptying it
    frees the table; putting the entries back allocates one sized for them.

    A dict is told from a set by its concrete type first: ``isinstance(a_set,
    MutableMapping)`` asks every registered mapping class and leaves a weak reference
    to ``set`` in each one's negative cache (~300 small objects, measured), made
    when a fleet leaves and kept for good, in arenas the fleet would give back."""
    if isinstance(table, dict) or (
        not isinstance(table, set) and isinstance(table, MutableMapping)
    ):
        items = list(table.items())
        table.clear()
        table.update(items)
    else:
        members = set(table)
        table.clear()
        table |= members


def grown_tables(loop: asyncio.AbstractEventLoop, server: web.Server) -> list[Table]:
    """The tables asyncio and aiohttp keep of every task, transport and connection:
    they grow with a fleet and keep their size after it (``shrink``). With 18,000
    connections, the weak set of every task (two a connection) keeps a 2 MiB table
    once they are gone, and the loop's transports, its selector's descriptors and
    aiohttp's connections ~0.6 MiB each (``sys.getsizeof`` of a set emptied of
    36,000, a dict of 18,000). They are private attributes: one that is not there
    (another Python, another loop) is left out."""
    every_task = getattr(asyncio.tasks, "_all_tasks", None)  # asyncio.all_tasks()'
    candidates = [
        getattr(every_task, "data", None),  # a WeakSet's set of references
        getattr(getattr(loop, "_transports", None), "data", None),  # WeakValueDictionary's
        getattr(getattr(loop, "_selector", None), "_fd_to_key", None),
        getattr(server, "_connections", None),
    ]
    found: list[Table] = [table for table in candidates if isinstance(table, set | dict)]
    return found


def shrink_all(tables: list[Table]) -> None:
    for table in tables:
        shrink(table)


def count_open_files() -> int:
    """The process's open descriptors: since Linux 6.2 the size of ``/proc/self/fd``
    (one ``stat``, ~60 µs with 18,000 open, measured), before that a listing (~40 ms
    with 18,000 open, and far longer in a thread while the loop is busy: the
    listing takes the GIL back after every entry)."""
    try:
        size = os.stat("/proc/self/fd").st_size
        return size if size > 0 else len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: no cheap count; the socket count stands alone
        return 0


def open_files_counted_by_size() -> bool:
    try:
        return os.stat("/proc/self/fd").st_size > 0
    except OSError:
        return False


@dataclass
class FleetFreezer:
    """Keeps what a server holds out of the garbage collector's full passes
    (``gc.freeze``), in the server's own process only.

    A full collection walks every tracked object: with 18,000 connections held
    (~200 objects each) one stalls the loop for about a second. Freezing the fleet
    as it connected was not enough: every heartbeat (each connection's, every 20 s)
    replaces the objects a waiting connection holds (its read's future, its timers,
    the coroutines' state), which live until the next one, so survive the young
    collections; Python then ran a full pass each time a quarter more had survived,
    every few seconds, over all of them (80-350 ms each with 18,000 held, measured:
    the slowest status changes to consoles waited on them). So every ``interval_s``,
    while ``min_held`` connections or more are held, the young generations are
    collected (their garbage freed, not frozen: a few ms, 12 ms at most with 18,000
    held, logged) and everything alive is frozen (a list splice). What dies later by
    its reference count is freed as usual; a cycle that becomes garbage once frozen
    (a closed connection leaves ~31 aiohttp and asyncio objects in cycles) waits for
    ``collect_all``: one pass over everything once a quarter of the frozen fleet has
    left (the collector's own proportion), or when a fleet leaves
    (``OpenFilesGuard.trim_if_left``)."""

    min_held: int = 500
    interval_s: float = 1.0
    #: Connections held at the last freeze, and closed since.
    frozen_held: int = 0
    left_since: int = 0

    def pace(self, held: int) -> None:
        """Called every ``interval_s`` with the connections held now."""
        if self.left_since >= max(self.min_held, self.frozen_held // 4):
            self.collect_all(held)
            # What that pass freed stays mapped (glibc) until trimmed.
            trim_heap(collect=False)
        elif held >= self.min_held:
            gc.collect(1)
            gc.freeze()
            self.frozen_held = held

    async def run(self, guard: OpenFilesGuard) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.pace(guard.websockets)

    def left(self) -> None:
        self.left_since += 1

    def collect_all(self, held: int) -> None:
        """A full collection over everything, then everything alive frozen again."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.frozen_held, self.left_since = held, 0


@dataclass
class OpenFilesGuard:
    """Tracks how near the process is to its open-files limit.

    The exact count (``/proc/self/fd``) is read every ``SAMPLE_S`` seconds by one
    task; between samples, each admission adds the websockets opened since, so the
    check per connection costs no system call."""

    limit: int
    warn_ratio: float = 0.9
    #: Descriptors kept free for the database, logs and REST requests.
    reserve: int = 200
    other_files: int = 0
    websockets: int = 0
    #: The most websockets held since the heap was last trimmed.
    peak: int = 0
    warned: bool = False
    #: Called before the heap is trimmed: each rebuilds tables the fleet grew.
    before_trim: list[Callable[[], None]] = field(default_factory=list)
    #: Set by ``serve()`` (the server's own process): see FleetFreezer.
    freezer: FleetFreezer | None = None
    #: The site's TCP connections, closing ones included (set by RunningServer): a
    #: connection whose websocket is released holds its memory (TLS state, aiohttp's
    #: handler) until its TLS shutdown ends, up to 30 s later.
    tcp_connections: Callable[[], int] | None = None
    #: Awaited after a fleet left: each drops long-lived things the fleet made (see
    #: ``drop_fleet_leftovers``).
    after_fleet_left: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    SAMPLE_S = 5.0
    #: After a fleet left, its memory is given back once more this long after the
    #: first time (``settle``).
    SETTLE_S = 10.0
    #: When ``settle`` is due (monotonic), or None.
    settle_at: float | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def for_this_process(cls) -> OpenFilesGuard:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        return cls(limit=limit, other_files=count_open_files())

    @property
    def open_files(self) -> int:
        return self.other_files + self.websockets

    @property
    def warn_at(self) -> int:
        return int(self.limit * self.warn_ratio)

    @property
    def refuse_at(self) -> int:
        return self.limit - self.reserve

    @property
    def near_cap(self) -> bool:
        """At the warning level, or refusing (a small limit has a small reserve left)."""
        return self.open_files >= self.warn_at or self.open_files + 1 >= self.refuse_at

    def admit(self) -> bool:
        """Called for every new websocket; False: refuse it (near the cap)."""
        if self.open_files + 1 >= self.refuse_at:
            return False
        self.websockets += 1
        self.peak = max(self.peak, self.websockets)
        self._check()
        return True

    def release(self) -> None:
        self.websockets -= 1
        if self.freezer is not None:
            self.freezer.left()
        if self.warned and self.open_files < int(self.limit * (self.warn_ratio - 0.05)):
            self.warned = False
            log.warning(
                "open files back to %d of %d: below the warning level", self.open_files, self.limit
            )

    def sample(self, counted: int | None = None, held: int | None = None) -> None:
        """Take an exact count (``counted``, if the caller made it elsewhere while
        ``held`` websockets were open: the most seen while it counted, so that a
        count that took a while never makes the other files more than they are)."""
        if counted is None:
            counted, held = count_open_files(), self.websockets
        if counted:
            self.other_files = max(0, counted - max(held or 0, self.websockets))
        self._check()

    def _check(self) -> None:
        if self.near_cap and not self.warned:
            self.warned = True
            log.warning(
                "open files at %d of the limit %d (%d %%): new connections are refused "
                "from %d on; raise the limit (ulimit -n, LimitNOFILE) or add a node",
                self.open_files,
                self.limit,
                100 * self.open_files // self.limit,
                self.refuse_at,
            )

    def stats(self) -> dict[str, Any]:
        return {
            "open_files": self.open_files,
            "open_files_limit": self.limit,
            "open_files_near_cap": self.near_cap,
            "tcp_connections": self.held(),
        }

    def held(self) -> int:
        """Connections still holding memory: websockets, and TCP connections closing."""
        tcp = self.tcp_connections() if self.tcp_connections is not None else 0
        return max(self.websockets, tcp)

    async def watch(self) -> None:
        """Sample every ``SAMPLE_S`` until ``stop``. Stopped between samples, never
        cancelled inside one: a sample may be closing the store's pooled connections
        (``drop_fleet_leftovers``), and a cancellation there left asyncpg's close half
        done and logged by SQLAlchemy as an error (seen when a node stopped just as
        its fleet had left)."""
        by_size = open_files_counted_by_size()
        while not await self._stopped_within(self.SAMPLE_S):
            held = self.websockets
            if by_size:
                self.sample(count_open_files(), held)
            else:
                # A listing off the loop: on it, ~40 ms with 18,000 entries, a stall
                # every 5 s for every frame in flight.
                counted = await asyncio.to_thread(count_open_files)
                self.sample(counted, held)
            await self.after_sample(time.monotonic())

    def stop(self) -> None:
        """``watch`` returns once its sample in progress, if any, is done."""
        self._stopping.set()

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def after_sample(self, now: float) -> None:
        """What a sample may start: giving memory back (``trim_if_left``, then
        ``drop_fleet_leftovers``), or its second time (``settle``)."""
        if self.trim_if_left():
            if self.after_fleet_left:
                await self.drop_fleet_leftovers()
            self.settle_at = now + self.SETTLE_S
        elif self.settle_at is not None and now >= self.settle_at:
            self.settle_at = None
            await self.settle()

    async def settle(self) -> None:
        """Give back, a while after a fleet left, what it freed after the first time
        (``drop_fleet_leftovers`` once more): the last-seen times of 18,000 devices
        leaving at once are written in batches after it, through a new pool of the
        store, whose connections fill their page caches; and a connection whose TLS
        shutdown ended after that collection was frozen with it
        (``FleetFreezer.collect_all``), garbage no other pass would see (measured at
        18,000, two runs: 131 -> 88 and 197 -> 85 MiB). Not while a new fleet is
        arriving: its own leaving will do it."""
        if self.held() < TRIM_MIN_LEFT:
            await self.drop_fleet_leftovers(again=True)

    async def drop_fleet_leftovers(self, *, again: bool = False) -> None:
        """After a fleet left: what it made that lives on is dropped (``after_fleet_left``:
        the store's pooled connections and compiled statements), then collected and
        the heap trimmed. Remade at their next use, they land in the arenas that
        stayed (see ``trim_if_left``)."""
        started, before = time.perf_counter(), resident_mib()
        for drop in self.after_fleet_left:
            try:
                await drop()
            except Exception:  # memory is not worth a failure: the store works on
                log.exception("dropping what a fleet left failed")
        self._collect_everything(self.held())
        # Refilled by the drops' own work (their awaits, the new pool's futures).
        renew_free_lists()
        # Last: on the C heap (PYTHONMALLOC=malloc, the server's default) the
        # renewal's thousands of objects are freed there too (measured with
        # bench/memory_per_connection.py at 18,000: trimmed before it, 5 MiB more).
        trim_heap(collect=False)
        # More than one argument: with one, logging asks ``isinstance(arg, Mapping)``, whose
        # first answer for a type leaves ~160 weak references in the ABCs' caches,
        # kept for good and made now, after the trim, in arenas that would go back.
        log.info(
            "what the fleet left dropped%s (%d held): %s -> %s MiB (%.0f ms)",
            " again" if again else "",
            self.held(),
            _mib(before),
            _mib(resident_mib()),
            1000 * (time.perf_counter() - started),
        )

    def _collect_everything(self, held: int) -> None:
        """A full collection, over the frozen fleet too where there is one."""
        if self.freezer is not None:
            self.freezer.collect_all(held)
        else:
            gc.collect()

    def trim_if_left(self) -> bool:
        """Give memory back once ``TRIM_AFTER_LEAVING`` connections have left since
        the last time, or more than remain (at least ``TRIM_MIN_LEFT``): the tables
        the fleet grew, then the heap.

        A connection has left once its TCP connection is closed, not when its
        websocket is released: until its TLS shutdown ends it holds its memory, and a
        collection before that froze it (``FleetFreezer``) as garbage no later pass
        would see. The second rule is for the end of a fleet leaving at once, seen by
        a sample with a few hundred still held; without it those stayed until 1,000
        more had come and gone (measured at 18,000 devices: ~11,700 connections'
        objects left frozen after their fleet left, 850 MB not given back).

        Python gives an arena (1 MiB) back only once every object in it is gone, and
        a small object made after the fleet's arenas were (any of its time) keeps one.
        So the collection comes first, freeing the fleet's arenas, and the tables are
        rebuilt after it, in the arenas that stayed; and the interpreter's type
        attribute cache (4,096 entries, each holding the name looked up: strings the
        fleet's frames were decoded into) is emptied (measured at 2,000 devices: 2-3
        of ~35 arenas; the ABC cache of ``shrink``, ~300 objects, before its fix; the
        C free lists, ``renew_free_lists``; and see ``drop_fleet_leftovers``). True: a
        fleet left (a full collection ran)."""
        held = self.held()
        left = self.peak - held
        if left < TRIM_AFTER_LEAVING and not (left >= TRIM_MIN_LEFT and left >= held):
            return False
        started, before = time.perf_counter(), resident_mib()
        self.peak = held
        # The full collection only once more have left than remain: a fleet leaving,
        # not the churn of a big one, whose collection would stall the loop in
        # proportion to the connections still held.
        collect = left >= held
        if collect:
            sys._clear_type_cache()
            self._collect_everything(held)
            renew_free_lists()
        for compact in self.before_trim:
            compact()
        trim_heap(collect=False)
        log.info(
            "memory given back: %d connections gone, %d held; tables rebuilt, %s, heap "
            "trimmed: %s -> %s MiB (%.0f ms)",
            left,
            held,
            "full garbage collection" if collect else "no full collection",
            _mib(before),
            _mib(resident_mib()),
            1000 * (time.perf_counter() - started),
        )
        return collect


def own_the_collector(guard: OpenFilesGuard) -> asyncio.Task[None]:
    """For a process that is the server alone (``serve``; the memory benchmark runs
    the same path): its start-up frozen, then what it holds frozen every second
    (``FleetFreezer``), whose full passes the trim also runs. Returns the freezer's
    task (cancel it before stopping the server)."""
    freeze_start_up()
    guard.freezer = FleetFreezer()
    return asyncio.create_task(guard.freezer.run(guard), name="fleet-freezer")


def freeze_start_up() -> None:
    """Move every object alive now out of the garbage collector's sight (gc.freeze).

    Called once the server is listening: the modules, the app and the store stay for
    the process's life, yet every full collection traversed them again (half of one
    collection's ~180 ms with 2,000 connections held). Garbage first, so none of it
    is kept for good."""
    gc.collect()
    gc.freeze()


#: The application's guard (a key of its own: this module, not appkeys, owns it).
OPEN_FILES = web.AppKey("open_files", OpenFilesGuard)


#: How long a stop waits for the watcher's sample in progress.
WATCH_STOP_S = 15.0


async def watch_open_files(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one task for the whole process re-counts the open files."""
    guard = app[OPEN_FILES]
    task = asyncio.create_task(guard.watch(), name="open-files-watch")
    yield
    guard.stop()
    try:
        await asyncio.wait_for(task, WATCH_STOP_S)
    except TimeoutError:  # wait_for cancelled it: a sample stuck on a lost database
        log.warning("the open-files watcher did not stop within %.0f s", WATCH_STOP_S)
