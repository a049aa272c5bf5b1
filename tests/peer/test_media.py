"""peer.media: the synthetic devices, the device lists of a call, the local tracks and
the receivers, ending with a real call between two aiortc peer connections.

Waiting is always for a condition under a deadline (``until``), never a fixed sleep;
timing asserts are loose, since CI machines stall.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack
from av.video.reformatter import VideoReformatter

import peer.media
from peer.chat import Listeners
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
from peer.media import (
    SYNTHETIC_BACK,
    SYNTHETIC_FRONT,
    SYNTHETIC_SPEAKER,
    SYNTHETIC_TONE,
    TONE_AMPLITUDE,
    AudioReceiver,
    DisplayFrame,
    LocalAudioTrack,
    LocalVideoTrack,
    MediaDevices,
    NullSpeaker,
    SyntheticBackend,
    TestPatternSource,
    ToneSource,
    VideoReceiver,
    identify_pattern,
    to_display_frame,
)

TIMEOUT = 10.0
TONE_RMS = TONE_AMPLITUDE / math.sqrt(2)

EXTERNAL = MediaDevice(
    device_id="synthetic:camera:usb",
    name="Synthetic USB camera",
    kind=DeviceKind.CAMERA,
    facing=Facing.EXTERNAL,
    synthetic=True,
)


async def until(condition: Callable[[], bool], timeout_s: float = TIMEOUT) -> None:
    """Wait, with a deadline, until ``condition`` holds.

    The conditions read counters that aiortc's tasks move (frames, levels), so this
    polls every 10 ms, as tests/integration/harness.py does, rather than wiring an
    event into each; it never sleeps a fixed time hoping something happened.
    """

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (see the docstring)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


async def still_pending(awaitable: asyncio.Task[object], seconds: float = 0.2) -> bool:
    """True if the task does not finish within ``seconds`` (it keeps running)."""
    done, _ = await asyncio.wait({awaitable}, timeout=seconds)
    return not done


def rms(frame: av.AudioFrame) -> float:
    samples = frame.to_ndarray().astype(np.float64) / 32768
    return float(np.sqrt(np.mean(samples**2)))


def luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    array = frame.to_ndarray()
    assert array.dtype == np.uint8
    return np.asarray(array[: frame.height], dtype=np.uint8)


class QueueTrack:
    """A remote track fed by hand: None in the queue ends it, as aiortc's does."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[av.VideoFrame | av.AudioFrame | None] = asyncio.Queue()

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        item = await self.queue.get()
        if item is None:
            raise MediaStreamError
        return item


class FakeRealBackend:
    """A stand-in for the Qt backend: the given cameras, nothing else."""

    def __init__(self, cameras: list[MediaDevice]) -> None:
        self.name = "fake"
        self.changed: Listeners[DeviceKind] = Listeners()
        self.cameras = cameras
        self.opened: list[TestPatternSource] = []

    def devices(self, kind: DeviceKind) -> list[MediaDevice]:
        return list(self.cameras) if kind is DeviceKind.CAMERA else []

    def open_camera(self, device: MediaDevice, *, width: int, height: int, fps: int) -> VideoSource:
        source = TestPatternSource(device, width, height, fps)
        self.opened.append(source)
        return source

    def open_microphone(self, device: MediaDevice) -> AudioSource:
        raise AssertionError("this backend has no microphone")

    def open_speaker(self, device: MediaDevice) -> AudioOutput:
        raise AssertionError("this backend has no speaker")

    def open_devices(self) -> list[MediaDevice]:
        return [source.device for source in self.opened if not source.closed]

    def close(self) -> None:
        for source in self.opened:
            source.close()


REAL_CAMERA = MediaDevice(
    device_id="qt:cam0", name="FaceTime HD Camera", kind=DeviceKind.CAMERA, is_default=True
)


@pytest.fixture
def backend() -> Iterator[SyntheticBackend]:
    synthetic = SyntheticBackend()
    yield synthetic
    synthetic.close()
    assert synthetic.open_devices() == []


# -- the test pattern ------------------------------------------------------------------


