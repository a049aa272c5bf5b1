"""Server memory per idle connection, layer by layer, and whether it comes back.

One server process (a child of this one) and N idle clients in another process, for
four servers, each a layer more than the last:

* ``tls``: a plain asyncio TLS server that holds its sockets (the floor: a socket,
  asyncio's TLS protocol and transport, OpenSSL's state);
* ``ws``: an aiohttp websocket server without TLS;
* ``wss``: the same with TLS;
* ``server``: ours (``RunningServer``, what ``livesupport server`` runs), with real
  devices from ``bench/load/clients.py``'s device worker (challenge signed, status
  report, pings answered).

Every TLS server shares its read buffer (``limits.share_tls_read_buffer``, as ours
does), so the layers compare. For each it prints the RSS per connection, the C heap
per connection (glibc's ``mallinfo2``: bytes in use, bytes free but kept), Python's
per connection (``sys.getallocatedblocks`` and, with ``--trace``, ``tracemalloc``
grouped by the file that allocated), then the clients leave and it prints the RSS
over the next seconds, before and after ``malloc_trim``, against the RSS at start.

``.venv/bin/python -m bench.memory_per_connection --devices 2000`` (``--layers
server`` for ours only; ``--trace`` adds tracemalloc from start-up on, which costs
memory itself: its RSS figures are not the server's, and pymalloc's arena count
reads 0 while it traces; ``--cycles``: what only the garbage collector frees after
the clients left; ``--holders``: what still refers to a connection's objects;
``--relocate``: long-lived caches dropped in turn, the arenas left after each;
``--out``: everything as JSON, glibc's ``malloc_info`` included).

After the clients left it always lists what pins the fleet's arenas: every object
reachable, its arena read from its pool header, those in arenas that held no object
at start-up, by type (a short value for strings, numbers and tuples) and what holds
the first of each kind (with ``--trace``, where it was allocated too). ``--walk``
adds the pool walker (``walk_pools``): every live block of every pymalloc pool of the
arenas that held no block at start-up, read from the pools themselves, so also what
the collector cannot reach (C free lists, interned and cached strings, C buffers), by
type or as raw bytes by size class (with ``--trace``, by allocation site; how, and what
it found: docs/memory-walker.md). The ``server``
layer runs the memory path of ``livesupport server``: start-up frozen, the
``FleetFreezer``'s task, the open-files watcher's trim once the TCP connections
closed.

Python's objects live in pymalloc's 1 MiB arenas, which go back to the system only
once every object in them is gone; the C heap (OpenSSL, Python's objects over 512
bytes) comes back with ``malloc_trim``. ``livesupport server`` runs with
``PYTHONMALLOC=malloc`` (every Python object on the C heap; signaling_server/program.py),
and so does each layer's server process here, unless ``PYTHONMALLOC`` is set (e.g.
``pymalloc``, to compare) or ``--walk`` or ``--relocate``, which read pymalloc's pools.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import multiprocessing
import os
import ssl
import struct
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.faults._restartable import insert_devices, raise_open_files_limit, raw_private_key
from bench.load.clients import CONNECTS_IN_FLIGHT, Worker, device_process
from signaling_server import limits, program, tls
from signaling_server.config import ServerConfig
from signaling_server.store import Store

LAYERS = ("tls", "ws", "wss", "server")


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def rss_kib(pid: int | None = None, field: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])


def heap() -> dict[str, int]:
    """glibc's view: bytes handed out (``in_use``), freed but kept (``free``),
    mapped on their own (``mmapped``), and the pymalloc arenas Python holds."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {
        "rss": rss_kib() * 1024,
        # Anonymous (heaps, arenas, stacks) apart from file-backed (code of the
        # libraries, touched the first time a handshake or a query runs them).
        "rss_anon": rss_kib(field="RssAnon") * 1024,
        "rss_file": rss_kib(field="RssFile") * 1024,
        "c_in_use": info.uordblks + info.hblkhd,
        "c_free": info.fordblks,
        "c_mmapped": info.hblkhd,
        "heap_rss": _smaps_rss("[heap]"),
        "anon_maps_rss": _smaps_rss(""),
        "py_blocks": sys.getallocatedblocks(),
        "py_arenas": pymalloc_arenas(),
        "cpu_ms": int(1000 * time.process_time()),
    }


def malloc_info() -> str:
    """glibc's malloc_info XML: every arena's free chunks by size, its system bytes."""
    libc = ctypes.CDLL("libc.so.6")
    with tempfile.TemporaryFile() as out:
        libc.fdopen.restype = ctypes.c_void_p
        stream = libc.fdopen(os.dup(out.fileno()), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        out.seek(0)
        return out.read().decode()


def _smaps_rss(name: str) -> int:
    """Resident bytes of the mappings called ``name`` ("" : anonymous ones)."""
    total = 0
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            current = head[5] if len(head) > 5 else ""
        elif head[0] == "Rss:" and current == name:
            total += int(head[1]) * 1024
    return total


def _holders(names: tuple[str, ...]) -> dict[str, Any]:
    """For objects of these types still alive: what refers to them, two levels up."""
    gc.collect()
    found: dict[str, Any] = {}
    for o in gc.get_objects():
        name = type(o).__qualname__
        if name not in names:
            continue
        entry = found.setdefault(name, {"alive": 0, "chains": Counter()})
        entry["alive"] += 1
        for r1 in gc.get_referrers(o):
            if isinstance(r1, list) and r1 is not None and len(r1) > 1000:
                continue
            ups = [type(r2).__qualname__ for r2 in gc.get_referrers(r1)][:3]
            entry["chains"][f"{type(r1).__qualname__} <- {ups}"] += 1
    return {
        k: {"alive": v["alive"], "chains": v["chains"].most_common(6)} for k, v in found.items()
    }


def _cycles() -> dict[str, Any]:
    """What only the garbage collector frees (objects in reference cycles), by type:
    what the connections that left keep until a full collection."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    return {"unreachable": found, "kinds": kinds.most_common(25)}


def _arena_pins(start_arenas: set[int]) -> dict[str, Any]:
    """The objects the garbage collector tracks that sit in 1 MiB regions no such
    object sat in at start: what keeps pymalloc's arenas of the fleet alive (a
    hint: strings and numbers are not tracked)."""
    gc.collect()
    pinned: dict[int, Counter[str]] = {}
    for o in _all_tracked():
        region = id(o) >> 20
        if region not in start_arenas:
            pinned.setdefault(region, Counter())[type(o).__qualname__] += 1
    kinds: Counter[str] = Counter()
    for counts in pinned.values():
        kinds.update(counts)
    return {"regions": len(pinned), "kinds": kinds.most_common(20)}


#: pymalloc in 3.11 (64-bit): pools of 16 KiB in arenas of 1 MiB; a pool's header
#: holds the index of its arena at this offset (after ref, freeblock, nextpool, prevpool).
POOL_SIZE = 16 * 1024
_ARENAINDEX_AT = 32
SMALL_REQUEST = 512
_MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT


#: False under ``PYTHONMALLOC=malloc`` (or ``malloc_debug``): objects are on the C heap,
#: and there are no pools to read (reading where one would be crashes).
_USES_PYMALLOC = not os.environ.get("PYTHONMALLOC", "").startswith("malloc")


def _arena_of(o: object) -> int | None:
    """The index of the pymalloc arena ``o`` sits in, or None when it is not in one
    (too big for pymalloc, or static). Read from its pool's header; a header whose
    size class does not fit the object is not a pool's, and gives None."""
    size = sys.getsizeof(o)
    if size > SMALL_REQUEST - 32 or not _USES_PYMALLOC:
        return None
    pool = id(o) & ~(POOL_SIZE - 1)
    index, size_class, _, max_next = (ctypes.c_uint * 4).from_address(pool + _ARENAINDEX_AT)
    block = 16 * (size_class + 1)
    # Static objects (in the interpreter's data) have no pool: what precedes them
    # is anything, so the header must be a pool's header for this object's size.
    if not size <= block <= size + 48 or max_next != POOL_SIZE - block:
        return None
    return int(index)


