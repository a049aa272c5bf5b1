"""The incoming-call prompt: a thin view of :class:`~device_agent.agent_model.IncomingCall`.

It shows who calls (name, photo, organisation), why, and in which mode; one button
per mode the user may accept as, and Decline; a countdown to the automatic decline.
It rings, stays on top and takes the focus. The technician's texts are plain text.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QCloseEvent, QColor, QFont, QPainter, QPixmap, QShowEvent
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from device_agent.agent_model import IncomingCall, PromptState
from device_agent.ui.ringer import Ringer
from peer.ui.text import PlainLabel, display_name
from peer.ui.theme import TOUCH_TARGET_PX

PHOTO_PX = 96


def plain_label(text: str, parent: QWidget, *, name: str = "") -> QLabel:
    """A wrapped label for text the technician typed: plain, display-safe (bidi
    controls escaped, capped; peer.ui.text), also when set later."""
    label = PlainLabel(text, parent)
    label.setWordWrap(True)
    if name:
        label.setObjectName(name)
        label.setAccessibleName(label.text())
    return label


def avatar(name: str, photo: bytes | None, size: int = PHOTO_PX) -> QPixmap:
    """The technician's photo, or their initials on a circle when there is none."""
    if photo is not None:
        pixmap = QPixmap()
        if pixmap.loadFromData(photo):
            return pixmap.scaled(
                size,
                size,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor("#1565c0"))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.drawEllipse(0, 0, size, size)
    initials = "".join(part[0] for part in name.split()[:2]).upper() or "?"
    font = QFont()
    font.setPixelSize(size // 3)
    font.setBold(True)
    painter.setFont(font)
    painter.setPen(QColor("#ffffff"))
    painter.drawText(pixmap.rect(), Qt.AlignmentFlag.AlignCenter, initials)
    painter.end()
    return pixmap


class IncomingCallDialog(QDialog):
    def __init__(self, call: IncomingCall, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.call = call
        self.setObjectName("incomingCall")
        self.setWindowTitle(f"Incoming Live Support call from {display_name(call.technician)}")
        self.setAccessibleName(self.windowTitle())
        # On top of everything and not closable by accident: only an answer, the
        # countdown or the technician ends it.
        self.setWindowFlags(
            Qt.WindowType.Dialog
            | Qt.WindowType.WindowStaysOnTopHint
            | Qt.WindowType.CustomizeWindowHint
            | Qt.WindowType.WindowTitleHint
        )
        self.setStyleSheet(
            "#incomingCall{background:#ffffff;}"
            "QLabel{color:#1b1b1b;}"
            "#headline{font-size:18px;font-weight:bold;}"
            "#organisation,#reasonTitle{color:#455a64;}"
            "QPushButton{border-radius:8px;padding:8px 14px;font-size:15px;"
            "border:3px solid transparent;background:#2e7d32;color:#ffffff;}"
            "QPushButton#reject{background:#c62828;}"
            "QPushButton:focus{border:3px solid #0d47a1;}"
        )
        self.ringer = Ringer(self)

        photo = QLabel(self)
        photo.setObjectName("photo")
        photo.setPixmap(avatar(call.technician, call.photo))
        photo.setAccessibleName(f"Photo of {call.technician}")
        photo.setFixedSize(PHOTO_PX, PHOTO_PX)

        who = QVBoxLayout()
        who.addWidget(plain_label(call.headline, self, name="headline"))
        if call.organisation:
            who.addWidget(plain_label(call.organisation, self, name="organisation"))
        top = QHBoxLayout()
        top.addWidget(photo, 0, Qt.AlignmentFlag.AlignTop)
        top.addLayout(who, 1)

        reason_title = plain_label("Reason", self, name="reasonTitle")
        reason = plain_label(call.reason, self, name="reason")
        reason.setAccessibleName(f"Reason: {call.reason}")

        self.countdown = plain_label(call.countdown_text(), self, name="countdown")
        self.progress = QProgressBar(self)
        self.progress.setObjectName("countdownBar")
        self.progress.setTextVisible(False)
        self.progress.setAccessibleName("Time left to answer")
        self.total_s = max(call.remaining_s(), 0.001)
        self.progress.setRange(0, 1000)

        buttons = QHBoxLayout()
        self.accept_buttons: dict[str, QPushButton] = {}
        for choice in call.choices:
            button = QPushButton(choice.label, self)
            button.setObjectName(f"accept_{choice.mode.value}")
            button.setAccessibleName(choice.label)
            button.setMinimumHeight(TOUCH_TARGET_PX)
            button.clicked.connect(lambda _c=False, m=choice.mode: self.call.accept(m))
            buttons.addWidget(button)
            self.accept_buttons[choice.mode.value] = button
        self.reject_button = QPushButton("Decline", self)
        self.reject_button.setObjectName("reject")
        self.reject_button.setAccessibleName("Decline the call")
        self.reject_button.setMinimumHeight(TOUCH_TARGET_PX)
        self.reject_button.clicked.connect(call.reject)
        buttons.addWidget(self.reject_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 20, 20, 20)
        layout.setSpacing(12)
        layout.addLayout(top)
        layout.addWidget(reason_title)
        layout.addWidget(reason)
        layout.addWidget(self.countdown)
        layout.addWidget(self.progress)
        layout.addLayout(buttons)

        self._timer = QTimer(self)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        self._unsubscribe = call.changed.add(lambda _state: self._finish())
        self._tick()

    def _tick(self) -> None:
        self.countdown.setText(self.call.countdown_text())
        self.countdown.setAccessibleName(self.countdown.text())
        self.progress.setValue(int(1000 * self.call.remaining_s() / self.total_s))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.ringer.start()
        self.raise_()
        self.activateWindow()
        first = next(iter(self.accept_buttons.values()), self.reject_button)
        first.setFocus()

    def _finish(self) -> None:
        self._timer.stop()
        self.ringer.stop()
        self._unsubscribe()
        self.accept()

    def reject(self) -> None:
        """Escape (QDialog's reject) declines the call, like the Decline button."""
        if self.call.state is PromptState.WAITING:
            self.call.reject()
        else:
            super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.call.state is PromptState.WAITING:
            event.ignore()  # an answer is needed; Escape or Decline says no
            return
        super().closeEvent(event)
