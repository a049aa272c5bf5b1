"""The Qt Multimedia backend, on a machine with no camera, microphone or speaker.

What runs here: enumeration and its consistency, the ``changed`` wiring, the
QVideoFrame → ``av.VideoFrame`` conversion of every pixel format it maps (checked
against the picture it was made from and against Qt's own ``toImage()``), a real
``QVideoSink`` feeding ``read()``, audio chunking and resampling, the error paths, and
(where ``pulseaudio`` is installed) real capture and playback through a private sound
server. Capture from a real camera cannot run here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray
from PySide6.QtCore import QSize
from PySide6.QtGui import QColor, QImage
from PySide6.QtMultimedia import (
    QAudioDevice,
    QCameraDevice,
    QMediaDevices,
    QVideoFrame,
    QVideoFrameFormat,
)
from PySide6.QtWidgets import QApplication

import peer.qt_media as qt_media
from peer.devices import (
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
from peer.qt_media import (
    AudioChunker,
    CapturedFrame,
    DeviceNotFound,
    DeviceOpenFailed,
    QtMediaBackend,
    QtVideoSinkReader,
    capture_video_frame,
    qt_backend_or_none,
)

PF = QVideoFrameFormat.PixelFormat
ROOT = Path(__file__).resolve().parents[2]
W, H = 64, 48


def _conforms(
    backend: QtMediaBackend, device: MediaDevice
) -> tuple[MediaBackend, VideoSource, AudioSource, AudioOutput]:
    """Never called: mypy checks that the backend and what it opens keep the contract."""
    return (
        backend,
        backend.open_camera(device, width=640, height=480, fps=30),
        backend.open_microphone(device),
        backend.open_speaker(device),
    )


@pytest.fixture
def backend(qapp: QApplication) -> Iterator[QtMediaBackend]:
    b = QtMediaBackend()
    yield b
    b.close()


# -- availability -----------------------------------------------------------------


def test_import_creates_no_app_and_the_backend_needs_one() -> None:
    script = """
from PySide6.QtCore import QCoreApplication
import peer.qt_media as m
assert QCoreApplication.instance() is None, "importing created an application"
assert m.qt_backend_or_none() is None
try:
    m.QtMediaBackend()
except RuntimeError as exc:
    assert "Qt application" in str(exc), exc
else:
    raise AssertionError("a backend without an application")
