"""Call benchmarks: session setup, chat round trip, two-way video and memory, each
figure beside its floor, in one run.

Run (from the project root)::

    .venv/bin/python -m bench.calls            # full run, about 3 minutes on 2 cores
    .venv/bin/python -m bench.calls --quick    # 5 sessions, 3 s video windows: ~70 s
    .venv/bin/python -m bench.calls --out build/bench/calls-vm2.json

Everything runs on loopback, set up as the demo does (``tech_console.demo``): the
real signaling server (TLS) and the headless device agent (``--fake-media``, accepting
``video``, at once unless a setup configuration says otherwise) are separate
processes; the agent starts a session process per invite, as in production (or keeps
one ready, ``--prewarm``, in that setup configuration). The console
(``ConsoleClient``) runs in this process, so its CPU is this process's CPU. Every
process gets ``LIVESUPPORT_ICE_HOSTS=127.0.0.1`` and this process restricts its own
host candidates too; no ICE server is ever given.

What is measured, and against what:

1. **Session setup**, in three device configurations (agent flags), each over the
   same N sessions (quick: 5), each session closed and the device ready again before
   the next; each configuration starts with one warm-up session, reported apart (a
   process's first call pays one-time costs). The figures, per session:

   (a) ``start_session`` (the invite) -> the chat data channel open on the console;
   (b) the invite -> the first decoded frame of the device's camera on the console;
   (c) acceptance (the console seeing CONNECTING) -> channel open;
   (d) acceptance -> first frame.

   The configurations:

   - **spawn** (the default): the agent starts the session process at the invite
     and the headless user accepts at once. A session process needs about 420 ms
     (python, then importing aiortc and PyAV) before it can answer, and the offer
     waits for it, so that start lies on all of (a)-(d). All four are judged: they
     are what an instant accept gets.
   - **spawn+1s** (``--accept-delay-s 1.0``): the same agent, but the scripted user
     takes a second to answer, as a person reading the prompt does; the process
     started at the invite is warm by then. (a) and (b) include that second and
     are printed, not judged; (c) and (d), what the person experiences after
     tapping accept, are judged.
   - **prewarm** (``--prewarm``), instant accept: the agent keeps one idle session
     process started ahead of the next invite (holding no session, device or
     candidate; aiortc and PyAV loaded) and starts a new one after each session.
     (a) and (b) are judged: from the invite, none of the process start is left to
     wait for; what remains beside bare is signaling (the invite and the acceptance
     relayed, then the offer and the answer through the agent). Between
     sessions the benchmark waits until the new spare is warm, as on a device idle
     between calls (:meth:`Lab.wait_warm`: it is the agent's only child and not a
     process that took a call, aiortc's and PyAV's libraries are mapped in it, and
     it has used no CPU for 0.3 s since, i.e. it sits waiting for the invite; read
     from outside since the agent does not say). Also shown: how many calls the
     spare took (all should), its age at the invite, and how long after a call
     closes the next spare is seen warm (an invite sooner than that pays part of a
     spawn; that time includes the 0.3 s idle check), beside spawn's close -> ready.

   The floor of every figure: two bare aiortc peers in this process (no signaling,
   no PeerCall) with the media of a video call (our synthetic 640x480 camera and
   tone both ways through ``CallMedia``, VP8 first, aiortc's own encoders), from
   creating the offerer to channel open ((a), (c)) and to the first decoded frame
   ((b), (d)). To show where the time goes, each call also records when the
   offerer's peer connection started ICE (the answer applied) and finished ICE +
   DTLS, when the agent spawned the session process (before the invite for a
   spare) and how long closing took until the device was ready again; and
   ``python -c "import device_agent.call_process"`` is timed on the idle machine:
   what a session process needs before it can answer.
2. **Chat round trip**: send, then the far end's automatic "delivered" receipt
   (``ChatLog.delivery_rtts_ms``), 1000 messages (quick: 200), each sent after the
   previous receipt, in a text session with the device's session process. The floor
   is an aiortc data channel echo in this process with frames of exactly our sizes
   (a real chat frame out, a real receipt back). The first 10 messages warm the
   association up and are not counted. Also measured, for information, in a
   640x480 video call.
3. **Video**, both cameras on at once, 640x480 and 1280x720 at 30 fps, VP8 and
   H.264, each with our INTERACTIVE encoder settings and with aiortc's defaults: one
   video session per configuration, measured over a window after a warm-up.

   The console's side is read here: frames received (``video_in``) and sent, this
   process's CPU (psutil), and the console's sender's encode CPU per frame from the
   tuned encoders' own meter (``peer.encoders.live_encoders()``), which also counts
   the codec's worker threads. That meter can lose a codec's workers (seen with
   x264 at its own thread count, aiortc's H.264 default): a figure below half the
   wall time spent in ``encode()`` (:data:`METER_MIN_CPU_SHARE`) is shown with "?",
   judged n/a and cross-checked against this process's CPU. The bitrate is what
   each call settles at (REMB), so the settings are compared at the rates their
   calls reached. As an exact cross-check on the same content, each encoder also
   runs alone in this process before the calls, on the synthetic camera's frames at
   aiortc's starting bitrate, timed with process CPU time (which counts every thread
   a codec uses). The synthetic pattern is easy content; ``bench.encoders`` has
   camera-like content at fixed bitrates.

   The device's side lives in another process: its CPU and RSS are read by pid (the
   agent's child), and its received frame rate comes from the agent's
   ``--report-stdout`` summary (``calls[].fps_received_avg``: frames over the time
   from its first to its last decoded frame, i.e. the whole call), which the agent
   prints when it exits. Encoder settings and camera size are agent flags, so the
   agent is restarted per (settings, size), runs the VP8 and the H.264 call and is
   stopped to read its summary; calls are matched to it by session process pid. The
   figures stay those of our own call stack on both ends with nothing changed in
   it; the price is an average over the whole call on the device's side rather than
   the window (the warm-up is short and a call that does not stall runs steadily).
4. **Memory**: the resident agent's RSS when idle (online, no session), before any
   session and again after its spawn-mode setup and chat sessions, and whether it
   has mapped any native library of PyAV, FFmpeg (libav*, the codecs), aiortc (its
   only native dependency here, google_crc32c) or pylibsrtp (``/proc/PID/maps``);
   the session process's RSS at the end of each 720p video window. With
   ``--prewarm``: the agent's idle RSS and maps again (it still must load none of
   those: the spare does), and the idle spare's RSS each time it was ready before an
   invite (its median is printed), with its anonymous part (RssAnon: heap and
   private data, shared with no one; the rest is file pages such as the code of
   python and of the libraries, shared with any process mapping the same files).
   The spare's RSS is the memory price of prewarm, paid all the time the device
   waits for a call.

Targets (printed beside the figures): setup to channel open within 1.5x of bare
(p50, for (a) and (c) where judged); first frame within 1.2x of bare (p50, (b) and
(d) where judged); chat p99
under 2 ms; 720p at 30 fps sustained both ways (at least 95 %, 28.5 fps, received on
each end); the sender's VP8 encode under 25 % of one core (ms/frame x 30 / 10); an
H.264 setting at least 3x cheaper per frame than aiortc's default; the idle agent
under 70 MiB with none of those libraries loaded.

Output: a table (figure, ours, floor or baseline, target, result) on stdout, plain
verdict lines (which targets pass in which configuration, where setup time goes,
prewarm's memory price), and JSON (``--out``) with every raw figure (per
configuration: ``setup.runs[]``), the machine and the date. Nothing here asserts a
timing: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import fractions
import json
import logging
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

import aiortc
import av
import psutil  # type: ignore[import-untyped,unused-ignore]
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

from peer import encoders, ice
from peer.call import CallState, PeerCall
from peer.call_media import CallMedia, MediaOptions
from peer.chat import ChatEntry, DeliveryState, now_ms
from peer.media import SYNTHETIC_FRONT, MediaDevices, TestPatternSource
from protocol.chat import CHAT, ChatMessage, ChatReceipt
from protocol.enums import LiveSupportStatus, Mode, ReceiptState, SessionState
from protocol.messages import DeviceInfo
from tech_console import demo
from tech_console.client import ConsoleClient, ConsoleSession

FPS: Final = 30
SIZES: Final = ((640, 480), (1280, 720))
CODECS: Final = ("VP8", "H264")
VIDEO_TIME_BASE: Final = fractions.Fraction(1, 90_000)  # aiortc's video clock
VIDEO_TICKS_PER_FRAME: Final = 90_000 // FPS
#: Encoder settings by the name the agent's ``--encoders`` flag takes.
SETTINGS: Final = {"interactive": encoders.INTERACTIVE, "aiortc": encoders.AIORTC_DEFAULT}

# Targets.
SETUP_DC_RATIO: Final = 1.5
SETUP_FRAME_RATIO: Final = 1.2
CHAT_P99_MS: Final = 2.0
#: "Sustained": at least 95 % of the camera's 30 fps received, on average.
SUSTAINED_FPS: Final = 0.95 * FPS
VP8_CORE_PCT: Final = 25.0
H264_CHEAPER: Final = 3.0
AGENT_RSS_MIB: Final = 70.0

#: An encode meter figure below this share of the wall time spent in ``encode()``
#: has lost CPU: a codec that works on worker threads the meter stopped counting
#: leaves the calling thread waiting for them (seen with x264's own thread count,
#: aiortc's H.264 default: 2.0 ms CPU in 7.8 ms). Such a figure is shown with "?" and
#: judged n/a; preemption alone (2 cores, both ends busy) costs far less than half.
METER_MIN_CPU_SHARE: Final = 0.5

#: Native code that must not be in the resident agent: a substring of a mapped path
#: -> what it is. aiortc itself is pure Python; google_crc32c (its SCTP checksum) is
#: the native library only aiortc loads here, so it stands for aiortc.
NATIVE_MARKERS: Final = {
    "/site-packages/av/": "PyAV",
    "/av.libs/": "FFmpeg/codecs (PyAV's libav*, libvpx, libx264, libopus)",
    "/libavcodec": "libavcodec",
    "/libavformat": "libavformat",
    "google_crc32c": "aiortc (its SCTP checksum, google_crc32c)",
    "pylibsrtp": "pylibsrtp",
    "libsrtp": "libsrtp",
}

#: How long the scripted user of the "accept after a delay" mode reads the prompt.
ACCEPT_DELAY_S: Final = 1.0
#: A prewarmed spare counts as ready for the next invite once these native libraries
#: (aiortc's google_crc32c and PyAV's own modules) are mapped in it, i.e. its imports
#: got that far, and it has then used no CPU for SPARE_IDLE_S: it sits blocked on its
#: socket waiting for ``session.begin``, which is all a warm spare ever does.
SPARE_LOADED_MARKERS: Final = ("google_crc32c", "/site-packages/av/")
SPARE_IDLE_S: Final = 0.3

MIB: Final = 1024 * 1024
#: Any single wait for the call stack (a state, a frame, a receipt).
TIMEOUT_S: Final = 30.0
CHAT_TEXT: Final = "Benchmark: could you open the printer queue and read me the first job?"


# -- the device configurations of the setup benchmark --------------------------------


@dataclasses.dataclass(frozen=True)
class SetupMode:
    """One device configuration the setup benchmark runs, and which of its figures
    are judged against the targets: (a) invite -> chat open, (b) invite -> 1st frame,
    (c) accept -> chat open, (d) accept -> 1st frame."""

    key: str
    #: In the table's figure names.
    label: str
    #: In sentences.
    title: str
    prewarm: bool = False
    accept_delay_s: float = 0.0
    shown: tuple[str, ...] = ("a", "c", "b", "d")
    judged: tuple[str, ...] = ("a", "c", "b", "d")

    @property
    def judged_from(self) -> str:
        starts = {"the invite" if f in "ab" else "acceptance" for f in self.judged}
        return " and ".join(sorted(starts, reverse=True))


SETUP_MODES: Final = (
    SetupMode("spawn", "spawn", "session process spawned at the invite, instant accept"),
    SetupMode(
        "accept_delay",
        f"spawn+{ACCEPT_DELAY_S:g}s",
        f"session process spawned at the invite, the user accepting after {ACCEPT_DELAY_S:g} s",
        accept_delay_s=ACCEPT_DELAY_S,
        judged=("c", "d"),
    ),
    SetupMode(
        "prewarm",
        "prewarm",
        "--prewarm (a spare session process ready), instant accept",
        prewarm=True,
        shown=("a", "b"),
        judged=("a", "b"),
    ),
)
SETUP_FIGURE_NAMES: Final = {
    "a": "invite -> chat open",
    "b": "invite -> 1st frame",
    "c": "accept -> chat open",
    "d": "accept -> 1st frame",
}


# -- results ------------------------------------------------------------------------


@dataclasses.dataclass
class SetupTimes:
    """One call's setup, in milliseconds from its start (ours: the invite; bare:
    creating the offerer)."""

    #: The console saw the session CONNECTING (the device accepted); bare: 0.
    accepted_ms: float
    #: The peer connection started ICE: the answer was applied on the offerer.
    ice_started_ms: float | None
    #: ICE and DTLS done (aiortc's connectionState "connected").
    connected_ms: float | None
    #: The chat data channel open on the offerer (the console).
    dc_open_ms: float
    #: The first decoded frame of the answerer's camera on the offerer.
    first_frame_ms: float | None
    #: Ours: the agent started the session process (its creation time; the kernel
    #: keeps it in 10 ms ticks); negative for a prewarmed spare, started before the
    #: invite (minus its age). Bare: None.
    process_spawned_ms: float | None = None
    #: Ours: the session process that took the call.
    session_pid: int | None = None
    #: Prewarm: the call ran in the spare that was ready before the invite.
    spare_used: bool | None = None
    #: Ours: from closing the session until the device was ready for the next one
    #: (online, disconnected, the old session process gone; prewarm: a new spare warm).
    ready_again_ms: float | None = None


@dataclasses.dataclass
class SetupRun:
    """The sessions of one :class:`SetupMode`."""

    mode: str
    prewarm: bool = False
    accept_delay_s: float = 0.0
    times: list[SetupTimes] = dataclasses.field(default_factory=list)
    warmup: SetupTimes | None = None


def _setup_runs() -> list[SetupRun]:
    return [SetupRun(m.key, m.prewarm, m.accept_delay_s) for m in SETUP_MODES]


@dataclasses.dataclass
class SetupFigures:
    #: Ours, one run per :data:`SETUP_MODES`, in that order.
    runs: list[SetupRun] = dataclasses.field(default_factory=_setup_runs)
    bare: list[SetupTimes] = dataclasses.field(default_factory=list)
    bare_warmup: SetupTimes | None = None
    #: Wall time of a bare ``python -c "import device_agent.call_process"`` on the
    #: idle machine: what a session process needs before it can answer.
    process_start_ms: list[float] = dataclasses.field(default_factory=list)

    def run(self, key: str) -> SetupRun:
        return next(r for r in self.runs if r.mode == key)


@dataclasses.dataclass
class ChatFigures:
    #: Send -> delivered receipt, ms, console <-> device session process (text call).
    ours_ms: list[float] = dataclasses.field(default_factory=list)
    #: The same over a bare aiortc data channel echo in this process.
    bare_ms: list[float] = dataclasses.field(default_factory=list)
    #: Ours during a video call (information).
    during_video_ms: list[float] = dataclasses.field(default_factory=list)
    during_video: str = ""
    warmup_messages: int = 0


@dataclasses.dataclass
class VideoRun:
    width: int
    height: int
    codec: str  # "VP8" | "H264"
    settings: str  # "interactive" | "aiortc"
    window_s: float = 0.0
    console_fps_received: float | None = None
    console_fps_sent: float | None = None
    #: From the agent's report: the device's average over the whole call.
    device_fps_received: float | None = None
    device_frames_received: int | None = None
    #: CPU over the window, in % of one core.
    console_cpu_pct: float | None = None
    device_cpu_pct: float | None = None
    agent_cpu_pct: float | None = None
    server_cpu_pct: float | None = None
    #: The console's sender: encode CPU and wall ms per frame over the window.
    encode_ms: float | None = None
    encode_wall_ms: float | None = None
    encode_frames: int = 0
    encode_contexts: int = 0
    #: Codec worker threads the meter counted at the end of the window.
    encode_workers: int = 0
    encoder: str = ""
    session_rss_mib: float | None = None
    session_pid: int | None = None
    #: The console's ``PeerCall.stats()`` at the end of the window (bitrates over it).
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height} {self.codec}"

    @property
    def encode_core_pct(self) -> float | None:
        """% of one core the encoder takes at 30 fps: ms/frame x 30 / 1000 x 100."""
        return None if self.encode_ms is None else self.encode_ms * FPS / 10

    @property
    def encode_suspect(self) -> bool:
        """The meter's CPU figure is below half the wall time: it lost CPU."""
        cpu, wall = self.encode_ms, self.encode_wall_ms
        return cpu is not None and wall is not None and cpu < METER_MIN_CPU_SHARE * wall


