"""The role × action table, written out in full, and the scope rule."""

from __future__ import annotations

import itertools

import pytest

from protocol.chat import CHAT
from protocol.codec import Sender
from protocol.enums import Role
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import SIGNALING
from protocol.permissions import (
    PERMISSIONS,
    REQUIRED_ACTION,
    UNSCOPED_ROLES,
    Action,
    allows,
    authorize,
    in_scope,
)

A, R = Action, Role

# One row per action; columns: admin, supervisor, technician, viewer, device.
# Changing who may do what means changing this table on purpose.
COLUMNS = (R.ADMIN, R.SUPERVISOR, R.TECHNICIAN, R.VIEWER, R.DEVICE)
EXPECTED: dict[Action, tuple[int, int, int, int, int]] = {
    A.VIEW_DEVICES: (1, 1, 1, 1, 0),
    A.START_SESSION: (1, 1, 1, 0, 0),
    A.CLOSE_SESSION: (1, 1, 1, 0, 0),
    A.SEND_NOTIFICATION: (1, 1, 1, 0, 0),
    A.WRITE_SUMMARY: (1, 1, 1, 0, 0),
    A.VIEW_AUDIT: (1, 1, 0, 0, 0),
    A.MANAGE_TECHNICIANS: (1, 0, 0, 0, 0),
    A.MANAGE_GROUPS: (1, 0, 0, 0, 0),
    A.ISSUE_ENROLMENT_TOKEN: (1, 0, 0, 0, 0),
    A.REVOKE_DEVICE: (1, 0, 0, 0, 0),
    A.SET_POLICY: (1, 0, 0, 0, 0),
    A.TAKE_PART_IN_CALL: (1, 1, 1, 0, 1),
    A.REPORT_STATUS: (0, 0, 0, 0, 1),
    A.ANSWER_SESSION: (0, 0, 0, 0, 1),
    A.ANSWER_NOTIFICATION: (0, 0, 0, 0, 1),
}


def test_expected_table_covers_every_action_and_role() -> None:
    assert set(EXPECTED) == set(Action)
    assert set(COLUMNS) == set(Role) == set(PERMISSIONS)


@pytest.mark.parametrize(
    ("role", "action"), list(itertools.product(Role, Action)), ids=lambda v: str(v)
)
def test_role_action(role: Role, action: Action) -> None:
    expected = bool(EXPECTED[action][COLUMNS.index(role)])
    assert allows(role, action) == expected
    assert (action in PERMISSIONS[role]) == expected


@pytest.mark.parametrize(
    ("role", "action"), list(itertools.product(Role, Action)), ids=lambda v: str(v)
)
def test_authorize_without_target(role: Role, action: Action) -> None:
    if allows(role, action):
        authorize(role, action)
        return
    with pytest.raises(LocalProtocolError) as info:
        authorize(role, action)
    assert info.value.code == ErrorCode.FORBIDDEN


def test_only_admin_is_unscoped() -> None:
    assert {R.ADMIN} == UNSCOPED_ROLES


@pytest.mark.parametrize("role", list(Role))
def test_scope(role: Role) -> None:
    mine = {"grp-a", "grp-b"}
    assert in_scope(role, mine, "grp-a")
    assert in_scope(role, mine, "grp-other") == (role == R.ADMIN)
    assert in_scope(role, (), "grp-a") == (role == R.ADMIN)


def test_admin_sees_every_group_without_any_assigned() -> None:
    authorize(R.ADMIN, A.START_SESSION, scope_groups=(), target_group="grp-anything")


def test_technician_in_and_out_of_scope() -> None:
    authorize(R.TECHNICIAN, A.START_SESSION, scope_groups=["grp-a"], target_group="grp-a")
    with pytest.raises(LocalProtocolError) as info:
        authorize(R.TECHNICIAN, A.START_SESSION, scope_groups=["grp-a"], target_group="grp-b")
    assert info.value.code == ErrorCode.OUT_OF_SCOPE


def test_forbidden_is_checked_before_scope() -> None:
    # A viewer may not start a session anywhere: the answer is forbidden, not out of
    # scope, whether or not the device is in its groups.
    for groups in (["grp-a"], []):
        with pytest.raises(LocalProtocolError) as info:
            authorize(R.VIEWER, A.START_SESSION, scope_groups=groups, target_group="grp-a")
        assert info.value.code == ErrorCode.FORBIDDEN


def test_supervisor_is_scoped_too() -> None:
    with pytest.raises(LocalProtocolError) as info:
        authorize(R.SUPERVISOR, A.SEND_NOTIFICATION, scope_groups=["g1"], target_group="g2")
    assert info.value.code == ErrorCode.OUT_OF_SCOPE


def test_a_device_can_never_start_or_close_a_session() -> None:
    for action in (A.START_SESSION, A.CLOSE_SESSION):
        with pytest.raises(LocalProtocolError) as info:
            authorize(R.DEVICE, action)
        assert info.value.code == ErrorCode.FORBIDDEN


def test_every_client_request_needs_an_action() -> None:
    client_types = {
        cls
        for cls in SIGNALING
        if cls.SENDERS & (Sender.DEVICE | Sender.CONSOLE) and not cls.TYPE.startswith("auth.")
    }
    assert client_types
    assert set(REQUIRED_ACTION) == client_types


def test_required_actions_belong_to_a_role_that_may_send_the_type() -> None:
    """A request type mapped to an action that no role able to send it has would be
    refused always: the table and the senders must agree."""
    senders_roles = {
        Sender.DEVICE: {R.DEVICE},
        Sender.CONSOLE: {R.ADMIN, R.SUPERVISOR, R.TECHNICIAN, R.VIEWER},
    }
    for cls, action in REQUIRED_ACTION.items():
        roles: set[Role] = set()
        for sender, sender_roles in senders_roles.items():
            if cls.SENDERS & sender:
                roles |= sender_roles
        assert any(allows(role, action) for role in roles), cls.TYPE


def test_chat_is_not_authorized_by_the_server() -> None:
    # Chat travels peer to peer; the server never sees it, so it has no entry.
    assert not set(CHAT) & set(REQUIRED_ACTION)
