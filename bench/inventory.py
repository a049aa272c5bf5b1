"""Inventory benchmark: the technician console with 5,000 devices, each figure beside
its floor, to prove the issue's target: "An inventory of 5,000 devices loads and
filters without freezing the window".

Run (from the project root, without a display)::

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.inventory
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.inventory --devices 200 --live 50
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.inventory --profile

Everything is real except the device agents:

- **The lab** is a process of its own (as the server is in production, so that its
  work is not this process's): the real signaling server (``RunningServer``, TLS, on
  127.0.0.1) with a real SQLite store in a temporary folder; four device groups, all
  in the technician's scope, and N devices (default 5,000). The first few are
  enrolled the product's way (one enrolment token each, ``Store.enrol_device``), to
  time it; the rest are inserted in one transaction of the store's own (``Store.tx``),
  a bulk path written here: nothing is added to the product. Every device has a real
  Ed25519 key. K of them (default 1,000) then connect to the server's websocket as
  devices do (TLS pinned, the challenge signed with the device key): they are online,
  and they make the live status changes. They are bare websocket clients, not agents.
- **The console** runs in this process, on the qasync loop as in the product
  (``peer.ui.app.run_with_qt``): a real ``ConsoleClient`` logs in (REST, then the
  signaling websocket, the snapshot in 64 KiB parts) and the real ``ConsoleWindow``
  shows it, offscreen.

How a freeze is measured: a QTimer on the GUI loop ticks every 5 ms (PreciseTimer)
and records the longest gap between two ticks, the longest the window could neither
take input nor paint: the "stall". A stall of 100 ms or more is a freeze (the target
of every stall figure). With each long gap the GUI thread's own CPU time in it is
recorded: a gap mostly off the CPU was waiting for a core (the lab shares this
machine), not working.

1. **Load** (``--loads`` times, default 3; the worst is judged): from ``login()``
   until the table (the proxy the view reads) holds all N rows, and the longest
   stall over that time and the 50 ms after (its first paint); the process's RSS.
   Then the paint of the visible rows, forced: ``window.grab()`` (the whole window)
   and ``table.grab()`` (the table alone, median of three). Floor: the same login
   with no window, the ``ConsoleClient`` receiving the snapshot alone (after one
   unmeasured warm-up login); for the table's paint, a ``QTableView`` over a
   ``QStandardItemModel`` holding only the visible rows' texts, at the same size.
2. **Filter and sort**, a step at a time with a pause between steps (a fast typist's
   pace): typing a search text into the search box a character at a time
   (``QTest.keyClicks``), deleting it with backspace, each status then any, online
   then offline then either, each group then all; sorting by each column
   (``sortByColumn``, what a header click does). A step's time is its handling plus a
   forced repaint of the table (``viewport().repaint()``): key press to the table
   showing the result; its stall is the longest gap over the step and its pause, so
   deferred work counts. Floor: ``InventoryFilter.matches`` over the N devices in a
   plain loop, with the filter the proxy holds after the step; for a sort, Python's
   ``sorted`` of the N devices by that column's value. After each step the table is
   checked against the plain computation: the same devices, in the same order.
3. **Live updates**, with the table sorted by name (the window's default), then by
   Live Support status (the sort column is the one changing):

   - *through the server*: the K connected devices each send a real status report
     (Live Support switched off, or on again); the server stores it and fans a
     ``device.update`` out to the console: K status changes at the pace the server
     sends them. Time from the request to the lab until the table shows all K;
   - *fed directly*: K ``DeviceInfo`` changes (status and online) put into the
     client's ``devices`` and fired to its ``device_listeners`` in one loop turn, as
     ``ConsoleClient`` does for each ``device.update``; the server is not involved.
     The worst case: every change arriving at once.

   Floor: the same with no window (the client alone).

Output: a table (figure, measured, floor, target, result) on stdout, then plain lines
on what missed its target and on the longest gaps, and JSON (``--out``) with every
figure, step, burst and long gap. Nothing here asserts a timing: this is a benchmark,
not a test. ``--profile`` runs the window part under cProfile and prints where the
time went (stats in ``build/bench/inventory.prof``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import datetime
import io
import itertools
import json
import logging
import os
import platform
import pstats
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import psutil  # type: ignore[import-untyped,unused-ignore]
import PySide6
from PySide6.QtCore import QMessageLogContext, Qt, QTimer, QtMsgType, qInstallMessageHandler
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QTableView

from protocol.enums import LiveSupportStatus
from protocol.messages import DeviceInfo
from tech_console.client import ConsoleClient
from tech_console.ui.inventory import HEADERS, STATUS_ORDER, Column
from tech_console.ui.main_window import ConsoleWindow

log = logging.getLogger("bench.inventory")

#: The issue's figure, and how many of them are online and change live.
DEVICES: Final = 5_000
LIVE: Final = 1_000
#: Window loads measured (the first in the process is cold).
LOADS: Final = 3
#: A stall this long or longer is a freeze.
STALL_TARGET_MS: Final = 100.0
TICK_MS: Final = 5
#: Gaps at least this long are kept, with the step they happened in.
NOTE_GAP_MS: Final = 30.0
#: Pause after each filter or sort step: the loop runs, deferred paints happen.
STEP_PAUSE_S: Final = 0.08
#: After a phase: a few ticks, so that its last stall is recorded.
SETTLE_S: Final = 0.05
#: Devices enrolled the product's way (a token each) before the bulk insert.
ENROL_SAMPLE: Final = 20
TIMEOUT_S: Final = 120.0
MIB: Final = 1024 * 1024

USERNAME: Final = "bench-tech"
GROUPS: Final = (
    ("Tablets", "Tablet", ("Galaxy Tab S9", "iPad 10th gen", "Lenovo Tab P11")),
    ("Kiosks", "Kiosk", ("Elo I-Series 4", "Zebra CC6000")),
    ("Laptops", "Laptop", ("ThinkPad T14", "Latitude 5440", "EliteBook 840")),
    ("Handhelds", "Handheld", ("Zebra TC52", "Honeywell CT40", "Pixel 8")),
)
SITES: Final = (
    "Reception",
    "Warehouse",
    "Front desk",
    "Pharmacy",
    "Lab",
    "Loading bay",
    "Office",
    "Clinic",
)
SYSTEMS: Final = ("Android 13", "Android 14", "Windows 11", "iPadOS 17", "Ubuntu 22.04")
#: Typed into the search box one character at a time, then deleted.
SEARCH_TEXT: Final = "tablet 01"


# == the lab: server, store and devices, in a process of its own ======================


@dataclasses.dataclass(frozen=True)
class LabInfo:
    url: str
    fingerprint: str
    username: str
    password: str
    devices: int
    live_ids: tuple[str, ...]
    groups: tuple[str, ...]
    #: How the devices were made (timings of the lab, not of the console).
    setup: dict[str, Any]


def _device_rows(n: int, live: int, rng: random.Random) -> list[dict[str, Any]]:
    """N devices spread over the groups, with the variety a real fleet has: a few
    without the service, some with it disabled, last seen from now to a month ago.
    The K live ones have the service on (their reports switch it off and on)."""
    live_rows = set(rng.sample(range(n), live))
    now = int(time.time() * 1000)
    rows = []
    for i in range(n):
        group, kind, models = GROUPS[i % len(GROUPS)]
        is_live = i in live_rows
        roll = rng.random()
        rows.append(
            {
                "group": group,
                "name": f"{kind} {i:04d} {SITES[(i // len(GROUPS)) % len(SITES)]}",
                "model": models[i % len(models)],
                "os": SYSTEMS[i % len(SYSTEMS)],
                "live": is_live,
                "service_installed": is_live or roll > 0.03,
                "service_enabled": is_live or roll > 0.10,
                "last_seen_ms": None if roll < 0.02 else now - rng.randrange(30 * 86_400_000),
            }
        )
    return rows


class LabDevice:
    """One device's websocket, as the agent holds it: TLS pinned, the server's
    challenge signed with the device key; then status reports on request."""

    def __init__(self, device_id: str, key: Any, row: dict[str, Any]) -> None:
        self.device_id = device_id
        self.key = key
        self.row = row
        self.ws: Any = None
        self._rids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, http: Any, url: str, fingerprint: str) -> None:
        from peer.signaling import pinned, ws_url
        from protocol import identity
        from protocol.codec import Sender
        from protocol.messages import SIGNALING, AuthChallenge, AuthDevice, AuthOk

        self.ws = await http.ws_connect(ws_url(url), ssl=pinned(fingerprint))
        challenge = SIGNALING.decode((await self.ws.receive()).data, Sender.SERVER)
        assert isinstance(challenge, AuthChallenge)
        signature = identity.sign_challenge(
            self.key,
            nonce_b64=challenge.nonce,
            device_id=self.device_id,
            server_fingerprint=fingerprint,
        )
        await self.ws.send_str(
            SIGNALING.encode(AuthDevice(device_id=self.device_id, signature=signature))
        )
        while True:
            message = SIGNALING.decode((await self.ws.receive()).data, Sender.SERVER)
            if isinstance(message, AuthOk):
                break
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from protocol.codec import Sender
        from protocol.messages import SIGNALING

        async for frame in self.ws:
            if not isinstance(frame.data, str):
                break
            message = SIGNALING.decode(frame.data, Sender.SERVER)
            future = self._pending.pop(message.rid, None) if message.rid else None
            if future is not None and not future.done():
                future.set_result(message)

    async def report(self, *, enabled: bool) -> None:
        from protocol.messages import SIGNALING, Ok, StatusReport

        rid = next(self._rids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        await self.ws.send_str(
            SIGNALING.encode(
                StatusReport(
                    service_installed=True,
                    service_enabled=enabled,
                    name=self.row["name"],
                    model=self.row["model"],
                    os=self.row["os"],
                    rid=rid,
                )
            )
        )
        reply = await asyncio.wait_for(future, TIMEOUT_S)
        assert isinstance(reply, Ok), reply

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def _seed(
    store: Any, n: int, live: int, password: str
) -> tuple[list[str], list[LabDevice], dict[str, Any]]:
    """Groups, the technician and N devices; returns the group ids, the live devices
    (not connected yet) and how long it took."""
    from protocol import identity
    from protocol.enums import Role
    from signaling_server.store import DeviceRow, new_id

    rng = random.Random(5000)
    groups = {name: await store.create_group(name) for name, _kind, _models in GROUPS}
    rows = _device_rows(n, live, rng)
    started = time.perf_counter()
    keys = [identity.generate_key() for _ in rows]
    keygen_ms = (time.perf_counter() - started) * 1000

    # The product's way first, one token per device, to know what it costs.
    sample = [i for i, row in enumerate(rows[: min(ENROL_SAMPLE, n)]) if not row["live"]]
    ids: dict[int, str] = {}
    started = time.perf_counter()
    for i in sample:
        token = await store.issue_enrolment_token(
            groups[rows[i]["group"]].id, created_by="bench", ttl_s=600
        )
        device = await store.enrol_device(
            token,
            public_key=identity.public_key_b64(keys[i]),
            name=rows[i]["name"],
            model=rows[i]["model"],
            os=rows[i]["os"],
        )
        ids[i] = device.id
    enrol_ms = (time.perf_counter() - started) * 1000

    # The rest in one transaction of the store's own.
    started = time.perf_counter()
    now = int(time.time() * 1000)
    async with store.tx() as db:
        for i, row in enumerate(rows):
            if i in ids:
                continue
            ids[i] = new_id("dev")
            db.add(
                DeviceRow(
                    id=ids[i],
                    name=row["name"],
                    group_id=groups[row["group"]].id,
                    public_key=identity.public_key_b64(keys[i]),
                    model=row["model"],
                    os=row["os"],
                    enrolled_at_ms=now,
                    last_seen_ms=row["last_seen_ms"],
                    service_installed=row["service_installed"],
                    service_enabled=row["service_enabled"],
                )
            )
    bulk_ms = (time.perf_counter() - started) * 1000
    await store.create_technician(
        USERNAME,
        password,
        display_name="Bench Technician",
        role=Role.TECHNICIAN,
        organisation="Bench IT",
        groups=[g.id for g in groups.values()],
    )
    live_devices = [LabDevice(ids[i], keys[i], row) for i, row in enumerate(rows) if row["live"]]
    per_enrol = enrol_ms / len(sample) if sample else None
    setup = {
        "keygen_ms": round(keygen_ms, 1),
        "enrolled_via_tokens": len(sample),
        "enrol_ms_per_device": round(per_enrol, 2) if per_enrol is not None else None,
        "enrol_all_estimate_s": round(per_enrol * n / 1000, 1) if per_enrol is not None else None,
        "bulk_inserted": n - len(sample),
        "bulk_insert_ms": round(bulk_ms, 1),
    }
    return [g.id for g in groups.values()], live_devices, setup


async def _lab(folder: Path, n: int, live: int) -> None:
    """The lab process: serve, report ready on stdout, then obey stdin's commands."""
    import aiohttp

    from signaling_server.app import STORE
    from signaling_server.config import ServerConfig
    from signaling_server.server import RunningServer

    config = ServerConfig(host="127.0.0.1", port=0, data_dir=folder / "server", advertise=False)
    server = await RunningServer(config).start()
    assert server.app is not None
    password = secrets.token_urlsafe(16)  # a fresh one per run, handed over on stdout
    group_ids, devices, setup = await _seed(server.app[STORE], n, live, password)
    # One session for every device; each websocket holds a connection of its own for
    # as long as it is open, so the connector's default cap (100) must go.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    started = time.perf_counter()
    gate = asyncio.Semaphore(32)

    async def connect(device: LabDevice) -> None:
        async with gate:
            await device.connect(http, server.url, server.fingerprint)

    await asyncio.gather(*(connect(d) for d in devices))
    setup["connect_live_ms"] = round((time.perf_counter() - started) * 1000, 1)
    ready = LabInfo(
        url=server.url,
        fingerprint=server.fingerprint,
        username=USERNAME,
        password=password,
        devices=n,
        live_ids=tuple(d.device_id for d in devices),
        groups=tuple(group_ids),
        setup=setup,
    )
    print(json.dumps({"ready": dataclasses.asdict(ready)}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if command["cmd"] == "report":
                started = time.perf_counter()
                await asyncio.gather(*(d.report(enabled=command["enabled"]) for d in devices))
                elapsed = (time.perf_counter() - started) * 1000
                print(json.dumps({"done": round(elapsed, 1)}), flush=True)
            elif command["cmd"] == "stop":
                break
    finally:
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
        await http.close()
        await server.stop()


class Lab:
    """The lab process, seen from the console's side."""

    def __init__(self, process: subprocess.Popen[str], info: LabInfo) -> None:
        self.process = process
        self.info = info

    @classmethod
    def start(cls, folder: Path, devices: int, live: int) -> Lab:
        root = Path(__file__).resolve().parents[1]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        )
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.inventory",
                "--lab",
                str(folder),
                "--devices",
                str(devices),
                "--live",
                str(live),
            ],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait(10)
            raise RuntimeError(f"the lab process exited ({process.returncode}) before it was ready")
        data = json.loads(line)["ready"]
        data["live_ids"] = tuple(data["live_ids"])
        data["groups"] = tuple(data["groups"])
        return cls(process, LabInfo(**data))

    def _send(self, command: dict[str, Any]) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()

    async def report(self, *, enabled: bool) -> float:
        """Every live device reports its service on or off; the lab's own time."""
        self._send({"cmd": "report", "enabled": enabled})
        stdout = self.process.stdout
        assert stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, stdout.readline)
        return float(json.loads(line)["done"])

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._send({"cmd": "stop"})
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


