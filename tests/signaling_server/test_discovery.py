"""Zeroconf: the server advertises itself; agents and consoles find it; discovery never
grants trust (the pinned certificate decides). All of it on loopback only."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from pathlib import Path

import pytest
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from peer import discovery
from peer.discovery import discover, pick
from peer.signaling import RequestError, api_get
from protocol.discovery import SERVICE_TYPE, VERSION, Advertisement, instance_name
from protocol.enrolment import EnrolmentCode
from signaling_server.appkeys import HUB
from signaling_server.server import RunningServer
from tests.conftest import Lab, lab_config
from tests.integration.harness import until

LOOPBACK = ["127.0.0.1"]


async def test_a_server_is_found_with_its_address_and_pin(advertised: RunningServer) -> None:
    found = await discover(
        want_fingerprint=advertised.fingerprint, interfaces=LOOPBACK, timeout_s=15
    )
    mine = pick(found, advertised.fingerprint)
    assert mine is not None, found
    assert mine.url == advertised.url
    assert mine.name == advertised.config.name


async def test_a_stopped_server_says_goodbye(tmp_path: Path) -> None:
    name = f"Leaving {uuid.uuid4().hex[:8]}"
    server = await RunningServer(lab_config(tmp_path, advertise=True, name=name)).start()
    assert server.advertiser is not None
    await asyncio.wait_for(server.advertiser.wait_registered(), 15)
    fingerprint = server.fingerprint
    await server.stop()
    # A browser started afterwards hears of nothing: the goodbye cleared it.
    found = await discover(interfaces=LOOPBACK, timeout_s=2)
    assert pick(found, fingerprint) is None, found


async def _forge(address: str, port: int, fingerprint: str) -> AsyncZeroconf:
    """Someone else on the LAN claims our server's pin for their own address."""
    azc = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    info = ServiceInfo(
        SERVICE_TYPE,
        instance_name(f"Forged {uuid.uuid4().hex[:8]}"),
        port=port,
        properties=Advertisement(VERSION, fingerprint).properties(),
        parsed_addresses=[address],
        server=f"forger-{port}.local.",
    )
    await (await azc.async_register_service(info))
    return azc


async def test_a_forged_advertisement_gains_no_trust(lab: Lab, tmp_path: Path) -> None:
    """An impostor advertising our pin at its own address: the address is proposed, the
    pinned TLS connection to it is refused."""
    impostor = await RunningServer(lab_config(tmp_path / "impostor", advertise=False)).start()
    assert impostor.fingerprint != lab.fingerprint
    forger = await _forge("127.0.0.1", impostor.port, lab.fingerprint)
    try:
        found = pick(
            await discover(want_fingerprint=lab.fingerprint, interfaces=LOOPBACK, timeout_s=15),
            lab.fingerprint,
        )
        assert found is not None
        assert found.url == impostor.url
        with pytest.raises(RequestError) as refused:
            await api_get(found.url, lab.fingerprint, "/api/v1/health")
        assert refused.value.code == "pin_mismatch"
    finally:
        await forger.async_close()
        await impostor.stop()


async def test_the_agent_finds_its_server_when_the_code_has_a_stale_address(
    advertised: RunningServer, tmp_path: Path
) -> None:
    """`livesupport agent --enrol CODE --discover`: the code's address answers no more;
    the agent finds the server with the code's pin on the LAN and comes online there."""
    assert advertised.app is not None
    hub = advertised.app[HUB]
    store = hub.store
    group = await store.create_group("Discovered")
    token = await store.issue_enrolment_token(group.id, created_by="test", ttl_s=600)
    with socket.socket() as probe:  # an address nobody listens on
        probe.bind(("127.0.0.1", 0))
        stale = f"https://127.0.0.1:{probe.getsockname()[1]}"
    code = EnrolmentCode(server=stale, token=token, fingerprint=advertised.fingerprint)
    state = tmp_path / "agent"
    env = dict(os.environ, **{discovery.ENV: "127.0.0.1"})
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer.cli",
        "agent",
        "--headless",
        "--discover",
        "--state",
        str(state),
        "--enrol",
        code.encode(),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await until(lambda: len(hub.devices_online) == 1, 30)
        from device_agent.state import AgentState

        device, _key = AgentState(state).load()
        assert device.server == advertised.url
        assert device.fingerprint == advertised.fingerprint
    finally:
        agent.terminate()
        _out, err = await asyncio.wait_for(agent.communicate(), 30)
    assert f"found our server at {advertised.url}" in err.decode()


def test_advertisement_records_are_checked() -> None:
    fp = "sha-256 " + ":".join(["AB"] * 32)
    ad = Advertisement(VERSION, fp)
    raw = {k.encode(): v.encode() for k, v in ad.properties().items()}
    assert Advertisement.parse(raw) == ad
    from protocol.discovery import BadAdvertisement

    for broken in (
        {**raw, b"v": b"9"},
        {**raw, b"fp": b"sha-256 nope"},
        {b"v": b"1"},
        {**raw, b"fp": b"\xff\xfe"},
    ):
        with pytest.raises(BadAdvertisement):
            Advertisement.parse(broken)
    assert instance_name("a.b  c" + "x" * 100).endswith("." + SERVICE_TYPE)
    assert len(instance_name("é" * 100).split(".")[0].encode()) <= 63
