"""Real cameras, microphones and audio outputs through Qt Multimedia.

:class:`QtMediaBackend` implements :class:`peer.devices.MediaBackend` over PySide6's
Qt Multimedia (``QMediaDevices``, ``QCamera`` + ``QMediaCaptureSession`` +
``QVideoSink``, ``QAudioSource``, ``QAudioSink``). The apps run Qt and asyncio on one
thread (qasync); every ``open_*``, ``write()`` and ``close()`` must be called on that
(the Qt) thread, while the frame callbacks are safe to arrive on any thread.

How it works:

- Devices are listed by description with stable ids ``"qt:<kind>:<Qt device id>"``
  (the id decoded when it is printable UTF-8, else ``hex:`` and its bytes in hex);
  ``changed`` fires with the kind when ``QMediaDevices`` says a list changed, and an
  open device that left its list is closed (its ``read()`` raises ``SourceClosed``).
- Video: the camera format closest to the request is chosen; on every
  ``videoFrameChanged`` the frame is mapped and its planes copied (a memcpy; Qt's
  own ``toImage()`` only for pixel formats PyAV cannot take as they are, e.g. JPEG),
  and only the newest copy is kept. ``read()`` waits for a new one and turns it into a
  ``yuv420p`` ``av.VideoFrame`` in a worker thread (``asyncio.to_thread``), scaled
  down to fit the requested size when the camera delivers more.
- Microphone: ``QAudioSource`` at 48 kHz mono Int16 in pull mode (``start()`` gives
  a ``QIODevice``, read on ``readyRead``), cut into 960-sample frames, at most
  :data:`MIC_BUFFER_FRAMES` kept (the oldest dropped when the reader falls behind).
  A device that refuses that format is opened in its preferred one and resampled.
- Speaker: ``QAudioSink`` at 48 kHz Int16, stereo (or mono), push mode; ``write()``
  resamples when needed and drops a frame the sink has no room for.

What could be exercised where this module was written (a headless machine with no
camera, microphone or speaker) and what could not: enumeration, the ``changed``
wiring, the QVideoFrame → ``av.VideoFrame`` conversion of every pixel format it maps
(checked against Qt's own conversion), the path through a real ``QVideoSink``, audio
chunking and resampling, and the error paths were tested; so were real capture and
playback through a private PulseAudio server (a null sink played into, a virtual
microphone recording it), where ``pulseaudio`` is installed. Capture from a real
camera was not (nothing can fake one to Qt here), nor how a platform reports an
unplugged device, nor other platforms' audio backends. Frame rotation
(``QVideoFrame.rotation``, set by some mobile cameras) is not applied.

PySide6 6.12.0 on Python 3.11 loses a reference to ``None`` on every call of a
method returning nothing (``QVideoFrame.unmap()`` among them), which kills the
process after some thousands of calls; use another PySide6 or Python >= 3.12 (the
tests check it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import sys
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Generic, TypeVar

import av
import numpy as np

from peer.chat import Listeners
from peer.devices import (
    AUDIO_CHANNELS,
    AUDIO_RATE,
    AUDIO_SAMPLES,
    DeviceKind,
    Facing,
    MediaDevice,
    SourceClosed,
)

# Qt Multimedia ships in PySide6-Addons and needs system libraries (libpulse0 on
# Linux): this module imports without it, so that ``qt_backend_or_none`` can say None.
_QT_IMPORT_ERROR: ImportError | None = None
try:
    from PySide6.QtCore import QCoreApplication, QIODevice
    from PySide6.QtGui import QImage
    from PySide6.QtMultimedia import (
        QAudioDevice,
        QAudioFormat,
        QAudioSink,
        QAudioSource,
        QCamera,
        QCameraDevice,
        QCameraFormat,
        QMediaCaptureSession,
        QMediaDevices,
        QtAudio,
        QVideoFrame,
        QVideoFrameFormat,
        QVideoSink,
    )
except ImportError as exc:  # pragma: no cover - depends on the machine
    _QT_IMPORT_ERROR = exc

__all__ = [
    "MIC_BUFFER_FRAMES",
    "AudioChunker",
    "CapturedFrame",
    "DeviceNotFound",
    "DeviceOpenFailed",
    "QtMediaBackend",
    "QtVideoSinkReader",
    "capture_video_frame",
    "choose_camera_format",
    "qt_backend_or_none",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How many 20 ms frames a microphone keeps for a slow reader (oldest dropped first).
MIC_BUFFER_FRAMES = 10
_TIME_BASE = Fraction(1, AUDIO_RATE)
_LAYOUTS = {1: "mono", 2: "stereo"}


class DeviceNotFound(LookupError):
    """The device is not (or no longer) among the platform's devices of its kind."""


