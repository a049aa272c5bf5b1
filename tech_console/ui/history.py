"""Session and notification history in the console: who helped whom, when, how, with
what consent and what the technician wrote afterwards; who notified whom and how far
each notification got. Metadata only, as the server keeps it: there is no chat and no
answer text to show (the API does not return them).

A technician sees their own history (``mine=True``); a supervisor or admin sees the
audit (``mine=False``: admin everything, supervisor their groups)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QStandardPaths,
    Qt,
)
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from peer.signaling import RequestError
from peer.ui.text import display_text
from protocol.enums import Mode, NotificationState
from tech_console.admin_api import (
    AdminApi,
    NotificationRecord,
    SessionRecord,
    notifications_csv,
    sessions_csv,
)
from tech_console.ui.session_window import plain

log = logging.getLogger(__name__)

Index = QModelIndex | QPersistentModelIndex
T = TypeVar("T")

#: The period filter: label and how far back, in seconds (None: everything).
PERIODS: tuple[tuple[str, int | None], ...] = (
    ("Last 24 hours", 24 * 3600),
    ("Last 7 days", 7 * 24 * 3600),
    ("Last 30 days", 30 * 24 * 3600),
    ("All", None),
)

MODE_LABELS = {Mode.TEXT: "Text", Mode.VOICE: "Voice", Mode.VIDEO: "Video"}


def local_time(ms: int | None) -> str:
    """A server timestamp in the technician's local time, or "" for none."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration_text(seconds: int | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def mode_text(record: SessionRecord) -> str:
    offered = MODE_LABELS[record.offered_mode]
    if record.accepted_mode is None:
        return f"{offered} → (not accepted)"
    return f"{offered} → {MODE_LABELS[record.accepted_mode]}"


def consent_text(record: SessionRecord) -> str:
    if record.consent_verified:
        return "Verified"
    if record.consent is None:
        return "None"
    return f"NOT verified: {record.consent_problem or 'unknown problem'}"


def summary_details(record: SessionRecord) -> str:
    """The summary's other fields, for the tooltip and the detail pane."""
    s = record.summary
    if s is None:
        return "No summary written."
    return "\n".join(
        (
            f"Summary: {s.summary}",
            f"Impact: {s.impact}",
            f"Expected vs actual: {s.expected_vs_actual}",
            f"Evidence: {s.evidence}",
            f"Next owner: {s.next_owner}",
        )
    )