def _reachable() -> list[Any]:
    """Every object the collector tracks (frozen included), and the untracked ones
    they refer to (strings, numbers, bytes, tuples and dicts of atoms), once each."""
    seen: set[int] = set()
    found: list[Any] = []
    stack = list(_all_tracked())
    while stack:
        o = stack.pop()
        if id(o) in seen or o is seen or o is found or o is stack:
            continue
        seen.add(id(o))
        found.append(o)
        for r in gc.get_referents(o):
            if id(r) not in seen and not gc.is_tracked(r):
                stack.append(r)
    return found


def _site(tb: tracemalloc.Traceback, depth: int = 4) -> str:
    """Where a block was made: the allocating frame, then the nearest frames of the
    project's own code (or the next library frames when none)."""
    frames = list(tb)[::-1]  # newest first
    out = [f"{_short(frames[0].filename)}:{frames[0].lineno}"]
    ours = [f for f in frames[1:] if "/work/main/" in f.filename and "/.venv/" not in f.filename]
    rest = ours or frames[1:]
    out += [f"{_short(f.filename)}:{f.lineno}" for f in rest[: depth - 1]]
    return " <- ".join(out)


def _referrer_chain(o: object, ours: set[int], depth: int = 8) -> str:
    """What refers to ``o``, and to that, ``depth`` levels up (the first referrer at
    each level that is not this analysis's own; a dict shows the key it is under)."""
    # No closures below: a generator naming ``current`` would hold it in a cell.
    chain: list[str] = []
    current: Any = o
    skip = set(ours)
    frame_type = type(sys._getframe())
    for _ in range(depth):
        found = gc.get_referrers(current)
        skip.add(id(found))
        holder = None
        for r in found:
            if id(r) not in skip and type(r) is not frame_type:
                holder = r
                break
        del found
        if holder is None:
            break
        label = type(holder).__qualname__
        if isinstance(holder, dict):
            key = None
            for k, v in holder.items():
                if v is current:
                    key = k
                    break
            label += f"[{str(key)[:40]!r}]" if key is not None else "(as a key)"
        chain.append(label)
        skip.add(id(current))
        current = holder
    return " <- ".join(chain)


def _arenas_of(objects: list[Any]) -> set[int]:
    return {a for o in objects if (a := _arena_of(o)) is not None}


def _short_repr(o: object) -> str:
    """A tuple by the types it holds (its values are often per-connection), else
    the start of its value."""
    if isinstance(o, tuple):
        return (
            "(" + ", ".join(type(x).__qualname__ for x in o[:4]) + (", ...)" if len(o) > 4 else ")")
        )
    return repr(o)[:40]


def _survivors(trace: bool, start_arenas: set[int]) -> dict[str, Any]:
    """What the fleet made that is still held once it left.

    ``blocks`` (tracemalloc on since start-up only): pymalloc's blocks (at most 512
    bytes) traced since start-up, by site. ``fleet_arena_*``: the objects found in the
    arenas that held no object at start-up (``start_arenas``: read from each object's
    pool header), by type and, when traced, site: what pins the fleet's arenas. A
    short value is shown for strings, numbers and bytes (their type says little)."""
    gc.collect()
    blocks: Counter[str] = Counter()
    small = 0
    if trace:
        snap = tracemalloc.take_snapshot()
        # Not what this analysis allocates itself.
        snap = snap.filter_traces([tracemalloc.Filter(False, __file__, all_frames=True)])
        for t in snap.traces:
            if t.size <= SMALL_REQUEST:
                small += 1
                blocks[_site(t.traceback)] += 1
    fleet: dict[int, list[str]] = {}
    examples: dict[str, list[str]] = {}
    one_of: dict[str, Any] = {}
    values: Counter[str] = Counter()
    for o in _reachable():
        arena = _arena_of(o)
        if arena is None or arena in start_arenas:
            continue
        kind = type(o).__qualname__
        if isinstance(o, str | bytes | int | float | tuple):
            kind += f" {_short_repr(o)}"
        tb = tracemalloc.get_object_traceback(o) if trace else None
        if tb is not None and any(f.filename == __file__ for f in tb):
            continue
        what = kind + (f" @ {_site(tb)}" if tb is not None else "")
        fleet.setdefault(arena, []).append(what)
        if len(examples.setdefault(what, [])) < 4:
            examples[what].append(repr(o)[:60])
        if isinstance(o, tuple) and all(isinstance(x, str | int) for x in o):
            values[repr(o)[:60]] += 1
        if what not in one_of:
            one_of[what] = o
    holders: dict[str, str] = {}
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    try:
        ours = {id(one_of), id(fleet), id(examples)}
        for what, _ in Counter(w for objs in fleet.values() for w in objs).most_common(12):
            holders[what] = _referrer_chain(one_of[what], ours)
    finally:
        if frozen:
            gc.freeze()
    pins: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for objs in fleet.values():
        for what in objs:
            pins[what] += 1
            kinds[what.split(" ", 1)[0]] += 1
    return {
        "small_blocks": small,
        "blocks": blocks.most_common(40),
        "start_arenas": len(start_arenas),
        "fleet_arenas": len(fleet),
        "fleet_arena_objects": sum(len(v) for v in fleet.values()),
        "fleet_arena_kinds": kinds.most_common(25),
        "fleet_arena_pins": pins.most_common(60),
        "examples": {what: examples[what] for what, _ in pins.most_common(60)},
        "holders": holders,
        "atom_tuples": values.most_common(20),
        "fleet_arena_sizes": sorted(len(v) for v in fleet.values()),
    }


