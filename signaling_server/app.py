"""The aiohttp application: REST for login and enrolment, one websocket for all.

Routes (all under TLS; ``docs/rest-api.md`` describes the REST ones):

* ``POST /api/v1/login``      technician password → bearer token (429 + Retry-After
                              while failed logins lock the name or address)
* ``POST /api/v1/logout``     revoke the bearer token
* ``POST /api/v1/enrol``      one-time enrolment token + device public key → device id
* ``POST /api/v1/sessions/{id}/summary``  the technician's structured summary
* ``GET  /api/v1/health``     liveness and a few counters
* ``GET  /ws``                the signaling websocket (devices and consoles)

The technician's profile, the audit views and administration
(:mod:`signaling_server.rest_admin`):

* ``GET  /api/v1/me``                              who the token belongs to
* ``POST /api/v1/me/profile``                      own display name and photo
* ``GET  /api/v1/audit/sessions``                  session history (metadata only)
* ``GET  /api/v1/audit/notifications``             notifications and their progress
* ``GET  /api/v1/admin/technicians``               list technicians
* ``POST /api/v1/admin/technicians``               create one
* ``POST /api/v1/admin/technicians/{id}``          role, groups, disabled, name
* ``GET  /api/v1/admin/groups``                    device groups with device counts
* ``POST /api/v1/admin/groups``                    create one
* ``POST /api/v1/admin/groups/{id}/policy``        allowed modes, service on or off
* ``POST /api/v1/admin/enrolment-tokens``          a one-time enrolment code
* ``GET  /api/v1/admin/devices``                   every enrolled device
* ``POST /api/v1/admin/devices/{id}/revoke``       revoke a device, at once
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, WSMsgType, web

from protocol import identity
from protocol.codec import MAX_FRAME_BYTES
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.messages import SIGNALING, Error
from protocol.permissions import Action, allows
from signaling_server import limits, rest_admin

# Re-exported: tests and tools reach the store and the hub through these keys.
from signaling_server.appkeys import CONFIG as CONFIG
from signaling_server.appkeys import FINGERPRINT as FINGERPRINT
from signaling_server.appkeys import HUB as HUB
from signaling_server.appkeys import LOGIN_GUARD as LOGIN_GUARD
from signaling_server.appkeys import SOCKETS as SOCKETS
from signaling_server.appkeys import STORE as STORE
from signaling_server.config import ServerConfig
from signaling_server.hub import Hub
from signaling_server.login_guard import LoginGuard
from signaling_server.store import Store, StoreError, Technician

log = logging.getLogger(__name__)

_SUMMARY_FIELDS = ("summary", "impact", "expected_vs_actual", "evidence", "next_owner")


class WebSocketTransport:
    """Adapts an aiohttp websocket to the hub's Transport protocol."""

    __slots__ = ("ws",)  # one per connection

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def send_frame(self, frame: str) -> None:
        if not self.ws.closed:
            await self.ws.send_str(frame)

    async def close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])


def _json_error(status: int, code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"error": code.value, "message": message}, status=status)


async def _json_body(request: web.Request, *fields: str) -> dict[str, str]:
    if request.content_length is not None and request.content_length > 16 * 1024:
        raise web.HTTPRequestEntityTooLarge(max_size=16 * 1024, actual_size=request.content_length)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "bad_frame", "message": "send a JSON object"}),
            content_type="application/json",
        )
    values: dict[str, str] = {}
    for name in fields:
        value = body.get(name, "")
        if not isinstance(value, str) or len(value) > 4000:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "invalid_field", "message": f"{name} must be text"}),
                content_type="application/json",
            )
        values[name] = value
    return values


async def _bearer(request: web.Request) -> tuple[str, Technician]:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthenticated", "message": "bearer token needed"}),
            content_type="application/json",
        )
    tech = await request.app[STORE].technician_for_token(token)
    if tech is None:
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthenticated", "message": "invalid or expired token"}),
            content_type="application/json",
        )
    return token, tech