class RecordModel(QAbstractTableModel, Generic[T]):
    """Rows of frozen records, one column per header. DisplayRole is plain text: the
    table view never interprets markup, so names typed elsewhere show as typed."""

    def __init__(
        self,
        headers: Sequence[str],
        cells: Callable[[T], Sequence[str]],
        tooltip: Callable[[T, int], str | None] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.headers = tuple(headers)
        self.cells = cells
        self.tooltip = tooltip
        self.records: list[T] = []
        self._rows: list[Sequence[str]] = []

    def set_records(self, records: Sequence[T]) -> None:
        self.beginResetModel()
        self.records = list(records)
        # Names, reasons and summaries were typed elsewhere: shown display-safe.
        self._rows = [[display_text(c) for c in self.cells(r)] for r in self.records]
        self.endResetModel()

    def record(self, row: int) -> T | None:
        return self.records[row] if 0 <= row < len(self.records) else None

    def cell_texts(self) -> list[list[str]]:
        """Every cell as shown (for tests and checks)."""
        return [list(row) for row in self._rows]

    def rowCount(self, parent: Index | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.headers)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation is Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.headers[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._rows[index.row()][index.column()]
        if role == Qt.ItemDataRole.ToolTipRole and self.tooltip is not None:
            return self.tooltip(self.records[index.row()], index.column())
        return None


def make_table(model: QAbstractTableModel, name: str, parent: QWidget) -> QTableView:
    table = QTableView(parent)
    table.setObjectName(name)
    table.setModel(model)
    table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QTableView.SelectionMode.SingleSelection)
    table.setEditTriggers(QTableView.EditTrigger.NoEditTriggers)
    table.verticalHeader().hide()
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    table.horizontalHeader().setStretchLastSection(True)
    return table


class TaskRunner:
    """Starts async work from slots, one status label telling progress and the
    server's refusal. ``task`` is the latest one (tests await it)."""

    def __init__(self, status: QLabel) -> None:
        self.status = status
        self.task: asyncio.Task[bool] | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def run(
        self, busy: str, work: Coroutine[Any, Any, str | None], failed: str = "Failed"
    ) -> asyncio.Task[bool]:
        """Show ``busy``, run ``work``; show what it returns, or the error."""
        self.status.setText(busy)
        task = asyncio.ensure_future(self._guard(work, failed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.task = task
        return task

    async def _guard(self, work: Coroutine[Any, Any, str | None], failed: str) -> bool:
        try:
            done = await work
        except RequestError as exc:
            self.status.setText(f"{failed}: {exc.message}")
            return False
        except OSError as exc:  # pragma: no cover - network trouble below the client
            self.status.setText(f"{failed}: {exc}")
            return False
        if done is not None:
            self.status.setText(done)
        return True

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _session_cells(r: SessionRecord) -> tuple[str, ...]:
    return (
        r.technician_name,
        r.device_name,
        local_time(r.created_at_ms),
        mode_text(r),
        consent_text(r),
        duration_text(r.duration_s),
        r.reason,
        r.end_reason or "",
        r.summary.summary if r.summary is not None else "",
    )


SESSION_HEADERS = (
    "Who",
    "Whom",
    "When",
    "Mode",
    "Consent",
    "Duration",
    "Reason",
    "End reason",
    "Summary",
)
SUMMARY_COLUMN = SESSION_HEADERS.index("Summary")
CONSENT_COLUMN = SESSION_HEADERS.index("Consent")


def _session_tooltip(r: SessionRecord, column: int) -> str | None:
    if column == SUMMARY_COLUMN:
        return summary_details(r)
    if column == CONSENT_COLUMN:
        return consent_text(r)
    return None


COUNTED_STATES = (
    NotificationState.SENT,
    NotificationState.DELIVERED,
    NotificationState.READ,
    NotificationState.ANSWERED,
    NotificationState.EXPIRED,
)

NOTIFICATION_HEADERS = (
    "Who",
    "Title",
    "When",
    "Devices",
    *(s.value.title() for s in COUNTED_STATES),
)


def _notification_cells(n: NotificationRecord) -> tuple[str, ...]:
    counts = dict.fromkeys(COUNTED_STATES, 0)
    for t in n.targets:
        counts[t.state] = counts.get(t.state, 0) + 1
    return (
        n.sender_name,
        n.title,
        local_time(n.sent_at_ms),
        str(len(n.targets)),
        *(str(counts[s]) for s in COUNTED_STATES),
    )


def _notification_tooltip(n: NotificationRecord, column: int) -> str | None:
    if column != 3:
        return None
    return "\n".join(
        f"{t.device_name}: {t.state.value}{' (answered)' if t.answered else ''}" for t in n.targets
    )


class HistoryView(QWidget):
    """Two tables, sessions and notifications, with a text search, a period filter,
    Refresh and CSV export of the rows shown."""

    def __init__(self, api: AdminApi, *, mine: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.api = api
        self.mine = mine
        self.setObjectName("historyView")
        self._sessions: list[SessionRecord] = []
        self._notifications: list[NotificationRecord] = []

        self.search = QLineEdit(self)
        self.search.setObjectName("historySearch")
        self.search.setPlaceholderText("Search technician, device or reason")
        self.search.setAccessibleName("Search history")
        self.search.setClearButtonEnabled(True)
        self.period = QComboBox(self)
        self.period.setObjectName("historyPeriod")
        self.period.setAccessibleName("Period")
        for label, seconds in PERIODS:
            self.period.addItem(label, seconds)
        self.period.setCurrentIndex(1)
        self.refresh_button = QPushButton("Refresh", self)
        self.refresh_button.setObjectName("historyRefresh")
        bar = QHBoxLayout()
        bar.addWidget(self.search, 1)
        bar.addWidget(self.period)
        bar.addWidget(self.refresh_button)

        self.session_model: RecordModel[SessionRecord] = RecordModel(
            SESSION_HEADERS, _session_cells, _session_tooltip, self
        )
        self.session_table = make_table(self.session_model, "sessionHistory", self)
        self.session_detail = plain(parent=self)
        self.session_detail.setObjectName("sessionDetail")
        self.session_detail.setWordWrap(True)
        self.session_detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.export_sessions_button = QPushButton("Export CSV…", self)
        self.export_sessions_button.setObjectName("exportSessions")
        sessions_page = QWidget(self)
        sessions_layout = QVBoxLayout(sessions_page)
        sessions_layout.addWidget(self.session_table, 1)
        sessions_layout.addWidget(self.session_detail)
        sessions_layout.addWidget(self.export_sessions_button, 0, Qt.AlignmentFlag.AlignRight)

        self.notification_model: RecordModel[NotificationRecord] = RecordModel(
            NOTIFICATION_HEADERS, _notification_cells, _notification_tooltip, self
        )
        self.notification_table = make_table(self.notification_model, "notificationHistory", self)
        self.export_notifications_button = QPushButton("Export CSV…", self)
        self.export_notifications_button.setObjectName("exportNotifications")
        notifications_page = QWidget(self)
        notifications_layout = QVBoxLayout(notifications_page)
        notifications_layout.addWidget(self.notification_table, 1)
        notifications_layout.addWidget(
            self.export_notifications_button, 0, Qt.AlignmentFlag.AlignRight
        )

        self.tabs = QTabWidget(self)
        self.tabs.addTab(sessions_page, "Sessions")
        self.tabs.addTab(notifications_page, "Notifications")
        self.status = plain(parent=self)
        self.status.setObjectName("historyStatus")
        self.status.setWordWrap(True)
        self.runner = TaskRunner(self.status)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.status)

        self.search.textChanged.connect(lambda _text: self._apply_filter())
        self.period.currentIndexChanged.connect(lambda _i: self.refresh())
        self.refresh_button.clicked.connect(lambda: self.refresh())
        self.export_sessions_button.clicked.connect(lambda: self._ask_path("sessions"))
        self.export_notifications_button.clicked.connect(lambda: self._ask_path("notifications"))
        self.session_table.selectionModel().currentRowChanged.connect(
            lambda current, _previous: self._show_detail(current.row())
        )
        #: The open "Export CSV" save dialog, if any.
        self.export_dialog: QFileDialog | None = None

    # -- loading ---------------------------------------------------------------------------

    def since_ms(self) -> int | None:
        seconds = self.period.currentData()
        if seconds is None:
            return None
        return int((time.time() - int(seconds)) * 1000)

    def refresh(self) -> asyncio.Task[bool]:
        """Load both tables again from the server (async; the status label tells)."""
        self.refresh_button.setEnabled(False)
        return self.runner.run("Loading…", self._load(), "Could not load the history")

    async def _load(self) -> str:
        since = self.since_ms()
        try:
            sessions = await self.api.session_history(mine=self.mine, since_ms=since)
            notifications = await self.api.notification_history(mine=self.mine, since_ms=since)
        except asyncio.CancelledError:
            raise  # the view is being disposed of: its widgets may be gone already
        except Exception:
            self.refresh_button.setEnabled(True)
            raise
        self.refresh_button.setEnabled(True)
        self._sessions = sessions
        self._notifications = notifications
        self._apply_filter()
        return (
            f"{self.session_model.rowCount()} sessions, "
            f"{self.notification_model.rowCount()} notifications."
        )

    def _apply_filter(self) -> None:
        words = self.search.text().casefold().split()

        def matches(*fields: str) -> bool:
            text = "\n".join(fields).casefold()
            return all(w in text for w in words)

        self.session_model.set_records(
            [r for r in self._sessions if matches(r.technician_name, r.device_name, r.reason)]
        )
        self.notification_model.set_records(
            [
                n
                for n in self._notifications
                if matches(n.sender_name, n.title, *(t.device_name for t in n.targets))
            ]
        )
        self._show_detail(self.session_table.currentIndex().row())

    def _show_detail(self, row: int) -> None:
        record = self.session_model.record(row)
        self.session_detail.setText(summary_details(record) if record is not None else "")

    # -- export ----------------------------------------------------------------------------

    def shown_sessions(self) -> list[SessionRecord]:
        return list(self.session_model.records)

    def shown_notifications(self) -> list[NotificationRecord]:
        return list(self.notification_model.records)

    def export_sessions(self, path: Path) -> None:
        """Write the sessions shown (after the filters) as CSV."""
        self._write(path, sessions_csv(self.shown_sessions()), "sessions")

    def export_notifications(self, path: Path) -> None:
        """Write the notifications shown (after the filters) as CSV."""
        self._write(path, notifications_csv(self.shown_notifications()), "notifications")

    def _write(self, path: Path, text: str, what: str) -> None:
        try:
            path.write_text(text, encoding="utf-8", newline="")
        except OSError as exc:
            self.status.setText(f"Could not export the {what}: {exc.strerror or exc}")
            return
        self.status.setText(f"Exported the {what} to {path}.")

    def _ask_path(self, what: str) -> None:
        """A save dialog opened with open() (no nested loop); the export runs when a
        file is chosen."""
        folder = QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.DocumentsLocation
        ) or str(Path.home())
        dialog = QFileDialog(
            self, f"Export {what}", str(Path(folder) / f"{what}.csv"), "CSV files (*.csv)"
        )
        dialog.setObjectName("exportDialog")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("csv")
        # Qt's own dialog, the same on every platform (and the one tests can drive).
        dialog.setOption(QFileDialog.Option.DontUseNativeDialog)
        export = self.export_sessions if what == "sessions" else self.export_notifications
        dialog.fileSelected.connect(lambda name: export(Path(name)))
        dialog.finished.connect(lambda _result: dialog.deleteLater())
        self.export_dialog = dialog
        dialog.open()

    def dispose(self) -> None:
        self.runner.cancel()
