"""peer.encoders: the hook into aiortc, the tuned encoders and their meter.

What the encoders really configure is read back from the codec libraries themselves,
never from our own objects: FFmpeg's debug log of the libvpx configuration
(``vpx_codec_enc_cfg`` and every ``vpx_codec_control``), and the settings string x264
writes into every stream (an SEI message). Nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import fractions
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import aiortc.codecs
import aiortc.rtcrtpsender
import av
import av.logging
import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    VideoStreamTrack,
)
from aiortc.codecs import CODECS, depayload, get_decoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from peer import encoders
from peer.encoders import (
    AIORTC_DEFAULT,
    AIORTC_VP8_CPU_USED,
    AIORTC_VP8_NOISE_SENSITIVITY,
    INTERACTIVE,
    EncodeMeter,
    EncoderSettings,
    EncodeStats,
    TunedH264Encoder,
    TunedVp8Encoder,
    install,
    installed,
    live_encoders,
)

#: Generous: a loopback call connects in well under a second, but CI machines stall.
TIMEOUT = 15.0
TIME_BASE = fractions.Fraction(1, 90_000)

#: The name aiortc's sender looks its encoder up by (mypy: not re-exported there).
HOOK = "get_encoder"
#: aiortc keeps the sender's encoder private; reading it is the only way to see which
#: class a real sender picked.
SENDER_ENCODER = "_RTCRtpSender__encoder"

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread CPU clocks are Linux's"
)


@pytest.fixture(autouse=True)
def _aiortc_restored() -> Iterator[None]:
    """Each test starts from aiortc's own function, whatever ran before it in this
    process, and leaves it so."""
    install(None)
    yield
    install(None)


def _params(mime: str) -> RTCRtpCodecParameters:
    return next(c for kind in CODECS.values() for c in kind if c.mimeType == mime)


VP8 = _params("video/VP8")
H264 = _params("video/H264")


def _frame(index: int, width: int = 320, height: int = 240) -> av.VideoFrame:
    """A moving, textured picture (a flat one would let the encoder skip everything)."""
    y, x = np.mgrid[0:height, 0:width]
    luma = ((x + 3 * index) ^ (y + index)) & 0xFF
    pixels = np.empty((height * 3 // 2, width), np.uint8)
    pixels[:height] = luma
    pixels[height:] = 128
    frame = av.VideoFrame.from_ndarray(pixels, format="yuv420p")
    frame.pts = index * 3000
    frame.time_base = TIME_BASE
    return frame


def _decode_all(
    params: RTCRtpCodecParameters, chunks: list[tuple[list[bytes], int]]
) -> list[av.VideoFrame]:
    """Depayload and decode as aiortc's receiving end does."""
    decoder = get_decoder(params)
    out: list[av.VideoFrame] = []
    for payloads, timestamp in chunks:
        data = b"".join(depayload(params, p) for p in payloads)
        for picture in decoder.decode(JitterFrame(data, timestamp)):
            assert isinstance(picture, av.VideoFrame)
            out.append(picture)
    return out


