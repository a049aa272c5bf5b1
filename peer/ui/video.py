"""A widget that shows the latest video frame of a call, or a text in its place.

Frames arrive already converted to RGB24 and fitted to the view's size
(``peer.media.to_display_frame`` runs off the GUI thread), so ``paintEvent`` only
scales what it is given into place: a paint must never stall the event loop that
also runs the call.

``peer.media`` is not imported, not even for type checking: it loads PyAV and aiortc,
which the device's resident agent must not map (pyproject.toml's import contracts).
:class:`Frame` states what is needed, and ``DisplayFrame`` has it.
"""

from __future__ import annotations

from typing import Protocol

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from peer.ui import theme


class Frame(Protocol):
    """A packed RGB24 picture (``peer.media.DisplayFrame`` is one)."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def bytes_per_line(self) -> int: ...
    @property
    def data(self) -> bytes: ...


def fit_rect(width: int, height: int, box_width: int, box_height: int) -> QRectF:
    """The largest ``width`` x ``height`` rectangle with the same aspect that fits,
    centred, in the box: the rest of the box is letterbox."""
    scale = min(box_width / width, box_height / height)
    fitted_w, fitted_h = width * scale, height * scale
    return QRectF((box_width - fitted_w) / 2, (box_height - fitted_h) / 2, fitted_w, fitted_h)


class VideoView(QWidget):
    """Shows frames given to :meth:`show_frame`, or the text given to :meth:`clear`."""

    def __init__(self, accessible_name: str = "Video", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # Kept with the QImage: the image only points into its bytes.
        self._frame: Frame | None = None
        self._image: QImage | None = None
        self._placeholder = ""
        self._frames_shown = 0
        self._background = QColor(theme.VIDEO_BACKGROUND)
        self._placeholder_colour = QColor(theme.VIDEO_PLACEHOLDER_TEXT)
        # Every pixel is painted each time: Qt need not clear the widget first.
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAccessibleName(accessible_name)

    @property
    def frames_shown(self) -> int:
        """How many frames :meth:`show_frame` was given (each replaced the last)."""
        return self._frames_shown

    @property
    def placeholder(self) -> str:
        return self._placeholder

    def has_frame(self) -> bool:
        return self._image is not None

    def show_frame(self, frame: Frame) -> None:
        """Show ``frame`` from the next paint on, in place of the previous one."""
        if frame.width <= 0 or frame.height <= 0:
            raise ValueError(f"empty frame: {frame.width}x{frame.height}")
        if len(frame.data) < frame.bytes_per_line * (frame.height - 1) + 3 * frame.width:
            # QImage would read past the end of the bytes.
            raise ValueError("frame data shorter than its size says")
        self._image = QImage(
            frame.data, frame.width, frame.height, frame.bytes_per_line, QImage.Format.Format_RGB888
        )
        self._frame = frame
        self._frames_shown += 1
        if self._placeholder:
            self._placeholder = ""
            self.setAccessibleDescription("")
        self.update()

    def clear(self, placeholder: str = "") -> None:
        """Drop the frame and show ``placeholder`` (e.g. "Camera off") instead."""
        self._image = None
        self._frame = None
        self._placeholder = placeholder
        # A screen reader cannot see the picture, but can say why there is none.
        self.setAccessibleDescription(placeholder)
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(640, 360)

    def minimumSizeHint(self) -> QSize:
        return QSize(160, 90)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), self._background)
            if self._image is not None:
                painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
                target = fit_rect(
                    self._image.width(), self._image.height(), self.width(), self.height()
                )
                painter.drawImage(target, self._image)
            elif self._placeholder:
                font = QFont(self.font())
                font.setPointSizeF(font.pointSizeF() * 1.4)
                painter.setFont(font)
                painter.setPen(self._placeholder_colour)
                # drawText with a plain string never interprets markup.
                painter.drawText(
                    self.rect().adjusted(12, 12, -12, -12),
                    Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                    self._placeholder,
                )
        finally:
            painter.end()
