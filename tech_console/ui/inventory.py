"""The device inventory as Qt item models: one table model over every device in the
technician's scope, kept in the order the technician sorted it by, and a proxy that
filters it.

Built for thousands of rows (``bench/inventory.py`` measures 5,000):

- The view asks only for the rows it shows.
- Sorting is done here, in Python, once per row: the sort value of each device is
  computed once and ``sorted`` orders the list. Qt's own sorting in
  :class:`QSortFilterProxyModel` would compare rows in C++ but fetch both sides of
  every comparison from Python (``index()`` then ``data()``): some 60,000
  comparisons and 360,000 calls into Python for 5,000 rows, most of a second with
  the window frozen, and again for every batch of changes. So the proxy only filters
  and keeps the model's order, and :meth:`InventoryProxy.sort` (what the view calls
  when a header is clicked) sorts the model.
- The changes the console client reports one device at a time are applied in
  batches, at most one per :data:`FLUSH_INTERVAL_MS` (the first at once): a snapshot
  of 5,000 devices is a few insertions and not 5,000, and a burst of status changes
  costs a few re-filters and re-sorts, not one per change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import Any, Final

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

from peer.ui.text import display_name
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
#: Data role: the plain value the rows are sorted by in that column.
SORT_ROLE = Qt.ItemDataRole.UserRole + 2

#: Changes wait at most this long to be shown; a burst of them within it is applied
#: (filtered, sorted, painted) once.
FLUSH_INTERVAL_MS: Final = 100
#: A batch of changes touching more separate runs of rows than this is announced as
#: one span rather than run by run: the proxy re-filters each row of a span (~1 µs a
#: row), and each announcement costs ~20 µs, so past ~128 runs the span is cheaper.
_MAX_CHANGE_RUNS: Final = 128

_COLUMNS: Final = len(Column)
# The roles as plain ints: data() runs for every cell and role the view paints.
_DISPLAY: Final = int(Qt.ItemDataRole.DisplayRole)
_DECORATION: Final = int(Qt.ItemDataRole.DecorationRole)
_TOOLTIP: Final = int(Qt.ItemDataRole.ToolTipRole)
_SORT: Final = int(SORT_ROLE)
_DEVICE: Final = int(DEVICE_ROLE)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# Device-supplied text: the table shows DisplayRole as plain text, never markup, and
# display-safe (peer.ui.text: bidi controls escaped, one line, capped).
_TEXT: Final[tuple[Callable[[DeviceInfo], str], ...]] = (
    lambda d: display_name(d.name),
    lambda d: d.status.label,
    lambda d: "Online" if d.online else "Offline",
    lambda d: display_name(d.group_name),
    lambda d: display_name(d.model),
    lambda d: display_name(d.os),
    lambda d: last_seen_text(d, _now_ms()),
)

#: Per column: an int or a str (never both in one column), compared as such.
_SORT_VALUE: Final[tuple[Callable[[DeviceInfo], Any], ...]] = (
    lambda d: d.name.casefold(),
    lambda d: STATUS_ORDER[d.status],
    lambda d: 0 if d.online else 1,
    lambda d: d.group_name.casefold(),
    lambda d: d.model.casefold(),
    lambda d: d.os.casefold(),
    # Online first, then the most recently seen.
    lambda d: -(1 << 62) if d.online else -(d.last_seen_ms or 0),
)


def _tie_break(device: DeviceInfo) -> tuple[str, str]:
    """Rows with the same value in the sorted column: by name (then id, so the order
    never depends on arrival)."""
    return device.name.casefold(), device.device_id


class InventoryModel(QAbstractTableModel):
    """Every device in scope, one row each, in the order of the column the view
    sorts by (by arrival until it sorts)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[DeviceInfo] = []
        self._row_of: dict[str, int] = {}
        self._pending: dict[str, DeviceInfo] = {}
        #: Arrival order: the natural order (a sort by column -1).
        self._arrival: dict[str, int] = {}
        #: Each device's tie-break key, made once per change of the device (a re-sort
        #: then allocates nothing per row, which also spares the garbage collector).
        self._ties: dict[str, tuple[str, str]] = {}
        self._sort_column: Column | None = None
        self._sort_order = Qt.SortOrder.AscendingOrder
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.timeout.connect(self.flush)
        self._last_flush = -1.0

    # -- feeding ----------------------------------------------------------------------

    def update_device(self, device: DeviceInfo) -> None:
        """A device appeared or changed; shown at the next turn of the loop, or within
        FLUSH_INTERVAL_MS of the previous batch."""
        self._pending[device.device_id] = device
        if not self._flush_timer.isActive():
            since_ms = (time.monotonic() - self._last_flush) * 1000
            self._flush_timer.start(max(0, int(FLUSH_INTERVAL_MS - since_ms)))

    def set_devices(self, devices: Iterable[DeviceInfo]) -> None:
        """Replace every row (a new login, a reconnect's fresh snapshot)."""
        self._flush_timer.stop()
        self._pending.clear()
        self.beginResetModel()
        rows = list(devices)
        self._arrival = {d.device_id: i for i, d in enumerate(rows)}
        self._ties = {d.device_id: _tie_break(d) for d in rows}
        self._rows = self._ordered(rows)
        self._row_of = {d.device_id: i for i, d in enumerate(self._rows)}
        self.endResetModel()

    def flush(self) -> None:
        """Apply the pending changes: one change notice for the changed rows (one per
        run of adjacent rows, or one span), one insertion for the new devices, then
        one re-sort if the order changed."""
        self._flush_timer.stop()
        self._last_flush = time.monotonic()
        pending, self._pending = self._pending, {}
        if not pending:
            return
        fresh = [d for d in pending.values() if d.device_id not in self._row_of]
        changed: list[int] = []
        for device in pending.values():
            self._ties[device.device_id] = _tie_break(device)
            row = self._row_of.get(device.device_id)
            if row is not None:
                self._rows[row] = device
                changed.append(row)
        changed.sort()
        if changed:
            self._announce_changed(changed)
        first = len(self._rows)
        if fresh:
            self.beginInsertRows(QModelIndex(), first, first + len(fresh) - 1)
            for offset, device in enumerate(fresh):
                self._rows.append(device)
                self._row_of[device.device_id] = first + offset
                self._arrival.setdefault(device.device_id, len(self._arrival))
            self.endInsertRows()
        # Only pairs of neighbours with a changed or new row in them can be out of
        # order: re-sort (a layout change) only if one is, which a snapshot arriving in
        # the sorted order, or a change the sorted column does not see, never is.
        touched = [*changed, *range(first, len(self._rows))]
        if self._sort_column is not None and not self._in_order_around(touched):
            self._reorder()

    def _in_order_around(self, rows: list[int]) -> bool:
        assert self._sort_column is not None
        key = _SORT_VALUE[self._sort_column]
        descending = self._sort_order == Qt.SortOrder.DescendingOrder
        last = len(self._rows) - 1
        for row in rows:
            for a, b in ((row - 1, row), (row, row + 1)):
                if a < 0 or b > last:
                    continue
                before, after = self._rows[a], self._rows[b]
                key_before, key_after = key(before), key(after)
                if key_before != key_after:
                    in_order = key_before > key_after if descending else key_before < key_after
                    if not in_order:
                        return False
                elif self._ties[before.device_id] > self._ties[after.device_id]:
                    return False
        return True

    def _announce_changed(self, rows: list[int]) -> None:
        runs: list[tuple[int, int]] = []
        for row in rows:
            if runs and row == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], row)
            else:
                runs.append((row, row))
        if len(runs) > _MAX_CHANGE_RUNS:
            runs = [(rows[0], rows[-1])]
        for top, bottom in runs:
            self.dataChanged.emit(self.index(top, 0), self.index(bottom, _COLUMNS - 1))

    # -- sorting ----------------------------------------------------------------------

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Order the rows by ``column`` (-1: by arrival), in Python: each device's sort
        value is computed once, then one ``sorted``."""
        wanted = Column(column) if 0 <= column < _COLUMNS else None
        if wanted == self._sort_column and order == self._sort_order:
            return  # the view asks twice per header click; the rows are kept in order
        self._sort_column, self._sort_order = wanted, order
        self._reorder()

    def sort_column(self) -> int:
        """The column the rows are sorted by (-1: arrival order)."""
        return -1 if self._sort_column is None else int(self._sort_column)

    def sort_order(self) -> Qt.SortOrder:
        return self._sort_order

    def _ordered(self, rows: list[DeviceInfo]) -> list[DeviceInfo]:
        if self._sort_column is None:
            arrival = self._arrival
            return sorted(rows, key=lambda d: arrival.get(d.device_id, len(arrival)))
        # Two stable passes: ties stay by name whichever way the column is sorted.
        ties = self._ties
        ordered = sorted(rows, key=lambda d: ties[d.device_id])
        descending = self._sort_order == Qt.SortOrder.DescendingOrder
        ordered.sort(key=_SORT_VALUE[self._sort_column], reverse=descending)
        return ordered

    def _reorder(self) -> None:
        """Put the rows in the sort's order; a layout change if any row moved (the
        view's selection and current row follow their devices)."""
        old = self._rows
        new = self._ordered(old)
        if all(a is b for a, b in zip(new, old, strict=True)):
            return
        # Without arguments: PySide6 (6.11) crashes emitting these with a parent list.
        self.layoutAboutToBeChanged.emit()
        self._rows = new
        self._row_of = {d.device_id: i for i, d in enumerate(new)}
        persistent = self.persistentIndexList()
        if persistent:
            self.changePersistentIndexList(
                persistent,
                [
                    self.index(self._row_of[old[index.row()].device_id], index.column())
                    for index in persistent
                ],
            )
        self.layoutChanged.emit()

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
        return 0 if parent is not None and parent.isValid() else _COLUMNS

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation is Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[Column(section)]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        # The roles the view asks for and we do not answer (font, alignment, colours,
        # size...) return at once: this runs for every cell of every paint.
        if role == _DISPLAY:
            if not index.isValid():
                return None
            return _TEXT[index.column()](self._rows[index.row()])
        if role not in (_DECORATION, _TOOLTIP, _SORT, _DEVICE) or not index.isValid():
            return None
        device = self._rows[index.row()]
        column = index.column()
        if role == _SORT:
            return _SORT_VALUE[column](device)
        if role == _DEVICE:
            return device
        if role == _DECORATION and column == Column.STATUS:
            return QColor(STATUS_COLOURS[device.status])
        if role == _TOOLTIP and column == Column.STATUS:
            modes = ", ".join(m.value for m in device.allowed_modes) or "none"
            return f"{device.status.label}; allowed: {modes}"
        return None