def _anon_maps() -> list[tuple[int, int, int]]:
    """(size, resident, count) of the anonymous mappings, by size, largest RSS first."""
    by: dict[int, list[int]] = {}
    size = 0
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            size = end - start
            current = head[5] if len(head) > 5 else ""
        elif head[0] == "Rss:" and current == "":
            entry = by.setdefault(size, [0, 0])
            entry[0] += int(head[1]) * 1024
            entry[1] += 1
    return sorted(((s, r, c) for s, (r, c) in by.items()), key=lambda x: -x[1])[:12]


def pymalloc_arenas() -> int:
    """Arenas (1 MiB each in 3.11, ``ARENA_SIZE``) pymalloc holds: from ``sys._debugmallocstats``,
    which writes to the C stderr."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        for line in out.read().decode(errors="replace").splitlines():
            if line.startswith("# arenas allocated current"):
                return int(line.split("=")[1].replace(",", ""))
    return 0


# -- the pool walker: every live pymalloc block, seen by the gc or not ---------------
#
# CPython 3.11's obmalloc.c (64-bit, radix tree on): arenas of 1 MiB mmapped on their
# own (so anonymous mappings, merged by the kernel), pools of 16 KiB aligned on 16 KiB
# inside them, each starting with a ``struct pool_header``:
#   union {block *_padding; uint count;} ref;   offset 0   live blocks in the pool
#   block *freeblock;                           offset 8   first free carved block
#   struct pool_header *nextpool, *prevpool;    16, 24
#   uint arenaindex, szidx;                     32, 36     block size (szidx + 1) * 16
#   uint nextoffset, maxnextoffset;             40, 44     carved below nextoffset
# then blocks from POOL_OVERHEAD (the header rounded to 16) on. A free block's first
# word points to the next free one. An arena whose every pool is empty is unmapped, so
# a pool header found in a mapping belongs to a live arena.

_POOL_OVERHEAD = 48
_SIZE_CLASSES = SMALL_REQUEST // 16
_HAVE_GC = 1 << 14  # Py_TPFLAGS_HAVE_GC
_GC_HEAD = 16  # sizeof(PyGC_Head)
#: Copied pools are at least this long, so that each copy is a bytes object too big for
#: pymalloc: a copy must not itself become a live block of a pool copied after it.
_COPY_AT_LEAST = 1024
ArenaKey = tuple[int, int]  # (arena index, address of its first pool)


def _writable_anonymous_regions() -> array.array[int]:
    """Start and end (flat) of the readable and writable anonymous mappings, where
    pymalloc's arenas are. An array, not a list of tuples: what the walker holds while
    it copies must not be small Python objects sitting in the pools it copies."""
    regions = array.array("Q")
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) > 5 else ""
        if not fields[1].startswith("rw") or (path and not path.startswith("[anon")):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        regions.extend((start, end))
    return regions


def _pool_header(
    pool: int, copied: bytes | None = None
) -> tuple[int, int, int, int, int, int] | None:
    """(count, freeblock, arena index, size class, nextoffset, maxnextoffset) of the
    pool header at ``pool`` (or of its ``copied`` bytes) if it is a consistent one,
    else None (most 16 KiB-aligned addresses of an anonymous mapping are not a
    pool's start)."""
    words: Any = (
        struct.unpack_from("<12I", copied)
        if copied is not None
        else (ctypes.c_uint * 12).from_address(pool)
    )
    count, freeblock = words[0], words[2] | (words[3] << 32)
    index, size_class, next_offset, max_next = words[8], words[9], words[10], words[11]
    if size_class >= _SIZE_CLASSES:
        return None
    size = 16 * (size_class + 1)
    if max_next != POOL_SIZE - size or index >= 1 << 24:
        return None
    carved_end = next_offset - _POOL_OVERHEAD
    if carved_end % size or not size <= carved_end <= POOL_SIZE - _POOL_OVERHEAD:
        return None
    if count > carved_end // size:
        return None
    if freeblock and not (
        pool + _POOL_OVERHEAD <= freeblock < pool + next_offset
        and (freeblock - pool - _POOL_OVERHEAD) % size == 0
    ):
        return None
    return count, freeblock, index, size_class, next_offset, max_next


def _find_pools(copies: list[bytes] | None = None) -> array.array[int]:
    """Every pool header in the anonymous mappings, flat: (address, count, freeblock,
    arena index, size class, nextoffset) six by six. With ``copies``: each pool that
    holds a block is copied as its header is read, and the header read again from the
    copy, so that header and blocks are of one moment (the walker's own temporaries,
    freed between a read and a later copy, would show as live blocks)."""
    regions = _writable_anonymous_regions()
    pools = array.array("Q")
    for i in range(0, len(regions), 2):
        pool = (regions[i] + POOL_SIZE - 1) & ~(POOL_SIZE - 1)
        while pool + POOL_SIZE <= regions[i + 1]:
            header = _pool_header(pool)
            if header is not None and header[0] and copies is not None:
                copied = ctypes.string_at(pool, max(header[4], _COPY_AT_LEAST))
                header = _pool_header(pool, copied)
                if header is not None and header[0]:
                    copies.append(copied)
                del copied
            if header is not None:
                pools.extend((pool, *header[:5]))
            pool += POOL_SIZE
    return pools


def _arena_keys(pools: array.array[int]) -> dict[int, ArenaKey]:
    """Each pool's arena, keyed by its index and its first pool's address: an index is
    reused once its arena was unmapped, the pair not while the arena lives (the pools
    of one arena are within 1 MiB of each other)."""
    by_index: dict[int, list[int]] = {}
    for i in range(0, len(pools), 6):
        by_index.setdefault(pools[i + 3], []).append(pools[i])
    keys: dict[int, ArenaKey] = {}
    for index, addresses in by_index.items():
        first = -1
        for address in sorted(addresses):
            if first < 0 or address - first >= 1 << 20:
                first = address
            keys[address] = (index, first)
    return keys


def arenas_with_blocks() -> set[ArenaKey]:
    """The arenas holding a live block now (the harness's ``mark``): an arena of the
    walk that is not one of these held no block at start-up."""
    collecting = gc.isenabled()
    gc.disable()  # as in walk_pools
    try:
        pools = _find_pools()
    finally:
        if collecting:
            gc.enable()
    keys = _arena_keys(pools)
    return {keys[pools[i]] for i in range(0, len(pools), 6) if pools[i + 1]}


def _known_types() -> dict[int, type]:
    """Every type reachable from ``object`` through ``__subclasses__`` (each readied
    type, C ones included), those of the objects the gc tracks, and their metatypes."""
    found: dict[int, type] = {}
    stack: list[type] = [object, type]
    stack.extend({type(o) for o in _all_tracked()})
    while stack:
        t = stack.pop()
        if id(t) in found:
            continue
        found[id(t)] = t
        stack.extend(type.__subclasses__(t))
        stack.append(type(t))
    return found


def _object_in_block(
    data: bytes, at: int, size: int, types: dict[int, type]
) -> tuple[type, int, int] | None:
    """(type, offset of the object in the block, refcount) when the block at ``at`` of
    ``data`` holds an object of a known type: at its start, or after a PyGC_Head (16
    bytes) for a gc type, or after the managed dict's two pointers and a PyGC_Head for
    a type with a managed dict. Only the offset the type's flags require counts."""
    for offset in (0, _GC_HEAD, 2 * _GC_HEAD):
        if offset + 16 > size:
            break
        refcount, type_address = struct.unpack_from("<qQ", data, at + offset)
        t = types.get(type_address)
        if t is None:
            continue
        flags = t.__flags__
        expected = (_GC_HEAD if flags & _HAVE_GC else 0) + (
            _GC_HEAD if flags & _MANAGED_DICT else 0
        )
        # No check of the size against __basicsize__: a compact str is smaller than it.
        if offset != expected or not 0 <= refcount < 1 << 40:
            continue
        # A gc object kept on a free list is untracked (its _gc_next is 0); refcount 0
        # behind a PyGC_Head that is not: a block of one freed, then reused as a buffer
        # that left these bytes as they were.
        if refcount == 0 and offset and struct.unpack_from("<Q", data, at + offset - 16)[0]:
            return None
        return t, offset, refcount
    return None


def _stale_header(data: bytes, at: int, size: int, types: dict[int, type]) -> str:
    """The type a raw block's bytes still name where an object of it would start: what
    the block held before it was freed and reused as a buffer (a hint, often none)."""
    for offset in (0, _GC_HEAD, 2 * _GC_HEAD):
        if offset + 16 <= size:
            t = types.get(struct.unpack_from("<Q", data, at + offset + 8)[0])
            if t is not None:
                return t.__qualname__
    return ""


def _str_sample(data: bytes, at: int, end: int) -> tuple[bool, str] | None:
    """(interned, value) of a compact str whose object starts at ``at``, read from its
    bytes (PyASCIIObject: length at 16, state at 32, ASCII data at 48; compact
    non-ASCII data at 72), or None when it is not compact or does not fit."""
    length, _, state = struct.unpack_from("<qqI", data, at + 16)
    kind = (state >> 2) & 7
    compact, ascii_only = state & (1 << 5), state & (1 << 6)
    if not compact or kind not in (1, 2, 4) or length < 0:
        return None
    start = at + (48 if ascii_only else 72)
    if start + length * kind > end:
        return None
    raw = data[start : start + length * kind]
    codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    return bool(state & 3), raw.decode(codec, errors="replace")


def _block_site(address: int) -> str | None:
    """Where tracemalloc saw the block at ``address`` allocated (any block, not only an
    object: ``_PyTraceMalloc_GetTraceback`` takes an address), or None."""
    get = ctypes.pythonapi._PyTraceMalloc_GetTraceback
    get.restype = ctypes.py_object
    get.argtypes = (ctypes.c_uint, ctypes.c_size_t)
    frames = get(0, address)
    if not frames:
        return None
    return _site(tracemalloc.Traceback(frames))


def walk_pools(start_arenas: set[ArenaKey], *, examples: int = 4) -> dict[str, Any]:
    """Every live block of every pool of the arenas that held no block at start-up
    (``start_arenas``, from ``arenas_with_blocks``), by what it is: an object of a
    known type (``str`` with its value; ``(refcount 0)``: on a free list; ``,
    unseen``: not among what the gc traversal reaches, ``_reachable``) or raw bytes by
    size class (C buffers: dict keys, list items, extensions' ``PyMem_Malloc``), the
    first 32 bytes in hex for a few. With tracemalloc on, each kind is split by where
    it was allocated."""
    # Garbage from before collected first, and no collection while the pools are read:
    # one in the middle would free blocks already read as live.
    gc.collect()
    reported = pymalloc_arenas()
    # The pools are copied before anything else is made: the walker's own small objects
    # would otherwise be found in them. Copies longer than pymalloc's 512 bytes.
    copies: list[bytes] = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        pools = _find_pools(copies)
    finally:
        if collecting:
            gc.enable()
    ours = {id(pools), id(copies)}
    keys = _arena_keys(pools)
    types = _known_types()
    seen = {id(o) for o in _reachable()}
    tracing = tracemalloc.is_tracing()
    arenas: dict[ArenaKey, Counter[str]] = {}
    kinds: Counter[str] = Counter()
    samples: dict[str, list[str]] = {}
    inconsistent = 0
    copy = iter(copies)
    for i in range(0, len(pools), 6):
        address, count, freeblock, _, size_class, next_offset = pools[i : i + 6]
        arena = keys[address]
        if arena in start_arenas:
            if count:
                next(copy)
            continue
        held = arenas.setdefault(arena, Counter())
        if not count:
            continue
        data = next(copy)
        size = 16 * (size_class + 1)
        free: set[int] = set()
        for _ in range(POOL_SIZE // size):  # bounded: a list changed while copied
            if not address + _POOL_OVERHEAD <= freeblock < address + next_offset:
                break
            free.add(freeblock - address)
            freeblock = struct.unpack_from("<Q", data, freeblock - address)[0]
        carved = range(_POOL_OVERHEAD, next_offset, size)
        if len(carved) - len(free) != count:
            inconsistent += 1  # changed while copied: counted as found
        for at in carved:
            if at in free:
                continue
            found = _object_in_block(data, at, size, types)
            sample = ""
            if found is None:
                kind = f"raw, size class {size}"
                sample = data[at : at + 32].hex()
                stale = _stale_header(data, at, size, types)
                if stale:
                    kind += f" (once a {stale})"
                link = struct.unpack_from("<Q", data, at)[0] - address
                if _POOL_OVERHEAD <= link < next_offset and (link - _POOL_OVERHEAD) % size == 0:
                    kind += ", first word a link to a block of its pool"
            else:
                t, offset, refcount = found
                if address + at + offset in ours:
                    continue
                kind = t.__qualname__
                if t.__module__ != "builtins":
                    kind = f"{t.__module__}.{kind}"
                if refcount == 0:
                    kind += " (refcount 0)"
                elif address + at + offset not in seen:
                    kind += ", unseen"
                if t is str:
                    decoded = _str_sample(data, at + offset, at + size)
                    if decoded is not None:
                        kind += " (interned)" if decoded[0] else ""
                        sample = repr(decoded[1][:40])
                elif t is bytes:
                    sample = repr(data[at + offset + 32 : at + offset + 32 + 24])
            if tracing:
                site = _block_site(address + at)
                kind += f" @ {site}" if site else ""
            held[kind] += 1
            kinds[kind] += 1
            if sample and len(listed := samples.setdefault(kind, [])) < examples:
                listed.append(sample)
    per_arena = sorted(
        ((sum(c.values()), c.most_common(4)) for c in arenas.values()), key=lambda x: x[0]
    )
    unseen_only = sum(
        1
        for c in arenas.values()
        if c and all("raw," in k or "unseen" in k or "(refcount 0)" in k for k in c)
    )
    # What an arena would need gone to go back: the kinds of pins it holds, in classes.
    pinned_by: Counter[str] = Counter(
        " + ".join(sorted({_pin_class(k) for k in c})) or "nothing" for c in arenas.values()
    )
    return {
        "arenas": len(set(keys.values())),
        "arenas_reported": reported,
        "start_arenas": len(start_arenas),
        "new_arenas": len(arenas),
        "new_arenas_empty": sum(1 for c in arenas.values() if not c),
        "new_arenas_only_unseen": unseen_only,
        "blocks": sum(kinds.values()),
        "inconsistent_pools": inconsistent,
        "kinds": kinds.most_common(60),
        "samples": {k: samples[k] for k, _ in kinds.most_common(60) if k in samples},
        "per_arena": per_arena,
        "pinned_by": pinned_by.most_common(),
    }


def _pin_class(kind: str) -> str:
    """A walked block's kind in one of four classes: on a free list, raw bytes, an
    object the gc traversal does not reach, or one it does."""
    if "(refcount 0)" in kind:
        return "free list"
    if kind.startswith("raw,"):
        return "raw"
    if ", unseen" in kind:
        return "unseen object"
    return "gc-reachable object"


# -- the servers (child process) ---------------------------------------------------


class Holder(asyncio.Protocol):
    """The floor: a TLS connection held and nothing else."""

    def data_received(self, data: bytes) -> None:
        pass


async def _ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024, compress=False)
    await ws.prepare(request)
    async for _ in ws:
        pass
    return ws


async def _start(layer: str, data: Path) -> tuple[str, str, Any]:
    """Start ``layer``; returns its url, certificate pin and a stop coroutine function."""
    global _running
    limits.share_tls_read_buffer()
    identity, _ = tls.load_or_create(data)
    context = identity.server_context()
    loop = asyncio.get_running_loop()
    if layer == "tls":
        server = await loop.create_server(Holder, "127.0.0.1", 0, ssl=context, backlog=4096)
        port = server.sockets[0].getsockname()[1]

        async def stop_plain() -> None:
            server.close()

        return f"https://127.0.0.1:{port}", identity.fingerprint, stop_plain
    if layer in ("ws", "wss"):
        app = web.Application()
        app.router.add_get("/ws", _ws_echo)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, "127.0.0.1", 0, ssl_context=context if layer == "wss" else None, backlog=4096
        )
        await site.start()
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        scheme = "https" if layer == "wss" else "http"
        return f"{scheme}://127.0.0.1:{port}", identity.fingerprint, runner.cleanup
    from signaling_server.server import RunningServer

    running = await RunningServer(ServerConfig(port=0, data_dir=data, advertise=False)).start()
    if os.environ.get("MEMORY_BENCH_NO_FREEZE") is None:
        # The memory path of signaling_server.server.serve: start-up frozen, the fleet
        # frozen as it grows, and the open-files watcher's trim (with its full pass
        # over the frozen fleet) once the TCP connections have closed.
        assert running.app is not None
        freezing = limits.own_the_collector(running.app[limits.OPEN_FILES])

        async def stop_all() -> None:
            freezing.cancel()
            await running.stop()

        _running = running
        return running.url, running.fingerprint, stop_all
    _running = running
    return running.url, running.fingerprint, running.stop


