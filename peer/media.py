"""Media for a call without Qt: synthetic devices, the device lists of one call, the
local tracks a peer connection sends and the receivers of the remote ones.

- The synthetic backend plays the role of a browser's fake-media-device switch: a
  moving test pattern with a running clock (one tint per camera, so a receiver can
  tell after compression which camera is sending), a 440 Hz tone and a speaker that
  plays nowhere. A machine without devices still gets a working call.
- :class:`MediaDevices` is what one call picks its devices from: per kind the real
  backend's devices, else the synthetic ones.
- :class:`LocalVideoTrack` / :class:`LocalAudioTrack` are what aiortc sends. They
  switch sources (camera switch, camera off, mute) without the peer connection
  noticing: timestamps stay monotonic and audio keeps flowing as silence.
- :class:`VideoReceiver` / :class:`AudioReceiver` consume aiortc's remote tracks,
  keep counters for the UI and tests, and hand frames on; the RGB conversion for
  display runs off the event loop, which is also the GUI thread under qasync.

Frames live in memory only. Nothing here logs or stores their content.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fractions
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import (
    VIDEO_CLOCK_RATE,
    VIDEO_TIME_BASE,
    MediaStreamError,
    MediaStreamTrack,
)
from av.video.reformatter import VideoReformatter

from peer.chat import Listeners
from peer.devices import (
    AUDIO_CHANNELS,
    AUDIO_RATE,
    AUDIO_SAMPLES,
    AudioOutput,
    AudioSource,
    DeviceKind,
    Facing,
    MediaBackend,
    MediaDevice,
    SourceClosed,
    VideoSource,
)

logger = logging.getLogger(__name__)

U8Array = npt.NDArray[np.uint8]

AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_FRAME_S = AUDIO_SAMPLES / AUDIO_RATE  # 20 ms

#: Frequency of the synthetic microphone.
TONE_HZ = 440.0
#: Peak of the tone, as a fraction of full scale: loud enough to measure, not to hurt
#: (RMS = 0.25/√2 ≈ 0.18, about -15 dBFS).
TONE_AMPLITUDE = 0.25

#: What "the last ~1 s" of a frame rate and "the last ~200 ms" of a level mean.
RATE_WINDOW_S = 1.0
LEVEL_WINDOW_S = 0.2

SYNTHETIC_FRONT = MediaDevice(
    device_id="synthetic:camera:front",
    name="Synthetic front camera",
    kind=DeviceKind.CAMERA,
    facing=Facing.FRONT,
    synthetic=True,
    is_default=True,
)
SYNTHETIC_BACK = MediaDevice(
    device_id="synthetic:camera:back",
    name="Synthetic back camera",
    kind=DeviceKind.CAMERA,
    facing=Facing.BACK,
    synthetic=True,
)
SYNTHETIC_TONE = MediaDevice(
    device_id="synthetic:microphone:tone",
    name="Synthetic tone (440 Hz)",
    kind=DeviceKind.MICROPHONE,
    synthetic=True,
    is_default=True,
)
SYNTHETIC_SPEAKER = MediaDevice(
    device_id="synthetic:speaker:silent",
    name="Synthetic speaker (silent)",
    kind=DeviceKind.SPEAKER,
    synthetic=True,
    is_default=True,
)
#: A second output, so that choosing the audio output has something to choose.
SYNTHETIC_HEADSET = MediaDevice(
    device_id="synthetic:speaker:headset",
    name="Synthetic headset (silent)",
    kind=DeviceKind.SPEAKER,
    synthetic=True,
)


# -- pacing and counting ----------------------------------------------------------------


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Pacer:
    """Hands out one slot every ``interval`` seconds of real time.

    Late by more than a slot (the loop stalled, the consumer was slow), it skips ahead
    instead of catching up: a burst of stale frames would only be encoded, sent and
    dropped by the far end's jitter buffer. ``wake()`` ends a wait early so that closing
    a source frees its reader at once rather than one frame later.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next_due: float | None = None
        self._sleeper: asyncio.Future[None] | None = None

    def restart(self, first_due: float) -> None:
        self._next_due = first_due

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > self.interval:
            self._next_due = now
        delay = self._next_due - now
        self._next_due += self.interval
        if delay <= 0:
            return
        # A future rather than asyncio.sleep, so wake() can resolve it early.
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(delay, _resolve, sleeper)
        self._sleeper = sleeper
        try:
            await sleeper
        finally:
            handle.cancel()
            self._sleeper = None

    def wake(self) -> None:
        if self._sleeper is not None:
            _resolve(self._sleeper)


