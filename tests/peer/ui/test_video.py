"""``VideoView``: the latest frame, fitted with its aspect on a dark letterbox, or a
text in its place; and the widgets' modules load neither aiortc nor PyAV."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QColor, QImage
from pytestqt.qtbot import QtBot

from peer.media import DisplayFrame
from peer.ui import theme
from peer.ui.video import Frame, VideoView, fit_rect

ROOT = Path(__file__).resolve().parents[3]
RED = (220, 30, 40)
BLUE = (20, 40, 230)


def solid_frame(width: int, height: int, rgb: tuple[int, int, int], pad: int = 0) -> DisplayFrame:
    """A frame of one colour; the padding at the end of each row is green, which
    must never be shown."""
    row = bytes(rgb) * width + bytes((0, 255, 0)) * (pad // 3) + b"\x00" * (pad % 3)
    return DisplayFrame(
        width=width, height=height, bytes_per_line=3 * width + pad, data=row * height
    )


def _as_frame(frame: DisplayFrame) -> Frame:
    """Never called for its value: mypy checks that DisplayFrame is a Frame."""
    return frame


def pixel(view: VideoView, x: int, y: int) -> tuple[int, int, int]:
    image: QImage = view.grab().toImage()
    colour = image.pixelColor(x, y)
    return colour.red(), colour.green(), colour.blue()


def close_to(got: tuple[int, int, int], want: tuple[int, int, int], slack: int = 6) -> bool:
    return all(abs(g - w) <= slack for g, w in zip(got, want, strict=True))


@pytest.fixture
def view(qtbot: QtBot) -> VideoView:
    v = VideoView(accessible_name="Technician's video")
    qtbot.addWidget(v)
    v.resize(200, 200)
    v.show()
    qtbot.waitExposed(v)
    return v


def rgb(colour: str) -> tuple[int, int, int]:
    c = QColor(colour)
    return c.red(), c.green(), c.blue()


def background() -> tuple[int, int, int]:
    return rgb(theme.VIDEO_BACKGROUND)


def test_a_frame_fills_the_width_letterboxed(view: VideoView) -> None:
    assert view.accessibleName() == "Technician's video"
    view.show_frame(solid_frame(64, 32, RED, pad=5))  # 2:1 in a square: bars above, below
    assert view.frames_shown == 1
    assert view.has_frame()
    assert close_to(pixel(view, 100, 100), RED)
    assert close_to(pixel(view, 2, 100), RED)  # full width
    assert close_to(pixel(view, 100, 10), background())  # letterbox
    assert close_to(pixel(view, 100, 190), background())


def test_a_tall_frame_is_pillarboxed(view: VideoView) -> None:
    view.show_frame(solid_frame(20, 40, BLUE))
    assert close_to(pixel(view, 100, 100), BLUE)
    assert close_to(pixel(view, 10, 100), background())
    assert close_to(pixel(view, 190, 100), background())


def test_the_latest_frame_replaces_the_previous(view: VideoView) -> None:
    view.show_frame(solid_frame(16, 16, RED))
    view.show_frame(solid_frame(16, 16, BLUE))
    assert view.frames_shown == 2
    assert close_to(pixel(view, 100, 100), BLUE)


def test_the_placeholder_replaces_the_picture(view: VideoView) -> None:
    view.show_frame(solid_frame(16, 16, RED))
    view.clear("Camera off")
    assert not view.has_frame()
    assert view.placeholder == "Camera off"
    assert view.accessibleDescription() == "Camera off"
    image: QImage = view.grab().toImage()
    colours = {
        (c.red(), c.green(), c.blue())
        for c in (image.pixelColor(x, y) for x in range(0, 200, 2) for y in range(80, 120))
    }
    assert rgb(theme.VIDEO_BACKGROUND) in colours
    assert rgb(theme.VIDEO_PLACEHOLDER_TEXT) in colours  # the text's strokes
    assert not any(close_to(c, RED) for c in colours)

    view.show_frame(solid_frame(16, 16, RED))  # video back: the text goes
    assert view.placeholder == ""
    assert view.accessibleDescription() == ""


def test_an_empty_view_is_just_dark(view: VideoView) -> None:
    view.clear()
    image: QImage = view.grab().toImage()
    assert {image.pixelColor(x, y).name() for x in range(0, 200, 7) for y in range(0, 200, 7)} == {
        QColor(theme.VIDEO_BACKGROUND).name()
    }


def test_bad_frames_are_refused(view: VideoView) -> None:
    with pytest.raises(ValueError, match="shorter"):
        view.show_frame(DisplayFrame(width=4, height=4, bytes_per_line=12, data=b"\x00" * 40))
    with pytest.raises(ValueError, match="empty"):
        view.show_frame(DisplayFrame(width=0, height=4, bytes_per_line=0, data=b""))
    assert view.frames_shown == 0


def test_fit_rect() -> None:
    assert fit_rect(640, 480, 800, 300).getRect() == (200.0, 0.0, 400.0, 300.0)
    assert fit_rect(1280, 720, 640, 720).getRect() == (0.0, 180.0, 640.0, 360.0)


def test_the_widgets_load_neither_aiortc_nor_pyav() -> None:
    """The device's resident agent may show them without loading the media stack."""
    script = """
import sys
import peer.typing, peer.ui, peer.ui.theme, peer.ui.chat, peer.ui.video
loaded = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"aiortc", "av", "numpy", "device_agent", "tech_console",
                              "signaling_server"}
    or name == "peer.media"
)
print(",".join(loaded) or "ok")
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