#: Our server, in its own process (the ``server`` layer), for ``--relocate``.
_running: Any = None


async def _relocate() -> list[tuple[str, int]]:
    """Experiments: long-lived things the fleet made, dropped one after the other
    (each then remade on use), with the arenas left after each (full collection
    first): which of them pin the fleet's arenas."""
    from signaling_server.appkeys import STORE

    steps: list[tuple[str, int]] = [("before", pymalloc_arenas())]

    def step(name: str) -> None:
        gc.collect()
        steps.append((name, pymalloc_arenas()))

    sys._clear_type_cache()
    step("type attribute cache cleared")
    store = _running.app[STORE] if _running is not None else None
    if store is not None:
        store.engine.sync_engine._compiled_cache.clear()
        step("SQLAlchemy compiled cache cleared")
        await store.engine.dispose()
        step("database pool disposed")
    import abc

    for cls in _all_tracked():
        if isinstance(cls, abc.ABCMeta):
            cls._abc_caches_clear()  # type: ignore[attr-defined]
    step("abc caches cleared")
    return steps


def server_process(pipe: Pipe, layer: str, data: str, trace: bool) -> None:
    raise_open_files_limit(20_000)
    # The watcher's "memory given back" line: when the server's own trim ran.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("server: %(message)s"))
    logging.getLogger("signaling_server.limits").addHandler(handler)
    logging.getLogger("signaling_server.limits").setLevel(logging.INFO)
    asyncio.run(_serve(pipe, layer, Path(data), trace))


