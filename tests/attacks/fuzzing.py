"""Fuzzing the real signaling server over real websockets.

Hypothesis generates the frames (valid messages of every client type with one field
mutated, raw bytes and text, deep nesting, huge numbers, oversized frames); a
:class:`FuzzRun` sends each from a sender (an authenticated device, an authenticated
technician, an unauthenticated connection) and classifies the server's answer:

* a typed ``error`` frame (any code but ``internal``) is a rejection;
* a reply that is not an error means the mutated frame was still valid (accepted);
* a close with a documented close code (frame too big, authentication failed or
  timed out, rate limited) is a rejection too, and the sender connects again;
* an ``internal`` error, a frame the server sent that does not decode, an
  undocumented close, no answer at all, an unhealthy ``/api/v1/health`` or a
  bystander whose status no longer fans out to its console is a crash.

After every case a bystander device changes its name and a console watching it must
see the change, and ``/api/v1/health`` must answer: one connection's garbage never
disturbs the others. ``tests/attacks/test_fuzz_server.py`` runs this with small
example counts; ``bench/faults/attacks.py`` with larger ones for the reliability report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer.signaling import pinned
from protocol.codec import MAX_FRAME_BYTES, Message, Sender, to_wire_dict
from protocol.enums import Role
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.messages import (
    SIGNALING,
    DeviceUpdate,
    Error,
    SessionClose,
    SessionResume,
    StatusReport,
)
from signaling_server.server import RunningServer
from signaling_server.store import Group, Store
from tests.conftest import PASSWORD, lab_config
from tests.protocol.strategies import messages
from tests.signaling_server.wire import Closed, EnrolledDevice, Wire, enrol, login

#: Close codes the server documents (protocol.errors.CloseCode, docs/security.md).
DOCUMENTED_CLOSE_CODES = frozenset(
    {
        CloseCode.TOO_BIG,
        CloseCode.POLICY,
        CloseCode.AUTH_FAILED,
        CloseCode.AUTH_TIMEOUT,
        CloseCode.REVOKED,
        CloseCode.RATE_LIMITED,
    }
)

#: Every type a client may send (the server answers the others with unknown_type).
CLIENT_TYPES = [cls for cls in SIGNALING if cls.SENDERS & Sender.CLIENT]
SERVER_ONLY_TYPES = [cls.TYPE for cls in SIGNALING if not cls.SENDERS & Sender.CLIENT]

DEEP = 10_000


class Raw(str):
    """A frame already serialized (it may hold NaN, deep nesting or huge numbers)."""


# --- hostile values and mutations ---------------------------------------------------------

_NAN = object()
_INFINITY = object()


def _deep_list(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def _deep_object(depth: int) -> Raw:
    return Raw('{"a":' * depth + "1" + "}" * depth)


HOSTILE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    -(2**70),
    2**53,
    1.5,
    1e308,
    _NAN,
    _INFINITY,
    "",
    "x" * 5000,
    "<b>bold</b><img src=x onerror=alert(1)><a href='https://evil'>x</a>",
    "\u202egnp.exe",
    "\u2066isolated\u2069",
    "line\x00break",
    "\x1b[31mred",
    "\ufeff\u200b",
    [],
    {},
    ["text", 1, None],
    {"nested": {"object": [1, 2]}},
    _deep_list(200),
    _deep_list(DEEP),
    _deep_object(DEEP),
]


def _encode_value(value: Any) -> str:
    if value is _NAN:
        return "NaN"
    if value is _INFINITY:
        return "-Infinity"
    if isinstance(value, Raw):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _render(obj: dict[str, Any], replaced: dict[str, Any]) -> str:
    """A JSON object whose ``replaced`` values are written raw (NaN, nesting)."""
    parts = [f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False)}" for k, v in obj.items()]
    parts += [f"{json.dumps(k)}:{_encode_value(v)}" for k, v in replaced.items()]
    return "{" + ",".join(parts) + "}"


def _wire_dict(message: Message, rid: int) -> dict[str, Any]:
    return {**to_wire_dict(message), "rid": rid}


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A valid message of a client type with one thing wrong with it."""
    cls = draw(st.sampled_from(CLIENT_TYPES))
    message = draw(messages(cls))
    obj = _wire_dict(message, draw(st.integers(1, 2**31 - 1)))
    fields = sorted(k for k in obj if k != "type")
    kind = draw(
        st.sampled_from(
            [
                "set_field",
                "set_field",
                "set_field",
                "drop_field",
                "unknown_field",
                "unknown_type",
                "server_type",
                "missing_type",
                "missing_rid",
                "huge_rid",
                "nested_whole",
                "valid",
            ]
        )
    )
    if kind == "set_field" and fields:
        name = draw(st.sampled_from(fields))
        value = draw(st.sampled_from(HOSTILE_VALUES))
        del obj[name]
        return _render(obj, {name: value})
    if kind == "drop_field" and fields:
        del obj[draw(st.sampled_from(fields))]
        return json.dumps(obj, ensure_ascii=False)
    if kind == "unknown_field":
        return _render(obj, {"admin": draw(st.sampled_from(HOSTILE_VALUES))})
    if kind == "unknown_type":
        obj["type"] = draw(st.text(max_size=80))
        return json.dumps(obj, ensure_ascii=False)
    if kind == "server_type":
        obj["type"] = draw(st.sampled_from(SERVER_ONLY_TYPES))
        return json.dumps(obj, ensure_ascii=False)
    if kind == "missing_type":
        del obj["type"]
        return json.dumps(obj, ensure_ascii=False)
    if kind == "missing_rid":
        del obj["rid"]
        return json.dumps(obj, ensure_ascii=False)
    if kind == "huge_rid":
        rid = draw(st.sampled_from([2**31, 2**70, -1, 10**400]))
        del obj["rid"]
        return _render(obj, {"rid": rid})
    if kind == "nested_whole":
        depth = draw(st.sampled_from([50, DEEP]))
        return "[" * depth + json.dumps(obj) + "]" * depth
    return json.dumps(obj, ensure_ascii=False)