class DeviceOpenFailed(RuntimeError):
    """The platform refused to open the device (busy, no permission, no server)."""


def _layout(channels: int) -> str:
    return _LAYOUTS.get(channels, f"{channels}c")


# -- device ids -------------------------------------------------------------------


def _qt_id(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable() and not text.startswith("hex:"):
        return text
    return "hex:" + raw.hex()


def _device_id(kind: DeviceKind, raw: bytes) -> str:
    return f"qt:{kind.value}:{_qt_id(raw)}"


def _raw_id(device: QCameraDevice | QAudioDevice) -> bytes:
    return bytes(device.id().data())


# -- a mailbox between a Qt callback (any thread) and one asyncio reader -------------


class _Mailbox(Generic[T]):
    """Items put from any thread, taken by ``await get()``; bounded, oldest dropped.

    ``maxlen=1`` is "latest wins". The wake-up goes through
    ``loop.call_soon_threadsafe``, so a callback on another thread is safe; a put
    before the first ``get()`` (no loop known yet) is simply found by it.
    """

    def __init__(self, maxlen: int) -> None:
        self._items: collections.deque[T] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed_reason: str | None = None
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        with self._lock:
            if self._closed_reason is not None:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
            loop = self._loop
        self._wake(loop)

    def close(self, reason: str) -> None:
        with self._lock:
            if self._closed_reason is None:
                self._closed_reason = reason
            self._items.clear()
            loop = self._loop
        self._wake(loop)

    def _wake(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if loop is None:
            return
        # A closed loop: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._event.set)

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                self._loop = loop
                if self._closed_reason is not None:
                    raise SourceClosed(self._closed_reason)
                if self._items:
                    return self._items.popleft()
            self._event.clear()
            await self._event.wait()


# -- video: QVideoFrame -> av.VideoFrame --------------------------------------------

#: Qt pixel formats whose planes PyAV takes as they are: (PyAV format, plane order).
#: Qt names packed RGB formats by byte order, as PyAV does.
_AV_FORMATS: dict[QVideoFrameFormat.PixelFormat, tuple[str, tuple[int, ...]]] = {}
#: QImage formats (from ``toImage()``) PyAV takes as they are.
_IMAGE_FORMATS: dict[QImage.Format, str] = {}

if _QT_IMPORT_ERROR is None:
    _PF = QVideoFrameFormat.PixelFormat
    _AV_FORMATS = {
        _PF.Format_YUV420P: ("yuv420p", (0, 1, 2)),
        _PF.Format_YV12: ("yuv420p", (0, 2, 1)),  # Y, V, U
        _PF.Format_YUV422P: ("yuv422p", (0, 1, 2)),
        _PF.Format_NV12: ("nv12", (0, 1)),
        _PF.Format_NV21: ("nv21", (0, 1)),
        _PF.Format_YUYV: ("yuyv422", (0,)),
        _PF.Format_UYVY: ("uyvy422", (0,)),
        _PF.Format_Y8: ("gray", (0,)),
        _PF.Format_Y16: ("gray16le", (0,)),
        _PF.Format_P010: ("p010le", (0, 1)),
        _PF.Format_P016: ("p016le", (0, 1)),
        _PF.Format_YUV420P10: ("yuv420p10le", (0, 1, 2)),
        _PF.Format_ARGB8888: ("argb", (0,)),
        _PF.Format_ARGB8888_Premultiplied: ("argb", (0,)),
        _PF.Format_XRGB8888: ("argb", (0,)),
        _PF.Format_BGRA8888: ("bgra", (0,)),
        _PF.Format_BGRA8888_Premultiplied: ("bgra", (0,)),
        _PF.Format_BGRX8888: ("bgra", (0,)),
        _PF.Format_ABGR8888: ("abgr", (0,)),
        _PF.Format_XBGR8888: ("abgr", (0,)),
        _PF.Format_RGBA8888: ("rgba", (0,)),
        _PF.Format_RGBX8888: ("rgba", (0,)),
    }
    _IF = QImage.Format
    _NATIVE_32 = "bgra" if sys.byteorder == "little" else "argb"  # 0xAARRGGBB words
    _IMAGE_FORMATS = {
        _IF.Format_RGB32: _NATIVE_32,
        _IF.Format_ARGB32: _NATIVE_32,
        _IF.Format_ARGB32_Premultiplied: _NATIVE_32,
        _IF.Format_RGBA8888: "rgba",
        _IF.Format_RGBX8888: "rgba",
        _IF.Format_RGBA8888_Premultiplied: "rgba",
        _IF.Format_RGB888: "rgb24",
        _IF.Format_BGR888: "bgr24",
        _IF.Format_Grayscale8: "gray",
    }


@dataclasses.dataclass(frozen=True, slots=True)
class CapturedFrame:
    """A copy of one video frame's pixels, made cheaply on the thread Qt called us on;
    :meth:`to_av` does the expensive part (conversion, scaling) anywhere else."""

    av_format: str
    width: int
    height: int
    #: (bytes, bytes per line) per plane, in PyAV's plane order.
    planes: tuple[tuple[bytes, int], ...]

    def to_av(self, max_width: int | None = None, max_height: int | None = None) -> av.VideoFrame:
        """A ``yuv420p`` frame, scaled down (aspect kept) to fit ``max_width`` x
        ``max_height`` when it is larger."""
        frame = av.VideoFrame(self.width, self.height, self.av_format)
        for dst_plane, (data, stride) in zip(frame.planes, self.planes, strict=True):
            rows = min(dst_plane.height, len(data) // stride)
            width = min(stride, dst_plane.line_size)
            src = np.frombuffer(data, np.uint8, count=rows * stride).reshape(rows, stride)
            dst = np.frombuffer(
                memoryview(dst_plane), np.uint8, count=dst_plane.height * dst_plane.line_size
            )
            dst.reshape(dst_plane.height, dst_plane.line_size)[:rows, :width] = src[:, :width]
        width, height = _fit(self.width, self.height, max_width, max_height)
        if self.av_format == "yuv420p" and (width, height) == (self.width, self.height):
            return frame
        return frame.reformat(width=width, height=height, format="yuv420p")


def _fit(width: int, height: int, max_width: int | None, max_height: int | None) -> tuple[int, int]:
    scale = min(
        1.0,
        (max_width / width) if max_width else 1.0,
        (max_height / height) if max_height else 1.0,
    )
    if scale >= 1.0:
        return width, height
    # Even sizes: what yuv420p and the encoders want.
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def capture_video_frame(frame: QVideoFrame) -> CapturedFrame | None:
    """Copy the pixels of a ``QVideoFrame`` (None when it has none to give).

    Cheap enough for the GUI thread: a map and a copy per plane. Only a pixel format
    PyAV cannot take as it is (JPEG, AYUV, IMC*, GPU textures) goes through Qt's
    ``toImage()``.
    """
    if not frame.isValid():
        return None
    width, height = frame.width(), frame.height()
    known = _AV_FORMATS.get(frame.pixelFormat())
    if known is not None and frame.map(QVideoFrame.MapMode.ReadOnly):
        try:
            av_format, order = known
            if frame.planeCount() >= len(order):
                planes = tuple(
                    (
                        bytes(memoryview(frame.bits(i))[: frame.mappedBytes(i)]),
                        frame.bytesPerLine(i),
                    )
                    for i in order
                )
                return CapturedFrame(av_format, width, height, planes)
        finally:
            frame.unmap()
    image = frame.toImage()
    if image.isNull():
        return None
    image_format = _IMAGE_FORMATS.get(image.format())
    if image_format is None:
        image = image.convertToFormat(QImage.Format.Format_RGB32)
        image_format = _IMAGE_FORMATS[QImage.Format.Format_RGB32]
    data = bytes(memoryview(image.constBits())[: image.sizeInBytes()])
    return CapturedFrame(
        image_format, image.width(), image.height(), ((data, image.bytesPerLine()),)
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _FormatOption:
    width: int
    height: int
    max_fps: float
    #: 0: planes PyAV takes; 1: through ``toImage()`` (JPEG and the like).
    conversion: int


def _choose(options: Sequence[_FormatOption], width: int, height: int, fps: int) -> int | None:
    """Index of the option closest to the request: size first (by area, in octaves),
    then a frame rate that reaches the request, then the cheaper conversion."""

    def cost(option: _FormatOption) -> float:
        area = max(1, option.width * option.height)
        size = abs(math.log2(area / max(1, width * height)))
        short = max(0.0, fps - option.max_fps) / max(1, fps)
        return size + 2 * short + 0.1 * option.conversion

    if not options:
        return None
    return min(range(len(options)), key=lambda i: cost(options[i]))


def choose_camera_format(
    formats: Sequence[QCameraFormat], width: int, height: int, fps: int
) -> QCameraFormat | None:
    options = [
        _FormatOption(
            f.resolution().width(),
            f.resolution().height(),
            f.maxFrameRate(),
            0 if f.pixelFormat() in _AV_FORMATS else 1,
        )
        for f in formats
    ]
    index = _choose(options, width, height, fps)
    return None if index is None else formats[index]


class QtVideoSinkReader:
    """A ``QVideoSink`` whose newest frame ``read()`` returns as an ``av.VideoFrame``.

    The camera source feeds it; anything else that can feed a ``QVideoSink`` could.
    """

    def __init__(self, *, max_width: int | None = None, max_height: int | None = None) -> None:
        self.sink = QVideoSink()
        self._max = (max_width, max_height)
        self._latest: _Mailbox[CapturedFrame] = _Mailbox(maxlen=1)
        self._conversion_failed = False
        self.sink.videoFrameChanged.connect(self._on_frame)

    @property
    def closed(self) -> bool:
        return self._latest.closed

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before anyone read them."""
        return self._latest.dropped

    def _on_frame(self, frame: QVideoFrame) -> None:
        if self._latest.closed:
            return
        try:
            captured = capture_video_frame(frame)
        except Exception:
            logger.exception("could not copy a video frame")
            return
        if captured is not None:
            self._latest.put(captured)

    async def read(self) -> av.VideoFrame:
        while True:
            captured = await self._latest.get()
            try:
                return await asyncio.to_thread(captured.to_av, *self._max)
            except Exception:  # one bad frame must not end the video: wait for the next
                if not self._conversion_failed:
                    logger.exception("could not convert a %s frame", captured.av_format)
                self._conversion_failed = True

    def close(self, reason: str = "closed") -> None:
        if self._latest.closed:
            return
        self._latest.close(reason)
        with contextlib.suppress(RuntimeError, TypeError):  # its C++ object is gone
            self.sink.videoFrameChanged.disconnect(self._on_frame)


# -- audio: bytes -> 20 ms frames, and frames -> bytes --------------------------------

_SAMPLE_FORMATS: dict[QAudioFormat.SampleFormat, str] = {}
if _QT_IMPORT_ERROR is None:
    _SF = QAudioFormat.SampleFormat
    _SAMPLE_FORMATS = {
        _SF.UInt8: "u8",
        _SF.Int16: "s16",
        _SF.Int32: "s32",
        _SF.Float: "flt",
    }


class AudioChunker:
    """Captured PCM bytes in; 960-sample, 48 kHz, mono ``s16`` ``av.AudioFrame``s out.

    Input of another rate, channel count or sample format (``"u8"``, ``"s16"``,
    ``"s32"``, ``"flt"``, packed) is resampled first. At most ``max_frames`` frames wait
    for :meth:`pop`; when the reader falls behind the oldest are dropped (counted in
    ``dropped``), so latency stays bounded.
    """

    def __init__(
        self,
        *,
        rate: int = AUDIO_RATE,
        channels: int = AUDIO_CHANNELS,
        sample_format: str = "s16",
        max_frames: int = MIC_BUFFER_FRAMES,
    ) -> None:
        self._native = (rate, channels, sample_format) == (AUDIO_RATE, AUDIO_CHANNELS, "s16")
        self._rate, self._channels, self._format = rate, channels, sample_format
        self._in_frame_bytes = channels * av.AudioFormat(sample_format).bytes
        self._dtype = {"u8": "u1", "s16": "<i2", "s32": "<i4", "flt": "<f4"}[sample_format]
        self._resampler = (
            None
            if self._native
            else av.AudioResampler(format="s16", layout=_layout(AUDIO_CHANNELS), rate=AUDIO_RATE)
        )
        self._pending_in = bytearray()  # a partial sample frame of the input
        self._pending = bytearray()  # 48 kHz mono s16, less than one 20 ms frame
        self._frames: collections.deque[av.AudioFrame] = collections.deque(maxlen=max_frames)
        self._pts = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def feed(self, data: bytes) -> int:
        """Add captured bytes; returns how many complete frames are now waiting."""
        if self._native:
            self._pending += data
        else:
            self._pending_in += data
            usable = len(self._pending_in) // self._in_frame_bytes * self._in_frame_bytes
            if usable:
                chunk = bytes(self._pending_in[:usable])
                del self._pending_in[:usable]
                self._pending += self._resample(chunk)
        step = AUDIO_SAMPLES * AUDIO_CHANNELS * 2
        while len(self._pending) >= step:
            samples = np.frombuffer(bytes(self._pending[:step]), "<i2")
            del self._pending[:step]
            frame = av.AudioFrame.from_ndarray(
                samples.reshape(1, -1), format="s16", layout=_layout(AUDIO_CHANNELS)
            )
            frame.sample_rate = AUDIO_RATE
            frame.time_base = _TIME_BASE
            frame.pts = self._pts
            self._pts += AUDIO_SAMPLES
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(frame)
        return len(self._frames)

    def _resample(self, chunk: bytes) -> bytes:
        assert self._resampler is not None
        samples = np.frombuffer(chunk, self._dtype).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(
            samples, format=self._format, layout=_layout(self._channels)
        )
        frame.sample_rate = self._rate
        out = self._resampler.resample(frame)
        return b"".join(f.to_ndarray().tobytes() for f in out)

    def pop(self) -> av.AudioFrame | None:
        return self._frames.popleft() if self._frames else None


class _PcmConverter:
    """``av.AudioFrame``s of any format to packed 48 kHz ``s16`` bytes of ``channels``."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._resampler: av.AudioResampler | None = None
        self._resampler_key: tuple[str, str, int] | None = None

    def convert(self, frame: av.AudioFrame) -> bytes:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key == ("s16", _layout(self.channels), AUDIO_RATE):
            data: bytes = frame.to_ndarray().tobytes()
            return data
        if self._resampler is None or self._resampler_key != key:
            self._resampler = av.AudioResampler(
                format="s16", layout=_layout(self.channels), rate=AUDIO_RATE
            )
            self._resampler_key = key
        return b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(frame))


# -- the sources and the output -----------------------------------------------------


def _audio_format(rate: int, channels: int) -> QAudioFormat:
    fmt = QAudioFormat()
    fmt.setSampleRate(rate)
    fmt.setChannelCount(channels)
    fmt.setSampleFormat(QAudioFormat.SampleFormat.Int16)
    return fmt


class _Held:
    """What every open device shares: its MediaDevice, and telling the backend when it
    closes (so ``open_devices()`` is always true)."""

    def __init__(self, device: MediaDevice, on_close: Callable[[_Held], None]) -> None:
        self._device = device
        self._on_close = on_close

    @property
    def device(self) -> MediaDevice:
        return self._device

    def _released(self) -> None:
        self._on_close(self)

    def lost(self, reason: str) -> None:
        """The device failed or left: release it; a reader sees ``SourceClosed``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _QtVideoSource(_Held):
    def __init__(
        self,
        device: MediaDevice,
        qdevice: QCameraDevice,
        *,
        width: int,
        height: int,
        fps: int,
        on_close: Callable[[_Held], None],
    ) -> None:
        super().__init__(device, on_close)
        self._closing = False
        self._reader = QtVideoSinkReader(max_width=width, max_height=height)
        self._camera = QCamera(qdevice)
        chosen = choose_camera_format(qdevice.videoFormats(), width, height, fps)
        if chosen is not None:
            self._camera.setCameraFormat(chosen)
        self._session = QMediaCaptureSession()
        self._session.setCamera(self._camera)
        self._session.setVideoSink(self._reader.sink)
        self._camera.errorOccurred.connect(self._on_error)
        self._camera.activeChanged.connect(self._on_active)
        self._camera.start()
        if self._camera.error() != QCamera.Error.NoError:
            message = self._camera.errorString() or "camera error"
            self._release(f"camera failed: {message}")
            raise DeviceOpenFailed(f"cannot open camera {device.name!r}: {message}")

    @property
    def closed(self) -> bool:
        return self._reader.closed

    async def read(self) -> av.VideoFrame:
        return await self._reader.read()

    def _on_error(self, error: QCamera.Error, message: str) -> None:
        if error != QCamera.Error.NoError and not self._closing:
            self.lost(f"camera failed: {message or error.name}")

    def _on_active(self, active: bool) -> None:
        if not active and not self._closing:
            self.lost("camera stopped")

    def lost(self, reason: str) -> None:
        logger.warning("camera %s: %s", self.device.name, reason)
        self._release(reason)

    def close(self) -> None:
        self._release("closed")

    def _release(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._reader.close(reason)
        self._camera.stop()
        self._session.setVideoSink(None)  # type: ignore[arg-type]
        self._session.setCamera(None)  # type: ignore[arg-type]
        self._camera.deleteLater()
        self._session.deleteLater()
        self._released()


class _QtAudioSource(_Held):
    def __init__(
        self, device: MediaDevice, qdevice: QAudioDevice, *, on_close: Callable[[_Held], None]
    ) -> None:
        super().__init__(device, on_close)
        self._frames: _Mailbox[av.AudioFrame] = _Mailbox(maxlen=MIC_BUFFER_FRAMES)
        wanted = _audio_format(AUDIO_RATE, AUDIO_CHANNELS)
        fmt = wanted
        if not qdevice.isNull() and not qdevice.isFormatSupported(wanted):
            preferred = qdevice.preferredFormat()
            if preferred.isValid() and preferred.sampleFormat() in _SAMPLE_FORMATS:
                fmt = preferred
        av_format = _SAMPLE_FORMATS[fmt.sampleFormat()]
        self._chunker = AudioChunker(
            rate=fmt.sampleRate(),
            channels=fmt.channelCount(),
            sample_format=av_format,
            max_frames=MIC_BUFFER_FRAMES,
        )
        self._io: QIODevice | None = None
        self._source = QAudioSource(qdevice, fmt)
        self._source.stateChanged.connect(self._on_state)
        self._io = self._source.start()
        if self._io is None or self._source.error() != QtAudio.Error.NoError:
            error = self._source.error().name
            self._release(f"microphone failed: {error}")
            raise DeviceOpenFailed(f"cannot open microphone {device.name!r}: {error}")
        self._io.readyRead.connect(self._on_ready_read)

    @property
    def closed(self) -> bool:
        return self._frames.closed

    @property
    def dropped(self) -> int:
        return self._frames.dropped

    def _on_ready_read(self) -> None:
        if self._io is None or self._frames.closed:
            return
        data = bytes(self._io.readAll().data())
        self._chunker.feed(data)
        while (frame := self._chunker.pop()) is not None:
            self._frames.put(frame)

    def _on_state(self) -> None:
        # No state argument: PySide6 6.12 cannot convert QAudio::State for a Python
        # slot ("Cannot call meta function"), so we ask the source instead.
        if self._frames.closed:
            return
        error = self._source.error()
        if self._source.state() == QtAudio.State.StoppedState and error != QtAudio.Error.NoError:
            self.lost(f"microphone failed: {error.name}")

    async def read(self) -> av.AudioFrame:
        return await self._frames.get()

    def lost(self, reason: str) -> None:
        logger.warning("microphone %s: %s", self.device.name, reason)
        self._release(reason)

    def close(self) -> None:
        self._release("closed")

    def _release(self, reason: str) -> None:
        if self._frames.closed:
            return
        self._frames.close(reason)
        if self._io is not None:
            with contextlib.suppress(RuntimeError, TypeError):
                self._io.readyRead.disconnect(self._on_ready_read)
            self._io = None
        self._source.stop()
        self._source.deleteLater()
        self._released()


class _QtAudioOutput(_Held):
    def __init__(
        self, device: MediaDevice, qdevice: QAudioDevice, *, on_close: Callable[[_Held], None]
    ) -> None:
        super().__init__(device, on_close)
        self._closed = False
        self.dropped = 0
        channels = 2
        for candidate in (2, 1):
            if qdevice.isFormatSupported(_audio_format(AUDIO_RATE, candidate)):
                channels = candidate
                break
        self._converter = _PcmConverter(channels)
        self._io: QIODevice | None = None
        self._sink = QAudioSink(qdevice, _audio_format(AUDIO_RATE, channels))
        # ~100 ms of room: enough for a jittery network, little added latency.
        self._sink.setBufferSize(AUDIO_RATE // 10 * channels * 2)
        self._sink.stateChanged.connect(self._on_state)
        self._io = self._sink.start()
        if self._io is None or self._sink.error() != QtAudio.Error.NoError:
            error = self._sink.error().name
            self._release()
            raise DeviceOpenFailed(f"cannot open speaker {device.name!r}: {error}")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channels(self) -> int:
        return self._converter.channels

    def write(self, frame: av.AudioFrame) -> None:
        if self._closed or self._io is None:
            return
        data = self._converter.convert(frame)
        if not data:
            return
        if self._sink.bytesFree() < len(data):
            self.dropped += 1
            return
        self._io.write(data)

    def _on_state(self) -> None:  # no argument: see _QtAudioSource._on_state
        if self._closed:
            return
        error = self._sink.error()
        if self._sink.state() == QtAudio.State.StoppedState and error not in (
            QtAudio.Error.NoError,
            QtAudio.Error.UnderrunError,
        ):
            self.lost(f"speaker failed: {error.name}")

    def lost(self, reason: str) -> None:
        logger.warning("speaker %s: %s", self.device.name, reason)
        self._release()

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._io = None
        self._sink.stop()
        self._sink.deleteLater()
        self._released()


# -- the backend ------------------------------------------------------------------


def _require_qt() -> None:
    if _QT_IMPORT_ERROR is not None:
        raise RuntimeError(
            "Qt Multimedia is not available (PySide6-Addons and, on Linux, libpulse0 "
            f"are needed): {_QT_IMPORT_ERROR}"
        )
    if QCoreApplication.instance() is None:
        raise RuntimeError(
            "QtMediaBackend needs a Qt application: create the QGuiApplication (or "
            "QApplication) first"
        )


class QtMediaBackend:
    """The platform's cameras, microphones and audio outputs (see the module doc)."""

    name = "qt"

    def __init__(self) -> None:
        _require_qt()
        self.changed: Listeners[DeviceKind] = Listeners()
        self._held: list[_Held] = []
        self._qdevices = QMediaDevices()
        self._qdevices.videoInputsChanged.connect(self._on_video_inputs_changed)
        self._qdevices.audioInputsChanged.connect(self._on_audio_inputs_changed)
        self._qdevices.audioOutputsChanged.connect(self._on_audio_outputs_changed)
        self._listening = True

    # listing

    def devices(self, kind: DeviceKind) -> list[MediaDevice]:
        if kind is DeviceKind.CAMERA:
            default = _raw_id(QMediaDevices.defaultVideoInput())
            return [self._camera_device(camera, default) for camera in QMediaDevices.videoInputs()]
        qdevices, default_device = self._audio_devices(kind)
        default = _raw_id(default_device)
        return [
            MediaDevice(
                device_id=_device_id(kind, _raw_id(d)),
                name=d.description(),
                kind=kind,
                is_default=bool(default) and _raw_id(d) == default,
            )
            for d in qdevices
        ]

    @staticmethod
    def _camera_device(camera: QCameraDevice, default: bytes) -> MediaDevice:
        position = camera.position()
        facing = {
            QCameraDevice.Position.FrontFace: Facing.FRONT,
            QCameraDevice.Position.BackFace: Facing.BACK,
        }.get(position, Facing.UNKNOWN)
        raw = _raw_id(camera)
        return MediaDevice(
            device_id=_device_id(DeviceKind.CAMERA, raw),
            name=camera.description(),
            kind=DeviceKind.CAMERA,
            facing=facing,
            is_default=bool(default) and raw == default,
        )

    @staticmethod
    def _audio_devices(kind: DeviceKind) -> tuple[list[QAudioDevice], QAudioDevice]:
        if kind is DeviceKind.MICROPHONE:
            return QMediaDevices.audioInputs(), QMediaDevices.defaultAudioInput()
        return QMediaDevices.audioOutputs(), QMediaDevices.defaultAudioOutput()

    def _find_camera(self, device: MediaDevice) -> QCameraDevice:
        self._check_kind(device, DeviceKind.CAMERA)
        for camera in QMediaDevices.videoInputs():
            if _device_id(DeviceKind.CAMERA, _raw_id(camera)) == device.device_id:
                return camera
        raise DeviceNotFound(f"no camera {device.device_id!r} ({device.name!r}) is present")

    def _find_audio(self, device: MediaDevice, kind: DeviceKind) -> QAudioDevice:
        self._check_kind(device, kind)
        for candidate in self._audio_devices(kind)[0]:
            if _device_id(kind, _raw_id(candidate)) == device.device_id:
                return candidate
        raise DeviceNotFound(f"no {kind.value} {device.device_id!r} ({device.name!r}) is present")

    @staticmethod
    def _check_kind(device: MediaDevice, kind: DeviceKind) -> None:
        if device.kind is not kind:
            raise ValueError(f"{device.name!r} is a {device.kind.value}, not a {kind.value}")

    # opening

    def open_camera(
        self, device: MediaDevice, *, width: int, height: int, fps: int
    ) -> _QtVideoSource:
        qdevice = self._find_camera(device)
        source = _QtVideoSource(
            device, qdevice, width=width, height=height, fps=fps, on_close=self._forget
        )
        self._held.append(source)
        return source

    def open_microphone(self, device: MediaDevice) -> _QtAudioSource:
        qdevice = self._find_audio(device, DeviceKind.MICROPHONE)
        source = _QtAudioSource(device, qdevice, on_close=self._forget)
        self._held.append(source)
        return source

    def open_speaker(self, device: MediaDevice) -> _QtAudioOutput:
        qdevice = self._find_audio(device, DeviceKind.SPEAKER)
        output = _QtAudioOutput(device, qdevice, on_close=self._forget)
        self._held.append(output)
        return output

    def open_devices(self) -> list[MediaDevice]:
        return [held.device for held in self._held]

    def _forget(self, held: _Held) -> None:
        if held in self._held:
            self._held.remove(held)

    def close(self) -> None:
        for held in list(self._held):
            held.close()
        self._held.clear()
        if self._listening:
            self._listening = False
            qdevices = self._qdevices
            qdevices.videoInputsChanged.disconnect(self._on_video_inputs_changed)
            qdevices.audioInputsChanged.disconnect(self._on_audio_inputs_changed)
            qdevices.audioOutputsChanged.disconnect(self._on_audio_outputs_changed)

    # changes

    def _on_video_inputs_changed(self) -> None:
        self._device_list_changed(DeviceKind.CAMERA)

    def _on_audio_inputs_changed(self) -> None:
        self._device_list_changed(DeviceKind.MICROPHONE)

    def _on_audio_outputs_changed(self) -> None:
        self._device_list_changed(DeviceKind.SPEAKER)

    def _device_list_changed(self, kind: DeviceKind) -> None:
        present = {device.device_id for device in self.devices(kind)}
        for held in list(self._held):
            if held.device.kind is kind and held.device.device_id not in present:
                held.lost(f"{kind.value} disconnected")
        self.changed.fire(kind)


def qt_backend_or_none() -> QtMediaBackend | None:
    """The Qt backend, or None when Qt Multimedia cannot load or no Qt application
    exists yet (callers then fall back to synthetic devices). Never raises."""
    if _QT_IMPORT_ERROR is not None:
        logger.info("Qt Multimedia unavailable: %s", _QT_IMPORT_ERROR)
        return None
    try:
        if QCoreApplication.instance() is None:
            return None
        return QtMediaBackend()
    except Exception:
        logger.exception("Qt Multimedia backend could not start")
        return None
