"""The ordinary load balancer in front of the nodes (bench/cluster.py's NodeProcess,
``livesupport server --db ... --redis ...``): a TCP forwarder on loopback that sends
each new connection to the first backend that accepts it (TLS passes through it:
every node has the same certificate and key, so the pinned fingerprint holds)."""

from __future__ import annotations

import asyncio
import contextlib


class LoadBalancer:
    """Forwards each connection to the first backend port that accepts it."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
                task = asyncio.create_task(pipe)
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        for task in list(self._pipes):
            with contextlib.suppress(asyncio.CancelledError):
                await task
