"""The profile, audit and administration REST API, against the ``lab`` server.

Real HTTP over pinned TLS, real SQLite, real websockets: each administrative change
is shown to take effect on the server (a login, a closed socket, a status frame, an
enrolment), each refusal to carry its typed error, and the audit views to hold
metadata only. ``tech_console.admin_api.AdminApi`` is the client most tests use.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import io
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from device_agent.agent import enrol as agent_enrol
from device_agent.state import AgentState
from peer.signaling import RequestError, pinned
from protocol import identity
from protocol.enrolment import EnrolmentCode
from protocol.enums import (
    CloseReason,
    LiveSupportStatus,
    Mode,
    NotificationState,
    Role,
    SdpType,
    SessionState,
)
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import (
    SIGNALING,
    AuthDevice,
    DevicesSnapshot,
    DevicesSubscribe,
    DeviceStatus,
    DeviceUpdate,
    NotifyAnswer,
    NotifyDeliver,
    NotifySend,
    SessionAccept,
    SessionClose,
    SessionConsent,
    SessionInvite,
    SessionReject,
    SessionStart,
    SessionUpdate,
    SignalSdp,
)
from signaling_server.rest_admin import PHOTO_LIMIT
from signaling_server.store import TechnicianRow
from tech_console.admin_api import (
    NOTIFICATION_COLUMNS,
    SESSION_COLUMNS,
    AdminApi,
    NotificationRecord,
    NotificationTarget,
    SessionRecord,
    SessionSummary,
    notifications_csv,
    sessions_csv,
)
from tests.conftest import PASSWORD, Lab
from tests.integration.harness import make_pair, until
from tests.signaling_server.wire import (
    FINGERPRINT_A,
    FINGERPRINT_B,
    EnrolledDevice,
    Wire,
    clients,
    enrol,
    hub_of,
    login,
    post,
    sdp,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(200))
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(200))

ADMIN_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/admin/technicians", {}),
    (
        "POST",
        "/api/v1/admin/technicians",
        {"username": "x", "display_name": "X", "password": PASSWORD},
    ),
    ("POST", "/api/v1/admin/technicians/tech-0", {"disabled": True}),
    ("GET", "/api/v1/admin/groups", {}),
    ("POST", "/api/v1/admin/groups", {"name": "Kiosks"}),
    ("POST", "/api/v1/admin/groups/grp-0/policy", {"service_enabled": False}),
    ("POST", "/api/v1/admin/enrolment-tokens", {"group": "Tablets", "ttl_s": 600}),
    ("GET", "/api/v1/admin/devices", {}),
    ("POST", "/api/v1/admin/devices/dev-0/revoke", {}),
]


async def get(
    lab: Lab, path: str, *, token: str | None = None, params: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            lab.url + path, params=params, headers=headers, ssl=pinned(lab.fingerprint)
        ) as response,
    ):
        payload = await response.json(content_type=None)
        assert isinstance(payload, dict), payload
        return response.status, payload


async def raw_post(lab: Lab, path: str, data: bytes, token: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            lab.url + path,
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ssl=pinned(lab.fingerprint),
        ) as response,
    ):
        payload = await response.json(content_type=None)
        assert isinstance(payload, dict), payload
        return response.status, payload


async def api(lab: Lab, username: str) -> AdminApi:
    return AdminApi(lab.url, lab.fingerprint, await login(lab, username))


async def refused(call: Any, code: ErrorCode) -> RequestError:
    with pytest.raises(RequestError) as info:
        await call
    assert info.value.code == code.value, info.value
    return info.value


# --- profile --------------------------------------------------------------------------------


async def test_me_describes_the_logged_in_technician(lab: Lab) -> None:
    profile = await (await api(lab, "super")).me()
    assert profile.technician_id == lab.supervisor.id
    assert (profile.username, profile.display_name) == ("super", "Super")
    assert (profile.organisation, profile.role, profile.photo) == ("Test IT", Role.SUPERVISOR, b"")
    assert [(g.id, g.name) for g in profile.groups] == [(lab.tablets.id, "Tablets")]

    status, reply = await get(lab, "/api/v1/me")
    assert (status, reply["error"]) == (401, "unauthenticated")
    status, reply = await get(lab, "/api/v1/me", token="not-a-token")
    assert (status, reply["error"]) == (401, "unauthenticated")


async def test_a_new_name_and_photo_reach_the_next_invite(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        token = await login(lab, "tech")
        # The console logged in (and its socket authenticated) before the change.
        console = await c.raw()
        await console.auth_technician(token)
        await console.ok(DevicesSubscribe())
        first = await console.ok(
            SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="INC-1")
        )
        assert isinstance(first, SessionUpdate)
        invite = await device_wire.expect(SessionInvite)
        assert (invite.technician.display_name, invite.technician.photo) == ("Tech", "")
        await console.ok(SessionClose(session_id=first.session_id))

        profile = await AdminApi(lab.url, lab.fingerprint, token).update_profile(
            display_name="  Ada Lovelace  ", photo=PNG
        )
        assert (profile.display_name, profile.photo) == ("Ada Lovelace", PNG)
        # A new name is no new scope: the console's inventory is not sent again.
        await console.round_trip()
        assert not console.pending(DevicesSnapshot)

        second = await console.ok(
            SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="INC-1")
        )
        assert isinstance(second, SessionUpdate)
        invite = await device_wire.expect(
            SessionInvite, where=lambda i: i.session_id == second.session_id
        )
        assert invite.technician.display_name == "Ada Lovelace"
        assert base64.b64decode(invite.technician.photo) == PNG

        # A JPEG is fine too, and an empty photo removes it.
        admin_api = AdminApi(lab.url, lab.fingerprint, token)
        assert (await admin_api.update_profile(photo=JPEG)).photo == JPEG
        cleared = await admin_api.update_profile(photo=b"")
        assert (cleared.display_name, cleared.photo) == ("Ada Lovelace", b"")
    audit = [r for r in await lab.store.audit_rows() if r.action == "profile.update"]
    assert [(r.actor, json.loads(r.detail)["photo"]) for r in reversed(audit)] == [
        (lab.tech.id, "set"),
        (lab.tech.id, "set"),
        (lab.tech.id, "removed"),
    ]


async def test_the_largest_photo_fits_in_an_invite(lab: Lab) -> None:
    """The photo limit leaves room for the rest of the invite: with the longest name,
    organisation and reason there are, the invite still reaches the device."""
    widest = "\U0001f600"
    largest = PNG + bytes(PHOTO_LIMIT - len(PNG))
    token = await login(lab, "tech")
    admin = AdminApi(lab.url, lab.fingerprint, token)
    await refused(admin.update_profile(photo=largest + b"\x00"), ErrorCode.TOO_LARGE)
    assert (await admin.update_profile(display_name=widest * 128, photo=largest)).photo == largest
    # The profile route cannot set the organisation: straight into the store.
    async with lab.store.tx() as db:
        row = await db.get(TechnicianRow, lab.tech.id)
        assert row is not None
        row.organisation = widest * 128
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        console = await c.raw()
        await console.auth_technician(token)
        await console.ok(
            SessionStart(device_id=device.device_id, mode=Mode.VIDEO, reason=widest * 500)
        )
        invite = await device_wire.expect(SessionInvite)
        assert base64.b64decode(invite.technician.photo) == largest
        assert invite.technician.organisation == widest * 128


async def test_a_photo_too_large_for_an_invite_is_left_out_of_it(lab: Lab) -> None:
    """A photo stored past the limit (by the admin CLI, or before the limit) does not
    keep the technician from calling: the card goes without it."""
    oversized = base64.b64encode(PNG + bytes(48 * 1024 - len(PNG))).decode()
    await lab.store.update_technician(lab.tech.id, photo=oversized)
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        console = await c.console("tech")
        await console.ok(SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="x"))
        invite = await device_wire.expect(SessionInvite)
        assert (invite.technician.display_name, invite.technician.photo) == ("Tech", "")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"photo": base64.b64encode(b"GIF89a" + bytes(100)).decode()}, "invalid_field"),
        ({"photo": base64.b64encode(PNG + bytes(48 * 1024)).decode()}, "too_large"),
        ({"photo": base64.b64encode(PNG + bytes(PHOTO_LIMIT)).decode()}, "too_large"),
        ({"photo": "not base64!"}, "invalid_field"),
        ({"photo": 7}, "invalid_field"),
        ({"display_name": ""}, "invalid_field"),
        ({"display_name": "   "}, "invalid_field"),
        ({"display_name": "x" * 129}, "too_large"),
        ({"display_name": "Bell\x07"}, "invalid_field"),
        ({"display_name": "Admin\u202etoor"}, "invalid_field"),
        ({"display_name": "Ada", "role": "admin"}, "invalid_field"),
        ({}, "invalid_field"),
    ],
)
async def test_bad_profiles_are_refused(lab: Lab, body: dict[str, Any], code: str) -> None:
    token = await login(lab, "tech")
    status, reply = await post(lab, "/api/v1/me/profile", body, token=token)
    assert (status, reply["error"]) == (400, code), reply
    tech = await lab.store.technician(lab.tech.id)
    assert tech is not None
    assert (tech.display_name, tech.photo, tech.role) == ("Tech", "", Role.TECHNICIAN)


async def test_oversized_and_malformed_bodies(lab: Lab) -> None:
    token = await login(lab, "tech")
    huge = json.dumps({"display_name": "x" * (100 * 1024)}).encode()
    status, reply = await raw_post(lab, "/api/v1/me/profile", huge, token)
    assert (status, reply["error"]) == (413, "too_large")
    for data in (b"{not json", b"[1, 2]", b'{"display_name": "a", "display_name": "b"}'):
        status, reply = await raw_post(lab, "/api/v1/me/profile", data, token)
        assert (status, reply["error"]) == (400, "bad_frame"), data
    admin = await login(lab, "admin")
    big = json.dumps({"name": "x" * (20 * 1024)}).encode()
    status, reply = await raw_post(lab, "/api/v1/admin/groups", big, admin)
    assert (status, reply["error"]) == (413, "too_large")


async def test_unknown_routes_and_methods_answer_in_json(lab: Lab) -> None:
    token = await login(lab, "admin")
    status, reply = await get(lab, "/api/v1/admin/nothing", token=token)
    assert (status, reply["error"]) == (404, "not_found")
    status, reply = await get(lab, "/api/v1/admin/enrolment-tokens", token=token)
    assert (status, reply["error"]) == (405, "not_found")


# --- roles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["viewer", "tech", "super"])
async def test_only_an_admin_may_administer(lab: Lab, username: str) -> None:
    token = await login(lab, username)
    for method, path, body in ADMIN_ROUTES:
        if method == "GET":
            status, reply = await get(lab, path, token=token)
        else:
            status, reply = await post(lab, path, body, token=token)
        assert (status, reply["error"]) == (403, "forbidden"), (path, reply)
    ids = {"viewer": lab.viewer.id, "tech": lab.tech.id, "super": lab.supervisor.id}
    refusals = [r for r in await lab.store.audit_rows() if r.outcome == "forbidden"]
    assert len(refusals) == len(ADMIN_ROUTES)
    assert {r.actor for r in refusals} == {ids[username]}
    # Nothing changed.
    assert [g.name for g in await lab.store.groups()] == ["Desktops", "Tablets"]
    assert all(not t.disabled for t in await lab.store.technicians())


async def test_audit_views_need_view_audit_or_mine(lab: Lab) -> None:
    for username in ("tech", "viewer"):
        token = await login(lab, username)
        for path in ("/api/v1/audit/sessions", "/api/v1/audit/notifications"):
            status, reply = await get(lab, path, token=token)
            assert (status, reply["error"]) == (403, "forbidden")
    viewer = await login(lab, "viewer")
    status, reply = await get(lab, "/api/v1/audit/sessions", token=viewer, params={"mine": "1"})
    assert (status, reply["error"]) == (403, "forbidden")
    tech = await login(lab, "tech")
    status, reply = await get(lab, "/api/v1/audit/sessions", token=tech, params={"mine": "1"})
    assert (status, reply) == (200, {"sessions": []})
    status, reply = await get(
        lab,
        "/api/v1/audit/sessions",
        token=tech,
        params={"mine": "1", "technician": lab.other_tech.id},
    )
    assert (status, reply["error"]) == (400, "invalid_field")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"since_ms": "-5"},
        {"since_ms": "20", "until_ms": "10"},
        {"device": "bad id!"},
        {"mine": "yes"},
        {"chat": "1"},
    ],
)
async def test_bad_audit_queries(lab: Lab, params: dict[str, str]) -> None:
    token = await login(lab, "admin")
    for path in ("/api/v1/audit/sessions", "/api/v1/audit/notifications"):
        status, reply = await get(lab, path, token=token, params=params)
        assert (status, reply["error"]) == (400, "invalid_field"), (path, params)


# --- technicians ----------------------------------------------------------------------------


async def test_a_new_technician_logs_in_with_the_scope_given(lab: Lab) -> None:
    admin = await api(lab, "admin")
    created = await admin.create_technician(
        username="grace",
        display_name="Grace Hopper",
        password="navy cobol 1959",
        role=Role.SUPERVISOR,
        organisation="Navy IT",
        groups=["Desktops", lab.tablets.id],
    )
    assert (created.username, created.role, created.disabled) == ("grace", Role.SUPERVISOR, False)
    assert sorted(g.name for g in created.groups) == ["Desktops", "Tablets"]

    grace_token = await login(lab, "grace", "navy cobol 1959")
    grace = AdminApi(lab.url, lab.fingerprint, grace_token)
    profile = await grace.me()
    assert (profile.technician_id, profile.display_name) == (created.technician_id, "Grace Hopper")
    assert {g.id for g in profile.groups} == {lab.tablets.id, lab.desktops.id}
    async with clients(lab) as c:
        desktop = await enrol(lab, lab.desktops)
        await c.device(desktop)
        console = await c.raw()
        await console.auth_technician(grace_token)
        snapshot = await console.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert [d.device_id for d in snapshot.devices] == [desktop.device_id]
    listed = {t.username: t for t in await admin.technicians()}
    assert listed["grace"] == created
    assert set(listed) == {"admin", "grace", "other-tech", "super", "tech", "viewer"}
    audit = [r for r in await lab.store.audit_rows() if r.action == "technician.create"]
    assert [(r.actor, r.target) for r in audit] == [(lab.admin.id, created.technician_id)]
    assert "navy cobol" not in audit[0].detail


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"username": "tech"}, ErrorCode.CONFLICT),
        ({"groups": ["Kiosks"]}, ErrorCode.INVALID_FIELD),
        ({"password": "short"}, ErrorCode.INVALID_FIELD),
        ({"role": "device"}, ErrorCode.INVALID_FIELD),
        ({"role": "root"}, ErrorCode.INVALID_FIELD),
        ({"username": "has space"}, ErrorCode.INVALID_FIELD),
        ({"display_name": ""}, ErrorCode.INVALID_FIELD),
        ({"groups": "Tablets"}, ErrorCode.INVALID_FIELD),
        ({"shell": "/bin/sh"}, ErrorCode.INVALID_FIELD),
    ],
)
async def test_bad_new_technicians(lab: Lab, changes: dict[str, Any], code: ErrorCode) -> None:
    token = await login(lab, "admin")
    body = {
        "username": "new",
        "display_name": "New",
        "password": PASSWORD,
        "role": "technician",
        "groups": ["Tablets"],
        **changes,
    }
    status, reply = await post(lab, "/api/v1/admin/technicians", body, token=token)
    assert reply["error"] == code.value, reply
    assert status == (409 if code is ErrorCode.CONFLICT else 400)
    assert len(await lab.store.technicians()) == 5


async def test_a_disabled_technician_is_shut_out_at_once(lab: Lab) -> None:
    admin = await api(lab, "admin")
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        token = await login(lab, "tech")
        console = await c.raw()
        await console.auth_technician(token)
        started = await console.ok(
            SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="INC-1")
        )
        assert isinstance(started, SessionUpdate)
        await device_wire.ok(SessionAccept(session_id=started.session_id, mode=Mode.TEXT))

        record = await admin.update_technician(lab.tech.id, disabled=True)
        assert record.disabled
        # Their open console is closed, and the device's session ends with it.
        assert await console.wait_closed() == CloseCode.AUTH_FAILED
        closed = await device_wire.expect(
            SessionUpdate, where=lambda u: u.state is SessionState.CLOSED
        )
        assert closed.close_reason is CloseReason.TECHNICIAN_LOST
        assert hub_of(lab.server).sessions == {}
        status, reply = await get(lab, "/api/v1/me", token=token)
        assert (status, reply["error"]) == (401, "unauthenticated")
        status, reply = await post(lab, "/api/v1/login", {"username": "tech", "password": PASSWORD})
        assert (status, reply["error"]) == (401, "unauthenticated")

        # Enabled again, they log in afresh; the old token stays dead.
        await admin.update_technician(lab.tech.id, disabled=False)
        status, reply = await get(lab, "/api/v1/me", token=token)
        assert status == 401
        assert (await (await api(lab, "tech")).me()).technician_id == lab.tech.id
    assert [t.username for t in await admin.technicians() if t.disabled] == []


async def test_an_admin_cannot_lock_themselves_out(lab: Lab) -> None:
    admin = await api(lab, "admin")
    await refused(admin.update_technician(lab.admin.id, disabled=True), ErrorCode.CONFLICT)
    await refused(admin.update_technician(lab.admin.id, role=Role.VIEWER), ErrorCode.CONFLICT)
    await refused(admin.update_technician("tech-missing", disabled=True), ErrorCode.NOT_FOUND)
    await refused(admin.update_technician(lab.tech.id), ErrorCode.INVALID_FIELD)
    await refused(admin.update_technician(lab.tech.id, groups=["Kiosks"]), ErrorCode.INVALID_FIELD)
    # Renaming oneself is fine.
    renamed = await admin.update_technician(lab.admin.id, display_name="Head of IT")
    assert renamed.display_name == "Head of IT"


async def test_a_new_scope_and_role_apply_to_a_live_console(lab: Lab) -> None:
    admin = await api(lab, "admin")
    async with clients(lab) as c:
        desktop = await enrol(lab, lab.desktops, name="Desktop")
        desktop_wire = await c.device(desktop)
        console = await c.console("tech")
        snapshot = await console.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert snapshot.devices == ()
        start = SessionStart(device_id=desktop.device_id, mode=Mode.TEXT, reason="INC-1")
        await console.refused(start, ErrorCode.OUT_OF_SCOPE)

        await admin.update_technician(lab.tech.id, groups=[lab.tablets.id, "Desktops"])
        # The same socket, without a new login: the device appears and may be called.
        fresh = await console.expect(
            DevicesSnapshot,
            where=lambda s: any(d.device_id == desktop.device_id for d in s.devices),
        )
        assert fresh.rid is None
        started = await console.ok(start)
        assert isinstance(started, SessionUpdate)
        await desktop_wire.expect(SessionInvite)
        await console.ok(SessionClose(session_id=started.session_id))

        await admin.update_technician(lab.tech.id, role=Role.VIEWER)
        await console.refused(start, ErrorCode.FORBIDDEN)


# --- groups and policy ----------------------------------------------------------------------


async def test_groups_list_with_device_counts_and_creation(lab: Lab) -> None:
    admin = await api(lab, "admin")
    revoked = await enrol(lab)
    await enrol(lab)
    await enrol(lab, lab.desktops)
    await admin.revoke_device(revoked.device_id)
    counts = {
        g.name: (g.device_count, g.allowed_modes, g.service_enabled) for g in await admin.groups()
    }
    assert counts == {
        "Desktops": (1, (Mode.TEXT,), True),
        "Tablets": (1, (Mode.TEXT, Mode.VOICE, Mode.VIDEO), True),
    }
    kiosks = await admin.create_group(
        "Kiosks", allowed_modes=(Mode.VIDEO, Mode.TEXT), service_enabled=False
    )
    assert (kiosks.allowed_modes, kiosks.service_enabled, kiosks.device_count) == (
        (Mode.TEXT, Mode.VIDEO),
        False,
        0,
    )
    assert kiosks in await admin.groups()
    await refused(admin.create_group("Kiosks"), ErrorCode.CONFLICT)
    await refused(admin.create_group(""), ErrorCode.INVALID_FIELD)
    token = admin.token
    for body in ({"name": "X", "allowed_modes": ["fax"]}, {"name": "X", "allowed_modes": []}):
        status, reply = await post(lab, "/api/v1/admin/groups", body, token=token)
        assert (status, reply["error"]) == (400, "invalid_field")


async def test_a_policy_change_reaches_devices_and_consoles_at_once(lab: Lab) -> None:
    admin = await api(lab, "admin")
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        await device_wire.expect(
            DeviceStatus, where=lambda s: s.allowed_modes == (Mode.TEXT, Mode.VOICE, Mode.VIDEO)
        )
        console = await c.console("tech")
        await console.ok(DevicesSubscribe())

        policy = await admin.set_group_policy(lab.tablets.id, allowed_modes=[Mode.TEXT, Mode.VOICE])
        assert (policy.allowed_modes, policy.device_count) == ((Mode.TEXT, Mode.VOICE), 1)
        status = await device_wire.expect(
            DeviceStatus, where=lambda s: s.allowed_modes == (Mode.TEXT, Mode.VOICE)
        )
        assert status.status is LiveSupportStatus.DISCONNECTED
        update = await console.expect(
            DeviceUpdate, where=lambda u: u.device.allowed_modes == (Mode.TEXT, Mode.VOICE)
        )
        assert update.device.device_id == device.device_id
        await console.refused(
            SessionStart(device_id=device.device_id, mode=Mode.VIDEO, reason="INC-1"),
            ErrorCode.FORBIDDEN,
        )

        # Switched off by policy: the open session ends, the device shows Disabled.
        started = await console.ok(
            SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="INC-1")
        )
        assert isinstance(started, SessionUpdate)
        await device_wire.ok(SessionAccept(session_id=started.session_id, mode=Mode.TEXT))
        await admin.set_group_policy(lab.tablets.id, service_enabled=False)
        ended = await device_wire.expect(
            SessionUpdate, where=lambda u: u.state is SessionState.CLOSED
        )
        assert ended.close_reason is CloseReason.SERVICE_DISABLED
        status = await device_wire.expect(
            DeviceStatus, where=lambda s: s.status is LiveSupportStatus.DISABLED
        )
        assert not status.policy_enabled
        await console.expect(
            DeviceUpdate, where=lambda u: u.device.status is LiveSupportStatus.DISABLED
        )

        await admin.set_group_policy("Tablets", service_enabled=True)
        await device_wire.expect(
            DeviceStatus, where=lambda s: s.status is LiveSupportStatus.DISCONNECTED
        )
    audit = [r for r in await lab.store.audit_rows() if r.action == "group.policy"]
    assert [json.loads(r.detail)["service_enabled"] for r in reversed(audit)] == [
        True,
        False,
        True,
    ]


async def test_bad_policies_are_refused(lab: Lab) -> None:
    admin = await api(lab, "admin")
    await refused(admin.set_group_policy("grp-missing", service_enabled=False), ErrorCode.NOT_FOUND)
    await refused(admin.set_group_policy(lab.tablets.id), ErrorCode.INVALID_FIELD)
    await refused(admin.set_group_policy(lab.tablets.id, allowed_modes=[]), ErrorCode.INVALID_FIELD)
    path = f"/api/v1/admin/groups/{lab.tablets.id}/policy"
    for body in (
        {"allowed_modes": ["hologram"]},
        {"allowed_modes": "text"},
        {"service_enabled": "no"},
    ):
        status, reply = await post(lab, path, body, token=admin.token)
        assert (status, reply["error"]) == (400, "invalid_field"), body
    group = await lab.store.group(lab.tablets.id)
    assert (group.allowed_modes, group.service_enabled) == (tuple(Mode), True)


# --- enrolment and devices ------------------------------------------------------------------


async def test_an_issued_code_enrols_a_device_as_the_agent_does(lab: Lab, tmp_path: Path) -> None:
    admin = await api(lab, "admin")
    issued = await admin.issue_enrolment_token("Desktops", ttl_s=600)
    assert issued.group_id == lab.desktops.id
    code = EnrolmentCode.parse(issued.code)
    assert (code.server, code.fingerprint) == (lab.url, lab.fingerprint)
    device = await agent_enrol(AgentState(tmp_path / "agent"), issued.code, name="Desk 1")
    enrolled = await lab.store.device(device.device_id)
    assert enrolled is not None
    assert (enrolled.name, enrolled.group_id) == ("Desk 1", lab.desktops.id)
    # Single use, like every enrolment token.
    with pytest.raises(RequestError) as again:
        await agent_enrol(AgentState(tmp_path / "other"), issued.code)
    assert again.value.code == "expired"

    elsewhere = await admin.issue_enrolment_token(lab.tablets.id, server="https://10.0.0.5:8443")
    assert EnrolmentCode.parse(elsewhere.code).server == "https://10.0.0.5:8443"
    audit = [r for r in await lab.store.audit_rows() if r.action == "enrolment_token.issue"]
    assert sorted(r.target for r in audit) == sorted([lab.desktops.id, lab.tablets.id])
    assert all(code.token not in r.detail for r in audit)


@pytest.mark.parametrize(
    "body",
    [
        {"group": "Kiosks", "ttl_s": 600},
        {"group": "Tablets", "ttl_s": 59},
        {"group": "Tablets", "ttl_s": 7 * 24 * 3600 + 1},
        {"group": "Tablets", "ttl_s": "600"},
        {"group": "Tablets", "server": "http://plain.example:80"},
        {"ttl_s": 600},
    ],
)
async def test_bad_enrolment_token_requests(lab: Lab, body: dict[str, Any]) -> None:
    token = await login(lab, "admin")
    status, reply = await post(lab, "/api/v1/admin/enrolment-tokens", body, token=token)
    assert (status, reply["error"]) == (400, "invalid_field"), reply
    assert not [r for r in await lab.store.audit_rows() if r.action == "enrolment_token.issue"]


async def test_a_revoked_device_is_disconnected_and_stays_out(lab: Lab) -> None:
    admin = await api(lab, "admin")
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        listed = {d.device_id: d for d in await admin.devices()}
        assert listed[device.device_id].online
        assert (listed[device.device_id].name, listed[device.device_id].revoked) == (
            "Test device",
            False,
        )

        record = await admin.revoke_device(device.device_id)
        assert record.revoked
        assert await device_wire.wait_closed() == CloseCode.REVOKED

        again = await c.raw()
        await again.send(
            AuthDevice(
                device_id=device.device_id, signature=again.sign(device.key, device.device_id)
            )
        )
        assert await again.wait_closed() == CloseCode.REVOKED
    await until(lambda: device.device_id not in hub_of(lab.server).devices_online)
    listed = {d.device_id: d for d in await admin.devices()}
    assert (listed[device.device_id].revoked, listed[device.device_id].online) == (True, False)
    assert (await admin.revoke_device(device.device_id)).revoked  # twice is harmless
    await refused(admin.revoke_device("dev-missing"), ErrorCode.NOT_FOUND)
    audit = [r for r in await lab.store.audit_rows() if r.action == "device.revoke"]
    assert [(r.actor, r.target) for r in audit] == [(lab.admin.id, device.device_id)] * 2


# --- audit: sessions ------------------------------------------------------------------------


async def consented_session(
    lab: Lab, console: Wire, device_wire: Wire, device: EnrolledDevice, tech_id: str
) -> str:
    """A session accepted as text with a signed consent receipt, then closed."""
    started = await console.ok(
        SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="INC-7")
    )
    assert isinstance(started, SessionUpdate)
    session_id = started.session_id
    await device_wire.ok(SessionAccept(session_id=session_id, mode=Mode.TEXT))
    await console.send(
        SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(FINGERPRINT_A))
    )
    await device_wire.expect(SignalSdp)
    await device_wire.send(
        SignalSdp(session_id=session_id, sdp_type=SdpType.ANSWER, sdp=sdp(FINGERPRINT_B))
    )
    await console.expect(SignalSdp)
    row = await lab.store.session(session_id)
    assert row is not None
    assert row.accepted_at_ms is not None
    receipt = identity.sign_consent(
        device.key,
        session_id=session_id,
        device_id=device.device_id,
        technician_id=tech_id,
        mode=Mode.TEXT,
        accepted_at_ms=row.accepted_at_ms,
        offer_fingerprint=FINGERPRINT_A,
        answer_fingerprint=FINGERPRINT_B,
    )
    await device_wire.ok(SessionConsent(receipt=receipt))
    await console.ok(SessionClose(session_id=session_id))
    return session_id


async def test_session_history_is_scoped_and_verifies_consent(lab: Lab) -> None:
    async with clients(lab) as c:
        tablet, desktop = await enrol(lab, name="Tablet 1"), await enrol(lab, lab.desktops)
        tablet_wire, desktop_wire = await c.device(tablet), await c.device(desktop)
        tech, other = await c.console("tech"), await c.console("other-tech")
        mine = await consented_session(lab, tech, tablet_wire, tablet, lab.tech.id)
        theirs = await consented_session(lab, other, desktop_wire, desktop, lab.other_tech.id)
        # A third session the device rejects: no consent, no duration.
        started = await tech.ok(
            SessionStart(device_id=tablet.device_id, mode=Mode.VOICE, reason="INC-1")
        )
        assert isinstance(started, SessionUpdate)
        rejected = started.session_id
        await tablet_wire.expect(SessionInvite, where=lambda i: i.session_id == rejected)
        await tablet_wire.ok(SessionReject(session_id=rejected))
    summary = {
        "summary": "Reset Wi-Fi",
        "impact": "none",
        "expected_vs_actual": "as expected",
        "evidence": "speed test",
        "next_owner": "",
    }
    tech_token = await login(lab, "tech")
    status, _ = await post(lab, f"/api/v1/sessions/{mine}/summary", summary, token=tech_token)
    assert status == 200

    everything = await (await api(lab, "admin")).session_history()
    assert {r.session_id for r in everything} == {rejected, theirs, mine}
    # Newest first (the three were started one after the other).
    assert [r.created_at_ms for r in everything] == sorted(
        (r.created_at_ms for r in everything), reverse=True
    )
    assert everything[-1].session_id == mine
    supervised = await (await api(lab, "super")).session_history()
    assert {r.session_id for r in supervised} == {rejected, mine}
    own = await AdminApi(lab.url, lab.fingerprint, tech_token).session_history(mine=True)
    assert {r.session_id for r in own} == {rejected, mine}
    others_own = await (await api(lab, "other-tech")).session_history(mine=True)
    assert [r.session_id for r in others_own] == [theirs]

    record = next(r for r in everything if r.session_id == mine)
    assert (record.technician_id, record.technician_name) == (lab.tech.id, "Tech")
    assert (record.device_id, record.device_name, record.group_id) == (
        tablet.device_id,
        "Test device",
        lab.tablets.id,
    )
    assert (record.offered_mode, record.accepted_mode, record.reason) == (
        Mode.TEXT,
        Mode.TEXT,
        "INC-7",
    )
    assert (record.state, record.end_reason) == (SessionState.CLOSED, "closed_by_technician")
    assert record.accepted_at_ms is not None
    assert record.closed_at_ms is not None
    assert record.created_at_ms <= record.accepted_at_ms <= record.closed_at_ms
    assert record.duration_s is not None
    assert record.duration_s >= 0
    assert record.summary == SessionSummary(**summary)
    assert record.consent is not None
    assert (record.consent.session_id, record.consent.offer_fingerprint) == (mine, FINGERPRINT_A)
    assert (record.consent_verified, record.consent_problem) == (True, None)

    unanswered = next(r for r in everything if r.session_id == rejected)
    assert (unanswered.accepted_mode, unanswered.duration_s, unanswered.consent) == (
        None,
        None,
        None,
    )
    assert (unanswered.state, unanswered.end_reason) == (SessionState.REJECTED, "declined")
    assert not unanswered.consent_verified
    assert unanswered.consent_problem == "no consent receipt"

    # Filters.
    admin = await api(lab, "admin")
    assert [r.session_id for r in await admin.session_history(device_id=desktop.device_id)] == [
        theirs
    ]
    by_tech = await admin.session_history(technician_id=lab.tech.id, limit=1)
    assert [r.session_id for r in by_tech] == [max(own, key=lambda r: r.created_at_ms).session_id]
    later = await admin.session_history(since_ms=record.closed_at_ms + 1)
    assert mine not in [r.session_id for r in later]
    earlier = await admin.session_history(until_ms=record.created_at_ms)
    assert [r.session_id for r in earlier] == [mine]


async def test_a_tampered_or_misplaced_receipt_is_not_verified(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        console = await c.console("tech")
        first = await consented_session(lab, console, device_wire, device, lab.tech.id)
        second = await consented_session(lab, console, device_wire, device, lab.tech.id)
    admin = await api(lab, "admin")

    def verdicts(records: list[SessionRecord]) -> dict[str, tuple[bool, str | None]]:
        return {r.session_id: (r.consent_verified, r.consent_problem) for r in records}

    assert verdicts(await admin.session_history()) == {first: (True, None), second: (True, None)}

    row = await lab.store.session(first)
    assert row is not None
    assert row.consent_receipt is not None
    stored = SIGNALING.decode(row.consent_receipt)
    assert isinstance(stored, SessionConsent)
    # One millisecond moved: the signature no longer covers what the receipt says.
    forged = dataclasses.replace(stored.receipt, accepted_at_ms=stored.receipt.accepted_at_ms + 1)
    await lab.store.update_session(
        first, consent_receipt=SIGNALING.encode(SessionConsent(receipt=forged))
    )
    # A genuine receipt, copied onto another session, does not vouch for it.
    await lab.store.update_session(second, consent_receipt=row.consent_receipt)
    found = verdicts(await admin.session_history())
    assert found[first] == (False, "the signature does not verify")
    assert found[second] == (False, "the receipt's session_id does not match the session")

    await lab.store.update_session(first, consent_receipt="{garbage")
    record = (await admin.session_history(limit=1, until_ms=row.created_at_ms))[0]
    assert (record.session_id, record.consent, record.consent_verified) == (first, None, False)


# --- audit: notifications -------------------------------------------------------------------


async def test_notification_history_says_answered_never_what(lab: Lab) -> None:
    secret = "my PIN is 4711"
    async with clients(lab) as c:
        tablet, desktop = await enrol(lab, name="Tablet 1"), await enrol(lab, lab.desktops)
        tablet_wire = await c.device(tablet)
        tech, other = await c.console("tech"), await c.console("other-tech")
        await tech.ok(
            NotifySend(device_ids=(tablet.device_id,), title="Update tonight", body="Reboot at 9")
        )
        note = await tablet_wire.expect(NotifyDeliver)
        await tablet_wire.ok(NotifyAnswer(notification_id=note.notification_id, text=secret))
        await other.ok(NotifySend(device_ids=(desktop.device_id,), title="Desk", body="Hello"))

    admin = await api(lab, "admin")
    everything = await admin.notification_history()
    assert [n.title for n in everything] == ["Desk", "Update tonight"]
    tablet_note = everything[1]
    assert (tablet_note.notification_id, tablet_note.technician_id) == (
        note.notification_id,
        lab.tech.id,
    )
    assert (tablet_note.sender_name, tablet_note.expires_at_ms) == ("Tech", note.expires_at_ms)
    assert tablet_note.targets == (
        NotificationTarget(
            device_id=tablet.device_id,
            device_name="Test device",  # as the device last reported it
            state=NotificationState.ANSWERED,
            updated_at_ms=tablet_note.targets[0].updated_at_ms,
            answered=True,
        ),
    )
    desk_target = everything[0].targets[0]
    assert (desk_target.state, desk_target.answered) == (NotificationState.SENT, False)

    supervised = await (await api(lab, "super")).notification_history()
    assert [n.title for n in supervised] == ["Update tonight"]
    own = await (await api(lab, "other-tech")).notification_history(mine=True)
    assert [n.title for n in own] == ["Desk"]

    status, raw = await get(lab, "/api/v1/audit/notifications", token=admin.token)
    assert status == 200
    text = json.dumps(raw)
    assert secret not in text
    assert "Reboot at 9" not in text
    assert secret not in notifications_csv(everything)


# --- CSV export -----------------------------------------------------------------------------


async def test_the_csv_of_a_real_session_holds_no_chat(lab: Lab, tmp_path: Path) -> None:
    """A real text call between a real agent and a real console: the chat goes peer to
    peer; the server's record, its audit view and the CSV never hold a word of it."""
    marker = "chat-marker-7c1e"
    async with make_pair(lab, tmp_path) as pair:
        console = pair.console
        session = await console.start_session(pair.device_id, Mode.TEXT, "=HYPERLINK(evil)")
        await asyncio.wait_for(pair.answers.get(), 10)
        await until(lambda: session.call is not None and session.call.chat_open)
        await until(lambda: session.consent_verified)
        call = session.call
        assert call is not None
        await call.send_chat(f"Hello {marker}")
        await pair.until_device(lambda r: r["counts"]["chat_received"] == 1)
        await console.close_session(session.session_id)
        await console.wait_session(session, [SessionState.CLOSED])
        await console.write_summary(session.session_id, summary="Walked through settings")
        assert console.token is not None
        records = await AdminApi(lab.url, lab.fingerprint, console.token).session_history(mine=True)

    assert [r.session_id for r in records] == [session.session_id]
    # The device agent's real receipt, checked by the server on its own.
    assert (records[0].consent_verified, records[0].consent_problem) == (True, None)
    exported = sessions_csv(records)
    assert marker not in exported
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert list(rows[0]) == list(SESSION_COLUMNS)
    assert not any("chat" in column or "message" in column for column in SESSION_COLUMNS)
    device = await lab.store.device(pair.device_id)
    assert device is not None
    assert (rows[0]["who"], rows[0]["whom"]) == ("Tech", device.name)
    assert (rows[0]["mode"], rows[0]["consent_verified"]) == ("text", "yes")
    assert rows[0]["summary"] == "Walked through settings"
    # A reason that looks like a formula stays text in a spreadsheet.
    assert rows[0]["reason"] == "'=HYPERLINK(evil)"
    await lab.server.stop()
    database = lab.config.data_dir / "livesupport.db"
    with sqlite3.connect(database) as db:
        dump = "\n".join(db.iterdump())
    assert session.session_id in dump
    assert marker not in dump