# == measuring on the GUI loop =========================================================


@dataclasses.dataclass(frozen=True)
class Gap:
    """A gap between two ticks: how long, how much of it the GUI thread was on the
    CPU, and the step that was running."""

    ms: float
    cpu_ms: float
    label: str


class Ticker:
    """A QTimer every 5 ms; the longest gap between two ticks since :meth:`reset` is
    the loop's longest stall. Gaps of 30 ms or more are all kept."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.label = ""
        self.noted: list[Gap] = []
        self.last = time.perf_counter()
        self.last_cpu = time.thread_time()
        self.longest = Gap(0.0, 0.0, "")

    def start(self) -> None:
        self.reset()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def reset(self, label: str | None = None) -> None:
        if label is not None:
            self.label = label
        self.last = time.perf_counter()
        self.last_cpu = time.thread_time()
        self.longest = Gap(0.0, 0.0, self.label)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        gap_ms = (now - self.last) * 1000
        if gap_ms > self.longest.ms or gap_ms >= NOTE_GAP_MS:
            gap = Gap(round(gap_ms, 1), round((cpu - self.last_cpu) * 1000, 1), self.label)
            if gap_ms > self.longest.ms:
                self.longest = gap
            if gap_ms >= NOTE_GAP_MS:
                self.noted.append(gap)
        self.last, self.last_cpu = now, cpu


async def _until(predicate: Callable[[], bool], what: str, poll_s: float = 0.005) -> float:
    """Wait (awaiting: never processing Qt events here) until ``predicate`` holds;
    returns when it did."""
    deadline = time.perf_counter() + TIMEOUT_S
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(poll_s)
    return time.perf_counter()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _rss_mib() -> float:
    return round(float(psutil.Process().memory_info().rss) / MIB, 1)


@dataclasses.dataclass
class Load:
    """One login until every row is in (the table, or the client with no window)."""

    login_to_rows_ms: float
    rows_expected: int
    rows_model: int
    rows_shown: int
    stall: Gap
    rss_mib: float


@dataclasses.dataclass
class Step:
    """One filter or sort step of the window, beside its floor."""

    kind: str  # "filter" or "sort"
    label: str
    #: Handling (key press to the proxy updated), then the table repainted.
    handle_ms: float
    repaint_ms: float
    #: The longest gap of the loop over the step and its pause.
    stall: Gap
    rows: int
    #: The same filter in a plain loop, or a plain sort; no Qt.
    floor_ms: float
    floor_rows: int
    #: The table shows the devices the plain computation keeps, in its order.
    shows_right_rows: bool

    @property
    def total_ms(self) -> float:
        return round(self.handle_ms + self.repaint_ms, 2)


@dataclasses.dataclass
class Burst:
    """K device changes arriving at the console, and how it coped."""

    source: str  # "server" or "direct"
    sort: str
    changes: int
    #: From the request (or the feed) until every change shows.
    applied_ms: float
    stall: Gap
    #: The lab's own time for the server to take every report (server bursts).
    server_ms: float | None = None


@dataclasses.dataclass
class InventoryBench:
    machine: dict[str, Any]
    date: str
    devices: int
    live: int
    lab: dict[str, Any] = dataclasses.field(default_factory=dict)
    idle_stall: Gap | None = None
    loads: list[Load] = dataclasses.field(default_factory=list)
    load_floors: list[Load] = dataclasses.field(default_factory=list)
    paint_window_ms: float | None = None
    paint_table_ms: float | None = None
    paint_table_floor_ms: float | None = None
    visible_rows: int | None = None
    steps: list[Step] = dataclasses.field(default_factory=list)
    bursts: list[Burst] = dataclasses.field(default_factory=list)
    burst_floors: list[Burst] = dataclasses.field(default_factory=list)
    #: Every gap of 30 ms or more while the window was open.
    long_gaps: list[Gap] = dataclasses.field(default_factory=list)
    profile: list[str] = dataclasses.field(default_factory=list)


def _sort_value(column: Column) -> Callable[[DeviceInfo], Any]:
    """A column's value as the table orders by it, in plain Python (the floor)."""
    if column is Column.NAME:
        return lambda d: d.name.casefold()
    if column is Column.STATUS:
        return lambda d: STATUS_ORDER[d.status]
    if column is Column.ONLINE:
        return lambda d: 0 if d.online else 1
    if column is Column.GROUP:
        return lambda d: d.group_name.casefold()
    if column is Column.MODEL:
        return lambda d: d.model.casefold()
    if column is Column.OS:
        return lambda d: d.os.casefold()
    return lambda d: -(1 << 62) if d.online else -(d.last_seen_ms or 0)


