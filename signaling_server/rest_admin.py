"""The console's REST API for the technician's profile, audit and administration.

Every route takes the bearer token of ``POST /api/v1/login``, authorizes the role
against :mod:`protocol.permissions` (and the device groups in scope), validates its
input strictly, and answers a refusal with ``{"error": code, "message": text}`` and
the matching HTTP status. Every administrative change, and every refused attempt at
one, goes to the audit log. ``docs/rest-api.md`` describes each route.

What the audit views return is metadata only (who, whom, when, mode, consent,
duration, reason, summary): the server stores no chat, and the notification views
say *whether* a device answered, never what.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web

from protocol import identity
from protocol.codec import MAX_FRAME_BYTES
from protocol.enrolment import BadEnrolmentCode, EnrolmentCode
from protocol.enums import Mode, Role
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import SIGNALING, SessionConsent, SessionInvite, TechnicianCard
from protocol.permissions import UNSCOPED_ROLES, Action, allows
from signaling_server.appkeys import CONFIG, FINGERPRINT, HUB, STORE
from signaling_server.store import (
    Conflict,
    Device,
    Group,
    NotFound,
    NotificationHistory,
    SessionHistory,
    Store,
    StoreError,
    Technician,
)

log = logging.getLogger(__name__)

#: Largest request body of the administration routes.
BODY_LIMIT = 16 * 1024
#: The profile carries a photo: 48 KiB of image is 64 KiB of base64, plus the name.
PROFILE_BODY_LIMIT = 80 * 1024


def _photo_budget() -> int:
    """The largest photo (bytes of image) a ``session.invite`` frame can carry with
    every other field at its longest. The card's own field allows 48 KiB of image,
    but that alone fills the 64 KiB frame: a technician with such a photo could not
    start a session at all."""
    widest = "\U0001f600"  # four bytes of UTF-8, the most a character takes
    invite = SessionInvite(
        session_id="s" * 64,
        technician=TechnicianCard(
            technician_id="t" * 64, display_name=widest * 128, organisation=widest * 128
        ),
        mode=Mode.VIDEO,
        offered_modes=tuple(Mode),
        reason=widest * 500,
        expires_at_ms=2**53 - 1,
    )
    overhead = len(SIGNALING.encode(invite).encode("utf-8"))
    return (MAX_FRAME_BYTES - overhead) // 4 * 3


#: Largest photo, in bytes of image: 48 KiB, or less if the invite has no room.
PHOTO_LIMIT = min(48 * 1024, _photo_budget())
#: Rows an audit view returns when not told, and at most.
DEFAULT_LIMIT, MAX_LIMIT = 200, 1000
#: Lifetimes an enrolment token may be issued with: one minute to one week.
MIN_TOKEN_TTL_S, MAX_TOKEN_TTL_S = 60, 7 * 24 * 3600

_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
#: Bidirectional overrides and isolates: they let a name display as something else
#: (a technician's name is what a device user trusts when accepting a call).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SUMMARY_FIELDS = ("summary", "impact", "expected_vs_actual", "evidence", "next_owner")

_STATUS_CODES = {
    400: ErrorCode.BAD_FRAME,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.TOO_LARGE,
}


class ApiError(Exception):
    """A refusal, turned into a JSON error reply by :func:`json_errors`."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(f"{status} {code.value}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.code.value, "message": self.message}, status=self.status
        )


def invalid(message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_FIELD, message)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Under ``/api/``, every refusal is a JSON error: ours, aiohttp's own (an
    unknown path, a wrong method, a body over the size limit) and a crash."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        if exc.content_type == "application/json":
            raise
        code = _STATUS_CODES.get(exc.status, ErrorCode.INTERNAL)
        return ApiError(exc.status, code, exc.reason).response()
    except Exception:
        if not request.path.startswith("/api/"):
            raise
        log.exception("internal error in %s %s", request.method, request.path)
        return ApiError(500, ErrorCode.INTERNAL, "internal server error").response()


# --- authentication and authorization ----------------------------------------------------


