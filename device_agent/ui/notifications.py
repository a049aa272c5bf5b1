"""Notification pop-ups and the inbox: thin views of the ``AgentModel``'s inbox.

Each card shows the technician's notification as plain text, with an answer field,
"Reply" and "Mark as read". A pop-up (an in-app toast at the top right of the screen)
appears for each new notification; where the platform has a tray, the tray also
raises a system notification. The inbox lists the unread ones.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from device_agent.agent_model import MAX_ANSWER_CHARS, AgentModel, InboxItem
from device_agent.ui.prompt import plain_label
from peer.signaling import RequestError
from peer.ui.text import display_name
from peer.ui.theme import TOUCH_TARGET_PX

_CARD_STYLE = (
    "#notificationCard{background:#ffffff;border:1px solid #90a4ae;border-radius:10px;}"
    "QLabel{color:#1b1b1b;}"
    "#noteMeta{color:#455a64;}"
    "#noteTitle{font-size:16px;font-weight:bold;}"
    "#noteError{color:#b00020;}"
    "QPushButton{border-radius:8px;padding:6px 12px;background:#1565c0;color:#ffffff;"
    "border:3px solid transparent;}"
    "QPushButton#markRead{background:#eceff1;color:#1b1b1b;border:3px solid #78909c;}"
    "QPushButton:focus{border:3px solid #0d47a1;}"
    "QLineEdit{border:1px solid #78909c;border-radius:6px;padding:6px;color:#1b1b1b;"
    "background:#ffffff;}"
)


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%H:%M")


class NotificationCard(QFrame):
    """One notification with its two answers. Emits ``done`` once answered or read."""

    done = Signal(str)

    def __init__(self, model: AgentModel, item: InboxItem, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.item = item
        self.setObjectName("notificationCard")
        self.setStyleSheet(_CARD_STYLE)
        self.setAccessibleName(
            f"Notification from {display_name(item.sender)}: {display_name(item.title)}"
        )
        self.title = plain_label(item.title, self, name="noteTitle")
        self.meta = plain_label(f"From {item.sender} at {_when(item.sent_at_ms)}", self)
        self.meta.setObjectName("noteMeta")
        self.body = plain_label(item.body, self, name="noteBody")
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.answer = QLineEdit(self)
        self.answer.setObjectName("answer")
        self.answer.setPlaceholderText("Write an answer")
        self.answer.setAccessibleName("Your answer")
        self.answer.setMaxLength(MAX_ANSWER_CHARS)
        self.answer.setMinimumHeight(TOUCH_TARGET_PX)
        self.answer.returnPressed.connect(self._reply)
        self.reply_button = QPushButton("Reply", self)
        self.reply_button.setObjectName("reply")
        self.reply_button.setAccessibleName("Send the answer")
        self.reply_button.setMinimumHeight(TOUCH_TARGET_PX)
        self.reply_button.clicked.connect(self._reply)
        self.read_button = QPushButton("Mark as read", self)
        self.read_button.setObjectName("markRead")
        self.read_button.setAccessibleName("Mark as read")
        self.read_button.setMinimumHeight(TOUCH_TARGET_PX)
        self.read_button.clicked.connect(self._mark_read)
        self.error = plain_label("", self, name="noteError")
        self.error.hide()

        answer_row = QHBoxLayout()
        answer_row.addWidget(self.answer, 1)
        answer_row.addWidget(self.reply_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.addWidget(self.title)
        layout.addWidget(self.meta)
        layout.addWidget(self.body)
        layout.addLayout(answer_row)
        layout.addWidget(self.read_button, 0, Qt.AlignmentFlag.AlignRight)
        layout.addWidget(self.error)
        self._task: asyncio.Task[None] | None = None

    def _reply(self) -> None:
        self._act(lambda: self.model.reply(self.item.notification_id, self.answer.text()))

    def _mark_read(self) -> None:
        self._act(lambda: self.model.mark_read(self.item.notification_id))

    def _act(self, action: Callable[[], Awaitable[None]]) -> None:
        if self._task is not None and not self._task.done():
            return

        async def run() -> None:
            self._busy(True)
            try:
                await action()
            except ValueError as exc:
                self._show_error(str(exc))
            except RequestError as exc:
                self._show_error(f"Could not send: {exc.message}")
            except ConnectionError:
                self._show_error("Offline: try again when the device is back online.")
            else:
                self.done.emit(self.item.notification_id)
            finally:
                self._busy(False)

        self._task = asyncio.ensure_future(run())

    def _busy(self, busy: bool) -> None:
        for widget in (self.answer, self.reply_button, self.read_button):
            widget.setEnabled(not busy)

    def _show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.setAccessibleName(text)
        self.error.show()


class NotificationPopup(QWidget):
    """The toast for one new notification, at the top right of the screen."""

    def __init__(self, model: AgentModel, item: InboxItem) -> None:
        super().__init__(None)
        self.setObjectName("notificationPopup")
        self.setWindowTitle(f"Notification: {display_name(item.title)}")
        self.setWindowFlags(
            Qt.WindowType.Tool
            | Qt.WindowType.WindowStaysOnTopHint
            | Qt.WindowType.FramelessWindowHint
        )
        self.setStyleSheet("#notificationPopup{background:#eceff1;}")
        self.card = NotificationCard(model, item, self)
        self.card.done.connect(lambda _id: self.close())
        dismiss = QPushButton("Later", self)
        dismiss.setObjectName("later")
        dismiss.setAccessibleName("Keep it in the inbox for later")
        dismiss.setMinimumHeight(TOUCH_TARGET_PX)
        dismiss.setStyleSheet(
            "QPushButton{border-radius:8px;padding:6px 12px;background:#ffffff;color:#1b1b1b;"
            "border:3px solid #78909c;}QPushButton:focus{border:3px solid #0d47a1;}"
        )
        dismiss.clicked.connect(self.close)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.addWidget(self.card)
        layout.addWidget(dismiss, 0, Qt.AlignmentFlag.AlignRight)
        self.setFixedWidth(380)

    def place(self) -> None:
        screen = QGuiApplication.primaryScreen()
        self.adjustSize()
        if screen is not None:
            area = screen.availableGeometry()
            self.move(area.right() - self.width() - 16, area.top() + 16)


class InboxWindow(QWidget):
    """The unread notifications, oldest first, each answerable in place."""

    def __init__(self, model: AgentModel) -> None:
        super().__init__(None)
        self.model = model
        self.setObjectName("inbox")
        self.setWindowTitle("Live Support notifications")
        self.setAccessibleName(self.windowTitle())
        self.resize(420, 560)
        self.empty = plain_label("No unread notifications.", self, name="emptyInbox")
        self.list_host = QWidget(self)
        self.list_layout = QVBoxLayout(self.list_host)
        self.list_layout.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.list_host)
        layout = QVBoxLayout(self)
        layout.addWidget(self.empty)
        layout.addWidget(scroll, 1)
        self.cards: dict[str, NotificationCard] = {}
        self._unsubscribe = model.inbox_changed.add(lambda _none: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        items = {item.notification_id: item for item in self.model.inbox()}
        for nid in [n for n in self.cards if n not in items]:
            self.cards.pop(nid).deleteLater()
        for nid, item in items.items():
            if nid not in self.cards:
                card = NotificationCard(self.model, item, self.list_host)
                self.list_layout.insertWidget(self.list_layout.count() - 1, card)
                self.cards[nid] = card
        self.empty.setVisible(not items)

    def close_for_good(self) -> None:
        self._unsubscribe()
        self.close()