def test_pattern_frames_are_yuv420p_of_the_requested_size_with_a_running_clock() -> None:
    source = TestPatternSource(SYNTHETIC_FRONT, 640, 360, 30)
    first = source.render(now=1_000.0)
    later = source.render(now=1_001.5)
    for frame in (first, later):
        assert frame.format.name == "yuv420p"
        assert (frame.width, frame.height) == (640, 360)
    # The clock panel (rows 30-62 %) changed; the tinted background above it did not.
    clock_rows = slice(int(360 * 0.32), int(360 * 0.45))
    assert not np.array_equal(luma(first)[clock_rows], luma(later)[clock_rows])
    assert np.array_equal(luma(first)[:90], luma(later)[:90])
    assert source.frames == 2


async def test_pattern_is_paced_in_real_time() -> None:
    source = TestPatternSource(SYNTHETIC_FRONT, 320, 240, 50)
    await source.read()  # the first frame comes at once
    count = 10
    start = time.monotonic()
    for _ in range(count):
        await source.read()
    elapsed = time.monotonic() - start
    assert count / 50 * 0.5 <= elapsed <= count / 50 * 3


async def test_pattern_skips_ahead_rather_than_bursting_after_a_stall() -> None:
    source = TestPatternSource(SYNTHETIC_FRONT, 320, 240, 50)
    await source.read()
    await asyncio.sleep(0.3)  # a slow consumer: 15 frames late
    await source.read()  # due long ago: at once
    start = time.monotonic()
    for _ in range(3):
        await source.read()
    # Paced again from now, not 14 stale frames in a row.
    assert time.monotonic() - start >= 3 / 50 * 0.5


async def test_closing_a_pattern_ends_a_waiting_read_at_once() -> None:
    source = TestPatternSource(SYNTHETIC_FRONT, 320, 240, 1)
    await source.read()
    reader = asyncio.create_task(source.read())  # due in a second
    await asyncio.sleep(0)
    source.close()
    with pytest.raises(SourceClosed):
        await asyncio.wait_for(reader, 0.5)
    with pytest.raises(SourceClosed):
        await source.read()
    source.close()  # idempotent


@pytest.mark.parametrize(("width", "height", "fps"), [(321, 240, 30), (320, 8, 30), (320, 240, 0)])
def test_pattern_refuses_sizes_yuv420p_cannot_hold(width: int, height: int, fps: int) -> None:
    with pytest.raises(ValueError, match=r"even|positive"):
        TestPatternSource(SYNTHETIC_FRONT, width, height, fps)


# -- identify_pattern ---------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(320, 240), (1280, 720), (176, 144)])
def test_identify_tells_front_from_back_on_raw_frames(width: int, height: int) -> None:
    front = TestPatternSource(SYNTHETIC_FRONT, width, height, 30).render()
    back = TestPatternSource(SYNTHETIC_BACK, width, height, 30).render()
    assert identify_pattern(front) is Facing.FRONT
    assert identify_pattern(back) is Facing.BACK
    # Any format and size, as a receiver might hold it.
    assert identify_pattern(front.reformat(format="rgb24")) is Facing.FRONT
    assert identify_pattern(back.reformat(width=100, height=75, format="rgb24")) is Facing.BACK


def test_identify_says_none_for_anything_else() -> None:
    other = TestPatternSource(EXTERNAL, 320, 240, 30).render()
    assert identify_pattern(other) is None
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    assert identify_pattern(av.VideoFrame.from_ndarray(noise, format="rgb24")) is None
    gray = np.full((240, 320, 3), 128, dtype=np.uint8)
    assert identify_pattern(av.VideoFrame.from_ndarray(gray, format="rgb24")) is None
    # Front tint on top, back tint below: not one camera's pattern.
    front = TestPatternSource(SYNTHETIC_FRONT, 320, 240, 30).render().to_ndarray(format="rgb24")
    back = TestPatternSource(SYNTHETIC_BACK, 320, 240, 30).render().to_ndarray(format="rgb24")
    mixed = np.concatenate([front[:120], back[120:]])
    assert identify_pattern(av.VideoFrame.from_ndarray(mixed, format="rgb24")) is None