def _libvpx_log(encoder: Vp8Encoder, frame: av.VideoFrame) -> list[str]:
    """Encode one frame; FFmpeg's debug log of how libvpx was set up, if it was."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.DEBUG)
    try:
        with av.logging.Capture() as logs:
            encoder.encode(frame)
    finally:
        av.logging.set_level(previous)
    return [message for _, name, message in logs if name == "libvpx"]


def _x264_options(payloads: list[bytes]) -> dict[str, str]:
    """The settings x264 writes into the stream (SEI at every keyframe), as a dict."""
    stream = b"".join(depayload(H264, p) for p in payloads)
    start = stream.index(b"options: ") + len(b"options: ")
    text = stream[start : stream.index(b"\x00", start)].decode()
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


# -- settings -----------------------------------------------------------------------


def test_settings_default_configures_nothing_and_interactive_both_codecs() -> None:
    assert not AIORTC_DEFAULT.configures_vp8
    assert not AIORTC_DEFAULT.configures_h264
    assert INTERACTIVE.configures_vp8
    assert INTERACTIVE.configures_h264
    assert EncoderSettings(h264_preset="ultrafast").vp8_label() == "vp8 aiortc"


@pytest.mark.parametrize(
    "bad",
    [
        {"h264_preset": "ludicrous"},
        {"h264_tune": "film"},  # without zerolatency: B-frames and look-ahead
        {"vp8_cpu_used": -17},
        {"vp8_threads": 0},
        {"h264_threads": 0},
        {"vp8_noise_sensitivity": 7},
    ],
)
def test_settings_refuse_what_cannot_work(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
        EncoderSettings(**bad)  # type: ignore[arg-type]


# -- options really reach the libraries ------------------------------------------------


def test_aiortc_vp8_values_are_the_ones_we_assume() -> None:
    log = "".join(_libvpx_log(Vp8Encoder(), _frame(0)))
    assert f"VP8E_SET_CPUUSED:             {AIORTC_VP8_CPU_USED}\n" in log
    assert f"VP8E_SET_NOISE_SENSITIVITY:   {AIORTC_VP8_NOISE_SENSITIVITY}\n" in log


def test_tuned_vp8_context_is_aiortcs_when_only_aiortcs_values_are_asked_for() -> None:
    # Configuring the context ourselves (one field set, to aiortc's own value) must
    # give libvpx exactly what aiortc gives it: every setting, every control.
    same = EncoderSettings(vp8_threads=number_of_threads(320 * 240, os.cpu_count() or 1))
    assert same.configures_vp8
    ours = _libvpx_log(TunedVp8Encoder(same), _frame(0))
    assert ours == _libvpx_log(Vp8Encoder(), _frame(0))
    assert any("vpx_codec_control" in line for line in ours)


def test_tuned_vp8_differs_from_aiortc_only_in_the_tuned_controls() -> None:
    settings = EncoderSettings(
        vp8_threads=2, vp8_cpu_used=-14, vp8_noise_sensitivity=0, vp8_qmax=60
    )
    aiortcs = _libvpx_log(Vp8Encoder(), _frame(0))
    ours = _libvpx_log(TunedVp8Encoder(settings), _frame(0))
    assert "  VP8E_SET_CPUUSED:             -14\n" in ours
    assert "  VP8E_SET_NOISE_SENSITIVITY:   0\n" in ours
    assert any("g_threads:                    2\n" in line for line in ours)
    assert any("rc_max_quantizer:             60\n" in line for line in ours)
    changed = [(a, b) for a, b in zip(aiortcs, ours, strict=True) if a != b]
    # Only the generic block (threads), the quantizer block and the two controls.
    assert len(changed) == 4


def test_interactive_vp8_reaches_libvpx() -> None:
    log = "".join(_libvpx_log(TunedVp8Encoder(INTERACTIVE), _frame(0)))
    assert f"VP8E_SET_CPUUSED:             {INTERACTIVE.vp8_cpu_used}\n" in log
    assert f"VP8E_SET_NOISE_SENSITIVITY:   {INTERACTIVE.vp8_noise_sensitivity}\n" in log
    assert f"g_threads:                    {INTERACTIVE.vp8_threads}\n" in log
    assert f"rc_max_quantizer:             {INTERACTIVE.vp8_qmax}\n" in log
    assert "g_lag_in_frames:              0\n" in log
    assert "rc_end_usage:                 1\n" in log  # VPX_CBR


def test_tuned_h264_context_is_aiortcs_when_only_aiortcs_values_are_asked_for() -> None:
    aiortcs = _x264_options(H264Encoder().encode(_frame(0))[0])
    ours = _x264_options(
        TunedH264Encoder(EncoderSettings(h264_tune="zerolatency")).encode(_frame(0))[0]
    )
    assert ours == aiortcs
    assert aiortcs["subme"] == "7"  # x264's default preset, medium
    assert aiortcs["bframes"] == "0"  # zerolatency


@pytest.mark.parametrize(
    ("preset", "subme", "me"),
    [("ultrafast", "0", "dia"), ("superfast", "1", "dia"), ("veryfast", "2", "hex")],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_x264_preset_and_threads_reach_x264(preset: str, subme: str, me: str, threads: int) -> None:
    settings = EncoderSettings(h264_preset=preset, h264_tune="zerolatency", h264_threads=threads)
    options = _x264_options(TunedH264Encoder(settings).encode(_frame(0))[0])
    assert (options["subme"], options["me"]) == (subme, me)
    assert options["threads"] == str(threads)
    assert options["sliced_threads"] == ("1" if threads > 1 else "0")
    assert options["bframes"] == "0"
    assert options["bitrate"] == "1000"  # aiortc's DEFAULT_BITRATE for H.264, kbps


def test_interactive_h264_reaches_x264() -> None:
    options = _x264_options(TunedH264Encoder(INTERACTIVE).encode(_frame(0))[0])
    expected = {"superfast": "1", "ultrafast": "0", "veryfast": "2"}
    assert options["subme"] == expected[str(INTERACTIVE.h264_preset)]
    assert options["threads"] == str(INTERACTIVE.h264_threads)


# -- encoding and decoding -------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "cls"), [(VP8, TunedVp8Encoder), (H264, TunedH264Encoder)], ids=["vp8", "h264"]
)
@pytest.mark.parametrize("size", [(320, 240), (640, 360)])
def test_tuned_encoders_produce_decodable_frames_of_the_right_size(
    params: RTCRtpCodecParameters,
    cls: type[TunedVp8Encoder] | type[TunedH264Encoder],
    size: tuple[int, int],
) -> None:
    encoder = cls(INTERACTIVE)
    chunks = [encoder.encode(_frame(i, *size), force_keyframe=i == 5) for i in range(8)]
    pictures = _decode_all(params, chunks)
    assert len(pictures) == 8
    assert {(p.width, p.height) for p in pictures} == {size}
    assert encoder.codec is encoder.tuned_context  # aiortc kept ours throughout
    # The picture is the one we sent, not just a frame of the right size.
    sent = _frame(7, *size).to_ndarray(format="yuv420p")[: size[1]].astype(int)
    got = pictures[-1].to_ndarray(format="yuv420p")[: size[1]].astype(int)
    assert np.mean(np.abs(sent - got)) < 20


def _context_changes(
    encoder: Vp8Encoder | H264Encoder, steps: list[tuple[int, tuple[int, int]]]
) -> tuple[list[bool], list[int | None]]:
    """For each (target bitrate, frame size): did the frame get a new context? And the
    context's bitrate. Old contexts are kept alive so identities cannot be reused."""
    seen: list[object] = []
    changed: list[bool] = []
    rates: list[int | None] = []
    for i, (bitrate, size) in enumerate(steps):
        encoder.target_bitrate = bitrate  # what the sender does with a REMB
        encoder.encode(_frame(i, *size))
        assert encoder.codec is not None
        changed.append(not seen or encoder.codec is not seen[-1])
        seen.append(encoder.codec)
        rates.append(encoder.codec.bit_rate)
    return changed, rates


