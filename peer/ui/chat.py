"""The chat of a call as Qt widgets: a list model over a ``ChatLog``, a bubble view
and the panel both call ends embed.

- :class:`ChatListModel` mirrors one :class:`peer.chat.ChatLog` through its listeners:
  a new entry appends a row, a changed one (a receipt) updates its row in place, a
  cleared log empties the model.
- :class:`ChatView` paints each row as a bubble (own messages on the right, the peer's
  on the left) with the receipt checks of own messages (:func:`check_marks`).
- :class:`ChatPanel` adds the "… is typing" line and the input, and says what the
  user did through signals: ``send_requested``, ``typing_changed`` and ``seen``. The
  call window connects them to ``Call.send_chat``, ``send_typing`` and ``mark_read``.

Message text and names come from the peer, so they are shown as plain text only:
the delegate lays text out with ``QTextLayout`` (which has no markup) and every label
is set to ``Qt.PlainText``; ``<b>x</b>`` shows those eight characters.

``seen`` reports incoming messages the user could actually see (read receipts turn
the peer's checks blue): rows at least half inside the list's visible area, while
the panel is shown and its window is the active one, not minimized. Each id is
reported once per log.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import time
import unicodedata
from collections.abc import Callable
from enum import IntEnum
from typing import get_args

from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPointF,
    QRect,
    QRectF,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QFocusEvent,
    QFont,
    QFontMetrics,
    QGuiApplication,
    QHideEvent,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QResizeEvent,
    QShowEvent,
    QTextLayout,
    QTextOption,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QPushButton,
    QSizePolicy,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from peer.chat import ChatEntry, ChatLog, DeliveryState
from peer.typing import TYPING_IDLE_S, TypingTracker
from peer.ui import theme
from peer.ui.text import display_name, display_text
from protocol.fields import UserText

#: The protocol's limit for one chat message (``protocol.fields.UserText``).
MAX_MESSAGE_CHARS: int = get_args(UserText)[1].max_len

#: How own messages are attributed in what a screen reader says.
OWN_LABEL = "You"

_STATE_WORDS = {
    DeliveryState.SENT: "Sent",
    DeliveryState.DELIVERED: "Delivered",
    DeliveryState.READ: "Read",
}

_CHECK_MARKS = {
    DeliveryState.SENT: ("✓", theme.CHECK_GRAY),
    DeliveryState.DELIVERED: ("✓✓", theme.CHECK_GRAY),
    DeliveryState.READ: ("✓✓", theme.CHECK_BLUE),
}


def check_marks(state: DeliveryState) -> tuple[str, str]:
    """The checks an own message shows, as text and ``#RRGGBB`` colour: one gray check
    = sent, two gray = delivered, two blue = read. The delegate paints as many checks
    as the text has, in that colour."""
    return _CHECK_MARKS[state]


def time_text(sent_at_ms: int) -> str:
    """``HH:MM`` in local time, as a bubble shows it."""
    return datetime.datetime.fromtimestamp(sent_at_ms / 1000).strftime("%H:%M")


def accessible_text(entry: ChatEntry, own_label: str = OWN_LABEL) -> str:
    """What a screen reader says for a message: "You, 10:42: Hello. Read"; the
    delivery state only for own messages, the only ones that show checks."""
    who = own_label if entry.outgoing else entry.author
    sentence = f"{who}, {time_text(entry.sent_at_ms)}: {entry.text}"
    return f"{sentence}. {_STATE_WORDS[entry.state]}" if entry.outgoing else sentence


def outgoing_text(raw: str) -> str | None:
    """The message to send for what was typed, or None when there is nothing to send.

    Surrounding whitespace is dropped, and with it a message of blanks only; control
    characters the protocol refuses (all but tab and newlines, which a paste can
    bring) are removed, so a send never fails on what the user cannot see.
    """
    cleaned = "".join(
        ch for ch in raw if ch in "\t\n\r" or unicodedata.category(ch) not in ("Cc", "Cs")
    ).strip()
    return cleaned[:MAX_MESSAGE_CHARS] or None


# -- model ------------------------------------------------------------------------------

_USER_ROLE = int(Qt.ItemDataRole.UserRole)


class ChatRole(IntEnum):
    """Model roles beyond Qt's own (DisplayRole = the text, AccessibleTextRole = what
    a screen reader says)."""

    AUTHOR = _USER_ROLE + 1
    TIME = _USER_ROLE + 2  # "HH:MM", local time
    SENT_AT_MS = _USER_ROLE + 3
    OUTGOING = _USER_ROLE + 4
    STATE = _USER_ROLE + 5  # DeliveryState
    MESSAGE_ID = _USER_ROLE + 6
    ENTRY = _USER_ROLE + 7  # the ChatEntry itself


def _row_data(own_label: str) -> dict[int, Callable[[ChatEntry], object]]:
    return {
        int(Qt.ItemDataRole.DisplayRole): lambda e: e.text,
        int(Qt.ItemDataRole.AccessibleTextRole): lambda e: accessible_text(e, own_label),
        ChatRole.AUTHOR: lambda e: e.author,
        ChatRole.TIME: lambda e: time_text(e.sent_at_ms),
        ChatRole.SENT_AT_MS: lambda e: e.sent_at_ms,
        ChatRole.OUTGOING: lambda e: e.outgoing,
        ChatRole.STATE: lambda e: e.state,
        ChatRole.MESSAGE_ID: lambda e: e.message_id,
        ChatRole.ENTRY: lambda e: e,
    }


def _unsubscribe_all(unsubscribes: list[Callable[[], None]], *_: object) -> None:
    for unsubscribe in unsubscribes:
        unsubscribe()
    unsubscribes.clear()


class ChatListModel(QAbstractListModel):
    """The rows of one ``ChatLog``, oldest first, kept in step through its listeners.

    A row is keyed by (direction, message id), as the log keys its entries: the two
    sides choose ids independently, so the same id may exist in both directions.
    """

    def __init__(
        self,
        log: ChatLog | None = None,
        *,
        own_label: str = OWN_LABEL,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._log: ChatLog | None = None
        self._rows: list[ChatEntry] = []
        self._row_of: dict[tuple[bool, str], int] = {}
        self._data = _row_data(own_label)
        self._unsubscribes: list[Callable[[], None]] = []
        # A log outliving this model must not call into a deleted C++ object; the
        # partial holds the list, not self, so it still runs during destruction.
        self.destroyed.connect(functools.partial(_unsubscribe_all, self._unsubscribes))
        self.set_log(log)

    @property
    def log(self) -> ChatLog | None:
        return self._log

    def set_log(self, log: ChatLog | None) -> None:
        """Show ``log`` (None: nothing), leaving the previous log's listeners."""
        _unsubscribe_all(self._unsubscribes)
        self.beginResetModel()
        self._log = log
        self._rows = log.entries() if log is not None else []
        self._reindex()
        self.endResetModel()
        if log is not None:
            self._unsubscribes += [
                log.listeners.add(self._on_entry),
                log.clear_listeners.add(self._on_clear),
            ]

    def entry_at(self, row: int) -> ChatEntry:
        return self._rows[row]

    def row_of(self, message_id: str, *, outgoing: bool) -> int | None:
        return self._row_of.get((outgoing, message_id))

    # -- QAbstractListModel ---------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        value = self._data.get(int(role))
        return value(self._rows[index.row()]) if value is not None else None

    # -- the log's listeners ------------------------------------------------------------

    def _on_entry(self, entry: ChatEntry) -> None:
        # The peer typed the text and chose the name: shown display-safe (bidi
        # controls escaped, capped; peer.ui.text) by every role of the model.
        entry = dataclasses.replace(
            entry, text=display_text(entry.text), author=display_name(entry.author)
        )
        key = (entry.outgoing, entry.message_id)
        row = self._row_of.get(key)
        if row is None:
            row = len(self._rows)
            self.beginInsertRows(QModelIndex(), row, row)
            self._rows.append(entry)
            self._row_of[key] = row
            self.endInsertRows()
        else:
            self._rows[row] = entry
            changed = self.index(row)
            self.dataChanged.emit(changed, changed)

    def _on_clear(self, _: None) -> None:
        self.beginResetModel()
        self._rows = []
        self._reindex()
        self.endResetModel()

    def _reindex(self) -> None:
        self._row_of = {(e.outgoing, e.message_id): row for row, e in enumerate(self._rows)}


