"""Server nodes as real processes (``livesupport server --db ... --redis ...``) and
the ordinary load balancer in front of them: a TCP forwarder on loopback that sends
each new connection to the first backend that accepts it (TLS passes through it:
every node has the same certificate and key, so the pinned fingerprint holds)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

READY_TIMEOUT_S = 60.0


class NodeProcess:
    def __init__(
        self,
        name: str,
        data: Path,
        *,
        db_url: str,
        redis_url: str,
        cert: Path,
        key: Path,
        grace_s: float = 30.0,
        bus_refresh_s: float = 0.5,
    ) -> None:
        self.name, self.data = name, data
        self.db_url, self.redis_url = db_url, redis_url
        self.cert, self.key = cert, key
        self.grace_s, self.bus_refresh_s = grace_s, bus_refresh_s
        self.port = 0
        self.url = ""
        self.fingerprint = ""
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def ready_file(self) -> Path:
        return self.data / "ready.json"

    async def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        if self._log is None:
            self._log = (self.data / "server.log").open("ab")
        command = [
            sys.executable, "-m", "peer.cli", "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data", str(self.data),
            "--db", self.db_url, "--redis", self.redis_url,
            "--bus-refresh", str(self.bus_refresh_s),
            "--cert", str(self.cert), "--key", str(self.key),
            "--grace", str(self.grace_s),
            "--no-advertise",
            "--ready-file", str(self.ready_file),
        ]  # fmt: skip
        self.process = await asyncio.create_subprocess_exec(
            *command, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_file.exists():
            if self.process.returncode is not None:
                raise RuntimeError(f"node {self.name} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} was not ready in time")
            await asyncio.sleep(0.02)
        info: dict[str, Any] = json.loads(self.ready_file.read_text())
        self.port, self.url, self.fingerprint = int(info["port"]), info["url"], info["fingerprint"]

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


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