class ConsoleBench:
    def __init__(self, lab: Lab, bench: InventoryBench, loads: int) -> None:
        self.lab = lab
        self.info = lab.info
        self.bench = bench
        self.loads = loads
        self.ticker = Ticker()

    def client(self) -> ConsoleClient:
        return ConsoleClient(self.info.url, self.info.fingerprint)

    async def settle(self) -> None:
        await asyncio.sleep(SETTLE_S)

    # -- without a window: the floors ---------------------------------------------------

    async def login_alone(self) -> tuple[ConsoleClient, Load]:
        client = self.client()
        self.ticker.reset("floor: login and snapshot, no window")
        started = time.perf_counter()
        await client.login(self.info.username, self.info.password)
        done = await _until(lambda: len(client.devices) >= self.info.devices, "the snapshot")
        await self.settle()
        load = Load(
            login_to_rows_ms=_ms(done - started),
            rows_expected=self.info.devices,
            rows_model=len(client.devices),
            rows_shown=len(client.devices),
            stall=self.ticker.longest,
            rss_mib=_rss_mib(),
        )
        return client, load

    async def floors(self) -> None:
        # A first login pays one-time costs (TLS contexts, first imports): not counted.
        warm, _ = await self.login_alone()
        await warm.logout()
        client: ConsoleClient | None = None
        for _ in range(self.loads):
            if client is not None:
                await client.logout()
            client, load = await self.login_alone()
            self.bench.load_floors.append(load)
        assert client is not None
        try:
            self.bench.burst_floors.append(
                await self.server_burst(client, None, enabled=False, sort="no window")
            )
            self.bench.burst_floors.append(await self.direct_burst(client, None, "no window"))
        finally:
            await client.logout()

    # -- bursts of changes --------------------------------------------------------------

    @staticmethod
    def _shows(
        client: ConsoleClient, window: ConsoleWindow | None
    ) -> Callable[[str], DeviceInfo | None]:
        return client.devices.get if window is None else window.inventory.model.device

    async def server_burst(
        self, client: ConsoleClient, window: ConsoleWindow | None, *, enabled: bool, sort: str
    ) -> Burst:
        """Every live device reports Live Support off (or on again) to the server."""
        want = LiveSupportStatus.DISCONNECTED if enabled else LiveSupportStatus.DISABLED
        shows = self._shows(client, window)
        waiting = set(self.info.live_ids)

        def applied() -> bool:
            # Up to the first one not shown yet: each poll costs what arrived since.
            for device_id in list(waiting):
                device = shows(device_id)
                if device is None or device.status is not want:
                    return False
                waiting.discard(device_id)
            return True

        label = f"live: {len(waiting)} status reports through the server, {sort}"
        self.ticker.reset(label)
        started = time.perf_counter()
        server = asyncio.ensure_future(self.lab.report(enabled=enabled))
        done = await _until(applied, label, poll_s=0.01)
        server_ms = await server
        await self.settle()
        return Burst(
            "server",
            sort,
            len(self.info.live_ids),
            _ms(done - started),
            self.ticker.longest,
            server_ms,
        )

    async def direct_burst(
        self, client: ConsoleClient, window: ConsoleWindow | None, sort: str
    ) -> Burst:
        """K changes (status and online) fed into the client in one loop turn, as its
        message handler does for each ``device.update``."""
        devices = sorted(client.devices.values(), key=lambda d: d.device_id)
        count = min(len(self.info.live_ids), len(devices))
        stride = max(1, len(devices) // max(1, count))
        changed = [
            dataclasses.replace(
                d,
                status=LiveSupportStatus.CONNECTED
                if d.status is not LiveSupportStatus.CONNECTED
                else LiveSupportStatus.DISCONNECTED,
                online=not d.online,
            )
            for d in devices[::stride][:count]
        ]
        shows = self._shows(client, window)
        label = f"live: {len(changed)} changes fed into the client at once, {sort}"
        self.ticker.reset(label)
        started = time.perf_counter()
        for device in changed:
            client.devices[device.device_id] = device
            client.device_listeners.fire(device)
        done = await _until(
            lambda: all(shows(d.device_id) == d for d in changed), label, poll_s=0.002
        )
        await self.settle()
        return Burst("direct", sort, len(changed), _ms(done - started), self.ticker.longest)

    # -- the window ---------------------------------------------------------------------

    async def open_window(self) -> tuple[ConsoleClient, ConsoleWindow, Load]:
        client = self.client()
        n = self.info.devices
        self.ticker.reset(f"load: login until the table holds {n} rows")
        started = time.perf_counter()
        await client.login(self.info.username, self.info.password)
        window = ConsoleWindow(client)
        window.resize(1280, 800)
        window.show()
        proxy = window.inventory.proxy
        done = await _until(lambda: proxy.rowCount() >= n, "every row in the table", 0.002)
        await self.settle()
        load = Load(
            login_to_rows_ms=_ms(done - started),
            rows_expected=n,
            rows_model=window.inventory.model.rowCount(),
            rows_shown=proxy.rowCount(),
            stall=self.ticker.longest,
            rss_mib=_rss_mib(),
        )
        return client, window, load

    async def close_window(self, client: ConsoleClient, window: ConsoleWindow) -> None:
        self.ticker.label = "bench: closing the window"
        window.close()
        window.deleteLater()
        await client.logout()
        await self.settle()

    async def paints(self, window: ConsoleWindow) -> None:
        # Forced by the bench, not the product's own work: these gaps are not stalls.
        self.ticker.label = "bench: forced grabs (window, then table and floor x3)"
        started = time.perf_counter()
        window.grab()
        self.bench.paint_window_ms = _ms(time.perf_counter() - started)
        self.bench.paint_table_ms, self.bench.paint_table_floor_ms = self._table_paints(window)
        await self.settle()

    def _table_paints(self, window: ConsoleWindow) -> tuple[float, float]:
        """table.grab() of the inventory, and of a plain QTableView over a
        QStandardItemModel holding only the visible rows' texts (medians of 3)."""
        table = window.inventory.table
        proxy = window.inventory.proxy
        visible = min(proxy.rowCount(), table.viewport().height() // table.rowHeight(0) + 1)
        self.bench.visible_rows = visible
        plain = QStandardItemModel(visible, len(Column))
        plain.setHorizontalHeaderLabels([HEADERS[c] for c in Column])
        for row in range(visible):
            for column in Column:
                plain.setItem(row, column, QStandardItem(str(proxy.index(row, column).data())))
        view = QTableView()
        view.setModel(plain)
        view.resize(table.size())
        view.verticalHeader().hide()
        view.verticalHeader().setDefaultSectionSize(table.rowHeight(0))
        view.horizontalHeader().setStretchLastSection(True)
        for column in Column:
            view.setColumnWidth(column, table.columnWidth(column))
        view.grab()  # polished once, as the real table was by its first paint

        def timed(grab: Callable[[], object]) -> float:
            times = []
            for _ in range(3):
                started = time.perf_counter()
                grab()
                times.append(time.perf_counter() - started)
            return _ms(statistics.median(times))

        ours, floor = timed(table.grab), timed(view.grab)
        view.deleteLater()
        return ours, floor

    async def step(
        self,
        client: ConsoleClient,
        window: ConsoleWindow,
        kind: str,
        label: str,
        action: Callable[[], None],
    ) -> Step:
        inventory = window.inventory
        self.ticker.reset(f"{kind}: {label}")
        started = time.perf_counter()
        action()
        handled = time.perf_counter()
        inventory.table.viewport().repaint()
        painted = time.perf_counter()
        await asyncio.sleep(STEP_PAUSE_S)
        stall = self.ticker.longest
        # The floor, and the check: what the table shows is what plain Python keeps.
        self.ticker.label = "bench: floor and check after a step"
        devices = list(client.devices.values())
        wanted = inventory.proxy.inventory_filter
        column = Column(inventory.proxy.sortColumn())
        key = _sort_value(column)
        started_floor = time.perf_counter()
        if kind == "filter":
            kept = [d for d in devices if wanted.matches(d)]
        else:
            kept = sorted(devices, key=key)
        floor_ms = _ms(time.perf_counter() - started_floor)
        proxy = inventory.proxy
        shown = [proxy.device_at(row) for row in range(proxy.rowCount())]
        expected = sorted((d for d in devices if wanted.matches(d)), key=key)
        descending = proxy.sortOrder() == Qt.SortOrder.DescendingOrder
        right = {d.device_id for d in shown} == {d.device_id for d in expected} and [
            key(d) for d in shown
        ] == sorted((key(d) for d in expected), reverse=descending)
        await self.settle()
        return Step(
            kind,
            label,
            _ms(handled - started),
            _ms(painted - handled),
            stall,
            len(shown),
            floor_ms,
            len(kept),
            right,
        )

    async def filters(self, client: ConsoleClient, window: ConsoleWindow) -> None:
        inventory = window.inventory
        typed = ""
        for char in SEARCH_TEXT:
            typed += char
            self.bench.steps.append(
                await self.step(
                    client,
                    window,
                    "filter",
                    f"type {typed!r}",
                    lambda c=char: QTest.keyClicks(inventory.search, c),  # type: ignore[misc]
                )
            )
        while typed:
            typed = typed[:-1]
            self.bench.steps.append(
                await self.step(
                    client,
                    window,
                    "filter",
                    f"backspace to {typed!r}",
                    lambda: QTest.keyClick(inventory.search, Qt.Key.Key_Backspace),
                )
            )
        combos = (
            ("status", inventory.status_filter),
            ("online", inventory.online_filter),
            ("group", inventory.group_filter),
        )
        for name, combo in combos:
            for index in [*range(1, combo.count()), 0]:
                self.bench.steps.append(
                    await self.step(
                        client,
                        window,
                        "filter",
                        f"{name}: {combo.itemText(index)}",
                        lambda c=combo, i=index: c.setCurrentIndex(i),  # type: ignore[misc]
                    )
                )

    async def sorts(self, client: ConsoleClient, window: ConsoleWindow) -> None:
        table = window.inventory.table
        for column in [*[c for c in Column if c is not Column.NAME], Column.NAME]:
            self.bench.steps.append(
                await self.step(
                    client,
                    window,
                    "sort",
                    f"by {HEADERS[column]}",
                    lambda c=column: table.sortByColumn(c, Qt.SortOrder.AscendingOrder),  # type: ignore[misc]
                )
            )

    async def sort_by(self, window: ConsoleWindow, column: Column) -> None:
        """Between bursts: sorted as the next one wants (a sort step's cost)."""
        self.ticker.label = f"bench: sort by {HEADERS[column]} before the next burst"
        window.inventory.table.sortByColumn(column, Qt.SortOrder.AscendingOrder)
        await self.settle()

    async def with_window(self) -> None:
        client: ConsoleClient | None = None
        window: ConsoleWindow | None = None
        for _ in range(self.loads):
            if client is not None and window is not None:
                await self.close_window(client, window)
            client, window, load = await self.open_window()
            self.bench.loads.append(load)
        assert client is not None
        assert window is not None
        try:
            await self.paints(window)
            await self.filters(client, window)
            await self.sorts(client, window)
            self.bench.bursts.append(
                await self.server_burst(client, window, enabled=True, sort="sorted by name")
            )
            await self.sort_by(window, Column.STATUS)
            self.bench.bursts.append(
                await self.server_burst(client, window, enabled=False, sort="sorted by status")
            )
            await self.sort_by(window, Column.NAME)
            self.bench.bursts.append(await self.direct_burst(client, window, "sorted by name"))
            await self.sort_by(window, Column.STATUS)
            self.bench.bursts.append(await self.direct_burst(client, window, "sorted by status"))
        finally:
            await self.close_window(client, window)

    async def run(self, profile: Path | None) -> None:
        self.ticker.start()
        try:
            self.ticker.reset("idle")
            await asyncio.sleep(0.5)
            self.bench.idle_stall = self.ticker.longest
            await self.floors()
            self.ticker.noted.clear()
            profiler = cProfile.Profile() if profile is not None else None
            if profiler is not None:
                profiler.enable()
            try:
                await self.with_window()
            finally:
                if profiler is not None and profile is not None:
                    profiler.disable()
                    self.bench.profile = _profile_lines(profiler, profile)
            self.bench.long_gaps = sorted(self.ticker.noted, key=lambda g: -g.ms)
        finally:
            self.ticker.stop()


def _profile_lines(profiler: cProfile.Profile, path: Path) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path))
    lines: list[str] = []
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(25)
        lines += out.getvalue().splitlines()
    return lines


