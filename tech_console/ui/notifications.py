"""Notifications in the console: compose one (to a device, a selection or a group) and
follow each device's state (sent, delivered, read, answered) and answers live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHeaderView,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from peer.signaling import RequestError
from peer.ui.text import display_name, display_text
from protocol.enums import NotificationState
from protocol.errors import ProtocolError
from protocol.messages import DeviceInfo
from tech_console.client import ConsoleClient, NotificationProgress
from tech_console.ui.session_window import plain

log = logging.getLogger(__name__)

Index = QModelIndex | QPersistentModelIndex

#: Title and body limits (the wire's Name and UserText).
TITLE_MAX, BODY_MAX = 128, 4000

TTL_CHOICES = (("1 hour", 3600), ("1 day", 24 * 3600), ("1 week", 7 * 24 * 3600))

STATE_LABELS = {
    NotificationState.SENT: "Sent",
    NotificationState.DELIVERED: "Delivered",
    NotificationState.READ: "Read",
    NotificationState.ANSWERED: "Answered",
    NotificationState.EXPIRED: "Expired",
}


class ComposeDialog(QDialog):
    """Write a notification to the selected devices or to a whole group. Opened with
    ``open()``; sending happens on the console's loop."""

    sent = Signal(str)  # notification id

    def __init__(
        self,
        client: ConsoleClient,
        selection: Sequence[DeviceInfo],
        groups: Sequence[tuple[str, str]],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.client = client
        self.selection = list(selection)
        self.setWindowTitle("New notification")
        self.setObjectName("composeDialog")
        self.target = QComboBox(self)
        self.target.setObjectName("target")
        self.target.setAccessibleName("Send to")
        if self.selection:
            names = ", ".join(d.name for d in self.selection[:3])
            more = f" and {len(self.selection) - 3} more" if len(self.selection) > 3 else ""
            self.target.addItem(f"Selected: {names}{more}", None)
        for group_id, name in groups:
            self.target.addItem(f"Group: {name}", group_id)
        self.title = QLineEdit(self)
        self.title.setObjectName("title")
        self.title.setAccessibleName("Title")
        self.title.setMaxLength(TITLE_MAX)
        self.body = QPlainTextEdit(self)
        self.body.setObjectName("body")
        self.body.setAccessibleName("Message")
        self.body.setTabChangesFocus(True)
        self.ttl = QComboBox(self)
        self.ttl.setAccessibleName("Expires after")
        for label, seconds in TTL_CHOICES:
            self.ttl.addItem(label, seconds)
        self.ttl.setCurrentIndex(1)
        self.status = plain(parent=self)
        self.status.setObjectName("composeStatus")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Send")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Send to", self.target)
        form.addRow("Title", self.title)
        form.addRow("Message", self.body)
        form.addRow("Expires after", self.ttl)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self._task: asyncio.Task[None] | None = None

    def problem(self) -> str | None:
        if not self.title.text().strip():
            return "Write a title."
        body = self.body.toPlainText()
        if not body.strip():
            return "Write a message."
        if len(body) > BODY_MAX:
            return f"The message is too long ({len(body)} of {BODY_MAX} characters)."
        if self.target.count() == 0:
            return "Select devices in the inventory, or a group."
        return None

    def submit(self) -> None:
        problem = self.problem()
        if problem:
            self.status.setText(problem)
            return
        if self._task is not None and not self._task.done():
            return
        self.buttons.setEnabled(False)
        self.status.setText("Sending…")
        self._task = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        group_id = self.target.currentData()
        devices = [] if group_id else [d.device_id for d in self.selection]
        try:
            progress = await self.client.notify(
                title=self.title.text().strip(),
                body=self.body.toPlainText().strip(),
                device_ids=devices,
                group_id=group_id,
                ttl_s=int(self.ttl.currentData()),
            )
        except (RequestError, ProtocolError) as exc:
            self.status.setText(f"Not sent: {exc}")
            self.buttons.setEnabled(True)
            return
        self.sent.emit(progress.notification_id)
        self.accept()


class ProgressModel(QAbstractTableModel):
    """One notification: a row per device with its state and answer."""

    HEADERS = ("Device", "State", "Answer")

    def __init__(self, client: ConsoleClient, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.progress: NotificationProgress | None = None
        self._devices: list[str] = []

    def show_progress(self, progress: NotificationProgress | None) -> None:
        self.beginResetModel()
        self.progress = progress
        self._devices = list(progress.device_ids) if progress is not None else []
        self.endResetModel()

    def rowCount(self, parent: Index | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._devices)

    def columnCount(self, parent: Index | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation is Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if role != Qt.ItemDataRole.DisplayRole or self.progress is None or not index.isValid():
            return None
        device_id = self._devices[index.row()]
        if index.column() == 0:
            device = self.client.devices.get(device_id)
            return display_name(device.name) if device is not None else device_id
        if index.column() == 1:
            return STATE_LABELS[self.progress.states.get(device_id, NotificationState.SENT)]
        # The device user's words, shown as plain text by the table, display-safe.
        return display_text(self.progress.answers.get(device_id, ""))

    def counts(self) -> dict[NotificationState, int]:
        counts = dict.fromkeys(NotificationState, 0)
        if self.progress is not None:
            for state in self.progress.states.values():
                counts[state] += 1
        return counts


class NotificationsView(QWidget):
    """The notifications sent from this console, newest first; the selected one's
    per-device progress beside it, updating as devices report."""

    def __init__(self, client: ConsoleClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.setObjectName("notificationsView")
        self.list = QListWidget(self)
        self.list.setObjectName("notificationList")
        self.list.setAccessibleName("Notifications sent")
        self.progress_model = ProgressModel(client, self)
        self.table = QTableView(self)
        self.table.setObjectName("notificationProgress")
        self.table.setModel(self.progress_model)
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.summary = plain(parent=self)
        self.summary.setObjectName("notificationSummary")
        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.summary)
        right_layout.addWidget(self.table, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(self.list)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self.list.currentItemChanged.connect(lambda *_: self._show_current())
        self._unsubscribe = client.notification_listeners.add(self._on_progress)
        for progress in client.notifications.values():
            self._on_progress(progress)

    def select(self, notification_id: str) -> None:
        item = self._item(notification_id)
        if item is not None:
            self.list.setCurrentItem(item)

    def _add(self, progress: NotificationProgress) -> QListWidgetItem:
        item = QListWidgetItem(progress.title)
        item.setData(Qt.ItemDataRole.UserRole, progress.notification_id)
        self.list.insertItem(0, item)
        if self.list.currentItem() is None:
            self.list.setCurrentItem(item)
        return item

    def _item(self, notification_id: str) -> QListWidgetItem | None:
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(Qt.ItemDataRole.UserRole) == notification_id:
                return item
        return None

    def _on_progress(self, progress: NotificationProgress) -> None:
        item = self._item(progress.notification_id) or self._add(progress)
        title = display_name(progress.title)
        answered = sum(s is NotificationState.ANSWERED for s in progress.states.values())
        item.setText(f"{title} ({answered}/{len(progress.states)} answered)")
        if self.list.currentItem() is item:
            self._show_current()

    def _show_current(self) -> None:
        item = self.list.currentItem()
        notification_id = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        progress = self.client.notifications.get(notification_id) if notification_id else None
        self.progress_model.show_progress(progress)
        counts = self.progress_model.counts()
        self.summary.setText(
            "   ".join(f"{STATE_LABELS[s]}: {n}" for s, n in counts.items() if n)
            if progress is not None
            else "Send a notification from the Devices tab."
        )

    def dispose(self) -> None:
        self._unsubscribe()
