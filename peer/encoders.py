"""Video encoder settings for interactive calls on small machines, and their meter.

What aiortc (1.16) does by itself. Its encoders build their codec context inside
``encode()`` from constants: VP8 (libvpx) with deadline "realtime", cpu-used -6, the
adaptive temporal denoiser (noise-sensitivity 4) and one thread below 3 CPUs
(``aiortc.codecs.vpx.number_of_threads``); H.264 (libx264) with tune "zerolatency" but
x264's default preset "medium" and x264's own thread count. On a 2-core device the
"medium" preset alone can eat most of a core at 720p (figures next to
:data:`INTERACTIVE`, from ``python -m bench.encoders``).

Why this hook. aiortc offers no public encoder configuration: no option on
``RTCPeerConnection``, ``RTCRtpSender`` or the codecs. ``RTCRtpSender`` creates its
encoder when the first frame is to be sent, by calling the name ``get_encoder`` that
``aiortc.rtcrtpsender`` imported from ``aiortc.codecs``. Replacing that one module
attribute is the smallest seam there is: no fork, no copy of aiortc's packetizers or
RTP code, and nothing to undo but one assignment. :func:`install` puts a wrapper there
that builds :class:`TunedVp8Encoder` / :class:`TunedH264Encoder` for video and hands
every other codec (audio) to aiortc's own function; ``install(None)`` puts aiortc's
function back.

Process-wide. The name lives in aiortc's module, so :func:`install` affects every
sender of this process that starts encoding afterwards, whichever peer connection it
belongs to (a sender already encoding keeps the encoder it has). It is meant to be
called once per device session process, before the call starts.

How the tuned encoders work. They subclass aiortc's and change only how the codec
context is configured: before delegating to aiortc's ``encode()``, they test the
condition under which aiortc would (re)create its context (none yet, another frame
size, or a target bitrate more than 10 % away from the context's) and, when it holds,
create and open their own context from the settings and the current
``target_bitrate``. aiortc then finds a context that fits the frame and keeps using
it, so packetization, picture ids, keyframe requests and the bitrate the receiver
asks for (REMB sets ``target_bitrate``; the next frame gets a new context) all stay
aiortc's.

Measuring. Each tuned encoder carries an :class:`EncodeMeter`; ``encoder.stats()``
gives the CPU and wall time spent in ``encode()`` per frame while the call runs (see
:func:`live_encoders`). ``time.thread_time()`` around the call would miss the work
libvpx (threads > 1) and x264 (sliced threads) do on threads of their own, and process
CPU time around it would also count whatever else the process does meanwhile (the
event loop, audio, decoding the peer's video). So the meter counts the calling
thread's CPU time plus that of the codec's own worker threads, read through Linux
per-thread CPU clocks; see :class:`EncodeMeter` for how the workers are told apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Final, Literal, TypeAlias

import aiortc.codecs
import aiortc.rtcrtpsender
import av
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame
from av.video.codeccontext import VideoCodecContext

logger = logging.getLogger(__name__)

#: x264's presets, fastest first.
H264_PRESETS: Final = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)

# What aiortc 1.16 uses where a field of EncoderSettings is None. The tuned encoders
# need them when they configure a context themselves; a test reads aiortc's own
# context back (FFmpeg's debug log of the libvpx configuration, x264's settings SEI)
# and fails if an aiortc upgrade changes them.
AIORTC_VP8_CPU_USED: Final = -6
AIORTC_VP8_NOISE_SENSITIVITY: Final = 4
AIORTC_VP8_QMAX: Final = 56
AIORTC_H264_TUNE: Final = "zerolatency"


@dataclasses.dataclass(frozen=True, slots=True)
class EncoderSettings:
    """How to configure the video encoders. ``None`` everywhere means aiortc's choice.

    A codec whose fields are all ``None`` is left to aiortc entirely (its context is
    aiortc's own, byte for byte); one set field makes the tuned encoder configure the
    context itself, with aiortc's values for the other fields.
    """

    #: libvpx threads. aiortc: ``number_of_threads()``, i.e. 1 below 3 CPUs.
    vp8_threads: int | None = None
    #: libvpx cpu-used in realtime mode: -16..-1 fix the speed step (16 fastest);
    #: 0..16 let libvpx pick the step to stay within (16 - n)/16 of the frame interval.
    vp8_cpu_used: int | None = None
    #: libvpx temporal denoiser: 0 off, 1 luma only, ... 4 adaptive (aiortc). It runs
    #: on every frame before encoding, so it is a large part of the per-frame cost.
    vp8_noise_sensitivity: int | None = None
    #: libvpx's highest quantizer (rc_max_quantizer, up to 63; aiortc: 56). When the
    #: bitrate cannot carry the picture at this quantizer, libvpx exceeds the bitrate
    #: rather than quantize harder; the faster speed steps need a little more room.
    vp8_qmax: int | None = None
    #: x264 preset; ``None`` leaves x264's default, "medium".
    h264_preset: str | None = None
    #: x264 tune(s), comma separated; must include "zerolatency" (no B-frames, no
    #: look-ahead: one frame in, one frame out, which aiortc's sender relies on).
    h264_tune: str | None = None
    #: x264 threads (sliced threads under zerolatency); ``None``: x264 decides.
    h264_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("vp8_threads", "h264_threads"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 16:
                raise ValueError(f"{name} must be 1..16, not {value}")
        if self.vp8_cpu_used is not None and not -16 <= self.vp8_cpu_used <= 16:
            raise ValueError(f"vp8_cpu_used must be -16..16, not {self.vp8_cpu_used}")
        if self.vp8_qmax is not None and not 8 <= self.vp8_qmax <= 63:
            raise ValueError(f"vp8_qmax must be 8..63, not {self.vp8_qmax}")
        if self.vp8_noise_sensitivity is not None and not 0 <= self.vp8_noise_sensitivity <= 6:
            raise ValueError(
                f"vp8_noise_sensitivity must be 0..6, not {self.vp8_noise_sensitivity}"
            )
        if self.h264_preset is not None and self.h264_preset not in H264_PRESETS:
            raise ValueError(f"unknown x264 preset {self.h264_preset!r}")
        if self.h264_tune is not None and "zerolatency" not in self.h264_tune.split(","):
            raise ValueError("h264_tune must include 'zerolatency' for an interactive call")

    @property
    def configures_vp8(self) -> bool:
        vp8 = (self.vp8_threads, self.vp8_cpu_used, self.vp8_noise_sensitivity, self.vp8_qmax)
        return vp8 != (None, None, None, None)

    @property
    def configures_h264(self) -> bool:
        return (self.h264_preset, self.h264_tune, self.h264_threads) != (None, None, None)

    def vp8_label(self) -> str:
        """Short name for tables, e.g. ``vp8 t1 cpu-12 nr0`` or ``vp8 aiortc``."""
        if not self.configures_vp8:
            return "vp8 aiortc"
        parts = ["vp8"]
        if self.vp8_threads is not None:
            parts.append(f"t{self.vp8_threads}")
        if self.vp8_cpu_used is not None:
            parts.append(f"cpu{self.vp8_cpu_used:+d}")
        if self.vp8_noise_sensitivity is not None:
            parts.append(f"nr{self.vp8_noise_sensitivity}")
        if self.vp8_qmax is not None:
            parts.append(f"q{self.vp8_qmax}")
        return " ".join(parts)

    def h264_label(self) -> str:
        """Short name for tables, e.g. ``h264 ultrafast t1`` or ``h264 aiortc``."""
        if not self.configures_h264:
            return "h264 aiortc"
        parts = ["h264", self.h264_preset or "medium"]
        if self.h264_tune not in (None, AIORTC_H264_TUNE):
            parts.append(str(self.h264_tune))
        if self.h264_threads is not None:
            parts.append(f"t{self.h264_threads}")
        return " ".join(parts)


#: Use aiortc's own encoder configuration (the tuned classes then only measure).
AIORTC_DEFAULT: Final = EncoderSettings()

#: What a support call uses on a small machine (2 cores). Chosen with
#: ``python -m bench.encoders`` as the cheapest settings whose luma PSNR stays within
#: 1.5 dB of aiortc's default at 640x480 and 1280x720, at aiortc's starting bitrate
#: and at 1.5 Mbps, without sending more than 15 % over the target (or over what
#: aiortc's default sends). Measured on a 2-CPU AMD EPYC VM, aiortc 1.16, PyAV 18.1,
#: "camera" content, 300 frames after 30; CPU = process CPU time per frame:
#:
#:   VP8, 1280x720        500 kbps                     1500 kbps
#:     aiortc (cpu-6 nr4) 7.49 ms 22.5 % 28.65 dB 621k  8.69 ms 26.1 % 31.25 dB 1495k
#:     INTERACTIVE        4.63 ms 13.9 % 27.28 dB 569k  5.45 ms 16.4 % 30.50 dB 1499k
#:   VP8, 640x480: 2.93 -> 1.73 ms (-0.27 dB), 3.44 -> 2.56 ms (-0.16 dB)
#:   H.264, 1280x720      1000 kbps                    1500 kbps
#:     aiortc (medium)   18.87 ms 56.6 % 29.70 dB      23.65 ms 71.0 % 31.18 dB
#:     INTERACTIVE        4.39 ms 13.2 % 29.73 dB       4.63 ms 13.9 % 31.09 dB
#:   H.264, 640x480: 13.85 -> 1.68 ms (-0.81 dB), 14.96 -> 2.10 ms (-1.15 dB)
#:
#: On FFmpeg's testsrc2 (``--content testsrc2``) at 720p: VP8 3.95-4.24 ms against
#: aiortc's 6.31-7.01, H.264 3.64-3.85 ms against 13.33-15.47, within 1.1 dB.
#:
#: So 720p30 VP8 takes 14-16 % of a core (aiortc's: 22-26 %, over the 25 % budget at
#: 1.5 Mbps) and H.264 is 4.3-5.1x cheaper at 720p, 7-8x at 480p. Why each value:
#:
#: - vp8_threads=1: libvpx's VP8 threads wait for each other by spinning. With the
#:   other core busy (the rest of the call; ``--busy 1``) two threads cost 1.3-8x the
#:   CPU of one (720p, cpu-6: 27.6 ms against 9.3 ms); on an idle machine they save
#:   wall time, not CPU. aiortc also uses one thread below 3 CPUs.
#: - vp8_cpu_used=-8: -6 -> -8 saves a quarter of the CPU for <= 0.75 dB; -10 and -12
#:   save 3-5 % more and lose 1.3-1.8 dB; -16 ignores the bitrate (it sends 2.5 Mbps
#:   at 720p whatever the target).
#: - vp8_noise_sensitivity=0: the denoiser costs 10-20 % of the encode and gains no
#:   PSNR here (within 0.1 dB); most cameras denoise in their own processing.
#: - vp8_qmax=63: at 720p and 500 kbps (where aiortc starts, until the first REMB)
#:   qmax 56 cannot hold the rate: aiortc sends 621k, cpu-8 would send 775k; with
#:   the full range it sends 569k, at 1.37 dB below aiortc's overshooting picture.
#:   Elsewhere the quantizer rarely gets there: the figures move by < 0.1 dB.
#: - h264 superfast: veryfast is not 3x cheaper at 720p (2.7x), ultrafast loses
#:   2.7-4.3 dB (no deblocking, no sub-pixel refinement).
#: - h264_threads=1: sliced threads save no CPU, cost a little quality per slice and
#:   would compete with the rest of the call for the second core.
INTERACTIVE: Final = EncoderSettings(
    vp8_threads=1,
    vp8_cpu_used=-8,
    vp8_noise_sensitivity=0,
    vp8_qmax=63,
    h264_preset="superfast",
    h264_tune="zerolatency",
    h264_threads=1,
)


# -- measuring ----------------------------------------------------------------------

Method: TypeAlias = Literal["threads", "process"]

# Per-thread CPU clocks of threads Python did not start (libvpx's, x264's) can only be
# read by thread id on Linux; elsewhere the meter falls back to process CPU time.
_PER_THREAD_CLOCKS: Final = sys.platform.startswith("linux") and os.path.isdir("/proc/self/task")

# A codec's workers sleep between frames; one that ran longer than this between two
# encodes is someone else's thread (adopted by mistake, see EncodeMeter) and dropped.
_IDLE_SLACK_NS: Final = 1_000_000


def _thread_cpu_ns(tid: int) -> int | None:
    """CPU time of thread ``tid`` of this process; ``None`` once it has exited."""
    # Linux names "the scheduler CPU clock of thread tid" (CPUCLOCK_PERTHREAD_MASK |
    # CPUCLOCK_SCHED) as ~tid << 3 | 6; glibc's pthread_getcpuclockid builds the same
    # id. Unlike time.pthread_getcpuclockid it needs only the kernel thread id, which
    # is all we know of a thread that libvpx or x264 started.
    try:
        return time.clock_gettime_ns((~tid << 3) | 6)
    except OSError:
        return None


def _native_thread_ids() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _python_thread_ids() -> set[int]:
    return {t.native_id for t in threading.enumerate() if t.native_id is not None}


@dataclasses.dataclass(frozen=True, slots=True)
class EncodeStats:
    """What an encoder spent, summed over ``frames`` calls of ``encode()``."""

    frames: int = 0
    #: CPU time of the encoding thread and of the codec's worker threads.
    cpu_ns: int = 0
    #: Wall time inside ``encode()``: the latency the sender adds per frame.
    wall_ns: int = 0
    #: Codec contexts opened: the first, plus one per change of frame size or of the
    #: target bitrate by more than 10 % (each starts with a keyframe).
    contexts: int = 0
    #: Codec worker threads currently counted (0 for a single-threaded codec).
    worker_threads: int = 0
    #: "threads": calling thread + codec workers (Linux); "process": process CPU time
    #: around each call, which also counts anything else the process did meanwhile.
    method: Method = "threads"

    @property
    def encode_ms(self) -> float:
        """CPU milliseconds per frame (0.0 before the first frame)."""
        return self.cpu_ns / self.frames / 1e6 if self.frames else 0.0

    @property
    def wall_ms(self) -> float:
        """Wall milliseconds per frame (0.0 before the first frame)."""
        return self.wall_ns / self.frames / 1e6 if self.frames else 0.0

    def since(self, earlier: EncodeStats) -> EncodeStats:
        """The figures of the frames encoded after ``earlier`` was taken (a window)."""
        return dataclasses.replace(
            self,
            frames=self.frames - earlier.frames,
            cpu_ns=self.cpu_ns - earlier.cpu_ns,
            wall_ns=self.wall_ns - earlier.wall_ns,
            contexts=self.contexts - earlier.contexts,
        )


class EncodeMeter:
    """CPU time spent encoding by one encoder, its own worker threads included.

    Per call of ``encode()``: the calling thread's CPU time (``thread_time``) plus the
    CPU time the codec's worker threads gained meanwhile. The workers are the native
    threads that appear during a call that opens a codec context, less the threads
    Python knows (an executor thread started at that moment); libvpx and x264 start
    them in their open and join them when the context is freed. Their CPU is read
    through Linux per-thread clocks by thread id.

    A thread of another native library started in the same instant (say the decoder
    of the incoming video) would be adopted by mistake, so it is checked: a codec's
    workers only run inside ``encode()`` (libvpx waits for its row and loop-filter
    threads before returning; x264 under zerolatency has no look-ahead thread and
    waits for its slices), so a worker that ran between two calls is dropped.

    Calls of one encoder never overlap (aiortc's sender awaits each), but they may
    run on different executor threads and ``stats()`` is read from the event loop,
    hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames = 0
        self._cpu_ns = 0
        self._wall_ns = 0
        self._contexts = 0
        # worker thread id -> its CPU clock at the end of the last call
        self._workers: dict[int, int] = {}
        self._method: Method = "threads" if _PER_THREAD_CLOCKS else "process"

    def stats(self) -> EncodeStats:
        with self._lock:
            return EncodeStats(
                frames=self._frames,
                cpu_ns=self._cpu_ns,
                wall_ns=self._wall_ns,
                contexts=self._contexts,
                worker_threads=len(self._workers),
                method=self._method,
            )

    @contextlib.contextmanager
    def measure(self, *, opens_codec: bool) -> Iterator[None]:
        """Count the body as one encoded frame; ``opens_codec``: it opens a new context
        (look for the threads it starts)."""
        if opens_codec:
            with self._lock:
                self._contexts += 1
        if self._method == "process":
            cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
            try:
                yield
            finally:
                self._add(time.process_time_ns() - cpu0, time.perf_counter_ns() - wall0)
            return

        before = _native_thread_ids() if opens_codec else None
        with self._lock:
            start = self._workers_at_start()
        own0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
        try:
            yield
        finally:
            own = time.thread_time_ns() - own0
            wall = time.perf_counter_ns() - wall0
            with self._lock:
                workers = self._workers_at_end(start)
                if before is not None:
                    workers += self._adopt_new_workers(before)
            self._add(own + workers, wall)

    def _add(self, cpu_ns: int, wall_ns: int) -> None:
        with self._lock:
            self._frames += 1
            self._cpu_ns += cpu_ns
            self._wall_ns += wall_ns

    def _workers_at_start(self) -> dict[int, int]:
        start: dict[int, int] = {}
        for tid, at_last_end in list(self._workers.items()):
            now = _thread_cpu_ns(tid)
            if now is None or now - at_last_end > _IDLE_SLACK_NS:
                # Gone with its context, or busy between our calls: not ours (any more).
                del self._workers[tid]
            else:
                start[tid] = now
        return start

    def _workers_at_end(self, start: dict[int, int]) -> int:
        gained = 0
        for tid, at_start in start.items():
            now = _thread_cpu_ns(tid)
            if now is None:
                # Exited during the call: the old context was freed for a new one.
                # Its last moments are lost; they are teardown, not encoding.
                self._workers.pop(tid, None)
            else:
                gained += now - at_start
                self._workers[tid] = now
        return gained

    def _adopt_new_workers(self, before: set[int]) -> int:
        new = _native_thread_ids() - before - _python_thread_ids()
        gained = 0
        for tid in new:
            now = _thread_cpu_ns(tid)
            if now is not None:
                # Born during this call: all of its CPU time so far is this call's.
                gained += now
                self._workers[tid] = now
        return gained


# -- the tuned encoders -------------------------------------------------------------


def _needs_new_context(
    codec: VideoCodecContext | None, frame: av.VideoFrame, target_bitrate: int
) -> bool:
    """Whether aiortc's encode() would (re)create its codec context for this frame.

    Must give aiortc's answer exactly: if it ever said "keep" where aiortc says
    "recreate", aiortc would replace our context with its own (the encoders notice and
    log it). Same arithmetic as aiortc for the bitrate test, so rounding agrees too.
    """
    if codec is None:
        return True
    if (frame.width, frame.height) != (codec.width, codec.height):
        return True
    current = codec.bit_rate
    if not current:  # never set on a context aiortc or we made (aiortc would divide by 0)
        return True
    return abs(target_bitrate - current) / current > 0.1


class _Tuned:
    """What both tuned encoders share: settings, meter, and the check that aiortc kept
    the context we made."""

    settings: EncoderSettings
    meter: EncodeMeter
    _ours: VideoCodecContext | None
    _warned: bool

    def _init_tuned(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.meter = EncodeMeter()
        self._ours = None
        self._warned = False

    def stats(self) -> EncodeStats:
        return self.meter.stats()

    @property
    def tuned_context(self) -> VideoCodecContext | None:
        """The context this encoder configured itself (None: aiortc's own is used)."""
        return self._ours

    def _check_kept(self, current: VideoCodecContext | None) -> None:
        if self._ours is not None and current is not self._ours and not self._warned:
            self._warned = True
            logger.warning(
                "aiortc replaced the tuned %s codec context with its own: its rule for "
                "recreating contexts changed; the call goes on with aiortc's settings",
                type(self).__name__,
            )


class TunedVp8Encoder(_Tuned, Vp8Encoder):
    """aiortc's VP8 encoder with the libvpx context configured from :class:`EncoderSettings`."""

    def __init__(self, settings: EncoderSettings = AIORTC_DEFAULT) -> None:
        Vp8Encoder.__init__(self)
        self._init_tuned(settings)

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if not isinstance(frame, av.VideoFrame):
            return super().encode(frame, force_keyframe)  # aiortc rejects it
        fresh = _needs_new_context(self.codec, frame, self.target_bitrate)
        with self.meter.measure(opens_codec=fresh):
            if fresh and self.settings.configures_vp8:
                # Free the old context (and join its threads) before opening the next.
                self.codec = None
                self.codec = self._ours = self._open_context(frame)
            result = super().encode(frame, force_keyframe)
        self._check_kept(self.codec)
        return result

    def _open_context(self, frame: av.VideoFrame) -> VideoCodecContext:
        s = self.settings
        bitrate = self.target_bitrate
        codec = av.CodecContext.create("libvpx", "w")
        assert isinstance(codec, VideoCodecContext)
        codec.width = frame.width
        codec.height = frame.height
        codec.pix_fmt = "yuv420p"
        codec.bit_rate = bitrate
        # No periodic keyframes: the receiver asks for one (PLI/FIR) when it needs it,
        # and a keyframe at 500 kbps is a visible stall. aiortc's value.
        codec.gop_size = 3000
        # aiortc's lowest quantizer; the highest is a setting (see vp8_qmax).
        codec.qmin = 2
        codec.qmax = s.vp8_qmax if s.vp8_qmax is not None else AIORTC_VP8_QMAX
        codec.thread_count = (
            s.vp8_threads
            if s.vp8_threads is not None
            else number_of_threads(frame.width * frame.height, os.cpu_count() or 1)
        )
        cpu_used = s.vp8_cpu_used if s.vp8_cpu_used is not None else AIORTC_VP8_CPU_USED
        denoiser = (
            s.vp8_noise_sensitivity
            if s.vp8_noise_sensitivity is not None
            else AIORTC_VP8_NOISE_SENSITIVITY
        )
        codec.options = {
            "deadline": "realtime",
            "cpu-used": str(cpu_used),
            "noise-sensitivity": str(denoiser),
            # Every frame leaves as soon as it arrives: no look-ahead.
            "lag-in-frames": "0",
            # Constant bitrate at the target: FFmpeg's libvpx wrapper selects CBR when
            # minrate == maxrate == bit_rate. The buffer is given in bits and FFmpeg
            # turns it into milliseconds (bufsize * 1000 / bit_rate): one second.
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
            # Allow spending far less on easy frames, and only a little more on hard
            # ones, so a burst does not queue up behind itself on a slow link.
            "undershoot-pct": "100",
            "overshoot-pct": "15",
            # Skip macroblocks that did not change at all (the smallest threshold, as
            # aiortc); one token partition: what aiortc's depacketizer expects.
            "static-thresh": "1",
            "partitions": "0",
        }
        # Open here, on this thread and inside the meter, so the meter sees the
        # worker threads libvpx starts; aiortc's encode() finds it open.
        codec.open()
        return codec


class TunedH264Encoder(_Tuned, H264Encoder):
    """aiortc's H.264 encoder with the x264 context configured from :class:`EncoderSettings`."""

    def __init__(self, settings: EncoderSettings = AIORTC_DEFAULT) -> None:
        H264Encoder.__init__(self)
        self._init_tuned(settings)

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if not isinstance(frame, av.VideoFrame):
            return super().encode(frame, force_keyframe)  # aiortc rejects it
        fresh = _needs_new_context(self.codec, frame, self.target_bitrate)
        with self.meter.measure(opens_codec=fresh):
            if fresh and self.settings.configures_h264:
                # aiortc drops its (unused) reassembly buffer with a context; so do we.
                self.buffer_data = b""
                self.buffer_pts = None
                self.codec = None
                self.codec = self._ours = self._open_context(frame)
            result = super().encode(frame, force_keyframe)
        self._check_kept(self.codec)
        return result

    def _open_context(self, frame: av.VideoFrame) -> VideoCodecContext:
        s = self.settings
        codec = av.CodecContext.create("libx264", "w")
        assert isinstance(codec, VideoCodecContext)
        codec.width = frame.width
        codec.height = frame.height
        codec.pix_fmt = "yuv420p"
        codec.bit_rate = self.target_bitrate
        # x264's rate control works per frame at a nominal 30 fps, as aiortc's.
        codec.framerate = fractions.Fraction(30, 1)
        codec.time_base = fractions.Fraction(1, 30)
        # aiortc offers constrained baseline, level 3.1 (profile-level-id 42e01f).
        codec.profile = "Baseline"
        options = {"level": "31", "tune": s.h264_tune or AIORTC_H264_TUNE}
        if s.h264_preset is not None:
            options["preset"] = s.h264_preset
        codec.options = options
        if s.h264_threads is not None:
            # Else PyAV's 0: x264 picks (sliced threads, one per core under zerolatency).
            codec.thread_count = s.h264_threads
        codec.open()  # here, inside the meter: it sees the threads x264 starts
        return codec


TunedEncoder: TypeAlias = TunedVp8Encoder | TunedH264Encoder

# The tuned encoders the hook made and that are still alive, for benchmarks that read
# encode_ms from a live call. Weak: an encoder lives as long as its sender keeps it.
_live: weakref.WeakSet[TunedVp8Encoder | TunedH264Encoder] = weakref.WeakSet()


def make_encoder(mime_type: str, settings: EncoderSettings) -> TunedEncoder | None:
    """A tuned encoder for ``video/VP8`` or ``video/H264``; ``None`` for other codecs."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return TunedVp8Encoder(settings)
    if mime == "video/h264":
        return TunedH264Encoder(settings)
    return None


def live_encoders() -> list[TunedEncoder]:
    """Tuned encoders made by the installed hook that are still in use, e.g. to read
    ``encoder.stats().encode_ms`` during a call."""
    return list(_live)


# -- the hook -----------------------------------------------------------------------

# aiortc's own function; rtcrtpsender imported it by name, which is what we replace.
_AIORTC_GET_ENCODER: Final = aiortc.codecs.get_encoder
_HOOK: Final = "get_encoder"


class _GetEncoder:
    """Stands in for ``aiortc.rtcrtpsender.get_encoder`` while settings are installed."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings

    def __call__(self, codec: RTCRtpCodecParameters) -> Encoder:
        encoder = make_encoder(codec.mimeType, self.settings)
        if encoder is None:
            return _AIORTC_GET_ENCODER(codec)  # audio: aiortc's, untouched
        _live.add(encoder)
        return encoder


def install(settings: EncoderSettings | None) -> None:
    """Make new senders of this process encode video with ``settings``.

    Process-wide (see the module docstring); ``None`` restores aiortc's own
    ``get_encoder``. ``AIORTC_DEFAULT`` keeps aiortc's codec configuration but still
    meters the encoders, which is what a benchmark of the default wants.
    """
    current = getattr(aiortc.rtcrtpsender, _HOOK)
    if current is not _AIORTC_GET_ENCODER and not isinstance(current, _GetEncoder):
        # Someone else hooked aiortc too; stacking on top of them silently would make
        # install(None) drop their hook. Fail loudly instead.
        raise RuntimeError(f"aiortc.rtcrtpsender.get_encoder is already replaced by {current!r}")
    # setattr: the attribute is a function to mypy, and assigning to one is refused.
    setattr(
        aiortc.rtcrtpsender,
        _HOOK,
        _AIORTC_GET_ENCODER if settings is None else _GetEncoder(settings),
    )


def installed() -> EncoderSettings | None:
    """The settings new senders get, or ``None`` when aiortc's own function is in place."""
    current = getattr(aiortc.rtcrtpsender, _HOOK)
    return current.settings if isinstance(current, _GetEncoder) else None