async def _serve(pipe: Pipe, layer: str, data: Path, trace: bool) -> None:
    url, fingerprint, stop = await _start(layer, data)
    loop = asyncio.get_running_loop()
    pipe.send({"url": url, "fingerprint": fingerprint})
    snapshot: tracemalloc.Snapshot | None = None
    start_arenas: set[int] = set()
    start_pools_arenas: set[int] = set()
    start_walk_arenas: set[ArenaKey] = set()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "stop":
            await stop()
            pipe.send({})
            return
        if command == "trim":
            limits.trim_heap()
            pipe.send(heap())
        elif command == "malloc_trim":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            pipe.send(heap())
        elif command == "relocate":
            pipe.send(await _relocate())
        elif command == "survivors":
            pipe.send(_survivors(trace, start_pools_arenas))
        elif command == "holders":
            pipe.send(_holders(("WSMessage", "RequestHandler", "WebSocketResponse", "TimerHandle")))
        elif command == "cycles":
            pipe.send(_cycles())
        elif command == "pins":
            pipe.send(_arena_pins(start_arenas))
        elif command == "maps":
            pipe.send(_anon_maps())
        elif command == "malloc_info":
            pipe.send(malloc_info())
        elif command == "walk":
            pipe.send(walk_pools(start_walk_arenas))
        elif command == "mark":
            gc.collect()
            marked: dict[str, Any] = heap()
            marked["objects"] = _object_counts()
            start_arenas = {id(o) >> 20 for o in _all_tracked()}
            start_pools_arenas = _arenas_of(_reachable())
            gc.collect()
            if _USES_PYMALLOC:  # the walker reads pymalloc's pools; there are none
                start_walk_arenas = arenas_with_blocks()
            if trace:
                # Traced from here on: a block with a traceback was made after start-up.
                tracemalloc.start(16)
                snapshot = tracemalloc.take_snapshot()
            pipe.send(marked)
            # Not kept: made with the fleet in its arenas, it would keep one.
            del marked
        elif command == "measure":
            began = time.perf_counter()
            gc.collect()
            gc_ms = 1000 * (time.perf_counter() - began)
            answer: dict[str, Any] = heap()
            answer["gc_ms"] = round(gc_ms, 1)
            answer["gc_objects"] = len(gc.get_objects())
            answer["objects"] = _object_counts()
            if trace and snapshot is not None:
                answer["traced"] = _traced_since(snapshot)
                answer["traced_blocks"] = _traced_since(snapshot, blocks=True)
            pipe.send(answer)
            # Not kept: made with the fleet in its arenas, it would keep one.
            del answer
        else:
            pipe.send(heap())


