"""The device inventory as Qt item models: one table model over every device in the
technician's scope, and a proxy that filters and sorts it.

Built for thousands of rows: the view asks only for the rows it shows, sorting
compares plain values in C++ (the sort role), and the changes the console client
reports one device at a time are applied in batches, once per turn of the loop, so a
snapshot of 5,000 devices is one insertion and not 5,000.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import IntEnum

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
)
from PySide6.QtGui import QColor

from peer.ui.theme import STATUS_COLOURS
from protocol.enums import LiveSupportStatus
from protocol.messages import DeviceInfo
from tech_console.console_model import InventoryFilter, last_seen_text

Index = QModelIndex | QPersistentModelIndex


class Column(IntEnum):
    NAME = 0
    STATUS = 1
    ONLINE = 2
    GROUP = 3
    MODEL = 4
    OS = 5
    LAST_SEEN = 6


HEADERS = {
    Column.NAME: "Device",
    Column.STATUS: "Live Support",
    Column.ONLINE: "Online",
    Column.GROUP: "Group",
    Column.MODEL: "Model",
    Column.OS: "OS",
    Column.LAST_SEEN: "Last seen",
}

#: Sorting by status puts the devices one can help now first.
STATUS_ORDER = {
    LiveSupportStatus.DISCONNECTED: 0,
    LiveSupportStatus.CONNECTED: 1,
    LiveSupportStatus.DISABLED: 2,
    LiveSupportStatus.NOT_INSTALLED: 3,
}

#: Data role: the row's DeviceInfo.
DEVICE_ROLE = Qt.ItemDataRole.UserRole + 1
#: Data role: a plain value to sort by (compared by Qt, not in Python).
SORT_ROLE = Qt.ItemDataRole.UserRole + 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class InventoryModel(QAbstractTableModel):
    """Every device in scope, one row each, in arrival order."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[DeviceInfo] = []
        self._row_of: dict[str, int] = {}
        self._pending: dict[str, DeviceInfo] = {}
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(0)
        self._flush_timer.timeout.connect(self.flush)

    # -- feeding ----------------------------------------------------------------------

    def update_device(self, device: DeviceInfo) -> None:
        """A device appeared or changed; shown at the next turn of the loop."""
        self._pending[device.device_id] = device
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def set_devices(self, devices: Iterable[DeviceInfo]) -> None:
        """Replace every row (a new login, a reconnect's fresh snapshot)."""
        self._flush_timer.stop()
        self._pending.clear()
        self.beginResetModel()
        self._rows = list(devices)
        self._row_of = {d.device_id: i for i, d in enumerate(self._rows)}
        self.endResetModel()

    def flush(self) -> None:
        """Apply the pending changes: one insertion for the new devices, one change
        notice spanning the changed rows."""
        pending, self._pending = self._pending, {}
        fresh = [d for d in pending.values() if d.device_id not in self._row_of]
        changed: list[int] = []
        for device in pending.values():
            row = self._row_of.get(device.device_id)
            if row is not None:
                self._rows[row] = device
                changed.append(row)
        if changed:
            last_column = len(Column) - 1
            self.dataChanged.emit(
                self.index(min(changed), 0), self.index(max(changed), last_column)
            )
        if fresh:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(fresh) - 1)
            for offset, device in enumerate(fresh):
                self._rows.append(device)
                self._row_of[device.device_id] = first + offset
            self.endInsertRows()

    # -- reading ----------------------------------------------------------------------

    def device_at(self, row: int) -> DeviceInfo:
        return self._rows[row]

    def device(self, device_id: str) -> DeviceInfo | None:
        row = self._row_of.get(device_id)
        return self._rows[row] if row is not None else None

    def row_of(self, device_id: str) -> int | None:
        return self._row_of.get(device_id)

    def rowCount(self, parent: Index | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(Column)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation is Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[Column(section)]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid():
            return None
        device = self._rows[index.row()]
        column = Column(index.column())
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(device, column)
        if role == SORT_ROLE:
            return self._sort_key(device, column)
        if role == DEVICE_ROLE:
            return device
        if role == Qt.ItemDataRole.DecorationRole and column is Column.STATUS:
            return QColor(STATUS_COLOURS[device.status])
        if role == Qt.ItemDataRole.ToolTipRole and column is Column.STATUS:
            modes = ", ".join(m.value for m in device.allowed_modes) or "none"
            return f"{device.status.label}; allowed: {modes}"
        return None

    @staticmethod
    def _text(device: DeviceInfo, column: Column) -> str:
        # Device-supplied text: the table shows DisplayRole as plain text, never markup.
        if column is Column.NAME:
            return device.name
        if column is Column.STATUS:
            return device.status.label
        if column is Column.ONLINE:
            return "Online" if device.online else "Offline"
        if column is Column.GROUP:
            return device.group_name
        if column is Column.MODEL:
            return device.model
        if column is Column.OS:
            return device.os
        return last_seen_text(device, _now_ms())

    @staticmethod
    def _sort_key(device: DeviceInfo, column: Column) -> object:
        if column is Column.STATUS:
            return STATUS_ORDER[device.status]
        if column is Column.ONLINE:
            return 0 if device.online else 1
        if column is Column.LAST_SEEN:
            # Online first, then the most recently seen.
            return -(1 << 62) if device.online else -(device.last_seen_ms or 0)
        if column is Column.NAME:
            return device.name.casefold()
        return InventoryModel._text(device, column).casefold()


class InventoryProxy(QSortFilterProxyModel):
    """The rows an :class:`InventoryFilter` keeps, sorted by the chosen column."""

    def __init__(self, source: InventoryModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._source = source
        self._filter = InventoryFilter()
        self.setSourceModel(source)
        self.setSortRole(SORT_ROLE)
        # Re-filter and re-sort the rows that change (a device going offline leaves an
        # "online only" view at once).
        self.setDynamicSortFilter(True)

    @property
    def inventory_filter(self) -> InventoryFilter:
        return self._filter

    def set_filter(self, new: InventoryFilter) -> None:
        if new == self._filter:
            return
        self.beginFilterChange()
        self._filter = new
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        return self._filter.matches(self._source.device_at(source_row))

    def device_at(self, row: int) -> DeviceInfo:
        return self._source.device_at(self.mapToSource(self.index(row, 0)).row())

    def row_of(self, device_id: str) -> int | None:
        source_row = self._source.row_of(device_id)
        if source_row is None:
            return None
        proxy = self.mapFromSource(self._source.index(source_row, 0))
        return proxy.row() if proxy.isValid() else None