def _round_trip(frames: list[av.VideoFrame], encoder: str, decoder: str) -> list[av.VideoFrame]:
    """Encode at a low bit rate and decode again, as a call would."""
    enc = av.CodecContext.create(encoder, "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height = frames[0].width, frames[0].height
    enc.pix_fmt = "yuv420p"
    enc.bit_rate = 150_000
    enc.time_base = fractions.Fraction(1, 30)
    if encoder == "libx264":
        enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    else:
        enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    dec = av.CodecContext.create(decoder, "r")
    assert isinstance(dec, av.VideoCodecContext)
    decoded: list[av.VideoFrame] = []
    for index, frame in enumerate([*frames, None]):
        if frame is not None:
            frame.pts = index
        for packet in enc.encode(frame):
            decoded += [f for f in dec.decode(packet) if isinstance(f, av.VideoFrame)]
    decoded += [f for f in dec.decode(None) if isinstance(f, av.VideoFrame)]
    return decoded


@pytest.mark.parametrize(("encoder", "decoder"), [("libvpx", "libvpx"), ("libx264", "h264")])
def test_identify_survives_a_codec_round_trip(encoder: str, decoder: str) -> None:
    for device, facing in [(SYNTHETIC_FRONT, Facing.FRONT), (SYNTHETIC_BACK, Facing.BACK)]:
        source = TestPatternSource(device, 320, 240, 30)
        decoded = _round_trip([source.render() for _ in range(8)], encoder, decoder)
        assert len(decoded) == 8
        assert [identify_pattern(f) for f in decoded] == [facing] * 8


def test_identify_after_switching_cameras_mid_stream() -> None:
    """One encoder, front then back (P-frames across the switch), as in a call."""
    front = TestPatternSource(SYNTHETIC_FRONT, 320, 240, 30)
    back = TestPatternSource(SYNTHETIC_BACK, 320, 240, 30)
    frames = [front.render() for _ in range(5)] + [back.render() for _ in range(5)]
    decoded = _round_trip(frames, "libvpx", "libvpx")
    assert identify_pattern(decoded[4]) is Facing.FRONT
    assert identify_pattern(decoded[-1]) is Facing.BACK


# -- tone and speaker ---------------------------------------------------------------------


def test_tone_frames_are_20ms_of_s16_mono_at_48k_with_the_tone_rms() -> None:
    tone = ToneSource(SYNTHETIC_TONE, 440.0)
    frames = [tone.render() for _ in range(3)]
    for index, frame in enumerate(frames):
        assert frame.format.name == "s16"
        assert frame.layout.name == "mono"
        assert frame.sample_rate == AUDIO_RATE
        assert frame.samples == AUDIO_SAMPLES
        assert frame.to_ndarray().shape == (1, AUDIO_SAMPLES)
        assert frame.pts == index * AUDIO_SAMPLES
        assert rms(frame) == pytest.approx(TONE_RMS, rel=0.02)
    # Phase-continuous: three frames are one unbroken sine.
    joined = np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float64)
    n = np.arange(joined.size)
    expected = np.sin(2 * np.pi * 440.0 * n / AUDIO_RATE) * TONE_AMPLITUDE * 32767
    assert np.max(np.abs(joined - expected)) <= 1.0


async def test_tone_is_paced_in_real_time() -> None:
    tone = ToneSource(SYNTHETIC_TONE)
    await tone.read()
    count = 10
    start = time.monotonic()
    for _ in range(count):
        await tone.read()
    elapsed = time.monotonic() - start
    assert count * 0.02 * 0.5 <= elapsed <= count * 0.02 * 3
    tone.close()
    with pytest.raises(SourceClosed):
        await tone.read()


def test_null_speaker_counts_and_keeps_nothing() -> None:
    speaker = NullSpeaker(SYNTHETIC_SPEAKER)
    tone = ToneSource(SYNTHETIC_TONE)
    for _ in range(3):
        speaker.write(tone.render())
    assert speaker.frames_written == 3
    assert not hasattr(speaker, "frames")
    speaker.close()
    speaker.write(tone.render())  # gone: dropped, not an error
    assert speaker.frames_written == 3
    assert speaker.closed


# -- the synthetic backend ----------------------------------------------------------------