async def login(request: web.Request) -> web.Response:
    body = await _json_body(request, "username", "password")
    store = request.app[STORE]
    config = request.app[CONFIG]
    guard = request.app[LOGIN_GUARD]
    address = request.remote or "?"
    # Asked before the password is hashed: a locked name or address costs no scrypt,
    # and the answer comes at once instead of a sleep holding the connection.
    wait_s = guard.retry_after(body["username"], address)
    if wait_s > 0:
        response = _json_error(
            429, ErrorCode.RATE_LIMITED, "too many failed logins: try again later"
        )
        response.headers["Retry-After"] = guard.retry_after_header(wait_s)
        return response
    try:
        token, tech = await store.login(
            body["username"], body["password"], ttl_s=config.technician_token_ttl_s
        )
    except StoreError as exc:
        await store.audit(body["username"][:64], "login", outcome="failed")
        for lockout in guard.failed(body["username"], address):
            await store.audit(
                body["username"][:64],
                "login.lockout",
                target=lockout.key[:128],
                failures=lockout.failures,
                seconds=lockout.seconds,
                address=address,
            )
        return _json_error(401, ErrorCode.UNAUTHENTICATED, str(exc))
    guard.succeeded(body["username"], address)
    await store.audit(tech.id, "login")
    return web.json_response(
        {
            "token": token,
            "technician_id": tech.id,
            "display_name": tech.display_name,
            "role": tech.role.value,
            "expires_in_s": config.technician_token_ttl_s,
        }
    )


async def logout(request: web.Request) -> web.Response:
    token, tech = await _bearer(request)
    await request.app[STORE].revoke_token(token)
    await request.app[HUB].token_revoked(token)
    await request.app[STORE].audit(tech.id, "logout")
    return web.json_response({"ok": True})


async def enrol(request: web.Request) -> web.Response:
    body = await _json_body(request, "token", "public_key", "name", "model", "os")
    store = request.app[STORE]
    try:
        identity.load_public_key(body["public_key"])
    except ProtocolError:
        return _json_error(400, ErrorCode.INVALID_FIELD, "public_key: not an Ed25519 key")
    name = body["name"].strip() or "Unnamed device"
    if len(name) > 128 or len(body["model"]) > 128 or len(body["os"]) > 128:
        return _json_error(400, ErrorCode.TOO_LARGE, "name, model and os: 128 characters each")
    try:
        device = await store.enrol_device(
            body["token"],
            public_key=body["public_key"],
            name=name,
            model=body["model"],
            os=body["os"],
        )
    except StoreError as exc:
        await store.audit("anonymous", "enrol", outcome="refused", why=str(exc))
        return _json_error(403, ErrorCode.EXPIRED, str(exc))
    await store.audit(device.id, "enrol", target=device.group_id)
    return web.json_response(
        {
            "device_id": device.id,
            "group_id": device.group_id,
            "server_fingerprint": request.app[FINGERPRINT],
        }
    )


async def session_summary(request: web.Request) -> web.Response:
    _, tech = await _bearer(request)
    session_id = request.match_info["session_id"]
    store = request.app[STORE]
    if not allows(tech.role, Action.WRITE_SUMMARY):
        await store.audit(
            tech.id,
            "session.summary",
            target=session_id[:64],
            outcome=ErrorCode.FORBIDDEN.value,
            role=tech.role.value,
        )
        return _json_error(403, ErrorCode.FORBIDDEN, "your role may not write summaries")
    row = await store.session(session_id)
    if row is None or row.technician_id != tech.id:
        if row is not None:
            # Someone else's session: refused as if it did not exist, but recorded.
            await store.audit(
                tech.id,
                "session.summary",
                target=session_id,
                outcome=ErrorCode.NOT_FOUND.value,
                role=tech.role.value,
            )
        return _json_error(404, ErrorCode.NOT_FOUND, "no such session of yours")
    if row.closed_at_ms is None:
        return _json_error(409, ErrorCode.BAD_STATE, "close the session first")
    body = await _json_body(request, *_SUMMARY_FIELDS)
    if not body["summary"].strip():
        return _json_error(400, ErrorCode.INVALID_FIELD, "summary: required")
    await store.update_session(session_id, summary=json.dumps(body, sort_keys=True))
    await store.audit(tech.id, "session.summary", target=row.device_id, session_id=session_id)
    return web.json_response({"ok": True})


async def health(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", **request.app[HUB].stats(), **request.app[limits.OPEN_FILES].stats()}
    )


