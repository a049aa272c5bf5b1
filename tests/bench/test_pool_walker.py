"""The pool walker of the memory harness (bench/memory_per_connection.py) on this
process: objects and a raw C buffer made in arenas that held no block at its mark are
found, by type (a str with its value) and as raw bytes, whether the gc sees them or not."""

from __future__ import annotations

import ctypes
import gc
import tracemalloc
from pathlib import Path

import pytest

from bench import memory_per_connection as bench


class PinMarker:
    """An instance with a managed dict: its object sits 32 bytes into its block."""


@pytest.mark.parametrize("trace", [False, True])
def test_the_walker_finds_what_was_made_in_fresh_arenas(trace: bool) -> None:
    malloc = ctypes.pythonapi.PyMem_Malloc
    malloc.restype = ctypes.c_void_p
    malloc.argtypes = (ctypes.c_size_t,)
    free = ctypes.pythonapi.PyMem_Free
    free.restype = None
    free.argtypes = (ctypes.c_void_p,)
    start = bench.arenas_with_blocks()
    if trace:
        tracemalloc.start(4)
    fillers: list[object] = []
    raw_fillers: list[int] = []
    kept: list[tuple[PinMarker, str]] = []
    raw_kept: list[int] = []
    # Fillers of each kept thing's size class fill the free blocks of the arenas there
    # were, so that the things kept last sit in arenas made after the mark.
    for i in range(200_000):
        fillers.append(PinMarker())
        fillers.append(f"filler str {i:010d}")
        raw_fillers.append(malloc(100))
        if i % 10_000 == 9_999:
            block = malloc(100)
            ctypes.memset(block, 0xAB, 100)
            raw_kept.append(block)
            kept.append((PinMarker(), f"pin marker {i:010d}"))
    try:
        del fillers
        for block in raw_fillers:
            free(block)
        del raw_fillers
        gc.collect()

        walked = bench.walk_pools(start, examples=64)
    finally:
        tracemalloc.stop()
        for block in raw_kept:
            free(block)

    # With tracemalloc on, each kind is followed by where it was allocated.
    kinds: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    for kind, count in walked["kinds"]:
        if trace and ("PinMarker" in kind or "size class 112" in kind):
            assert " @ tests/bench/test_pool_walker.py:" in kind, kind
        name = kind.split(" @ ", 1)[0]
        kinds[name] = kinds.get(name, 0) + count
        samples.setdefault(name, []).extend(walked["samples"].get(kind, []))
    assert walked["new_arenas"] >= 1
    assert kinds.get(f"{__name__}.PinMarker", 0) >= 1
    strings = [s for kind, found in samples.items() if kind.startswith("str") for s in found]
    assert any("pin marker" in s for s in strings), samples
    assert kinds.get("raw, size class 112", 0) >= 1
    # PyMem_Malloc's buffer is nothing the gc can see: the walker shows its bytes.
    assert "ab" * 32 in samples["raw, size class 112"]
    assert len(kept) == 20
    lines = bench.walk_report(walked)
    assert any("PinMarker" in line for line in lines)


@pytest.mark.timeout(300)
async def test_the_harness_walks_the_server_process_after_its_clients_left(
    tmp_path: Path,
) -> None:
    result = await bench.measure("wss", 40, trace=False, folder=tmp_path, watch_s=0.0, walk=True)

    walked = result["walk"]
    # The walker found every arena pymalloc reports (read just before it, in the
    # server's process), and the arenas there were at the mark among them.
    assert walked["arenas"] > 0
    assert abs(walked["arenas"] - walked["arenas_reported"]) <= 1
    assert walked["start_arenas"] <= walked["arenas"] + 1
    assert walked["inconsistent_pools"] == 0
    assert "pool walk:" in bench.report(result)