def test_synthetic_backend_lists_its_devices(backend: SyntheticBackend) -> None:
    implements: MediaBackend = backend
    assert implements.name == "synthetic"
    cameras = backend.devices(DeviceKind.CAMERA)
    assert [(d.device_id, d.name, d.facing) for d in cameras] == [
        ("synthetic:camera:front", "Synthetic front camera", Facing.FRONT),
        ("synthetic:camera:back", "Synthetic back camera", Facing.BACK),
    ]
    assert [d.name for d in backend.devices(DeviceKind.MICROPHONE)] == ["Synthetic tone (440 Hz)"]
    assert [d.name for d in backend.devices(DeviceKind.SPEAKER)] == [
        "Synthetic speaker (silent)",
        "Synthetic headset (silent)",
    ]
    every = [d for kind in DeviceKind for d in backend.devices(kind)]
    assert all(d.synthetic for d in every)
    assert all(d.device_id.startswith(f"synthetic:{d.kind.value}:") for d in every)
    assert [d.is_default for d in cameras] == [True, False]


def test_open_devices_tracks_what_is_held(backend: SyntheticBackend) -> None:
    camera = backend.open_camera(SYNTHETIC_BACK, width=320, height=240, fps=30)
    microphone = backend.open_microphone(SYNTHETIC_TONE)
    speaker = backend.open_speaker(SYNTHETIC_SPEAKER)
    assert backend.open_devices() == [SYNTHETIC_BACK, SYNTHETIC_TONE, SYNTHETIC_SPEAKER]
    camera.close()
    assert backend.open_devices() == [SYNTHETIC_TONE, SYNTHETIC_SPEAKER]
    backend.close()
    assert backend.open_devices() == []
    assert microphone.closed
    assert speaker.closed
    with pytest.raises(ValueError, match="not a camera"):
        backend.open_camera(SYNTHETIC_TONE, width=320, height=240, fps=30)


async def test_plug_and_unplug_fire_changed_and_unplug_closes_what_is_open(
    backend: SyntheticBackend,
) -> None:
    fired: list[DeviceKind] = []
    backend.changed.add(fired.append)
    backend.plug(EXTERNAL)
    assert fired == [DeviceKind.CAMERA]
    assert EXTERNAL in backend.devices(DeviceKind.CAMERA)
    with pytest.raises(ValueError, match="already"):
        backend.plug(EXTERNAL)

    camera = backend.open_camera(EXTERNAL, width=320, height=240, fps=30)
    await camera.read()
    reader = asyncio.create_task(camera.read())
    await asyncio.sleep(0)
    backend.unplug(EXTERNAL.device_id)
    assert fired == [DeviceKind.CAMERA, DeviceKind.CAMERA]
    assert camera.closed
    assert backend.open_devices() == []
    with pytest.raises(SourceClosed):
        await asyncio.wait_for(reader, TIMEOUT)
    assert EXTERNAL not in backend.devices(DeviceKind.CAMERA)
    with pytest.raises(ValueError, match="not a camera of this backend"):
        backend.open_camera(EXTERNAL, width=320, height=240, fps=30)
    with pytest.raises(KeyError):
        backend.unplug(EXTERNAL.device_id)

    backend.unplug(SYNTHETIC_TONE.device_id)
    assert fired[-1] is DeviceKind.MICROPHONE
    assert backend.devices(DeviceKind.MICROPHONE) == []


# -- MediaDevices -------------------------------------------------------------------------


def test_without_a_real_backend_every_kind_is_synthetic() -> None:
    devices = MediaDevices(None)
    assert devices.devices(DeviceKind.CAMERA) == [SYNTHETIC_FRONT, SYNTHETIC_BACK]
    assert devices.default(DeviceKind.CAMERA) == SYNTHETIC_FRONT
    assert devices.default(DeviceKind.MICROPHONE) == SYNTHETIC_TONE
    assert devices.default(DeviceKind.SPEAKER) == SYNTHETIC_SPEAKER
    devices.close()


