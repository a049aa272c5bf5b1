"""The simulated clients of the load tester, each kind in processes of its own.

A simulated device is the device agent's link and nothing else: one pinned-TLS
websocket (aiohttp), the protocol's codec, the server's challenge signed with the
device's Ed25519 key, a status report after every authentication (as the agent
sends one), the websocket's pings answered (aiohttp answers them while a reader
waits), a notification acknowledged when it arrives, and on a lost link a new
attempt after the product's backoff (full jitter). The product's ``SignalingClient``
per device carries a request table, an outbox and a state machine per link; 4,500 of
them in one process cost more memory and CPU than the server they measure, so the
load tester speaks the same frames with less machinery.

A simulated console authenticates with a technician's bearer token, subscribes to
the devices in its scope and notes when each probe's status change reaches it.

Each worker process runs its own event loop and obeys commands from the
orchestrator over a :func:`multiprocessing.Pipe` (one command, one answer).
Timestamps are ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every process
of the machine, so a time noted here compares with one noted in another process.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.faults._restartable import raise_open_files_limit
from peer.signaling import Backoff, pinned, ws_url
from protocol import identity
from protocol.codec import Sender
from protocol.enums import DeviceAck
from protocol.messages import (
    SIGNALING,
    AuthChallenge,
    AuthDevice,
    AuthOk,
    AuthTechnician,
    DevicesSnapshot,
    DevicesSubscribe,
    DeviceUpdate,
    NotifyAck,
    NotifyDeliver,
    Ok,
    StatusReport,
)
from signaling_server import limits

#: Handshakes one worker has in flight at once: enough to keep the server busy,
#: few enough that a worker's own loop does not delay the answers it times.
CONNECTS_IN_FLIGHT = 16
PROBE_PREFIX = "probe-"
#: The request id of a device's status reports: their ``ok`` says the server is done.
REPORT_RID = 2


@dataclass
class SimDevice:
    device_id: str
    key: Ed25519PrivateKey
    name: str
    online_at: list[float] = field(default_factory=list)
    notified_at: dict[str, float] = field(default_factory=dict)
    ws: aiohttp.ClientWebSocketResponse | None = None
    errors: int = 0


class Worker:
    """What the device and console workers share: the server's address, one HTTP
    session over a chosen source address, the errors seen."""

    def __init__(self, url: str, fingerprint: str, source: str) -> None:
        self.url = ws_url(url)
        self.fingerprint = fingerprint
        self.source = source
        self.stopping = False
        self.errors: list[str] = []
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(
                limit=0, ssl=pinned(self.fingerprint), local_addr=(self.source, 0)
            )
            self.session = aiohttp.ClientSession(connector=connector)
        return self.session

    def error(self, what: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(what)

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        session = await self.open()
        return await session.ws_connect(
            self.url,
            compress=0,
            autoping=True,
            heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        )


class DeviceWorker(Worker):
    def __init__(self, url: str, fingerprint: str, source: str, devices: list[SimDevice]) -> None:
        super().__init__(url, fingerprint, source)
        self.devices = {d.device_id: d for d in devices}
        self.tasks: list[asyncio.Task[None]] = []
        self.gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        self.error_count = 0
        #: (when, kind, what, when the lost link came up or None for an attempt)
        self.failures: list[tuple[float, str, str, float | None]] = []
        self.backoff = Backoff()

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._keep(d)) for d in self.devices.values()]

    async def _keep(self, device: SimDevice) -> None:
        """Hold the device's link; after a loss, try again after the backoff."""
        attempt = 0
        rng = random.Random()
        while not self.stopping:
            # A failed attempt counts from when it began: one refused while the server
            # was down may be noticed after it listens again (this loop is busy).
            began: float | None = None
            up_since: float | None = None
            try:
                async with self.gate:
                    began = time.monotonic()
                    ws = await self._authenticate(device)
                began, up_since = None, time.monotonic()
                attempt = 0
                await self._read(device, ws)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self._failed(device, exc, began, up_since)
            if not self.stopping:
                await asyncio.sleep(self.backoff.delay(attempt, rng))
                attempt += 1

    def _failed(
        self, device: SimDevice, exc: BaseException, began: float | None, up_since: float | None
    ) -> None:
        """A failed attempt (``began``: when) or a lost link (now; ``up_since``: when
        it came up), noted with its time: the orchestrator tells those a restart
        causes from errors (a link up before a kill is lost to it, however late this
        busy loop notices)."""
        if self.stopping:
            return
        self.error_count += 1
        device.errors += 1
        at = began if began is not None else time.monotonic()
        self.failures.append((at, type(exc).__name__, str(exc)[:200], up_since))
        self.error(f"{device.device_id}: {type(exc).__name__}: {exc}")

    async def _authenticate(self, device: SimDevice) -> aiohttp.ClientWebSocketResponse:
        ws = await self.connect()
        try:
            challenge = SIGNALING.decode(await ws.receive_str(timeout=30), Sender.SERVER)
            if not isinstance(challenge, AuthChallenge):
                raise ValueError(f"expected auth.challenge, got {challenge.TYPE}")
            signature = identity.sign_challenge(
                device.key,
                nonce_b64=challenge.nonce,
                device_id=device.device_id,
                server_fingerprint=self.fingerprint,
            )
            await ws.send_str(
                SIGNALING.encode(AuthDevice(device_id=device.device_id, signature=signature, rid=1))
            )
            while True:
                reply = SIGNALING.decode(await ws.receive_str(timeout=30), Sender.SERVER)
                if isinstance(reply, AuthOk):
                    break
                if reply.TYPE == "error":
                    raise ValueError(f"refused: {reply}")
        except BaseException:
            await ws.close()
            raise
        device.ws = ws
        # Online once the server has answered the status report too: auth.ok alone
        # would let the figures after the connect overlap the server's backlog.
        await self.report(device, device.name)
        return ws

    async def report(self, device: SimDevice, name: str) -> None:
        assert device.ws is not None
        await device.ws.send_str(
            SIGNALING.encode(
                StatusReport(
                    service_installed=True, service_enabled=True, name=name, rid=REPORT_RID
                )
            )
        )

    async def _read(self, device: SimDevice, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = SIGNALING.decode(msg.data, Sender.SERVER)
            if isinstance(message, Ok) and message.rid == REPORT_RID:
                device.online_at.append(time.monotonic())
            elif isinstance(message, NotifyDeliver):
                device.notified_at.setdefault(message.notification_id, time.monotonic())
                await ws.send_str(
                    SIGNALING.encode(
                        NotifyAck(
                            notification_id=message.notification_id, state=DeviceAck.DELIVERED
                        )
                    )
                )
        device.ws = None
        if not self.stopping:
            raise ConnectionResetError(f"closed by the server ({ws.close_code})")

    # -- commands -----------------------------------------------------------------

    async def online(self, after: float, deadline_s: float) -> dict[str, Any]:
        """Wait until every device authenticated after ``after`` (or the deadline)."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if all(d.online_at and d.online_at[-1] > after for d in self.devices.values()):
                break
            await asyncio.sleep(0.05)
        times = [
            next(t for t in d.online_at if t > after)
            for d in self.devices.values()
            if any(t > after for t in d.online_at)
        ]
        return {"online": len(times), "times": times, "errors": self.error_count}

    async def probe(self, device_id: str, seq: int) -> float:
        device = self.devices[device_id]
        sent_at = time.monotonic()
        await self.report(device, f"{PROBE_PREFIX}{seq}")
        return sent_at

    def notified(self, notification_id: str) -> dict[str, Any]:
        times = [
            d.notified_at[notification_id]
            for d in self.devices.values()
            if notification_id in d.notified_at
        ]
        return {"received": len(times), "last": max(times, default=0.0), "times": times}

    async def close(self) -> dict[str, Any]:
        self.stopping = True
        await asyncio.gather(
            *(d.ws.close() for d in self.devices.values() if d.ws is not None),
            return_exceptions=True,
        )
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        return {"errors": self.error_count, "examples": self.errors[:5], "failures": self.failures}


class ConsoleWorker(Worker):
    def __init__(self, url: str, fingerprint: str, source: str, tokens: list[str]) -> None:
        super().__init__(url, fingerprint, source)
        self.tokens = tokens
        #: probe number -> when each console heard of it
        self.heard: dict[int, list[float]] = {}
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        for token in self.tokens:
            ws = await self.connect()
            challenge = SIGNALING.decode(await ws.receive_str(timeout=30), Sender.SERVER)
            assert isinstance(challenge, AuthChallenge)
            await ws.send_str(SIGNALING.encode(AuthTechnician(token=token, rid=1)))
            reply = SIGNALING.decode(await ws.receive_str(timeout=30), Sender.SERVER)
            if not isinstance(reply, AuthOk):
                raise RuntimeError(f"console refused: {reply}")
            await ws.send_str(SIGNALING.encode(DevicesSubscribe(rid=2)))
            await self._snapshot(ws)
            self.sockets.append(ws)
            self.readers.append(asyncio.create_task(self._read(ws)))
        return len(self.sockets)

    @staticmethod
    async def _snapshot(ws: aiohttp.ClientWebSocketResponse) -> None:
        """Wait for the subscription's snapshot: the server watches for this console
        from then on, so a probe sent after ``start`` answered cannot be missed."""
        while True:
            message = SIGNALING.decode(await ws.receive_str(timeout=60), Sender.SERVER)
            if isinstance(message, DevicesSnapshot) and message.complete:
                return

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        #: Probes this console heard: a later update of the same device (another
        #: change, a node reading it again) repeats its name, and only the first
        #: arrival is the probe's.
        seen: set[int] = set()
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            # Cheap test first: most frames are not probes, and decoding every
            # snapshot would make this process, not the server, the bottleneck.
            if PROBE_PREFIX not in msg.data:
                continue
            at = time.monotonic()
            message = SIGNALING.decode(msg.data, Sender.SERVER)
            if isinstance(message, DeviceUpdate) and message.device.name.startswith(PROBE_PREFIX):
                seq = int(message.device.name[len(PROBE_PREFIX) :])
                if seq not in seen:
                    seen.add(seq)
                    self.heard.setdefault(seq, []).append(at)

    async def close(self) -> dict[str, Any]:
        self.stopping = True
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        return {"errors": len(self.errors)}


async def _serve(pipe: Pipe, worker: DeviceWorker | ConsoleWorker) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command, args = await loop.run_in_executor(None, pipe.recv)
        try:
            answer: Any = await _obey(worker, command, args)
        except Exception as exc:  # the orchestrator reports it
            answer = {"failed": f"{type(exc).__name__}: {exc}"}
        pipe.send(answer)
        if command == "close":
            return


async def _obey(worker: DeviceWorker | ConsoleWorker, command: str, args: dict[str, Any]) -> Any:
    if isinstance(worker, DeviceWorker):
        if command == "start":
            worker.start()
            return {"started": len(worker.devices)}
        if command == "online":
            return await worker.online(args["after"], args["deadline_s"])
        if command == "probe":
            return await worker.probe(args["device_id"], args["seq"])
        if command == "notified":
            return worker.notified(args["notification_id"])
    else:
        if command == "start":
            return {"consoles": await worker.start()}
        if command == "heard":
            return worker.heard
    if command == "close":
        return await worker.close()
    raise ValueError(f"unknown command {command!r}")


def device_process(
    pipe: Pipe, url: str, fingerprint: str, source: str, devices: list[tuple[str, bytes, str]]
) -> None:
    """Entry point of a device worker process: ``devices`` are (id, raw Ed25519
    private key, name)."""
    raise_open_files_limit(len(devices) + 1024)
    limits.share_tls_read_buffer()
    sims = [
        SimDevice(device_id, Ed25519PrivateKey.from_private_bytes(raw), name)
        for device_id, raw, name in devices
    ]
    asyncio.run(_serve(pipe, DeviceWorker(url, fingerprint, source, sims)))


def console_process(pipe: Pipe, url: str, fingerprint: str, source: str, tokens: list[str]) -> None:
    """Entry point of a console worker process."""
    raise_open_files_limit(len(tokens) + 1024)
    asyncio.run(_serve(pipe, ConsoleWorker(url, fingerprint, source, tokens)))
