"""The floor under the reconnect figure: N bare aiohttp TLS websockets connecting at
once to a bare aiohttp TLS websocket server, on this machine.

Nothing of the product runs on either side: the server (bench/memory_per_connection.py's
``wss`` layer, in a process of its own) upgrades and holds; the clients (as many
processes as the load tester's device workers, each with as many handshakes in
flight, over the same pinned TLS) connect and hold. No challenge, no signature, no
status report, no store. The time from the signal to go until the last one is
connected is what N connects cost when only aiohttp and OpenSSL work, with the
clients on the same two cores as the server (as the load tester's devices are): the
load tester's reconnect cannot be faster than this.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import aiohttp

from bench.faults._restartable import raise_open_files_limit
from bench.load.clients import CONNECTS_IN_FLIGHT, Worker
from signaling_server import limits


def connector_process(pipe: Pipe, url: str, fingerprint: str, source: str, n: int) -> None:
    raise_open_files_limit(n + 1024)
    limits.share_tls_read_buffer()
    asyncio.run(_connect(pipe, url, fingerprint, source, n))


async def _connect(pipe: Pipe, url: str, fingerprint: str, source: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(url, fingerprint, source)
    await worker.open()
    pipe.send("ready")
    await loop.run_in_executor(None, pipe.recv)  # go
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    held: list[aiohttp.ClientWebSocketResponse] = []
    failures: list[str] = []
    cpu_began = time.process_time()

    async def one() -> None:
        async with gate:
            try:
                held.append(await worker.connect())
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one() for _ in range(n)))
    pipe.send(
        {
            "connected": len(held),
            "failed": len(failures),
            "failures": failures[:5],
            "done_at": time.monotonic(),
            "cpu_s": time.process_time() - cpu_began,
        }
    )
    await loop.run_in_executor(None, pipe.recv)  # leave
    for ws in held:
        await ws.close()
    if worker.session is not None:
        await worker.session.close()
    pipe.send({})


async def _reply(pipe: Pipe, timeout_s: float) -> Any:
    if not await asyncio.get_running_loop().run_in_executor(None, pipe.poll, timeout_s):
        raise TimeoutError("a floor client did not answer")
    return pipe.recv()


async def measure(folder: Path, n: int, processes: int) -> dict[str, Any]:
    """N connects from ``processes`` client processes; their wall time, the server's
    and the clients' CPU per connect."""
    from bench import memory_per_connection as layers

    data = folder / "connect-floor"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    server, server_pipe = layers._spawn(layers.server_process, "wss", str(data), False)
    clients: list[tuple[Any, Pipe]] = []
    try:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, server_pipe.poll, 60):
            raise TimeoutError("the floor's server did not start")
        info = server_pipe.recv()
        shares = [n // processes + (1 if k < n % processes else 0) for k in range(processes)]
        for k, share in enumerate(shares):
            clients.append(
                layers._spawn(
                    connector_process, info["url"], info["fingerprint"], f"127.0.0.{k + 2}", share
                )
            )
        for _, pipe in clients:
            await _reply(pipe, 60.0)  # ready
        before = await layers._ask(server_pipe, "cpu")  # any other command: heap()
        began = time.monotonic()
        for _, pipe in clients:
            pipe.send("go")
        done = [await _reply(pipe, 900.0) for _, pipe in clients]
        after = await layers._ask(server_pipe, "cpu")
        connected = sum(d["connected"] for d in done)
        for _, pipe in clients:
            await layers._ask(pipe, "leave", timeout_s=300)
        await layers._ask(server_pipe, "stop")
        return {
            "devices": n,
            "processes": processes,
            "connected": connected,
            "failed": sum(d["failed"] for d in done),
            "failures": [f for d in done for f in d["failures"]][:5],
            "seconds": round(max(d["done_at"] for d in done) - began, 2),
            "server_cpu_ms_per_connect": round(
                (after["cpu_ms"] - before["cpu_ms"]) / max(1, connected), 2
            ),
            "clients_cpu_ms_per_connect": round(
                1000 * sum(d["cpu_s"] for d in done) / max(1, connected), 2
            ),
        }
    finally:
        for process, _ in clients:
            process.join(10)
            if process.is_alive():
                process.kill()
        server.join(15)
        if server.is_alive():
            server.kill()
