"""The console's main window: the device inventory with live statuses, starting
sessions, a tab per session, and notifications.

A thin view over :class:`~tech_console.client.ConsoleClient` and the models of
:mod:`tech_console.console_model`; everything it decides is decided there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QSplitter,
    QSystemTrayIcon,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from peer.chat import ChatEntry
from peer.signaling import RequestError
from peer.ui.text import display_name
from peer.ui.theme import TOUCH_TARGET_PX
from protocol.enums import LiveSupportStatus, Mode
from protocol.errors import ProtocolError
from protocol.messages import DeviceInfo
from protocol.permissions import Action, allows
from tech_console.admin_api import AdminApi
from tech_console.client import FINAL, ConsoleClient, ConsoleSession
from tech_console.console_model import (
    MODE_LABELS,
    ConsoleSettings,
    InventoryFilter,
    SessionModel,
    last_seen_text,
    start_blocker,
)
from tech_console.ui.admin import AdminView
from tech_console.ui.history import HistoryView
from tech_console.ui.inventory import Column, InventoryModel, InventoryProxy
from tech_console.ui.notifications import ComposeDialog, NotificationsView
from tech_console.ui.profile import ProfileDialog
from tech_console.ui.session_window import SessionPanel, SummaryDialog, plain

log = logging.getLogger(__name__)

#: The reason (or ticket reference) is required and goes to the audit log.
REASON_MAX = 500


class InventoryTab(QWidget):
    """Search, filters, the table, and the panel that starts a session."""

    start_requested = Signal(str, object, str)  # device id, Mode, reason
    notify_requested = Signal()

    def __init__(self, client: ConsoleClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.model = InventoryModel(self)
        self.proxy = InventoryProxy(self.model, self)

        self.search = QLineEdit(self)
        self.search.setObjectName("search")
        self.search.setPlaceholderText("Search name, model, OS, group")
        self.search.setAccessibleName("Search devices")
        self.search.setClearButtonEnabled(True)
        self.group_filter = QComboBox(self)
        self.group_filter.setObjectName("groupFilter")
        self.group_filter.setAccessibleName("Group")
        self.group_filter.addItem("All groups", None)
        self.status_filter = QComboBox(self)
        self.status_filter.setObjectName("statusFilter")
        self.status_filter.setAccessibleName("Live Support status")
        self.status_filter.addItem("Any status", None)
        for status in LiveSupportStatus:
            self.status_filter.addItem(status.label, status)
        self.online_filter = QComboBox(self)
        self.online_filter.setObjectName("onlineFilter")
        self.online_filter.setAccessibleName("Online")
        for label, value in (("Online or not", None), ("Online", True), ("Offline", False)):
            self.online_filter.addItem(label, value)
        self.count_label = plain(parent=self)
        self.count_label.setObjectName("deviceCount")
        filters = QHBoxLayout()
        filters.addWidget(self.search, 2)
        filters.addWidget(self.group_filter, 1)
        filters.addWidget(self.status_filter, 1)
        filters.addWidget(self.online_filter, 1)
        filters.addWidget(self.count_label)

        self.table = QTableView(self)
        self.table.setObjectName("inventory")
        self.table.setAccessibleName("Devices")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(Column.NAME, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        # Fixed row heights: the view never measures thousands of rows.
        rows = self.table.verticalHeader()
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(28)
        rows.hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for column, width in ((Column.NAME, 220), (Column.STATUS, 120), (Column.GROUP, 140)):
            self.table.setColumnWidth(column, width)

        # The start panel: the selected device and what can be done with it.
        self.details = plain(parent=self)
        self.details.setObjectName("deviceDetails")
        self.details.setWordWrap(True)
        self.reason = QLineEdit(self)
        self.reason.setObjectName("reason")
        self.reason.setAccessibleName("Reason or ticket reference")
        self.reason.setPlaceholderText("Reason or ticket reference (required)")
        self.reason.setMaxLength(REASON_MAX)
        self.start_buttons: dict[Mode, QPushButton] = {}
        buttons = QHBoxLayout()
        for mode in Mode:
            button = QPushButton(f"{MODE_LABELS[mode]} session", self)
            button.setObjectName(f"start_{mode.value}")
            button.setMinimumHeight(TOUCH_TARGET_PX)
            button.clicked.connect(lambda _c=False, m=mode: self._start(m))
            buttons.addWidget(button)
            self.start_buttons[mode] = button
        self.blocker_label = plain(parent=self)
        self.blocker_label.setObjectName("startBlocker")
        self.blocker_label.setWordWrap(True)
        self.blocker_label.setStyleSheet("color:#8a1c1c;")
        self.start_status = plain(parent=self)
        self.start_status.setObjectName("startStatus")
        self.start_status.setWordWrap(True)
        self.notify_button = QPushButton("Send notification…", self)
        self.notify_button.setObjectName("notify")
        self.notify_button.setMinimumHeight(TOUCH_TARGET_PX)
        self.notify_button.clicked.connect(self.notify_requested.emit)

        panel = QWidget(self)
        panel.setObjectName("startPanel")
        panel_layout = QVBoxLayout(panel)
        panel_layout.addWidget(self.details)
        form = QFormLayout()
        form.addRow("Reason", self.reason)
        panel_layout.addLayout(form)
        panel_layout.addLayout(buttons)
        panel_layout.addWidget(self.blocker_label)
        panel_layout.addWidget(self.start_status)
        panel_layout.addStretch(1)
        panel_layout.addWidget(self.notify_button)

        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(self.table)
        splitter.addWidget(panel)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(filters)
        layout.addWidget(splitter, 1)

        self._groups: dict[str, str] = {}
        self.search.textChanged.connect(self._apply_filter)
        for combo in (self.group_filter, self.status_filter, self.online_filter):
            combo.currentIndexChanged.connect(self._apply_filter)
        self.reason.textChanged.connect(self.refresh_panel)
        selection = self.table.selectionModel()
        selection.selectionChanged.connect(lambda *_: self.refresh_panel())
        self.proxy.rowsInserted.connect(lambda *_: self._count())
        self.proxy.rowsRemoved.connect(lambda *_: self._count())
        self.proxy.modelReset.connect(self._count)
        self.proxy.layoutChanged.connect(self._count)
        self.model.dataChanged.connect(lambda *_: self.refresh_panel())

        self.model.set_devices(client.devices.values())
        for device in client.devices.values():
            self._note_group(device)
        self._unsubscribe = client.device_listeners.add(self._on_device)
        self._count()
        self.refresh_panel()

    # -- model -> view ----------------------------------------------------------------

    def _on_device(self, device: DeviceInfo) -> None:
        self.model.update_device(device)
        self._note_group(device)

    def _note_group(self, device: DeviceInfo) -> None:
        if device.group_id not in self._groups:
            self._groups[device.group_id] = device.group_name
            self.group_filter.addItem(device.group_name, device.group_id)

    @property
    def groups(self) -> list[tuple[str, str]]:
        return sorted(self._groups.items(), key=lambda item: item[1].casefold())

    def _count(self) -> None:
        self.count_label.setText(f"{self.proxy.rowCount()} of {self.model.rowCount()} devices")

    def selected_devices(self) -> list[DeviceInfo]:
        rows = self.table.selectionModel().selectedRows()
        return [self.proxy.device_at(index.row()) for index in rows]

    def select_device(self, device_id: str) -> bool:
        """Select the device's row (scrolled into view); False if filtered out."""
        self.model.flush()
        row = self.proxy.row_of(device_id)
        if row is None:
            return False
        index = self.proxy.index(row, 0)
        self.table.selectionModel().select(
            index,
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.table.scrollTo(index)
        return True

    def refresh_panel(self) -> None:
        selected = self.selected_devices()
        device = selected[0] if len(selected) == 1 else None
        if device is None:
            self.details.setText(
                f"{len(selected)} devices selected." if selected else "Select a device."
            )
        else:
            device = self.client.devices.get(device.device_id, device)
            modes = ", ".join(MODE_LABELS[m] for m in device.allowed_modes) or "none"
            self.details.setText(
                f"{device.name}\n{device.status.label} · {last_seen_text(device, _now_ms())}\n"
                f"Group: {device.group_name}\n{device.model} {device.os}\nAllowed: {modes}"
            )
        reasons: list[str] = []
        for mode, button in self.start_buttons.items():
            blocker = (
                start_blocker(device, mode, self.client.role)
                if device is not None
                else "Select exactly one device."
            )
            button.setEnabled(blocker is None)
            button.setToolTip(blocker or f"Start a {MODE_LABELS[mode].lower()} session")
            if blocker and blocker not in reasons:
                reasons.append(blocker)
        self.blocker_label.setText("\n".join(reasons))
        self.blocker_label.setVisible(bool(reasons))
        self.notify_button.setEnabled(bool(selected) or bool(self._groups))

    def _apply_filter(self) -> None:
        self.proxy.set_filter(
            InventoryFilter(
                text=self.search.text(),
                group_id=self.group_filter.currentData(),
                statuses=frozenset({s})
                if (s := self.status_filter.currentData()) is not None
                else frozenset(),
                online=self.online_filter.currentData(),
            )
        )
        self._count()

    # -- view -> model ----------------------------------------------------------------

    def _start(self, mode: Mode) -> None:
        selected = self.selected_devices()
        if len(selected) != 1:
            return
        reason = self.reason.text().strip()
        if not reason:
            self.start_status.setText("Write the reason or ticket reference first.")
            self.reason.setFocus()
            return
        self.start_requested.emit(selected[0].device_id, mode, reason)

    def dispose(self) -> None:
        self._unsubscribe()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ConsoleWindow(QMainWindow):
    """Devices, Notifications, then a tab per session (with its unread count)."""

    #: The technician closed the window (the console logs out).
    closed = Signal()

    def __init__(
        self,
        client: ConsoleClient,
        settings: ConsoleSettings | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.settings = settings or ConsoleSettings()
        who = client.display_name or "Technician"
        role = client.role.value if client.role is not None else "?"
        self.setWindowTitle(f"Live Support console: {who} ({role}) on {client.server}")
        self.setObjectName("consoleWindow")
        self.resize(1280, 800)
        self.tabs = QTabWidget(self)
        self.tabs.setObjectName("tabs")
        self.tabs.setTabsClosable(True)
        self.tabs.tabCloseRequested.connect(self._close_tab)
        self.inventory = InventoryTab(client, self)
        self.notifications = NotificationsView(client, self)
        self.tabs.addTab(self.inventory, "Devices")
        self.tabs.addTab(self.notifications, "Notifications")
        self._fixed_tabs = self.tabs.count()
        self.setCentralWidget(self.tabs)
        #: The REST side of the console (profile, history, administration).
        self.api = (
            AdminApi(client.server, client.fingerprint, client.token)
            if client.token is not None
            else None
        )
        self.profile_dialog: ProfileDialog | None = None
        # History for whoever may start sessions (their own) or view the audit (their
        # scope); administration for admins. The server enforces the same.
        my_role = client.role
        self.history: HistoryView | None = None
        self.admin: AdminView | None = None
        self._history_loaded = self._admin_loaded = False
        if self.api is not None and my_role is not None:
            audit = allows(my_role, Action.VIEW_AUDIT)
            if audit or allows(my_role, Action.START_SESSION):
                self.history = HistoryView(self.api, mine=not audit)
                self.tabs.insertTab(self._fixed_tabs, self.history, "History")
                self._fixed_tabs += 1
            if allows(my_role, Action.MANAGE_TECHNICIANS):
                self.admin = AdminView(self.api)
                self.tabs.insertTab(self._fixed_tabs, self.admin, "Administration")
                self._fixed_tabs += 1
            self.tabs.currentChanged.connect(self._on_tab)
        bar = self.tabs.tabBar()
        for index in range(self._fixed_tabs):
            # Only sessions' tabs close; the others have no close button.
            bar.setTabButton(index, bar.ButtonPosition.RightSide, None)
        account = self.menuBar().addMenu("&Account")
        profile_action = QAction("&Profile…", self)
        profile_action.triggered.connect(self.open_profile)
        profile_action.setEnabled(self.api is not None)
        account.addAction(profile_action)
        logout_action = QAction("&Log out", self)
        logout_action.triggered.connect(self.close)
        account.addAction(logout_action)
        self.connection_label = QLabel(self)
        self.statusBar().addPermanentWidget(self.connection_label)

        #: Alerts given to the technician (desktop notifications), newest last.
        self.alerts: list[str] = []
        self.tray = QSystemTrayIcon(self) if QSystemTrayIcon.isSystemTrayAvailable() else None
        if self.tray is not None:
            self.tray.setIcon(self.windowIcon())
            self.tray.show()

        self.panels: dict[str, SessionPanel] = {}
        self.summary_dialogs: dict[str, SummaryDialog] = {}
        self.compose: ComposeDialog | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.inventory.start_requested.connect(self.start_session)
        self.inventory.notify_requested.connect(self.open_compose)
        self._unsubscribe: list[Callable[[], None]] = []
        self._unsubscribe.append(client.link_listeners.add(lambda _s: self._show_connection()))
        self._unsubscribe.append(client.session_listeners.add(self._on_session))
        for session in list(client.sessions.values()):
            self._on_session(session)
        self._show_connection()

    # -- sessions ---------------------------------------------------------------------

    def start_session(self, device_id: str, mode: Mode, reason: str) -> None:
        self.inventory.start_status.setText("Calling…")
        self._spawn(self._start(device_id, mode, reason))

    async def _start(self, device_id: str, mode: Mode, reason: str) -> None:
        try:
            session = await self.client.start_session(device_id, mode, reason)
        except (RequestError, ProtocolError) as exc:
            self.inventory.start_status.setText(f"Not started: {exc}")
            return
        self.inventory.start_status.setText("")
        self.inventory.reason.clear()
        panel = self.panels.get(session.session_id)
        if panel is not None:
            self.tabs.setCurrentWidget(panel)

    def _on_session(self, session: ConsoleSession) -> None:
        """Every open session of this technician gets a tab: one started here, one
        still open after the console reconnected, one a script started."""
        if session.session_id in self.panels or session.state in FINAL:
            return
        model = SessionModel(self.client, session)
        panel = SessionPanel(model, self.settings.saved_replies)
        self.panels[session.session_id] = panel
        self.tabs.addTab(panel, display_name(model.title))
        panel.unread_changed.connect(functools.partial(self._show_unread, panel))
        panel.close_requested.connect(functools.partial(self.ask_summary, panel))
        model.incoming.add(functools.partial(self._on_incoming, panel))

    def ask_summary(self, panel: SessionPanel) -> SummaryDialog:
        session_id = panel.model.session_id
        dialog = self.summary_dialogs.get(session_id)
        if dialog is None:
            dialog = SummaryDialog(panel.model, self)
            self.summary_dialogs[session_id] = dialog
            dialog.finished.connect(lambda _r, s=session_id: self.summary_dialogs.pop(s, None))
        dialog.open()
        return dialog

    def _show_unread(self, panel: SessionPanel, unread: int) -> None:
        index = self.tabs.indexOf(panel)
        if index >= 0:
            title = display_name(panel.model.title)
            self.tabs.setTabText(index, f"{title} ({unread})" if unread else title)

    def _on_incoming(self, panel: SessionPanel, entry: ChatEntry) -> None:
        in_front = self.isActiveWindow() and self.tabs.currentWidget() is panel
        if in_front:
            return
        # Who wrote, not what: the desktop notification may be seen by others.
        text = f"New message from {display_name(panel.model.device_name)}"
        self.alert("Live Support", text)

    def alert(self, title: str, text: str) -> None:
        """A desktop notification (the tray's where there is one) and the taskbar."""
        self.alerts.append(text)
        if self.tray is not None and QSystemTrayIcon.supportsMessages():
            self.tray.showMessage(title, text, QSystemTrayIcon.MessageIcon.Information, 8000)
        QApplication.alert(self)

    def _close_tab(self, index: int) -> None:
        widget = self.tabs.widget(index)
        if not isinstance(widget, SessionPanel):
            return
        if widget.model.open:
            # An open session closes through its summary, never by closing a tab.
            self.ask_summary(widget)
            return
        self.tabs.removeTab(index)
        self.panels.pop(widget.model.session_id, None)
        widget.dispose()
        widget.deleteLater()

    # -- notifications ----------------------------------------------------------------

    def open_compose(self) -> ComposeDialog:
        dialog = ComposeDialog(
            self.client, self.inventory.selected_devices(), self.inventory.groups, self
        )
        dialog.sent.connect(self._on_sent)
        self.compose = dialog
        dialog.open()
        return dialog

    def _on_sent(self, notification_id: str) -> None:
        self.notifications.select(notification_id)
        self.tabs.setCurrentWidget(self.notifications)

    def _on_tab(self, _index: int) -> None:
        # Loaded when first looked at, then on Refresh: the audit can be long.
        current = self.tabs.currentWidget()
        if current is self.history and self.history is not None and not self._history_loaded:
            self._history_loaded = True
            self.history.refresh()
        if current is self.admin and self.admin is not None and not self._admin_loaded:
            self._admin_loaded = True
            self.admin.refresh()

    def open_profile(self) -> ProfileDialog | None:
        if self.api is None:
            return None
        if self.profile_dialog is None:
            self.profile_dialog = ProfileDialog(self.api, self)
        self.profile_dialog.open()
        self.profile_dialog.load()
        return self.profile_dialog

    # -- the rest ---------------------------------------------------------------------

    def _show_connection(self) -> None:
        link = self.client.client
        state = link.state.value if link is not None else "signed out"
        self.connection_label.setText(f"Server: {state}")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("console action failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def closeEvent(self, event: QCloseEvent) -> None:
        for panel in list(self.panels.values()):
            panel.dispose()
        self.inventory.dispose()
        self.notifications.dispose()
        for view in (self.history, self.admin):
            if view is not None:
                view.dispose()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self.tray is not None:
            self.tray.hide()
        self.closed.emit()
        event.accept()
