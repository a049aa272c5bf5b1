"""One process at scale (signaling_server/limits.py): the open-files guard warns near
the cap, the server refuses new websockets cleanly before it and says so in
/api/v1/health; every TLS connection of the process reads into one buffer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import math
import os
import socket
import ssl
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from peer.signaling import pinned, ws_url
from signaling_server import limits
from signaling_server.app import SOCKETS
from signaling_server.appkeys import STORE
from signaling_server.store import Store
from tests.conftest import Lab
from tests.signaling_server.wire import clients, enrol, hub_of, small_lab


def test_the_guard_warns_at_90_percent_and_refuses_before_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = limits.OpenFilesGuard(limit=1000, reserve=50, other_files=10)
    with caplog.at_level(logging.WARNING, logger="signaling_server.limits"):
        admitted = 0
        while guard.admit():
            admitted += 1
    assert admitted == 1000 - 50 - 10 - 1
    assert guard.near_cap
    warnings = [r.getMessage() for r in caplog.records if "open files at" in r.getMessage()]
    assert len(warnings) == 1  # once, not for every connection past the level
    assert "of the limit 1000" in warnings[0]
    for _ in range(admitted):
        guard.release()
    assert guard.stats()["open_files_near_cap"] is False
    assert guard.admit()


def test_the_open_files_count_is_exact_and_a_slow_one_never_inflates_the_others() -> None:
    opened = [socket.socket() for _ in range(50)]
    try:
        # stat's size (Linux 6.2+) or a listing, which counts its own descriptor too.
        assert limits.count_open_files() - len(os.listdir("/proc/self/fd")) in (0, -1)
    finally:
        for sock in opened:
            sock.close()
    guard = limits.OpenFilesGuard(limit=1000, websockets=10)
    # Counted while 500 websockets were open (a fleet leaving meanwhile): the other
    # files are the 100 left over then, not 590 (which would refuse connections).
    guard.sample(600, held=500)
    assert guard.other_files == 100


async def test_the_server_refuses_a_websocket_near_its_cap_and_says_so(lab: Lab) -> None:
    assert lab.server.app is not None
    guard = lab.server.app[limits.OPEN_FILES]
    # As if the process held all but the reserve: the next websocket is one too many.
    guard.limit = guard.open_files + guard.reserve + 1
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(lab.url), ssl=pinned(lab.fingerprint))
        assert refused.value.status == 503
        async with http.get(lab.url + "/api/v1/health", ssl=pinned(lab.fingerprint)) as response:
            health = await response.json()
    assert health["open_files_near_cap"] is True
    assert health["open_files_limit"] == guard.limit
    assert health["open_files"] == guard.open_files


async def test_health_counts_open_websockets(lab: Lab) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(lab.url), ssl=pinned(lab.fingerprint)) as ws:
            await ws.receive_str(timeout=10)  # the challenge: the socket is held
            async with http.get(lab.url + "/api/v1/health", ssl=pinned(lab.fingerprint)) as r:
                holding = await r.json()
        assert holding["open_files_near_cap"] is False
        assert holding["open_files"] >= holding["connections"] >= 1
        # The websocket's connection and this request's, counted by aiohttp.
        assert holding["tcp_connections"] >= 2


async def test_each_websocket_pings_on_its_own_schedule(tmp_path: Path) -> None:
    """aiohttp rounds a timer longer than 5 s up to a whole second unless told not
    to: every connection's 20 s heartbeat fell on the same instant (~900 pings in one
    loop iteration every second with 18,000 held). The server tells it not to."""
    async with small_lab(tmp_path, heartbeat_s=20.0) as lab, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(lab.url), ssl=pinned(lab.fingerprint))
        try:
            await ws.receive_str(timeout=10)  # the challenge: the socket is held
            assert lab.server.app is not None
            (server_side,) = lab.server.app[SOCKETS]
            # aiohttp's own attribute: when the next ping goes out (loop time).
            when = getattr(server_side, "_heartbeat_when")  # noqa: B009
            assert when != math.ceil(when)
        finally:
            await ws.close()


class _Held(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def test_tls_connections_share_one_read_buffer(lab: Lab) -> None:
    """The server started (RunningServer) patched asyncio's TLS protocol for the whole
    process: these client connections read into the one buffer too."""
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    held: list[tuple[asyncio.BaseTransport, _Held]] = []
    for _ in range(2):
        held.append(await loop.create_connection(_Held, "127.0.0.1", lab.server.port, ssl=context))
    try:
        # asyncio's own attribute: the TLS protocol under the transport.
        protocols: list[Any] = [getattr(t, "_ssl_protocol") for t, _ in held]  # noqa: B009
        buffers = [p._ssl_buffer for p in protocols]
        assert buffers[0] is buffers[1]  # one buffer, not 256 KiB each
        assert len(buffers[0]) == 256 * 1024
    finally:
        for transport, protocol in held:
            transport.close()
            await protocol.lost


def test_shrink_gives_a_grown_table_its_size_back_and_keeps_its_entries() -> None:
    """A dict or set keeps the table a fleet grew after the fleet left; shrink rebuilds
    it in place (the same object: others hold references to it)."""
    table = {f"dev-{i}": i for i in range(20_000)}
    members = set(table)
    for i in range(3, 20_000):
        del table[f"dev-{i}"]
        members.discard(f"dev-{i}")
    grown_dict, grown_set = sys.getsizeof(table), sys.getsizeof(members)
    same_dict, same_set = table, members
    limits.shrink(table)
    limits.shrink(members)
    assert table is same_dict
    assert members is same_set
    assert table == {"dev-0": 0, "dev-1": 1, "dev-2": 2}
    assert members == {"dev-0", "dev-1", "dev-2"}
    assert sys.getsizeof(table) < grown_dict // 100
    assert sys.getsizeof(members) < grown_set // 100


async def test_the_fleets_tables_are_compacted_before_the_heap_is_trimmed(lab: Lab) -> None:
    """The open-files watcher runs the hub's compaction (and the sockets') before it
    trims; a compacted hub still routes to the devices online."""
    assert lab.server.app is not None
    hub = hub_of(lab.server)
    guard = lab.server.app[limits.OPEN_FILES]
    assert hub.compact in guard.before_trim
    async with clients(lab) as c:
        device = await enrol(lab, name="Compacted")
        wire = await c.device(device)
        for compact in guard.before_trim:
            compact()
        assert set(hub.devices_online) == {device.device_id}
        assert len(lab.server.app[SOCKETS]) == 1
        await wire.report()  # answered: the connection is still the hub's


async def test_asyncios_and_aiohttps_own_tables_are_compacted_too(lab: Lab) -> None:
    """Every task's weak set, the loop's transports and its selector's descriptors,
    aiohttp's connections: all four are found (a Python or aiohttp that renamed one
    fails here, not in silence), and the watcher's compaction shrinks them."""
    assert lab.server.app is not None
    assert lab.server.runner is not None
    assert lab.server.runner.server is not None
    guard = lab.server.app[limits.OPEN_FILES]
    loop = asyncio.get_running_loop()
    assert len(limits.grown_tables(loop, lab.server.runner.server)) == 4
    every_task: set[Any] = getattr(asyncio.tasks, "_all_tasks").data  # noqa: B009

    async def fleet_of_tasks() -> None:
        tasks = [asyncio.ensure_future(asyncio.sleep(0)) for _ in range(20_000)]
        for task in tasks:
            await task

    await fleet_of_tasks()  # done and gone: the table stays as it grew
    grown = sys.getsizeof(every_task)
    for compact in guard.before_trim:
        compact()
    assert sys.getsizeof(every_task) < grown // 10