# == the table and the JSON ============================================================


@dataclasses.dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    floor: str
    target: str
    #: "PASS", "FAIL", "n/a" (no figure) or "" (information only).
    result: str


def _fmt(value: float | None, unit: str = " ms", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _gap(gap: Gap | None) -> str:
    """A stall with the GUI thread's CPU time in it."""
    return "n/a" if gap is None else f"{gap.ms:.1f} ms (cpu {gap.cpu_ms:.0f})"


def _worst(gaps: Sequence[Gap]) -> Gap | None:
    return max(gaps, key=lambda g: g.ms) if gaps else None


def _judge(stall: Gap | None) -> str:
    if stall is None:
        return "n/a"
    return "PASS" if stall.ms < STALL_TARGET_MS else "FAIL"


def _stall_row(figure: str, stall: Gap | None, floor: Gap | float | None) -> Row:
    shown_floor = _gap(floor) if isinstance(floor, Gap) or floor is None else _fmt(floor)
    return Row(figure, _gap(stall), shown_floor, f"< {STALL_TARGET_MS:.0f} ms", _judge(stall))


def _steps_of(bench: InventoryBench, kind: str, prefix: str = "") -> list[Step]:
    return [s for s in bench.steps if s.kind == kind and s.label.startswith(prefix)]


def _median_max(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.1f} / {max(values):.1f} ms"


def summary_rows(bench: InventoryBench) -> list[Row]:
    n = bench.devices
    loads, floors = bench.loads, bench.load_floors
    rows: list[Row] = [
        Row("idle loop: longest gap between 5 ms ticks", _gap(bench.idle_stall), "", "", ""),
    ]
    shown = [load.rows_shown for load in loads]
    rows.append(
        Row(
            f"load: rows in the table (of {n}), each of {len(loads)} loads",
            ", ".join(map(str, shown)) or "n/a",
            ", ".join(str(f.rows_model) for f in floors) + " in the client",
            "all",
            "n/a" if not loads else ("PASS" if all(s == n for s in shown) else "FAIL"),
        )
    )
    rows.append(
        Row(
            "load: login -> table holds every row, p50 / max",
            _median_max([load.login_to_rows_ms for load in loads]),
            _median_max([f.login_to_rows_ms for f in floors]) + " (client alone)",
            "",
            "",
        )
    )
    rows.append(
        _stall_row(
            "load: longest stall, worst of the loads",
            _worst([load.stall for load in loads]),
            _worst([f.stall for f in floors]),
        )
    )
    rows.append(Row("paint: window.grab() after load", _fmt(bench.paint_window_ms), "", "", ""))
    rows.append(
        Row(
            f"paint: table.grab(), {bench.visible_rows or 0} visible rows",
            _fmt(bench.paint_table_ms),
            _fmt(bench.paint_table_floor_ms) + " (QStandardItemModel)",
            "",
            "",
        )
    )
    rows.append(
        Row(
            "memory: RSS after load (last load)",
            _fmt(loads[-1].rss_mib if loads else None, " MiB"),
            _fmt(floors[-1].rss_mib if floors else None, " MiB") + " (client alone)",
            "",
            "",
        )
    )
    groups = (
        ("filter: typing the search text", "filter", "type "),
        ("filter: deleting it (backspace)", "filter", "backspace"),
        ("filter: status combo", "filter", "status:"),
        ("filter: online combo", "filter", "online:"),
        ("filter: group combo", "filter", "group:"),
        ("sort: by each column", "sort", ""),
    )
    for title, kind, prefix in groups:
        steps = _steps_of(bench, kind, prefix)
        rows.append(
            Row(
                f"{title} ({len(steps)} steps): step p50 / max",
                _median_max([s.total_ms for s in steps]),
                _median_max([s.floor_ms for s in steps]),
                "",
                "",
            )
        )
        floor_worst = max((s.floor_ms for s in steps), default=None)
        rows.append(
            _stall_row(f"{title}: longest stall", _worst([s.stall for s in steps]), floor_worst)
        )
    if bench.steps:
        wrong = [s.label for s in bench.steps if not s.shows_right_rows]
        rows.append(
            Row(
                "filter and sort: the table shows what plain Python keeps",
                f"{len(bench.steps) - len(wrong)}/{len(bench.steps)} steps",
                "",
                "all",
                "FAIL" if wrong else "PASS",
            )
        )
    floors_by_source = {b.source: b for b in bench.burst_floors}
    for burst in bench.bursts:
        source = "via the server" if burst.source == "server" else "fed directly"
        base = floors_by_source.get(burst.source)
        title = f"live: {burst.changes} changes {source}, {burst.sort}"
        paced = f" (server {burst.server_ms:.0f} ms)" if burst.server_ms is not None else ""
        rows.append(
            Row(
                f"{title}: all shown after",
                _fmt(burst.applied_ms) + paced,
                _fmt(base.applied_ms if base else None) + " (client alone)",
                "",
                "",
            )
        )
        rows.append(
            _stall_row(f"{title}: longest stall", burst.stall, base.stall if base else None)
        )
    return rows


def format_table(rows: Sequence[Row]) -> str:
    header = Row("figure", "measured", "floor", "target", "result")
    cells = [dataclasses.astuple(row) for row in (header, *rows)]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(dataclasses.fields(Row)))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict_lines(bench: InventoryBench, rows: Sequence[Row]) -> list[str]:
    failed = [row for row in rows if row.result == "FAIL"]
    missing = [row for row in rows if row.result == "n/a"]
    cpus = bench.machine.get("cpus")
    lines: list[str] = []
    if failed:
        lines.append(f"TARGET MISSED: {len(failed)} figure(s) miss their target:")
        lines += [f"  - {row.figure}: {row.measured} (target {row.target})" for row in failed]
    elif missing:
        lines.append(f"{len(missing)} figure(s) could not be measured.")
    else:
        lines.append(
            f"Every stall under {STALL_TARGET_MS:.0f} ms: {bench.devices} devices load and "
            "filter without freezing the window."
        )
    if bench.long_gaps:
        lines.append(
            f"Longest gaps of the loop with the window open (>= {NOTE_GAP_MS:.0f} ms; cpu: "
            f"the GUI thread's CPU time in the gap, the rest it waited for one of the "
            f"{cpus} CPUs the lab also uses):"
        )
        lines += [
            f"  {g.ms:7.1f} ms  cpu {g.cpu_ms:6.1f} ms  {g.label}" for g in bench.long_gaps[:10]
        ]
    return lines