def test_csv_columns_times_and_formula_guard() -> None:
    record = SessionRecord(
        session_id="ses-1",
        technician_id="tech-1",
        technician_name="Ada",
        device_id="dev-1",
        device_name="@SUM(A1)",
        group_id="grp-1",
        offered_mode=Mode.VIDEO,
        accepted_mode=None,
        reason="-1+1",
        state=SessionState.REJECTED,
        created_at_ms=0,
        accepted_at_ms=None,
        closed_at_ms=1000,
        duration_s=None,
        end_reason="declined",
        summary=None,
        consent=None,
        consent_verified=False,
        consent_problem="no consent receipt",
    )
    (row,) = csv.DictReader(io.StringIO(sessions_csv([record])))
    assert row == {
        "session_id": "ses-1",
        "who": "Ada",
        "technician_id": "tech-1",
        "whom": "'@SUM(A1)",
        "device_id": "dev-1",
        "when": "1970-01-01T00:00:00+00:00",
        "mode": "video",
        "state": "rejected",
        "consent_verified": "no",
        "duration_s": "",
        "reason": "'-1+1",
        "end_reason": "declined",
        "summary": "",
        "impact": "",
        "expected_vs_actual": "",
        "evidence": "",
        "next_owner": "",
    }
    note = NotificationRecord(
        notification_id="ntf-1",
        technician_id="tech-1",
        sender_name="Ada",
        title="=cmd|' /C calc'!A0",
        sent_at_ms=0,
        expires_at_ms=60_000,
        targets=(
            NotificationTarget("dev-1", "Tablet", NotificationState.READ, 1000, False),
            NotificationTarget("dev-2", "Desk", NotificationState.ANSWERED, 2000, True),
        ),
    )
    rows = list(csv.DictReader(io.StringIO(notifications_csv([note]))))
    assert [list(r) for r in rows] == [list(NOTIFICATION_COLUMNS)] * 2
    assert [(r["device"], r["state"], r["answered"]) for r in rows] == [
        ("Tablet", "read", "no"),
        ("Desk", "answered", "yes"),
    ]
    assert rows[0]["title"].startswith("'=")
    assert rows[0]["expires"] == "1970-01-01T00:01:00+00:00"
    assert sessions_csv([]) == ",".join(SESSION_COLUMNS) + "\r\n"