def test_a_real_backend_without_devices_falls_back_per_kind() -> None:
    empty = FakeRealBackend([])
    devices = MediaDevices(empty)
    assert devices.devices(DeviceKind.CAMERA) == [SYNTHETIC_FRONT, SYNTHETIC_BACK]
    assert devices.devices(DeviceKind.MICROPHONE) == [SYNTHETIC_TONE]
    devices.close()

    real = FakeRealBackend([REAL_CAMERA])
    devices = MediaDevices(real)
    # The real camera, but still a synthetic microphone and speaker.
    assert devices.devices(DeviceKind.CAMERA) == [REAL_CAMERA]
    assert devices.default(DeviceKind.CAMERA) == REAL_CAMERA
    assert devices.devices(DeviceKind.MICROPHONE) == [SYNTHETIC_TONE]
    camera = devices.open_camera(REAL_CAMERA, width=320, height=240, fps=15)
    microphone = devices.open_microphone(SYNTHETIC_TONE)
    assert real.opened == [camera]  # routed to the backend that owns the device
    assert devices.open_devices() == [SYNTHETIC_TONE, REAL_CAMERA]
    assert devices.next_camera(REAL_CAMERA) == REAL_CAMERA  # the only one
    devices.close()
    assert camera.closed
    assert microphone.closed
    assert devices.open_devices() == []

    with pytest.raises(ValueError, match="not an available camera"):
        MediaDevices(None).open_camera(REAL_CAMERA)


def test_fake_lists_only_synthetic_devices() -> None:
    devices = MediaDevices(FakeRealBackend([REAL_CAMERA]), fake=True)
    assert devices.devices(DeviceKind.CAMERA) == [SYNTHETIC_FRONT, SYNTHETIC_BACK]
    with pytest.raises(ValueError, match="not an available"):
        devices.open_camera(REAL_CAMERA)
    devices.close()


def test_next_camera_cycles_through_the_list() -> None:
    devices = MediaDevices(None)
    assert devices.next_camera(None) == SYNTHETIC_FRONT
    assert devices.next_camera(SYNTHETIC_FRONT) == SYNTHETIC_BACK
    assert devices.next_camera(SYNTHETIC_BACK) == SYNTHETIC_FRONT
    devices.synthetic.plug(EXTERNAL)
    assert devices.next_camera(SYNTHETIC_BACK) == EXTERNAL
    assert devices.next_camera(EXTERNAL) == SYNTHETIC_FRONT
    devices.synthetic.unplug(EXTERNAL.device_id)
    assert devices.next_camera(EXTERNAL) == SYNTHETIC_FRONT  # gone: the default
    for camera in (SYNTHETIC_FRONT, SYNTHETIC_BACK):
        devices.synthetic.unplug(camera.device_id)
    assert devices.next_camera(SYNTHETIC_FRONT) is None
    devices.close()


def test_changed_is_refired_from_both_backends_until_closed() -> None:
    real = FakeRealBackend([])
    devices = MediaDevices(real)
    fired: list[DeviceKind] = []
    devices.changed.add(fired.append)
    real.cameras.append(REAL_CAMERA)
    real.changed.fire(DeviceKind.CAMERA)
    assert devices.devices(DeviceKind.CAMERA) == [REAL_CAMERA]
    devices.synthetic.unplug(SYNTHETIC_SPEAKER.device_id)
    assert fired == [DeviceKind.CAMERA, DeviceKind.SPEAKER]
    devices.close()
    real.changed.fire(DeviceKind.CAMERA)
    assert fired == [DeviceKind.CAMERA, DeviceKind.SPEAKER]
    assert len(real.changed) == 0


# -- LocalVideoTrack ----------------------------------------------------------------------


async def test_video_track_restamps_monotonically_across_camera_switches() -> None:
    devices = MediaDevices(None)
    track = LocalVideoTrack(devices.open_camera(SYNTHETIC_FRONT, width=320, height=240, fps=60))
    assert track.kind == "video"
    stamps: list[int] = []
    for camera in (SYNTHETIC_BACK, SYNTHETIC_FRONT, SYNTHETIC_BACK):
        for _ in range(3):
            frame = await asyncio.wait_for(track.recv(), TIMEOUT)
            assert frame.time_base == VIDEO_TIME_BASE
            assert frame.pts is not None
            stamps.append(frame.pts)
        previous = track.source
        track.set_source(devices.open_camera(camera, width=160, height=120, fps=60))
        assert previous is not None
        assert previous.closed  # released at once
        assert devices.open_devices() == [camera]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    # 90 kHz of real time: 9 frames at 60 fps span about 8/60 s.
    assert 90_000 * 8 / 60 * 0.5 <= stamps[-1] - stamps[0] <= 90_000 * 8 / 60 * 3
    frame = await asyncio.wait_for(track.recv(), TIMEOUT)
    assert (track.width, track.height) == (160, 120)
    assert identify_pattern(frame) is Facing.BACK
    assert track.frames_sent == 10
    assert track.fps > 0
    track.stop()
    assert devices.open_devices() == []
    with pytest.raises(MediaStreamError):
        await track.recv()
    devices.close()