#: Every figure of the JSON's "figures" (the smoke test checks them all).
FIGURES: Final = (
    "idle_stall_ms",
    "load_ms",
    "load_stall_ms",
    "load_rows",
    "load_rss_mib",
    "paint_window_ms",
    "paint_table_ms",
    "filter_step_max_ms",
    "filter_stall_ms",
    "sort_step_max_ms",
    "sort_stall_ms",
    "steps_right",
    "live_server_stall_ms",
    "live_direct_stall_ms",
)


def figures(bench: InventoryBench) -> dict[str, dict[str, Any]]:
    """The headline figures: measured, floor, target (None: information only) and
    result."""
    loads, floors = bench.loads, bench.load_floors
    filters, sorts = _steps_of(bench, "filter"), _steps_of(bench, "sort")

    def most(values: Sequence[float]) -> float | None:
        return max(values) if values else None

    def stall(gaps: Sequence[Gap]) -> float | None:
        worst = _worst(gaps)
        return worst.ms if worst else None

    def burst(source: str, bursts: list[Burst]) -> float | None:
        return stall([b.stall for b in bursts if b.source == source])

    def figure(measured: Any, floor: Any, target: Any = None) -> dict[str, Any]:
        return {"measured": measured, "floor": floor, "target": target}

    out = {
        "idle_stall_ms": figure(bench.idle_stall.ms if bench.idle_stall else None, None),
        "load_ms": figure(
            most([x.login_to_rows_ms for x in loads]), most([x.login_to_rows_ms for x in floors])
        ),
        "load_stall_ms": figure(
            stall([x.stall for x in loads]), stall([x.stall for x in floors]), STALL_TARGET_MS
        ),
        "load_rows": figure(
            min((x.rows_shown for x in loads), default=None),
            min((x.rows_model for x in floors), default=None),
            bench.devices,
        ),
        "load_rss_mib": figure(
            loads[-1].rss_mib if loads else None, floors[-1].rss_mib if floors else None
        ),
        "paint_window_ms": figure(bench.paint_window_ms, None),
        "paint_table_ms": figure(bench.paint_table_ms, bench.paint_table_floor_ms),
        "filter_step_max_ms": figure(
            most([s.total_ms for s in filters]), most([s.floor_ms for s in filters])
        ),
        "filter_stall_ms": figure(
            stall([s.stall for s in filters]), most([s.floor_ms for s in filters]), STALL_TARGET_MS
        ),
        "sort_step_max_ms": figure(
            most([s.total_ms for s in sorts]), most([s.floor_ms for s in sorts])
        ),
        "sort_stall_ms": figure(
            stall([s.stall for s in sorts]), most([s.floor_ms for s in sorts]), STALL_TARGET_MS
        ),
        "steps_right": figure(
            sum(s.shows_right_rows for s in bench.steps) if bench.steps else None,
            None,
            len(bench.steps),
        ),
        "live_server_stall_ms": figure(
            burst("server", bench.bursts), burst("server", bench.burst_floors), STALL_TARGET_MS
        ),
        "live_direct_stall_ms": figure(
            burst("direct", bench.bursts), burst("direct", bench.burst_floors), STALL_TARGET_MS
        ),
    }
    for name, data in out.items():
        measured, target = data["measured"], data["target"]
        if target is None:
            data["result"] = None
        elif measured is None:
            data["result"] = "n/a"
        elif name in ("load_rows", "steps_right"):
            data["result"] = "PASS" if measured == target else "FAIL"
        else:
            data["result"] = "PASS" if measured < target else "FAIL"
    return out