class InventoryProxy(QSortFilterProxyModel):
    """The rows an :class:`InventoryFilter` keeps, in the model's order; sorting (a
    header click) sorts the model."""

    def __init__(self, source: InventoryModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._source = source
        self._filter = InventoryFilter()
        #: The filter keeps every device: rows are accepted without asking it (the
        #: proxy asks for every row after each re-sort).
        self._keeps_all = True
        self.setSourceModel(source)
        self.setSortRole(SORT_ROLE)
        # Re-filter the rows that change (a device going offline leaves an "online
        # only" view at once). The proxy's own sort column stays -1: it never sorts.
        self.setDynamicSortFilter(True)

    @property
    def inventory_filter(self) -> InventoryFilter:
        return self._filter

    def set_filter(self, new: InventoryFilter) -> None:
        if new == self._filter:
            return
        self.beginFilterChange()
        self._filter = new
        self._keeps_all = new == InventoryFilter()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        return self._keeps_all or self._filter.matches(self._source.device_at(source_row))

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Called by the view (sortByColumn, a header click): the model sorts, in
        Python; this proxy keeps the model's order (see the module's docstring)."""
        self._source.sort(column, order)

    def sortColumn(self) -> int:
        return self._source.sort_column()

    def sortOrder(self) -> Qt.SortOrder:
        return self._source.sort_order()

    def device_at(self, row: int) -> DeviceInfo:
        return self._source.device_at(self.mapToSource(self.index(row, 0)).row())

    def row_of(self, device_id: str) -> int | None:
        source_row = self._source.row_of(device_id)
        if source_row is None:
            return None
        proxy = self.mapFromSource(self._source.index(source_row, 0))
        return proxy.row() if proxy.isValid() else None
