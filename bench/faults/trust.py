"""Trust faults, measured on a real server on loopback (in this process) with a real
device agent and console client:

* revocation to disconnect: an admin's REST revoke, and a revocation written to the
  database by another process (the admin CLI), which the server's sweep picks up;
* failed logins: the ``Retry-After`` the server answers after N wrong passwords, and
  how fast a locked login is answered (no password hashing) next to a wrong one;
* a changed server key: how long the agent's link and a console login take to refuse
  the server once it is back with another certificate.

``python -m bench.faults.trust`` prints the rows as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import aiohttp

from device_agent.agent import DeviceAgent, enrol
from device_agent.state import AgentState
from peer.signaling import Backoff, RequestError, pinned
from protocol.enrolment import EnrolmentCode
from protocol.enums import Role
from protocol.messages import SessionInvite
from signaling_server.app import LOGIN_GUARD, REVOCATION_SWEEP_S, STORE
from signaling_server.config import ServerConfig
from signaling_server.server import RunningServer
from signaling_server.store import Group, Store
from tech_console.admin_api import AdminApi
from tech_console.client import ConsoleClient

PASSWORD = "correct horse battery"  # noqa: S105 (the bench's own technician)
FAST = Backoff(base_s=0.05, cap_s=0.5)

Row = dict[str, object]


def row(fault: str, measure: str, value: float, unit: str, target: str, ok: bool) -> Row:
    return {
        "fault": fault,
        "measure": measure,
        "value": round(value, 3) if isinstance(value, float) else value,
        "unit": unit,
        "target": target,
        "ok": ok,
    }


async def _reject_invites(_invite: SessionInvite) -> None:
    return None  # no session is started in this bench


async def _agent(server: RunningServer, store: Store, group: Group, folder: Path) -> DeviceAgent:
    token = await store.issue_enrolment_token(group.id, created_by="bench", ttl_s=600)
    code = EnrolmentCode(server=server.url, token=token, fingerprint=server.fingerprint)
    state = AgentState(folder)
    await enrol(state, code.encode(), name="Bench tablet")
    agent = DeviceAgent(state, invite_handler=_reject_invites, backoff=FAST)
    await agent.start()
    await agent.client.wait_online()
    return agent


async def _revocations(server: RunningServer, store: Store, group: Group, tmp: Path) -> list[Row]:
    rows = []
    admin = ConsoleClient(server.url, server.fingerprint, backoff=FAST)
    await admin.login("admin", PASSWORD)
    assert admin.token is not None
    api = AdminApi(server.url, server.fingerprint, admin.token)
    try:
        agent = await _agent(server, store, group, tmp / "rest")
        started = time.perf_counter()
        await api.revoke_device(agent.device.device_id)
        await asyncio.wait_for(agent.client.stopped.wait(), 30)
        rest_s = time.perf_counter() - started
        await agent.stop()
        rows.append(
            row(
                "device revoked (REST)",
                "revoke to websocket closed",
                rest_s,
                "s",
                "< 1 s",
                rest_s < 1,
            )
        )

        agent = await _agent(server, store, group, tmp / "cli")
        started = time.perf_counter()
        # What `livesupport admin revoke` does from its own process: a database write.
        await store.revoke_device(agent.device.device_id)
        await asyncio.wait_for(agent.client.stopped.wait(), 30)
        cli_s = time.perf_counter() - started
        reconnected = agent.client.connections_made - 1
        await agent.stop()
        limit = REVOCATION_SWEEP_S + 1
        rows.append(
            row(
                "device revoked (admin CLI)",
                "revoke to websocket closed",
                cli_s,
                "s",
                f"< {limit:g} s (sweep every {REVOCATION_SWEEP_S:g} s)",
                cli_s < limit,
            )
        )
        rows.append(
            row(
                "device revoked",
                "reconnect attempts after",
                reconnected,
                "count",
                "0",
                reconnected == 0,
            )
        )
    finally:
        await admin.close()
    return rows


async def _login(
    http: aiohttp.ClientSession, server: RunningServer, password: str
) -> tuple[int, str, float]:
    started = time.perf_counter()
    async with http.post(
        server.url + "/api/v1/login",
        json={"username": "tech", "password": password},
        ssl=pinned(server.fingerprint),
    ) as response:
        await response.read()
        return (
            response.status,
            response.headers.get("Retry-After", ""),
            time.perf_counter() - started,
        )


async def _failed_logins(server: RunningServer) -> list[Row]:
    assert server.app is not None
    guard = server.app[LOGIN_GUARD]
    now = [0.0]
    guard.clock = lambda: now[0]  # the lock is read from the server; the bench skips the waits
    rows = []
    locks: dict[int, int] = {}
    wrong_s: list[float] = []
    locked_s: list[float] = []
    failures = 0
    async with aiohttp.ClientSession() as http:
        # Each attempt is wrong: a 401 is one more failure, a 429 tells the lock the
        # last failure started (then the bench's clock skips it).
        while failures <= 10:
            status, retry_after, took = await _login(http, server, "wrong")
            if status == 401:
                failures += 1
                wrong_s.append(took)
                locks.setdefault(failures, 0)
            else:
                assert status == 429, status
                locks[failures] = int(retry_after)
                locked_s.append(took)
                now[0] += int(retry_after)
    for count in (3, 4, 5, 6, 8, 10):
        expected = guard.delay_for(count)
        rows.append(
            row(
                "failed logins",
                f"Retry-After after {count} failures",
                locks[count],
                "s",
                f"{expected:g} s (doubling from failure {guard.free_failures + 1}, "
                f"cap {guard.cap_s:g} s)",
                locks[count] == int(expected + 0.999),
            )
        )
    wrong_median = sorted(wrong_s)[len(wrong_s) // 2]
    locked_median = sorted(locked_s)[len(locked_s) // 2]
    rows.append(
        row(
            "failed logins",
            "wrong password answered in (scrypt)",
            1000 * wrong_median,
            "ms",
            "informative",
            True,
        )
    )
    rows.append(
        row(
            "failed logins",
            "locked login answered in (no hashing)",
            1000 * locked_median,
            "ms",
            "< wrong-password time",
            locked_median < wrong_median,
        )
    )
    guard.clock = time.monotonic
    return rows


async def _changed_key(
    config: ServerConfig, server: RunningServer, agent: DeviceAgent
) -> tuple[list[Row], RunningServer]:
    old_pin = server.fingerprint
    await server.stop()
    for name in ("server-cert.pem", "server-key.pem"):
        (config.data_dir / name).unlink()
    impostor = await RunningServer(dataclasses.replace(config, port=server.port)).start()
    started = time.perf_counter()
    await asyncio.wait_for(agent.client.stopped.wait(), 30)
    agent_s = time.perf_counter() - started
    fatal = agent.client.fatal
    console = ConsoleClient(impostor.url, old_pin, backoff=FAST)
    started = time.perf_counter()
    try:
        await console.login("tech", PASSWORD)
        refused = ""
    except RequestError as exc:
        refused = exc.code
    console_s = time.perf_counter() - started
    await console.close()
    rows = [
        row(
            "server key changed",
            "agent link refused, from the impostor listening",
            agent_s,
            "s",
            "refused, no retry",
            fatal is not None and fatal.code == "pin_mismatch",
        ),
        row(
            "server key changed",
            "console login refused in",
            1000 * console_s,
            "ms",
            "refused before any request",
            refused == "pin_mismatch",
        ),
    ]
    return rows, impostor


async def measure() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-trust-") as folder:
        tmp = Path(folder)
        config = ServerConfig(
            host="127.0.0.1", port=0, data_dir=tmp / "server", heartbeat_s=5.0, advertise=False
        )
        server = await RunningServer(config).start()
        assert server.app is not None
        store = server.app[STORE]
        group = await store.create_group("Tablets")
        for username, role in (("admin", Role.ADMIN), ("tech", Role.TECHNICIAN)):
            await store.create_technician(
                username, PASSWORD, display_name=username.title(), role=role, groups=[group.id]
            )
        rows = await _revocations(server, store, group, tmp)
        rows += await _failed_logins(server)
        agent = await _agent(server, store, group, tmp / "pinned")
        try:
            changed, server = await _changed_key(config, server, agent)
            rows += changed
        finally:
            await agent.stop()
            await server.stop()
        return rows


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure()), indent=2))