def to_json(bench: InventoryBench, rows: Sequence[Row]) -> dict[str, Any]:
    data = dataclasses.asdict(bench)
    for step, raw in zip(bench.steps, data["steps"], strict=True):
        raw["total_ms"] = step.total_ms
    data["figures"] = figures(bench)
    data["table"] = [dataclasses.asdict(row) for row in rows]
    data["stall_target_ms"] = STALL_TARGET_MS
    data["tick_ms"] = TICK_MS
    return data


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "pyside6": PySide6.__version__,
        "qt_platform": os.environ.get("QT_QPA_PLATFORM", ""),
        "platform": platform.platform(),
    }


# == running it ========================================================================


def _quiet_offscreen(mode: QtMsgType, context: QMessageLogContext, message: str) -> None:
    # The offscreen platform says this for every window shown; anything else shows.
    if "propagateSizeHints" not in message:
        print(message, file=sys.stderr)


def run(
    devices: int, live: int, *, loads: int = LOADS, profile: Path | None = None
) -> InventoryBench:
    """The whole benchmark: the lab process, then the console on a qasync loop."""
    from peer.ui.app import run_with_qt

    bench = InventoryBench(
        machine=machine(),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        devices=devices,
        live=live,
    )
    previous = qInstallMessageHandler(_quiet_offscreen)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp:
            lab = Lab.start(Path(tmp), devices, live)
            try:
                bench.lab = dict(lab.info.setup)
                run_with_qt(
                    ConsoleBench(lab, bench, loads).run(profile), app_name="Live Support console"
                )
            finally:
                lab.stop()
    finally:
        qInstallMessageHandler(previous)
    return bench


