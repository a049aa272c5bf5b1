"""``livesupport server`` as a program (signaling_server/program.py): it runs on the C
heap, in the process it was started as, unless the operator chose an allocator."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from bench.faults._restartable import ServerProcess
from peer.signaling import pinned


def _environment_of(pid: int) -> dict[str, str]:
    """The environment the process's program started with (after an exec: its own)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


async def _serving(server: ServerProcess) -> int:
    """The process id that answers, once the server said it listens."""
    await server.start()
    assert server.process is not None
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pinned(server.fingerprint)))
    async with session, session.get(f"{server.url}/api/v1/health") as response:
        assert response.status == 200
    return server.process.pid


async def test_the_server_runs_on_the_c_heap_as_the_process_it_was_started_as(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    server = ServerProcess(tmp_path / "data", log=tmp_path / "server.log")
    try:
        pid = await _serving(server)
        # The same process id (an exec, not a child): what started it can signal it.
        assert _environment_of(pid)["PYTHONMALLOC"] == "malloc"
    finally:
        await server.stop()
    assert server.process is not None
    assert server.process.returncode == 0
    # Started once: the new image printed the start-up lines, the first one nothing.
    assert (tmp_path / "server.log").read_text().count("listening on") == 1


async def test_an_allocator_the_operator_chose_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    server = ServerProcess(tmp_path / "data")
    try:
        pid = await _serving(server)
        assert _environment_of(pid)["PYTHONMALLOC"] == "pymalloc"
    finally:
        await server.stop()
