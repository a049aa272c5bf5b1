"""A real signaling server in a process of its own that can be killed and started
again on the same port and data folder, and the fleet set-up the recovery tests and
benchmarks share (a device group, a technician, enrolment codes, bulk devices).

The server is ``livesupport server`` (``python -m peer.cli server``), exactly as it is
deployed; its ``--ready-file`` says when it listens and on which port. A kill is
SIGKILL: no shutdown code of the server runs, as in a crash or an OOM kill.

A helper, not a fault benchmark: it has no ``measure()`` (the underscore keeps it out
of the modules the reliability report runs).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization

from protocol import identity
from protocol.enrolment import EnrolmentCode
from protocol.enums import Role
from signaling_server.config import ServerConfig
from signaling_server.store import DeviceRow, Group, Store, Technician, new_id

PASSWORD = "correct horse battery"  # noqa: S105 (the test technician's)
READY_TIMEOUT_S = 60.0


class ServerProcess:
    """``livesupport server`` on 127.0.0.1; the first start takes a free port, every
    later one the same port (clients reconnect to the address they know)."""

    def __init__(
        self,
        data: Path,
        *,
        grace_s: float = 60.0,
        invite_timeout_s: float = 30.0,
        log: Path | None = None,
        extra_args: Sequence[str] = (),
        name: str = "the server",
    ) -> None:
        self.data = data
        #: More ``livesupport server`` options (a node's --db, --redis, --cert ...).
        self.extra_args = list(extra_args)
        self.name = name
        self.grace_s = grace_s
        self.invite_timeout_s = invite_timeout_s
        self.log = log
        self.port = 0
        self.url = ""
        self.fingerprint = ""
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._log_file: IO[bytes] | None = None

    @property
    def ready_file(self) -> Path:
        return self.data / "ready.json"

    @property
    def config(self) -> ServerConfig:
        return ServerConfig(data_dir=self.data)

    @property
    def database_url(self) -> str:
        """The store the server uses (a node's is the shared PostgreSQL)."""
        return self.config.database_url

    async def start(self) -> float:
        """Start the server and wait until it listens; returns when it did
        (``time.monotonic()``)."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        if self.log is not None and self._log_file is None:
            self._log_file = self.log.open("ab")
        command = [
            sys.executable,
            "-m",
            "peer.cli",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data",
            str(self.data),
            "--grace",
            str(self.grace_s),
            "--invite-timeout",
            str(self.invite_timeout_s),
            "--ready-file",
            str(self.ready_file),
            "--no-advertise",  # clients know the address; zeroconf is tested on its own
            *self.extra_args,
        ]
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log_file else subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_file.exists():
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready in time")
            await asyncio.sleep(0.01)
        ready_at = time.monotonic()
        info: dict[str, Any] = json.loads(self.ready_file.read_text())
        self.port, self.url, self.fingerprint = int(info["port"]), info["url"], info["fingerprint"]
        self.starts += 1
        return ready_at

    async def kill(self) -> float:
        """SIGKILL: the server dies with no shutdown; returns when (monotonic)."""
        assert self.process is not None
        killed_at = time.monotonic()
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        return killed_at

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class Fleet:
    """What the set-up made in the server's store."""

    group: Group
    technician: Technician


async def open_store(server: ServerProcess) -> Store:
    """The server's own store, opened beside it (as the admin CLI does)."""
    server.data.mkdir(parents=True, exist_ok=True)
    return await Store.open(server.database_url)


async def make_fleet(server: ServerProcess, username: str = "tech") -> Fleet:
    store = await open_store(server)
    try:
        group = await store.create_group("Tablets")
        tech = await store.create_technician(
            username,
            PASSWORD,
            display_name="Recovery Tech",
            role=Role.TECHNICIAN,
            organisation="Test IT",
            groups=[group.id],
        )
    finally:
        await store.close()
    return Fleet(group, tech)


async def enrolment_code(server: ServerProcess, group: Group) -> str:
    store = await open_store(server)
    try:
        token = await store.issue_enrolment_token(group.id, created_by="recovery", ttl_s=600)
    finally:
        await store.close()
    return EnrolmentCode(server=server.url, token=token, fingerprint=server.fingerprint).encode()


async def bulk_devices(server: ServerProcess, group: Group, n: int) -> list[tuple[str, Any]]:
    """N devices with real Ed25519 keys, inserted in one transaction of the store's
    own (enrolling a thousand devices through tokens would time the enrolment, not
    the reconnect). Returns (device id, private key) pairs."""
    store = await open_store(server)
    try:
        return await insert_devices(store, group, n)
    finally:
        await store.close()


async def insert_devices(store: Store, group: Group, n: int) -> list[tuple[str, Any]]:
    """``bulk_devices`` on a store already open: (device id, private key) pairs."""
    keys = [identity.generate_key() for _ in range(n)]
    ids = [new_id("dev") for _ in range(n)]
    now = int(time.time() * 1000)
    async with store.tx() as db:
        for i, (device_id, key) in enumerate(zip(ids, keys, strict=True)):
            db.add(
                DeviceRow(
                    id=device_id,
                    name=f"Fleet {i:04d}",
                    group_id=group.id,
                    public_key=identity.public_key_b64(key),
                    enrolled_at_ms=now,
                )
            )
    return list(zip(ids, keys, strict=True))


def raw_private_key(key: Any) -> bytes:
    """A device's Ed25519 key as raw bytes, to hand to a worker process."""
    return bytes(
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (within the
    hard limit); returns the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target