def report(bench: InventoryBench, out: Path) -> list[Row]:
    """Print the table and the verdict, write the JSON; the table's rows."""
    rows = summary_rows(bench)
    lab = bench.lab
    print(
        f"\nLive Support inventory benchmark, {bench.date}, {bench.machine['cpus']} CPUs, "
        f"Qt platform {bench.machine['qt_platform'] or 'default'}: {bench.devices} devices "
        f"in {len(GROUPS)} groups in the technician's scope, {bench.live} of them online."
    )
    print(
        f"Lab (its own process): {lab.get('enrolled_via_tokens')} devices enrolled with a "
        f"token each ({lab.get('enrol_ms_per_device')} ms per device: all {bench.devices} "
        f"would take ~{lab.get('enrol_all_estimate_s')} s), {lab.get('bulk_inserted')} "
        f"bulk-inserted in {lab.get('bulk_insert_ms')} ms; {bench.live} device websockets "
        f"connected in {lab.get('connect_live_ms')} ms.\n'Via the server': real status "
        "reports from those devices. 'Fed directly': DeviceInfo changes put into the "
        "client's device_listeners, bypassing the server. Stalls show the GUI thread's "
        "CPU time within them.\n"
    )
    print(format_table(rows))
    print()
    for line in verdict_lines(bench, rows):
        print(line)
    if bench.profile:
        print("\nProfile of the window part:")
        print("\n".join(bench.profile))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(bench, rows), indent=2) + "\n")
    print(f"\nwritten: {out}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.inventory",
        description="The console's inventory with thousands of devices: load, filter, "
        "sort and live updates, each with the GUI loop's longest stall, beside its floor.",
    )
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--live", type=int, default=LIVE, help="devices online, sending reports")
    parser.add_argument("--loads", type=int, default=LOADS, help="window loads measured")
    parser.add_argument("--out", type=Path, default=Path("build/bench/inventory.json"))
    parser.add_argument(
        "--profile",
        nargs="?",
        const=Path("build/bench/inventory.prof"),
        type=Path,
        help="run the window part under cProfile (its stats are written here)",
    )
    parser.add_argument("--lab", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    live = max(1, min(args.live, args.devices))
    if args.lab is not None:
        logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
        asyncio.run(_lab(args.lab, args.devices, live))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s bench %(name)s: %(message)s")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    bench = run(args.devices, live, loads=max(1, args.loads), profile=args.profile)
    report(bench, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