@dataclasses.dataclass
class OfflineEncode:
    """One encoder alone on the same synthetic frames (no call): exact CPU per frame."""

    width: int
    height: int
    codec: str
    settings: str
    #: Process CPU time per frame around ``encode()`` (all threads, nothing else runs).
    cpu_ms: float
    #: The encoder's own meter over the same frames, for comparison.
    meter_ms: float
    kbps: float


@dataclasses.dataclass
class MemoryFigures:
    agent_idle_rss_mib: float | None = None
    agent_idle_native: list[str] = dataclasses.field(default_factory=list)
    agent_after_rss_mib: float | None = None
    agent_after_native: list[str] = dataclasses.field(default_factory=list)
    #: Sessions the agent had served when measured again.
    sessions_served: int = 0
    #: --prewarm: the agent idle (no session) with its spare session process ready,
    #: and what the agent itself maps.
    prewarm_agent_rss_mib: float | None = None
    prewarm_agent_native: list[str] = dataclasses.field(default_factory=list)
    #: The spare's RSS and its anonymous part (heap and private data: RssAnon) each
    #: time it was ready before an invite, and what it maps (the first one). RSS also
    #: counts file pages (code of python and the libraries) that other processes
    #: mapping the same files share; anonymous pages are its own whatever else runs.
    spare_idle_rss_mib: list[float] = dataclasses.field(default_factory=list)
    spare_idle_anon_mib: list[float] = dataclasses.field(default_factory=list)
    spare_native: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CallBench:
    machine: dict[str, Any]
    date: str
    quick: bool
    setup: SetupFigures = dataclasses.field(default_factory=SetupFigures)
    chat: ChatFigures = dataclasses.field(default_factory=ChatFigures)
    video: list[VideoRun] = dataclasses.field(default_factory=list)
    memory: MemoryFigures = dataclasses.field(default_factory=MemoryFigures)
    offline: list[OfflineEncode] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Row:
    figure: str
    ours: str
    floor: str
    target: str
    #: "PASS", "FAIL", "n/a" (no figure) or "" (information only).
    result: str


