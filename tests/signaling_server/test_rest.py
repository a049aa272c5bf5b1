"""The REST side of the server: enrolment, login and logout, the summary, the Origin
check of the websocket, all over pinned TLS against the ``lab`` server."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from peer.signaling import pinned
from protocol import identity
from protocol.enums import Mode, SessionState
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import (
    AuthTechnician,
    SessionAccept,
    SessionClose,
    SessionStart,
    SessionUpdate,
)
from tests.conftest import PASSWORD, Lab
from tests.signaling_server.wire import clients, enrol, login, post


def enrol_body(token: str, public_key: str | None = None) -> dict[str, str]:
    return {
        "token": token,
        "public_key": public_key or identity.public_key_b64(identity.generate_key()),
        "name": "Tablet",
        "model": "Test model",
        "os": "TestOS 1",
    }


async def test_an_enrolment_token_is_single_use(lab: Lab) -> None:
    token = await lab.store.issue_enrolment_token(lab.tablets.id, created_by="test", ttl_s=600)
    status, reply = await post(lab, "/api/v1/enrol", enrol_body(token))
    assert status == 200, reply
    assert reply["group_id"] == lab.tablets.id
    assert reply["server_fingerprint"] == lab.fingerprint

    status, reply = await post(lab, "/api/v1/enrol", enrol_body(token))
    assert status == 403
    assert reply["error"] == ErrorCode.EXPIRED.value
    assert "used already" in reply["message"]
    assert len(await lab.store.devices()) == 1


async def test_expired_and_unknown_enrolment_tokens_are_refused(lab: Lab) -> None:
    expired = await lab.store.issue_enrolment_token(lab.tablets.id, created_by="test", ttl_s=-1)
    status, reply = await post(lab, "/api/v1/enrol", enrol_body(expired))
    assert (status, reply["error"]) == (403, "expired")
    assert "expired" in reply["message"]

    status, reply = await post(lab, "/api/v1/enrol", enrol_body("A" * 32))
    assert (status, reply["error"]) == (403, "expired")
    assert "unknown" in reply["message"]
    assert await lab.store.devices() == []
    refusals = [r for r in await lab.store.audit_rows() if r.action == "enrol"]
    assert [r.outcome for r in refusals] == ["refused", "refused"]


@pytest.mark.parametrize(
    "public_key",
    [
        "not base64!",
        base64.b64encode(b"\x01" * 31).decode(),  # one byte short of a key
        base64.b64encode(b"\x01" * 64).decode(),
    ],
)
async def test_a_bad_public_key_is_refused(lab: Lab, public_key: str) -> None:
    token = await lab.store.issue_enrolment_token(lab.tablets.id, created_by="test", ttl_s=600)
    status, reply = await post(lab, "/api/v1/enrol", enrol_body(token, public_key))
    assert (status, reply["error"]) == (400, ErrorCode.INVALID_FIELD.value)
    # The token was not spent on the bad request.
    status, reply = await post(lab, "/api/v1/enrol", enrol_body(token))
    assert status == 200, reply


async def test_bad_enrolment_bodies_and_a_key_enrolled_twice(lab: Lab) -> None:
    status, reply = await post(lab, "/api/v1/enrol", ["not", "an", "object"])
    assert (status, reply["error"]) == (400, "bad_frame")
    token = await lab.store.issue_enrolment_token(lab.tablets.id, created_by="test", ttl_s=600)
    status, reply = await post(lab, "/api/v1/enrol", {**enrol_body(token), "name": 7})
    assert (status, reply["error"]) == (400, "invalid_field")
    status, reply = await post(lab, "/api/v1/enrol", {**enrol_body(token), "name": "x" * 129})
    assert (status, reply["error"]) == (400, "too_large")

    device = await enrol(lab)
    same_key = identity.public_key_b64(device.key)
    status, reply = await post(lab, "/api/v1/enrol", enrol_body(token, same_key))
    assert (status, reply["error"]) == (403, "expired")
    assert "enrolled already" in reply["message"]


async def test_login_with_a_wrong_password_or_user(lab: Lab) -> None:
    for username, password in (("tech", "wrong password"), ("nobody", PASSWORD)):
        status, reply = await post(
            lab, "/api/v1/login", {"username": username, "password": password}
        )
        assert status == 401
        assert reply == {
            "error": ErrorCode.UNAUTHENTICATED.value,
            "message": "wrong username or password",
        }
    failures = [r for r in await lab.store.audit_rows() if r.action == "login"]
    assert sorted((r.actor, r.outcome) for r in failures) == [
        ("nobody", "failed"),
        ("tech", "failed"),
    ]
    status, reply = await post(lab, "/api/v1/login", {"username": "tech", "password": PASSWORD})
    assert status == 200
    assert (reply["technician_id"], reply["role"]) == (lab.tech.id, "technician")


async def test_logout_revokes_the_token(lab: Lab) -> None:
    token = await login(lab, "tech")
    async with clients(lab) as c:
        before = await c.raw()
        await before.auth_technician(token)

        status, reply = await post(lab, "/api/v1/logout", {}, token=token)
        assert (status, reply) == (200, {"ok": True})
        # The socket that logged in with the token is ended with it.
        assert await before.wait_closed() == CloseCode.AUTH_FAILED
        status, reply = await post(lab, "/api/v1/logout", {}, token=token)
        assert (status, reply["error"]) == (401, "unauthenticated")
        status, reply = await post(lab, "/api/v1/logout", {})
        assert (status, reply["error"]) == (401, "unauthenticated")

        after = await c.raw()
        await after.send(AuthTechnician(token=token))
        await after.expect_error(ErrorCode.UNAUTHENTICATED)
        assert await after.wait_closed() == CloseCode.AUTH_FAILED


async def test_a_websocket_from_a_foreign_origin_is_refused(lab: Lab) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                lab.url + "/ws",
                ssl=pinned(lab.fingerprint),
                headers={"Origin": "https://evil.example"},
            )
        assert refused.value.status == 403
    # The server's own origin, and no origin at all (native clients), are fine.
    async with clients(lab) as c:
        same = await c.raw(headers={"Origin": lab.url})
        device = await enrol(lab)
        await same.auth_device(device.device_id, device.key)
        plain = await c.raw()
        await plain.auth_technician(await login(lab, "tech"))


async def test_the_session_summary(lab: Lab) -> None:
    summary = {
        "summary": "Reset the Wi-Fi settings",
        "impact": "none",
        "expected_vs_actual": "expected a reboot; none needed",
        "evidence": "speed test",
        "next_owner": "",
    }
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        tech_token = await login(lab, "tech")
        console = await c.raw()
        await console.auth_technician(tech_token)
        started = await console.ok(
            SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="Ticket #7")
        )
        assert isinstance(started, SessionUpdate)
        session_id = started.session_id
        path = f"/api/v1/sessions/{session_id}/summary"
        await device_wire.ok(SessionAccept(session_id=session_id, mode=Mode.TEXT))

        status, reply = await post(lab, path, summary, token=tech_token)
        assert (status, reply["error"]) == (409, "bad_state")
        await console.ok(SessionClose(session_id=session_id))

        other_token = await login(lab, "super")
        status, reply = await post(lab, path, summary, token=other_token)
        assert (status, reply["error"]) == (404, "not_found")
        viewer_token = await login(lab, "viewer")
        status, reply = await post(lab, path, summary, token=viewer_token)
        assert (status, reply["error"]) == (403, "forbidden")
        status, reply = await post(lab, path, {**summary, "summary": "  "}, token=tech_token)
        assert (status, reply["error"]) == (400, "invalid_field")
        status, reply = await post(lab, path, summary)
        assert (status, reply["error"]) == (401, "unauthenticated")

        status, reply = await post(lab, path, summary, token=tech_token)
        assert (status, reply) == (200, {"ok": True})
        row = await lab.store.session(session_id)
        assert row is not None
        assert row.state == SessionState.CLOSED.value
        assert row.summary is not None
        assert json.loads(row.summary) == summary


async def test_health(lab: Lab) -> None:
    async with (
        clients(lab) as c,
        aiohttp.ClientSession() as http,
    ):
        device = await enrol(lab)
        await c.device(device)
        async with http.get(lab.url + "/api/v1/health", ssl=pinned(lab.fingerprint)) as response:
            assert response.status == 200
            health = await response.json()
    assert health["status"] == "ok"
    assert health["devices_online"] == 1
