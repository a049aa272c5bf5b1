"""The whole permission matrix against the real server: every role × every action of
``protocol/permissions.py`` × a target in or out of the sender's scope.

The oracle is the table itself (``allows`` and ``in_scope``), not a copy of it: each
case drives the real server (websocket or REST, whichever carries the action) and
checks that what happened equals what the table says. An allowed case must have its
real effect (a session invited, a notification stored, a device revoked...). A
refused case must change nothing in the store and must leave an audit record naming
the sender and the refusal.

Scope, per kind of action:

* actions on devices of a group (view devices, start a session, send a notification,
  view the audit): in scope is a device of the sender's group (Tablets), out of scope
  a device of Desktops. Only the admin is unscoped. Reading views filter rather than
  refuse: a device out of scope is simply not in the snapshot or the audit view.
* actions on a session or notification (close, write a summary, take part in a call,
  answer a session or a notification): in scope is one's own, out of scope someone
  else's. Membership is the rule here for every role, the admin's included: the
  refusal is ``not_found`` (nobody learns of others' sessions), and it is audited.
* administration (technicians, groups, enrolment tokens, revocation, policy): the
  admin only, on either group.

A device has no REST credential at all (its key signs websocket challenges only), so
its REST attempts are refused ``401`` with no principal to audit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from peer.signaling import pinned
from protocol.codec import Message
from protocol.enums import DeviceAck, Mode, NotificationState, Role, SessionState
from protocol.messages import (
    DevicesSnapshot,
    DevicesSubscribe,
    Error,
    NotifyAck,
    NotifyDeliver,
    NotifySend,
    NotifySent,
    Ok,
    SessionAccept,
    SessionAttach,
    SessionClose,
    SessionInvite,
    SessionStart,
    SessionUpdate,
    StatusReport,
)
from protocol.permissions import Action, allows, in_scope
from tests.conftest import Lab
from tests.signaling_server.wire import Clients, EnrolledDevice, Wire, clients, enrol, login, post

A = Action
USERNAMES = {
    Role.ADMIN: "admin",
    Role.SUPERVISOR: "super",
    Role.TECHNICIAN: "tech",
    Role.VIEWER: "viewer",
}

#: Actions whose target is a device of a group: scope is the group.
GROUP_SCOPED = frozenset({A.VIEW_DEVICES, A.START_SESSION, A.SEND_NOTIFICATION, A.VIEW_AUDIT})
#: Actions whose target is a session or notification: scope is membership.
MEMBERSHIP = frozenset(
    {A.CLOSE_SESSION, A.WRITE_SUMMARY, A.TAKE_PART_IN_CALL, A.ANSWER_SESSION, A.ANSWER_NOTIFICATION}
)
#: Actions carried by REST rather than the websocket.
REST = frozenset(
    {
        A.WRITE_SUMMARY,
        A.VIEW_AUDIT,
        A.MANAGE_TECHNICIANS,
        A.MANAGE_GROUPS,
        A.ISSUE_ENROLMENT_TOKEN,
        A.REVOKE_DEVICE,
        A.SET_POLICY,
    }
)


def expected(
    role: Role, action: Action, scoped_in: bool, tech_groups: frozenset[str], out_group: str
) -> bool:
    """What the table says: allowed, and the target within reach."""
    if not allows(role, action):
        return False
    if scoped_in:
        return True
    if action in MEMBERSHIP:
        return False
    if action in GROUP_SCOPED:
        return in_scope(role, tech_groups, out_group)
    return True  # administration: the admin is unscoped


@dataclasses.dataclass
class Outcome:
    allowed: bool
    #: The refusal: an error code on the wire, "hidden" for a filtered view.
    code: str = ""


Attempt = Callable[[], Awaitable[Outcome]]
#: A prepared case: the attempt, and the connection that makes it.
Case = tuple[Attempt, Wire]
Driver = Callable[["Matrix", Role, bool, Wire], Awaitable[Case]]


class Matrix:
    """The lab's people connected: a console per technician role, devices on demand."""

    def __init__(self, lab: Lab, c: Clients) -> None:
        self.lab = lab
        self.c = c
        self.consoles: dict[Role, Wire] = {}
        self.tokens: dict[Role, str] = {}
        self.principals: dict[Role, str] = {
            Role.ADMIN: lab.admin.id,
            Role.SUPERVISOR: lab.supervisor.id,
            Role.TECHNICIAN: lab.tech.id,
            Role.VIEWER: lab.viewer.id,
        }
        self.groups: dict[Role, frozenset[str]] = {
            Role.ADMIN: lab.admin.groups,
            Role.SUPERVISOR: lab.supervisor.groups,
            Role.TECHNICIAN: lab.tech.groups,
            Role.VIEWER: lab.viewer.groups,
            Role.DEVICE: frozenset(),
        }
        self.other: Wire | None = None  # other-tech (Desktops): owns out-of-scope sessions
        #: Who each connection authenticated as, by id() of its Wire.
        self.principal_of: dict[int, str] = {}

    async def start(self) -> Matrix:
        for role, username in USERNAMES.items():
            token = await login(self.lab, username)
            wire = await self.c.raw()
            await wire.auth_technician(token)
            self.consoles[role], self.tokens[role] = wire, token
            self.principal_of[id(wire)] = self.principals[role]
        self.other = await self.c.console("other-tech")
        return self

    async def device(self, *, out_of_scope: bool = False) -> tuple[EnrolledDevice, Wire]:
        group = self.lab.desktops if out_of_scope else self.lab.tablets
        device = await enrol(self.lab, group)
        wire = await self.c.device(device)
        self.principal_of[id(wire)] = device.device_id
        return device, wire

    async def session(
        self, owner: Wire, *, out_of_scope: bool = False, accept: bool = False
    ) -> tuple[str, EnrolledDevice, Wire]:
        device, device_wire = await self.device(out_of_scope=out_of_scope)
        update = await owner.ok(
            SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="Ticket")
        )
        assert isinstance(update, SessionUpdate), update
        await device_wire.expect(SessionInvite)
        if accept:
            await device_wire.ok(SessionAccept(session_id=update.session_id, mode=Mode.TEXT))
        return update.session_id, device, device_wire

    async def closed_session(self, owner: Wire, *, out_of_scope: bool = False) -> str:
        session_id, _, _ = await self.session(owner, out_of_scope=out_of_scope)
        await owner.ok(SessionClose(session_id=session_id))
        return session_id

    async def target_session(
        self, role: Role, scoped_in: bool, *, accept: bool = False, closed: bool = False
    ) -> str:
        """The session a case acts on: the sender's own when in scope (if its role can
        start one; another Tablets technician's otherwise), other-tech's on a Desktops
        device when out of scope."""
        assert self.other is not None
        if scoped_in:
            owner = self.consoles[role if allows(role, A.START_SESSION) else Role.TECHNICIAN]
        else:
            owner = self.other
        session_id, _, _ = await self.session(owner, out_of_scope=not scoped_in, accept=accept)
        if closed:
            await owner.ok(SessionClose(session_id=session_id))
        return session_id

    async def state(self) -> Any:
        """Everything an action could change, as comparable values."""
        store = self.lab.store
        sessions = sorted(
            (s.id, s.state, s.closed_at_ms, s.accepted_mode, s.summary)
            for s in await store.sessions()
        )
        notes = await store.notification_history(limit=1000)
        return (
            sessions,
            [(n.notification.id, n.notification.title, n.targets) for n in notes],
            sorted(repr(d) for d in await store.devices()),
            sorted(repr(g) for g in await store.groups()),
            sorted(repr(t) for t in await store.technicians()),
        )

    async def rest(
        self, role: Role, method: str, path: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        token = self.tokens.get(role)  # a device has none
        if method == "POST":
            return await post(self.lab, path, body if body is not None else {}, token=token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                self.lab.url + path, headers=headers, ssl=pinned(self.lab.fingerprint)
            ) as response,
        ):
            payload = await response.json(content_type=None)
            assert isinstance(payload, dict)
            return response.status, payload


