"""Who may do what: the role × action table and the scope rule.

The server calls :func:`authorize` for every request a client sends; the consoles use
:func:`allows` to grey out what the server would refuse. The table is the single
source of truth for both.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum

from protocol.codec import Message
from protocol.enums import Role
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import (
    CallConnected,
    CallHangup,
    DevicesSubscribe,
    DevicesUnsubscribe,
    NotifyAck,
    NotifyAnswer,
    NotifySend,
    SessionAccept,
    SessionAttach,
    SessionClose,
    SessionConsent,
    SessionReject,
    SessionResume,
    SessionStart,
    SignalCandidate,
    SignalSdp,
    StatusReport,
)


class Action(StrEnum):
    # technician side
    VIEW_DEVICES = "view_devices"
    START_SESSION = "start_session"  # the live-support permission
    CLOSE_SESSION = "close_session"
    SEND_NOTIFICATION = "send_notification"
    WRITE_SUMMARY = "write_summary"
    VIEW_AUDIT = "view_audit"
    MANAGE_TECHNICIANS = "manage_technicians"
    MANAGE_GROUPS = "manage_groups"
    ISSUE_ENROLMENT_TOKEN = "issue_enrolment_token"  # noqa: S105 (a name, not a secret)
    REVOKE_DEVICE = "revoke_device"
    SET_POLICY = "set_policy"
    # both members of a session
    TAKE_PART_IN_CALL = "take_part_in_call"  # SDP, candidates, hang-up, call state
    # device side
    REPORT_STATUS = "report_status"
    ANSWER_SESSION = "answer_session"  # accept, reject, consent, resume
    ANSWER_NOTIFICATION = "answer_notification"


A = Action
_TECHNICIAN = frozenset(
    {
        A.VIEW_DEVICES,
        A.START_SESSION,
        A.CLOSE_SESSION,
        A.SEND_NOTIFICATION,
        A.WRITE_SUMMARY,
        A.TAKE_PART_IN_CALL,
    }
)
_DEVICE = frozenset({A.REPORT_STATUS, A.ANSWER_SESSION, A.ANSWER_NOTIFICATION, A.TAKE_PART_IN_CALL})
_ADMIN = frozenset(Action) - (_DEVICE - {A.TAKE_PART_IN_CALL})

PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: _ADMIN,
    Role.SUPERVISOR: _TECHNICIAN | {A.VIEW_AUDIT},
    Role.TECHNICIAN: _TECHNICIAN,
    Role.VIEWER: frozenset({A.VIEW_DEVICES}),
    Role.DEVICE: _DEVICE,
}

#: Roles that see every device group; the others see only the groups they are given.
UNSCOPED_ROLES = frozenset({Role.ADMIN})

#: The action each client request needs. A request type missing here is refused.
REQUIRED_ACTION: dict[type[Message], Action] = {
    StatusReport: A.REPORT_STATUS,
    DevicesSubscribe: A.VIEW_DEVICES,
    DevicesUnsubscribe: A.VIEW_DEVICES,
    SessionStart: A.START_SESSION,
    SessionAccept: A.ANSWER_SESSION,
    SessionReject: A.ANSWER_SESSION,
    SessionConsent: A.ANSWER_SESSION,
    SessionResume: A.ANSWER_SESSION,
    SessionAttach: A.TAKE_PART_IN_CALL,
    SessionClose: A.CLOSE_SESSION,
    CallConnected: A.TAKE_PART_IN_CALL,
    CallHangup: A.TAKE_PART_IN_CALL,
    SignalSdp: A.TAKE_PART_IN_CALL,
    SignalCandidate: A.TAKE_PART_IN_CALL,
    NotifySend: A.SEND_NOTIFICATION,
    NotifyAck: A.ANSWER_NOTIFICATION,
    NotifyAnswer: A.ANSWER_NOTIFICATION,
}


def allows(role: Role, action: Action) -> bool:
    return action in PERMISSIONS[role]


def in_scope(role: Role, scope_groups: Collection[str], group_id: str) -> bool:
    return role in UNSCOPED_ROLES or group_id in scope_groups


def authorize(
    role: Role,
    action: Action,
    *,
    scope_groups: Collection[str] = (),
    target_group: str | None = None,
) -> None:
    """Raise unless ``role`` may do ``action`` (on a device of ``target_group``)."""
    if not allows(role, action):
        raise LocalProtocolError(
            ErrorCode.FORBIDDEN, f"the {role.value} role may not {action.value.replace('_', ' ')}"
        )
    if target_group is not None and not in_scope(role, scope_groups, target_group):
        raise LocalProtocolError(ErrorCode.OUT_OF_SCOPE, "the device is not in your groups")