BITRATE_STEPS = [
    (500_000, (320, 240)),
    (500_000, (320, 240)),
    (540_000, (320, 240)),  # +8 %: kept
    (600_000, (320, 240)),  # +20 %: new context
    (1_400_000, (320, 240)),
    (9_000_000, (320, 240)),  # clamped to the maximum: VP8's 1.5 Mbps is within 10 %
    (9_000_000, (352, 288)),  # new size
    (100_000, (352, 288)),  # clamped to the minimum
    (100_000, (352, 288)),
]


@pytest.mark.parametrize(
    ("aiortc_cls", "tuned_cls", "expected"),
    [
        (Vp8Encoder, TunedVp8Encoder, [1, 0, 0, 1, 1, 0, 1, 1, 0]),
        (H264Encoder, TunedH264Encoder, [1, 0, 0, 1, 1, 1, 1, 1, 0]),
    ],
    ids=["vp8", "h264"],
)
def test_bitrate_changes_recreate_the_context_exactly_when_aiortc_does(
    aiortc_cls: type[Vp8Encoder] | type[H264Encoder],
    tuned_cls: type[TunedVp8Encoder] | type[TunedH264Encoder],
    expected: list[int],
) -> None:
    aiortcs = _context_changes(aiortc_cls(), BITRATE_STEPS)
    tuned = tuned_cls(INTERACTIVE)
    ours = _context_changes(tuned, BITRATE_STEPS)
    assert ours == aiortcs
    assert aiortcs[0] == [bool(e) for e in expected]
    assert tuned.codec is tuned.tuned_context
    assert tuned.stats().contexts == sum(ours[0])


def test_x264_runs_at_the_bitrate_the_receiver_asked_for() -> None:
    encoder = TunedH264Encoder(INTERACTIVE)
    encoder.encode(_frame(0))
    encoder.target_bitrate = 2_000_000  # a REMB
    options = _x264_options(encoder.encode(_frame(1))[0])  # new context: keyframe + SEI
    assert options["bitrate"] == "2000"