async def _ws(wire: Wire, message: Message) -> Message:
    return await wire.request(message)


async def until_async(
    read: Callable[[], Awaitable[str]], want: str, timeout_s: float = 10.0
) -> None:
    """Wait, with a deadline, until ``read()`` gives ``want``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (got := await read()) != want:
        assert loop.time() < deadline, f"still {got!r}, not {want!r}"
        await asyncio.sleep(0.01)


def _refused(reply: Message) -> Outcome:
    assert isinstance(reply, Error), reply
    return Outcome(False, reply.code.value)


def _http(status: int, reply: dict[str, Any], ok: int = 200) -> Outcome | None:
    if status == ok:
        return None
    return Outcome(False, str(reply.get("error", status)))


# --- one driver per action: prepare the case, return the attempt --------------------------


async def view_devices(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    device, _ = await m.device(out_of_scope=not scoped_in)

    async def attempt() -> Outcome:
        reply = await _ws(sender, DevicesSubscribe())
        if isinstance(reply, Error):
            return _refused(reply)
        assert isinstance(reply, DevicesSnapshot), reply
        visible = device.device_id in {d.device_id for d in reply.devices}
        await sender.ok(_unsubscribe())
        return Outcome(True) if visible else Outcome(False, "hidden")

    return attempt, sender


def _unsubscribe() -> Message:
    from protocol.messages import DevicesUnsubscribe

    return DevicesUnsubscribe()


async def start_session(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    device, device_wire = await m.device(out_of_scope=not scoped_in)

    async def attempt() -> Outcome:
        reply = await _ws(
            sender, SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="Ticket")
        )
        if isinstance(reply, Error):
            return _refused(reply)
        assert isinstance(reply, SessionUpdate), reply
        assert reply.state is SessionState.INVITED, reply
        await device_wire.expect(SessionInvite)
        assert (await m.lab.store.session(reply.session_id)) is not None
        return Outcome(True)

    return attempt, sender


async def close_session(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    session_id = await m.target_session(role, scoped_in)

    async def attempt() -> Outcome:
        reply = await _ws(sender, SessionClose(session_id=session_id))
        if isinstance(reply, Error):
            return _refused(reply)
        row = await m.lab.store.session(session_id)
        assert row is not None
        assert row.closed_at_ms is not None
        return Outcome(True)

    return attempt, sender


async def send_notification(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    device, device_wire = await m.device(out_of_scope=not scoped_in)

    async def attempt() -> Outcome:
        reply = await _ws(
            sender, NotifySend(device_ids=(device.device_id,), title="Hello", body="Update tonight")
        )
        if isinstance(reply, Error):
            return _refused(reply)
        assert isinstance(reply, NotifySent), reply
        assert reply.device_ids == (device.device_id,), reply
        await device_wire.expect(NotifyDeliver)
        return Outcome(True)

    return attempt, sender


async def write_summary(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    session_id = await m.target_session(role, scoped_in, closed=True)

    async def attempt() -> Outcome:
        status, reply = await m.rest(
            role, "POST", f"/api/v1/sessions/{session_id}/summary", {"summary": "Fixed"}
        )
        refused = _http(status, reply)
        if refused:
            return refused
        row = await m.lab.store.session(session_id)
        assert row is not None
        assert row.summary is not None
        assert "Fixed" in row.summary
        return Outcome(True)

    return attempt, sender


async def view_audit(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    owner = m.consoles[Role.TECHNICIAN] if scoped_in else m.other
    assert owner is not None
    session_id = await m.closed_session(owner, out_of_scope=not scoped_in)

    async def attempt() -> Outcome:
        status, reply = await m.rest(role, "GET", "/api/v1/audit/sessions")
        refused = _http(status, reply)
        if refused:
            return refused
        seen = {s["session_id"] for s in reply["sessions"]}
        return Outcome(True) if session_id in seen else Outcome(False, "hidden")

    return attempt, sender


def _admin_rest(
    method: str,
    path: Callable[[Matrix, bool], Awaitable[str]],
    body: Callable[[Matrix, bool], Any],
    status_ok: int,
    effect: Callable[[Matrix, bool, dict[str, Any]], Awaitable[bool]],
) -> Driver:
    async def driver(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
        where = await path(m, scoped_in)

        async def attempt() -> Outcome:
            status, reply = await m.rest(role, method, where, body(m, scoped_in))
            refused = _http(status, reply, status_ok)
            if refused:
                return refused
            assert await effect(m, scoped_in, reply), reply
            return Outcome(True)

        return attempt, sender

    return driver


_names = itertools.count(1)


def _group(m: Matrix, scoped_in: bool) -> str:
    return (m.lab.tablets if scoped_in else m.lab.desktops).id


async def _fixed(path: str) -> str:
    return path


async def _new_technician_effect(m: Matrix, scoped_in: bool, reply: dict[str, Any]) -> bool:
    return any(t.id == reply["technician_id"] for t in await m.lab.store.technicians())


async def _new_group_effect(m: Matrix, scoped_in: bool, reply: dict[str, Any]) -> bool:
    return any(g.id == reply["group_id"] for g in await m.lab.store.groups())


async def _token_effect(m: Matrix, scoped_in: bool, reply: dict[str, Any]) -> bool:
    return bool(reply["code"]) and reply["group_id"] == _group(m, scoped_in)


async def _revoke_path(m: Matrix, scoped_in: bool) -> str:
    device = await enrol(m.lab, m.lab.tablets if scoped_in else m.lab.desktops)
    return f"/api/v1/admin/devices/{device.device_id}/revoke"


async def _revoke_effect(m: Matrix, scoped_in: bool, reply: dict[str, Any]) -> bool:
    device = await m.lab.store.device(reply["device_id"])
    return device is not None and device.revoked


async def _policy_path(m: Matrix, scoped_in: bool) -> str:
    return f"/api/v1/admin/groups/{_group(m, scoped_in)}/policy"


async def _policy_effect(m: Matrix, scoped_in: bool, reply: dict[str, Any]) -> bool:
    group = await m.lab.store.group(_group(m, scoped_in))
    return group.allowed_modes == (Mode.TEXT, Mode.VOICE)


manage_technicians = _admin_rest(
    "POST",
    lambda m, s: _fixed("/api/v1/admin/technicians"),
    lambda m, s: {
        "username": f"new-{next(_names)}",
        "display_name": "New Person",
        "password": "long enough password",
        "groups": [_group(m, s)],
    },
    201,
    _new_technician_effect,
)
manage_groups = _admin_rest(
    "POST",
    lambda m, s: _fixed("/api/v1/admin/groups"),
    lambda m, s: {"name": f"Group {next(_names)}"},
    201,
    _new_group_effect,
)
issue_enrolment_token = _admin_rest(
    "POST",
    lambda m, s: _fixed("/api/v1/admin/enrolment-tokens"),
    lambda m, s: {"group": _group(m, s)},
    201,
    _token_effect,
)
revoke_device = _admin_rest("POST", _revoke_path, lambda m, s: {}, 200, _revoke_effect)
set_policy = _admin_rest(
    "POST", _policy_path, lambda m, s: {"allowed_modes": ["text", "voice"]}, 200, _policy_effect
)


async def take_part_in_call(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    if role is Role.DEVICE:
        session_id, _, device_wire = await m.session(m.consoles[Role.TECHNICIAN], accept=True)
        if scoped_in:
            sender = device_wire  # the device of the session itself
    else:
        session_id = await m.target_session(role, scoped_in, accept=True)

    async def attempt() -> Outcome:
        reply = await _ws(sender, SessionAttach(session_id=session_id))
        if isinstance(reply, Error):
            return _refused(reply)
        assert isinstance(reply, SessionUpdate), reply
        assert reply.session_id == session_id, reply
        return Outcome(True)

    return attempt, sender


async def report_status(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    async def attempt() -> Outcome:
        name = f"Renamed {next(_names)}"
        reply = await _ws(
            sender, StatusReport(service_installed=True, service_enabled=True, name=name)
        )
        if isinstance(reply, Error):
            return _refused(reply)
        assert isinstance(reply, Ok), reply
        assert any(d.name == name for d in await m.lab.store.devices())
        return Outcome(True)

    return attempt, sender


async def answer_session(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    session_id, _, device_wire = await m.session(m.consoles[Role.TECHNICIAN])
    if role is Role.DEVICE and scoped_in:
        sender = device_wire

    async def attempt() -> Outcome:
        reply = await _ws(sender, SessionAccept(session_id=session_id, mode=Mode.TEXT))
        if isinstance(reply, Error):
            return _refused(reply)
        assert isinstance(reply, Ok), reply
        row = await m.lab.store.session(session_id)
        assert row is not None
        assert row.accepted_mode == Mode.TEXT.value
        return Outcome(True)

    return attempt, sender


async def answer_notification(m: Matrix, role: Role, scoped_in: bool, sender: Wire) -> Case:
    device, device_wire = await m.device()
    sent = await m.consoles[Role.TECHNICIAN].ok(
        NotifySend(device_ids=(device.device_id,), title="Hello", body="Read me")
    )
    assert isinstance(sent, NotifySent)
    await device_wire.expect(NotifyDeliver)
    if role is Role.DEVICE and scoped_in:
        sender = device_wire
    note_id = sent.notification_id

    async def attempt() -> Outcome:
        reply = await _ws(sender, NotifyAck(notification_id=note_id, state=DeviceAck.READ))
        if isinstance(reply, Error):
            return _refused(reply)
        assert isinstance(reply, Ok), reply

        async def state() -> str:
            found = await m.lab.store.notification_target(note_id, device.device_id)
            assert found is not None
            return found[1].state

        # The server answers before it records the new state.
        await until_async(lambda: state(), NotificationState.READ.value)
        return Outcome(True)

    return attempt, sender


DRIVERS: dict[Action, Driver] = {
    A.VIEW_DEVICES: view_devices,
    A.START_SESSION: start_session,
    A.CLOSE_SESSION: close_session,
    A.SEND_NOTIFICATION: send_notification,
    A.WRITE_SUMMARY: write_summary,
    A.VIEW_AUDIT: view_audit,
    A.MANAGE_TECHNICIANS: manage_technicians,
    A.MANAGE_GROUPS: manage_groups,
    A.ISSUE_ENROLMENT_TOKEN: issue_enrolment_token,
    A.REVOKE_DEVICE: revoke_device,
    A.SET_POLICY: set_policy,
    A.TAKE_PART_IN_CALL: take_part_in_call,
    A.REPORT_STATUS: report_status,
    A.ANSWER_SESSION: answer_session,
    A.ANSWER_NOTIFICATION: answer_notification,
}


def test_every_action_has_a_driver() -> None:
    assert set(DRIVERS) == set(Action)


@pytest.mark.parametrize("action", list(Action), ids=str)
async def test_permission_matrix(lab: Lab, action: Action) -> None:
    mismatches: list[str] = []
    cases = 0
    async with clients(lab) as c:
        m = await Matrix(lab, c).start()
        for role, scoped_in in itertools.product(Role, (True, False)):
            where = "in scope" if scoped_in else "out of scope"
            if role is Role.DEVICE:
                # A device of the sender's group that is not a member of the target
                # (the drivers swap in the target's own device when in scope).
                _, sender = await m.device()
            else:
                sender = m.consoles[role]
            attempt, sender = await DRIVERS[action](m, role, scoped_in, sender)
            principal = m.principal_of[id(sender)]
            before = await m.state()
            audit_before = {r.id for r in await lab.store.audit_rows()}
            outcome = await attempt()
            cases += 1
            want = expected(role, action, scoped_in, m.groups[role], lab.desktops.id)
            label = f"{role.value} {where}"
            if outcome.allowed != want:
                mismatches.append(f"{label}: table says {want}, server said {outcome}")
                continue
            if outcome.allowed:
                continue
            if await m.state() != before:
                mismatches.append(f"{label}: refused ({outcome.code}) but the store changed")
            if outcome.code == "hidden":
                continue  # filtered out of a view: nothing was refused
            if role is Role.DEVICE and action in REST:
                if outcome.code != "unauthenticated":
                    mismatches.append(f"{label}: a device on REST got {outcome.code}")
                continue
            audited = [
                r
                for r in await lab.store.audit_rows()
                if r.id not in audit_before and r.actor == principal and r.outcome == outcome.code
            ]
            if not audited:
                mismatches.append(f"{label}: refused ({outcome.code}) without an audit record")
    assert cases == len(Role) * 2
    assert not mismatches, "\n".join(mismatches)