async def test_the_server_issues_no_tls_session_tickets(lab: Lab) -> None:
    """Our clients never resume a TLS session: the server sends no TLS 1.3 tickets
    (work and bytes on every handshake for nothing)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.server.port, ssl=context)
    try:
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        # The whole answer read: tickets, if any, come before the first record of data.
        answer = await asyncio.wait_for(reader.read(), 30)
        assert answer.startswith(b"HTTP/1.1 200")
        tls_object = writer.get_extra_info("ssl_object")
        assert tls_object.version() == "TLSv1.3"
        session = tls_object.session
        assert session is None or not session.has_ticket
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def test_a_fleet_leaving_to_its_last_is_collected_and_trimmed_while_churn_is_only_trimmed() -> None:
    """After 1,000 left, or the last ones however few: the tables rebuilt and the heap
    trimmed; the full garbage collection only once more have left than remain (its
    stall grows with those)."""
    guard = limits.OpenFilesGuard(limit=100_000)
    compacted: list[int] = []
    guard.before_trim.append(lambda: compacted.append(guard.websockets))
    full_collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full_collections.append(guard.websockets)

    gc.callbacks.append(seen)
    gc.disable()  # no automatic collection in between: only the guard's count
    try:
        guard.peak, guard.websockets = 18_000, 17_500
        guard.trim_if_left()  # 500 left: nothing yet
        assert compacted == []
        guard.websockets = 17_000  # 1,000 left, 17,000 remain: churn
        guard.trim_if_left()
        assert compacted == [17_000]
        assert full_collections == []
        assert guard.peak == 17_000
        guard.websockets = 3_000  # most of the fleet gone
        guard.trim_if_left()
        assert compacted == [17_000, 3_000]
        assert full_collections == [3_000]
        guard.trim_if_left()  # nobody left since
        assert compacted == [17_000, 3_000]
        guard.websockets = 300
        guard.trim_if_left()
        guard.websockets = 0  # the last 300: fewer than 1,000, yet the fleet is gone
        guard.trim_if_left()
        assert compacted == [17_000, 3_000, 300, 0]
        assert full_collections == [3_000, 300, 0]
        guard.trim_if_left()  # nobody there, nobody left since
        assert compacted == [17_000, 3_000, 300, 0]
    finally:
        gc.enable()
        gc.callbacks.remove(seen)


def test_a_connection_closing_after_its_websocket_is_released_is_still_held() -> None:
    """Its memory (TLS state, aiohttp's handler) goes with its TCP connection, up to a
    TLS shutdown time-out after the websocket: collected before, it would be frozen as
    garbage no later pass sees. The trim waits for it."""
    guard = limits.OpenFilesGuard(limit=100_000)
    closing = 18_000
    guard.tcp_connections = lambda: closing
    compacted: list[int] = []
    guard.before_trim.append(lambda: compacted.append(guard.held()))
    guard.peak, guard.websockets = 18_000, 0  # every websocket released, none closed
    guard.trim_if_left()
    assert compacted == []
    assert guard.stats()["tcp_connections"] == 18_000
    closing = 0
    guard.trim_if_left()
    assert compacted == [0]


def _printed_by_own_process(code: str) -> list[str]:
    """What ``code`` prints, run by a Python of its own: the collector's freezing is
    process-wide, and the test process keeps its collector as it is."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_the_start_up_is_frozen_after_its_garbage_is_collected() -> None:
    """In a process of its own, as ``serve`` does it (a test process keeps its
    collector): garbage made before is freed, what lives is out of the collector's
    sight."""
    code = (
        "import gc, weakref\n"
        "from signaling_server import limits\n"
        "class Node: pass\n"
        "cycle = Node(); cycle.me = cycle; gone = weakref.ref(cycle); del cycle\n"
        "gc.disable()\n"
        "limits.freeze_start_up()\n"
        "print(gone() is None, gc.get_freeze_count())\n"
    )
    collected, frozen = _printed_by_own_process(code)
    assert collected == "True"
    assert int(frozen) > 10_000


def test_a_held_fleet_is_frozen_young_garbage_first_and_collected_once_it_left() -> None:
    """In a process of its own (freezing is process-wide): while enough connections
    are held, each pace collects the young generations, then freezes what is alive,
    so garbage made since is freed, not frozen; connections that close leave their
    cycles frozen until a quarter of the fleet has left, then one pass over
    everything frees them. Fewer held than ``min_held``: nothing frozen."""
    code = (
        "import gc, weakref\n"
        "from signaling_server import limits\n"
        "class Conn:\n"
        "    def __init__(self): self.me = self\n"
        "gc.disable()\n"
        "freezer = limits.FleetFreezer(min_held=100)\n"
        "few = [Conn() for _ in range(50)]\n"
        "freezer.pace(len(few))\n"
        "none_frozen = gc.get_freeze_count() == 0\n"
        "held = [Conn() for _ in range(150)]\n"
        "young_garbage = Conn(); dead = weakref.ref(young_garbage); del young_garbage\n"
        "freezer.pace(len(held))\n"
        "frozen = gc.get_freeze_count()\n"
        "garbage_freed = dead() is None\n"
        "gone = [weakref.ref(c) for c in held]\n"
        "del held\n"
        "gc.collect()\n"
        "kept = sum(r() is not None for r in gone)\n"  # frozen: a collection skips them
        "for _ in range(150): freezer.left()\n"
        "freezer.pace(0)\n"
        "freed = sum(r() is None for r in gone)\n"
        "print(none_frozen, frozen > 150, garbage_freed, kept, freed)\n"
    )
    none_frozen, frozen, garbage_freed, kept, freed = _printed_by_own_process(code)
    assert (none_frozen, frozen, garbage_freed) == ("True", "True", "True")
    assert int(kept) == 150
    assert int(freed) == 150


def test_memory_is_given_back_again_a_while_after_a_fleet_left_unless_a_new_one_came() -> None:
    """In a process of its own (freezing is process-wide): a connection whose shutdown
    ends after the fleet's collection was frozen by it; the second pass, ``SETTLE_S``
    after the first and not before, frees it, and drops the store's pool again. If a
    new fleet is arriving by then (``TRIM_MIN_LEFT`` held or more), the second pass is
    not made: its own leaving will."""
    code = (
        "import asyncio, gc, weakref\n"
        "from signaling_server import limits\n"
        "class Conn:\n"
        "    def __init__(self): self.me = self\n"
        "def late_connection():\n"
        "    late = Conn(); gc.freeze(); dead = weakref.ref(late)\n"
        "    return late, dead\n"
        "async def main():\n"
        "    out = []\n"
        "    for arriving in (0, limits.TRIM_MIN_LEFT):\n"
        "        guard = limits.OpenFilesGuard(limit=100_000)\n"
        "        guard.freezer = limits.FleetFreezer()\n"
        "        guard.peak = 5_000\n"
        "        drops = []\n"
        "        async def drop(): drops.append(guard.websockets)\n"
        "        guard.after_fleet_left.append(drop)\n"
        "        await guard.after_sample(0.0)\n"  # the fleet left: first pass
        "        late, dead = late_connection()\n"  # closed after it, frozen by it
        "        del late\n"
        "        guard.websockets = arriving\n"
        "        await guard.after_sample(guard.SETTLE_S - 0.1)\n"
        "        early = dead() is None\n"
        "        await guard.after_sample(guard.SETTLE_S)\n"
        "        out += [early, dead() is None, guard.settle_at, len(drops)]\n"
        "        gc.unfreeze(); gc.collect()\n"
        "    print(*out)\n"
        "gc.disable()\n"
        "asyncio.run(main())\n"
    )
    printed = _printed_by_own_process(code)
    # The store's pool dropped again too (the fleet's last writes remade it).
    assert printed == ["False", "True", "None", "2", "False", "False", "None", "1"]


def test_shrinking_a_set_leaves_nothing_in_the_mapping_abcs_caches() -> None:
    """Telling a set from a dict must not go through the mapping ABCs: each would
    keep a weak reference to the set's type in its negative cache, made when a fleet
    leaves and kept for good (in an arena the fleet would otherwise give back)."""
    from collections.abc import Mapping, MutableMapping

    get_dump = importlib.import_module("_abc")._get_dump  # the C ABCs' caches

    class Members(set[str]):
        pass

    class Table(dict[str, int]):
        pass

    members, table = Members({"a", "b"}), Table(a=1)
    limits.shrink(members)
    limits.shrink(table)
    assert members == {"a", "b"}
    assert table == {"a": 1}
    for abc_class in (Mapping, MutableMapping):
        _, cache, negative_cache, _ = get_dump(abc_class)
        assert Members not in {ref() for ref in cache | negative_cache}


def test_a_fleet_leaving_is_collected_before_its_tables_are_rebuilt() -> None:
    """Python gives an arena back only once every object in it is gone: the tables
    are rebuilt after the collection has freed the fleet's garbage (built before, they
    could land in a fleet's arena and keep it), and the type attribute cache, which
    holds every name looked up, is emptied. Churn (more remain than left) neither
    collects nor empties it."""

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    class Looked:
        pass

    guard = limits.OpenFilesGuard(limit=100_000)
    garbage_at_compaction: list[bool] = []
    guard.before_trim.append(lambda: garbage_at_compaction.append(gone() is not None))
    name = "".join(["a_name_a_frame", "_was_decoded_into"])  # not interned: its own
    gc.disable()  # no automatic collection in between
    try:
        garbage = Cycle()
        gone = weakref.ref(garbage)
        del garbage
        getattr(Looked, name, None)
        looked_up = sys.getrefcount(name)
        guard.peak, guard.websockets = 18_000, 17_000  # churn
        assert guard.trim_if_left() is False
        assert garbage_at_compaction == [True]
        assert sys.getrefcount(name) == looked_up
        guard.websockets = 0  # the fleet left
        assert guard.trim_if_left() is True
        assert garbage_at_compaction == [True, False]
        assert sys.getrefcount(name) < looked_up
        assert guard.trim_if_left() is False  # nobody left since
    finally:
        gc.enable()


def _free_list_cases() -> list[tuple[str, Any]]:
    parser: Any = importlib.import_module("aiohttp._http_parser")  # no stubs
    return [
        ("asyncio FutureIter", None),  # made from a future of the running loop
        ("aiohttp RawRequestMessage", lambda: parser.RawRequestMessage(*[None] * 10)),
        ("aiohttp RawResponseMessage", lambda: parser.RawResponseMessage(None, 0, "", *[None] * 6)),
    ]


@pytest.mark.parametrize(
    ("kind", "make"), _free_list_cases(), ids=lambda c: c if isinstance(c, str) else ""
)
async def test_a_renewed_free_list_holds_the_highest_addressed_objects_it_was_given(
    kind: str, make: Any
) -> None:
    """After a fleet left, a C free list held instances the fleet freed (each keeping
    one of its arenas). Renewed, it holds the highest-addressed of the objects made
    (start-up's arenas are the highest: Linux maps them top down), the fleet's among
    them: what it gives out next is from those. Had the type no free list of its own,
    Python's allocator would give out the last freed, the lowest: this would fail."""
    if make is None:
        make = asyncio.get_running_loop().create_future().__await__
    fleets = [make() for _ in range(1000)]  # the list is empty now
    del fleets  # the list is full of the fleet's

    made: list[int] = []

    def recorded() -> object:
        made_now = make()
        made.append(id(made_now))
        return made_now

    limits.renew_free_lists([recorded])
    assert len(made) == limits.FREE_LIST_RENEWAL
    given_out = [make() for _ in range(200)]
    highest = set(sorted(made)[-256:])  # no list here keeps more than 255
    assert {id(o) for o in given_out} <= highest, kind


def test_a_free_list_that_cannot_be_renewed_is_logged_and_the_others_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[object] = []

    def refuses() -> object:
        raise TypeError("needs an argument")

    def works() -> object:
        made.append(object())
        return made[-1]

    with caplog.at_level(logging.ERROR, logger="signaling_server.limits"):
        limits.renew_free_lists([refuses, works])
    assert len(made) == limits.FREE_LIST_RENEWAL
    assert "renewing the free list of" in caplog.text


async def test_the_free_lists_renewed_are_those_of_the_servers_libraries() -> None:
    importlib.import_module("aiohttp._websocket.reader_c")  # the server's, loaded
    makers = limits._free_listed()
    kinds = {type(make()).__name__ for make in makers}
    for expected in ("FutureIter", "RawRequestMessage", "RawResponseMessage", "CIMultiDict"):
        assert expected in kinds
    assert "Context" in kinds
    assert any(kind.startswith("__pyx_scope_struct") for kind in kinds)


async def test_what_a_fleet_left_is_dropped_each_in_turn_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = limits.OpenFilesGuard(limit=100_000)
    dropped: list[str] = []

    async def failing() -> None:
        dropped.append("failing")
        raise RuntimeError("the store is gone")

    async def store() -> None:
        dropped.append("store")

    guard.after_fleet_left += [failing, store]
    with caplog.at_level(logging.ERROR, logger="signaling_server.limits"):
        await guard.drop_fleet_leftovers()
    assert dropped == ["failing", "store"]
    assert "dropping what a fleet left failed" in caplog.text


async def test_a_stop_waits_for_the_watchers_sample_instead_of_cancelling_it() -> None:
    """The server's stop (the watcher's cleanup context) lets a sample in progress end:
    cancelled while it closed the store's pooled connections, asyncpg's close was
    left half done and logged as an error."""
    guard = limits.OpenFilesGuard(limit=100_000)
    guard.SAMPLE_S = 0.01
    guard.peak = 5_000  # a fleet left: the first sample drops what it left
    entered, release = asyncio.Event(), asyncio.Event()
    closed: list[bool] = []

    async def closing_the_pool() -> None:
        entered.set()
        await release.wait()
        closed.append(True)

    guard.after_fleet_left.append(closing_the_pool)
    app = web.Application()
    app[limits.OPEN_FILES] = guard
    lifecycle = limits.watch_open_files(app)
    await anext(lifecycle)  # started
    await asyncio.wait_for(entered.wait(), 10)
    stopping = asyncio.create_task(anext(lifecycle, None))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the sample
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert closed == [True]


async def test_the_store_works_on_with_new_connections_once_its_pool_is_dropped(
    tmp_path: Path,
) -> None:
    """The server drops the store's pooled connections and compiled statements after a
    fleet left (they kept the fleet's arenas); the next query opens a new connection
    and compiles again."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        group = await store.create_group("Fleet")
        async with store.engine.connect() as conn:
            before = (await conn.get_raw_connection()).driver_connection
        assert store.engine.sync_engine._compiled_cache
        await store.drop_pooled()
        assert not store.engine.sync_engine._compiled_cache
        assert [g.id for g in await store.groups()] == [group.id]
        async with store.engine.connect() as conn:
            after = (await conn.get_raw_connection()).driver_connection
        assert after is not before
    finally:
        await store.close()


async def test_the_server_drops_its_stores_pool_after_a_fleet_left(lab: Lab) -> None:
    assert lab.server.app is not None
    guard = lab.server.app[limits.OPEN_FILES]
    assert lab.server.app[STORE].drop_pooled in guard.after_fleet_left