def _object_counts() -> list[tuple[str, int]]:
    """The types of the objects the garbage collector tracks, most numerous first."""
    counts = Counter(type(o).__qualname__ for o in _all_tracked())
    return sorted(counts.items())


def _all_tracked() -> list[Any]:
    """Every object the collector tracks, frozen ones included (``gc.get_objects``
    leaves out what ``gc.freeze`` moved aside: the server freezes its start-up and its
    fleet). Everything is frozen again after, as the server leaves it."""
    frozen = gc.get_freeze_count()
    if not frozen:
        return gc.get_objects()
    gc.unfreeze()
    try:
        return gc.get_objects()
    finally:
        gc.freeze()


def _traced_since(snapshot: tracemalloc.Snapshot, blocks: bool = False) -> list[tuple[str, int]]:
    """Bytes allocated since ``snapshot`` and still held, by the first frame outside
    the standard library's generic machinery (what made the object)."""
    now = tracemalloc.take_snapshot()
    by: Counter[str] = Counter()
    for stat in now.compare_to(snapshot, "traceback"):
        if stat.size_diff <= 0:
            continue
        if blocks:  # by the project's own frame nearest the allocation, if any
            by[_who_ours(stat.traceback)] += stat.count_diff
        else:
            by[_who(stat.traceback)] += stat.size_diff
    return by.most_common(30)


def _who(traceback: tracemalloc.Traceback) -> str:
    frame = list(traceback)[-1]  # oldest first: the last frame allocated
    return f"{_short(frame.filename)}:{frame.lineno}"


def _who_ours(traceback: tracemalloc.Traceback) -> str:
    frames = list(traceback)
    for frame in reversed(frames):
        if "/work/main/signaling_server" in frame.filename:
            return f"{_who(traceback)} <- {_short(frame.filename)}:{frame.lineno}"
    return _who(traceback)


#: This checkout's root, as a prefix to strip from file names.
_ROOT = f"{Path(__file__).resolve().parents[1]}/"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.11/", _ROOT):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# -- the clients (another process) --------------------------------------------------


def plain_client_process(pipe: Pipe, layer: str, url: str, fingerprint: str, n: int) -> None:
    raise_open_files_limit(n + 1024)
    limits.share_tls_read_buffer()
    asyncio.run(_plain_clients(pipe, layer, url, fingerprint, n))


async def _plain_clients(pipe: Pipe, layer: str, url: str, fingerprint: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    held: list[Any] = []
    worker = Worker(url, fingerprint, "127.0.0.2")

    async def one() -> None:
        async with gate:
            if layer == "tls":
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                host, port = url.removeprefix("https://").split(":")
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, host, int(port), ssl=context, local_addr=("127.0.0.2", 0)
                )
                held.append(transport)
            else:
                held.append(await worker.connect())

    await asyncio.gather(*(one() for _ in range(n)))
    pipe.send({"online": len(held)})
    await loop.run_in_executor(None, pipe.recv)
    for item in held:
        if isinstance(item, asyncio.BaseTransport):
            item.close()
        else:
            await item.close()
    if worker.session is not None:
        await worker.session.close()
    pipe.send({"closed": len(held)})


# -- the orchestrator ---------------------------------------------------------------


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment, for the processes it spawns."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


def _spawn(target: Any, *args: Any) -> tuple[multiprocessing.process.BaseProcess, Pipe]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=target, args=(theirs, *args), daemon=True)
    process.start()
    return process, ours


async def _ask(pipe: Pipe, message: Any, timeout_s: float = 900.0) -> Any:
    pipe.send(message)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, pipe.poll, timeout_s):
        raise TimeoutError(f"no answer to {message!r}")
    return pipe.recv()


