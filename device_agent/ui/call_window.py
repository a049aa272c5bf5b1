"""The device's call window (in the per-session process): a thin view of
:class:`~device_agent.call_model.CallWindowModel`.

The technician's video fills the window, the user's own video is inset top-right,
the controls sit in a bar at the bottom, and the chat opens beside the video on a
wide window or below it on a tall one (a tablet in portrait). Every button is at
least ``TOUCH_TARGET_PX`` tall, reachable with Tab, named for screen readers and has
a keyboard shortcut. Text from the technician is only ever shown as plain text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QResizeEvent, QShortcut
from PySide6.QtWidgets import (
    QBoxLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from device_agent.call_model import CallControl, CallWindowModel
from device_agent.call_process import CallSession
from peer.chat import ChatLog
from peer.media import DisplayFrame
from peer.ui.chat import ChatPanel
from peer.ui.theme import TOUCH_TARGET_PX
from peer.ui.video import VideoView
from protocol.enums import Mode

log = logging.getLogger(__name__)

#: Wider than this (in pixels), the chat sits beside the video; narrower, below it.
SIDE_BY_SIDE_MIN_WIDTH = 900

SHORTCUTS: dict[CallControl, str] = {
    CallControl.TEXT: "Ctrl+T",
    CallControl.AUDIO_OUTPUT: "Ctrl+Shift+O",
    CallControl.MUTE: "Ctrl+D",
    CallControl.CAMERA: "Ctrl+E",
    CallControl.SWITCH_CAMERA: "Ctrl+Shift+C",
    CallControl.HANG_UP: "Ctrl+Shift+H",
    CallControl.CALL_AGAIN: "Ctrl+Shift+R",
}

_BANNER_STYLE = {
    # Dark text on amber and white on dark blue-gray: both well above 4.5:1.
    True: "background:#ffd166;color:#1b1b1b;",
    False: "background:#263238;color:#ffffff;",
}


class CallWindow(QWidget):
    def __init__(self, model: CallWindowModel, *, screenshots: Path | None = None) -> None:
        super().__init__()
        self.model = model
        self.screenshots = screenshots
        self._saved = False
        self._for_good = False
        self.setObjectName("callWindow")
        self.setWindowTitle(model.title)
        self.setAccessibleName(model.title)
        self.setMinimumSize(360, 480)

        # The stage: the technician's video, the inset, the banner and the timer.
        self.stage = QWidget(self)
        self.stage.setObjectName("stage")
        self.stage.setStyleSheet("#stage{background:#101418;}")
        self.remote_view = VideoView(f"Video of {model.technician}", self.stage)
        self.local_view = VideoView("Your camera", self.stage)
        self.banner = QLabel(self.stage)
        self.banner.setTextFormat(Qt.TextFormat.PlainText)
        self.banner.setWordWrap(True)
        self.banner.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.banner.setAccessibleName("Call status")
        self.timer_label = QLabel(self.stage)
        self.timer_label.setTextFormat(Qt.TextFormat.PlainText)
        self.timer_label.setAccessibleName("Call time")
        self.timer_label.setStyleSheet(
            "background:rgba(0,0,0,160);color:#ffffff;padding:4px 8px;border-radius:4px;"
        )
        self.name_label = QLabel(model.title.removeprefix("Live Support: "), self.stage)
        self.name_label.setTextFormat(Qt.TextFormat.PlainText)
        self.name_label.setStyleSheet(self.timer_label.styleSheet())
        self.stage.installEventFilter(self)

        self.chat_panel = ChatPanel(parent=self)
        self.chat_panel.set_peer_name(model.technician)
        self.chat_panel.send_requested.connect(model.send_chat)
        self.chat_panel.typing_changed.connect(model.set_typing)
        self.chat_panel.seen.connect(model.seen)

        self.error_label = QLabel(self)
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)
        self.error_label.setStyleSheet("color:#b00020;")
        self.error_label.setAccessibleName("Error")

        # The control bar.
        self.bar = QWidget(self)
        self.bar.setObjectName("controls")
        self.bar.setStyleSheet(
            "#controls{background:#1e262c;}"
            "#controls QPushButton{background:#37474f;color:#ffffff;border-radius:8px;"
            "padding:6px 10px;font-size:14px;border:3px solid transparent;}"
            "#controls QPushButton:checked{background:#eceff1;color:#1b1b1b;}"
            "#controls QPushButton:focus{border:3px solid #4fc3f7;}"
            "#controls QPushButton#hang_up{background:#c62828;}"
            "#controls QPushButton#call_again{background:#2e7d32;}"
        )
        bar_layout = QHBoxLayout(self.bar)
        bar_layout.setContentsMargins(8, 8, 8, 8)
        bar_layout.setSpacing(8)
        self.buttons: dict[CallControl, QPushButton] = {}
        for control in CallControl:
            button = QPushButton(self.bar)
            button.setObjectName(control.value)
            button.setMinimumSize(TOUCH_TARGET_PX, TOUCH_TARGET_PX)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            button.setCheckable(control in (CallControl.TEXT, CallControl.MUTE, CallControl.CAMERA))
            if control is CallControl.AUDIO_OUTPUT:
                button.clicked.connect(self._show_output_menu)
            else:
                button.clicked.connect(lambda _c=False, c=control: self.model.press(c))
            shortcut = QShortcut(QKeySequence(SHORTCUTS[control]), self)
            shortcut.activated.connect(lambda c=control: self._shortcut(c))
            bar_layout.addWidget(button)
            self.buttons[control] = button
        self.output_menu = QMenu(self)
        self.output_menu.setAccessibleName("Audio outputs")

        # Stage and chat side by side or stacked; the bar always at the bottom.
        self.content = QBoxLayout(QBoxLayout.Direction.LeftToRight)
        self.content.setContentsMargins(0, 0, 0, 0)
        self.content.setSpacing(0)
        self.content.addWidget(self.stage, 3)
        self.content.addWidget(self.chat_panel, 2)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addLayout(self.content, 1)
        outer.addWidget(self.error_label)
        outer.addWidget(self.bar)

        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)
        self._clock.start()

        self._chat_unsubscribe: Callable[[], None] = lambda: None
        self._unsubscribe = [
            model.changed.add(lambda _none: self.refresh()),
            model.show_requests.add(lambda _none: self.bring_to_front()),
            model.remote_frames.add(self._on_remote_frame),
            model.local_frames.add(self._on_local_frame),
            model.chat_logs.add(self._on_chat_log),
        ]
        self._on_chat_log(model.chat)
        self.refresh()

    # -- model -> view ----------------------------------------------------------------

    def refresh(self) -> None:
        model = self.model
        for view in model.controls():
            button = self.buttons[view.control]
            button.setText(view.label)
            button.setAccessibleName(view.label)
            button.setAccessibleDescription(view.description)
            button.setToolTip(f"{view.description} ({SHORTCUTS[view.control]})")
            button.setVisible(view.visible)
            button.setEnabled(view.enabled)
            if button.isCheckable():
                button.setChecked(view.active)
        banner = model.banner()
        self.banner.setVisible(banner is not None)
        if banner is not None:
            self.banner.setText(banner.text)
            self.banner.setStyleSheet(_BANNER_STYLE[banner.warning] + "padding:8px;")
        self.error_label.setVisible(model.error is not None)
        self.error_label.setText(model.error or "")
        self.stage.setVisible(model.mode is not Mode.TEXT)
        self.chat_panel.setVisible(model.chat_open)
        if model.call is None or not model.has_video or self.remote_view.frames_shown == 0:
            self.remote_view.clear(model.remote_placeholder())
        if not model.local_camera_on():
            self.local_view.clear("Camera off")
        self.local_view.setVisible(model.has_video)
        self._tick()
        self._place_overlays()

    def _tick(self) -> None:
        self.timer_label.setText(self.model.timer_text())
        self.timer_label.setVisible(bool(self.timer_label.text()))
        self.timer_label.adjustSize()

    def _on_remote_frame(self, frame: DisplayFrame) -> None:
        if self.model.call is not None:
            self.remote_view.show_frame(frame)
            self._maybe_screenshot()

    def _on_local_frame(self, frame: DisplayFrame) -> None:
        if self.model.local_camera_on():
            self.local_view.show_frame(frame)

    def _on_chat_log(self, log_: ChatLog | None) -> None:
        # One subscription at a time: the previous call's log is done with.
        self._chat_unsubscribe()
        self.chat_panel.set_log(log_)
        if log_ is not None:
            self._chat_unsubscribe = log_.listeners.add(lambda _entry: self._on_chat_entry())

    def _on_chat_entry(self) -> None:
        if self.screenshots is not None and not self.model.chat_open:
            # Demo only: the scripted user opens the chat when the first message
            # comes, so the saved picture shows it.
            self.model.set_chat_open(True)
        self.refresh()

    # -- view -> model ----------------------------------------------------------------

    def _shortcut(self, control: CallControl) -> None:
        button = self.buttons[control]
        if button.isVisible() and button.isEnabled():
            button.click()

    def _show_output_menu(self) -> None:
        self.output_menu.clear()
        for choice in self.model.audio_outputs():
            action = QAction(choice.name, self.output_menu)
            action.setCheckable(True)
            action.setChecked(choice.current)
            action.triggered.connect(
                lambda _c=False, d=choice.device_id: self.model.choose_output(d)
            )
            self.output_menu.addAction(action)
        button = self.buttons[CallControl.AUDIO_OUTPUT]
        self.output_menu.popup(button.mapToGlobal(button.rect().topLeft()))

    def bring_to_front(self) -> None:
        self.show()
        self.setWindowState(
            (self.windowState() & ~Qt.WindowState.WindowMinimized) | Qt.WindowState.WindowActive
        )
        self.raise_()
        self.activateWindow()

    def showEvent(self, event: object) -> None:
        self.model.set_window_visible(True)

    def closeEvent(self, event: QCloseEvent) -> None:
        # Closing the window hides it; the call goes on, and "Live Support" in the
        # agent brings it back. Only the end of the session closes it for good.
        if not self._for_good:
            event.ignore()
            self.hide()
            self.model.set_window_visible(False)
            return
        event.accept()

    def close_for_good(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._chat_unsubscribe()
        self.model.close()
        self.chat_panel.set_log(None)
        self._for_good = True
        self.close()

    # -- layout -----------------------------------------------------------------------

    def resizeEvent(self, event: QResizeEvent) -> None:
        wide = event.size().width() >= SIDE_BY_SIDE_MIN_WIDTH
        self.content.setDirection(
            QBoxLayout.Direction.LeftToRight if wide else QBoxLayout.Direction.TopToBottom
        )
        super().resizeEvent(event)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.stage and event.type() == QEvent.Type.Resize:
            self._place_overlays()
        return False

    def _place_overlays(self) -> None:
        """The technician's video fills the stage; the inset sits top-right at a
        quarter of the width; banner across the top, name and timer top-left."""
        width, height = self.stage.width(), self.stage.height()
        self.remote_view.setGeometry(0, 0, width, height)
        margin = 12
        inset_w = max(96, width // 4)
        inset_h = inset_w * 3 // 4
        self.local_view.setGeometry(width - inset_w - margin, margin, inset_w, inset_h)
        self.name_label.adjustSize()
        self.name_label.move(margin, margin)
        self.timer_label.move(margin, margin + self.name_label.height() + 6)
        banner_w = max(200, width - inset_w - 3 * margin - 140)
        self.banner.setFixedWidth(min(banner_w, width - 2 * margin))
        self.banner.adjustSize()
        self.banner.move((width - self.banner.width()) // 2, height - self.banner.height() - margin)
        self.local_view.raise_()
        self.banner.raise_()

    # -- demo pictures ------------------------------------------------------------------

    def _maybe_screenshot(self) -> None:
        """Demo only: once video both ways and a few chat messages are on screen,
        save the window as a desktop and as a tablet in portrait."""
        folder = self.screenshots
        chat = self.model.chat
        if folder is None or self._saved or chat is None or len(chat) < 2:
            return
        if self.remote_view.frames_shown < 10 or self.local_view.frames_shown < 3:
            return
        self._saved = True
        folder.mkdir(parents=True, exist_ok=True)
        size = self.size()
        for name, (w, h) in (("call-window", (1024, 640)), ("call-window-tablet", (600, 960))):
            self.resize(w, h)
            layout = self.layout()
            if layout is not None:
                layout.activate()
            self._place_overlays()
            self.grab().save(str(folder / f"{name}.png"))
        self.resize(size)
        log.info("call window pictures saved")


def open_call_window(session: CallSession, *, screenshots: Path | None = None) -> CallWindow:
    """Show the call window for a session that the user just accepted."""
    window = CallWindow(CallWindowModel(session), screenshots=screenshots)
    window.resize(1024, 640)
    if session.begin.show_window:
        window.bring_to_front()
    return window