print("ok")
"""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_backend_or_none_with_an_app(qapp: QApplication) -> None:
    b = qt_backend_or_none()
    assert isinstance(b, QtMediaBackend)
    assert b.name == "qt"
    b.close()


def test_backend_or_none_without_qt_multimedia(
    qapp: QApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qt_media, "_QT_IMPORT_ERROR", ImportError("libpulse.so.0: not found"))
    assert qt_backend_or_none() is None
    with pytest.raises(RuntimeError, match=r"PySide6-Addons.*libpulse"):
        QtMediaBackend()


# -- enumeration and changes -----------------------------------------------------


@pytest.mark.parametrize("kind", list(DeviceKind))
def test_devices_are_consistent(backend: QtMediaBackend, kind: DeviceKind) -> None:
    devices = backend.devices(kind)
    assert isinstance(devices, list)
    ids = [d.device_id for d in devices]
    assert len(set(ids)) == len(ids)
    assert sum(d.is_default for d in devices) <= 1
    for d in devices:
        assert isinstance(d, MediaDevice)
        assert d.kind is kind
        assert d.device_id.startswith(f"qt:{kind.value}:")
        assert not d.synthetic
        assert isinstance(d.facing, Facing)
    qt_count = {
        DeviceKind.CAMERA: len(QMediaDevices.videoInputs()),
        DeviceKind.MICROPHONE: len(QMediaDevices.audioInputs()),
        DeviceKind.SPEAKER: len(QMediaDevices.audioOutputs()),
    }[kind]
    assert len(devices) == qt_count
    assert backend.devices(kind) == devices  # stable ids, stable order


def test_device_ids_are_readable_and_unambiguous() -> None:
    assert qt_media._qt_id(b"/dev/video0") == "/dev/video0"
    assert qt_media._qt_id(b"alsa_input.pci-0000.analog") == "alsa_input.pci-0000.analog"
    assert qt_media._qt_id(b"\xff\x00") == "hex:ff00"
    assert qt_media._qt_id(b"a\nb") == "hex:610a62"
    # Text that looks like our hex form is hex-encoded too, so ids never collide.
    assert qt_media._qt_id(b"hex:ff00") == "hex:" + b"hex:ff00".hex()
    assert qt_media._device_id(DeviceKind.CAMERA, b"x") == "qt:camera:x"


@pytest.mark.parametrize(
    ("signal", "kind"),
    [
        ("videoInputsChanged", DeviceKind.CAMERA),
        ("audioInputsChanged", DeviceKind.MICROPHONE),
        ("audioOutputsChanged", DeviceKind.SPEAKER),
    ],
)
def test_changed_fires_with_the_kind(
    backend: QtMediaBackend, signal: str, kind: DeviceKind
) -> None:
    seen: list[DeviceKind] = []
    backend.changed.add(seen.append)
    getattr(backend._qdevices, signal).emit()
    assert seen == [kind]


def test_closed_backend_stops_listening(backend: QtMediaBackend) -> None:
    seen: list[DeviceKind] = []
    backend.changed.add(seen.append)
    backend.close()
    backend._qdevices.videoInputsChanged.emit()
    assert seen == []
    backend.close()  # idempotent


class FakeHeld(qt_media._Held):
    def __init__(self, backend: QtMediaBackend, device: MediaDevice) -> None:
        super().__init__(device, backend._forget)
        self.reasons: list[str] = []

    def lost(self, reason: str) -> None:
        self.reasons.append(reason)
        self._released()

    def close(self) -> None:
        self.lost("closed")


def test_a_device_that_leaves_its_list_is_closed(backend: QtMediaBackend) -> None:
    gone = MediaDevice("qt:camera:gone", "Unplugged", DeviceKind.CAMERA)
    mic = MediaDevice("qt:microphone:gone", "Headset", DeviceKind.MICROPHONE)
    held_camera, held_mic = FakeHeld(backend, gone), FakeHeld(backend, mic)
    backend._held += [held_camera, held_mic]
    assert backend.open_devices() == [gone, mic]
    seen: list[DeviceKind] = []
    backend.changed.add(seen.append)

    backend._qdevices.videoInputsChanged.emit()

    assert held_camera.reasons == ["camera disconnected"]
    assert held_mic.reasons == []  # another kind's list did not change
    assert backend.open_devices() == [mic]
    assert seen == [DeviceKind.CAMERA]
    backend.close()
    assert held_mic.reasons == ["closed"]
    assert backend.open_devices() == []


def _open(backend: QtMediaBackend, device: MediaDevice) -> object:
    if device.kind is DeviceKind.CAMERA:
        return backend.open_camera(device, width=640, height=480, fps=30)
    if device.kind is DeviceKind.MICROPHONE:
        return backend.open_microphone(device)
    return backend.open_speaker(device)


@pytest.mark.parametrize("kind", list(DeviceKind))
def test_opening_an_absent_device_says_so(backend: QtMediaBackend, kind: DeviceKind) -> None:
    device = MediaDevice(f"qt:{kind.value}:no-such-device", "Ghost", kind)
    with pytest.raises(DeviceNotFound, match="no-such-device"):
        _open(backend, device)
    assert backend.open_devices() == []


def test_opening_a_device_as_another_kind_is_refused(backend: QtMediaBackend) -> None:
    mic = MediaDevice("qt:microphone:x", "Headset", DeviceKind.MICROPHONE)
    with pytest.raises(ValueError, match="is a microphone, not a camera"):
        backend.open_camera(mic, width=640, height=480, fps=30)
    synthetic = MediaDevice("synthetic:speaker:null", "Null", DeviceKind.SPEAKER, synthetic=True)
    with pytest.raises(DeviceNotFound):
        backend.open_speaker(synthetic)


def test_a_camera_that_fails_to_open_is_released(backend: QtMediaBackend) -> None:
    if QMediaDevices.videoInputs():
        pytest.skip("a camera is present: a null device would open it")
    device = MediaDevice("qt:camera:null", "Null", DeviceKind.CAMERA)
    released: list[qt_media._Held] = []
    with pytest.raises(DeviceOpenFailed, match="cannot open camera 'Null'"):
        qt_media._QtVideoSource(
            device, QCameraDevice(), width=640, height=480, fps=30, on_close=released.append
        )
    assert len(released) == 1
    assert released[0].device == device


@pytest.mark.parametrize("kind", [DeviceKind.MICROPHONE, DeviceKind.SPEAKER])
def test_audio_that_fails_to_open_is_released(backend: QtMediaBackend, kind: DeviceKind) -> None:
    if QMediaDevices.audioInputs() or QMediaDevices.audioOutputs():
        pytest.skip("audio devices are present: a null device would open one")
    device = MediaDevice(f"qt:{kind.value}:null", "Null", kind)
    released: list[qt_media._Held] = []
    opener = qt_media._QtAudioSource if kind is DeviceKind.MICROPHONE else qt_media._QtAudioOutput
    with pytest.raises(DeviceOpenFailed, match=f"cannot open {kind.value} 'Null'"):
        opener(device, QAudioDevice(), on_close=released.append)
    assert [h.device for h in released] == [device]


# -- video frames ---------------------------------------------------------------


def _picture() -> NDArray[np.uint8]:
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 255 // W, y * 255 // H, (x + y) * 255 // (W + H)], -1).astype(np.uint8)


def _qt_frame(pixel_format: QVideoFrameFormat.PixelFormat, rgb: NDArray[np.uint8]) -> QVideoFrame:
    """A QVideoFrame of that pixel format showing ``rgb``, its planes filled by hand
    with Qt's own strides (PyAV makes the pixel data)."""
    av_format, order = qt_media._AV_FORMATS[pixel_format]
    reference = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=av_format)
    frame = QVideoFrame(QVideoFrameFormat(QSize(rgb.shape[1], rgb.shape[0]), pixel_format))
    assert frame.map(QVideoFrame.MapMode.WriteOnly)
    try:
        for av_plane, qt_plane in enumerate(order):
            plane = reference.planes[av_plane]
            stride = frame.bytesPerLine(qt_plane)
            dst = np.frombuffer(frame.bits(qt_plane), np.uint8).reshape(-1, stride)
            src = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            n = min(stride, plane.line_size)
            dst[: plane.height, :n] = src[:, :n]
    finally:
        frame.unmap()
    return frame