# -- the meter --------------------------------------------------------------------------


def test_meter_counts_frames_contexts_and_windows() -> None:
    encoder = TunedVp8Encoder(INTERACTIVE)
    assert encoder.stats() == EncodeStats(method=encoder.stats().method)
    assert encoder.stats().encode_ms == 0.0
    for i in range(3):
        encoder.encode(_frame(i))
    early = encoder.stats()
    for i in range(3, 8):
        encoder.encode(_frame(i))
    stats = encoder.stats()
    assert (stats.frames, stats.contexts) == (8, 1)
    assert stats.cpu_ns > 0
    assert stats.wall_ns > 0
    assert stats.encode_ms == stats.cpu_ns / 8 / 1e6
    window = stats.since(early)
    assert (window.frames, window.contexts) == (5, 0)
    assert window.cpu_ns == stats.cpu_ns - early.cpu_ns


@linux_only
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="libvpx starts no threads on 1 CPU")
@pytest.mark.parametrize(
    ("cls", "settings"),
    [
        (TunedVp8Encoder, EncoderSettings(vp8_threads=2)),
        (TunedH264Encoder, EncoderSettings(h264_tune="zerolatency", h264_threads=2)),
    ],
    ids=["vp8", "h264"],
)
def test_meter_finds_the_codecs_own_threads(
    cls: type[TunedVp8Encoder] | type[TunedH264Encoder], settings: EncoderSettings
) -> None:
    single = cls(INTERACTIVE)
    single.encode(_frame(0, 640, 480))
    assert single.stats().method == "threads"
    assert single.stats().worker_threads == 0  # threads=1: all work on the caller's

    threaded = cls(settings)
    for i in range(4):
        threaded.encode(_frame(i, 640, 480))
    assert threaded.stats().worker_threads > 0
    # A new context (new size) replaces the old one's threads with its own.
    before = threaded.stats().worker_threads
    threaded.encode(_frame(4, 320, 240))
    threaded.encode(_frame(5, 320, 240))
    assert threaded.stats().contexts == 2
    assert 0 < threaded.stats().worker_threads <= before


@linux_only
def test_meter_drops_a_thread_that_runs_between_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A native thread of someone else (say a video decoder) born while a context
    # opens is adopted at first; running between two encodes gives it away. Python
    # threads stand in for it here, so the meter must not recognise them as Python's.
    monkeypatch.setattr(encoders, "_python_thread_ids", set)
    go, ran, stop = threading.Event(), threading.Event(), threading.Event()

    def busy_between_encodes() -> None:
        go.wait()
        until = time.thread_time_ns() + 5 * encoders._IDLE_SLACK_NS
        while time.thread_time_ns() < until:
            pass
        ran.set()
        stop.wait()

    busy = threading.Thread(target=busy_between_encodes)
    idle = threading.Thread(target=stop.wait)
    meter = EncodeMeter()
    try:
        with meter.measure(opens_codec=True):
            busy.start()
            idle.start()
        assert meter.stats().worker_threads == 2
        go.set()
        assert ran.wait(TIMEOUT)
        with meter.measure(opens_codec=False):
            pass
        assert meter.stats().worker_threads == 1  # the idle one stays
    finally:
        go.set()
        stop.set()
        busy.join()
        idle.join()
    # Python's join() returns a moment before the kernel has reaped the thread (libvpx
    # and x264 use pthread_join, which waits for that): say it is gone, as it soon is.
    gone = idle.native_id
    real_clock = encoders._thread_cpu_ns
    monkeypatch.setattr(
        encoders, "_thread_cpu_ns", lambda tid: None if tid == gone else real_clock(tid)
    )
    with meter.measure(opens_codec=False):
        pass
    assert meter.stats().worker_threads == 0  # exited: gone with its context


# -- the hook ---------------------------------------------------------------------------