async def _fleet(data: Path, n: int) -> list[tuple[str, bytes, str]]:
    store = await Store.open(ServerConfig(data_dir=data).database_url)
    try:
        group = await store.create_group("Fleet")
        devices = await insert_devices(store, group, n)
    finally:
        await store.close()
    # The names they are stored with: their status report changes nothing.
    return [(d, raw_private_key(key), f"Fleet {i:04d}") for i, (d, key) in enumerate(devices)]


async def measure(
    layer: str,
    n: int,
    trace: bool,
    folder: Path,
    watch_s: float,
    *,
    cycles: bool = False,
    holders: bool = False,
    relocate: bool = False,
    walk: bool = False,
) -> dict[str, Any]:
    data = folder / layer
    if data.exists():
        import shutil

        shutil.rmtree(data)
    data.mkdir(parents=True)
    fleet = await _fleet(data, n) if layer == "server" else []
    # The allocator ``livesupport server`` runs on (signaling_server/program.py), for
    # every layer alike; the walker and --relocate read pymalloc's own pools, so keep
    # it; a PYTHONMALLOC of the caller's stands.
    allocator = os.environ.get(program.ALLOCATOR_VARIABLE) or (
        "pymalloc" if walk or relocate else program.SERVER_ALLOCATOR
    )
    with _environment(program.ALLOCATOR_VARIABLE, allocator):
        server, server_pipe = _spawn(server_process, layer, str(data), trace)
    result: dict[str, Any] = {"layer": layer, "n": n, "trace": trace, "allocator": allocator}
    try:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, server_pipe.poll, 60)
        info = server_pipe.recv()
        start = await _ask(server_pipe, "mark")
        result["start"] = start
        if layer == "server":
            clients, client_pipe = _spawn(
                device_process, info["url"], info["fingerprint"], "127.0.0.2", fleet
            )
            await _ask(client_pipe, ("start", {}))
            online = await _ask(
                client_pipe, ("online", {"after": 0.0, "deadline_s": 600.0}), timeout_s=900
            )
            result["online"] = online["online"]
        else:
            clients, client_pipe = _spawn(
                plain_client_process, layer, info["url"], info["fingerprint"], n
            )
            loop2 = asyncio.get_running_loop()
            await loop2.run_in_executor(None, client_pipe.poll, 900)
            result["online"] = client_pipe.recv()["online"]
        full = await _ask(server_pipe, "measure")
        result["full"] = full
        per = {k: (full[k] - start[k]) / max(1, result["online"]) for k in start if k != "objects"}
        result["per_connection"] = per
        # The clients leave.
        if layer == "server":
            await _ask(client_pipe, ("close", {}), timeout_s=300)
        else:
            await _ask(client_pipe, "close", timeout_s=300)
        clients.join(10)
        left_at = time.monotonic()
        after: list[tuple[float, dict[str, int]]] = []
        while time.monotonic() - left_at < watch_s:
            await asyncio.sleep(2.0)
            after.append((round(time.monotonic() - left_at, 1), await _ask(server_pipe, "heap")))
        result["after_leaving"] = after
        result["trim_before_gc"] = await _ask(server_pipe, "malloc_trim")
        if holders:
            result["holders"] = await _ask(server_pipe, "holders")
            print(json.dumps(result["holders"], indent=1))
        if cycles:
            result["cycles"] = await _ask(server_pipe, "cycles")
        result["after_measure"] = await _ask(server_pipe, "measure")
        result["after_trim"] = await _ask(server_pipe, "trim")
        result["anon_maps"] = await _ask(server_pipe, "maps")
        result["pins"] = await _ask(server_pipe, "pins")
        if relocate:
            result["relocate"] = await _ask(server_pipe, "relocate")
        result["survivors"] = await _ask(server_pipe, "survivors")
        if walk:
            result["walk"] = await _ask(server_pipe, "walk")
        result["malloc_info"] = await _ask(server_pipe, "malloc_info")
        await _ask(server_pipe, "stop")
    finally:
        server.join(15)
        if server.is_alive():
            server.kill()
    return result