def raw_frames() -> st.SearchStrategy[str | bytes]:
    """Frames with no message in them: binary (often not UTF-8), any text, bad JSON."""
    binary = st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=64).map(lambda b: b"\xff\xfe\xc3\x28" + b),
        st.builds(lambda m: json.dumps(m).encode() + b"\x80", st.sampled_from(["x", {"a": 1}])),
    )
    text = st.one_of(
        st.text(max_size=300),
        st.sampled_from(
            [
                "",
                "null",
                "[]",
                '"type"',
                '{"type":"status.report"',
                '{"type":"status.report","rid":1,"rid":2}',
                '{"type":"\\ud800"}',
                "1" * 5000,
                _deep_list(DEEP),
                _deep_object(DEEP),
            ]
        ),
    )
    return st.one_of(binary, text)


def oversized_frames() -> st.SearchStrategy[str | bytes]:
    """Frames over the server's limit (aiohttp's max_msg_size): closed with 1009."""
    size = st.integers(MAX_FRAME_BYTES + 1, 4 * MAX_FRAME_BYTES)
    return st.one_of(
        size.map(lambda n: '{"type":"status.report","name":"' + "x" * n + '"}'),
        size.map(lambda n: b"\xff" * n),
    )


def collect(strategy: st.SearchStrategy[Any], count: int, *, seed: int | None = None) -> list[Any]:
    """``count`` examples drawn by Hypothesis (the engine, not ``.example()``); the same
    ones on every run when given a ``seed``."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(frame: Any) -> None:
        found.append(frame)

    (draw if seed is None else hypothesis.seed(seed)(draw))()
    return found[:count]


# --- the server under attack --------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """A server with one group, a technician and an admin (the fuzz lab)."""

    server: RunningServer
    store: Store
    tablets: Group

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fingerprint(self) -> str:
        return self.server.fingerprint


@asynccontextmanager
async def fuzz_target(tmp_path: Path) -> AsyncIterator[Target]:
    """A real server whose rate limit does not get in the way of a fuzzer's pace
    (the rate limit has tests of its own)."""
    config = lab_config(
        tmp_path, rate_per_s=100_000.0, rate_burst=100_000, max_rate_violations=1_000_000
    )
    server = await RunningServer(config).start()
    try:
        assert server.app is not None
        from signaling_server.app import STORE

        store = server.app[STORE]
        tablets = await store.create_group("Tablets")
        for username, role in (("tech", Role.TECHNICIAN), ("admin", Role.ADMIN)):
            await store.create_technician(
                username,
                PASSWORD,
                display_name=username.title(),
                role=role,
                organisation="Test IT",
                groups=[tablets.id],
            )
        yield Target(server, store, tablets)
    finally:
        await server.stop()


@dataclasses.dataclass
class Tally:
    """What happened to the cases of one target (one kind of sender and frame)."""

    target: str
    cases: int = 0
    typed_errors: int = 0
    documented_closes: int = 0
    accepted: int = 0
    crashes: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    codes: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def rejections(self) -> int:
        return self.typed_errors + self.documented_closes

    def crash(self, frame: str | bytes, why: str) -> None:
        self.crashes += 1
        self.failures.append(f"{why}: {frame[:200]!r}")


def _kind(value: Any) -> str:
    return value.value if isinstance(value, Enum) else str(value)


class FuzzRun:
    """The senders, the bystanders and the health probe of one fuzzing run."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.wires: list[Wire] = []
        self.http = aiohttp.ClientSession()
        self._probe_rids = itertools.count(2_000_000_000)
        self._names = itertools.count(1)
        self.fuzz_device: EnrolledDevice | None = None
        self.bystander_device: EnrolledDevice | None = None
        self.bystander: Wire | None = None
        self.watcher: Wire | None = None
        self.fanouts_seen = 0

    async def start(self) -> FuzzRun:
        self.fuzz_device = await enrol(self.target, name="Fuzzer")
        self.bystander_device = await enrol(self.target, name="Bystander")
        self.bystander = await self._device(self.bystander_device)
        self.watcher = await self._console()
        reply = await self.watcher.request(_subscribe())
        assert not isinstance(reply, Error), reply
        return self

    async def close(self) -> None:
        for wire in self.wires:
            # The server may have closed it already.
            with contextlib.suppress(Exception):
                await wire.close()
        await self.http.close()

    async def _open(self) -> Wire:
        wire = await Wire.open(self.target)
        self.wires.append(wire)
        return wire

    async def _device(self, device: EnrolledDevice) -> Wire:
        wire = await self._open()
        await wire.auth_device(device.device_id, device.key)
        await wire.report(name=device.device_id[:20])
        return wire

    async def _console(self) -> Wire:
        wire = await self._open()
        await wire.auth_technician(await login(self.target, "tech"))
        return wire

    async def sender(self, kind: str) -> Wire:
        if kind == "device":
            assert self.fuzz_device is not None
            return await self._device(self.fuzz_device)
        if kind == "technician":
            return await self._console()
        return await self._open()

    # -- one case ---------------------------------------------------------------------------

    def _probe(self, wire: Wire) -> tuple[Message, ErrorCode]:
        rid = next(self._probe_rids)
        if wire.role is None:
            return (
                StatusReport(service_installed=True, service_enabled=True, name="p", rid=rid),
                ErrorCode.UNAUTHENTICATED,
            )
        if wire.role is Role.DEVICE:
            return SessionResume(session_id="ses-fuzz-probe", rid=rid), ErrorCode.NOT_FOUND
        return SessionClose(session_id="ses-fuzz-probe", rid=rid), ErrorCode.NOT_FOUND

    async def case(self, tally: Tally, kind: str, wire: Wire, frame: str | bytes) -> Wire:
        """Send one frame and judge the answer; the wire to use next (a new one if the
        server closed this one)."""
        tally.cases += 1
        wire.frames.clear()
        # A frame sent as text must be text: bytes are the binary frames.
        probe, probe_code = self._probe(wire)
        try:
            await wire.send(frame)
            await wire.send(probe)
            await wire.expect(
                Error, 10.0, where=lambda e: e.rid == probe.rid and e.code is probe_code
            )
        except (Closed, ConnectionError, aiohttp.ClientError) as closed:
            code = closed.code if isinstance(closed, Closed) else await _close_code(wire)
            if code in DOCUMENTED_CLOSE_CODES:
                tally.documented_closes += 1
                tally.codes[f"close {code}"] = tally.codes.get(f"close {code}", 0) + 1
            else:
                tally.crash(frame, f"closed with undocumented code {code}")
            await self._check_bystanders(tally, frame)
            return await self.sender(kind)
        except (TimeoutError, AssertionError, ValueError, ProtocolError) as exc:
            tally.crash(frame, f"no answer or an undecodable one ({type(exc).__name__}: {exc})")
            await self._check_bystanders(tally, frame)
            return await self.sender(kind)
        answers = [m for m in wire.frames if not isinstance(m, DeviceUpdate)]
        errors = [m for m in answers if isinstance(m, Error)]
        if any(e.code is ErrorCode.INTERNAL for e in errors):
            tally.crash(frame, "internal error")
        elif errors:
            tally.typed_errors += 1
            error_code = _kind(errors[0].code)
            tally.codes[error_code] = tally.codes.get(error_code, 0) + 1
        elif answers:
            tally.accepted += 1
        else:
            tally.crash(frame, "no answer before the next request's")
        await self._check_bystanders(tally, frame)
        return wire

    async def _check_bystanders(self, tally: Tally, frame: str | bytes) -> None:
        assert self.bystander is not None
        assert self.watcher is not None
        try:
            async with self.http.get(
                self.target.url + "/api/v1/health", ssl=pinned(self.target.fingerprint)
            ) as response:
                health = await response.json()
            if response.status != 200 or health.get("status") != "ok":
                tally.crash(frame, f"health: {response.status} {health}")
            name = f"Bystander {next(self._names)}"
            await self.bystander.report(name=name)
            assert self.bystander_device is not None
            device_id = self.bystander_device.device_id
            await self.watcher.expect(
                DeviceUpdate,
                10.0,
                where=lambda u: u.device.device_id == device_id and u.device.name == name,
            )
            self.fanouts_seen += 1
            self.watcher.frames.clear()
            self.bystander.frames.clear()
        except (TimeoutError, AssertionError, aiohttp.ClientError) as exc:
            tally.crash(frame, f"bystander or health failed ({type(exc).__name__}: {exc})")

    async def run(self, target: str, kind: str, frames: list[str | bytes]) -> Tally:
        tally = Tally(target)
        wire = await self.sender(kind)
        for frame in frames:
            wire = await self.case(tally, kind, wire, frame)
        return tally


