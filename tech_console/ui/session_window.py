"""One session in the console: the device's video large with the technician's own
inset, the call's quality, the technician's controls, the chat with saved replies,
and the closing summary. A thin view of :class:`~tech_console.console_model.SessionModel`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QResizeEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from peer.chat import ChatLog
from peer.media import DisplayFrame
from peer.signaling import RequestError
from peer.ui.chat import ChatPanel
from peer.ui.text import PlainLabel, display_name
from peer.ui.theme import TOUCH_TARGET_PX
from peer.ui.video import VideoView
from protocol.enums import Mode
from tech_console.console_model import (
    SUMMARY_FIELD_MAX,
    SUMMARY_FIELDS,
    Quality,
    SessionControl,
    SessionModel,
    summary_problems,
)

log = logging.getLogger(__name__)

#: How often the quality figures are refreshed.
STATS_INTERVAL_MS = 2000

QUALITY_STYLE = {
    Quality.UNKNOWN: ("Quality: measuring…", "#455a64"),
    Quality.GOOD: ("Quality: good", "#2e7d32"),
    Quality.FAIR: ("Quality: fair", "#8a5300"),
    Quality.POOR: ("Quality: poor", "#b71c1c"),
}


def plain(text: str = "", parent: QWidget | None = None) -> QLabel:
    """A label that never interprets markup and shows device and technician text
    display-safe (peer.ui.text: bidi controls escaped, capped), also when set later."""
    return PlainLabel(text, parent)


class VideoStage(QWidget):
    """The device's video filling the area, the technician's own picture inset at the
    top right (a quarter of the width)."""

    def __init__(self, remote_name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stage")
        self.setStyleSheet("#stage{background:#101418;}")
        self.remote_view = VideoView(f"Video of {remote_name}", self)
        self.local_view = VideoView("Your camera", self)
        self.setMinimumSize(320, 200)

    def resizeEvent(self, event: QResizeEvent) -> None:
        width, height = event.size().width(), event.size().height()
        self.remote_view.setGeometry(0, 0, width, height)
        margin = 12
        inset_w = max(96, width // 4)
        self.local_view.setGeometry(width - inset_w - margin, margin, inset_w, inset_w * 3 // 4)
        self.local_view.raise_()
        super().resizeEvent(event)


class SessionPanel(QWidget):
    """The session's tab in the console's main window.

    Signals:
        unread_changed(int): the number of unread messages from the device user.
        close_requested(): the technician pressed Close session (the summary comes next).
    """

    unread_changed = Signal(int)
    close_requested = Signal()

    def __init__(self, model: SessionModel, saved_replies: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.setObjectName("sessionPanel")
        self.setAccessibleName(f"Session with {display_name(model.device_name)}")

        self.state_label = plain(parent=self)
        self.state_label.setObjectName("sessionState")
        self.state_label.setWordWrap(True)
        self.state_label.setAccessibleName("Session state")
        self.consent_label = plain(parent=self)
        self.consent_label.setObjectName("consent")
        self.consent_label.setWordWrap(True)
        self.consent_label.setAccessibleName("Consent")
        self.reason_label = plain(f"Reason: {model.session.reason}", self)
        self.reason_label.setWordWrap(True)
        self.timer_label = plain(parent=self)
        self.timer_label.setAccessibleName("Call time")

        self.stage = VideoStage(model.device_name, self)
        self.quality_badge = plain(parent=self)
        self.quality_badge.setObjectName("quality")
        self.quality_badge.setAccessibleName("Call quality")
        self.stats_label = plain(parent=self)
        self.stats_label.setObjectName("stats")
        self.stats_label.setAccessibleName("Call statistics")

        self.chat_panel = ChatPanel(parent=self, peer_name=model.device_name)
        self.chat_panel.send_requested.connect(model.send_chat)
        self.chat_panel.typing_changed.connect(model.set_typing)
        self.chat_panel.seen.connect(model.seen)
        self.saved_replies = QComboBox(self)
        self.saved_replies.setObjectName("savedReplies")
        self.saved_replies.setAccessibleName("Saved replies")
        self.saved_replies.addItem("Saved replies…")
        for reply in saved_replies:
            self.saved_replies.addItem(reply)
        self.saved_replies.activated.connect(self._use_saved_reply)

        self.error_label = plain(parent=self)
        self.error_label.setStyleSheet("color:#b00020;")
        self.error_label.setAccessibleName("Error")

        self.buttons: dict[SessionControl, QPushButton] = {}
        bar = QHBoxLayout()
        bar.setSpacing(8)
        for control in SessionControl:
            button = QPushButton(self)
            button.setObjectName(control.value)
            button.setMinimumHeight(TOUCH_TARGET_PX)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            button.setCheckable(control in (SessionControl.MUTE, SessionControl.CAMERA))
            if control is SessionControl.AUDIO_OUTPUT:
                button.clicked.connect(self._show_output_menu)
            elif control is SessionControl.CLOSE_SESSION:
                button.clicked.connect(self.close_requested.emit)
            else:
                button.clicked.connect(lambda _c=False, c=control: self.model.press(c))
            bar.addWidget(button)
            self.buttons[control] = button
        self.buttons[SessionControl.HANG_UP].setStyleSheet("background:#c62828;color:#ffffff;")
        self.output_menu = QMenu(self)

        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.stage, 1)
        figures = QHBoxLayout()
        figures.addWidget(self.quality_badge)
        figures.addWidget(self.stats_label, 1)
        left_layout.addLayout(figures)
        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.chat_panel, 1)
        right_layout.addWidget(self.saved_replies)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)

        header = QHBoxLayout()
        header.addWidget(self.state_label, 1)
        header.addWidget(self.timer_label)
        outer = QVBoxLayout(self)
        outer.addLayout(header)
        outer.addWidget(self.reason_label)
        outer.addWidget(self.consent_label)
        outer.addWidget(self.splitter, 1)
        outer.addWidget(self.error_label)
        outer.addLayout(bar)

        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self._refresh_stats)
        self._stats_timer.start()
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)
        self._clock.start()
        self._stats_task: asyncio.Task[object] | None = None

        self._chat_unsubscribe: Callable[[], None] = lambda: None
        self._unsubscribe = [
            model.changed.add(lambda _none: self.refresh()),
            model.remote_frames.add(self._on_remote_frame),
            model.local_frames.add(self._on_local_frame),
            model.chat_logs.add(self._on_chat_log),
        ]
        self._on_chat_log(model.chat)
        self.refresh()

    # -- model -> view ----------------------------------------------------------------

    def refresh(self) -> None:
        model = self.model
        self.state_label.setText(model.state_text())
        consent, warning = model.consent_text()
        self.consent_label.setText(consent)
        self.consent_label.setVisible(bool(consent))
        self.consent_label.setStyleSheet("color:#b00020;font-weight:bold;" if warning else "")
        for view in model.controls():
            button = self.buttons[view.control]
            button.setText(view.label)
            button.setAccessibleName(view.label)
            button.setAccessibleDescription(view.description)
            button.setToolTip(view.description)
            button.setVisible(view.visible)
            button.setEnabled(view.enabled)
            if button.isCheckable():
                button.setChecked(view.active)
        self.stage.setVisible(model.mode is Mode.VIDEO)
        has_media = model.mode is not Mode.TEXT
        self.quality_badge.setVisible(has_media)
        self.stats_label.setVisible(has_media)
        quality = model.quality
        text, colour = QUALITY_STYLE[quality.quality if quality else Quality.UNKNOWN]
        self.quality_badge.setText(text)
        self.quality_badge.setStyleSheet(
            f"background:{colour};color:#ffffff;padding:4px 8px;border-radius:4px;"
        )
        self.stats_label.setText("   ".join(quality.lines()) if quality else "")
        if model.call is None or self.stage.remote_view.frames_shown == 0:
            self.stage.remote_view.clear(model.remote_placeholder())
        media = model.session.media
        if media is None or not media.camera_on:
            self.stage.local_view.clear("Your camera is off")
        self.chat_panel.setEnabled(model.call is not None)
        self.saved_replies.setEnabled(model.call is not None)
        self.error_label.setVisible(model.error is not None)
        self.error_label.setText(model.error or "")
        self._tick()
        self.unread_changed.emit(model.unread())

    def _tick(self) -> None:
        elapsed = self.model.elapsed_s()
        if elapsed is None:
            self.timer_label.setText("")
            return
        minutes, seconds = divmod(int(elapsed), 60)
        self.timer_label.setText(f"{minutes}:{seconds:02}")

    def _on_remote_frame(self, frame: DisplayFrame) -> None:
        if self.model.call is not None:
            self.stage.remote_view.show_frame(frame)

    def _on_local_frame(self, frame: DisplayFrame) -> None:
        media = self.model.session.media
        if media is not None and media.camera_on:
            self.stage.local_view.show_frame(frame)

    def _on_chat_log(self, log_: ChatLog | None) -> None:
        self._chat_unsubscribe()
        self.chat_panel.set_log(log_)
        if log_ is not None:
            self._chat_unsubscribe = log_.listeners.add(lambda _entry: self.refresh())

    def _refresh_stats(self) -> None:
        if self.model.call is None or self.model.mode is Mode.TEXT:
            return
        if self._stats_task is None or self._stats_task.done():
            self._stats_task = asyncio.ensure_future(self.model.refresh_quality())

    # -- view -> model ----------------------------------------------------------------

    def _use_saved_reply(self, index: int) -> None:
        if index > 0:
            self.chat_panel.input.setText(self.saved_replies.itemText(index))
            self.chat_panel.input.setFocus()
        self.saved_replies.setCurrentIndex(0)

    def _show_output_menu(self) -> None:
        self.output_menu.clear()
        for device_id, name, current in self.model.audio_outputs():
            action = QAction(name, self.output_menu)
            action.setCheckable(True)
            action.setChecked(current)
            action.triggered.connect(lambda _c=False, d=device_id: self.model.choose_output(d))
            self.output_menu.addAction(action)
        button = self.buttons[SessionControl.AUDIO_OUTPUT]
        self.output_menu.popup(button.mapToGlobal(button.rect().topLeft()))

    def dispose(self) -> None:
        """The tab is closed for good: stop following the session."""
        self._stats_timer.stop()
        self._clock.stop()
        if self._stats_task is not None:
            self._stats_task.cancel()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._chat_unsubscribe()
        self.chat_panel.set_log(None)
        self.model.close()


class SummaryDialog(QDialog):
    """Closing a session: the structured summary, then the session closes and the
    summary is stored with its audit record. Nothing closes while a required field
    is empty; Cancel leaves the session open.

    Opened with ``open()`` (never ``exec()``: a nested event loop would stall the
    asyncio loop the console runs on)."""

    finished_ok = Signal()

    def __init__(self, model: SessionModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.setWindowTitle(f"Close the session with {display_name(model.device_name)}")
        self.setObjectName("summaryDialog")
        self.setModal(True)
        form = QFormLayout()
        self.inputs: dict[str, QLineEdit | QPlainTextEdit] = {}
        self.problem_labels: dict[str, QLabel] = {}
        for spec in SUMMARY_FIELDS:
            widget: QLineEdit | QPlainTextEdit
            if spec.name in ("summary", "evidence", "expected_vs_actual"):
                widget = QPlainTextEdit(self)
                widget.setTabChangesFocus(True)
                widget.setFixedHeight(72)
            else:
                widget = QLineEdit(self)
                widget.setMaxLength(SUMMARY_FIELD_MAX)
            widget.setObjectName(spec.name)
            widget.setPlaceholderText(spec.hint)
            widget.setAccessibleName(spec.label)
            label = f"{spec.label}{' *' if spec.required else ''}"
            problem = plain(parent=self)
            problem.setStyleSheet("color:#b00020;")
            problem.hide()
            column = QVBoxLayout()
            column.addWidget(widget)
            column.addWidget(problem)
            form.addRow(label, column)
            self.inputs[spec.name] = widget
            self.problem_labels[spec.name] = problem
        self.status = plain(parent=self)
        self.status.setObjectName("summaryStatus")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        # A session the server already ended only needs its summary saved.
        ok.setText("Close session and save summary" if model.open else "Save summary")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(plain("* required. Chat is never stored; do not paste it here.", self))
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self._task: asyncio.Task[None] | None = None

    def values(self) -> dict[str, str]:
        return {
            name: (w.toPlainText() if isinstance(w, QPlainTextEdit) else w.text())
            for name, w in self.inputs.items()
        }

    def set_values(self, values: dict[str, str]) -> None:
        for name, text in values.items():
            widget = self.inputs[name]
            if isinstance(widget, QPlainTextEdit):
                widget.setPlainText(text)
            else:
                widget.setText(text)

    def submit(self) -> None:
        values = self.values()
        problems = summary_problems(values)
        for name, label in self.problem_labels.items():
            label.setText(problems.get(name, ""))
            label.setVisible(name in problems)
        if problems:
            self.status.setText("Fill in the required fields.")
            first = next(iter(problems))
            self.inputs[first].setFocus()
            return
        if self._task is not None and not self._task.done():
            return
        self.status.setText("Closing the session and saving the summary…")
        self.buttons.setEnabled(False)
        self._task = asyncio.ensure_future(self._close(values))

    async def _close(self, values: dict[str, str]) -> None:
        try:
            await self.model.close_with_summary(values)
        except (RequestError, ValueError, TimeoutError) as exc:
            self.status.setText(f"Not saved: {exc}")
            self.buttons.setEnabled(True)
            return
        self.finished_ok.emit()
        self.accept()