# -- small helpers ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, interpolated between the two nearest ranks (so p99 of
    20 values sits between the two largest); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 2)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process (its children not included)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _rss_mib(pid: int) -> float | None:
    try:
        return round(float(psutil.Process(pid).memory_info().rss) / MIB, 1)
    except psutil.Error:
        return None


def _anon_mib(pid: int) -> float | None:
    """RssAnon of ``/proc/PID/status``: resident anonymous memory (heap, private
    data), the part of RSS no other process shares. (Not USS: the library pages of
    the spare are shared with this process, which has PyAV and aiortc loaded too, so
    its USS would leave them out here though on a device nobody else maps them.)"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return round(int(line.split()[1]) * 1024 / MIB, 1)
    return None


def _started_boottime(pid: int) -> float | None:
    """When a process was started, on CLOCK_BOOTTIME (to the kernel's 10 ms tick).

    Not psutil's ``create_time()``: it adds the boot time, which Linux gives in whole
    seconds, so it can be off by up to a second; ``starttime`` in ``/proc/PID/stat``
    counts clock ticks on the boot-time clock itself.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3;
    # starttime is field 22.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[22 - 3]) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(child.pid) for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def _imports_done(pid: int) -> bool:
    """aiortc's and PyAV's native libraries are mapped into the process."""
    mapped = native_libraries(pid)
    return all(any(marker in path for path in mapped) for marker in SPARE_LOADED_MARKERS)


def native_libraries(pid: int) -> list[str]:
    """The PyAV/FFmpeg/aiortc/libsrtp shared objects mapped into a process."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    found: set[str] = set()
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        path = parts[5] if len(parts) == 6 else ""
        if any(marker in path for marker in NATIVE_MARKERS):
            found.add(path)
    return sorted(found)


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
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "platform": platform.platform(),
    }


def background_load(seconds: float = 1.0, threshold_pct: float = 10.0) -> dict[str, Any]:
    """What else keeps this machine busy: the load average, and every process other
    than this one using more than ``threshold_pct`` of a core over ``seconds``.
    Other work on 2 cores delays every wake-up here, so wall-clock figures (setup,
    round trips) of a run with busy neighbours are inflated; CPU times much less."""
    me = os.getpid()

    def sample() -> dict[int, float]:
        times: dict[int, float] = {}
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            cpu = proc.info.get("cpu_times")
            if cpu is not None and proc.info["pid"] != me:
                times[int(proc.info["pid"])] = float(cpu.user + cpu.system)
        return times

    before = sample()
    time.sleep(seconds)
    after = sample()
    busy: list[dict[str, Any]] = []
    for pid, cpu in after.items():
        pct = (cpu - before.get(pid, cpu)) / seconds * 100
        if pct >= threshold_pct:
            try:
                command = " ".join(psutil.Process(pid).cmdline())[:80]
            except psutil.Error:
                command = "?"
            busy.append({"pid": pid, "cpu_pct": round(pct, 1), "command": command})
    return {
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "busy_processes": sorted(busy, key=lambda b: -float(b["cpu_pct"])),
    }


class _CpuWindow:
    """CPU% of several processes over one window (100 = one core busy)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self._start = time.monotonic()
        self._cpu = {name: _cpu_seconds(pid) if pid else None for name, pid in pids.items()}

    def percent(self) -> dict[str, float | None]:
        elapsed = time.monotonic() - self._start
        result: dict[str, float | None] = {}
        for name, pid in self._pids.items():
            before = self._cpu[name]
            after = _cpu_seconds(pid) if pid else None
            if before is None or after is None or elapsed <= 0:
                result[name] = None
            else:
                result[name] = round((after - before) / elapsed * 100, 1)
        return result


# -- the floor: bare aiortc peers in this process -----------------------------------


def _new_pc() -> RTCPeerConnection:
    # No ICE server, ever: aiortc would ask a public STUN server otherwise.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def _prefer_vp8(pc: RTCPeerConnection) -> None:
    """VP8 first on the offer's video transceiver, as the console does."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    first = [c for c in codecs if c.mimeType.lower() == "video/vp8"]
    rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
    rest = [c for c in codecs if c not in first and c not in rtx]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(first + rest + rtx)


async def _negotiate(
    offerer: RTCPeerConnection,
    answerer: RTCPeerConnection,
    add_answer_tracks: Callable[[], None] = lambda: None,
) -> None:
    """Offer/answer without signaling. aiortc gathers every candidate inside
    setLocalDescription, so the local descriptions carry them all (no trickle)."""
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    # The answerer adds its tracks after the offer, as PeerCall does.
    add_answer_tracks()
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def _poll(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.005) -> None:
    async def wait() -> None:
        while not predicate():  # noqa: ASYNC110 (no event for these counters)
            await asyncio.sleep(step_s)

    await asyncio.wait_for(wait(), timeout_s)


async def bare_setup_once() -> SetupTimes:
    """Two bare aiortc peers with a video call's media: offer -> channel open and ->
    the first decoded frame of the answerer's camera on the offerer."""
    marks: dict[str, float] = {}
    opened = asyncio.Event()
    devices = (MediaDevices(None, fake=True), MediaDevices(None, fake=True))
    media = tuple(CallMedia(d, Mode.VIDEO, MediaOptions()) for d in devices)
    started = time.monotonic()
    offerer, answerer = _new_pc(), _new_pc()

    def on_state() -> None:
        marks.setdefault(str(offerer.connectionState), time.monotonic())

    def on_open() -> None:
        marks["open"] = time.monotonic()
        opened.set()

    try:
        channel = offerer.createDataChannel("chat", ordered=True)
        channel.on("open", on_open)
        offerer.on("connectionstatechange", on_state)
        offerer.on("track", media[0].attach_remote)
        answerer.on("track", media[1].attach_remote)
        for track in media[0].open():
            offerer.addTrack(track)
        _prefer_vp8(offerer)

        def answer_tracks() -> None:
            for track in media[1].open():
                answerer.addTrack(track)

        await _negotiate(offerer, answerer, answer_tracks)
        await asyncio.wait_for(opened.wait(), TIMEOUT_S)
        await _poll(lambda: media[0].video_in is not None, TIMEOUT_S)
        video_in = media[0].video_in
        assert video_in is not None
        await asyncio.wait_for(video_in.first_frame.wait(), TIMEOUT_S)
        return SetupTimes(
            accepted_ms=0.0,
            ice_started_ms=_ms(started, marks.get("connecting")),
            connected_ms=_ms(started, marks.get("connected")),
            dc_open_ms=(marks["open"] - started) * 1000,
            first_frame_ms=_ms(started, video_in.first_frame_at),
        )
    finally:
        await offerer.close()
        await answerer.close()
        for end in media:
            await end.close()
        for d in devices:
            d.close()


async def bare_chat(count: int, warmup: int) -> list[float]:
    """Round trips over a bare aiortc data channel: our chat frame out, our delivered
    receipt straight back from the far end's message handler."""
    message = CHAT.encode(
        ChatMessage(
            message_id=secrets.token_hex(8), text=CHAT_TEXT, sent_at_ms=now_ms(), author="Bench"
        )
    )
    receipt = CHAT.encode(
        ChatReceipt(message_ids=(secrets.token_hex(8),), state=ReceiptState.DELIVERED)
    )
    offerer, answerer = _new_pc(), _new_pc()
    opened = asyncio.Event()
    arrived = asyncio.Event()
    arrivals: list[float] = []

    def on_reply(_data: str | bytes) -> None:
        arrivals.append(time.monotonic())
        arrived.set()

    def on_datachannel(echo: Any) -> None:
        echo.on("message", lambda _data: echo.send(receipt))

    try:
        channel = offerer.createDataChannel("chat", ordered=True)
        channel.on("open", opened.set)
        channel.on("message", on_reply)
        answerer.on("datachannel", on_datachannel)
        await _negotiate(offerer, answerer)
        await asyncio.wait_for(opened.wait(), TIMEOUT_S)
        rtts: list[float] = []
        for _ in range(warmup + count):
            arrived.clear()
            sent = time.monotonic()
            channel.send(message)
            await asyncio.wait_for(arrived.wait(), TIMEOUT_S)
            rtts.append((arrivals[-1] - sent) * 1000)
        return rtts[warmup:]
    finally:
        await offerer.close()
        await answerer.close()


# -- ours: the lab of real processes ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    width: int
    height: int
    settings: str  # "interactive" | "aiortc"
    prewarm: bool = False
    accept_delay_s: float = 0.0


class Lab:
    """The server and agent processes and the console of this process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.server_data = root / "server-data"
        self.agent_state = root / "agent-state"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", ice.ENV: "127.0.0.1"}
        self.server: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_config: AgentConfig | None = None
        self.agent_starts = 0
        #: session process pid -> its entry of the agent's exit report.
        self.session_reports: dict[int, dict[str, Any]] = {}
        self._files: list[IO[bytes]] = []
        self.url = ""
        self.fingerprint = ""
        self.password = secrets.token_urlsafe(12)
        self.console: ConsoleClient | None = None
        self.device_id = ""
        #: Sessions started with the current agent process.
        self.sessions = 0
        #: Session processes that have taken a call (a spare is never one of them).
        self.used_pids: set[int] = set()
        #: Prewarm: the spare session process waiting for the next invite, once the
        #: device is ready, and the last one found warm.
        self.spare_pid: int | None = None
        self._warm_pid: int | None = None
        #: session id -> {"accepted": t, "connecting": t, "connected": t}
        self.marks: dict[str, dict[str, float]] = {}
        self._changed = asyncio.Event()

    def _log(self, name: str) -> IO[bytes]:
        handle = (self.logs / name).open("wb")
        self._files.append(handle)
        return handle

    # -- processes ------------------------------------------------------------------

    def _start_server(self, ready: Path) -> subprocess.Popen[bytes]:
        args = ["server", "--host", "127.0.0.1", "--port", "0"]
        args += ["--data", str(self.server_data), "--ready-file", str(ready)]
        self.server = subprocess.Popen(
            demo._livesupport(*args),
            stdout=self._log("server.log"),
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        return self.server

    async def start(self, config: AgentConfig) -> None:
        """Server, technician and enrolment code (as ``livesupport admin`` makes them),
        the agent enrolled and online, and the console logged in."""
        ready = self.root / "server.json"
        server = self._start_server(ready)
        info = await asyncio.to_thread(demo._wait_file, ready, server, 30)
        self.url, self.fingerprint = info["url"], info["fingerprint"]
        data = self.server_data
        await asyncio.to_thread(demo._admin, data, "group-add", "Bench tablets")
        await asyncio.to_thread(
            demo._admin,
            data,
            "technician-add",
            "bench-tech",
            "--name",
            "Bea Bench",
            "--group",
            "Bench tablets",
            "--password-stdin",
            stdin=self.password + "\n",
        )
        code = await asyncio.to_thread(
            demo._admin, data, "enrolment-token", "Bench tablets", "--server", self.url
        )
        self._start_agent(config, enrol=code["code"])
        assert self.agent is not None
        await asyncio.to_thread(demo._wait_enrolled, self.agent_state, self.agent, 30)
        console = ConsoleClient(
            self.url, self.fingerprint, media_devices=MediaDevices(None, fake=True)
        )
        self.console = console
        console.device_listeners.add(lambda _d: self._changed.set())
        console.session_listeners.add(self._on_session)
        await console.login("bench-tech", self.password)
        await self._until(lambda: any(d.online for d in console.devices.values()))
        self.device_id = next(d.device_id for d in console.devices.values() if d.online)
        await self.wait_ready()

    def _start_agent(self, config: AgentConfig, enrol: str | None = None) -> None:
        args = ["agent", "--state", str(self.agent_state), "--name", "Bench tablet"]
        if enrol:
            args += ["--enrol", enrol]
        args += ["--headless", "--accept", "video", "--fake-media"]
        args += ["--video-size", f"{config.width}x{config.height}"]
        args += ["--encoders", config.settings, "--report-stdout"]
        if config.prewarm:
            args.append("--prewarm")
        if config.accept_delay_s:
            args += ["--accept-delay-s", str(config.accept_delay_s)]
        self.agent_starts += 1
        self.sessions = 0
        self.spare_pid = None
        self.agent = subprocess.Popen(
            demo._livesupport(*args),
            stdout=subprocess.PIPE,
            stderr=self._log(f"agent-{self.agent_starts}.log"),
            env=self.env,
        )
        self.agent_config = config

    async def use_agent(self, config: AgentConfig) -> None:
        """The agent with these flags: restarted (same state, no enrolment) if needed."""
        if self.agent_config == config and self.agent is not None:
            return
        await self.stop_agent()
        # Offline first, so that "online" below is the new agent, not a stale status.
        await self._until(lambda: not self.device().online)
        self._start_agent(config)
        await self.wait_ready()

    async def stop_agent(self) -> None:
        """Stop the agent and keep its report of each session process, by pid."""
        agent, self.agent = self.agent, None
        if agent is None:
            return
        await asyncio.to_thread(demo._stop, agent)
        output = agent.stdout.read().decode() if agent.stdout else ""
        if agent.stdout:
            agent.stdout.close()
        for line in output.splitlines():
            if line.startswith("{"):
                for entry in json.loads(line).get("session_processes", []):
                    if entry.get("pid"):
                        self.session_reports[int(entry["pid"])] = entry

    async def stop(self) -> None:
        if self.console is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.console.logout(), 10)
        with contextlib.suppress(Exception):
            await self.stop_agent()
        if self.server is not None:
            await asyncio.to_thread(demo._stop, self.server)
        for handle in self._files:
            handle.close()

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    # -- the console's view ---------------------------------------------------------

    @property
    def client(self) -> ConsoleClient:
        assert self.console is not None
        return self.console

    def device(self) -> DeviceInfo:
        return self.client.devices[self.device_id]

    def _on_session(self, session: ConsoleSession) -> None:
        self._changed.set()
        marks = self.marks.setdefault(session.session_id, {})
        if session.state is SessionState.CONNECTING and "accepted" not in marks:
            # Fired in the same handler that made the call and before its start()
            # runs, so no state change of the call can be missed.
            marks["accepted"] = time.monotonic()
            call = session.call
            if call is not None:

                def on_state(state: CallState) -> None:
                    marks.setdefault(state.value, time.monotonic())

                call.state_listeners.add(on_state)

    async def _until(self, predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                # Device and session updates wake us; a short tick covers the rest
                # (a session process exiting has no event here).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.02)

        await asyncio.wait_for(wait(), timeout_s)

    async def wait_ready(self) -> None:
        """The device is online, not in a session, and its session process is gone;
        with --prewarm, its one child is a new spare, and that spare is warm."""
        agent = self.agent
        assert agent is not None
        prewarm = self.agent_config is not None and self.agent_config.prewarm

        spare: list[int] = []

        def ready() -> bool:
            device = self.client.devices.get(self.device_id)
            if not (
                device is not None
                and device.online
                and device.status is LiveSupportStatus.DISCONNECTED
            ):
                return False
            children = _children(agent.pid)
            if not prewarm:
                return not children
            # The agent ends the old session process first, then starts the spare.
            spare[:] = children
            return len(children) == 1 and children[0] not in self.used_pids

        await self._until(ready)
        if prewarm:
            self.spare_pid = spare[0]
            await self.wait_warm(spare[0])

    async def wait_warm(self, pid: int) -> None:
        """Wait until a spare session process could take a call at once.

        The agent says nothing when its spare is ready, so it is read from outside:
        its imports are done (aiortc's and PyAV's native libraries are mapped, see
        :data:`SPARE_LOADED_MARKERS`) and it has then used no CPU for
        :data:`SPARE_IDLE_S` (blocked on its socket, waiting for ``session.begin``;
        a process still importing or starting its loop burns CPU all along, its
        files being in the page cache after the first start). This is
        sounder than a fixed age (say alive >= 1.5 s, ~3.5x its start on an idle
        machine): a busy machine can stretch the start past any fixed age, which
        would leave part of it on the measured path, while an idle one would wait
        for nothing. CPU time moves in 10 ms ticks: 0.3 s unchanged is truly idle.
        """
        if pid == self._warm_pid:
            return
        last_cpu: float | None = None
        idle_since = time.monotonic()

        async def wait() -> None:
            nonlocal last_cpu, idle_since
            while True:
                cpu = _cpu_seconds(pid)
                if cpu is None:
                    raise RuntimeError(f"the spare session process {pid} is gone")
                now = time.monotonic()
                if cpu != last_cpu:
                    last_cpu, idle_since = cpu, now
                elif now - idle_since >= SPARE_IDLE_S and _imports_done(pid):
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(wait(), TIMEOUT_S)
        self._warm_pid = pid

    def session_pid(self) -> int | None:
        agent = self.agent
        children = _children(agent.pid) if agent is not None else []
        return children[0] if children else None

    async def open_call(self, mode: Mode) -> tuple[ConsoleSession, PeerCall, SetupTimes]:
        """Invite, wait for acceptance, the chat channel and (video) the first frame."""
        await self.wait_ready()
        spare = self.spare_pid if self.agent_config and self.agent_config.prewarm else None
        started = time.monotonic()
        # The session process's start time is on the boot-time clock.
        started_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        session = await self.client.start_session(self.device_id, mode, "Benchmark")
        self.sessions += 1
        try:
            state = await self.client.wait_session(
                session,
                [SessionState.CONNECTING, SessionState.REJECTED, SessionState.EXPIRED],
                TIMEOUT_S,
            )
            if state is not SessionState.CONNECTING:
                raise RuntimeError(f"the device did not accept: {state.value}")
            call = session.call
            assert call is not None
            await asyncio.wait_for(call.connected.wait(), TIMEOUT_S)
            dc_open = time.monotonic()
            first_frame: float | None = None
            media = call.media
            if media is not None and media.has_video:
                await self._until(lambda: media.video_in is not None)
                video_in = media.video_in
                assert video_in is not None
                await asyncio.wait_for(video_in.first_frame.wait(), TIMEOUT_S)
                first_frame = video_in.first_frame_at
            marks = self.marks.get(session.session_id, {})
            pid = self.session_pid()
            if pid is not None:
                self.used_pids.add(pid)
            spawned = _started_boottime(pid) if pid is not None else None
            times = SetupTimes(
                accepted_ms=(marks["accepted"] - started) * 1000,
                ice_started_ms=_ms(started, marks.get(CallState.CONNECTING.value)),
                connected_ms=_ms(started, marks.get(CallState.CONNECTED.value)),
                dc_open_ms=(dc_open - started) * 1000,
                first_frame_ms=_ms(started, first_frame),
                process_spawned_ms=_ms(started_boot, spawned),
                session_pid=pid,
                spare_used=None if spare is None else pid == spare,
            )
            # The server's status follows the call (CallConnected); closing before the
            # console has seen it would let a stale "disconnected" look ready.
            await self._until(lambda: self.device().status is LiveSupportStatus.CONNECTED)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close_call(session)
            raise
        return session, call, times

    async def close_call(self, session: ConsoleSession) -> None:
        await self.client.close_session(session.session_id)
        await self.client.wait_session(session, [SessionState.CLOSED], TIMEOUT_S)
        await self.wait_ready()


# -- the phases ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    sessions: int
    chat_messages: int
    chat_warmup: int
    video_warmup_s: float
    video_window_s: float
    #: Frames per offline encode cross-check.
    frames: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        # Chat costs about a millisecond a message; 1000 make p99 the 10th largest
        # rather than the 2nd, which a single scheduling hiccup would decide.
        if quick:
            return cls(5, 200, 10, video_warmup_s=1, video_window_s=3, frames=60)
        return cls(20, 1000, 10, video_warmup_s=2, video_window_s=10, frames=150)


def process_start_ms(runs: int = 3) -> list[float]:
    """Start a Python that imports the session process's module, alone, and exit:
    the part of setup a session process spends before it can take the offer."""
    env = {**os.environ, ice.ENV: "127.0.0.1"}
    times: list[float] = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", "import device_agent.call_process"],
            env=env,
            check=True,
            timeout=60,
        )
        times.append(round((time.monotonic() - started) * 1000, 1))
    return times


async def run_floor(bench: CallBench, plan: Plan) -> None:
    bench.setup.process_start_ms = await asyncio.to_thread(process_start_ms)
    # Bare aiortc: aiortc's own encoders, not our hook.
    encoders.install(None)
    bench.setup.bare_warmup = await bare_setup_once()
    for _ in range(plan.sessions):
        bench.setup.bare.append(await bare_setup_once())
        await asyncio.sleep(0.1)  # let the closed peers' tasks finish
    bench.chat.bare_ms = await bare_chat(plan.chat_messages, plan.chat_warmup)
    bench.chat.warmup_messages = plan.chat_warmup
    for width, height in SIZES:
        for codec in CODECS:
            for settings in SETTINGS:
                bench.offline.append(offline_encode(width, height, codec, settings, plan.frames))


def offline_encode(
    width: int, height: int, codec: str, settings: str, frames: int
) -> OfflineEncode:
    """Encode the synthetic camera's frames with one setting, at aiortc's starting
    bitrate, with nothing else running in this process: process CPU time around each
    ``encode()`` is exactly the encoder's, whatever threads it uses. A cross-check of
    the live meter on the same content, independent of the bitrate a call settles at."""
    source = TestPatternSource(SYNTHETIC_FRONT, width, height, FPS)
    encoder = encoders.make_encoder(f"video/{codec}", SETTINGS[settings])
    assert encoder is not None
    warmup = 10  # the first keyframe and the rate control settling
    cpu_ns = sent = 0
    before = encoder.stats()
    for index in range(warmup + frames):
        if index == warmup:
            before = encoder.stats()
        frame = source.render(now=index / FPS)
        frame.pts = index * VIDEO_TICKS_PER_FRAME
        frame.time_base = VIDEO_TIME_BASE
        started = time.process_time_ns()
        payloads, _timestamp = encoder.encode(frame)
        if index >= warmup:
            cpu_ns += time.process_time_ns() - started
            sent += sum(len(p) for p in payloads)
    meter = encoder.stats().since(before)
    return OfflineEncode(
        width,
        height,
        codec,
        settings,
        cpu_ms=round(cpu_ns / frames / 1e6, 2),
        meter_ms=round(meter.encode_ms, 2),
        kbps=round(sent * 8 * FPS / frames / 1000, 1),
    )


async def measure_agent_memory(lab: Lab) -> tuple[float | None, list[str]]:
    assert lab.agent is not None
    # Settle: the agent has just come online or ended a session.
    await asyncio.sleep(1.0)
    return _rss_mib(lab.agent.pid), native_libraries(lab.agent.pid)


async def run_setup(lab: Lab, bench: CallBench, plan: Plan, mode: SetupMode) -> None:
    """One warm-up session, then ``plan.sessions`` measured ones, with the agent of
    this mode (restarted if its flags differ)."""
    encoders.install(encoders.INTERACTIVE)  # what the console application installs
    lab.client.media_options = MediaOptions(640, 480, FPS, "VP8")
    config = AgentConfig(
        640, 480, "interactive", prewarm=mode.prewarm, accept_delay_s=mode.accept_delay_s
    )
    await lab.use_agent(config)
    result = bench.setup.run(mode.key)
    memory = bench.memory
    if mode.prewarm:
        await lab.wait_ready()
        rss, native = await measure_agent_memory(lab)
        memory.prewarm_agent_rss_mib, memory.prewarm_agent_native = rss, native
        if lab.spare_pid is not None:
            memory.spare_native = native_libraries(lab.spare_pid)
    for index in range(plan.sessions + 1):
        # Prewarm: wait_ready also waits for the spare to be warm (Lab.wait_warm),
        # so each invite finds one, as a device idle between calls would.
        await lab.wait_ready()
        if mode.prewarm and lab.spare_pid is not None:
            rss, anon = _rss_mib(lab.spare_pid), _anon_mib(lab.spare_pid)
            if rss is not None and anon is not None:
                memory.spare_idle_rss_mib.append(rss)
                memory.spare_idle_anon_mib.append(anon)
        session, _call, times = await lab.open_call(Mode.VIDEO)
        closing = time.monotonic()
        await lab.close_call(session)
        times.ready_again_ms = _ms(closing, time.monotonic())
        if index == 0:
            result.warmup = times
        else:
            result.times.append(times)
        await asyncio.sleep(0.1)


async def chat_round_trips(call: PeerCall, count: int, warmup: int) -> list[float]:
    """Send one message at a time, each after the previous one's delivered receipt."""
    changed = asyncio.Event()

    def on_entry(_entry: ChatEntry) -> None:
        changed.set()

    remove = call.chat.listeners.add(on_entry)
    try:
        for _ in range(warmup + count):
            message_id = await call.send_chat(CHAT_TEXT)
            while (entry := call.chat.outgoing(message_id)) is None or (
                entry.state < DeliveryState.DELIVERED
            ):
                changed.clear()
                await asyncio.wait_for(changed.wait(), TIMEOUT_S)
        # Before the call closes: closing clears the log, round trips included.
        return list(call.chat.delivery_rtts_ms().values())[warmup:]
    finally:
        remove()


async def run_chat(lab: Lab, bench: CallBench, plan: Plan) -> None:
    session, call, _times = await lab.open_call(Mode.TEXT)
    try:
        bench.chat.ours_ms = await chat_round_trips(call, plan.chat_messages, plan.chat_warmup)
    finally:
        await lab.close_call(session)


async def run_video(lab: Lab, run: VideoRun, plan: Plan, chat_during: ChatFigures | None) -> None:
    encoders.install(SETTINGS[run.settings])
    lab.client.media_options = MediaOptions(run.width, run.height, FPS, run.codec)
    session, call, _times = await lab.open_call(Mode.VIDEO)
    try:
        media = call.media
        assert media is not None
        assert media.video_in is not None
        video_in, video_out = media.video_in, media.video_track
        await asyncio.sleep(plan.video_warmup_s)
        run.session_pid = lab.session_pid()
        server_pid = lab.server.pid if lab.server is not None else None
        agent_pid = lab.agent.pid if lab.agent is not None else None
        cpu = _CpuWindow(
            {
                "console": os.getpid(),
                "device": run.session_pid,
                "agent": agent_pid,
                "server": server_pid,
            }
        )
        started = time.monotonic()
        received0 = video_in.frames
        sent0 = video_out.frames_sent if video_out is not None else 0
        # Keep the encoder objects themselves: an id() may be reused after a GC.
        meters = [(encoder, encoder.stats()) for encoder in encoders.live_encoders()]
        await call.stats()  # marks the byte counters: the next bitrates span the window
        await asyncio.sleep(plan.video_window_s)
        elapsed = time.monotonic() - started
        percent = cpu.percent()
        run.window_s = round(elapsed, 2)
        run.console_fps_received = round((video_in.frames - received0) / elapsed, 1)
        if video_out is not None:
            run.console_fps_sent = round((video_out.frames_sent - sent0) / elapsed, 1)
        run.console_cpu_pct = percent["console"]
        run.device_cpu_pct = percent["device"]
        run.agent_cpu_pct = percent["agent"]
        run.server_cpu_pct = percent["server"]
        run.session_rss_mib = _rss_mib(run.session_pid) if run.session_pid else None
        _encode_figures(run, meters)
        run.stats = dict(await call.stats())
        if chat_during is not None:
            chat_during.during_video_ms = await chat_round_trips(call, 200, 10)
            chat_during.during_video = f"{run.label} {run.settings}"
    finally:
        await lab.close_call(session)


def _encode_figures(
    run: VideoRun, before: list[tuple[encoders.TunedEncoder, encoders.EncodeStats]]
) -> None:
    """The console's video sender over the window: the encoders that encoded in it
    (an encoder of an earlier call may still be alive until collected)."""
    earlier = {id(encoder): stats for encoder, stats in before}
    frames = cpu_ns = wall_ns = contexts = workers = 0
    names: set[str] = set()
    for encoder in encoders.live_encoders():
        now = encoder.stats()
        base = earlier.get(id(encoder))
        window = now.since(base) if base is not None else now
        if window.frames > 0:
            names.add(type(encoder).__name__)
            frames += window.frames
            cpu_ns += window.cpu_ns
            wall_ns += window.wall_ns
            contexts += window.contexts
            workers += now.worker_threads
    if frames:
        run.encode_frames = frames
        run.encode_ms = round(cpu_ns / frames / 1e6, 2)
        run.encode_wall_ms = round(wall_ns / frames / 1e6, 2)
        run.encode_contexts = contexts
        run.encode_workers = workers
        run.encoder = ",".join(sorted(names))


async def run_calls(lab: Lab, bench: CallBench, plan: Plan) -> None:
    default, *others = SETUP_MODES
    await _guarded(bench, f"setup {default.key}", run_setup(lab, bench, plan, default), lab)
    await _guarded(bench, "chat", run_chat(lab, bench, plan), lab)
    if lab.agent is not None:
        # The agent that started the benchmark, after its setup and chat sessions.
        bench.memory.sessions_served = lab.sessions
        (
            bench.memory.agent_after_rss_mib,
            bench.memory.agent_after_native,
        ) = await measure_agent_memory(lab)
    for mode in others:
        await _guarded(bench, f"setup {mode.key}", run_setup(lab, bench, plan, mode), lab)
    # Settings and size are the agent's flags: one agent per pair, both codecs each.
    for settings in SETTINGS:
        for width, height in SIZES:
            config = AgentConfig(width, height, settings)
            if not await _guarded(bench, f"agent {config}", lab.use_agent(config), lab):
                continue
            for codec in CODECS:
                run = VideoRun(width, height, codec, settings)
                bench.video.append(run)
                first = settings == "interactive" and (width, height) == SIZES[0]
                chat_during = bench.chat if first and codec == "VP8" else None
                await _guarded(
                    bench,
                    f"video {run.label} {settings}",
                    run_video(lab, run, plan, chat_during),
                    lab,
                    run,
                )
    await lab.stop_agent()
    for run in bench.video:
        entry = lab.session_reports.get(run.session_pid or -1)
        calls = (entry or {}).get("calls") or []
        if calls:
            run.device_fps_received = calls[-1].get("fps_received_avg")
            run.device_frames_received = calls[-1].get("video_frames_received")


async def _guarded(
    bench: CallBench,
    name: str,
    phase: Awaitable[None],
    lab: Lab,
    run: VideoRun | None = None,
) -> bool:
    """Run one phase; a failure is recorded (with the processes' last log lines) and
    the benchmark goes on with the next phase."""
    try:
        await phase
    except Exception as exc:
        message = f"{name}: {type(exc).__name__}: {exc}"
        bench.errors.append(message)
        if run is not None:
            run.error = f"{type(exc).__name__}: {exc}"
        print(f"FAILED {message}", file=sys.stderr)
        traceback.print_exc()
        print(lab.log_tails(), file=sys.stderr)
        return False
    return True


async def run(plan: Plan, quick: bool, root: Path) -> CallBench:
    started = time.monotonic()
    load = await asyncio.to_thread(background_load)
    bench = CallBench(
        machine={**machine(), "background_at_start": load},
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        quick=quick,
    )
    print("floor: bare aiortc peers in this process ...", file=sys.stderr, flush=True)
    try:
        await run_floor(bench, plan)
    except Exception as exc:
        bench.errors.append(f"floor: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    lab = Lab(root)
    try:
        print("starting the server and the agent ...", file=sys.stderr, flush=True)
        await lab.start(AgentConfig(640, 480, "interactive"))
        assert lab.agent is not None
        (
            bench.memory.agent_idle_rss_mib,
            bench.memory.agent_idle_native,
        ) = await measure_agent_memory(lab)
        print("sessions, chat and video ...", file=sys.stderr, flush=True)
        await run_calls(lab, bench, plan)
    except Exception as exc:
        bench.errors.append(f"lab: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        print(lab.log_tails(), file=sys.stderr)
    finally:
        await lab.stop()
    bench.machine["background_at_end"] = await asyncio.to_thread(background_load)
    bench.seconds = round(time.monotonic() - started, 1)
    return bench


# -- the table and the JSON ---------------------------------------------------------


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _ratio(ours: float | None, floor: float | None) -> float | None:
    return None if ours is None or floor is None or floor <= 0 else ours / floor


def setup_series(times: Sequence[SetupTimes]) -> dict[str, list[float]]:
    """The four setup figures of one mode's sessions, in ms, by letter."""
    return {
        "a": [t.dc_open_ms for t in times],
        "b": [t.first_frame_ms for t in times if t.first_frame_ms is not None],
        "c": [t.dc_open_ms - t.accepted_ms for t in times],
        "d": [t.first_frame_ms - t.accepted_ms for t in times if t.first_frame_ms is not None],
    }


def bare_series(setup: SetupFigures) -> dict[str, list[float]]:
    """The floor of each figure: bare peers' channel open (a, c) and 1st frame (b, d)."""
    dc = [t.dc_open_ms for t in setup.bare]
    frame = [t.first_frame_ms for t in setup.bare if t.first_frame_ms is not None]
    return {"a": dc, "b": frame, "c": dc, "d": frame}


def setup_breakdown(times: Sequence[SetupTimes]) -> dict[str, float | None]:
    """Median of each step of setup, in ms: where the time goes."""

    Pick = Callable[[SetupTimes], float | None]

    def step(start: Pick, end: Pick) -> float | None:
        spans = [e - s for t in times if (s := start(t)) is not None and (e := end(t)) is not None]
        return percentile(spans, 50)

    return {
        "to_process_spawned": step(lambda t: 0.0, lambda t: t.process_spawned_ms),
        "to_accepted": step(lambda t: 0.0, lambda t: t.accepted_ms),
        "accepted_to_ice_started": step(lambda t: t.accepted_ms, lambda t: t.ice_started_ms),
        "ice_started_to_connected": step(lambda t: t.ice_started_ms, lambda t: t.connected_ms),
        "connected_to_dc_open": step(lambda t: t.connected_ms, lambda t: t.dc_open_ms),
        "dc_open_to_first_frame": step(lambda t: t.dc_open_ms, lambda t: t.first_frame_ms),
        "close_to_ready_again": step(lambda t: 0.0, lambda t: t.ready_again_ms),
    }


def _limit(letter: str) -> float:
    return SETUP_DC_RATIO if letter in "ac" else SETUP_FRAME_RATIO


def _setup_rows(setup: SetupFigures) -> list[Row]:
    floors = bare_series(setup)
    rows: list[Row] = []
    for mode in SETUP_MODES:
        run = setup.run(mode.key)
        series = setup_series(run.times)
        n = f"n={len(run.times)}"
        for letter in mode.shown:
            values, floor, limit = series[letter], floors[letter], _limit(letter)
            judged = letter in mode.judged
            name = f"setup {mode.label} ({letter}) {SETUP_FIGURE_NAMES[letter]}"
            p50, p99 = percentile(values, 50), percentile(values, 99)
            f50, f99 = percentile(floor, 50), percentile(floor, 99)
            ratio = _ratio(p50, f50)
            if judged:
                target, result = (
                    f"<= {limit}x bare",
                    _verdict(None if ratio is None else ratio <= limit),
                )
            else:
                target, result = f"(incl. the {mode.accept_delay_s:g} s to accept)", ""
            rows.append(
                Row(
                    f"{name} p50 ({n})",
                    _fmt(p50, " ms", 0),
                    f"bare {_fmt(f50, ' ms', 0)} = {_fmt(ratio, 'x', 2)}",
                    target,
                    result,
                )
            )
            rows.append(
                Row(
                    f"{name} p99",
                    _fmt(p99, " ms", 0),
                    f"bare {_fmt(f99, ' ms', 0)} = {_fmt(_ratio(p99, f99), 'x', 2)}",
                    "",
                    "",
                )
            )
        if mode.prewarm:
            used = [t.spare_used for t in run.times if t.spare_used is not None]
            ages = [-t.process_spawned_ms for t in run.times if t.process_spawned_ms is not None]
            age = _fmt(percentile(ages, 50), " ms", 0)
            rows.append(
                Row(
                    f"setup {mode.label}: calls taken by a warm spare",
                    f"{sum(used)}/{len(run.times)}, spare age p50 {age}",
                    "",
                    "",
                    "",
                )
            )
            ready_again = [t.ready_again_ms for t in run.times if t.ready_again_ms is not None]
            spawn_again = [
                t.ready_again_ms for t in setup.runs[0].times if t.ready_again_ms is not None
            ]
            rows.append(
                Row(
                    f"setup {mode.label}: close -> next spare seen warm p50",
                    _fmt(percentile(ready_again, 50), " ms", 0),
                    f"spawn: close -> ready {_fmt(percentile(spawn_again, 50), ' ms', 0)}",
                    "",
                    "",
                )
            )
    if setup.process_start_ms:
        rows.append(
            Row(
                "session process start alone (python+imports)",
                _fmt(percentile(setup.process_start_ms, 50), " ms", 0),
                "",
                "",
                "",
            )
        )
    return rows


def _chat_rows(chat: ChatFigures) -> list[Row]:
    rows: list[Row] = []
    ours, bare = chat.ours_ms, chat.bare_ms
    p99 = percentile(ours, 99)
    rows.append(
        Row(
            f"chat round trip p50 (n={len(ours)})",
            _fmt(percentile(ours, 50), " ms", 2),
            f"bare echo {_fmt(percentile(bare, 50), ' ms', 2)}",
            "",
            "",
        )
    )
    rows.append(
        Row(
            "chat round trip p99",
            _fmt(p99, " ms", 2),
            f"bare echo {_fmt(percentile(bare, 99), ' ms', 2)}",
            f"< {CHAT_P99_MS:g} ms",
            _verdict(None if p99 is None else p99 < CHAT_P99_MS),
        )
    )
    if chat.during_video_ms:
        during = chat.during_video_ms
        rows.append(
            Row(
                f"chat p50/p99 during {chat.during_video}",
                f"{_fmt(percentile(during, 50), '', 2)}/{_fmt(percentile(during, 99), ' ms', 2)}",
                "",
                "",
                "",
            )
        )
    return rows


def _find(
    runs: Sequence[VideoRun], size: tuple[int, int], codec: str, settings: str
) -> VideoRun | None:
    for r in runs:
        if (r.width, r.height, r.codec, r.settings) == (*size, codec, settings):
            return r
    return None


def _fps_pair(run: VideoRun | None) -> str:
    if run is None:
        return "n/a"
    if run.error:
        return "error"
    return f"{_fmt(run.console_fps_received)} / {_fmt(run.device_fps_received)}"


def _video_rows(runs: Sequence[VideoRun], offline_runs: Sequence[OfflineEncode]) -> list[Row]:
    rows: list[Row] = []
    for size in SIZES:
        for codec in CODECS:
            ours = _find(runs, size, codec, "interactive")
            base = _find(runs, size, codec, "aiortc")
            label = f"{size[0]}x{size[1]} {codec}"
            fps_ok: bool | None = None
            if ours is not None and not ours.error:
                pair = (ours.console_fps_received, ours.device_fps_received)
                if None not in pair:
                    fps_ok = all(f is not None and f >= SUSTAINED_FPS for f in pair)
            is_720 = size == SIZES[-1]
            rows.append(
                Row(
                    f"video {label} fps recv console/device",
                    _fps_pair(ours),
                    f"aiortc enc: {_fps_pair(base)}",
                    f">= {SUSTAINED_FPS:g} both" if is_720 else "",
                    _verdict(fps_ok) if is_720 else "",
                )
            )

            def cpu(run: VideoRun | None) -> str:
                if run is None or run.error:
                    return "n/a"
                return f"{_fmt(run.console_cpu_pct, '%', 0)} / {_fmt(run.device_cpu_pct, '%', 0)}"

            rows.append(
                Row(
                    f"video {label} CPU console/device",
                    cpu(ours),
                    f"aiortc enc: {cpu(base)}",
                    "",
                    "",
                )
            )
            rows.append(_encode_row(label, codec, ours, base))
            offline = {o.settings: o for o in offline_runs if (o.width, o.height) == size}
            offline = {k: o for k, o in offline.items() if o.codec == codec}
            if offline:
                rows.append(_offline_row(label, codec, offline))
    for run in runs:
        if (run.width, run.height) == SIZES[-1] and run.session_rss_mib is not None:
            rows.append(
                Row(
                    f"session process RSS, {run.label} {run.settings}",
                    _fmt(run.session_rss_mib, " MiB"),
                    "",
                    "",
                    "",
                )
            )
    return rows


def _encode_ms(run: VideoRun | None) -> str:
    if run is None or run.encode_ms is None:
        return "n/a"
    return f"{run.encode_ms:.1f} ms" + ("?" if run.encode_suspect else "")


def process_cpu_estimate(ours: VideoRun | None, base: VideoRun | None) -> float | None:
    """aiortc's encode ms/frame as our encoder's figure plus all the extra CPU the
    console process spent in the aiortc-default call (a cross-check for a meter
    figure that lost CPU; it also carries any difference in decoding and bitrate)."""
    if ours is None or base is None or ours.encode_ms is None:
        return None
    if ours.console_cpu_pct is None or base.console_cpu_pct is None:
        return None
    return round(ours.encode_ms + (base.console_cpu_pct - ours.console_cpu_pct) * 10 / FPS, 2)


def _encode_row(label: str, codec: str, ours: VideoRun | None, base: VideoRun | None) -> Row:
    figure = f"video {label} encode (console sender)"
    suspect = any(r is not None and r.encode_suspect for r in (ours, base))
    if codec == "VP8":
        pct = ours.encode_core_pct if ours is not None else None
        base_pct = base.encode_core_pct if base is not None else None
        ok = (
            None
            if pct is None or (ours is not None and ours.encode_suspect)
            else pct < VP8_CORE_PCT
        )
        return Row(
            figure,
            f"{_encode_ms(ours)} = {_fmt(pct, '%')}",
            f"aiortc {_encode_ms(base)} = {_fmt(base_pct, '%')}",
            f"< {VP8_CORE_PCT:g}% of a core",
            _verdict(ok),
        )
    ours_ms = ours.encode_ms if ours is not None else None
    base_ms = base.encode_ms if base is not None else None
    cheaper = _ratio(base_ms, ours_ms)
    floor = f"aiortc {_encode_ms(base)}"
    if suspect:
        estimate = process_cpu_estimate(ours, base)
        floor += f" (meter lost CPU; process CPU: ~{_fmt(estimate, ' ms')}"
        floor += f" = {_fmt(_ratio(estimate, ours_ms), 'x')})"
    return Row(
        figure,
        f"{_encode_ms(ours)} = {_fmt(cheaper, 'x', 1)} cheaper",
        floor,
        f">= {H264_CHEAPER:g}x cheaper",
        _verdict(None if cheaper is None or suspect else cheaper >= H264_CHEAPER),
    )


def _offline_row(label: str, codec: str, runs: dict[str, OfflineEncode]) -> Row:
    ours, base = runs.get("interactive"), runs.get("aiortc")
    ours_ms = ours.cpu_ms if ours is not None else None
    base_ms = base.cpu_ms if base is not None else None
    figure = f"video {label} encode alone, same frames"
    if codec == "VP8":
        pct = None if ours_ms is None else ours_ms * FPS / 10
        base_pct = None if base_ms is None else base_ms * FPS / 10
        return Row(
            figure,
            f"{_fmt(ours_ms, ' ms')} = {_fmt(pct, '%')}",
            f"aiortc {_fmt(base_ms, ' ms')} = {_fmt(base_pct, '%')}",
            f"< {VP8_CORE_PCT:g}% of a core",
            _verdict(None if pct is None else pct < VP8_CORE_PCT),
        )
    cheaper = _ratio(base_ms, ours_ms)
    return Row(
        figure,
        f"{_fmt(ours_ms, ' ms')} = {_fmt(cheaper, 'x', 1)} cheaper",
        f"aiortc {_fmt(base_ms, ' ms')}",
        f">= {H264_CHEAPER:g}x cheaper",
        _verdict(None if cheaper is None else cheaper >= H264_CHEAPER),
    )


def _loaded(native: Sequence[str]) -> list[str]:
    """What the mapped paths are, by :data:`NATIVE_MARKERS`."""
    return sorted({NATIVE_MARKERS[m] for p in native for m in NATIVE_MARKERS if m in p})


def _families(native: Sequence[str]) -> list[str]:
    """The mapped libraries in short: PyAV+FFmpeg, aiortc, srtp."""
    families = {"PyAV+FFmpeg": ("/av/", "/av.libs/", "/libav"), "aiortc": ("google_crc32c",)}
    families["srtp"] = ("srtp",)
    return [
        name
        for name, markers in families.items()
        if any(marker in path for path in native for marker in markers)
    ]


def _memory_rows(memory: MemoryFigures) -> list[Row]:
    rows: list[Row] = []
    for name, rss, native in (
        ("agent RSS idle, before any session", memory.agent_idle_rss_mib, memory.agent_idle_native),
        (
            f"agent RSS idle, after {memory.sessions_served} sessions",
            memory.agent_after_rss_mib,
            memory.agent_after_native,
        ),
        (
            "prewarm: agent RSS idle (its spare ready)",
            memory.prewarm_agent_rss_mib,
            memory.prewarm_agent_native,
        ),
    ):
        loaded = _loaded(native)
        ok = None if rss is None else rss < AGENT_RSS_MIB and not loaded
        libs = "none of PyAV/libav/aiortc/srtp" if not loaded else "LOADED: " + ", ".join(loaded)
        rows.append(
            Row(
                name,
                f"{_fmt(rss, ' MiB')}, {libs}" if rss is not None else "n/a",
                "",
                f"< {AGENT_RSS_MIB:g} MiB, none loaded",
                _verdict(ok),
            )
        )
    rss = percentile(memory.spare_idle_rss_mib, 50)
    anon = percentile(memory.spare_idle_anon_mib, 50)
    loaded = _families(memory.spare_native)
    rows.append(
        Row(
            f"prewarm: spare session process RSS idle (n={len(memory.spare_idle_rss_mib)})",
            f"{_fmt(rss, ' MiB')} (anon {_fmt(anon, ' MiB')}), "
            + (f"{'+'.join(loaded)} loaded" if loaded else "none loaded"),
            f"agent alone {_fmt(memory.agent_idle_rss_mib, ' MiB')}",
            "",
            "",
        )
    )
    return rows


def summary_rows(bench: CallBench) -> list[Row]:
    return [
        *_setup_rows(bench.setup),
        *_chat_rows(bench.chat),
        *_video_rows(bench.video, bench.offline),
        *_memory_rows(bench.memory),
    ]


def format_table(rows: Sequence[Row]) -> str:
    header = Row("figure", "ours", "floor / baseline", "target", "result")
    cells = [dataclasses.astuple(row) for row in (header, *rows)]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(dataclasses.fields(Row)))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def setup_story(setup: SetupFigures) -> list[str]:
    """Where setup time goes, in words: the median of each step, ours and bare."""
    bare = setup_breakdown(setup.bare)

    def ms(value: float | None) -> str:
        return _fmt(value, " ms", 0)

    lines: list[str] = []
    for mode in SETUP_MODES:
        run = setup.run(mode.key)
        if not run.times:
            continue
        ours = setup_breakdown(run.times)
        spawned = ours["to_process_spawned"]
        if spawned is not None and spawned < 0:
            where = f"the spare session process started {ms(-spawned)} before the invite"
        else:
            where = f"session process spawned at {ms(spawned)}"
        lines.append(
            f"Setup steps, {mode.label} (medians from the invite): {where}, accepted at "
            f"{ms(ours['to_accepted'])}; accepted -> ICE started (offer made, relayed, "
            f"answered, relayed back) {ms(ours['accepted_to_ice_started'])} vs bare "
            f"{ms(bare['accepted_to_ice_started'])}; ICE + DTLS "
            f"{ms(ours['ice_started_to_connected'])} vs {ms(bare['ice_started_to_connected'])}; "
            f"SCTP to chat open {ms(ours['connected_to_dc_open'])} vs "
            f"{ms(bare['connected_to_dc_open'])}; chat open -> 1st frame "
            f"{ms(ours['dc_open_to_first_frame'])} vs {ms(bare['dc_open_to_first_frame'])}."
        )
    start = percentile(setup.process_start_ms, 50)
    spawned = setup_breakdown(setup.run(SETUP_MODES[0].key).times)["to_process_spawned"]
    if start is not None and spawned is not None:
        lines.append(
            f"A session process alone needs {ms(start)} to start (python + imports): spawned "
            f"at {ms(spawned)}, it can answer from about {ms(spawned + start)} after the "
            "invite, whenever the user accepts; an instant accept waits for it, a person "
            f"taking {ACCEPT_DELAY_S:g} s does not, and a prewarmed spare has already done it."
        )
    return lines


def memory_story(memory: MemoryFigures) -> list[str]:
    """The memory price of --prewarm, plainly."""
    rss = percentile(memory.spare_idle_rss_mib, 50)
    anon = percentile(memory.spare_idle_anon_mib, 50)
    agent = memory.prewarm_agent_rss_mib
    if rss is None or agent is None:
        return []
    agent_loaded = _loaded(memory.prewarm_agent_native)
    spare_loaded = _families(memory.spare_native)
    return [
        f"Prewarm's memory price: while the device is idle, its spare session process "
        f"holds {rss:.1f} MiB RSS ({_fmt(anon, ' MiB')} of it anonymous: heap, never "
        f"shared), with {', '.join(spare_loaded) or 'nothing'} loaded, beside the agent's "
        f"{agent:.1f} MiB: {agent + rss:.1f} MiB RSS in all instead of "
        f"{_fmt(memory.agent_idle_rss_mib, ' MiB')} for the agent alone (RSS counts "
        "python's own code in both). The agent itself "
        + (
            "still maps none of PyAV/libav/aiortc/srtp."
            if not agent_loaded
            else "maps " + ", ".join(agent_loaded) + "."
        )
    ]


def verdict_lines(bench: CallBench, rows: Sequence[Row]) -> list[str]:
    """Plain sentences: what passes, what does not, and where setup time goes."""
    lines: list[str] = []
    for mode in SETUP_MODES:
        prefix = f"setup {mode.label} ("
        judged = [r for r in rows if r.figure.startswith(prefix) and r.result]
        said = "; ".join(
            f"{r.figure.removeprefix(f'setup {mode.label} ').split(' p50')[0]} "
            f"{r.floor.split(' = ')[-1]} {r.result}"
            for r in judged
        )
        lines.append(
            f"Setup, {mode.title}, judged from {mode.judged_from} (chat open <= "
            f"{SETUP_DC_RATIO}x bare, 1st frame <= {SETUP_FRAME_RATIO}x, p50): {said}."
        )
    lines += setup_story(bench.setup)
    lines += memory_story(bench.memory)
    failed = [row.figure for row in rows if row.result == "FAIL"]
    passed = sum(row.result == "PASS" for row in rows)
    lines.append(
        f"Targets: {passed} pass, {len(failed)} fail"
        + (": " + "; ".join(failed) if failed else "")
        + "."
    )
    if bench.errors:
        lines.append(f"Errors ({len(bench.errors)}): " + " | ".join(bench.errors))
    return lines


def to_json(bench: CallBench) -> dict[str, Any]:
    """Every raw figure, the derived percentiles and the table, JSON-ready."""
    raw = dataclasses.asdict(bench)
    for run, data in zip(bench.video, raw["video"], strict=True):
        data["encode_core_pct"] = run.encode_core_pct
    letters = {
        "a_invite_to_dc": "a",
        "b_invite_to_frame": "b",
        "c_accept_to_dc": "c",
        "d_accept_to_frame": "d",
    }
    series = {run.mode: setup_series(run.times) for run in bench.setup.runs}
    bare = bare_series(bench.setup)
    derived: dict[str, Any] = {
        "setup_ms": {
            **{
                mode: {
                    name: {"p50": percentile(values[k], 50), "p99": percentile(values[k], 99)}
                    for name, k in letters.items()
                }
                for mode, values in series.items()
            },
            "bare": {
                name: {"p50": percentile(bare[k], 50), "p99": percentile(bare[k], 99)}
                for name, k in (("dc", "a"), ("frame", "b"))
            },
        },
        "setup_breakdown_p50_ms": {
            **{run.mode: setup_breakdown(run.times) for run in bench.setup.runs},
            "bare": setup_breakdown(bench.setup.bare),
        },
        "chat_ms": {
            name: {"p50": percentile(values, 50), "p99": percentile(values, 99)}
            for name, values in (
                ("ours", bench.chat.ours_ms),
                ("bare", bench.chat.bare_ms),
                ("during_video", bench.chat.during_video_ms),
            )
        },
    }
    encode: dict[str, dict[str, float | None]] = {}
    for size in SIZES:
        for codec in CODECS:
            ours = _find(bench.video, size, codec, "interactive")
            base = _find(bench.video, size, codec, "aiortc")
            alone = {
                o.settings: o.cpu_ms
                for o in bench.offline
                if (o.width, o.height, o.codec) == (*size, codec)
            }
            ours_ms = ours.encode_ms if ours is not None else None
            encode[f"{size[0]}x{size[1]} {codec}"] = {
                "aiortc_over_ours_meter": _ratio(base.encode_ms if base else None, ours_ms),
                "aiortc_process_cpu_estimate_ms": process_cpu_estimate(ours, base),
                "aiortc_over_ours_alone": _ratio(alone.get("aiortc"), alone.get("interactive")),
            }
    derived["encode"] = encode
    rows = summary_rows(bench)
    targets = {
        "setup_dc_ratio_p50": SETUP_DC_RATIO,
        "setup_first_frame_ratio_p50": SETUP_FRAME_RATIO,
        "chat_p99_ms": CHAT_P99_MS,
        "sustained_fps": SUSTAINED_FPS,
        "vp8_encode_core_pct": VP8_CORE_PCT,
        "h264_cheaper_than_aiortc": H264_CHEAPER,
        "agent_idle_rss_mib": AGENT_RSS_MIB,
    }
    return {
        **raw,
        "derived": derived,
        "targets": targets,
        "table": [dataclasses.asdict(row) for row in rows],
        "verdicts": verdict_lines(bench, rows),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.calls",
        description="Session setup, chat round trip, two-way video and memory of our "
        "call stack, each beside its floor.",
    )
    parser.add_argument("--quick", action="store_true", help="5 sessions, 3 s video windows")
    parser.add_argument("--sessions", type=int, help="setup sessions (default 20, quick 5)")
    parser.add_argument("--video-seconds", type=float, help="video window (default 10, quick 3)")
    parser.add_argument("--out", type=Path, default=Path("build/bench/calls.json"))
    args = parser.parse_args(argv)
    plan = Plan.of(args.quick)
    if args.sessions:
        plan = dataclasses.replace(plan, sessions=args.sessions)
    if args.video_seconds:
        plan = dataclasses.replace(plan, video_window_s=args.video_seconds)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s bench %(name)s: %(message)s")
    # Loopback only: this process's calls (bare and console) and, through the
    # environment, every process it starts (server, admin, agent, session processes).
    os.environ[ice.ENV] = "127.0.0.1"
    ice.restrict_host_addresses(["127.0.0.1"])
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        bench = asyncio.run(run(plan, args.quick, Path(tmp)))
    rows = summary_rows(bench)
    print(
        f"\nLive Support call benchmark, {bench.date}, {bench.machine['cpus']} CPUs "
        f"({bench.machine['cpu_model']}), aiortc {bench.machine['aiortc']}, "
        f"PyAV {bench.machine['av']}, {'quick' if bench.quick else 'full'} run "
        f"in {bench.seconds:.0f} s\n"
    )
    for when in ("start", "end"):
        load = bench.machine.get(f"background_at_{when}") or {}
        for other in load.get("busy_processes", []):
            print(
                f"WARNING: busy at the {when}: pid {other['pid']} at {other['cpu_pct']}% of a "
                f"core ({other['command']}); wall-clock figures are inflated"
            )
    print(format_table(rows))
    print()
    for line in verdict_lines(bench, rows):
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_json(bench), indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