def report(r: dict[str, Any]) -> str:
    kib = 1024
    per = r["per_connection"]
    start_rss = r["start"]["rss"]
    lines = [
        f"== {r['layer']}: {r['online']} connections"
        + (" (tracemalloc on: RSS inflated)" if r["trace"] else ""),
        f"  RSS {start_rss / kib / kib:.1f} -> {r['full']['rss'] / kib / kib:.1f} MiB: "
        f"{per['rss'] / kib:.2f} KiB per connection",
        f"  C heap in use {per['c_in_use'] / kib:.2f} KiB/conn (of it mmapped "
        f"{per['c_mmapped'] / kib:.2f}), C heap free-but-kept {per['c_free'] / kib:.2f} KiB/conn",
        f"  Python: {per['py_blocks']:.1f} blocks/conn, pymalloc arenas "
        f"{r['start']['py_arenas']} -> {r['full']['py_arenas']} "
        f"({per['py_arenas'] * 1024:.2f} KiB/conn)",
        f"  server CPU {per['cpu_ms']:.2f} ms per connect; a full garbage collection "
        f"with them connected took {r['full']['gc_ms']} ms ({r['full']['gc_objects']} objects)",
    ]
    if "traced" in r["full"]:
        total = sum(size for _, size in r["full"]["traced"])
        lines.append(f"  tracemalloc: {total / r['online'] / kib:.2f} KiB/conn held, by site:")
        for who, size in r["full"]["traced"][:20]:
            lines.append(f"    {size / r['online']:8.0f} B  {who}")
    lines.append(
        "  objects (gc-tracked) per connection: " + _object_diff(r["start"], r["full"], r["online"])
    )
    lines.append(
        "  RSS anonymous / file-backed, MiB: start "
        f"{r['start']['rss_anon'] / kib / kib:.1f} / {r['start']['rss_file'] / kib / kib:.1f}, "
        f"full {r['full']['rss_anon'] / kib / kib:.1f} / {r['full']['rss_file'] / kib / kib:.1f}, "
        f"left and trimmed {r['after_trim']['rss_anon'] / kib / kib:.1f} / "
        f"{r['after_trim']['rss_file'] / kib / kib:.1f}"
    )
    lines.append(
        "  [heap] / other anonymous mappings, MiB: start "
        + " ; ".join(
            f"{r[k]['heap_rss'] / kib / kib:.1f} / {r[k]['anon_maps_rss'] / kib / kib:.1f}"
            for k in ("start", "full", "after_trim")
        )
        + " (start ; full ; left and trimmed)"
    )
    lines.append(
        "  anonymous mappings left (size KiB: resident KiB x count): "
        + ", ".join(f"{s // kib}: {rr // kib} x {c}" for s, rr, c in r["anon_maps"])
    )
    lines.append(
        f"  Python blocks: start {r['start']['py_blocks']}, left {r['after_trim']['py_blocks']}; "
        f"new 1 MiB regions holding gc objects: {r['pins']['regions']}: "
        + ", ".join(f"{k} {c}" for k, c in r["pins"]["kinds"])
    )
    lines.append("  after the clients left (s: RSS MiB, C free MiB, arenas):")
    for at, h in r["after_leaving"]:
        lines.append(
            f"    {at:5.1f}: {h['rss'] / kib / kib:7.1f}  {h['c_free'] / kib / kib:7.1f}  "
            f"{h['py_arenas']}"
        )
    t = r["trim_before_gc"]
    lines.append(
        f"  malloc_trim before gc.collect: RSS {t['rss'] / kib / kib:.1f} MiB "
        f"({100 * (t['rss'] - start_rss) / start_rss:+.1f} % of start), arenas {t['py_arenas']}"
    )
    if "cycles" in r:
        c = r["cycles"]
        lines.append(
            f"  in reference cycles after they left: {c['unreachable'] / r['online']:.1f} "
            "objects per connection: "
            + ", ".join(f"{k} {n / r['online']:.2g}" for k, n in c["kinds"])
        )
    t = r["after_trim"]
    lines.append(
        f"  after malloc_trim: RSS {t['rss'] / kib / kib:.1f} MiB "
        f"({100 * (t['rss'] - start_rss) / start_rss:+.1f} % of start), "
        f"C free {t['c_free'] / kib / kib:.1f} MiB, arenas {t['py_arenas']}"
    )
    if "traced" in r["after_measure"]:
        total = sum(size for _, size in r["after_measure"]["traced"])
        lines.append(f"  tracemalloc after they left: {total / 1024:.0f} KiB held since start:")
        for who, size in r["after_measure"]["traced"][:15]:
            lines.append(f"    {size:10d} B  {who}")
    if "traced_blocks" in r["after_measure"]:
        lines.append("  blocks still held, allocated since start (each may pin an arena):")
        for who, count in r["after_measure"]["traced_blocks"][:25]:
            lines.append(f"    {count:7d}  {who}")
    lines.append("  objects left (vs start): " + _object_diff(r["start"], r["after_measure"], 1))
    if r.get("relocate"):
        lines.append(
            "  arenas as long-lived things are dropped in turn: "
            + "; ".join(f"{name}: {n}" for name, n in r["relocate"])
        )
    if r.get("survivors"):
        v = r["survivors"]
        if v["blocks"]:
            lines.append(
                f"  small blocks (<= {SMALL_REQUEST} B) made since start-up and still held: "
                f"{v['small_blocks']}, by site:"
            )
            for who, count in v["blocks"][:25]:
                lines.append(f"    {count:7d}  {who}")
        lines.append(
            f"  arenas with objects at start-up {v['start_arenas']}; others with objects "
            f"after the fleet left {v['fleet_arenas']} "
            f"({v['fleet_arena_objects']} objects found in them, per arena "
            f"{v['fleet_arena_sizes']}): "
            + ", ".join(f"{k} {c}" for k, c in v["fleet_arena_kinds"])
        )
        for who, count in v["fleet_arena_pins"][:40]:
            lines.append(f"    {count:7d}  {who}: " + " ".join(v["examples"].get(who, [])))
            if who in v["holders"]:
                lines.append(f"             held by {v['holders'][who]}")
    if r.get("walk"):
        lines.extend(walk_report(r["walk"]))
    return "\n".join(lines)


def walk_report(w: dict[str, Any]) -> list[str]:
    """The pool walker's findings, as lines."""
    sizes = Counter(total for total, _ in w["per_arena"])
    lines = [
        f"  pool walk: {w['arenas']} arenas ({w['arenas_reported']} by sys._debugmallocstats, "
        f"0 while tracing), {w['start_arenas']} held a block at start-up; the "
        f"{w['new_arenas']} others hold {w['blocks']} live blocks ({w['new_arenas_empty']} "
        f"hold none, {w['new_arenas_only_unseen']} only blocks the gc traversal does not "
        f"reach; pools changed while copied: {w['inconsistent_pools']}); arenas by live "
        "blocks: " + ", ".join(f"{n}: {c}" for n, c in sorted(sizes.items())),
        "  live blocks in them by kind (', unseen': not reached from the gc's objects; "
        "'(refcount 0)': kept on a free list):",
    ]
    for kind, count in w["kinds"]:
        lines.append(f"    {count:7d}  {kind}: " + " ".join(w["samples"].get(kind, [])))
    lines.append(
        "  those arenas by what they hold (all of it must go for one to go back): "
        + "; ".join(f"{what}: {n}" for what, n in w.get("pinned_by", []))
    )
    lines.append("  the emptiest of them (live blocks: top kinds):")
    for total, top in w["per_arena"][:15]:
        lines.append(f"    {total:5d}: " + ", ".join(f"{k} {c}" for k, c in top))
    return lines


def _object_diff(before: dict[str, Any], after: dict[str, Any], n: int) -> str:
    was = dict(before["objects"])
    grown = Counter({name: count - was.get(name, 0) for name, count in after["objects"]})
    return ", ".join(
        f"{name} {count / n:.3g}" for name, count in grown.most_common(14) if count > 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_per_connection")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the server")
    parser.add_argument("--holders", action="store_true", help="who holds what is left")
    parser.add_argument(
        "--relocate", action="store_true", help="arenas left as caches are dropped, in turn"
    )
    parser.add_argument("--cycles", action="store_true", help="what only gc frees, by type")
    parser.add_argument(
        "--walk", action="store_true", help="every live block of the fleet's arenas, gc or not"
    )
    parser.add_argument("--watch", type=float, default=20.0, help="seconds watched after")
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--folder", type=Path, default=root / "build" / "bench" / "memory")
    parser.add_argument("--out", type=Path, help="all results (JSON, with malloc_info)")
    args = parser.parse_args(argv)
    raise_open_files_limit(20_000)
    results = []
    for layer in args.layers:
        r = asyncio.run(
            measure(
                layer,
                args.devices,
                args.trace,
                args.folder,
                args.watch,
                cycles=args.cycles,
                holders=args.holders,
                relocate=args.relocate,
                walk=args.walk,
            )
        )
        print(report(r), flush=True)
        results.append(r)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
