"""Several nodes for real: redis-server and PostgreSQL, each started on a free loopback
port in a temporary folder and removed afterwards, and server nodes sharing them.
The multi-node tests (tests/scale/) and the load tester's three-node step
(bench/load/nodes.py) both use them.

The engines come from the Debian packages (scripts/ensure_redis_postgres.sh, run by
``make setup``). Nothing is skipped: an engine that cannot start fails the test or
benchmark that needs it, with what it said.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.faults._restartable import ServerProcess

START_TIMEOUT_S = 60.0


class EngineError(RuntimeError):
    """An engine the test needs could not start (the message says why)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_port(port: int, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineError(f"{what} exited with {process.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise EngineError(f"{what} did not listen on 127.0.0.1:{port}: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of our own: loopback only, no persistence. Yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise EngineError(
            "redis-server is missing: run `make setup` as root "
            "(scripts/ensure_redis_postgres.sh installs the Debian package)"
        )
    folder = Path(tempfile.mkdtemp(prefix="ls-redis-"))
    port = free_port()
    log = folder / "redis.log"
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(folder),
        "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, "redis-server", process, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise EngineError(
            "PostgreSQL's initdb is missing: run `make setup` as root "
            "(scripts/ensure_redis_postgres.sh installs the Debian package postgresql)"
        )
    return Path(found[-1]).parent


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A PostgreSQL cluster of our own (initdb into a temporary folder), listening on
    127.0.0.1 only, trust authentication for the one database user. PostgreSQL
    refuses to run as root: as root it runs as the package's ``postgres`` user.
    Yields a SQLAlchemy asyncpg URL."""
    bindir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="ls-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise EngineError("running as root, and there is no `postgres` user") from None
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = folder / "data", folder / "postgres.log", free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise EngineError(f"{command[0]} failed ({done.returncode}): {output}")

    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "livesupport",
            "-A",
            "trust",
            "-E",
            "UTF8",
        )
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        run(
            str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "livesupport",
            "livesupport",
        )  # fmt: skip
        yield f"postgresql+asyncpg://livesupport@127.0.0.1:{port}/livesupport"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(folder, ignore_errors=True)


class NodeProcess(ServerProcess):
    """One node: ``livesupport server`` on the shared PostgreSQL and Redis, with the
    certificate and key every node shares, its log in its data folder."""

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
        options = [
            "--db", db_url, "--redis", redis_url,
            "--bus-refresh", str(bus_refresh_s),
            "--cert", str(cert), "--key", str(key),
        ]  # fmt: skip
        super().__init__(
            data, grace_s=grace_s, log=data / "server.log", name=f"node {name}", extra_args=options
        )
        self.db_url = db_url

    @property
    def database_url(self) -> str:
        return self.db_url
