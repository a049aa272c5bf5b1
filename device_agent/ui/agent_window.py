"""The resident agent's face: a tray icon where the platform has a tray, and a small
window (always available, the only face where there is no tray). Both show the Live
Support status and whether the device is online, offer "Live Support" (back to the
call window while Connected) and the notification inbox.

``AgentUi`` wires the model to these views, the incoming-call prompt and the
notification pop-ups.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QMenu,
    QPushButton,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from device_agent.agent_model import AgentModel, InboxItem, IncomingCall, StatusView
from device_agent.ui.notifications import InboxWindow, NotificationPopup
from device_agent.ui.prompt import IncomingCallDialog, plain_label
from peer.ui.theme import STATUS_COLOURS, TOUCH_TARGET_PX

log = logging.getLogger(__name__)

#: Status colours, each with white text at 4.5:1 or better.


def status_icon(view: StatusView) -> QIcon:
    """A disc in the status colour, hollow while offline."""
    pixmap = QPixmap(64, 64)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    colour = QColor(STATUS_COLOURS[view.status])
    if view.online:
        painter.setBrush(colour)
        painter.setPen(Qt.PenStyle.NoPen)
    else:
        painter.setBrush(Qt.BrushStyle.NoBrush)
        pen = painter.pen()
        pen.setColor(colour)
        pen.setWidth(10)
        painter.setPen(pen)
    painter.drawEllipse(6, 6, 52, 52)
    painter.end()
    return QIcon(pixmap)


class AgentWindow(QWidget):
    def __init__(self, model: AgentModel, open_inbox: Callable[[], None]) -> None:
        super().__init__(None)
        self.model = model
        self.setObjectName("agentWindow")
        self.setWindowTitle("Live Support")
        self.setAccessibleName("Live Support agent")
        self.setStyleSheet(
            "#agentWindow{background:#ffffff;}QLabel{color:#1b1b1b;}"
            "#statusBadge{color:#ffffff;border-radius:6px;padding:6px 12px;font-size:16px;"
            "font-weight:bold;}"
            "QPushButton{border-radius:8px;padding:8px 14px;background:#1565c0;color:#ffffff;"
            "border:3px solid transparent;}"
            "QPushButton:disabled{background:#cfd8dc;color:#37474f;}"
            "QPushButton:focus{border:3px solid #0d47a1;}"
        )
        self.badge = plain_label("", self, name="statusBadge")
        self.online = plain_label("", self, name="online")
        self.explanation = plain_label("", self, name="explanation")
        self.open_call = QPushButton("Live Support", self)
        self.open_call.setObjectName("openCall")
        self.open_call.setMinimumHeight(TOUCH_TARGET_PX)
        self.open_call.clicked.connect(self._open_call)
        self.inbox_button = QPushButton("Notifications", self)
        self.inbox_button.setObjectName("inboxButton")
        self.inbox_button.setMinimumHeight(TOUCH_TARGET_PX)
        self.inbox_button.clicked.connect(open_inbox)
        top = QHBoxLayout()
        top.addWidget(self.badge)
        top.addWidget(self.online, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_call)
        buttons.addWidget(self.inbox_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.addLayout(top)
        layout.addWidget(self.explanation)
        layout.addLayout(buttons)
        self.resize(380, 180)
        self._task: asyncio.Task[bool] | None = None
        self.show_status(model.status_view())

    def show_status(self, view: StatusView) -> None:
        self.badge.setText(view.label)
        self.badge.setAccessibleName(f"Live Support status: {view.label}")
        self.badge.setStyleSheet(f"background:{STATUS_COLOURS[view.status]};")
        self.online.setText(("● " if view.online else "○ ") + view.online_label)
        self.online.setAccessibleName(view.online_label)
        self.explanation.setText(view.explanation)
        self.open_call.setEnabled(view.can_open_call)
        self.open_call.setAccessibleDescription(
            "Return to the call window" if view.can_open_call else "No session is open"
        )
        unread = view.unread_notifications
        self.inbox_button.setText(f"Notifications ({unread})" if unread else "Notifications")
        self.inbox_button.setAccessibleName(self.inbox_button.text())
        self.setWindowIcon(status_icon(view))

    def _open_call(self) -> None:
        self._task = asyncio.ensure_future(self.model.open_call_window())


class AgentTray(QSystemTrayIcon):
    def __init__(
        self, model: AgentModel, show_window: Callable[[], None], open_inbox: Callable[[], None]
    ) -> None:
        super().__init__()
        self.model = model
        menu = QMenu()
        self.status_action = QAction("", menu)
        self.status_action.setEnabled(False)
        self.open_call = QAction("Live Support", menu)
        self.open_call.triggered.connect(
            lambda: asyncio.ensure_future(self.model.open_call_window())
        )
        self.inbox = QAction("Notifications", menu)
        self.inbox.triggered.connect(open_inbox)
        show = QAction("Show status window", menu)
        show.triggered.connect(show_window)
        for action in (self.status_action, self.open_call, self.inbox, show):
            menu.addAction(action)
        self._menu = menu
        self.setContextMenu(menu)
        self.activated.connect(lambda _reason: show_window())
        self.messageClicked.connect(open_inbox)
        self.show_status(model.status_view())

    def show_status(self, view: StatusView) -> None:
        self.setIcon(status_icon(view))
        self.setToolTip(view.summary)
        self.status_action.setText(view.summary)
        self.open_call.setEnabled(view.can_open_call)
        unread = view.unread_notifications
        self.inbox.setText(f"Notifications ({unread})" if unread else "Notifications")


class AgentUi:
    """All the resident agent's windows, following one ``AgentModel``."""

    def __init__(self, model: AgentModel, *, screenshots: Path | None = None) -> None:
        self.model = model
        self.screenshots = screenshots
        self.inbox = InboxWindow(model)
        self.window = AgentWindow(model, self.open_inbox)
        self.tray: AgentTray | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = AgentTray(model, self.show_window, self.open_inbox)
            self.tray.show()
        else:
            # No tray on this platform: the small window is the agent's face.
            self.window.show()
        self.prompt: IncomingCallDialog | None = None
        self.popups: list[NotificationPopup] = []
        self._unsubscribe = [
            model.status_changed.add(self._on_status),
            model.incoming_changed.add(self._on_incoming),
            model.popups.add(self._on_popup),
        ]

    def show_window(self) -> None:
        self.window.show()
        self.window.raise_()
        self.window.activateWindow()

    def open_inbox(self) -> None:
        self.inbox.refresh()
        self.inbox.show()
        self.inbox.raise_()
        self.inbox.activateWindow()

    def _on_status(self, view: StatusView) -> None:
        self.window.show_status(view)
        if self.tray is not None:
            self.tray.show_status(view)

    def _on_incoming(self, call: IncomingCall | None) -> None:
        if call is None:
            if self.prompt is not None and self.prompt.isVisible():
                self.prompt.hide()
            self.prompt = None
            return
        self.prompt = IncomingCallDialog(call)
        self.prompt.show()
        if self.screenshots is not None:
            prompt = self.prompt
            QTimer.singleShot(300, lambda: self._save(prompt, "prompt"))

    def _on_popup(self, item: InboxItem) -> None:
        popup = NotificationPopup(self.model, item)
        popup.place()
        popup.show()
        self.popups = [p for p in self.popups if p.isVisible()] + [popup]
        if self.tray is not None and QSystemTrayIcon.supportsMessages():
            # The system notification; clicking it opens the inbox.
            self.tray.showMessage(item.title, item.body, QSystemTrayIcon.MessageIcon.Information)
        if self.screenshots is not None:
            QTimer.singleShot(300, lambda: self._save(popup, "notification"))

    def _save(self, widget: QWidget, name: str) -> None:
        folder = self.screenshots
        if folder is None or not widget.isVisible():
            return
        folder.mkdir(parents=True, exist_ok=True)
        widget.grab().save(str(folder / f"{name}.png"))
        log.info("%s picture saved", name)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for popup in self.popups:
            popup.close()
        if self.prompt is not None:
            self.prompt.hide()
        self.inbox.close_for_good()
        self.window.close()
        if self.tray is not None:
            self.tray.hide()