async def test_camera_off_sends_nothing_until_a_camera_is_set_again() -> None:
    backend = SyntheticBackend()
    track = LocalVideoTrack(backend.open_camera(SYNTHETIC_FRONT, width=160, height=120, fps=30))
    await asyncio.wait_for(track.recv(), TIMEOUT)
    track.set_source(None)
    assert backend.open_devices() == []
    assert track.source is None
    receiving = asyncio.create_task(track.recv())
    assert await still_pending(receiving)
    track.set_source(backend.open_camera(SYNTHETIC_BACK, width=160, height=120, fps=30))
    frame = await asyncio.wait_for(receiving, TIMEOUT)
    assert identify_pattern(frame) is Facing.BACK
    track.stop()
    assert backend.open_devices() == []


async def test_an_unplugged_camera_is_camera_off_not_an_error() -> None:
    backend = SyntheticBackend()
    backend.plug(EXTERNAL)
    track = LocalVideoTrack(backend.open_camera(EXTERNAL, width=160, height=120, fps=30))
    await asyncio.wait_for(track.recv(), TIMEOUT)
    receiving = asyncio.create_task(track.recv())
    await asyncio.sleep(0)
    backend.unplug(EXTERNAL.device_id)
    assert await still_pending(receiving)
    assert track.source is None
    # Stopping the track ends a recv() that waits for a camera.
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(receiving, TIMEOUT)


async def test_a_stopped_video_track_closes_a_source_set_later() -> None:
    track = LocalVideoTrack(None)
    track.stop()
    source = TestPatternSource(SYNTHETIC_FRONT, 160, 120, 30)
    track.set_source(source)
    assert source.closed
    assert track.source is None


# -- LocalAudioTrack ----------------------------------------------------------------------


async def test_audio_track_mute_sends_silence_and_unmute_the_tone() -> None:
    backend = SyntheticBackend()
    track = LocalAudioTrack(backend.open_microphone(SYNTHETIC_TONE))
    assert track.kind == "audio"
    levels: list[float] = []
    stamps: list[int] = []

    async def take(count: int) -> None:
        for _ in range(count):
            frame = await asyncio.wait_for(track.recv(), TIMEOUT)
            assert frame.samples == AUDIO_SAMPLES
            assert frame.format.name == "s16"
            assert frame.time_base == fractions.Fraction(1, AUDIO_RATE)
            assert frame.pts is not None
            stamps.append(frame.pts)
            levels.append(rms(frame))

    await take(2)
    track.muted = True
    await take(2)
    track.muted = False
    await take(2)
    assert levels[:2] == pytest.approx([TONE_RMS] * 2, rel=0.02)
    assert levels[2:4] == [0.0, 0.0]
    assert levels[4:] == pytest.approx([TONE_RMS] * 2, rel=0.02)
    # The microphone stayed open while muted, as a browser keeps it.
    assert backend.open_devices() == [SYNTHETIC_TONE]

    # No microphone: silence, paced, with pts carrying on.
    microphone = track.source
    track.set_source(None)
    assert microphone is not None
    assert microphone.closed
    assert backend.open_devices() == []
    start = time.monotonic()
    await take(5)
    assert time.monotonic() - start >= 4 * 0.02 * 0.5
    assert levels[6:] == [0.0] * 5
    assert stamps == [i * AUDIO_SAMPLES for i in range(11)]
    assert track.frames_sent == 11

    track.set_source(backend.open_microphone(SYNTHETIC_TONE))
    await take(1)
    assert levels[-1] == pytest.approx(TONE_RMS, rel=0.02)
    track.stop()
    assert backend.open_devices() == []
    with pytest.raises(MediaStreamError):
        await track.recv()


