"""A real coturn ``turnserver`` on loopback, for the relay tests and benchmark.

It runs as coturn runs next to a Live Support server (docs/turn.md): the TURN REST
API scheme (``use-auth-secret`` with a ``static-auth-secret``), so it only accepts
credentials the signaling server minted, here on 127.0.0.1 with a random free port,
no TLS listeners, its database and pid file in a temporary folder. Loopback peers
are allowed (``--allow-loopback-peers``): both call ends live on 127.0.0.1, and
coturn refuses to relay to loopback addresses otherwise.

Readiness is a real STUN binding request answered by the server, not a log line.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import shutil
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aioice import stun

from signaling_server.turn import TurnSettings

REALM = "livesupport.test"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Probe(asyncio.DatagramProtocol):
    def __init__(self, answered: asyncio.Future[bytes]) -> None:
        self.answered = answered

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.answered.done():
            self.answered.set_result(data)


@dataclass
class Coturn:
    folder: Path
    port: int = field(default_factory=free_udp_port)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: asyncio.subprocess.Process | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def settings(self, ttl_s: int = 600) -> TurnSettings:
        return TurnSettings((self.url,), self.secret, ttl_s)

    def command(self) -> list[str]:
        turnserver = shutil.which("turnserver")
        if turnserver is None:
            raise RuntimeError(
                "coturn is not installed: run `make setup` (scripts/ensure_coturn.sh)"
            )
        # Relay ports from a range of our own near the listener, so that two servers
        # (parallel test runs) rarely collide; coturn skips ports in use anyway.
        low = 20000 + (self.port % 20000)
        return [
            turnserver,
            "-n",  # no configuration file: every setting is here
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={self.port}",
            f"--min-port={low}",
            f"--max-port={low + 200}",
            "--use-auth-secret",
            f"--static-auth-secret={self.secret}",
            f"--realm={REALM}",
            "--fingerprint",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-cli",
            "--no-multicast-peers",
            "--allow-loopback-peers",
            "--log-file=stdout",
            "--simple-log",
            f"--pidfile={self.folder / 'turnserver.pid'}",
            f"--userdb={self.folder / 'turndb'}",
        ]

    async def start(self, timeout_s: float = 15.0) -> Coturn:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "turnserver.log"
        log = self.log_path.open("wb")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            log.close()
        try:
            await asyncio.wait_for(self._until_answers(), timeout_s)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _until_answers(self) -> None:
        """Until a STUN binding request is answered (coturn's listener is up)."""
        loop = asyncio.get_running_loop()
        while True:
            assert self.process is not None
            if self.process.returncode is not None:
                raise RuntimeError(f"turnserver exited ({self.process.returncode}):\n{self.log()}")
            answered: asyncio.Future[bytes] = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_Probe, answered), remote_addr=("127.0.0.1", self.port)
            )
            request = stun.Message(
                message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
            )
            try:
                transport.sendto(bytes(request))
                reply = stun.parse_message(await asyncio.wait_for(answered, 0.2))
                if reply.transaction_id == request.transaction_id:
                    return
            except TimeoutError:
                continue
            finally:
                transport.close()

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