# -- bubbles ------------------------------------------------------------------------------

#: Bubble geometry, in device-independent pixels.
_SIDE_MARGIN = 12  # between a bubble and the list's edge
_ROW_GAP = 3  # above and below each bubble
_PADDING_X = 12
_PADDING_Y = 8
_RADIUS = 12
_MAX_WIDTH_FRACTION = 0.78  # of the list's width, so the two sides stay apparent
_META_GAP = 6  # between the time and the checks
_FOCUS_RING_PX = 2
_CHECK_STEP = 0.5  # offset of the second check, as a fraction of a check's width


def _plain_lines(text: str) -> str:
    """QTextLayout breaks lines only at U+2028 (QPainter.drawText makes the same
    substitution for "\\n" before laying out)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\u2028")


def _lay_out(text: str, font: QFont, width: float) -> tuple[QTextLayout, QSize]:
    """``text`` as plain text wrapped to ``width``: at word boundaries, or anywhere in
    a word too long for a line (a pasted link must not run out of its bubble)."""
    layout = QTextLayout(_plain_lines(text), font)
    option = QTextOption()
    option.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
    layout.setTextOption(option)
    layout.beginLayout()
    height = 0.0
    widest = 0.0
    while True:
        line = layout.createLine()
        if not line.isValid():
            break
        line.setLineWidth(width)
        line.setPosition(QPointF(0, height))
        height += line.height()
        widest = max(widest, line.naturalTextWidth())
    layout.endLayout()
    return layout, QSize(math.ceil(widest), math.ceil(height))


@dataclasses.dataclass
class _Bubble:
    """Where everything of one row goes, relative to the row's top-left corner."""

    rect: QRect
    author: str  # elided; empty when not shown
    author_font: QFont
    author_rect: QRect
    text_layout: QTextLayout
    text_origin: QPointF
    meta_font: QFont
    meta_rect: QRect  # the time, then the checks of an own message
    checks_width: int


