"""Trust at the server's edge (issue 6): failed logins slow down per account and per
address, admin routes stay shut whatever the path spelling, enrolment codes are
single use under a race, and a technician's token bounds both REST and its socket.
All against a real server on loopback over pinned TLS."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from peer.signaling import pinned
from protocol import identity
from protocol.errors import CloseCode
from protocol.messages import AuthTechnician
from signaling_server.app import LOGIN_GUARD
from tests.conftest import PASSWORD, Lab
from tests.signaling_server.test_rest import enrol_body
from tests.signaling_server.wire import clients, login, post, small_lab


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def raw_request(
    lab: Any,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    http: aiohttp.ClientSession | None = None,
) -> int:
    """Send ``path`` exactly as spelled (no client-side normalisation): the status."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = URL(lab.url + path, encoded=True)
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(aiohttp.ClientSession())
        async with http.request(
            method, url, json=body, headers=headers, ssl=pinned(lab.fingerprint)
        ) as response:
            await response.read()
            return response.status


async def try_login(lab: Any, username: str, password: str) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            lab.url + "/api/v1/login",
            json={"username": username, "password": password},
            ssl=pinned(lab.fingerprint),
        ) as response,
    ):
        await response.read()
        return response.status, dict(response.headers)


# --- failed logins ---------------------------------------------------------------------


async def test_failed_logins_lock_the_account_then_the_address_with_retry_after(
    lab: Lab,
) -> None:
    assert lab.server.app is not None
    guard = lab.server.app[LOGIN_GUARD]
    clock = Clock()
    guard.clock = clock  # the server's own guard, on a clock the test moves
    statuses = [(await try_login(lab, "tech", "wrong"))[0] for _ in range(3)]
    assert statuses == [401, 401, 401]  # three free failures

    status, _ = await try_login(lab, "tech", "wrong")
    assert status == 401  # the fourth failure starts a 1 s lock
    status, headers = await try_login(lab, "tech", PASSWORD)
    # Even the right password waits: the lock answers before any password is checked.
    assert (status, headers["Retry-After"]) == (429, "1")
    clock.now += 1.0
    status, _ = await try_login(lab, "tech", "wrong")
    assert status == 401
    status, headers = await try_login(lab, "tech", "wrong")
    assert (status, headers["Retry-After"]) == (429, "2")  # doubled

    # The address failed five times too: another name from it is locked as well.
    status, _ = await try_login(lab, "super", PASSWORD)
    assert status == 429
    clock.now += 2.0
    status, _ = await try_login(lab, "tech", PASSWORD)
    assert status == 200
    # The success reset the account; the address keeps its count.
    assert guard.retry_after("tech", "10.1.2.3") == 0
    assert guard.retry_after("someone", "127.0.0.1") == 0

    rows = [r for r in await lab.store.audit_rows() if r.action == "login.lockout"]
    assert sorted(r.target for r in rows) == [
        "account:tech",
        "account:tech",
        "address:127.0.0.1",
        "address:127.0.0.1",
    ]


async def test_a_name_sprayed_from_one_address_is_refused_for_every_name(lab: Lab) -> None:
    assert lab.server.app is not None
    lab.server.app[LOGIN_GUARD].clock = Clock()
    for n in range(4):
        status, _ = await try_login(lab, f"guess-{n}", "wrong")
        assert status == 401
    status, headers = await try_login(lab, "admin", PASSWORD)
    assert (status, headers["Retry-After"]) == (429, "1")


async def test_the_lock_runs_out_on_the_real_clock(tmp_path: Path) -> None:
    async with small_lab(
        tmp_path, login_free_failures=0, login_backoff_base_s=0.2, login_backoff_cap_s=0.2
    ) as small:
        status, _ = await try_login(small, "admin", "wrong")
        assert status == 401
        last: list[int] = []

        async def allowed() -> bool:
            last.append((await try_login(small, "admin", PASSWORD))[0])
            return last[-1] == 200

        deadline = asyncio.get_running_loop().time() + 10
        while not await allowed():
            assert last[-1] == 429
            assert asyncio.get_running_loop().time() < deadline
        assert last[-1] == 200


