"""The console's client of the server's profile, audit and administration API.

Qt-free and typed: each method is one REST call over pinned TLS (like the login) and
returns frozen dataclasses; every refusal raises :class:`peer.signaling.RequestError`
with the server's error code (``forbidden``, ``invalid_field``, ``not_found``...) and
its message, meant for people. ``docs/rest-api.md`` describes the routes.

:func:`sessions_csv` and :func:`notifications_csv` export audit rows as CSV. They hold
metadata only, like the server: there is no chat to export, and a notification's
answer is reported as answered or not, never its text.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from peer.signaling import RequestError, api_get, api_post
from protocol.enums import Mode, NotificationState, Role, SessionState
from protocol.messages import ConsentReceipt

# --- what the server answers --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A device group by id and name, as a technician's scope lists it."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Profile:
    """The technician the console is logged in as."""

    technician_id: str
    username: str
    display_name: str
    organisation: str
    role: Role
    #: The photo device users see (PNG or JPEG bytes), or b"" for none.
    photo: bytes
    groups: tuple[GroupRef, ...]


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """The technician's structured summary of a closed session."""

    summary: str
    impact: str
    expected_vs_actual: str
    evidence: str
    next_owner: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session's metadata as the audit keeps it (never its chat)."""

    session_id: str
    technician_id: str
    technician_name: str
    device_id: str
    device_name: str
    group_id: str
    offered_mode: Mode
    accepted_mode: Mode | None
    reason: str
    state: SessionState
    created_at_ms: int
    accepted_at_ms: int | None
    closed_at_ms: int | None
    #: Seconds from acceptance to close; None if never accepted or still open.
    duration_s: int | None
    #: Why it ended: a CloseReason or RejectReason value, None while open.
    end_reason: str | None
    summary: SessionSummary | None
    #: The device's signed consent receipt, None if the device never consented.
    consent: ConsentReceipt | None
    #: The server verified the receipt's signature with the device's key and that it
    #: names this session, device, technician and accepted mode.
    consent_verified: bool
    #: Why the consent is not verified (for people), None when it is.
    consent_problem: str | None


@dataclass(frozen=True, slots=True)
class NotificationTarget:
    """How far one device got with a notification."""

    device_id: str
    device_name: str
    state: NotificationState
    updated_at_ms: int
    answered: bool


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    notification_id: str
    technician_id: str
    sender_name: str
    title: str
    sent_at_ms: int
    expires_at_ms: int
    targets: tuple[NotificationTarget, ...]


@dataclass(frozen=True, slots=True)
class TechnicianRecord:
    technician_id: str
    username: str
    display_name: str
    organisation: str
    role: Role
    disabled: bool
    has_photo: bool
    groups: tuple[GroupRef, ...]


@dataclass(frozen=True, slots=True)
class GroupRecord:
    group_id: str
    name: str
    allowed_modes: tuple[Mode, ...]
    service_enabled: bool
    #: Enrolled devices in the group, revoked ones not counted.
    device_count: int
    #: Calls of the group's devices are relayed by TURN only (docs/turn.md).
    relay_only: bool = False


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    name: str
    group_id: str
    group_name: str
    model: str
    os: str
    enrolled_at_ms: int
    last_seen_ms: int | None
    revoked: bool
    online: bool


@dataclass(frozen=True, slots=True)
class EnrolmentTokenIssued:
    #: The enrolment code text: ``livesupport agent --enrol CODE`` takes it as is.
    code: str
    group_id: str
    expires_at_ms: int


# --- reading replies ------------------------------------------------------------------------

_E = TypeVar("_E", Mode, Role, SessionState, NotificationState)


