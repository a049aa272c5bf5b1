"""A raw signaling client for server tests: pinned TLS, hand-made frames, no retries.

Unlike ``peer.signaling.SignalingClient`` this client does nothing on its own: the
test decides every frame that goes out (valid or not) and waits for the frames that
come back with :meth:`Wire.expect`, which sets aside every other frame for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.signaling import pinned
from protocol import identity
from protocol.codec import Message, Sender
from protocol.enrolment import EnrolmentCode
from protocol.enums import Mode, Role
from protocol.errors import ErrorCode
from protocol.messages import (
    SIGNALING,
    AuthChallenge,
    AuthDevice,
    AuthOk,
    AuthTechnician,
    Error,
    Ok,
    SessionClose,
    SessionResume,
    StatusReport,
)
from signaling_server.app import HUB
from signaling_server.hub import Hub
from signaling_server.server import RunningServer
from signaling_server.store import Group, Store, Technician
from tests.conftest import PASSWORD, lab_config

M = TypeVar("M", bound=Message)

#: A minimal SDP the server accepts: it only reads the sha-256 DTLS fingerprint.
FINGERPRINT_A = "sha-256 " + ":".join(["AB"] * 32)
FINGERPRINT_B = "sha-256 " + ":".join(["CD"] * 32)


def sdp(fingerprint: str = FINGERPRINT_A) -> str:
    alg, value = fingerprint.split(" ", 1)
    return f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\na=fingerprint:{alg} {value}\r\n"


class Server(Protocol):
    """What the helpers need of a test server (``tests.conftest.Lab`` or ``SmallLab``)."""

    @property
    def url(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def store(self) -> Store: ...

    @property
    def tablets(self) -> Group: ...


def hub_of(server: RunningServer) -> Hub:
    assert server.app is not None
    return server.app[HUB]


class Closed(AssertionError):
    """The connection closed while a frame was awaited."""

    def __init__(self, code: int | None, waiting_for: str) -> None:
        super().__init__(f"connection closed with code {code} while waiting for {waiting_for}")
        self.code = code


class Wire:
    """One websocket to the server, after its ``auth.challenge`` was read."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
    ) -> None:
        self.http = http
        self.ws = ws
        self._challenge: AuthChallenge | None = None
        self.role: Role | None = None
        #: Frames read while waiting for something else, oldest first.
        self.frames: list[Message] = []
        self.close_code: int | None = None
        self._rids = itertools.count(1)

    # -- opening and closing ------------------------------------------------------------

    @classmethod
    async def open(
        cls, server: Server, *, headers: dict[str, str] | None = None, timeout_s: float = 5.0
    ) -> Wire:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(
                server.url + "/ws",
                ssl=pinned(server.fingerprint),
                headers=headers,
                max_msg_size=1024 * 1024,
                timeout=aiohttp.ClientWSTimeout(ws_close=timeout_s),
            )
            wire = cls(http, ws)
            wire._challenge = await wire.expect(AuthChallenge, timeout_s)
        except BaseException:
            await http.close()
            raise
        return wire

    @property
    def challenge(self) -> AuthChallenge:
        """The ``auth.challenge`` the server opened this connection with."""
        assert self._challenge is not None
        return self._challenge

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close()
        await self.http.close()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def wait_closed(self, timeout_s: float = 5.0) -> int | None:
        """Read until the server closes the connection; return the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.close_code is None and not self.ws.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("the server did not close the connection")
            message = await self._read_one(remaining, "the close")
            if message is not None:
                self.frames.append(message)
        return self.close_code if self.close_code is not None else self.ws.close_code

    # -- sending ----------------------------------------------------------------------

    async def send(self, message: Message | str | bytes) -> None:
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        elif isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_str(SIGNALING.encode(message))

    def with_rid(self, message: M) -> M:
        return dataclasses.replace(message, rid=next(self._rids))

    async def request(self, message: Message, timeout_s: float = 5.0) -> Message:
        """Send with a fresh ``rid``; return the frame that carries it back."""
        sent = self.with_rid(message)
        await self.send(sent)
        return await self.expect(Message, timeout_s, where=lambda m: m.rid == sent.rid)

    async def ok(self, message: Message, timeout_s: float = 5.0) -> Message:
        """A request that must succeed: its reply is anything but an ``error``."""
        reply = await self.request(message, timeout_s)
        assert not isinstance(reply, Error), f"{message.TYPE} refused: {reply}"
        return reply

    async def refused(self, message: Message, code: ErrorCode, timeout_s: float = 5.0) -> Error:
        """A request that must be refused with ``code``."""
        reply = await self.request(message, timeout_s)
        assert isinstance(reply, Error), f"{message.TYPE} was not refused: {reply}"
        assert reply.code is code, f"{message.TYPE}: expected {code}, got {reply}"
        return reply

    async def round_trip(self) -> None:
        """A request without side effects: when its reply arrives, every frame the
        server sent before it has been read (and set aside)."""
        assert self.role is not None, "authenticate first"
        probe: Message
        if self.role is Role.DEVICE:
            probe = SessionResume(session_id="ses-round-trip")
        else:
            probe = SessionClose(session_id="ses-round-trip")
        await self.refused(probe, ErrorCode.NOT_FOUND)

    # -- receiving --------------------------------------------------------------------

    async def _read_one(self, timeout_s: float, waiting_for: str) -> Message | None:
        """One frame from the socket; ``None`` for frames that are not messages."""
        try:
            frame = await self.ws.receive(timeout=timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no {waiting_for} within the time allowed") from None
        if frame.type is aiohttp.WSMsgType.TEXT:
            return SIGNALING.decode(frame.data, Sender.SERVER)
        if frame.type is aiohttp.WSMsgType.CLOSE:
            self.close_code = int(frame.data)
            return None
        if frame.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            if self.close_code is None:
                self.close_code = self.ws.close_code
            return None
        if frame.type is aiohttp.WSMsgType.ERROR:
            raise AssertionError(f"websocket error: {frame.data!r}")
        raise AssertionError(f"unexpected {frame.type.name} frame from the server")

    def take(self, cls: type[M], where: Callable[[M], bool] | None = None) -> M | None:
        """The oldest set-aside frame of type ``cls`` (matching ``where``), removed."""
        for index, message in enumerate(self.frames):
            if isinstance(message, cls) and (where is None or where(message)):
                del self.frames[index]
                return message
        return None

    def pending(self, cls: type[M]) -> list[M]:
        """Set-aside frames of type ``cls``, left in place."""
        return [m for m in self.frames if isinstance(m, cls)]

    async def expect(
        self, cls: type[M], timeout_s: float = 5.0, *, where: Callable[[M], bool] | None = None
    ) -> M:
        """The next frame of type ``cls`` (matching ``where``); others are set aside."""
        found = self.take(cls, where)
        if found is not None:
            return found
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.close_code is not None or self.ws.closed:
                raise Closed(self.close_code or self.ws.close_code, cls.__name__)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {cls.__name__} within {timeout_s} s; got {self.frames}")
            message = await self._read_one(remaining, cls.__name__)
            if message is None:
                continue
            if isinstance(message, cls) and (where is None or where(message)):
                return message
            self.frames.append(message)

    async def expect_error(self, code: ErrorCode, timeout_s: float = 5.0) -> Error:
        error = await self.expect(Error, timeout_s)
        assert error.code is code, f"expected {code}, got {error}"
        return error

    # -- authentication ---------------------------------------------------------------

    def sign(self, key: Ed25519PrivateKey, device_id: str, nonce: str | None = None) -> str:
        return identity.sign_challenge(
            key,
            nonce_b64=self.challenge.nonce if nonce is None else nonce,
            device_id=device_id,
            server_fingerprint=self.challenge.server_fingerprint,
        )

    async def auth_device(self, device_id: str, key: Ed25519PrivateKey) -> AuthOk:
        reply = await self.request(
            AuthDevice(device_id=device_id, signature=self.sign(key, device_id))
        )
        assert isinstance(reply, AuthOk), reply
        assert reply.role is Role.DEVICE
        self.role = reply.role
        return reply

    async def auth_technician(self, token: str) -> AuthOk:
        reply = await self.request(AuthTechnician(token=token))
        assert isinstance(reply, AuthOk), reply
        self.role = reply.role
        return reply

    async def report(
        self,
        *,
        installed: bool = True,
        enabled: bool = True,
        chat_services: Sequence[Mode] = (Mode.TEXT, Mode.VOICE, Mode.VIDEO),
        name: str = "Test device",
    ) -> None:
        reply = await self.request(
            StatusReport(
                service_installed=installed,
                service_enabled=enabled,
                chat_services=tuple(chat_services),
                name=name,
                model="Test model",
                os="TestOS 1",
            )
        )
        assert isinstance(reply, Ok), reply


# --- REST --------------------------------------------------------------------------------


async def post(
    server: Server, path: str, body: Any, *, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON over pinned TLS; the status and the JSON reply."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url + path, json=body, headers=headers, ssl=pinned(server.fingerprint)
        ) as response,
    ):
        payload = await response.json(content_type=None)
        assert isinstance(payload, dict), payload
        return response.status, payload


async def login(server: Server, username: str, password: str = PASSWORD) -> str:
    status, reply = await post(
        server, "/api/v1/login", {"username": username, "password": password}
    )
    assert status == 200, reply
    token = reply["token"]
    assert isinstance(token, str)
    return token


@dataclasses.dataclass(frozen=True)
class EnrolledDevice:
    device_id: str
    key: Ed25519PrivateKey
    group_id: str


async def enrol(
    server: Server, group: Group | None = None, *, name: str = "Test device"
) -> EnrolledDevice:
    """Enrol a new device key over REST with a fresh one-time code."""
    token = await server.store.issue_enrolment_token(
        (group or server.tablets).id, created_by="test", ttl_s=600
    )
    code = EnrolmentCode(server=server.url, token=token, fingerprint=server.fingerprint)
    parsed = EnrolmentCode.parse(code.encode())
    key = identity.generate_key()
    status, reply = await post(
        server,
        "/api/v1/enrol",
        {
            "token": parsed.token,
            "public_key": identity.public_key_b64(key),
            "name": name,
            "model": "Test model",
            "os": "TestOS 1",
        },
    )
    assert status == 200, reply
    assert reply["server_fingerprint"] == server.fingerprint
    return EnrolledDevice(str(reply["device_id"]), key, str(reply["group_id"]))


# --- connected clients -------------------------------------------------------------------


class Clients:
    """Opens wires and closes every one of them at the end of a test."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.wires: list[Wire] = []

    async def raw(self, *, headers: dict[str, str] | None = None) -> Wire:
        wire = await Wire.open(self.server, headers=headers)
        self.wires.append(wire)
        return wire

    async def device(
        self,
        device: EnrolledDevice,
        *,
        installed: bool = True,
        enabled: bool = True,
        chat_services: Sequence[Mode] = (Mode.TEXT, Mode.VOICE, Mode.VIDEO),
    ) -> Wire:
        """A device, authenticated, that reported its service installed and enabled."""
        wire = await self.raw()
        await wire.auth_device(device.device_id, device.key)
        await wire.report(installed=installed, enabled=enabled, chat_services=chat_services)
        return wire

    async def console(self, username: str) -> Wire:
        wire = await self.raw()
        ok = await wire.auth_technician(await login(self.server, username))
        assert ok.role is not Role.DEVICE
        return wire

    async def close(self) -> None:
        for wire in self.wires:
            with contextlib.suppress(Exception):
                await wire.close()


@asynccontextmanager
async def clients(server: Server) -> AsyncIterator[Clients]:
    made = Clients(server)
    try:
        yield made
    finally:
        await made.close()


# --- a server of one's own, for settings the shared fixture does not have ---------------


@dataclasses.dataclass
class SmallLab:
    """A server with its own settings, one group (``tablets``) and one admin."""

    server: RunningServer
    store: Store
    tablets: Group
    admin: Technician

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fingerprint(self) -> str:
        return self.server.fingerprint

    @property
    def hub(self) -> Hub:
        return hub_of(self.server)


@asynccontextmanager
async def small_lab(tmp_path: Path, **overrides: object) -> AsyncIterator[SmallLab]:
    config = lab_config(tmp_path, **overrides)
    server = await RunningServer(config).start()
    try:
        assert server.app is not None
        from signaling_server.app import STORE

        store = server.app[STORE]
        tablets = await store.create_group("Tablets")
        admin = await store.create_technician(
            "admin",
            PASSWORD,
            display_name="Admin",
            role=Role.ADMIN,
            organisation="Test IT",
            groups=[tablets.id],
        )
        yield SmallLab(server=server, store=store, tablets=tablets, admin=admin)
    finally:
        await server.stop()