async def authenticate(request: web.Request) -> Technician:
    """The technician the bearer token belongs to, read now (not cached): a role,
    scope or profile changed a moment ago applies to this request."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, "bearer token needed")
    tech = await request.app[STORE].technician_for_token(token)
    if tech is None:
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, "invalid or expired token")
    return tech


async def require(request: web.Request, action: Action, attempt: str) -> Technician:
    """The authenticated technician, if their role allows ``action``. A refusal is
    audited under ``attempt``, the name the change would have been logged under."""
    tech = await authenticate(request)
    if not allows(tech.role, action):
        await request.app[STORE].audit(
            tech.id, attempt, outcome=ErrorCode.FORBIDDEN.value, role=tech.role.value
        )
        raise ApiError(
            403,
            ErrorCode.FORBIDDEN,
            f"the {tech.role.value} role may not {action.value.replace('_', ' ')}",
        )
    return tech


def scope_of(tech: Technician) -> list[str] | None:
    """The group ids a technician may look into; None for every group."""
    return None if tech.role in UNSCOPED_ROLES else sorted(tech.groups)


# --- reading requests --------------------------------------------------------------------


async def read_json(request: web.Request, limit: int = BODY_LIMIT) -> dict[str, Any]:
    """The request's JSON object, read with a size limit of its own (the profile
    route needs more than the application's default)."""
    too_large = ApiError(413, ErrorCode.TOO_LARGE, f"the body is over {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = bytearray()
    while chunk := await request.content.read(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise too_large
    try:
        body = json.loads(bytes(data), parse_constant=_no_constant, object_pairs_hook=_unique)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, ErrorCode.BAD_FRAME, "send a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("a key appears twice")
    return body


class Fields:
    """Typed access to a request body: every getter says what is wrong, by name.
    A field the route does not know is refused (a typo must not pass unnoticed)."""

    def __init__(self, body: Mapping[str, Any], known: Collection[str]) -> None:
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise invalid(f"unknown field {unknown[0][:64]!r}")
        self.body = body

    def __contains__(self, name: str) -> bool:
        return name in self.body and self.body[name] is not None

    def text(self, name: str, *, max_len: int, min_len: int = 0, default: str = "") -> str:
        value = self.body.get(name, default)
        if not isinstance(value, str):
            raise invalid(f"{name}: must be text")
        return checked_text(name, value, min_len=min_len, max_len=max_len)

    def flag(self, name: str, default: bool) -> bool:
        value = self.body.get(name, default)
        if not isinstance(value, bool):
            raise invalid(f"{name}: must be true or false")
        return value

    def integer(self, name: str, *, low: int, high: int, default: int) -> int:
        value = self.body.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(f"{name}: must be an integer")
        if not low <= value <= high:
            raise invalid(f"{name}: must be between {low} and {high}")
        return value

    def texts(self, name: str, *, max_items: int = 100) -> list[str]:
        value = self.body.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid(f"{name}: must be a list of text")
        if len(value) > max_items:
            raise ApiError(400, ErrorCode.TOO_LARGE, f"{name}: at most {max_items} items")
        return [checked_text(name, v, min_len=1, max_len=128) for v in value]

    def modes(self, name: str) -> tuple[Mode, ...]:
        values = self.texts(name, max_items=len(Mode))
        choices = ", ".join(m.value for m in Mode)
        try:
            modes = {Mode(v) for v in values}
        except ValueError:
            raise invalid(f"{name}: each mode is one of {choices}") from None
        if not modes:
            raise invalid(f"{name}: at least one of {choices} (turn the service off instead)")
        return tuple(m for m in Mode if m in modes)

    def role(self, name: str) -> Role:
        value = self.body.get(name, Role.TECHNICIAN.value)
        roles = [r for r in Role if r is not Role.DEVICE]
        if value not in {r.value for r in roles}:
            raise invalid(f"{name}: one of {', '.join(r.value for r in roles)}")
        return Role(value)


def checked_text(name: str, value: str, *, min_len: int, max_len: int) -> str:
    """Text a person reads elsewhere (on the device, in the console): trimmed, within
    its length, and free of control characters and direction overrides."""
    value = value.strip()
    if len(value) > max_len:
        raise ApiError(400, ErrorCode.TOO_LARGE, f"{name}: at most {max_len} characters")
    if len(value) < min_len:
        raise invalid(f"{name}: at least {min_len} character{'s' * (min_len != 1)}")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS:
            raise invalid(f"{name}: contains the control character U+{ord(ch):04X}")
    return value


def checked_photo(value: Any) -> str:
    """A base64 PNG or JPEG of at most PHOTO_LIMIT bytes, known by its first bytes, in the
    canonical base64 a ``TechnicianCard`` carries; empty (no photo) is fine."""
    if not isinstance(value, str):
        raise invalid("photo: must be base64 text")
    if not value:
        return ""
    if len(value) > (PHOTO_LIMIT + 2) // 3 * 4 + 4:
        raise ApiError(400, ErrorCode.TOO_LARGE, f"photo: at most {PHOTO_LIMIT} bytes")
    try:
        image = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise invalid("photo: not valid base64") from None
    if len(image) > PHOTO_LIMIT:
        raise ApiError(400, ErrorCode.TOO_LARGE, f"photo: at most {PHOTO_LIMIT} bytes")
    if not (image.startswith(_PNG_MAGIC) or image.startswith(_JPEG_MAGIC)):
        raise invalid("photo: must be a PNG or JPEG image")
    return base64.b64encode(image).decode("ascii")


class Query:
    """The query string of an audit view, strictly: unknown names are refused."""

    def __init__(self, request: web.Request, known: Collection[str]) -> None:
        unknown = sorted(set(request.query) - set(known))
        if unknown:
            raise invalid(f"unknown query parameter {unknown[0][:64]!r}")
        self.query = request.query

    def integer(self, name: str, *, low: int, high: int) -> int | None:
        text = self.query.get(name)
        if text is None or text == "":
            return None
        if not text.isascii() or not text.isdigit():
            raise invalid(f"{name}: must be a whole number")
        value = int(text)
        if not low <= value <= high:
            raise invalid(f"{name}: must be between {low} and {high}")
        return value

    def ident(self, name: str) -> str | None:
        value = self.query.get(name) or None
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
            raise invalid(f"{name}: not an id")
        return value

    def flag(self, name: str) -> bool:
        value = self.query.get(name, "0")
        if value not in ("0", "1", "true", "false"):
            raise invalid(f"{name}: 1 or 0")
        return value in ("1", "true")


# --- replies -----------------------------------------------------------------------------


async def group_names(store: Store) -> dict[str, str]:
    return {g.id: g.name for g in await store.groups()}


def technician_json(tech: Technician, names: Mapping[str, str]) -> dict[str, Any]:
    return {
        "technician_id": tech.id,
        "username": tech.username,
        "display_name": tech.display_name,
        "organisation": tech.organisation,
        "role": tech.role.value,
        "disabled": tech.disabled,
        "has_photo": bool(tech.photo),
        "groups": _group_refs(tech.groups, names),
    }


def _group_refs(group_ids: Collection[str], names: Mapping[str, str]) -> list[dict[str, str]]:
    refs = [{"id": g, "name": names.get(g, "")} for g in group_ids]
    return sorted(refs, key=lambda ref: (ref["name"], ref["id"]))


def group_json(group: Group, device_count: int) -> dict[str, Any]:
    return {
        "group_id": group.id,
        "name": group.name,
        "allowed_modes": [m.value for m in group.allowed_modes],
        "service_enabled": group.service_enabled,
        "relay_only": group.relay_only,
        "device_count": device_count,
    }


def device_json(device: Device, *, online: bool) -> dict[str, Any]:
    return {
        "device_id": device.id,
        "name": device.name,
        "group_id": device.group_id,
        "group_name": device.group_name,
        "model": device.model,
        "os": device.os,
        "enrolled_at_ms": device.enrolled_at_ms,
        "last_seen_ms": device.last_seen_ms,
        "revoked": device.revoked,
        "online": online,
    }


def consent_of(history: SessionHistory) -> tuple[dict[str, Any] | None, bool, str | None]:
    """The stored consent receipt, whether it holds, and why not.

    The server checks it afresh on every read, as an auditor would: the Ed25519
    signature with the device's enrolled key, and that it names this very session,
    device, technician and accepted mode. A receipt altered in the database, or one
    lifted from another session, shows as not verified.
    """
    row = history.session
    if row.consent_receipt is None:
        return None, False, "no consent receipt"
    try:
        message = SIGNALING.decode(row.consent_receipt)
    except ProtocolError:
        return None, False, "the stored receipt cannot be read"
    if not isinstance(message, SessionConsent):
        return None, False, "the stored receipt cannot be read"
    receipt = message.receipt
    fields: dict[str, Any] = {
        "session_id": receipt.session_id,
        "device_id": receipt.device_id,
        "technician_id": receipt.technician_id,
        "mode": receipt.mode.value,
        "accepted_at_ms": receipt.accepted_at_ms,
        "offer_fingerprint": receipt.offer_fingerprint,
        "answer_fingerprint": receipt.answer_fingerprint,
        "signature": receipt.signature,
    }
    expected = {
        "session_id": row.id,
        "device_id": row.device_id,
        "technician_id": row.technician_id,
        "mode": row.accepted_mode,
    }
    for name, value in expected.items():
        if fields[name] != value:
            return fields, False, f"the receipt's {name} does not match the session"
    if not history.device_public_key:
        return fields, False, "the device's key is unknown"
    try:
        identity.verify_consent(identity.load_public_key(history.device_public_key), receipt)
    except ProtocolError as exc:
        return fields, False, exc.message
    return fields, True, None


def summary_of(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return {name: str(parsed.get(name, "")) for name in _SUMMARY_FIELDS}


def session_json(history: SessionHistory) -> dict[str, Any]:
    row = history.session
    consent, verified, problem = consent_of(history)
    duration_s = None
    if row.accepted_at_ms is not None and row.closed_at_ms is not None:
        duration_s = max(0, round((row.closed_at_ms - row.accepted_at_ms) / 1000))
    return {
        "session_id": row.id,
        "technician_id": row.technician_id,
        "technician_name": history.technician_name,
        "device_id": row.device_id,
        "device_name": history.device_name,
        "group_id": history.group_id,
        "offered_mode": row.offered_mode,
        "accepted_mode": row.accepted_mode,
        "reason": row.reason,
        "state": row.state,
        "created_at_ms": row.created_at_ms,
        "accepted_at_ms": row.accepted_at_ms,
        "closed_at_ms": row.closed_at_ms,
        "duration_s": duration_s,
        "end_reason": row.end_reason or None,
        "summary": summary_of(row.summary),
        "consent": consent,
        "consent_verified": verified,
        "consent_problem": problem,
    }


def notification_json(history: NotificationHistory) -> dict[str, Any]:
    note = history.notification
    return {
        "notification_id": note.id,
        "technician_id": note.technician_id,
        "sender_name": note.sender_name,
        "title": note.title,
        "sent_at_ms": note.sent_at_ms,
        "expires_at_ms": note.expires_at_ms,
        "targets": [
            {
                "device_id": t.device_id,
                "device_name": t.device_name,
                "state": t.state.value,
                "updated_at_ms": t.updated_at_ms,
                "answered": t.answered,
            }
            for t in history.targets
        ],
    }


# --- profile -----------------------------------------------------------------------------


async def _profile(store: Store, tech: Technician) -> dict[str, Any]:
    names = await group_names(store)
    return {
        "technician_id": tech.id,
        "username": tech.username,
        "display_name": tech.display_name,
        "organisation": tech.organisation,
        "role": tech.role.value,
        "photo": tech.photo,
        "groups": _group_refs(tech.groups, names),
    }


async def get_me(request: web.Request) -> web.Response:
    tech = await authenticate(request)
    return web.json_response(await _profile(request.app[STORE], tech))


async def post_profile(request: web.Request) -> web.Response:
    """Any role may change their own name and photo; the next invite shows them."""
    tech = await authenticate(request)
    body = await read_json(request, PROFILE_BODY_LIMIT)
    fields = Fields(body, ("display_name", "photo"))
    display_name = (
        fields.text("display_name", min_len=1, max_len=128) if "display_name" in fields else None
    )
    photo = checked_photo(body["photo"]) if "photo" in fields else None
    if display_name is None and photo is None:
        raise invalid("give display_name, photo or both")
    store = request.app[STORE]
    updated = await store.update_technician(tech.id, display_name=display_name, photo=photo)
    await request.app[HUB].technician_changed(tech.id)
    await store.audit(
        tech.id,
        "profile.update",
        target=tech.id,
        display_name=display_name is not None,
        photo=None if photo is None else ("set" if photo else "removed"),
    )
    return web.json_response(await _profile(store, updated))


# --- audit and history -------------------------------------------------------------------


async def _history_reader(
    request: web.Request, query: Query, attempt: str
) -> tuple[Technician, list[str] | None, str | None]:
    """Who reads, the groups they may see and the technician filter.

    ``mine=1`` is a technician's own history: any role that may start sessions
    reads the sessions it started (and notifications it sent), whatever its groups
    are today. Everything else needs ``view_audit``: an admin sees all, a
    supervisor the devices of their groups.
    """
    tech = await authenticate(request)
    technician = query.ident("technician")
    if query.flag("mine"):
        if not allows(tech.role, Action.START_SESSION):
            raise ApiError(403, ErrorCode.FORBIDDEN, f"the {tech.role.value} role has no history")
        if technician not in (None, tech.id):
            raise invalid("technician: mine=1 reads your own history only")
        return tech, None, tech.id
    if not allows(tech.role, Action.VIEW_AUDIT):
        await request.app[STORE].audit(
            tech.id, attempt, outcome=ErrorCode.FORBIDDEN.value, role=tech.role.value
        )
        raise ApiError(
            403,
            ErrorCode.FORBIDDEN,
            f"the {tech.role.value} role may not view the audit (mine=1 reads your own)",
        )
    return tech, scope_of(tech), technician


def _period(query: Query) -> tuple[int, int | None, int | None]:
    limit = query.integer("limit", low=1, high=MAX_LIMIT) or DEFAULT_LIMIT
    since = query.integer("since_ms", low=0, high=2**53 - 1)
    until = query.integer("until_ms", low=0, high=2**53 - 1)
    if since is not None and until is not None and since > until:
        raise invalid("since_ms: after until_ms")
    return limit, since, until


async def audit_sessions(request: web.Request) -> web.Response:
    query = Query(request, ("limit", "technician", "device", "since_ms", "until_ms", "mine"))
    _, groups, technician = await _history_reader(request, query, "audit.sessions")
    limit, since, until = _period(query)
    rows = await request.app[STORE].session_history(
        limit=limit,
        groups=groups,
        technician_id=technician,
        device_id=query.ident("device"),
        since_ms=since,
        until_ms=until,
    )
    return web.json_response({"sessions": [session_json(r) for r in rows]})


async def audit_notifications(request: web.Request) -> web.Response:
    query = Query(request, ("limit", "technician", "since_ms", "until_ms", "mine"))
    _, groups, technician = await _history_reader(request, query, "audit.notifications")
    limit, since, until = _period(query)
    rows = await request.app[STORE].notification_history(
        limit=limit, groups=groups, technician_id=technician, since_ms=since, until_ms=until
    )
    return web.json_response({"notifications": [notification_json(r) for r in rows]})


# --- administration: technicians ---------------------------------------------------------


async def list_technicians(request: web.Request) -> web.Response:
    await require(request, Action.MANAGE_TECHNICIANS, "technician.list")
    store = request.app[STORE]
    names = await group_names(store)
    return web.json_response(
        {"technicians": [technician_json(t, names) for t in await store.technicians()]}
    )


async def create_technician(request: web.Request) -> web.Response:
    admin = await require(request, Action.MANAGE_TECHNICIANS, "technician.create")
    fields = Fields(
        await read_json(request),
        ("username", "display_name", "password", "role", "organisation", "groups"),
    )
    username = fields.text("username", min_len=1, max_len=64)
    if not _USERNAME.match(username):
        raise invalid("username: letters, digits and _ . @ - only")
    display_name = fields.text("display_name", min_len=1, max_len=128)
    password = fields.body.get("password")
    if not isinstance(password, str) or not 8 <= len(password) <= 1024:
        raise invalid("password: 8 to 1024 characters")
    role = fields.role("role")
    organisation = fields.text("organisation", max_len=128)
    groups = fields.texts("groups")
    store = request.app[STORE]
    try:
        tech = await store.create_technician(
            username,
            password,
            display_name=display_name,
            role=role,
            organisation=organisation,
            groups=groups,
        )
    except Conflict as exc:
        raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
    except StoreError as exc:  # an unknown group
        raise invalid(f"groups: {exc}") from None
    await store.audit(
        admin.id,
        "technician.create",
        target=tech.id,
        username=username,
        role=role.value,
        groups=sorted(tech.groups),
    )
    return web.json_response(technician_json(tech, await group_names(store)), status=201)


async def update_technician(request: web.Request) -> web.Response:
    admin = await require(request, Action.MANAGE_TECHNICIANS, "technician.update")
    technician_id = request.match_info["technician_id"]
    fields = Fields(await read_json(request), ("role", "groups", "disabled", "display_name"))
    role = fields.role("role") if "role" in fields else None
    groups = fields.texts("groups") if "groups" in fields else None
    disabled = fields.flag("disabled", False) if "disabled" in fields else None
    display_name = (
        fields.text("display_name", min_len=1, max_len=128) if "display_name" in fields else None
    )
    if role is None and groups is None and disabled is None and display_name is None:
        raise invalid("nothing to change: give role, groups, disabled or display_name")
    if technician_id == admin.id and (disabled or (role is not None and role is not admin.role)):
        # An admin locking themselves out can leave nobody to undo it.
        raise ApiError(409, ErrorCode.CONFLICT, "you cannot disable or demote your own account")
    store = request.app[STORE]
    if await store.technician(technician_id, include_disabled=True) is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no technician {technician_id[:64]!r}")
    try:
        tech = await store.update_technician(
            technician_id, role=role, groups=groups, disabled=disabled, display_name=display_name
        )
    except NotFound as exc:  # the technician exists (above): an unknown group
        raise invalid(f"groups: {exc}") from None
    if disabled:
        await store.revoke_technician_tokens(technician_id)
    await request.app[HUB].technician_changed(technician_id)
    changes: dict[str, Any] = {}
    if role is not None:
        changes["role"] = role.value
    if groups is not None:
        changes["groups"] = sorted(tech.groups)
    if disabled is not None:
        changes["disabled"] = disabled
    if display_name is not None:
        changes["display_name"] = display_name
    await store.audit(admin.id, "technician.update", target=technician_id, **changes)
    return web.json_response(technician_json(tech, await group_names(store)))


# --- administration: groups and policy ---------------------------------------------------


async def list_groups(request: web.Request) -> web.Response:
    await require(request, Action.MANAGE_GROUPS, "group.list")
    store = request.app[STORE]
    counts = await store.device_counts()
    return web.json_response(
        {"groups": [group_json(g, counts.get(g.id, 0)) for g in await store.groups()]}
    )


async def create_group(request: web.Request) -> web.Response:
    admin = await require(request, Action.MANAGE_GROUPS, "group.create")
    fields = Fields(
        await read_json(request), ("name", "allowed_modes", "service_enabled", "relay_only")
    )
    name = fields.text("name", min_len=1, max_len=128)
    modes = fields.modes("allowed_modes") if "allowed_modes" in fields else tuple(Mode)
    enabled = fields.flag("service_enabled", True)
    relay_only = fields.flag("relay_only", False)
    store = request.app[STORE]
    try:
        group = await store.create_group(
            name, allowed_modes=modes, enabled=enabled, relay_only=relay_only
        )
    except Conflict as exc:
        raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
    await store.audit(
        admin.id,
        "group.create",
        target=group.id,
        name=name,
        allowed_modes=[m.value for m in modes],
        service_enabled=enabled,
        relay_only=relay_only,
    )
    return web.json_response(group_json(group, 0), status=201)


async def set_group_policy(request: web.Request) -> web.Response:
    admin = await require(request, Action.SET_POLICY, "group.policy")
    group_id = request.match_info["group_id"]
    fields = Fields(await read_json(request), ("allowed_modes", "service_enabled", "relay_only"))
    modes = fields.modes("allowed_modes") if "allowed_modes" in fields else None
    enabled = fields.flag("service_enabled", True) if "service_enabled" in fields else None
    relay_only = fields.flag("relay_only", False) if "relay_only" in fields else None
    if modes is None and enabled is None and relay_only is None:
        raise invalid("nothing to change: give allowed_modes, service_enabled or relay_only")
    store = request.app[STORE]
    try:
        group = await store.set_group_policy(
            group_id, allowed_modes=modes, enabled=enabled, relay_only=relay_only
        )
    except NotFound as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from None
    await request.app[HUB].group_policy_changed(group.id)
    await store.audit(
        admin.id,
        "group.policy",
        target=group.id,
        allowed_modes=[m.value for m in group.allowed_modes],
        service_enabled=group.service_enabled,
        relay_only=group.relay_only,
    )
    counts = await store.device_counts()
    return web.json_response(group_json(group, counts.get(group.id, 0)))


# --- administration: enrolment and devices -----------------------------------------------


async def issue_enrolment_token(request: web.Request) -> web.Response:
    """A one-time enrolment code, the same text ``livesupport admin enrolment-token``
    prints. The server address in it is the one this request reached, unless the
    admin names the address devices use (behind NAT or a proxy)."""
    admin = await require(request, Action.ISSUE_ENROLMENT_TOKEN, "enrolment_token.issue")
    fields = Fields(await read_json(request), ("group", "ttl_s", "server"))
    group = fields.text("group", min_len=1, max_len=128)
    default_ttl = request.app[CONFIG].enrolment_token_ttl_s
    ttl_s = fields.integer("ttl_s", low=MIN_TOKEN_TTL_S, high=MAX_TOKEN_TTL_S, default=default_ttl)
    server = fields.text("server", max_len=256) or f"https://{request.host}"
    store = request.app[STORE]
    try:
        await store.group(group)
    except NotFound as exc:
        raise invalid(f"group: {exc}") from None
    fingerprint = request.app[FINGERPRINT]
    try:
        # Checked before the token exists, so a bad address spends no token.
        EnrolmentCode(server=server, token="x" * 32, fingerprint=fingerprint)
    except BadEnrolmentCode as exc:
        raise invalid(f"server: {exc}") from None
    token, group_id, expires_at_ms = await store.issue_enrolment(
        group, created_by=admin.id, ttl_s=ttl_s
    )
    code = EnrolmentCode(server=server, token=token, fingerprint=fingerprint)
    await store.audit(
        admin.id, "enrolment_token.issue", target=group_id, ttl_s=ttl_s, server=server
    )
    return web.json_response(
        {"code": code.encode(), "group_id": group_id, "expires_at_ms": expires_at_ms}, status=201
    )


async def list_devices(request: web.Request) -> web.Response:
    await require(request, Action.REVOKE_DEVICE, "device.list")
    online = request.app[HUB].devices_online
    devices = await request.app[STORE].devices()
    return web.json_response({"devices": [device_json(d, online=d.id in online) for d in devices]})


async def revoke_device(request: web.Request) -> web.Response:
    """Revoke a device: its connection is closed at once and it cannot log in again."""
    admin = await require(request, Action.REVOKE_DEVICE, "device.revoke")
    device_id = request.match_info["device_id"]
    store = request.app[STORE]
    try:
        await store.revoke_device(device_id)
    except NotFound as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from None
    await request.app[HUB].device_revoked(device_id)
    await store.audit(admin.id, "device.revoke", target=device_id)
    device = await store.device(device_id)
    assert device is not None
    return web.json_response(
        device_json(device, online=device_id in request.app[HUB].devices_online)
    )


def add_routes(app: web.Application) -> None:
    add = app.router
    add.add_get("/api/v1/me", get_me)
    add.add_post("/api/v1/me/profile", post_profile)
    add.add_get("/api/v1/audit/sessions", audit_sessions)
    add.add_get("/api/v1/audit/notifications", audit_notifications)
    add.add_get("/api/v1/admin/technicians", list_technicians)
    add.add_post("/api/v1/admin/technicians", create_technician)
    add.add_post("/api/v1/admin/technicians/{technician_id}", update_technician)
    add.add_get("/api/v1/admin/groups", list_groups)
    add.add_post("/api/v1/admin/groups", create_group)
    add.add_post("/api/v1/admin/groups/{group_id}/policy", set_group_policy)
    add.add_post("/api/v1/admin/enrolment-tokens", issue_enrolment_token)
    add.add_get("/api/v1/admin/devices", list_devices)
    add.add_post("/api/v1/admin/devices/{device_id}/revoke", revoke_device)