# -- receivers ----------------------------------------------------------------------------


async def test_video_receiver_counts_and_converts_off_the_loop_latest_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    threads: list[int] = []

    def slow_convert(
        frame: av.VideoFrame, box: tuple[int, int] | None, reformatter: VideoReformatter
    ) -> DisplayFrame:
        threads.append(threading.get_ident())
        release.wait(TIMEOUT)
        return to_display_frame(frame, box, reformatter)

    monkeypatch.setattr(peer.media, "to_display_frame", slow_convert)
    shown: list[DisplayFrame] = []
    track = QueueTrack()
    receiver = VideoReceiver(track, display_size=(200, 200), on_display=shown.append)
    assert (receiver.first_frame_at, receiver.last_frame_at, receiver.latest) == (0.0, 0.0, None)
    receiver.start()
    source = TestPatternSource(SYNTHETIC_FRONT, 320, 240, 30)
    frames = [source.render() for _ in range(5)]
    track.queue.put_nowait(frames[0])
    await until(lambda: len(threads) == 1)  # the first frame is being converted
    for frame in frames[1:]:
        track.queue.put_nowait(frame)
    await until(lambda: receiver.frames == 5)
    assert receiver.first_frame.is_set()
    assert 0 < receiver.first_frame_at <= receiver.last_frame_at <= time.monotonic()
    assert receiver.latest is frames[-1]
    assert (receiver.width, receiver.height) == (320, 240)
    assert receiver.fps == 5
    # The first frame is in conversion, frames 2-4 were replaced by 5: no queue.
    release.set()
    await until(lambda: len(shown) == 2)
    assert receiver.displayed == 2
    assert threads[0] != threading.get_ident()
    image = shown[-1]
    assert (image.width, image.height) == (200, 150)  # fitted, aspect kept
    assert image.bytes_per_line >= 3 * image.width
    assert len(image.data) >= image.bytes_per_line * image.height
    assert "data" not in repr(image)

    track.queue.put_nowait(None)  # the track ends: the receiver ends quietly
    await asyncio.wait_for(receiver.ended.wait(), TIMEOUT)
    await receiver.stop()
    await receiver.stop()


async def test_display_conversion_and_the_loop_can_reformat_the_same_frame() -> None:
    """Regression: the conversion thread once used ``frame.reformat()``, whose scaler
    PyAV keeps per frame object; the loop reformatting ``latest`` at the same time (as
    identify_pattern or a snapshot does) then crashed or deadlocked inside swscale."""
    shown: list[DisplayFrame] = []
    track = QueueTrack()
    receiver = VideoReceiver(track, display_size=(320, 240), on_display=shown.append)
    receiver.start()
    source = TestPatternSource(SYNTHETIC_FRONT, 640, 480, 30)
    for _ in range(20):
        frame = source.render()
        track.queue.put_nowait(frame)
        await until(lambda: receiver.latest is frame)  # noqa: B023 (awaited right here)
        for _ in range(5):
            frame.reformat(width=160, height=120, format="yuv420p")
    await until(lambda: receiver.displayed > 0 and receiver.display_idle)
    await receiver.stop()
    assert shown[-1].width == 320


async def test_video_receiver_stop_cancels_cleanly() -> None:
    track = QueueTrack()
    receiver = VideoReceiver(track, on_display=lambda image: None)
    receiver.start()
    track.queue.put_nowait(TestPatternSource(SYNTHETIC_BACK, 160, 120, 30).render())
    await asyncio.wait_for(receiver.first_frame.wait(), TIMEOUT)
    await receiver.stop()
    assert not receiver.ended.is_set()
    assert receiver.frames == 1