def _check_path(count: int, size: float) -> QPainterPath:
    """``count`` check marks side by side, each ``size`` wide, drawn as strokes so
    they look the same whatever fonts the device has. A later check's short stroke is
    cut short, or at small sizes the pair would read as a "W" rather than two checks."""
    path = QPainterPath()
    for i in range(count):
        x = i * size * _CHECK_STEP
        path.moveTo(x + (size * 0.2 if i else 0), size * (0.72 if i else 0.52))
        path.lineTo(x + size * 0.35, size * 0.9)
        path.lineTo(x + size, size * 0.1)
    return path


def _scaled(font: QFont, factor: float) -> QFont:
    """``font`` made ``factor`` times as large, whether sized in points or pixels."""
    scaled = QFont(font)
    if font.pointSizeF() > 0:
        scaled.setPointSizeF(font.pointSizeF() * factor)
    else:
        scaled.setPixelSize(max(round(font.pixelSize() * factor), 1))
    return scaled


def _check_size(metrics: QFontMetrics) -> float:
    """A little taller than the digits of the time: smaller, two checks blur into one."""
    return metrics.ascent() * 1.1


def _checks_width(count: int, size: float) -> int:
    return math.ceil(size + (count - 1) * size * _CHECK_STEP)


class BubbleDelegate(QStyledItemDelegate):
    """Paints a :class:`ChatListModel` row as a chat bubble; see the module docstring
    for why it lays text out with ``QTextLayout``."""

    def __init__(self, view: QListView) -> None:
        super().__init__(view)
        self._view = view

    def sizeHint(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QSize:
        bubble = self._bubble(option, index)
        return QSize(self._row_width(), bubble.rect.bottom() + 1 + _ROW_GAP)

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        entry = index.data(ChatRole.ENTRY)
        if not isinstance(entry, ChatEntry):
            return
        bubble = self._bubble(option, index)
        painter.save()
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.translate(option.rect.topLeft())
            self._paint_background(painter, bubble, entry, option)
            if bubble.author:
                painter.setFont(bubble.author_font)
                painter.setPen(QColor(theme.SECONDARY_TEXT))
                painter.drawText(
                    bubble.author_rect,
                    Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
                    bubble.author,
                )
            painter.setPen(QColor(theme.TEXT))
            bubble.text_layout.draw(painter, bubble.text_origin)
            self._paint_meta(painter, bubble, entry)
        finally:
            painter.restore()

    # -- internals ----------------------------------------------------------------------

    def _row_width(self) -> int:
        return max(self._view.viewport().width(), 1)

    def _wrap_basis(self) -> int:
        """The width bubbles wrap in: the list's width less a scroll bar, whether or
        not one is shown. Heights then do not change when the bar comes and goes,
        which would lay the list out again and could make the bar come and go."""
        view = self._view
        bar = view.verticalScrollBar().sizeHint().width()
        return max(view.contentsRect().width() - bar, 1)

    def _bubble(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> _Bubble:
        entry = index.data(ChatRole.ENTRY)
        assert isinstance(entry, ChatEntry)
        font = QFont(option.font)
        meta_font = _scaled(font, 0.85)
        author_font = QFont(meta_font)
        author_font.setBold(True)

        basis = self._wrap_basis()
        max_inner = max(
            int(min(basis * _MAX_WIDTH_FRACTION, basis - 2 * _SIDE_MARGIN)) - 2 * _PADDING_X,
            40,
        )
        author = ""
        author_height = 0
        if not entry.outgoing and self._starts_run(index, entry):
            author_metrics = QFontMetrics(author_font)
            author = author_metrics.elidedText(entry.author, Qt.TextElideMode.ElideRight, max_inner)
            author_height = author_metrics.height() + 2
        author_width = QFontMetrics(author_font).horizontalAdvance(author) if author else 0

        layout, text_size = _lay_out(entry.text, font, max_inner)
        meta_metrics = QFontMetrics(meta_font)
        checks_width = (
            _checks_width(len(check_marks(entry.state)[0]), _check_size(meta_metrics))
            if entry.outgoing
            else 0
        )
        meta_width = meta_metrics.horizontalAdvance(time_text(entry.sent_at_ms))
        if checks_width:
            meta_width += _META_GAP + checks_width
        inner_width = min(max(text_size.width(), author_width, meta_width), max_inner)
        inner_height = author_height + text_size.height() + meta_metrics.height()

        width = inner_width + 2 * _PADDING_X
        left = self._row_width() - _SIDE_MARGIN - width if entry.outgoing else _SIDE_MARGIN
        rect = QRect(left, _ROW_GAP, width, inner_height + 2 * _PADDING_Y)
        text_top = rect.top() + _PADDING_Y + author_height
        meta_rect = QRect(
            rect.right() + 1 - _PADDING_X - meta_width,
            text_top + text_size.height(),
            meta_width,
            meta_metrics.height(),
        )
        return _Bubble(
            rect=rect,
            author=author,
            author_font=author_font,
            author_rect=QRect(
                rect.left() + _PADDING_X, rect.top() + _PADDING_Y, inner_width, author_height
            ),
            text_layout=layout,
            text_origin=QPointF(rect.left() + _PADDING_X, text_top),
            meta_font=meta_font,
            meta_rect=meta_rect,
            checks_width=checks_width,
        )

    @staticmethod
    def _starts_run(index: QModelIndex | QPersistentModelIndex, entry: ChatEntry) -> bool:
        """The author's name heads only the first of consecutive messages by them."""
        if index.row() == 0:
            return True
        previous = index.model().index(index.row() - 1, 0).data(ChatRole.ENTRY)
        return not (
            isinstance(previous, ChatEntry)
            and not previous.outgoing
            and previous.author == entry.author
        )

    @staticmethod
    def _paint_background(
        painter: QPainter, bubble: _Bubble, entry: ChatEntry, option: QStyleOptionViewItem
    ) -> None:
        rect = QRectF(bubble.rect).adjusted(0.5, 0.5, -0.5, -0.5)
        if entry.outgoing:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(theme.OWN_BUBBLE))
        else:
            painter.setPen(QPen(QColor(theme.PEER_BUBBLE_BORDER), 1))
            painter.setBrush(QColor(theme.PEER_BUBBLE))
        painter.drawRoundedRect(rect, _RADIUS, _RADIUS)
        # Keyboard users move through messages with the arrow keys (a screen reader
        # reads the current one): the current bubble gets a ring.
        if option.state & QStyle.StateFlag.State_HasFocus:
            painter.setPen(QPen(QColor(theme.FOCUS_RING), _FOCUS_RING_PX))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            ring = _FOCUS_RING_PX / 2 + 1
            painter.drawRoundedRect(
                rect.adjusted(-ring, -ring, ring, ring), _RADIUS + ring, _RADIUS + ring
            )

    @staticmethod
    def _paint_meta(painter: QPainter, bubble: _Bubble, entry: ChatEntry) -> None:
        painter.setFont(bubble.meta_font)
        painter.setPen(QColor(theme.SECONDARY_TEXT))
        time_rect = bubble.meta_rect.adjusted(
            0, 0, -(bubble.checks_width + _META_GAP if bubble.checks_width else 0), 0
        )
        painter.drawText(
            time_rect,
            Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
            time_text(entry.sent_at_ms),
        )
        if not entry.outgoing:
            return
        marks, colour = check_marks(entry.state)
        size = _check_size(QFontMetrics(bubble.meta_font))
        path = _check_path(len(marks), size)
        painter.translate(
            bubble.meta_rect.right() + 1 - bubble.checks_width,
            bubble.meta_rect.center().y() - size / 2 + 1,
        )
        pen = QPen(QColor(colour), max(size / 7, 1.4))
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(path)


class ChatView(QListView):
    """The messages of a :class:`ChatListModel` as bubbles, newest at the bottom.

    It follows new messages while the user is at the bottom (and always after they
    send one), and stays put while they read further up. ``visible_rows_changed``
    fires whenever the rows on screen may have changed.
    """

    visible_rows_changed = Signal()

    def __init__(self, model: ChatListModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._chat_model = model
        self._follow_tail = True
        self.setModel(model)
        self.setItemDelegate(BubbleDelegate(self))
        self.setObjectName("chatMessages")
        self.setAccessibleName("Chat messages")
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalScrollBar().setSingleStep(24)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Bubble heights depend on the width: lay out again on every resize (with
        # word wrap set, QListView does so for a change of width too).
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setWordWrap(True)
        self.setUniformItemSizes(False)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

        model.rowsAboutToBeInserted.connect(self._remember_if_at_bottom)
        model.rowsInserted.connect(self._on_rows_inserted)
        model.modelReset.connect(self.visible_rows_changed)
        self.verticalScrollBar().valueChanged.connect(self.visible_rows_changed)

    @property
    def chat_model(self) -> ChatListModel:
        return self._chat_model

    def is_at_bottom(self) -> bool:
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum()

    def visible_rows(self) -> list[int]:
        """Rows at least half visible (or, for one taller than the list, filling at
        least half of it) in the part of the list that is on screen."""
        self.executeDelayedItemsLayout()
        viewport = self.viewport()
        area = viewport.visibleRegion().boundingRect() & viewport.rect()
        if area.isEmpty():
            return []
        rows = []
        for row in range(self._chat_model.rowCount()):
            rect = self.visualRect(self._chat_model.index(row))
            if rect.top() > area.bottom():
                break  # rows run top to bottom: the rest are below
            shown = rect & area
            if not shown.isEmpty() and shown.height() * 2 >= min(rect.height(), area.height()):
                rows.append(row)
        return rows

    # -- Qt events ----------------------------------------------------------------------

    def resizeEvent(self, event: QResizeEvent) -> None:
        at_bottom = self.is_at_bottom()
        super().resizeEvent(event)
        # Re-wrapping changes heights; Qt would wait 100 ms to lay out again, and
        # the newest message would meanwhile slip out of view.
        self.executeDelayedItemsLayout()
        if at_bottom:
            self.scrollToBottom()
        self.visible_rows_changed.emit()

    def focusInEvent(self, event: QFocusEvent) -> None:
        # Qt would make the first message current and scroll up to it; the newest
        # one on screen is where a keyboard user expects to start.
        if not self.currentIndex().isValid() and (rows := self.visible_rows()):
            self.selectionModel().setCurrentIndex(
                self._chat_model.index(rows[-1]),
                self.selectionModel().SelectionFlag.NoUpdate,
            )
        super().focusInEvent(event)

    # -- internals ----------------------------------------------------------------------

    def _remember_if_at_bottom(self, *_: object) -> None:
        self._follow_tail = self.is_at_bottom()

    def _on_rows_inserted(self, _parent: QModelIndex, first: int, last: int) -> None:
        sent_by_us = any(self._chat_model.entry_at(row).outgoing for row in range(first, last + 1))
        if self._follow_tail or sent_by_us:
            self.executeDelayedItemsLayout()
            self.scrollToBottom()
        self.visible_rows_changed.emit()


# -- panel --------------------------------------------------------------------------------

_STYLE = f"""
ChatPanel {{ background: {theme.WINDOW_BACKGROUND}; }}
QListView#chatMessages {{ background: {theme.WINDOW_BACKGROUND}; border: none; }}
QLabel#typingIndicator {{ color: {theme.SECONDARY_TEXT}; font-style: italic; padding: 0 14px; }}
QLineEdit#messageInput {{
    background: {theme.INPUT_BACKGROUND}; color: {theme.TEXT};
    border: 1px solid {theme.INPUT_BORDER}; border-radius: 10px; padding: 0 12px;
}}
QLineEdit#messageInput:focus {{ border: 2px solid {theme.FOCUS_RING}; padding: 0 11px; }}
QPushButton#sendButton {{
    background: {theme.ACCENT}; color: {theme.ON_ACCENT}; font-weight: bold;
    border: 2px solid {theme.ACCENT}; border-radius: 10px; padding: 0 20px;
}}
QPushButton#sendButton:hover {{
    background: {theme.ACCENT_HOVER}; border-color: {theme.ACCENT_HOVER};
}}
QPushButton#sendButton:pressed {{
    background: {theme.ACCENT_PRESSED}; border-color: {theme.ACCENT_PRESSED};
}}
QPushButton#sendButton:focus {{ border: 3px solid {theme.BUTTON_FOCUS_RING}; }}
"""


class ChatPanel(QWidget):
    """The chat of a call: messages, "… is typing", and an input with a Send button.

    Signals:
        send_requested(str): the user sent this text (trimmed, never blank).
        typing_changed(bool): the user started (True) or stopped (False) typing;
            stopped after :data:`peer.typing.TYPING_IDLE_S` without a keystroke,
            or when the text was sent or cleared.
        seen(list[str]): ids of incoming messages that just became visible to the
            user (see the module docstring); each id once per log.
    """

    send_requested = Signal(str)
    typing_changed = Signal(bool)
    seen = Signal(list)

    def __init__(
        self,
        log: ChatLog | None = None,
        *,
        peer_name: str = "",
        own_label: str = OWN_LABEL,
        clock: Callable[[], float] = time.monotonic,
        typing_idle_s: float = TYPING_IDLE_S,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground)
        self.setStyleSheet(_STYLE)
        self._log_unsubscribes: list[Callable[[], None]] = []
        self.destroyed.connect(functools.partial(_unsubscribe_all, self._log_unsubscribes))
        self._reported: set[str] = set()

        self._model = ChatListModel(own_label=own_label, parent=self)
        self._view = ChatView(self._model, self)

        self._typing_label = QLabel(self)
        self._typing_label.setObjectName("typingIndicator")
        self._typing_label.setTextFormat(Qt.TextFormat.PlainText)  # the name is the peer's
        policy = self._typing_label.sizePolicy()
        policy.setRetainSizeWhenHidden(True)  # no jump of the list when it comes and goes
        self._typing_label.setSizePolicy(policy)
        self._typing_label.hide()

        self._input = QLineEdit(self)
        self._input.setObjectName("messageInput")
        self._input.setAccessibleName("Message")
        self._input.setPlaceholderText("Type a message")
        self._input.setMaxLength(MAX_MESSAGE_CHARS)
        self._input.setMinimumHeight(theme.TOUCH_TARGET_PX)
        palette = self._input.palette()
        palette.setColor(QPalette.ColorRole.PlaceholderText, QColor(theme.SECONDARY_TEXT))
        self._input.setPalette(palette)

        self._send_button = QPushButton("Send", self)
        self._send_button.setObjectName("sendButton")
        self._send_button.setAccessibleName("Send message")
        self._send_button.setMinimumSize(theme.TOUCH_TARGET_PX * 2, theme.TOUCH_TARGET_PX)
        self._send_button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self._send_button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        # Enter on the focused button sends, as Space does.
        self._send_button.setAutoDefault(True)

        input_row = QHBoxLayout()
        input_row.setContentsMargins(12, 4, 12, 12)
        input_row.setSpacing(8)
        input_row.addWidget(self._input, 1)
        input_row.addWidget(self._send_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self._view, 1)
        layout.addWidget(self._typing_label)
        layout.addLayout(input_row)
        QWidget.setTabOrder(self._view, self._input)
        QWidget.setTabOrder(self._input, self._send_button)

        self._tracker = TypingTracker(idle_s=typing_idle_s, clock=clock)
        self._tracker.changed.add(self._on_typing_changed)
        self._typing_timer = QTimer(self)
        self._typing_timer.setSingleShot(True)
        self._typing_timer.timeout.connect(self.poll_typing)

        # Many triggers (scroll, resize, new rows, activation) coalesce into one
        # check once Qt is idle, after the list has laid itself out.
        self._seen_timer = QTimer(self)
        self._seen_timer.setSingleShot(True)
        self._seen_timer.setInterval(0)
        self._seen_timer.timeout.connect(self.report_seen)

        self._input.returnPressed.connect(self._send)
        self._send_button.clicked.connect(self._send)
        self._input.textEdited.connect(self._tracker.edited)
        self._input.textChanged.connect(self._on_text_changed)
        self._view.visible_rows_changed.connect(self._seen_timer.start)
        # Activation reaches widgets as WindowActivate (see event()), but not when
        # only the focus window changes (see can_see()).
        app = QGuiApplication.instance()
        if isinstance(app, QGuiApplication):
            app.focusWindowChanged.connect(self._seen_timer.start)

        self.set_peer_name(peer_name)
        self.set_log(log)

    # -- what the call window uses --------------------------------------------------------

    @property
    def model(self) -> ChatListModel:
        return self._model

    @property
    def view(self) -> ChatView:
        return self._view

    @property
    def input(self) -> QLineEdit:
        """The line the user writes in."""
        return self._input

    @property
    def send_button(self) -> QPushButton:
        return self._send_button

    @property
    def typing_label(self) -> QLabel:
        return self._typing_label

    @property
    def typing(self) -> bool:
        """Is the user typing, as last told through ``typing_changed``?"""
        return self._tracker.active

    def set_log(self, log: ChatLog | None) -> None:
        """Show ``log`` (None: nothing). Ids reported by ``seen`` start afresh."""
        _unsubscribe_all(self._log_unsubscribes)
        self._reported.clear()
        self._model.set_log(log)
        self._typing_label.setVisible(log is not None and log.peer_typing)
        if log is not None:
            self._log_unsubscribes += [
                log.typing_listeners.add(self._typing_label.setVisible),
                log.clear_listeners.add(self._on_log_cleared),
            ]
        self._seen_timer.start()

    def set_peer_name(self, name: str) -> None:
        """Whose typing the "… is typing" line announces."""
        self._typing_label.setText(f"{display_name(name)} is typing…" if name else "Typing…")

    def poll_typing(self) -> None:
        """End "typing" if the user has paused long enough (the idle timer's slot)."""
        self._tracker.poll()
        remaining = self._tracker.seconds_until_idle()
        if remaining is not None:
            self._typing_timer.start(max(math.ceil(remaining * 1000), 1))

    def can_see(self) -> bool:
        """Could the user see this panel right now: shown, in the active window, and
        that window not minimized?

        The window counts as active when either Qt layer says so: QApplication's
        active window is left unset after a window is hidden and shown again on some
        platforms (the offscreen one, for one) while its QWindow is the focus window.
        """
        window = self.window()
        handle = window.windowHandle()
        active = self.isActiveWindow() or (handle is not None and handle.isActive())
        return self.isVisible() and active and not window.isMinimized()

    def report_seen(self) -> None:
        """Emit ``seen`` for incoming messages now on screen not reported before."""
        if not self.can_see():
            return
        fresh = []
        for row in self._view.visible_rows():
            entry = self._model.entry_at(row)
            if (
                not entry.outgoing
                and entry.state < DeliveryState.READ
                and entry.message_id not in self._reported
            ):
                fresh.append(entry.message_id)
        if fresh:
            self._reported.update(fresh)
            self.seen.emit(fresh)

    # -- Qt events ----------------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._seen_timer.start()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._seen_timer.stop()

    def event(self, event: QEvent) -> bool:
        # Qt passes the window's activation on to every visible child widget.
        if event.type() == QEvent.Type.WindowActivate:
            self._seen_timer.start()
        return super().event(event)

    # -- internals ----------------------------------------------------------------------

    def _send(self) -> None:
        text = outgoing_text(self._input.text())
        if text is None:
            return
        self._input.clear()  # ends "typing" through textChanged
        self.send_requested.emit(text)

    def _on_text_changed(self, text: str) -> None:
        # textEdited misses a clear by code; blank text ends typing however it came.
        if not text.strip():
            self._tracker.stop()

    def _on_typing_changed(self, active: bool) -> None:
        if active:
            self._typing_timer.start(math.ceil(self._tracker.idle_s * 1000))
        else:
            self._typing_timer.stop()
        self.typing_changed.emit(active)

    def _on_log_cleared(self, _: None) -> None:
        self._reported.clear()
        self._typing_label.hide()