def _rgb_of_image(image: QImage) -> NDArray[np.int64]:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), -1)
    return rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3).astype(np.int64)


def _is_color(pixel: NDArray[np.uint8], rgb: tuple[int, int, int], tolerance: int = 25) -> bool:
    return bool(np.abs(pixel.astype(np.int64) - np.array(rgb)).max() <= tolerance)


def _convert(frame: QVideoFrame) -> av.VideoFrame:
    captured = capture_video_frame(frame)
    assert captured is not None
    out = captured.to_av()
    assert out.format.name == "yuv420p"
    return out


@pytest.mark.parametrize("pixel_format", list(qt_media._AV_FORMATS), ids=lambda p: p.name)
def test_every_mapped_pixel_format_converts_like_qt(
    qapp: QApplication, pixel_format: QVideoFrameFormat.PixelFormat
) -> None:
    rgb = _picture()
    frame = _qt_frame(pixel_format, rgb)
    ours = _convert(frame).to_ndarray(format="rgb24").astype(np.int64)
    assert ours.shape == (H, W, 3)
    gray = pixel_format in (PF.Format_Y8, PF.Format_Y16)
    if not gray:  # a plane or byte order mixed up would be off by far more
        assert np.abs(ours - rgb).mean() < 3
    image = frame.toImage()
    if not image.isNull():  # Qt's CPU path has no 10-bit planar YUV
        assert np.abs(ours - _rgb_of_image(image)).mean() < 3