async def _close_code(wire: Wire) -> int | None:
    """The code the server closed ``wire`` with (the send that noticed the close
    raised before the close frame was read)."""
    try:
        return await wire.wait_closed()
    except (TimeoutError, AssertionError, ProtocolError):
        return None


def _subscribe() -> Message:
    from protocol.messages import DevicesSubscribe

    return DevicesSubscribe()


#: The fuzz targets: (name, sender kind, frames).
def targets(count: int, *, seed: int | None = None) -> list[tuple[str, str, list[Any]]]:
    plan: list[tuple[str, str, st.SearchStrategy[Any], int]] = [
        ("device: mutated messages", "device", mutated_frames(), count),
        ("device: raw frames", "device", raw_frames(), count // 2),
        ("technician: mutated messages", "technician", mutated_frames(), count),
        ("technician: raw frames", "technician", raw_frames(), count // 2),
        ("unauthenticated: mutated messages", "unauthenticated", mutated_frames(), count // 2),
        ("unauthenticated: raw frames", "unauthenticated", raw_frames(), count // 2),
        ("oversized frames", "device", oversized_frames(), max(2, count // 20)),
    ]
    return [
        (name, kind, collect(strategy, n, seed=None if seed is None else seed + index))
        for index, (name, kind, strategy, n) in enumerate(plan)
    ]


async def fuzz_server(
    tmp_path: Path,
    count: int,
    *,
    seed: int | None = None,
    progress: Callable[[Tally], None] | None = None,
) -> tuple[list[Tally], int]:
    """Run every target against a fresh server; the tallies and the fan-outs seen."""
    plan = targets(count, seed=seed)
    async with fuzz_target(tmp_path) as target:
        run = await FuzzRun(target).start()
        try:
            tallies = []
            for name, kind, frames in plan:
                tally = await run.run(name, kind, frames)
                tallies.append(tally)
                if progress is not None:
                    progress(tally)
            return tallies, run.fanouts_seen
        finally:
            await run.close()