class _Reply:
    """Typed reads of one JSON object from the server; a reply that does not have
    the expected shape raises RequestError("bad_reply") instead of a TypeError
    somewhere in the console."""

    def __init__(self, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise RequestError("bad_reply", f"{what}: not a JSON object")
        self.data: dict[str, Any] = data
        self.what = what

    def _wrong(self, name: str) -> RequestError:
        return RequestError("bad_reply", f"{self.what}: {name} is missing or mistyped")

    def text(self, name: str) -> str:
        value = self.data.get(name)
        if not isinstance(value, str):
            raise self._wrong(name)
        return value

    def opt_text(self, name: str) -> str | None:
        return None if self.data.get(name) is None else self.text(name)

    def number(self, name: str) -> int:
        value = self.data.get(name)
        # JSON true is not a number, though Python's bool is an int.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(name)
        return value

    def opt_number(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.number(name)

    def flag(self, name: str) -> bool:
        value = self.data.get(name)
        if not isinstance(value, bool):
            raise self._wrong(name)
        return value

    def items(self, name: str) -> list[Any]:
        value = self.data.get(name)
        if not isinstance(value, list):
            raise self._wrong(name)
        return value

    def sub(self, name: str) -> _Reply | None:
        value = self.data.get(name)
        return None if value is None else _Reply(value, f"{self.what}.{name}")

    def enum(self, name: str, kind: type[_E]) -> _E:
        return _member(kind, self.text(name), f"{self.what}: {name}")

    def opt_enum(self, name: str, kind: type[_E]) -> _E | None:
        return None if self.data.get(name) is None else self.enum(name, kind)


def _member(kind: type[_E], value: Any, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise RequestError("bad_reply", f"{what}: {str(value)[:32]!r} is unknown") from None


def _groups(reply: _Reply) -> tuple[GroupRef, ...]:
    refs = [_Reply(g, f"{reply.what}.groups") for g in reply.items("groups")]
    return tuple(GroupRef(id=r.text("id"), name=r.text("name")) for r in refs)


def _photo(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RequestError("bad_reply", "profile: photo is not base64") from None


def _profile(data: Any) -> Profile:
    r = _Reply(data, "profile")
    return Profile(
        technician_id=r.text("technician_id"),
        username=r.text("username"),
        display_name=r.text("display_name"),
        organisation=r.text("organisation"),
        role=r.enum("role", Role),
        photo=_photo(r.text("photo")),
        groups=_groups(r),
    )


def _consent(r: _Reply | None) -> ConsentReceipt | None:
    if r is None:
        return None
    return ConsentReceipt(
        session_id=r.text("session_id"),
        device_id=r.text("device_id"),
        technician_id=r.text("technician_id"),
        mode=r.enum("mode", Mode),
        accepted_at_ms=r.number("accepted_at_ms"),
        offer_fingerprint=r.text("offer_fingerprint"),
        answer_fingerprint=r.text("answer_fingerprint"),
        signature=r.text("signature"),
    )


def _summary(r: _Reply | None) -> SessionSummary | None:
    if r is None:
        return None
    return SessionSummary(
        summary=r.text("summary"),
        impact=r.text("impact"),
        expected_vs_actual=r.text("expected_vs_actual"),
        evidence=r.text("evidence"),
        next_owner=r.text("next_owner"),
    )


def _session(data: Any) -> SessionRecord:
    r = _Reply(data, "session")
    return SessionRecord(
        session_id=r.text("session_id"),
        technician_id=r.text("technician_id"),
        technician_name=r.text("technician_name"),
        device_id=r.text("device_id"),
        device_name=r.text("device_name"),
        group_id=r.text("group_id"),
        offered_mode=r.enum("offered_mode", Mode),
        accepted_mode=r.opt_enum("accepted_mode", Mode),
        reason=r.text("reason"),
        state=r.enum("state", SessionState),
        created_at_ms=r.number("created_at_ms"),
        accepted_at_ms=r.opt_number("accepted_at_ms"),
        closed_at_ms=r.opt_number("closed_at_ms"),
        duration_s=r.opt_number("duration_s"),
        end_reason=r.opt_text("end_reason"),
        summary=_summary(r.sub("summary")),
        consent=_consent(r.sub("consent")),
        consent_verified=r.flag("consent_verified"),
        consent_problem=r.opt_text("consent_problem"),
    )


def _notification(data: Any) -> NotificationRecord:
    r = _Reply(data, "notification")
    targets = [_Reply(t, "notification.targets") for t in r.items("targets")]
    return NotificationRecord(
        notification_id=r.text("notification_id"),
        technician_id=r.text("technician_id"),
        sender_name=r.text("sender_name"),
        title=r.text("title"),
        sent_at_ms=r.number("sent_at_ms"),
        expires_at_ms=r.number("expires_at_ms"),
        targets=tuple(
            NotificationTarget(
                device_id=t.text("device_id"),
                device_name=t.text("device_name"),
                state=t.enum("state", NotificationState),
                updated_at_ms=t.number("updated_at_ms"),
                answered=t.flag("answered"),
            )
            for t in targets
        ),
    )


def _technician(data: Any) -> TechnicianRecord:
    r = _Reply(data, "technician")
    return TechnicianRecord(
        technician_id=r.text("technician_id"),
        username=r.text("username"),
        display_name=r.text("display_name"),
        organisation=r.text("organisation"),
        role=r.enum("role", Role),
        disabled=r.flag("disabled"),
        has_photo=r.flag("has_photo"),
        groups=_groups(r),
    )


def _group(data: Any) -> GroupRecord:
    r = _Reply(data, "group")
    modes = [_member(Mode, m, "group: allowed_modes") for m in r.items("allowed_modes")]
    return GroupRecord(
        group_id=r.text("group_id"),
        name=r.text("name"),
        allowed_modes=tuple(modes),
        service_enabled=r.flag("service_enabled"),
        device_count=r.number("device_count"),
        relay_only=r.flag("relay_only"),
    )


def _device(data: Any) -> DeviceRecord:
    r = _Reply(data, "device")
    return DeviceRecord(
        device_id=r.text("device_id"),
        name=r.text("name"),
        group_id=r.text("group_id"),
        group_name=r.text("group_name"),
        model=r.text("model"),
        os=r.text("os"),
        enrolled_at_ms=r.number("enrolled_at_ms"),
        last_seen_ms=r.opt_number("last_seen_ms"),
        revoked=r.flag("revoked"),
        online=r.flag("online"),
    )


def _rows(reply: Mapping[str, Any], name: str) -> list[Any]:
    return _Reply(reply, name).items(name)


def _segment(value: str) -> str:
    """An id inside a URL path: quoted, so it can only ever name one resource."""
    return quote(value, safe="")


# --- the client ---------------------------------------------------------------------------


class AdminApi:
    """The profile, audit and administration routes, for one logged-in technician.

    ``token`` is the bearer token of ``POST /api/v1/login`` (``ConsoleClient.token``).
    What a method may do depends on the role: the server refuses the rest with
    ``forbidden`` (see ``protocol.permissions.allows`` to grey things out first).
    """

    def __init__(self, server: str, fingerprint: str, token: str, *, timeout_s: float = 15.0):
        self.server = server
        self.fingerprint = fingerprint
        self.token = token
        self.timeout_s = timeout_s

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await api_get(
            self.server,
            self.fingerprint,
            path,
            params=params,
            token=self.token,
            timeout_s=self.timeout_s,
        )

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await api_post(
            self.server, self.fingerprint, path, body, token=self.token, timeout_s=self.timeout_s
        )

    # -- profile ---------------------------------------------------------------------------

    async def me(self) -> Profile:
        return _profile(await self._get("/api/v1/me"))

    async def update_profile(
        self, *, display_name: str | None = None, photo: bytes | None = None
    ) -> Profile:
        """Change the name and/or photo device users see on the next invite. ``photo``
        is PNG or JPEG bytes (at most 46,620: what fits in an invite); b"" removes
        it; None leaves it."""
        body: dict[str, Any] = {}
        if display_name is not None:
            body["display_name"] = display_name
        if photo is not None:
            body["photo"] = base64.b64encode(photo).decode("ascii")
        return _profile(await self._post("/api/v1/me/profile", body))

    # -- audit and history -----------------------------------------------------------------

    async def session_history(
        self,
        *,
        mine: bool = False,
        limit: int = 200,
        technician_id: str | None = None,
        device_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first. ``mine``: your own (any role that starts
        sessions); otherwise the audit (admin: all; supervisor: your groups)."""
        params = _params(
            mine=mine,
            limit=limit,
            technician=technician_id,
            device=device_id,
            since_ms=since_ms,
            until_ms=until_ms,
        )
        reply = await self._get("/api/v1/audit/sessions", params)
        return [_session(row) for row in _rows(reply, "sessions")]

    async def notification_history(
        self,
        *,
        mine: bool = False,
        limit: int = 200,
        technician_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[NotificationRecord]:
        """Notifications, newest first, with each device's progress."""
        params = _params(
            mine=mine, limit=limit, technician=technician_id, since_ms=since_ms, until_ms=until_ms
        )
        reply = await self._get("/api/v1/audit/notifications", params)
        return [_notification(row) for row in _rows(reply, "notifications")]

    # -- technicians -----------------------------------------------------------------------

    async def technicians(self) -> list[TechnicianRecord]:
        reply = await self._get("/api/v1/admin/technicians")
        return [_technician(row) for row in _rows(reply, "technicians")]

    async def create_technician(
        self,
        *,
        username: str,
        display_name: str,
        password: str,
        role: Role = Role.TECHNICIAN,
        organisation: str = "",
        groups: Sequence[str] = (),
    ) -> TechnicianRecord:
        """``groups``: device group ids or names, the technician's scope."""
        body = {
            "username": username,
            "display_name": display_name,
            "password": password,
            "role": role.value,
            "organisation": organisation,
            "groups": list(groups),
        }
        return _technician(await self._post("/api/v1/admin/technicians", body))

    async def update_technician(
        self,
        technician_id: str,
        *,
        role: Role | None = None,
        groups: Sequence[str] | None = None,
        disabled: bool | None = None,
        display_name: str | None = None,
    ) -> TechnicianRecord:
        """Change what is given; ``groups`` replaces the scope. Applies at once to the
        technician's open consoles; disabling one closes them and ends their
        sessions."""
        body: dict[str, Any] = {}
        if role is not None:
            body["role"] = role.value
        if groups is not None:
            body["groups"] = list(groups)
        if disabled is not None:
            body["disabled"] = disabled
        if display_name is not None:
            body["display_name"] = display_name
        path = f"/api/v1/admin/technicians/{_segment(technician_id)}"
        return _technician(await self._post(path, body))

    # -- groups and policy -----------------------------------------------------------------

    async def groups(self) -> list[GroupRecord]:
        reply = await self._get("/api/v1/admin/groups")
        return [_group(row) for row in _rows(reply, "groups")]

    async def create_group(
        self,
        name: str,
        *,
        allowed_modes: Sequence[Mode] = tuple(Mode),
        service_enabled: bool = True,
        relay_only: bool = False,
    ) -> GroupRecord:
        body = {
            "name": name,
            "allowed_modes": [m.value for m in allowed_modes],
            "service_enabled": service_enabled,
            "relay_only": relay_only,
        }
        return _group(await self._post("/api/v1/admin/groups", body))

    async def set_group_policy(
        self,
        group_id: str,
        *,
        allowed_modes: Sequence[Mode] | None = None,
        service_enabled: bool | None = None,
        relay_only: bool | None = None,
    ) -> GroupRecord:
        """Applies at once: the group's devices and the consoles that see them hear
        of it; switching the service off ends the group's open sessions."""
        body: dict[str, Any] = {}
        if allowed_modes is not None:
            body["allowed_modes"] = [m.value for m in allowed_modes]
        if service_enabled is not None:
            body["service_enabled"] = service_enabled
        if relay_only is not None:
            body["relay_only"] = relay_only
        path = f"/api/v1/admin/groups/{_segment(group_id)}/policy"
        return _group(await self._post(path, body))

    # -- enrolment and devices -------------------------------------------------------------

    async def issue_enrolment_token(
        self, group: str, *, ttl_s: int = 24 * 3600, server: str | None = None
    ) -> EnrolmentTokenIssued:
        """A one-time enrolment code for ``group`` (id or name), valid ``ttl_s``
        seconds (60 s to 7 days). ``server``: the address devices use, if not the
        one this console reaches the server at."""
        body: dict[str, Any] = {"group": group, "ttl_s": ttl_s}
        if server is not None:
            body["server"] = server
        r = _Reply(await self._post("/api/v1/admin/enrolment-tokens", body), "enrolment token")
        return EnrolmentTokenIssued(
            code=r.text("code"),
            group_id=r.text("group_id"),
            expires_at_ms=r.number("expires_at_ms"),
        )

    async def devices(self) -> list[DeviceRecord]:
        reply = await self._get("/api/v1/admin/devices")
        return [_device(row) for row in _rows(reply, "devices")]

    async def revoke_device(self, device_id: str) -> DeviceRecord:
        """Revoke a device: it is disconnected at once and cannot connect again."""
        path = f"/api/v1/admin/devices/{_segment(device_id)}/revoke"
        return _device(await self._post(path, {}))


def _params(**values: str | int | bool | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in values.items():
        if value is None or value is False:
            continue
        params[name] = "1" if value is True else str(value)
    return params


# --- CSV export ---------------------------------------------------------------------------

SESSION_COLUMNS = (
    "session_id",
    "who",
    "technician_id",
    "whom",
    "device_id",
    "when",
    "mode",
    "state",
    "consent_verified",
    "duration_s",
    "reason",
    "end_reason",
    "summary",
    "impact",
    "expected_vs_actual",
    "evidence",
    "next_owner",
)

NOTIFICATION_COLUMNS = (
    "notification_id",
    "sender",
    "technician_id",
    "title",
    "sent",
    "expires",
    "device_id",
    "device",
    "state",
    "updated",
    "answered",
)

#: What a spreadsheet takes for the start of a formula. Device names and reasons are
#: typed by people elsewhere: a cell must never run as a formula when opened.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _when(ms: int | None) -> str:
    """A timestamp as ISO 8601 in UTC (a CSV travels between time zones)."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _csv(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def sessions_csv(records: Iterable[SessionRecord]) -> str:
    """The sessions as CSV: who, whom, when, mode, consent, duration, reason and the
    summary's fields. There is no chat column: no chat is kept anywhere."""
    rows = []
    for r in records:
        summary = r.summary or SessionSummary("", "", "", "", "")
        rows.append(
            (
                r.session_id,
                _cell(r.technician_name),
                r.technician_id,
                _cell(r.device_name),
                r.device_id,
                _when(r.created_at_ms),
                (r.accepted_mode or r.offered_mode).value,
                r.state.value,
                "yes" if r.consent_verified else "no",
                "" if r.duration_s is None else str(r.duration_s),
                _cell(r.reason),
                r.end_reason or "",
                _cell(summary.summary),
                _cell(summary.impact),
                _cell(summary.expected_vs_actual),
                _cell(summary.evidence),
                _cell(summary.next_owner),
            )
        )
    return _csv(SESSION_COLUMNS, rows)


def notifications_csv(records: Iterable[NotificationRecord]) -> str:
    """One row per notification and device: sent, progress, answered or not (the
    answer's text is not exported)."""
    rows = [
        (
            n.notification_id,
            _cell(n.sender_name),
            n.technician_id,
            _cell(n.title),
            _when(n.sent_at_ms),
            _when(n.expires_at_ms),
            t.device_id,
            _cell(t.device_name),
            t.state.value,
            _when(t.updated_at_ms),
            "yes" if t.answered else "no",
        )
        for n in records
        for t in n.targets
    ]
    return _csv(NOTIFICATION_COLUMNS, rows)