def test_a_format_pyav_cannot_take_goes_through_to_image(qapp: QApplication) -> None:
    assert PF.Format_AYUV not in qt_media._AV_FORMATS
    frame = QVideoFrame(QVideoFrameFormat(QSize(W, H), PF.Format_AYUV))
    assert frame.map(QVideoFrame.MapMode.WriteOnly)
    # AYUV bytes of a saturated red (BT.601, video range).
    np.frombuffer(frame.bits(0), np.uint8).reshape(-1, 4)[:] = (255, 81, 90, 240)
    frame.unmap()
    captured = capture_video_frame(frame)
    assert captured is not None
    assert captured.av_format in ("bgra", "argb", "rgba")  # what toImage() gave
    ours = captured.to_av().to_ndarray(format="rgb24").astype(np.int64)
    assert np.abs(ours - _rgb_of_image(frame.toImage())).mean() < 3
    assert _is_color(ours[H // 2, W // 2], (255, 0, 0), 50)


def test_a_frame_made_from_an_image(qapp: QApplication) -> None:
    image = QImage(33, 21, QImage.Format.Format_RGB32)  # odd sizes, padded strides
    image.fill(QColor(0, 0, 255))
    out = _convert(QVideoFrame(image))
    assert (out.width, out.height) == (33, 21)
    assert _is_color(out.to_ndarray(format="rgb24")[10, 16], (0, 0, 255))


def test_invalid_frames_give_nothing(qapp: QApplication) -> None:
    assert capture_video_frame(QVideoFrame()) is None


def test_padded_strides_are_respected() -> None:
    width, height, stride = 6, 4, 16
    y = np.full((height, stride), 7, np.uint8)
    y[:, :width] = np.arange(width * height, dtype=np.uint8).reshape(height, width) + 100
    u = np.full((height // 2, stride), 128, np.uint8)
    v = np.full((height // 2, stride), 128, np.uint8)
    captured = CapturedFrame(
        "yuv420p",
        width,
        height,
        ((y.tobytes(), stride), (u.tobytes(), stride), (v.tobytes(), stride)),
    )
    out = captured.to_av()
    assert np.array_equal(out.to_ndarray()[:height], y[:, :width])


def test_frames_larger_than_asked_are_scaled_down_keeping_the_aspect(qapp: QApplication) -> None:
    captured = capture_video_frame(_qt_frame(PF.Format_NV12, _picture()))
    assert captured is not None
    out = captured.to_av(32, 32)
    assert (out.width, out.height) == (32, 24)
    assert out.format.name == "yuv420p"
    same = captured.to_av(640, 480)  # never scaled up
    assert (same.width, same.height) == (W, H)
    assert qt_media._fit(1920, 1080, 640, 480) == (640, 360)
    assert qt_media._fit(1281, 721, 1280, 720) == (1278, 720)


async def test_the_sink_reader_gives_the_newest_frame(qapp: QApplication) -> None:
    reader = QtVideoSinkReader()
    colors = [QColor(255, 0, 0), QColor(0, 255, 0), QColor(0, 0, 255)]
    for color in colors:
        image = QImage(16, 16, QImage.Format.Format_RGB32)
        image.fill(color)
        reader.sink.setVideoFrame(QVideoFrame(image))
    frame = await asyncio.wait_for(reader.read(), 5)
    # The last one: latest wins.
    assert _is_color(frame.to_ndarray(format="rgb24")[8, 8], (0, 0, 255))
    assert reader.dropped == 2

    # read() waits for a new frame rather than repeating the old one.
    pending = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0.05)
    assert not pending.done()
    image = QImage(16, 16, QImage.Format.Format_RGB32)
    image.fill(QColor(255, 255, 255))
    reader.sink.setVideoFrame(QVideoFrame(image))
    frame = await asyncio.wait_for(pending, 5)
    assert frame.to_ndarray(format="rgb24")[8, 8].min() > 230

    # Closing wakes a waiting reader, and every later read, with SourceClosed.
    pending = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0.01)
    reader.close("camera failed: unplugged")
    with pytest.raises(SourceClosed, match="unplugged"):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(SourceClosed):
        await reader.read()
    assert reader.closed
    reader.sink.setVideoFrame(QVideoFrame(image))  # ignored once closed
    reader.close()  # idempotent


async def test_a_frame_from_another_thread_wakes_the_reader() -> None:
    mailbox: qt_media._Mailbox[int] = qt_media._Mailbox(maxlen=1)
    pending = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0.01)  # the reader is waiting, so the loop is known
    worker = threading.Thread(target=mailbox.put, args=(42,))
    worker.start()
    worker.join()
    assert await asyncio.wait_for(pending, 5) == 42


async def test_a_put_before_anyone_reads_is_kept() -> None:
    mailbox: qt_media._Mailbox[int] = qt_media._Mailbox(maxlen=2)
    for i in range(3):
        mailbox.put(i)
    assert mailbox.dropped == 1
    assert [await mailbox.get(), await mailbox.get()] == [1, 2]


def test_the_closest_camera_format_is_chosen() -> None:
    option = qt_media._FormatOption
    formats = [
        option(1920, 1080, 30, 0),
        option(640, 480, 30, 1),
        option(640, 480, 30, 0),
        option(1280, 720, 10, 0),
        option(1280, 720, 30, 1),
        option(320, 240, 30, 0),
    ]
    assert qt_media._choose(formats, 640, 480, 30) == 2  # exact, no toImage()
    assert qt_media._choose(formats, 1280, 720, 30) == 4  # the rate matters more
    assert qt_media._choose(formats, 1280, 720, 10) == 3
    assert qt_media._choose(formats, 300, 200, 15) == 5
    assert qt_media._choose([], 640, 480, 30) is None
    assert qt_media.choose_camera_format([], 640, 480, 30) is None


# -- audio ------------------------------------------------------------------------


def _tone(samples: int, rate: int = AUDIO_RATE) -> NDArray[np.int16]:
    t = np.arange(samples) / rate
    return (np.sin(2 * np.pi * 440 * t) * 10_000).astype(np.int16)


def test_the_chunker_cuts_20ms_frames() -> None:
    pcm = _tone(AUDIO_SAMPLES * 3 + 100)
    data = pcm.tobytes()
    chunker = AudioChunker()
    # Odd pieces, even one that splits a sample in two.
    for start, end in [(0, 1), (1, 777), (777, 4000), (4000, len(data))]:
        chunker.feed(data[start:end])
    assert len(chunker) == 3
    frames = [chunker.pop() for _ in range(3)]
    assert chunker.pop() is None
    for i, frame in enumerate(frames):
        assert frame is not None
        assert frame.samples == AUDIO_SAMPLES
        assert frame.sample_rate == AUDIO_RATE
        assert frame.format.name == "s16"
        assert frame.layout.name == "mono"
        assert frame.pts == i * AUDIO_SAMPLES
        expected = pcm[i * AUDIO_SAMPLES : (i + 1) * AUDIO_SAMPLES]
        assert np.array_equal(frame.to_ndarray().reshape(-1), expected)
    # The 100 samples left over start the next frame.
    chunker.feed(_tone(AUDIO_SAMPLES - 100).tobytes())
    last = chunker.pop()
    assert last is not None
    assert np.array_equal(last.to_ndarray().reshape(-1)[:100], pcm[-100:])


def test_the_chunker_drops_the_oldest_when_behind() -> None:
    chunker = AudioChunker(max_frames=3)
    for i in range(5):
        chunker.feed(np.full(AUDIO_SAMPLES, i, np.int16).tobytes())
    assert len(chunker) == 3
    assert chunker.dropped == 2
    firsts = []
    while (frame := chunker.pop()) is not None:
        firsts.append(int(frame.to_ndarray()[0, 0]))
    assert firsts == [2, 3, 4]


def test_the_chunker_resamples_other_formats() -> None:
    rate = 44_100
    mono = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32) * 0.5
    stereo = np.stack([mono, mono], -1).reshape(-1)  # interleaved
    chunker = AudioChunker(rate=rate, channels=2, sample_format="flt", max_frames=100)
    data = stereo.tobytes()
    for start in range(0, len(data), 3_001):  # pieces that split sample frames
        chunker.feed(data[start : start + 3_001])
    frames = []
    while (frame := chunker.pop()) is not None:
        frames.append(frame)
    # One second in, about fifty 20 ms frames out (the resampler keeps a little back).
    assert 47 <= len(frames) <= 50
    assert all(f.samples == AUDIO_SAMPLES and f.format.name == "s16" for f in frames)
    assert all(f.layout.name == "mono" and f.sample_rate == AUDIO_RATE for f in frames)
    peak = max(int(np.abs(f.to_ndarray()).max()) for f in frames[5:])
    assert 15_000 < peak < 17_500  # 0.5 of full scale survived


def test_speaker_conversion_passes_through_or_resamples() -> None:
    pcm = _tone(AUDIO_SAMPLES)
    mono = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    mono.sample_rate = AUDIO_RATE
    assert qt_media._PcmConverter(1).convert(mono) == pcm.tobytes()

    interleaved = np.stack([pcm, pcm], -1).reshape(1, -1)
    stereo = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
    stereo.sample_rate = AUDIO_RATE
    assert qt_media._PcmConverter(2).convert(stereo) == interleaved.tobytes()

    # A decoder's planar float stereo at another rate: resampled to s16 of the sink.
    to_mono = qt_media._PcmConverter(1)
    total = 0
    for _ in range(10):
        planar = np.stack([pcm, pcm]).astype(np.float32) / 32768
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
        frame.sample_rate = 44_100
        total += len(to_mono.convert(frame))
    expected = 10 * AUDIO_SAMPLES * AUDIO_RATE // 44_100 * 2
    assert expected * 0.9 < total <= expected


# -- the binding itself, and a real sound server --------------------------------------


def test_pyside_keeps_none_alive() -> None:
    """PySide6 6.12.0 on Python 3.11 returns None from every void method without a
    reference, so the process dies ("deallocating None") after a few thousand calls:
    a camera calls ``QVideoFrame.unmap()`` 30 times a second."""
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(1_000):
        probe.setObjectName("probe")
    drift = sys.getrefcount(None) - before
    assert drift > -500, (
        f"PySide6 {pyside_version} on Python {sys.version.split()[0]} leaks a reference "
        f"to None on every void call ({drift} per 1000): pin PySide6 < 6.12 or use "
        "Python >= 3.12"
    )


LOOPBACK = """
import asyncio, json, sys, time
import av, numpy as np, qasync
from PySide6.QtGui import QGuiApplication
from peer.devices import AUDIO_RATE, AUDIO_SAMPLES, DeviceKind
from peer.qt_media import qt_backend_or_none

app = QGuiApplication([])

async def main():
    backend = qt_backend_or_none()
    speaker = backend.open_speaker(backend.devices(DeviceKind.SPEAKER)[0])
    mic = backend.open_microphone(backend.devices(DeviceKind.MICROPHONE)[0])
    opened = [d.device_id for d in backend.open_devices()]

    async def play():
        start = time.monotonic()
        for i in range(250):
            t = (np.arange(AUDIO_SAMPLES) + i * AUDIO_SAMPLES) / AUDIO_RATE
            pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = AUDIO_RATE
            speaker.write(frame)
            await asyncio.sleep(max(0, start + (i + 1) * 0.02 - time.monotonic()))

    player = asyncio.ensure_future(play())
    frames = [await asyncio.wait_for(mic.read(), 10) for _ in range(150)]
    await player
    backend.close()
    try:
        await mic.read()
        after = "read"
    except Exception as exc:
        after = type(exc).__name__
    print(json.dumps({
        "opened": opened,
        "formats": sorted(
            {(f.format.name, f.layout.name, f.sample_rate, f.samples) for f in frames}
        ),
        "peak": max(int(np.abs(f.to_ndarray()).max()) for f in frames),
        "open_after_close": [d.device_id for d in backend.open_devices()],
        "closed": [mic.closed, speaker.closed],
        "read_after_close": after,
    }))

qasync.run(main())
"""


def test_real_capture_and_playback_through_a_sound_server(tmp_path: Path) -> None:
    """A private PulseAudio with a null sink; a virtual microphone records what the
    speaker plays. Runs where ``pulseaudio`` is installed (Debian's package)."""
    import json
    import shutil
    import time

    server = shutil.which("pulseaudio")
    if server is None:
        pytest.skip("no pulseaudio here: the real-device loopback needs it")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "HOME": str(tmp_path),
        "QT_QPA_PLATFORM": "offscreen",
    }
    daemon = subprocess.Popen(
        [
            server,
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--log-target=stderr",
            "--load=module-native-protocol-unix",
            "--load=module-null-sink sink_name=testsink",
            "--load=module-remap-source master=testsink.monitor source_name=testmic "
            "source_properties=device.description=TestMic",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        socket = runtime / "pulse" / "native"
        deadline = time.monotonic() + 15
        while not socket.exists():
            assert daemon.poll() is None, "pulseaudio did not start"
            assert time.monotonic() < deadline, "pulseaudio did not open its socket"
            time.sleep(0.05)
        script = tmp_path / "loopback.py"
        script.write_text(LOOPBACK)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
    assert done.returncode == 0, done.stderr[-3000:]
    # A slot Qt could not call is printed, never raised: look for it.
    assert "Traceback" not in done.stderr
    assert "TypeError" not in done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["opened"] == ["qt:speaker:testsink", "qt:microphone:testmic"]
    assert report["formats"] == [["s16", "mono", AUDIO_RATE, AUDIO_SAMPLES]]
    assert report["peak"] > 3000  # the tone went round: speaker → null sink → microphone
    assert report["open_after_close"] == []
    assert report["closed"] == [True, True]
    assert report["read_after_close"] == "SourceClosed"