# --- admin routes, however spelled --------------------------------------------------------


def spellings(path: str) -> list[str]:
    """``/api/v1/admin/x`` as an attacker might write it to slip past a prefix check."""
    tail = path.removeprefix("/api/v1/admin/")
    return [
        path,
        "/" + path,
        path + "/",
        path.upper(),
        "/API/v1/admin/" + tail,
        "/api/v1/ADMIN/" + tail,
        "/api/v1/./admin/" + tail,
        "/api/v1/x/../admin/" + tail,
        "/api/v1/%61dmin/" + tail,
        "/api/v1/admin%2f" + tail,
        "/api/v1/admin/" + tail + ";foo",
        "/api/v1/admin//" + tail,
        "/api/v1/admin/" + tail + "%00",
        "/api/v1/admin/" + tail + "?role=admin",
    ]


def admin_routes(lab: Lab) -> list[tuple[str, str]]:
    assert lab.server.app is not None
    found = []
    for route in lab.server.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if canonical.startswith("/api/v1/admin") and route.method in ("GET", "POST"):
            found.append((route.method, re.sub(r"\{[^}]+\}", "x-1", canonical)))
    return found


async def test_no_admin_route_answers_a_non_admin_however_spelled(lab: Lab) -> None:
    routes = admin_routes(lab)
    # Every admin route the app has, not a list kept by hand beside it.
    assert len(routes) >= 9
    tokens: dict[str, str | None] = {"nobody": None}
    for username in ("viewer", "tech", "super"):
        tokens[username] = await login(lab, username)
    admin = await login(lab, "admin")
    # The test can fail: the admin is answered on the plain spelling.
    assert await raw_request(lab, "GET", "/api/v1/admin/technicians", token=admin) == 200
    answered: list[tuple[str, str, str, int]] = []
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            for spelled in spellings(path):
                for who, token in tokens.items():
                    status = await raw_request(
                        lab, method, spelled, token=token, body={}, http=http
                    )
                    if not (400 <= status < 500):
                        answered.append((who, method, spelled, status))
    assert answered == []
    # And nothing was created or changed on the way.
    assert [g.name for g in await lab.store.groups()] == ["Desktops", "Tablets"]
    assert len(await lab.store.technicians()) == 5


# --- enrolment codes and technician tokens ---------------------------------------------


async def test_two_enrolments_racing_with_one_code_one_wins(lab: Lab) -> None:
    token = await lab.store.issue_enrolment_token(lab.tablets.id, created_by="test", ttl_s=600)
    results = await asyncio.gather(
        *(post(lab, "/api/v1/enrol", enrol_body(token)) for _ in range(6))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 403, 403, 403, 403, 403]
    assert len(await lab.store.devices()) == 1


async def test_an_expired_token_ends_its_socket_and_its_rest(tmp_path: Path) -> None:
    async with small_lab(tmp_path, technician_token_ttl_s=5) as small:
        token = await login(small, "admin")
        async with clients(small) as c:
            console = await c.raw()
            await console.auth_technician(token)
            assert await raw_request(small, "GET", "/api/v1/me", token=token) == 200
            # The hub ends the socket when the token runs out, without a request.
            assert await console.wait_closed(timeout_s=30) == CloseCode.AUTH_FAILED
        assert await raw_request(small, "GET", "/api/v1/me", token=token) == 401
        async with clients(small) as c:
            again = await c.raw()
            await again.send(AuthTechnician(token=token))
            assert await again.wait_closed() == CloseCode.AUTH_FAILED


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://127.0.0.1"])
async def test_foreign_origins_are_refused(lab: Lab, origin: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                lab.url + "/ws", ssl=pinned(lab.fingerprint), headers={"Origin": origin}
            )
    assert refused.value.status == 403


def test_enrol_body_keys_are_fresh() -> None:
    # The race above needs distinct keys: the loser must lose on the code, not the key.
    first, second = enrol_body("t"), enrol_body("t")
    assert first["public_key"] != second["public_key"]
    identity.load_public_key(first["public_key"])