def _origin_allowed(request: web.Request) -> bool:
    """Native clients send no Origin. A browser page from elsewhere must not ride on
    a user's network position to reach the socket (cross-site websocket hijacking)."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


async def websocket(request: web.Request) -> web.StreamResponse:
    if not _origin_allowed(request):
        return _json_error(403, ErrorCode.FORBIDDEN, "foreign Origin refused")
    config = request.app[CONFIG]
    hub = request.app[HUB]
    open_files = request.app[limits.OPEN_FILES]
    if not open_files.admit():
        # Refused while the process can still answer: at the cap, accept() fails.
        return _json_error(
            503, ErrorCode.UNAVAILABLE, "the server is at its connection limit: try another"
        )
    try:
        return await _serve_websocket(request, config, hub)
    finally:
        open_files.release()


async def _serve_websocket(
    request: web.Request, config: ServerConfig, hub: Hub
) -> web.WebSocketResponse:
    # Per-message compression is off: it costs hundreds of KiB per connection and
    # signaling frames are small.
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat_s,
        max_msg_size=MAX_FRAME_BYTES,
        compress=False,
    )
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    conn = await hub.connect(WebSocketTransport(ws), request.remote or "?")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.auth_timeout_s
    try:
        while not ws.closed:
            timeout = None if conn.role is not None else max(0.0, deadline - loop.time())
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                await ws.close(code=CloseCode.AUTH_TIMEOUT, message=b"authenticate in time")
                break
            if msg.type is WSMsgType.TEXT:
                await hub.handle_frame(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                frame = SIGNALING.encode(
                    Error(code=ErrorCode.BAD_FRAME, message="binary frames are not accepted")
                )
                await ws.send_str(frame)
            elif msg.type is WSMsgType.ERROR:
                # Typically an oversized frame: aiohttp closes with 1009 itself.
                log.info("websocket error from %s: %s", request.remote, ws.exception())
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    finally:
        request.app[SOCKETS].discard(ws)
        await hub.disconnect(conn)
    return ws


#: How often the server looks for devices revoked by another process (the admin CLI).
REVOCATION_SWEEP_S = 2.0


async def _sweep_revocations(hub: Hub) -> None:
    while True:
        await asyncio.sleep(REVOCATION_SWEEP_S)
        try:
            for device_id in await hub.store.revoked_among(hub.devices_online.keys()):
                await hub.device_revoked(device_id)
        except Exception:
            log.exception("revocation sweep failed")


async def _close_sockets(app: web.Application) -> None:
    """Close every websocket with GOING_AWAY. This runs on shutdown, before aiohttp
    waits for its request handlers: a websocket handler returns only once its socket
    closes, so closing them later (at cleanup) made a stop wait out aiohttp's shutdown
    timeout and then drop every client without a close frame."""
    open_sockets = app[SOCKETS]
    await asyncio.gather(
        *(
            ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
            for ws in list(open_sockets)
        ),
        return_exceptions=True,
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    # Before the site listens: a member that reconnects at once finds its session.
    # With several nodes, the bus first: which sessions live nodes own (docs/scale.md).
    await app[HUB].start_bus()
    await app[HUB].restore_sessions()
    sweeper = asyncio.create_task(_sweep_revocations(app[HUB]), name="revocation-sweep")
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await app[HUB].shutdown()
    await app[HUB].stop_bus()
    await app[STORE].close()


def make_app(config: ServerConfig, store: Store, fingerprint: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[rest_admin.json_errors])
    hub = Hub(store, config, fingerprint)
    app[CONFIG] = config
    app[STORE] = store
    app[HUB] = hub
    app[FINGERPRINT] = fingerprint
    app[LOGIN_GUARD] = LoginGuard(
        base_s=config.login_backoff_base_s,
        cap_s=config.login_backoff_cap_s,
        free_failures=config.login_free_failures,
    )
    app[SOCKETS] = set()
    app[limits.OPEN_FILES] = limits.OpenFilesGuard.for_this_process()
    # After a fleet left, its tables go before the heap is trimmed (limits.shrink).
    app[limits.OPEN_FILES].before_trim += [hub.compact, lambda: limits.shrink(app[SOCKETS])]
    # Once it has left, what it made that lives on in the store is made again.
    app[limits.OPEN_FILES].after_fleet_left.append(store.drop_pooled)
    app.on_shutdown.append(_close_sockets)
    app.cleanup_ctx.append(_lifecycle)
    app.cleanup_ctx.append(limits.watch_open_files)
    app.router.add_post("/api/v1/login", login)
    app.router.add_post("/api/v1/logout", logout)
    app.router.add_post("/api/v1/enrol", enrol)
    app.router.add_post("/api/v1/sessions/{session_id}/summary", session_summary)
    app.router.add_get("/api/v1/health", health)
    rest_admin.add_routes(app)
    app.router.add_get("/ws", websocket)
    return app
