"""Shared fixtures: a real server on loopback with real SQLite, and real clients."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from peer import ice
from protocol.enums import Mode, Role
from signaling_server.config import ServerConfig
from signaling_server.server import RunningServer
from signaling_server.store import Group, Store, Technician

PASSWORD = "correct horse battery"

# Calls in tests stay on loopback: host candidates of this process (any aiortc peer
# connection) and of every process it starts (the device's session processes).
os.environ[ice.ENV] = "127.0.0.1"
ice.restrict_host_addresses(["127.0.0.1"])


@dataclasses.dataclass
class Lab:
    """A running server with two groups, technicians of every role and their scope."""

    server: RunningServer
    store: Store
    config: ServerConfig
    tablets: Group
    desktops: Group
    admin: Technician
    tech: Technician  # technician, scope: tablets
    other_tech: Technician  # technician, scope: desktops
    supervisor: Technician  # supervisor, scope: tablets
    viewer: Technician  # viewer, scope: tablets

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fingerprint(self) -> str:
        return self.server.fingerprint

    async def enrolment_code(self, group: Group | None = None, ttl_s: int = 600) -> str:
        from protocol.enrolment import EnrolmentCode

        token = await self.store.issue_enrolment_token(
            (group or self.tablets).id, created_by="test", ttl_s=ttl_s
        )
        return EnrolmentCode(server=self.url, token=token, fingerprint=self.fingerprint).encode()


def lab_config(tmp_path: Path, **overrides: object) -> ServerConfig:
    base = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "server",
        invite_timeout_s=5.0,
        grace_s=2.0,
        heartbeat_s=5.0,
        advertise=False,  # zeroconf is tested on its own (tests/signaling_server/test_discovery.py)
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with open_lab(tmp_path) as made:
        yield made


@asynccontextmanager
async def open_lab(tmp_path: Path, **overrides: object) -> AsyncIterator[Lab]:
    """The ``lab`` fixture's server, with ``overrides`` of its ServerConfig (a TURN
    server for the relay tests, ...)."""
    config = lab_config(tmp_path, **overrides)
    server = await RunningServer(config).start()
    assert server.app is not None
    from signaling_server.app import STORE

    store = server.app[STORE]
    tablets = await store.create_group("Tablets")
    desktops = await store.create_group("Desktops", allowed_modes=(Mode.TEXT,))

    async def make(username: str, role: Role, group: Group) -> Technician:
        return await store.create_technician(
            username,
            PASSWORD,
            display_name=username.replace("-", " ").title(),
            role=role,
            organisation="Test IT",
            groups=[group.id],
        )

    lab = Lab(
        server=server,
        store=store,
        config=config,
        tablets=tablets,
        desktops=desktops,
        admin=await make("admin", Role.ADMIN, tablets),
        tech=await make("tech", Role.TECHNICIAN, tablets),
        other_tech=await make("other-tech", Role.TECHNICIAN, desktops),
        supervisor=await make("super", Role.SUPERVISOR, tablets),
        viewer=await make("viewer", Role.VIEWER, tablets),
    )
    try:
        yield lab
    finally:
        await server.stop()


@pytest.fixture
async def advertised(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A real server advertising itself with zeroconf on loopback, under a name no other
    test uses (with markup in it: a name found on the network is shown as text)."""
    name = f"Support <b>{uuid.uuid4().hex[:8]}</b>"
    server = await RunningServer(lab_config(tmp_path, advertise=True, name=name)).start()
    assert server.advertiser is not None
    await asyncio.wait_for(server.advertiser.wait_registered(), 15)
    yield server
    await server.stop()
