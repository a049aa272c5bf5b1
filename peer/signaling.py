"""The signaling client both ends use: pinned TLS, authentication, requests with
replies, and reconnection with exponential backoff and full jitter.

TLS is pinned to the server certificate's SHA-256 (from the enrolment code or the
console's server list); there is no fallback to an unpinned or CA-verified connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from protocol.codec import Message, Sender
from protocol.enrolment import fingerprint_bytes
from protocol.errors import CloseCode, ErrorCode, RemoteProtocolError
from protocol.messages import SIGNALING, AuthChallenge, AuthOk, Error

log = logging.getLogger(__name__)


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # waiting to reconnect
    STOPPED = "stopped"  # closed by us, or refused for good (revoked, bad credentials)


class RequestError(Exception):
    """The server refused a request (an ``error`` frame), or an HTTP API call failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotConnected(RequestError):
    def __init__(self) -> None:
        super().__init__("unavailable", "not connected to the server")


#: Close codes after which reconnecting cannot help.
FATAL_CLOSE_CODES = frozenset({CloseCode.AUTH_FAILED, CloseCode.REVOKED, CloseCode.REPLACED})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base·2^n)).

    Full jitter spreads a fleet's reconnects after a server restart over the whole
    window instead of in synchronized waves.
    """

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 30)))
        return (rng or random).uniform(0, ceiling)


def pinned(fingerprint: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(fingerprint_bytes(fingerprint))


def ws_url(server: str) -> str:
    return server.rstrip("/").replace("https://", "wss://", 1) + "/ws"


async def api_request(
    method: str,
    server: str,
    fingerprint: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    """One call to the server's REST API over pinned TLS: the JSON object it answers.

    A refusal (an HTTP error, or a reply that is not a JSON object) raises
    RequestError with the server's ``error`` code and ``message``; a server out of
    reach raises it with ``unavailable``, a certificate off the pin with
    ``pin_mismatch``.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(
                method,
                server.rstrip("/") + path,
                json=body,
                params=params,
                headers=headers,
                ssl=pinned(fingerprint),
            ) as response,
        ):
            try:
                payload = await response.json()
            except (aiohttp.ContentTypeError, ValueError):
                payload = {}
            if not isinstance(payload, dict):
                raise RequestError(f"http_{response.status}", "the reply is not a JSON object")
            if response.status >= 400:
                raise RequestError(
                    str(payload.get("error", f"http_{response.status}")),
                    str(payload.get("message", response.reason)),
                )
            return payload
    except aiohttp.ServerFingerprintMismatch:
        raise RequestError(
            "pin_mismatch", "the server's certificate does not match the pinned fingerprint"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RequestError("unavailable", f"cannot reach {server}: {exc}") from None


async def api_post(
    server: str,
    fingerprint: str,
    path: str,
    body: dict[str, Any],
    *,
    token: str | None = None,
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    """POST JSON to the server's REST API over pinned TLS; RequestError on refusal."""
    return await api_request(
        "POST", server, fingerprint, path, body=body, token=token, timeout_s=timeout_s
    )


async def api_get(
    server: str,
    fingerprint: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    """GET from the server's REST API over pinned TLS; RequestError on refusal."""
    return await api_request(
        "GET", server, fingerprint, path, params=params, token=token, timeout_s=timeout_s
    )


Authenticator = Callable[[AuthChallenge], Message]
MessageHandler = Callable[[Message], Awaitable[None]]


class SignalingClient:
    """One logical connection to the server that survives network drops.

    ``authenticate`` turns the server's challenge into the auth message; it is called
    on every (re)connection. ``on_message`` receives every frame that is not the reply
    to a pending request. ``on_online`` runs after each successful authentication.
    """

    def __init__(
        self,
        server: str,
        fingerprint: str,
        *,
        authenticate: Authenticator,
        on_message: MessageHandler,
        on_online: Callable[[AuthOk], Awaitable[None]] | None = None,
        on_state: Callable[[LinkState], None] | None = None,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.server = server
        self.fingerprint = fingerprint
        self._authenticate = authenticate
        self._on_message = on_message
        self._on_online = on_online
        self._on_state = on_state
        self.backoff = backoff
        self.state = LinkState.OFFLINE
        self.online = asyncio.Event()
        self.stopped = asyncio.Event()
        self.auth: AuthOk | None = None
        self.fatal: RequestError | None = None
        self.connections_made = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._rids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._handlers: set[asyncio.Task[None]] = set()
        # Frames are handled one at a time, in arrival order, by one consumer: a
        # handler that awaits (applying an SDP answer) must be done before the next
        # frame (the consent receipt bound to that answer) is looked at. The reader
        # never waits for handlers, so replies to requests are never stuck behind them.
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None

    def _set_state(self, state: LinkState) -> None:
        self.state = state
        if state is LinkState.ONLINE:
            self.online.set()
        else:
            self.online.clear()
        if self._on_state is not None:
            self._on_state(state)

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="signaling-client")
            self._consumer = asyncio.create_task(self._consume(), name="signaling-handlers")
        return self._task

    async def _consume(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._on_message(message)
            except Exception:
                log.exception("handler for %s failed", message.TYPE)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in [*self._handlers, *([self._consumer] if self._consumer else [])]:
            task.cancel()
        self._set_state(LinkState.STOPPED)
        self.stopped.set()

    async def _run(self) -> None:
        attempt = 0
        async with aiohttp.ClientSession() as http:
            while not self._closing:
                self._set_state(LinkState.CONNECTING)
                try:
                    authenticated = await self._session(http)
                except aiohttp.ServerFingerprintMismatch:
                    self.fatal = RequestError(
                        "pin_mismatch",
                        "the server's certificate does not match the pinned fingerprint",
                    )
                    log.error("%s", self.fatal)
                    break
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.info("signaling connection failed: %s", exc)
                    authenticated = False
                self._fail_pending()
                if self.fatal is not None or self._closing:
                    break
                attempt = 0 if authenticated else attempt + 1
                self._set_state(LinkState.OFFLINE)
                await asyncio.sleep(self.backoff.delay(attempt))
        self._set_state(LinkState.STOPPED)
        self.stopped.set()

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One websocket connection; True if it got as far as authenticating."""
        authenticated = False
        async with http.ws_connect(
            ws_url(self.server),
            ssl=pinned(self.fingerprint),
            heartbeat=20.0,
            max_msg_size=1024 * 1024,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        ) as ws:
            self._ws = ws
            self.connections_made += 1
            async for frame in ws:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    break
                try:
                    message = SIGNALING.decode(frame.data, Sender.SERVER)
                except RemoteProtocolError as exc:
                    log.warning("dropped a bad frame from the server: %s", exc)
                    continue
                if isinstance(message, AuthChallenge):
                    await ws.send_str(SIGNALING.encode(self._authenticate(message)))
                    continue
                if isinstance(message, AuthOk) and not authenticated:
                    authenticated = True
                    self.auth = message
                    self._set_state(LinkState.ONLINE)
                    if self._on_online is not None:
                        self._dispatch(self._on_online(message))
                    continue
                if self._resolve(message):
                    continue
                if isinstance(message, Error) and not authenticated:
                    self.fatal = RequestError(message.code.value, message.message)
                    continue
                self._inbox.put_nowait(message)
            close_code = ws.close_code
        self._ws = None
        if close_code in FATAL_CLOSE_CODES and not self._closing:
            reason = {
                CloseCode.AUTH_FAILED: "the server refused our credentials",
                CloseCode.REVOKED: "this device was revoked",
                CloseCode.REPLACED: "the same identity connected from elsewhere",
            }[close_code]
            if self.fatal is None:
                self.fatal = RequestError("closed", reason)
        return authenticated

    def _dispatch(self, coro: Awaitable[None]) -> None:
        """Handle frames in order but without letting a slow handler stall the reader."""

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("message handler failed")

        task = asyncio.ensure_future(run())
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _resolve(self, message: Message) -> bool:
        if message.rid is None:
            return False
        future = self._pending.pop(message.rid, None)
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnected())
        self._pending.clear()

    async def send(self, message: Message) -> None:
        ws = self._ws
        if ws is None or ws.closed or not self.online.is_set():
            raise NotConnected()
        await ws.send_str(SIGNALING.encode(message))

    async def request(self, message: Message, *, timeout_s: float = 15.0) -> Message:
        """Send with a fresh ``rid`` and wait for the reply carrying it.

        The reply is ``ok``, or the message that answers the request (a snapshot, a
        session update...); an ``error`` reply raises RequestError.
        """
        rid = next(self._rids) % (2**31)
        request = dataclasses.replace(message, rid=rid)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self.send(request)
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply, Error):
            raise RequestError(reply.code.value, reply.message)
        return reply

    async def wait_online(self, timeout_s: float = 15.0) -> AuthOk:
        online = asyncio.ensure_future(self.online.wait())
        stopped = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait(
                {online, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            online.cancel()
            stopped.cancel()
        if self.online.is_set() and self.auth is not None:
            return self.auth
        if self.fatal is not None:
            raise self.fatal
        raise RequestError(ErrorCode.UNAVAILABLE.value, f"cannot reach {self.server}")