class _RateMeter:
    """Events in the last :data:`RATE_WINDOW_S` seconds (a frame rate)."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._prune(now)

    def rate(self) -> float:
        self._prune(time.monotonic())
        return len(self._times) / RATE_WINDOW_S

    def _prune(self, now: float) -> None:
        while self._times and now - self._times[0] > RATE_WINDOW_S:
            self._times.popleft()


# -- the test pattern ------------------------------------------------------------------

# A 5x7 bitmap font with just the characters the pattern writes.
_FONT_ROWS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    " ": (".....",) * 7,
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
}
_CELL_W, _CELL_H = 6, 8  # a glyph plus one column and one row of spacing

# Limited-range luma and chroma values.
_INK, _PAPER, _BAND = 235, 16, 48
_NEUTRAL = 128
# Each synthetic camera's background chroma (Cb, Cr): front warm, back cool, far apart
# so that codec loss cannot move one onto the other. With the luma ramp kept in
# _RAMP the tinted background stays inside the RGB gamut (no clipping when a receiver
# converts to RGB and back).
_TINTS: dict[Facing, tuple[int, int]] = {
    Facing.FRONT: (88, 168),
    Facing.BACK: (168, 88),
}
_RAMP = (90, 160)
# Where things are, as fractions of the height: the clock panel and the band where the
# bar sweeps; everything else is tinted background.
_PANEL_ROWS = (0.30, 0.62)
_BAR_ROWS = (0.66, 0.78)
_PANEL_COLS = (0.06, 0.94)
# Where identify_pattern samples the background: inside the tinted areas with margins
# for scaling blur and codec ringing.
_SAMPLE_BANDS = ((0.05, 0.22), (0.84, 0.95))
_SAMPLE_COLS = (0.05, 0.95)
_IDENTIFY_SIZE = (160, 120)
#: How far (in 8-bit chroma steps) a region's mean may sit from a tint, and how much
#: its chroma may vary, to still count as that camera's background.
_TINT_TOLERANCE = 20.0
_TINT_MAX_STD = 12.0
_BAR_PERIOD_S = 2.0


def _glyph_cells(scale: int, ink: int, paper: int) -> dict[str, U8Array]:
    """Every character as a ready-to-blit luma cell, scaled up by ``scale``."""
    cells: dict[str, U8Array] = {}
    for char, rows in _FONT_ROWS.items():
        bits = np.zeros((_CELL_H, _CELL_W), dtype=bool)
        bits[:7, :5] = [[c == "#" for c in row] for row in rows]
        scaled = np.kron(bits, np.ones((scale, scale), dtype=bool))
        cells[char] = np.where(scaled, np.uint8(ink), np.uint8(paper)).astype(np.uint8)
    return cells


class _TextLine:
    """One line of fixed length at a fixed place, redrawn by whole cells."""

    def __init__(self, length: int, scale: int, top: int, center_x: int) -> None:
        self.length = length
        self.scale = scale
        self.top = top
        self.left = center_x - length * _CELL_W * scale // 2
        self.cells = _glyph_cells(scale, _INK, _PAPER) if scale > 0 else {}

    def draw(self, luma: U8Array, text: str) -> None:
        if self.scale <= 0:
            return  # too small a frame for text
        w, h = _CELL_W * self.scale, _CELL_H * self.scale
        for i, char in enumerate(text[: self.length].ljust(self.length)):
            x = self.left + i * w
            luma[self.top : self.top + h, x : x + w] = self.cells.get(char, self.cells[" "])


def _rows(size: int, span: tuple[float, float], *, even: bool = False) -> slice:
    """The slice of ``size`` between two fractions; ``even`` aligns both ends to even
    numbers, so that the area covers whole chroma samples of yuv420p."""
    start, stop = round(size * span[0]), round(size * span[1])
    return slice(start // 2 * 2, stop // 2 * 2) if even else slice(start, stop)


class TestPatternSource:
    """A synthetic camera: a tinted test pattern with a wall clock, a frame number, the
    camera's facing and a bar sweeping across, paced in real time.

    Frames are built directly as ``yuv420p`` planes (what the encoders take) in one
    working buffer: only the bar band and the text cells change per frame, everything
    else is the background computed once here. Measured on one core of the development
    machine (2 vCPU): about 0.13 ms per frame at 640x480 and 0.22 ms at 1280x720, most of
    it PyAV copying the buffer into the frame (bench: ``python -m peer.media``).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, device: MediaDevice, width: int, height: int, fps: int) -> None:
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise ValueError("yuv420p needs an even width and height of at least 16")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self._device = device
        self.width, self.height, self.fps = width, height, fps
        self._closed = False
        self._pacer = _Pacer(1.0 / fps)
        self._frames = 0
        self._started = time.monotonic()
        self._on_close: Callable[[], None] | None = None

        w, h = width, height
        # One flat buffer with the three planes as views, in the layout from_ndarray
        # expects for yuv420p: Y (h x w), then U and V (h/2 x w/2 each).
        self._background = np.empty(w * h * 3 // 2, dtype=np.uint8)
        luma, cb, cr = self._planes(self._background)
        luma[:] = np.linspace(_RAMP[0], _RAMP[1], w).round().astype(np.uint8)
        tint = _TINTS.get(device.facing, (_NEUTRAL, _NEUTRAL))
        cb[:], cr[:] = tint

        # The clock panel (black) and the bar's band (dark gray) are neutral in chroma:
        # only the tinted background tells the cameras apart.
        cols = _rows(w, _PANEL_COLS, even=True)
        panel = _rows(h, _PANEL_ROWS, even=True)
        self._bar_rows = _rows(h, _BAR_ROWS, even=True)
        luma[panel, cols] = _PAPER
        luma[self._bar_rows] = _BAND
        for rows, columns in ((panel, cols), (self._bar_rows, slice(0, w))):
            chroma = (
                slice(rows.start // 2, rows.stop // 2),
                slice(columns.start // 2, columns.stop // 2),
            )
            cb[chroma] = _NEUTRAL
            cr[chroma] = _NEUTRAL

        # Two lines: the clock large, then the facing and the frame number.
        panel_w = cols.stop - cols.start
        panel_h = panel.stop - panel.start
        clock = "00:00:00.000"
        scale1 = min(panel_w * 9 // 10 // (len(clock) * _CELL_W), panel_h * 6 // 10 // _CELL_H)
        self._label = device.facing.value.upper()
        caption = f"{self._label} #000000"
        scale2 = min(panel_w * 9 // 10 // (len(caption) * _CELL_W), max(scale1 * 2 // 3, 1))
        height1, height2 = _CELL_H * scale1, _CELL_H * scale2
        top = panel.start + max(panel_h - height1 - height2, 0) // 2
        center = (cols.start + cols.stop) // 2
        self._clock_line = _TextLine(len(clock), scale1, top, center)
        self._caption_line = _TextLine(len(caption), scale2, top + height1, center)
        self._bar_width = max(w // 24, 2)

        self._background_luma = luma
        self._buffer = self._background.copy()
        self._luma = self._planes(self._buffer)[0]

    def _planes(self, flat: U8Array) -> tuple[U8Array, U8Array, U8Array]:
        w, h = self.width, self.height
        y_end, u_end = w * h, w * h * 5 // 4
        return (
            flat[:y_end].reshape(h, w),
            flat[y_end:u_end].reshape(h // 2, w // 2),
            flat[u_end:].reshape(h // 2, w // 2),
        )

    @property
    def device(self) -> MediaDevice:
        return self._device

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def frames(self) -> int:
        """Frames produced so far (the number drawn on the last one)."""
        return self._frames

    async def read(self) -> av.VideoFrame:
        if self._closed:
            raise SourceClosed(self._device.device_id)
        await self._pacer.wait()
        if self._closed:  # closed while we waited
            raise SourceClosed(self._device.device_id)
        return self.render()

    def render(self, *, now: float | None = None) -> av.VideoFrame:
        """The next frame, at once (no pacing): ``read()`` without the wait."""
        self._frames += 1
        wall = time.time() if now is None else now
        # The bar band: restore from the background, then the bar at its position.
        luma, rows = self._luma, self._bar_rows
        luma[rows] = self._background_luma[rows]
        phase = ((time.monotonic() - self._started) / _BAR_PERIOD_S) % 1.0
        x = int(phase * (self.width - self._bar_width))
        luma[rows, x : x + self._bar_width] = _INK
        # Local wall-clock time: compared with the receiver's clock it shows the
        # glass-to-glass delay.
        clock = time.strftime("%H:%M:%S", time.localtime(wall))
        self._clock_line.draw(luma, f"{clock}.{int(wall * 1000) % 1000:03d}")
        self._caption_line.draw(luma, f"{self._label} #{self._frames % 1_000_000:06d}")
        # from_ndarray copies, so the working buffer can be reused for the next frame.
        frame = av.VideoFrame.from_ndarray(
            self._buffer.reshape(self.height * 3 // 2, self.width), format="yuv420p"
        )
        frame.pts = self._frames - 1
        frame.time_base = fractions.Fraction(1, self.fps)
        return frame

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pacer.wake()
        if self._on_close is not None:
            self._on_close()


def identify_pattern(frame: av.VideoFrame) -> Facing | None:
    """Which synthetic camera sent ``frame`` (decoded, any size or pixel format):
    FRONT or BACK by the tint of the background; None for anything else.

    Both tinted background areas (above and below the clock) must show the same tint
    and be flat, so a natural image that merely averages to a tint is not taken for
    the pattern.
    """
    w, h = _IDENTIFY_SIZE
    # A reformatter of our own, not frame.reformat(): see to_display_frame.
    small = VideoReformatter().reformat(frame, width=w, height=h, format="yuv420p")
    # The planes one by one: a frame's rows may be padded beyond its width.
    chroma = [
        np.frombuffer(bytes(plane), dtype=np.uint8).reshape(h // 2, plane.line_size)[:, : w // 2]
        for plane in small.planes[1:3]
    ]
    cols = slice(round(w // 2 * _SAMPLE_COLS[0]), round(w // 2 * _SAMPLE_COLS[1]))
    found: set[Facing | None] = set()
    for band in _SAMPLE_BANDS:
        rows = _rows(h // 2, band)
        cb, cr = (plane[rows, cols].astype(np.float32) for plane in chroma)
        if max(float(cb.std()), float(cr.std())) > _TINT_MAX_STD:
            return None  # not flat: not our background
        found.add(_tint_of((float(cb.mean()), float(cr.mean()))))
    return found.pop() if len(found) == 1 else None


def _tint_of(mean: tuple[float, float]) -> Facing | None:
    for facing, tint in _TINTS.items():
        if math.dist(mean, tint) <= _TINT_TOLERANCE:
            return facing
    return None


# -- the tone, the null speaker ----------------------------------------------------------


class ToneSource:
    """A synthetic microphone: a sine tone in 20 ms frames, paced in real time.

    The phase carries over from frame to frame (no click at frame edges), also when
    the pacer skips ahead after a stall: what is skipped is time, not signal.
    """

    def __init__(self, device: MediaDevice, frequency_hz: float = TONE_HZ) -> None:
        if not 0 < frequency_hz < AUDIO_RATE / 2:
            raise ValueError("the tone must lie below the Nyquist frequency")
        self._device = device
        self.frequency_hz = frequency_hz
        self._closed = False
        self._pacer = _Pacer(AUDIO_FRAME_S)
        self._step = 2 * math.pi * frequency_hz / AUDIO_RATE
        self._ramp = np.arange(AUDIO_SAMPLES, dtype=np.float64) * self._step
        self._phase = 0.0
        self._samples = 0
        self._on_close: Callable[[], None] | None = None

    @property
    def device(self) -> MediaDevice:
        return self._device

    @property
    def closed(self) -> bool:
        return self._closed

    async def read(self) -> av.AudioFrame:
        if self._closed:
            raise SourceClosed(self._device.device_id)
        await self._pacer.wait()
        if self._closed:
            raise SourceClosed(self._device.device_id)
        return self.render()

    def render(self) -> av.AudioFrame:
        """The next 20 ms at once (no pacing)."""
        wave = np.sin(self._ramp + self._phase) * (TONE_AMPLITUDE * 32767)
        # Wrapped every frame so the phase never grows large enough to lose precision.
        self._phase = (self._phase + self._step * AUDIO_SAMPLES) % (2 * math.pi)
        samples = wave.round().astype(np.int16).reshape(AUDIO_CHANNELS, AUDIO_SAMPLES)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._samples
        frame.time_base = AUDIO_TIME_BASE
        self._samples += AUDIO_SAMPLES
        return frame

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pacer.wake()
        if self._on_close is not None:
            self._on_close()


class NullSpeaker:
    """A synthetic speaker: plays nowhere, counts what it was given, keeps nothing."""

    def __init__(self, device: MediaDevice) -> None:
        self._device = device
        self._closed = False
        self.frames_written = 0
        self._on_close: Callable[[], None] | None = None

    @property
    def device(self) -> MediaDevice:
        return self._device

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, frame: av.AudioFrame) -> None:
        # A closed (unplugged) speaker drops, like a device that is gone.
        if not self._closed:
            self.frames_written += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close()


_Handle = TestPatternSource | ToneSource | NullSpeaker
_H = TypeVar("_H", TestPatternSource, ToneSource, NullSpeaker)


class SyntheticBackend:
    """The synthetic devices: two cameras, a tone, a silent speaker.

    ``plug`` / ``unplug`` change the lists as a hot-plug would, for tests of devices
    appearing and disappearing.
    """

    def __init__(self) -> None:
        self.name = "synthetic"
        self.changed: Listeners[DeviceKind] = Listeners()
        self._devices: dict[DeviceKind, list[MediaDevice]] = {
            DeviceKind.CAMERA: [SYNTHETIC_FRONT, SYNTHETIC_BACK],
            DeviceKind.MICROPHONE: [SYNTHETIC_TONE],
            DeviceKind.SPEAKER: [SYNTHETIC_SPEAKER, SYNTHETIC_HEADSET],
        }
        # Insertion-ordered: open_devices() lists in the order things were opened.
        self._open: dict[int, _Handle] = {}

    def devices(self, kind: DeviceKind) -> list[MediaDevice]:
        return list(self._devices[kind])

    def open_camera(
        self, device: MediaDevice, *, width: int, height: int, fps: int
    ) -> TestPatternSource:
        self._check(device, DeviceKind.CAMERA)
        return self._track(TestPatternSource(device, width, height, fps))

    def open_microphone(self, device: MediaDevice) -> ToneSource:
        self._check(device, DeviceKind.MICROPHONE)
        return self._track(ToneSource(device, TONE_HZ))

    def open_speaker(self, device: MediaDevice) -> NullSpeaker:
        self._check(device, DeviceKind.SPEAKER)
        return self._track(NullSpeaker(device))

    def open_devices(self) -> list[MediaDevice]:
        return [handle.device for handle in self._open.values()]

    def close(self) -> None:
        for handle in list(self._open.values()):
            handle.close()

    def plug(self, device: MediaDevice) -> None:
        """Add a device, as if plugged in, and fire ``changed``."""
        if self._find(device.device_id) is not None:
            raise ValueError(f"{device.device_id} is already plugged in")
        self._devices[device.kind].append(device)
        self.changed.fire(device.kind)

    def unplug(self, device_id: str) -> None:
        """Remove a device, as if unplugged: what is open on it closes (its reader gets
        SourceClosed), then ``changed`` fires."""
        device = self._find(device_id)
        if device is None:
            raise KeyError(device_id)
        self._devices[device.kind].remove(device)
        for handle in list(self._open.values()):
            if handle.device.device_id == device_id:
                handle.close()
        self.changed.fire(device.kind)

    def _find(self, device_id: str) -> MediaDevice | None:
        for devices in self._devices.values():
            for device in devices:
                if device.device_id == device_id:
                    return device
        return None

    def _check(self, device: MediaDevice, kind: DeviceKind) -> None:
        if device.kind is not kind or device not in self._devices[kind]:
            raise ValueError(f"{device.device_id} is not a {kind.value} of this backend")

    def _track(self, handle: _H) -> _H:
        key = id(handle)
        self._open[key] = handle

        def forget() -> None:
            self._open.pop(key, None)

        handle._on_close = forget
        return handle


# -- the device lists of one call -------------------------------------------------------


class _Closable(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


class MediaDevices:
    """The devices one call chooses from.

    Per kind: the real backend's devices, or the synthetic ones when ``fake`` is set,
    there is no real backend, or it has no device of that kind (a desktop without a
    camera still sends the test pattern). Opening goes to the backend that owns the
    device. ``close()`` releases everything this object opened and its synthetic
    backend; the real backend itself stays open (it outlives a call). With ``fake``
    the real backend is not used at all (``real`` is None).
    """

    def __init__(self, real: MediaBackend | None, *, fake: bool = False) -> None:
        self.real = None if fake else real
        self.fake = fake
        self.synthetic = SyntheticBackend()
        self.changed: Listeners[DeviceKind] = Listeners()
        self._opened: list[_Closable] = []
        self._unsubscribe = [self.synthetic.changed.add(self.changed.fire)]
        if self.real is not None:
            self._unsubscribe.append(self.real.changed.add(self.changed.fire))

    def _backend(self, kind: DeviceKind) -> MediaBackend:
        if self.real is not None and self.real.devices(kind):
            return self.real
        return self.synthetic

    def devices(self, kind: DeviceKind) -> list[MediaDevice]:
        return self._backend(kind).devices(kind)

    def default(self, kind: DeviceKind) -> MediaDevice | None:
        devices = self.devices(kind)
        return next((d for d in devices if d.is_default), devices[0] if devices else None)

    def next_camera(self, current: MediaDevice | None) -> MediaDevice | None:
        """The camera after ``current`` in the list, wrapping round ("switch camera").
        The default camera when ``current`` is None or gone; ``current`` itself when it
        is the only one; None when there is no camera."""
        cameras = self.devices(DeviceKind.CAMERA)
        ids = [d.device_id for d in cameras]
        if current is None or current.device_id not in ids:
            return self.default(DeviceKind.CAMERA)
        return cameras[(ids.index(current.device_id) + 1) % len(cameras)]

    def _owner(self, device: MediaDevice) -> MediaBackend:
        # By ownership, not by what is listed now: a synthetic camera stays usable while
        # a real one appears, and the caller switches when it is ready to.
        if device in self.synthetic.devices(device.kind):
            return self.synthetic
        if self.real is not None and device in self.real.devices(device.kind):
            return self.real
        raise ValueError(f"{device.device_id} is not an available {device.kind.value}")

    def _keep(self, handle: _C) -> _C:
        self._opened = [h for h in self._opened if not h.closed]
        self._opened.append(handle)
        return handle

    def open_camera(
        self, device: MediaDevice, *, width: int = 640, height: int = 480, fps: int = 30
    ) -> VideoSource:
        return self._keep(
            self._owner(device).open_camera(device, width=width, height=height, fps=fps)
        )

    def open_microphone(self, device: MediaDevice) -> AudioSource:
        return self._keep(self._owner(device).open_microphone(device))

    def open_speaker(self, device: MediaDevice) -> AudioOutput:
        return self._keep(self._owner(device).open_speaker(device))

    def open_devices(self) -> list[MediaDevice]:
        real = self.real.open_devices() if self.real is not None else []
        return self.synthetic.open_devices() + real

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for handle in self._opened:
            handle.close()
        self._opened.clear()
        self.synthetic.close()


# -- local tracks -----------------------------------------------------------------------


class LocalVideoTrack(MediaStreamTrack):
    """The video a peer connection sends: frames of the current camera, re-stamped.

    ``set_source(None)`` is camera off: ``recv()`` waits and nothing is sent until a
    camera is set again. Timestamps come from this track's own monotonic clock at
    90 kHz, so they never go backwards when the camera changes. A camera that goes
    away while being read (unplugged) is camera off too, not an error.
    """

    kind = "video"

    def __init__(self, source: VideoSource | None = None) -> None:
        super().__init__()
        self._source = source
        self._source_set = asyncio.Event()
        if source is not None:
            self._source_set.set()
        self._started: float | None = None
        self._last_pts = -1
        self._rate = _RateMeter()
        self.frames_sent = 0
        #: Size of the last frame sent (0 before the first).
        self.width = 0
        self.height = 0
        #: The sender's own picture for its view (the inset self-view): set
        #: ``preview.on_display`` to receive small frames; nothing is converted until then.
        self.preview = DisplayTap(box=PREVIEW_BOX)

    @property
    def source(self) -> VideoSource | None:
        return self._source

    @property
    def fps(self) -> float:
        return self._rate.rate()

    def set_source(self, source: VideoSource | None) -> None:
        """Switch camera, or turn it off with None. The previous camera is closed (its
        device released) at once. On a stopped track the new source is closed too."""
        if source is self._source:
            return
        previous, self._source = self._source, source
        if previous is not None:
            previous.close()
        if self.readyState != "live":
            self._source = None
            if source is not None:
                source.close()
            return
        if source is None:
            self._source_set.clear()
        else:
            self._source_set.set()

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None:
                await self._source_set.wait()
                continue
            try:
                frame = await source.read()
            except SourceClosed:
                if self._source is source:  # gone under us: camera off
                    self._source = None
                    self._source_set.clear()
                continue
            if source is not self._source:
                continue  # switched while we waited: the old camera's frame is stale
            return self._stamp(frame)

    def _stamp(self, frame: av.VideoFrame) -> av.VideoFrame:
        now = time.monotonic()
        if self._started is None:
            self._started = now
        pts = max(round((now - self._started) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        self.width, self.height = frame.width, frame.height
        self._rate.tick(now)
        self.preview.push(frame)
        return frame

    def stop(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()
        self.preview.cancel()
        super().stop()
        self._source_set.set()  # a recv() waiting for a camera ends now


class LocalAudioTrack(MediaStreamTrack):
    """The audio a peer connection sends: the microphone, or silence.

    Muted or without a microphone, ``recv()`` returns silence of the same shape in
    real time, as a browser does for ``track.enabled = false``: the RTP stream keeps
    flowing and the far end's jitter buffer and level meter stay meaningful. Muted
    with a microphone, the microphone is still read (and so paced and kept open) but
    its samples are replaced. ``pts`` counts samples at 48 kHz across all of it.
    """

    kind = "audio"

    def __init__(self, source: AudioSource | None = None) -> None:
        super().__init__()
        self._source = source
        self.muted = False
        self._pacer = _Pacer(AUDIO_FRAME_S)
        self._pts = 0
        self._silence = bytes(AUDIO_SAMPLES * AUDIO_CHANNELS * 2)
        self.frames_sent = 0

    @property
    def source(self) -> AudioSource | None:
        return self._source

    def set_source(self, source: AudioSource | None) -> None:
        """Switch microphone (None: silence). The previous one is closed at once."""
        if source is self._source:
            return
        previous, self._source = self._source, source
        if previous is not None:
            previous.close()
        if self.readyState != "live" and source is not None:
            self._source = None
            source.close()

    async def recv(self) -> av.AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None:
                await self._pacer.wait()
                if self.readyState != "live":
                    raise MediaStreamError
                return self._stamp(self._silent_frame())
            try:
                frame = await source.read()
            except SourceClosed:
                if self._source is source:
                    self._source = None
                continue
            if source is not self._source:
                continue
            # Silence, if any, continues one frame after this one rather than at once.
            self._pacer.restart(time.monotonic() + AUDIO_FRAME_S)
            if self.muted:
                frame = self._silent_like(frame)
            return self._stamp(frame)

    def _silent_frame(self) -> av.AudioFrame:
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(self._silence)
        frame.sample_rate = AUDIO_RATE
        return frame

    @staticmethod
    def _silent_like(frame: av.AudioFrame) -> av.AudioFrame:
        silent = av.AudioFrame.from_ndarray(
            np.zeros_like(frame.to_ndarray()), format=frame.format.name, layout=frame.layout.name
        )
        silent.sample_rate = frame.sample_rate
        return silent

    def _stamp(self, frame: av.AudioFrame) -> av.AudioFrame:
        frame.pts = self._pts
        frame.time_base = AUDIO_TIME_BASE
        rate = frame.sample_rate or AUDIO_RATE
        self._pts += frame.samples * AUDIO_RATE // rate
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()
        self._pacer.wake()
        super().stop()


# -- receivers ---------------------------------------------------------------------------


class RemoteTrack(Protocol):
    """What a receiver reads: aiortc's remote track, or anything with ``recv()``."""

    async def recv(self) -> object: ...


@dataclasses.dataclass(frozen=True, slots=True)
class DisplayFrame:
    """One frame ready for a view (QImage.Format_RGB888 takes it as is)."""

    width: int
    height: int
    #: Row stride in bytes; may exceed 3 * width (rows are padded).
    bytes_per_line: int
    #: Packed RGB24. Kept out of repr so a log line never holds a picture.
    data: bytes = dataclasses.field(repr=False)


def _fit(width: int, height: int, box: tuple[int, int] | None) -> tuple[int, int]:
    """``width`` x ``height`` scaled to fit ``box``, keeping the aspect ratio."""
    if box is None:
        return width, height
    scale = min(box[0] / width, box[1] / height)
    return max(round(width * scale), 1), max(round(height * scale), 1)


def to_display_frame(
    frame: av.VideoFrame,
    box: tuple[int, int] | None = None,
    reformatter: VideoReformatter | None = None,
) -> DisplayFrame:
    """RGB24 for display, fitted into ``box``. CPU-bound: call it off the event loop.

    Never ``frame.reformat()`` here: PyAV keeps one scaler per frame object, and the
    frame converted in a worker thread is the receiver's ``latest``, which the loop's
    thread may reformat at the same moment; two threads in one scaler deadlock inside
    swscale (seen in the tests under CPU load). A ``reformatter`` used by one thread
    at a time is safe, and reusing it keeps its scaler from frame to frame.
    """
    width, height = _fit(frame.width, frame.height, box)
    rgb = (reformatter or VideoReformatter()).reformat(
        frame, width=width, height=height, format="rgb24"
    )
    plane = rgb.planes[0]
    return DisplayFrame(width, height, plane.line_size, bytes(plane))


#: The self-view is an inset: small frames are enough, and cheap to convert.
PREVIEW_BOX = (320, 240)


class DisplayTap:
    """Hands frames, converted for display, to ``on_display`` on the loop's thread.

    At most one conversion runs at a time (in a worker thread); frames that arrive
    meanwhile replace the one waiting, so a slow view gets the newest frame rather
    than a growing queue of old ones. Without ``on_display`` nothing is converted.
    """

    def __init__(
        self,
        box: tuple[int, int] | None = None,
        on_display: Callable[[DisplayFrame], None] | None = None,
    ) -> None:
        self.box = box
        self.on_display = on_display
        #: Frames handed to ``on_display``.
        self.displayed = 0
        self._pending: av.VideoFrame | None = None
        self._task: asyncio.Task[None] | None = None
        # Used only by the one conversion in flight, so by one thread at a time.
        self._reformatter = VideoReformatter()

    @property
    def idle(self) -> bool:
        """No frame waits for conversion."""
        return self._pending is None

    def push(self, frame: av.VideoFrame) -> None:
        if self.on_display is None:
            return
        self._pending = frame
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        # No await between the last check of _pending and returning, so a frame that
        # arrives finds either this loop still running or the task done.
        while self._pending is not None and self.on_display is not None:
            frame, self._pending = self._pending, None
            image = await asyncio.to_thread(to_display_frame, frame, self.box, self._reformatter)
            self._deliver(image)

    def _deliver(self, image: DisplayFrame) -> None:
        # Read again: the view may have gone while the frame was being converted.
        on_display = self.on_display
        if on_display is None:
            return
        self.displayed += 1
        try:
            on_display(image)
        except Exception as exc:
            logger.error("on_display failed: %s", type(exc).__name__)

    def cancel(self) -> None:
        """Drop what waits; a conversion already in its thread finishes there and its
        result is dropped."""
        self._pending = None
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        self.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class _Receiver:
    """The task around a remote track: start, stop, ending quietly with the track."""

    def __init__(self, track: RemoteTrack) -> None:
        self._track = track
        self._task: asyncio.Task[None] | None = None
        self.frames = 0
        #: Set at the first frame.
        self.first_frame = asyncio.Event()
        #: Set when the track ended (or failed); stop() does not set it.
        self.ended = asyncio.Event()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("already started")
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    async def stop(self) -> None:
        """End the task (idempotent). Returns once it has ended."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            while True:
                self._on_frame(await self._track.recv())
        except MediaStreamError:
            pass  # the track ended: the far end stopped sending or the pc closed
        except Exception as exc:
            # The type only: the message of a codec error is no business of a log.
            logger.error("%s ended on %s", type(self).__name__, type(exc).__name__)
        finally:
            self._on_end()
        self.ended.set()

    def _on_frame(self, frame: object) -> None:
        raise NotImplementedError

    def _on_end(self) -> None:
        """The task ended (track over, failed, or stopped)."""


class VideoReceiver(_Receiver):
    """Consumes a remote video track: counts, keeps the latest frame, and hands
    frames converted for display to ``on_display`` on the loop's thread (through a
    :class:`DisplayTap`: latest wins)."""

    def __init__(
        self,
        track: RemoteTrack,
        *,
        display_size: tuple[int, int] | None = None,
        on_display: Callable[[DisplayFrame], None] | None = None,
    ) -> None:
        super().__init__(track)
        self._tap = DisplayTap(display_size, on_display)
        self.width = 0
        self.height = 0
        #: time.monotonic() of the first and the last frame; 0.0 until the first (wait
        #: on ``first_frame``). Floats rather than Optional: callers read them once
        #: ``frames`` > 0, and compute spans and delays from them.
        self.first_frame_at = 0.0
        self.last_frame_at = 0.0
        #: The last frame received, in memory only.
        self.latest: av.VideoFrame | None = None
        self._rate = _RateMeter()

    @property
    def on_display(self) -> Callable[[DisplayFrame], None] | None:
        return self._tap.on_display

    @on_display.setter
    def on_display(self, callback: Callable[[DisplayFrame], None] | None) -> None:
        self._tap.on_display = callback

    @property
    def display_size(self) -> tuple[int, int] | None:
        return self._tap.box

    @display_size.setter
    def display_size(self, box: tuple[int, int] | None) -> None:
        self._tap.box = box

    @property
    def displayed(self) -> int:
        """Frames handed to ``on_display``."""
        return self._tap.displayed

    @property
    def display_idle(self) -> bool:
        return self._tap.idle

    @property
    def fps(self) -> float:
        return self._rate.rate()

    def _on_frame(self, frame: object) -> None:
        if not isinstance(frame, av.VideoFrame):
            return
        now = time.monotonic()
        self.frames += 1
        if not self.first_frame.is_set():
            self.first_frame_at = now
            self.first_frame.set()
        self.last_frame_at = now
        self._rate.tick(now)
        self.width, self.height = frame.width, frame.height
        self.latest = frame
        self._tap.push(frame)

    async def stop(self) -> None:
        await super().stop()
        await self._tap.stop()


def _sum_of_squares(frame: av.AudioFrame) -> tuple[float, int]:
    """Sum of squared samples (full scale = 1.0) and their count, any sample format."""
    samples = frame.to_ndarray()
    if samples.dtype == np.uint8:
        values = (samples.astype(np.float32) - 128) / 128
    elif samples.dtype == np.int16:
        values = samples.astype(np.float32) / 32768
    elif samples.dtype == np.int32:
        values = samples.astype(np.float32) / 2147483648
    else:
        values = samples.astype(np.float32)
    flat = values.ravel()
    return float(np.dot(flat, flat)), flat.size


class AudioReceiver(_Receiver):
    """Consumes a remote audio track: measures its level and plays it on ``output``.

    The receiver owns its output: ``set_output`` closes the previous one and ``stop``
    closes the current one, as the local tracks do with their sources, so that after
    a call ``open_devices()`` is empty. ``paused`` (an audio interruption of the
    platform) stops writing to the output; the level is still measured.
    """

    def __init__(self, track: RemoteTrack, output: AudioOutput | None = None) -> None:
        super().__init__(track)
        self._output = output
        self.paused = False
        #: (seconds, sum of squares, sample count) per recent frame.
        self._window: collections.deque[tuple[float, float, int]] = collections.deque()
        self._window_s = 0.0

    @property
    def output(self) -> AudioOutput | None:
        return self._output

    def set_output(self, output: AudioOutput | None) -> None:
        """Switch speaker (None: play nowhere). The previous one is closed."""
        if output is self._output:
            return
        previous, self._output = self._output, output
        if previous is not None:
            previous.close()

    @property
    def level(self) -> float:
        """RMS of the last ~200 ms, 0.0 (silence) to 1.0 (full scale)."""
        total, count = 0.0, 0
        for _, sum_sq, n in self._window:
            total += sum_sq
            count += n
        return math.sqrt(total / count) if count else 0.0

    def _on_frame(self, frame: object) -> None:
        if not isinstance(frame, av.AudioFrame):
            return
        self.frames += 1
        self.first_frame.set()
        sum_sq, count = _sum_of_squares(frame)
        seconds = frame.samples / (frame.sample_rate or AUDIO_RATE)
        self._window.append((seconds, sum_sq, count))
        self._window_s += seconds
        # The epsilon: ten 20 ms frames add up to a hair under 0.2 s in floating point.
        while (
            len(self._window) > 1 and self._window_s - self._window[0][0] >= LEVEL_WINDOW_S - 1e-6
        ):
            self._window_s -= self._window.popleft()[0]
        output = self._output
        if output is not None and not self.paused and not output.closed:
            try:
                output.write(frame)
            except Exception as exc:
                logger.error("audio output failed: %s", type(exc).__name__)

    def _on_end(self) -> None:
        # No sound any more: a level meter must not freeze at the last value.
        self._window.clear()
        self._window_s = 0.0

    async def stop(self) -> None:
        await super().stop()
        self.set_output(None)


# -- a quick measurement -----------------------------------------------------------------


def _bench() -> None:  # pragma: no cover - a tool, run by hand
    """CPU cost per frame of the test pattern: ``python -m peer.media``."""
    for width, height in ((320, 240), (640, 480), (1280, 720)):
        source = TestPatternSource(SYNTHETIC_FRONT, width, height, 30)
        source.render()  # first-use costs aside
        count = 300
        start = time.process_time()
        for _ in range(count):
            source.render()
        cost = (time.process_time() - start) / count * 1000
        print(f"{width}x{height}: {cost:.2f} ms CPU per frame")


if __name__ == "__main__":  # pragma: no cover
    _bench()