def test_install_builds_tuned_video_encoders_and_leaves_audio_to_aiortc() -> None:
    assert installed() is None
    assert getattr(aiortc.rtcrtpsender, HOOK) is aiortc.codecs.get_encoder
    install(INTERACTIVE)
    assert installed() == INTERACTIVE
    vp8 = getattr(aiortc.rtcrtpsender, HOOK)(VP8)
    assert isinstance(vp8, TunedVp8Encoder)
    assert vp8.settings == INTERACTIVE
    assert isinstance(getattr(aiortc.rtcrtpsender, HOOK)(H264), TunedH264Encoder)
    assert type(getattr(aiortc.rtcrtpsender, HOOK)(_params("audio/opus"))) is OpusEncoder
    install(AIORTC_DEFAULT)  # switching is allowed
    assert installed() == AIORTC_DEFAULT
    install(None)
    assert installed() is None
    assert getattr(aiortc.rtcrtpsender, HOOK) is aiortc.codecs.get_encoder


def test_install_refuses_to_stack_on_a_foreign_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc.rtcrtpsender, HOOK, lambda codec: None)
    with pytest.raises(RuntimeError, match="already replaced"):
        install(INTERACTIVE)


class _Pattern(VideoStreamTrack):
    """aiortc's paced dummy track, with a moving picture instead of a green one."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = _frame(pts // 3000)
        frame.pts, frame.time_base = pts, time_base
        return frame


class _Call:
    """Two RTCPeerConnections in this process, no ICE servers (host candidates only)."""

    def __init__(self) -> None:
        self.caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.callee = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = _Pattern()
        self.sender: RTCRtpSender | None = None
        self.remote: MediaStreamTrack | None = None

    async def start(self, mime: str) -> None:
        arrived: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

        @self.callee.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if not arrived.done():
                arrived.set_result(track)

        transceiver = self.caller.addTransceiver(self.track, direction="sendonly")
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == mime]
        )
        self.sender = transceiver.sender
        await self.caller.setLocalDescription(await self.caller.createOffer())
        await self.callee.setRemoteDescription(self.caller.localDescription)
        await self.callee.setLocalDescription(await self.callee.createAnswer())
        await self.caller.setRemoteDescription(self.callee.localDescription)
        self.remote = await asyncio.wait_for(arrived, TIMEOUT)
        await self.next_frame()

    async def next_frame(self) -> av.VideoFrame:
        assert self.remote is not None
        frame = await asyncio.wait_for(self.remote.recv(), TIMEOUT)
        assert isinstance(frame, av.VideoFrame)
        return frame

    def encoder(self) -> object:
        return getattr(self.sender, SENDER_ENCODER)

    async def close(self) -> None:
        self.track.stop()
        await self.caller.close()
        await self.callee.close()


@pytest.fixture
async def call() -> AsyncIterator[_Call]:
    c = _Call()
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("mime", "cls"), [("video/VP8", TunedVp8Encoder), ("video/H264", TunedH264Encoder)]
)
async def test_a_real_sender_uses_the_tuned_encoder_and_obeys_remb(
    call: _Call, mime: str, cls: type[TunedVp8Encoder] | type[TunedH264Encoder]
) -> None:
    install(INTERACTIVE)
    await call.start(mime)
    encoder = call.encoder()
    assert isinstance(encoder, cls)
    assert encoder.settings == INTERACTIVE
    assert encoder in live_encoders()
    assert encoder.stats().frames >= 1
    # (Not "encoder.codec is encoder.tuned_context" here: the encode of the next frame
    # runs on an executor thread meanwhile and may be swapping contexts.)
    assert encoder.tuned_context is not None

    # The receiver estimates 1.4 Mbps: aiortc's sender sets target_bitrate, and the
    # next frame gets a new context of ours at that rate. (The callee's own REMBs
    # may move the target too; what must hold is that ours follows it.)
    assert call.sender is not None
    await call.sender._handle_rtcp_packet(
        RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=0,
            media_ssrc=0,
            fci=pack_remb_fci(1_400_000, [call.sender._ssrc]),
        )
    )
    assert encoder.target_bitrate == 1_400_000

    def follows_target() -> bool:
        codec = encoder.codec
        return (
            encoder.stats().contexts >= 2
            and codec is encoder.tuned_context
            and codec is not None
            and abs(encoder.target_bitrate - (codec.bit_rate or 0)) <= encoder.target_bitrate / 10
        )

    async def frames_until_followed() -> None:
        while not follows_target():
            await call.next_frame()

    await asyncio.wait_for(frames_until_followed(), TIMEOUT)


async def test_after_install_none_a_new_call_uses_aiortcs_encoder(call: _Call) -> None:
    install(INTERACTIVE)
    install(None)
    await call.start("video/VP8")
    assert type(call.encoder()) is Vp8Encoder
