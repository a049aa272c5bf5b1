"""Encoder benchmark: CPU per frame and picture quality, aiortc's defaults vs candidates.

Run (from the project root)::

    .venv/bin/python -m bench.encoders            # full run, about 4 minutes on 2 cores
    .venv/bin/python -m bench.encoders --quick    # 60 frames per run, under a minute
    .venv/bin/python -m bench.encoders --codec vp8 --busy 1   # one core kept busy
    .venv/bin/python -m bench.encoders --content testsrc2 --out build/bench/t2.json

For every setting, size (640x480, 1280x720) and target bitrate (the codec's aiortc
DEFAULT_BITRATE, and 1.5 Mbps, VP8's maximum in aiortc), the same frames go through
the encoder the hook would build (``peer.encoders.make_encoder``), then through
aiortc's depayloader and decoder, as in a call. Measured after a warm-up (the first
keyframe and the rate control settling are not what a call costs for minutes):

- CPU ms/frame: process CPU time (``time.process_time_ns``, the figure ``getrusage``
  gives, at ns resolution) around each ``encode()`` call, so the codec's own worker
  threads count and frame generation, decoding and PSNR do not. The bench does
  nothing else meanwhile, so process time is exactly the encoder's here; "meter" is
  the encoders' own figure (``EncodeStats.encode_ms``, what a live call reports),
  shown as a cross-check.
- % of one core at 30 fps: CPU ms/frame * 30 / 1000.
- wall ms: time inside ``encode()``, the latency the sender adds to each frame.
- PSNR: luma, decoded against the source frame, averaged over frames (in dB).
- cost: CPU relative to aiortc's default for the same codec, size and bitrate
  (0.25 = four times cheaper); dPSNR likewise; kbps: what was actually sent.

Content ("camera", the default): what a device camera sends in a support call, made
with numpy: a scene with a natural 1/f texture, hard-edged objects and a bright
screen with text-like detail, seen by a hand-held camera (smooth sub-pixel pan with
tremor), a hand-sized object moving across, and fresh sensor noise in every frame.
"testsrc2" is FFmpeg's lavfi source (through PyAV's filter graph) with temporal
noise added, as a second opinion. Frames are fed as fast as the encoder takes them,
with 30 fps timestamps in aiortc's 90 kHz time base, so rate control sees 30 fps.
``--busy N`` keeps N cores busy in other processes meanwhile, as the rest of a call
(event loop, audio, decoding) would: it shows what multi-threaded encoders then cost.

The last lines name, per codec, the cheapest candidate (CPU at 1280x720, both
bitrates) whose PSNR stays within ``--max-loss`` dB of aiortc's default and whose
bitrate stays within 15 % of the target (or of what the default sent) in every
condition measured: what ``peer.encoders.INTERACTIVE`` should be on this class of
machine. Settings within 5 % of the cheapest count as tied; fewer threads win.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiortc
import av
import av.filter
import numpy as np
import numpy.typing as npt
from aiortc.codecs import CODECS, depayload, get_decoder
from aiortc.codecs import h264 as aiortc_h264
from aiortc.codecs import vpx as aiortc_vpx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from peer.encoders import AIORTC_DEFAULT, INTERACTIVE, EncoderSettings, make_encoder

Frame = npt.NDArray[np.uint8]  # packed yuv420p: (height * 3 / 2, width)

FPS = 30
TIME_BASE = fractions.Fraction(1, 90_000)  # aiortc's VIDEO_TIME_BASE
TICKS_PER_FRAME = 90_000 // FPS
SIZES = ((640, 480), (1280, 720))
HIGH_BITRATE = 1_500_000  # VP8's MAX_BITRATE in aiortc
DEFAULT_BITRATE = {"vp8": aiortc_vpx.DEFAULT_BITRATE, "h264": aiortc_h264.DEFAULT_BITRATE}
MIME = {"vp8": "video/VP8", "h264": "video/H264"}


@dataclasses.dataclass(frozen=True)
class Case:
    codec: str  # "vp8" | "h264"
    settings: EncoderSettings

    @property
    def is_default(self) -> bool:
        return self.settings == AIORTC_DEFAULT

    @property
    def label(self) -> str:
        s = self.settings
        return s.vp8_label() if self.codec == "vp8" else s.h264_label()


def candidates() -> list[Case]:
    vp8 = [Case("vp8", AIORTC_DEFAULT)]
    for threads in (1, 2):
        for cpu_used in (-6, -8, -12, -16):
            vp8.append(Case("vp8", EncoderSettings(vp8_threads=threads, vp8_cpu_used=cpu_used)))
    # The denoiser runs on every frame whatever the speed step: try it off (and on
    # luma only once), at the speeds that matter on two cores.
    for cpu_used, denoisers in ((-6, (0,)), (-8, (0, 1)), (-10, (0,)), (-12, (0,))):
        for denoiser in denoisers:
            vp8.append(
                Case(
                    "vp8",
                    EncoderSettings(
                        vp8_threads=1, vp8_cpu_used=cpu_used, vp8_noise_sensitivity=denoiser
                    ),
                )
            )
    # The same with the whole quantizer range: at 720p and 500 kbps aiortc's qmax 56
    # cannot hold the bitrate, less so at faster speeds (they need more bits for the
    # same picture), so libvpx overshoots instead.
    for cpu_used in (-6, -8, -10, -12):
        vp8.append(
            Case(
                "vp8",
                EncoderSettings(
                    vp8_threads=1, vp8_cpu_used=cpu_used, vp8_noise_sensitivity=0, vp8_qmax=63
                ),
            )
        )
    h264 = [Case("h264", AIORTC_DEFAULT)]
    for preset in ("veryfast", "superfast", "ultrafast"):
        for h264_threads in (1, 2):
            h264.append(
                Case(
                    "h264",
                    EncoderSettings(
                        h264_preset=preset, h264_tune="zerolatency", h264_threads=h264_threads
                    ),
                )
            )
    return vp8 + h264


# -- content --------------------------------------------------------------------------


def _pink(
    rng: np.random.Generator, height: int, width: int, slope: float
) -> npt.NDArray[np.float64]:
    """Zero-mean, unit-variance noise with a 1/f**slope amplitude spectrum (slope 1
    is what natural images have)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    shape = (height, width // 2 + 1)
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / f**slope
    spectrum[0, 0] = 0
    img = np.fft.irfft2(spectrum, s=(height, width))
    return np.asarray((img - img.mean()) / img.std(), dtype=np.float64)


def _scene(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.float32]:
    """A still scene (Y, U, V at full resolution), larger than the frame for panning."""
    y = 105 + 35 * _pink(rng, height, width, 1.0)
    u = 128 + 8 * _pink(rng, height, width, 1.6)
    v = 128 + 8 * _pink(rng, height, width, 1.6)
    detail = _pink(rng, height, width, 0.6)
    # Hard-edged objects (furniture, boxes, cables' shadows) with their own shade, tint
    # and a little surface texture.
    for _ in range(14):
        h = int(rng.integers(height // 12, height // 3))
        w = int(rng.integers(width // 12, width // 3))
        top = int(rng.integers(0, height - h))
        left = int(rng.integers(0, width - w))
        area = (slice(top, top + h), slice(left, left + w))
        y[area] = rng.uniform(40, 200) + 12 * detail[area]
        u[area] = rng.uniform(100, 156)
        v[area] = rng.uniform(100, 156)
    # The device's screen, which the technician wants to read: bright, with rows of
    # dark "words" (fine, high-contrast detail that blurs first when bits run short).
    sh, sw = height // 3, width // 3
    top, left = height // 3, width // 3
    y[top : top + sh, left : left + sw] = 225
    u[top : top + sh, left : left + sw] = 128
    v[top : top + sh, left : left + sw] = 128
    line = max(4, sh // 24)
    for row in range(top + line, top + sh - line, 2 * line):
        col = left + line
        while col < left + sw - line:
            word = int(rng.integers(2, 8)) * line
            y[row : row + line // 2 + 1, col : min(col + word, left + sw - line)] = 30
            col += word + line
    return np.stack([y, u, v]).astype(np.float32)


def _shift(plane: npt.NDArray[np.float32], dy: float, dx: float, h: int, w: int) -> Any:
    """The h x w window at (dy, dx) with bilinear interpolation (sub-pixel motion)."""
    iy, ix = int(dy), int(dx)
    fy, fx = dy - iy, dx - ix
    a = plane[iy : iy + h, ix : ix + w]
    b = plane[iy : iy + h, ix + 1 : ix + w + 1]
    c = plane[iy + 1 : iy + h + 1, ix : ix + w]
    d = plane[iy + 1 : iy + h + 1, ix + 1 : ix + w + 1]
    return (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)


def camera_frames(width: int, height: int, count: int, seed: int = 7) -> list[Frame]:
    rng = np.random.default_rng(seed)
    margin = max(width, height) // 10
    scene = _scene(rng, height + 2 * margin + 2, width + 2 * margin + 2)
    hand_tex = _pink(rng, height, width, 0.8).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames: list[Frame] = []
    for i in range(count):
        t = i / FPS
        # Hand-held camera: slow sway over a few seconds plus a small tremor.
        dy = margin + 0.6 * margin * math.sin(2 * math.pi * t / 5.3) + rng.normal(0, 0.4)
        dx = margin + 0.8 * margin * math.sin(2 * math.pi * t / 7.1) + rng.normal(0, 0.4)
        dy = min(max(dy, 0.0), 2.0 * margin)
        dx = min(max(dx, 0.0), 2.0 * margin)
        y, u, v = (_shift(p, dy, dx, height, width) for p in scene)
        # A hand crossing the picture and back (soft-edged ellipse, skin tone).
        cx = width * (0.5 + 0.4 * math.sin(2 * math.pi * t / 4.0))
        cy = height * (0.6 + 0.15 * math.cos(2 * math.pi * t / 3.0))
        r = ((xx - cx) / (width * 0.09)) ** 2 + ((yy - cy) / (height * 0.16)) ** 2
        alpha = np.clip(1.5 - r, 0.0, 1.0)
        y = y * (1 - alpha) + (150 + 10 * hand_tex) * alpha
        u = u * (1 - alpha) + 112 * alpha
        v = v * (1 - alpha) + 150 * alpha
        # Sensor noise, new in every frame, stronger in luma.
        y = y + rng.normal(0, 1.5, y.shape)
        out = np.empty((height * 3 // 2, width), np.uint8)
        out[:height] = np.clip(y, 0, 255)
        # 4:2:0: average 2x2 blocks of chroma, plus a little chroma noise.
        for k, plane in enumerate((u, v)):
            sub = plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
            sub = sub + rng.normal(0, 0.8, sub.shape)
            flat = np.clip(sub, 0, 255).astype(np.uint8).reshape(-1)
            quarter = flat.size
            start = height * width + k * quarter
            out.reshape(-1)[start : start + quarter] = flat
        frames.append(out)
    return frames


def testsrc2_frames(width: int, height: int, count: int) -> list[Frame]:
    """FFmpeg's testsrc2 with temporal noise, through PyAV's filter graph."""
    graph = av.filter.Graph()
    nodes = [
        graph.add("testsrc2", f"size={width}x{height}:rate={FPS}"),
        graph.add("noise", "alls=6:allf=t"),
        graph.add("format", "pix_fmts=yuv420p"),
        graph.add("buffersink"),
    ]
    graph.link_nodes(*nodes)
    graph.configure()
    frames: list[Frame] = []
    for _ in range(count):
        frame = nodes[-1].pull()
        assert isinstance(frame, av.VideoFrame)
        frames.append(np.asarray(frame.to_ndarray(format="yuv420p"), dtype=np.uint8))
    return frames


# -- measuring ------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    setting: str
    codec: str
    default: bool
    width: int
    height: int
    bitrate: int
    frames: int
    cpu_ms: float
    core_pct: float
    wall_ms: float
    meter_ms: float
    psnr_db: float
    psnr_min_db: float
    kbps: float
    decoded: int
    #: Encoder threads asked for (None: the library's or aiortc's choice).
    threads: int | None = None
    cost: float = math.nan
    dpsnr_db: float = math.nan

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def _codec_parameters(codec: str) -> RTCRtpCodecParameters:
    return next(c for c in CODECS["video"] if c.mimeType == MIME[codec])


def _psnr(decoded: Frame, source: Frame, height: int) -> float:
    diff = decoded[:height].astype(np.int32) - source[:height].astype(np.int32)
    mse = float(np.mean(diff * diff))
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_case(case: Case, frames: Sequence[Frame], bitrate: int, warmup: int) -> Result:
    height = frames[0].shape[0] * 2 // 3
    width = frames[0].shape[1]
    params = _codec_parameters(case.codec)
    encoder = make_encoder(params.mimeType, case.settings)
    assert encoder is not None
    encoder.target_bitrate = bitrate
    decoder = get_decoder(params)
    cpu_ns = wall_ns = sent = decoded = 0
    psnrs: list[float] = []
    meter_at_warmup = encoder.stats()
    for i, pixels in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(pixels, format="yuv420p")
        frame.pts = i * TICKS_PER_FRAME
        frame.time_base = TIME_BASE
        if i == warmup:
            meter_at_warmup = encoder.stats()
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        payloads, timestamp = encoder.encode(frame, False)
        cpu1, wall1 = time.process_time_ns(), time.perf_counter_ns()
        # As the receiving end does: depayload, reassemble, decode.
        data = b"".join(depayload(params, p) for p in payloads)
        pictures = decoder.decode(JitterFrame(data, timestamp)) if data else []
        if i < warmup:
            continue
        cpu_ns += cpu1 - cpu0
        wall_ns += wall1 - wall0
        sent += sum(len(p) for p in payloads)
        for picture in pictures:
            assert isinstance(picture, av.VideoFrame)
            decoded += 1
            out = np.asarray(picture.to_ndarray(format="yuv420p"), dtype=np.uint8)
            psnrs.append(_psnr(out, pixels, height))
    measured = len(frames) - warmup
    cpu_ms = cpu_ns / measured / 1e6
    return Result(
        setting=case.label,
        codec=case.codec,
        default=case.is_default,
        width=width,
        height=height,
        bitrate=bitrate,
        frames=measured,
        cpu_ms=cpu_ms,
        core_pct=cpu_ms * FPS / 10,
        wall_ms=wall_ns / measured / 1e6,
        meter_ms=encoder.stats().since(meter_at_warmup).encode_ms,
        psnr_db=float(np.mean(psnrs)) if psnrs else math.nan,
        psnr_min_db=float(np.min(psnrs)) if psnrs else math.nan,
        kbps=sent * 8 * FPS / measured / 1000,
        decoded=decoded,
        threads=case.settings.vp8_threads if case.codec == "vp8" else case.settings.h264_threads,
    )


def _compare_to_default(results: list[Result]) -> None:
    defaults = {(r.codec, r.size, r.bitrate): r for r in results if r.default}
    for r in results:
        base = defaults.get((r.codec, r.size, r.bitrate))
        if base is not None:
            r.cost = r.cpu_ms / base.cpu_ms
            r.dpsnr_db = r.psnr_db - base.psnr_db


#: How far above the target (or above what aiortc's default sent, if that is more) a
#: setting may send: a faster speed step that saves CPU by blowing the bitrate is no
#: saving on a link sized for the target.
RATE_TOLERANCE = 1.15
#: Settings this close in CPU count as equally cheap; then fewer threads win (no
#: dependence on a second core that the rest of the call also needs), then quality.
CPU_TIE = 0.05


def _acceptable(rows: list[Result], defaults: dict[tuple[str, int], Result], loss: float) -> bool:
    for r in rows:
        base = defaults[(r.size, r.bitrate)]
        if r.dpsnr_db < -loss:
            return False
        if r.kbps > RATE_TOLERANCE * max(r.bitrate / 1000, base.kbps):
            return False
    return True


def pick(results: list[Result], codec: str, max_loss_db: float) -> Result | None:
    """The cheapest setting, by CPU at the largest size (both bitrates), whose PSNR is
    within ``max_loss_db`` of aiortc's default and whose bitrate stays on target in
    every condition measured. Returns its row at the largest size, default bitrate."""
    rows = [r for r in results if r.codec == codec]
    defaults = {(r.size, r.bitrate): r for r in rows if r.default}
    if not defaults:
        return None
    largest = max((r.width * r.height, r.size) for r in rows)[1]
    by_setting: dict[str, list[Result]] = {}
    for r in rows:
        by_setting.setdefault(r.setting, []).append(r)
    scored = [
        (sum(r.cpu_ms for r in rs if r.size == largest), rs)
        for rs in by_setting.values()
        if _acceptable(rs, defaults, max_loss_db)
    ]
    if not scored:
        return None
    cheapest = min(cpu for cpu, _ in scored)
    tied = [rs for cpu, rs in scored if cpu <= cheapest * (1 + CPU_TIE)]
    best = min(
        tied,
        key=lambda rs: (
            rs[0].threads if rs[0].threads is not None else 99,
            -sum(r.psnr_db for r in rs),
        ),
    )
    return next(r for r in best if r.size == largest and r.bitrate == DEFAULT_BITRATE[codec])


# The rows of what peer.encoders.INTERACTIVE uses today, marked "*" in the table.
_CHOSEN = (INTERACTIVE.vp8_label(), INTERACTIVE.h264_label())


def _table(results: list[Result]) -> str:
    head = (
        f"{'setting':<22} {'size':>9} {'target':>6} {'CPU ms':>7} {'%core':>6} "
        f"{'wall ms':>7} {'meter':>6} {'PSNR':>6} {'dPSNR':>6} {'cost':>5} {'cheaper':>7} "
        f"{'kbps':>5}"
    )
    lines = [head, "-" * len(head)]
    last = None
    for r in results:
        group = (r.codec, r.size, r.bitrate)
        if last is not None and group != last:
            lines.append("")
        last = group
        cheaper = 1 / r.cost if r.cost else math.nan
        mark = "*" if r.setting in _CHOSEN else " "
        lines.append(
            f"{mark}{r.setting:<21} {r.size:>9} {r.bitrate // 1000:>6} {r.cpu_ms:>7.2f} "
            f"{r.core_pct:>5.1f}% {r.wall_ms:>7.2f} {r.meter_ms:>6.2f} {r.psnr_db:>6.2f} "
            f"{r.dpsnr_db:>+6.2f} {r.cost:>5.2f} {cheaper:>6.1f}x {r.kbps:>5.0f}"
        )
    return "\n".join(lines)


def _spin() -> None:
    """A busy core, standing in for the rest of a call (event loop, audio, decoding)."""
    while True:
        pass


def _machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "platform": platform.platform(),
    }


def _json_row(r: Result) -> dict[str, Any]:
    row = {**dataclasses.asdict(r), "size": r.size}
    # NaN (no default to compare with) is not JSON; null is.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.encoders",
        description="CPU per frame and PSNR of aiortc's video encoders vs tuned settings.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer frames (a short run)")
    parser.add_argument("--frames", type=int, help="measured frames per run (default 300)")
    parser.add_argument("--warmup", type=int, help="frames before measuring (default 30)")
    parser.add_argument("--content", choices=("camera", "testsrc2"), default="camera")
    parser.add_argument("--codec", choices=("vp8", "h264"), action="append")
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="keep this many cores busy meanwhile (the rest of a call competes for them)",
    )
    parser.add_argument("--max-loss", type=float, default=1.5, help="dB below the default")
    parser.add_argument("--out", type=Path, default=Path("build/bench/encoders.json"))
    args = parser.parse_args(argv)
    frames_n = args.frames or (60 if args.quick else 300)
    warmup = args.warmup if args.warmup is not None else (15 if args.quick else 30)
    codecs = args.codec or ["vp8", "h264"]
    cases = [c for c in candidates() if c.codec in codecs]

    results: list[Result] = []
    started = time.monotonic()
    # Separate processes: their CPU time is not ours, only their competition is.
    spinners = [
        multiprocessing.get_context("spawn").Process(target=_spin) for _ in range(args.busy)
    ]
    for spinner in spinners:
        spinner.daemon = True
        spinner.start()
    try:
        for width, height in SIZES:
            make = camera_frames if args.content == "camera" else testsrc2_frames
            frames = make(width, height, warmup + frames_n)
            for codec in codecs:
                for bitrate in (DEFAULT_BITRATE[codec], HIGH_BITRATE):
                    for case in (c for c in cases if c.codec == codec):
                        r = run_case(case, frames, bitrate, warmup)
                        results.append(r)
                        print(
                            f"  {r.setting:<20} {r.size:>9} {bitrate // 1000:>5} kbps: "
                            f"{r.cpu_ms:6.2f} ms/frame, {r.psnr_db:5.2f} dB",
                            file=sys.stderr,
                            flush=True,
                        )
            del frames
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()
    _compare_to_default(results)

    print(
        f"\n{args.content} content, {frames_n} frames measured after {warmup}, "
        f"{os.cpu_count()} CPUs, {args.busy} kept busy, {time.monotonic() - started:.0f} s\n"
    )
    print(_table(results))
    print("\n* peer.encoders.INTERACTIVE")
    picks = {codec: pick(results, codec, args.max_loss) for codec in codecs}
    print()
    for codec, best in picks.items():
        if best is None:
            print(f"{codec}: no candidate within {args.max_loss} dB of aiortc's default")
        else:
            print(
                f"{codec}: pick (within {args.max_loss} dB and on bitrate everywhere, "
                f"cheapest at {best.size}): {best.setting}: {best.cpu_ms:.2f} ms/frame = "
                f"{best.core_pct:.1f}% of a core at 30 fps, "
                f"{1 / best.cost:.1f}x cheaper than aiortc's"
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": _machine(),
        "content": args.content,
        "frames": frames_n,
        "warmup": warmup,
        "fps": FPS,
        "busy_cores": args.busy,
        "max_loss_db": args.max_loss,
        "rate_tolerance": RATE_TOLERANCE,
        "results": [_json_row(r) for r in results],
        "picks": {codec: (best.setting if best else None) for codec, best in picks.items()},
        "interactive": list(_CHOSEN),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