async def test_audio_receiver_level_output_pause_and_switch() -> None:
    track = QueueTrack()
    first = NullSpeaker(SYNTHETIC_SPEAKER)
    receiver = AudioReceiver(track, first)
    receiver.start()
    tone = ToneSource(SYNTHETIC_TONE)
    for _ in range(10):
        track.queue.put_nowait(tone.render())
    await until(lambda: receiver.frames == 10)
    assert receiver.first_frame.is_set()
    assert receiver.level == pytest.approx(TONE_RMS, rel=0.02)
    assert first.frames_written == 10

    receiver.paused = True
    silent = LocalAudioTrack(None)
    for _ in range(10):  # 200 ms of silence push the tone out of the window
        track.queue.put_nowait(await silent.recv())
    await until(lambda: receiver.frames == 20)
    assert receiver.level == 0.0
    assert first.frames_written == 10  # paused: not played, still measured
    silent.stop()

    receiver.paused = False
    second = NullSpeaker(SYNTHETIC_SPEAKER)
    receiver.set_output(second)
    assert first.closed
    track.queue.put_nowait(tone.render())
    await until(lambda: receiver.frames == 21)
    assert second.frames_written == 1
    assert 0 < receiver.level < TONE_RMS

    await receiver.stop()
    assert second.closed  # the receiver owns its output
    assert receiver.output is None
    assert receiver.level == 0.0  # no frozen meter after the end


# -- a real call ----------------------------------------------------------------------------


async def test_a_real_call_carries_the_pattern_and_the_tone() -> None:
    devices = MediaDevices(None)
    front = devices.default(DeviceKind.CAMERA)
    back = devices.next_camera(front)
    microphone = devices.default(DeviceKind.MICROPHONE)
    speaker = devices.default(DeviceKind.SPEAKER)
    assert front is not None
    assert back is not None
    assert microphone is not None
    assert speaker is not None
    video = LocalVideoTrack(devices.open_camera(front, width=320, height=240, fps=30))
    audio = LocalAudioTrack(devices.open_microphone(microphone))

    # Never a public STUN server: no ICE servers at all, host candidates on loopback.
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    callee = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    shown: list[DisplayFrame] = []
    receivers: dict[str, VideoReceiver | AudioReceiver] = {}

    def on_track(track: MediaStreamTrack) -> None:
        receiver: VideoReceiver | AudioReceiver
        if track.kind == "video":
            receiver = VideoReceiver(track, display_size=(160, 120), on_display=shown.append)
        else:
            receiver = AudioReceiver(track, devices.open_speaker(speaker))
        receivers[track.kind] = receiver
        receiver.start()

    callee.on("track", on_track)
    try:
        caller.addTrack(audio)
        caller.addTrack(video)
        await caller.setLocalDescription(await caller.createOffer())
        await callee.setRemoteDescription(caller.localDescription)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)

        video_in, audio_in = receivers["video"], receivers["audio"]
        assert isinstance(video_in, VideoReceiver)
        assert isinstance(audio_in, AudioReceiver)
        await asyncio.wait_for(video_in.first_frame.wait(), TIMEOUT)
        await until(lambda: video_in.latest is not None and video_in.frames >= 3)
        assert video_in.latest is not None
        assert identify_pattern(video_in.latest) is Facing.FRONT
        assert (video_in.width, video_in.height) == (320, 240)
        await until(lambda: len(shown) > 0)
        assert (shown[-1].width, shown[-1].height) == (160, 120)

        # Switch camera: the receiving side sees the back camera's tint.
        video.set_source(devices.open_camera(back, width=320, height=240, fps=30))
        assert devices.open_devices().count(front) == 0
        assert back in devices.open_devices()
        await until(
            lambda: video_in.latest is not None and identify_pattern(video_in.latest) is Facing.BACK
        )

        # The tone arrives loud; muted, the stream keeps flowing as silence.
        await until(lambda: audio_in.level > TONE_RMS / 2)
        audio.muted = True
        frames_before = audio_in.frames
        await until(lambda: audio_in.level < 0.01)
        assert audio_in.frames > frames_before
        speaker_out = audio_in.output
        assert isinstance(speaker_out, NullSpeaker)
        assert speaker_out.frames_written > 0
    finally:
        for receiver in receivers.values():
            await receiver.stop()
        await caller.close()
        await callee.close()
        video.stop()
        audio.stop()
        devices.close()
    assert devices.open_devices() == []
    # Nothing left running: aiortc's tasks and ours all ended with the connections.
    # (Polled here rather than with until(), whose poller would be a task itself.)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while (left := asyncio.all_tasks() - {asyncio.current_task()}) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert not left
