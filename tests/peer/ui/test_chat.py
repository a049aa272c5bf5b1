"""The chat widgets over a real ``ChatLog``: the model follows the log, bubbles show
markup as the characters typed, the panel sends and tells typing, and ``seen``
reports only messages on screen in a visible, active window.

Built as napari tests its views: the model first, then the view, then change the
model and look at the view.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from PySide6.QtCore import QEvent, QRect, Qt
from PySide6.QtGui import QColor, QFontMetrics, QImage, QTextDocument
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLabel, QVBoxLayout, QWidget
from pytestqt.qtbot import QtBot

from peer.chat import ChatEntry, ChatLog, DeliveryState
from peer.ui import theme
from peer.ui.chat import (
    MAX_MESSAGE_CHARS,
    ChatListModel,
    ChatPanel,
    ChatRole,
    ChatView,
    accessible_text,
    check_marks,
    outgoing_text,
    time_text,
)
from protocol.enums import ReceiptState

T0 = 1_700_000_000_000  # ms since the epoch
MARKUP = '<b>x</b> <img src="file:///etc/hostname">'


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _ids() -> Iterator[str]:
    return (f"m{i}" for i in itertools.count())


def add_in(log: ChatLog, message_id: str, text: str = "hello", author: str = "Alex") -> ChatEntry:
    return log.add_incoming(message_id=message_id, author=author, text=text, sent_at_ms=T0)


def add_out(log: ChatLog, message_id: str, text: str = "hi") -> ChatEntry:
    return log.add_outgoing(message_id=message_id, author="Dana", text=text, sent_at_ms=T0)


def settle() -> None:
    """Let zero-delay timers and posted events run (no waiting on the clock)."""
    for _ in range(3):
        QApplication.processEvents()


@pytest.fixture
def log() -> ChatLog:
    return ChatLog()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def window(qtbot: QtBot) -> QWidget:
    """The call window the panel sits in."""
    w = QWidget()
    qtbot.addWidget(w)
    QVBoxLayout(w).setContentsMargins(0, 0, 0, 0)
    w.resize(400, 320)
    return w


@pytest.fixture
def panel(qtbot: QtBot, window: QWidget, log: ChatLog, clock: FakeClock) -> ChatPanel:
    p = ChatPanel(log, peer_name="Alex", clock=clock)
    layout = window.layout()
    assert layout is not None
    layout.addWidget(p)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(p.isActiveWindow)
    return p


# -- helpers ------------------------------------------------------------------------------


def test_check_marks() -> None:
    assert check_marks(DeliveryState.SENT) == ("✓", theme.CHECK_GRAY)
    assert check_marks(DeliveryState.DELIVERED) == ("✓✓", theme.CHECK_GRAY)
    assert check_marks(DeliveryState.READ) == ("✓✓", theme.CHECK_BLUE)


def test_accessible_text(log: ChatLog) -> None:
    out = add_out(log, "a", "On my way")
    incoming = add_in(log, "b", "Thanks")
    at = time_text(T0)
    assert accessible_text(out) == f"You, {at}: On my way. Sent"
    assert accessible_text(incoming) == f"Alex, {at}: Thanks"
    read = log.apply_receipt(["a"], ReceiptState.READ)[0]
    assert accessible_text(read, own_label="Me") == f"Me, {at}: On my way. Read"


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ("hello", "hello"),
        ("  hello \t", "hello"),
        ("", None),
        ("   \t ", None),
        ("a\x00b\x1bc\x7f", "abc"),  # controls the protocol refuses
        ("one\ttwo", "one\ttwo"),
        ("x" * (MAX_MESSAGE_CHARS + 5), "x" * MAX_MESSAGE_CHARS),
    ],
)
def test_outgoing_text(typed: str, sent: str | None) -> None:
    assert outgoing_text(typed) == sent


def test_max_length_is_the_protocols() -> None:
    assert MAX_MESSAGE_CHARS == 4000


# -- the model ----------------------------------------------------------------------------


def test_the_model_starts_from_the_log_and_follows_it(qtbot: QtBot, log: ChatLog) -> None:
    add_in(log, "m1", "first")
    model = ChatListModel(log)
    assert model.rowCount() == 1

    with qtbot.waitSignal(model.rowsInserted) as inserted:
        add_out(log, "m1", "same id, other direction")
    assert inserted.args is not None
    assert inserted.args[1:] == [1, 1]
    add_in(log, "m2", "third")
    assert model.rowCount() == 3

    rows = [model.index(r) for r in range(3)]
    assert [i.data() for i in rows] == ["first", "same id, other direction", "third"]
    assert [i.data(ChatRole.OUTGOING) for i in rows] == [False, True, False]
    assert [i.data(ChatRole.MESSAGE_ID) for i in rows] == ["m1", "m1", "m2"]
    assert rows[0].data(ChatRole.AUTHOR) == "Alex"
    assert rows[0].data(ChatRole.TIME) == time_text(T0)
    assert rows[0].data(ChatRole.SENT_AT_MS) == T0
    assert rows[1].data(ChatRole.STATE) is DeliveryState.SENT
    assert rows[1].data(Qt.ItemDataRole.AccessibleTextRole) == (
        f"You, {time_text(T0)}: same id, other direction. Sent"
    )
    assert model.row_of("m1", outgoing=True) == 1
    assert model.row_of("m1", outgoing=False) == 0
    assert model.data(model.index(7)) is None


def test_receipts_update_the_row_in_place_gray_then_blue(qtbot: QtBot, log: ChatLog) -> None:
    model = ChatListModel(log)
    add_out(log, "a")
    add_out(log, "b")
    index = model.index(0)

    def colour() -> str:
        return check_marks(index.data(ChatRole.STATE))[1]

    assert check_marks(index.data(ChatRole.STATE))[0] == "✓"
    with qtbot.waitSignal(model.dataChanged) as changed:
        log.apply_receipt(["a"], ReceiptState.DELIVERED)
    assert changed.args is not None
    assert changed.args[0].row() == changed.args[1].row() == 0
    assert index.data(ChatRole.STATE) is DeliveryState.DELIVERED
    assert check_marks(index.data(ChatRole.STATE))[0] == "✓✓"
    assert colour() == theme.CHECK_GRAY

    log.apply_receipt(["a"], ReceiptState.READ)
    assert index.data(ChatRole.STATE) is DeliveryState.READ
    assert colour() == theme.CHECK_BLUE
    assert model.rowCount() == 2
    assert model.index(1).data(ChatRole.STATE) is DeliveryState.SENT


def test_clear_empties_the_model(qtbot: QtBot, log: ChatLog) -> None:
    model = ChatListModel(log)
    add_in(log, "a")
    add_out(log, "b")
    with qtbot.waitSignal(model.modelReset):
        log.clear()
    assert model.rowCount() == 0
    add_in(log, "a")  # the same id again, after the clear
    assert model.rowCount() == 1


def test_set_log_switches_and_unsubscribes(log: ChatLog) -> None:
    model = ChatListModel(log)
    assert len(log.listeners) == len(log.clear_listeners) == 1
    other = ChatLog()
    add_in(other, "x")
    model.set_log(other)
    assert model.log is other
    assert model.rowCount() == 1
    assert len(log.listeners) == len(log.clear_listeners) == 0
    add_in(log, "ignored")
    assert model.rowCount() == 1
    model.set_log(None)
    assert model.rowCount() == 0
    assert len(other.listeners) == 0


def test_a_deleted_panel_leaves_the_log(qtbot: QtBot, log: ChatLog) -> None:
    p = ChatPanel(log)
    assert len(log.listeners) == len(log.typing_listeners) == 1
    p.deleteLater()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert len(log.listeners) == len(log.typing_listeners) == len(log.clear_listeners) == 0
    add_in(log, "after")  # nothing calls into the deleted widgets


# -- bubbles: plain text only -------------------------------------------------------------


def _own_bubble_span(view: ChatView, row: int) -> tuple[int, int]:
    """Left and right x of the own bubble painted for ``row``, read from the pixels."""
    image: QImage = view.viewport().grab().toImage()
    rect: QRect = view.visualRect(view.chat_model.index(row))
    y = rect.center().y()
    own = QColor(theme.OWN_BUBBLE)
    xs = [x for x in range(image.width()) if image.pixelColor(x, y) == own]
    assert xs, "no bubble painted"
    return min(xs), max(xs)


def test_markup_is_shown_as_the_characters_typed(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_html(*_: object) -> None:
        raise AssertionError("chat text given to a rich-text document")

    monkeypatch.setattr(QTextDocument, "setHtml", no_html)
    add_out(log, "m", MARKUP)
    add_out(log, "n", "x")
    settle()
    index = panel.model.index(0)
    assert index.data() == MARKUP

    left, right = _own_bubble_span(panel.view, 0)
    advance = QFontMetrics(panel.view.font()).horizontalAdvance(MARKUP)
    # Rendered as rich text this would be a bold "x" and a broken-image icon, about
    # as narrow as the bubble of a plain "x".
    assert right - left >= advance
    plain_left, plain_right = _own_bubble_span(panel.view, 1)
    assert (right - left) - (plain_right - plain_left) >= advance // 2


def test_every_label_is_plain_text(qtbot: QtBot, log: ChatLog) -> None:
    p = ChatPanel(log, peer_name="<b>Eve</b>")
    qtbot.addWidget(p)
    log.set_peer_typing(True)
    assert p.typing_label.text() == "<b>Eve</b> is typing…"
    labels = p.findChildren(QLabel)
    assert labels
    assert all(label.textFormat() is Qt.TextFormat.PlainText for label in labels)


def test_long_words_wrap_inside_the_bubble(panel: ChatPanel, log: ChatLog) -> None:
    add_out(log, "long", "https://example.com/" + "x" * 400)
    settle()
    left, right = _own_bubble_span(panel.view, 0)
    assert left > 0
    assert right < panel.view.viewport().width()
    assert panel.view.visualRect(panel.model.index(0)).height() > 60  # several lines


# -- the panel: sending -------------------------------------------------------------------


def test_send_by_click_and_by_enter(qtbot: QtBot, panel: ChatPanel) -> None:
    sent: list[str] = []
    panel.send_requested.connect(sent.append)
    QTest.keyClicks(panel.input, "  hello ")
    QTest.mouseClick(panel.send_button, Qt.MouseButton.LeftButton)
    assert sent == ["hello"]
    assert panel.input.text() == ""

    QTest.keyClicks(panel.input, "again")
    QTest.keyClick(panel.input, Qt.Key.Key_Return)
    assert sent == ["hello", "again"]

    QTest.keyClicks(panel.input, "by the button")
    panel.send_button.setFocus()
    QTest.keyClick(panel.send_button, Qt.Key.Key_Return)
    assert sent == ["hello", "again", "by the button"]


def test_blank_is_not_sent(qtbot: QtBot, panel: ChatPanel) -> None:
    with qtbot.assertNotEmitted(panel.send_requested):
        QTest.mouseClick(panel.send_button, Qt.MouseButton.LeftButton)
        QTest.keyClick(panel.input, Qt.Key.Key_Return)
        QTest.keyClicks(panel.input, "   ")
        QTest.keyClick(panel.input, Qt.Key.Key_Return)
    assert panel.input.text() == "   "  # left for the user to see


def test_input_is_limited_to_the_protocols_length(panel: ChatPanel) -> None:
    assert panel.input.maxLength() == MAX_MESSAGE_CHARS
    panel.input.setText("x" * (MAX_MESSAGE_CHARS + 10))
    assert len(panel.input.text()) == MAX_MESSAGE_CHARS


# -- the panel: typing --------------------------------------------------------------------


def test_typing_starts_once_and_stops_after_a_pause(
    qtbot: QtBot, panel: ChatPanel, clock: FakeClock
) -> None:
    typing: list[bool] = []
    panel.typing_changed.connect(typing.append)
    QTest.keyClicks(panel.input, "hel")
    QTest.keyClicks(panel.input, "lo")
    assert typing == [True]
    clock.now += 2.5
    panel.poll_typing()  # the idle timer's slot, fired early
    assert typing == [True]
    clock.now += 0.5
    panel.poll_typing()
    assert typing == [True, False]
    assert not panel.typing


def test_sending_or_clearing_stops_typing(qtbot: QtBot, panel: ChatPanel) -> None:
    events: list[object] = []
    panel.typing_changed.connect(events.append)
    panel.send_requested.connect(events.append)
    QTest.keyClicks(panel.input, "hi")
    QTest.keyClick(panel.input, Qt.Key.Key_Return)
    assert events == [True, False, "hi"]  # the peer's "typing…" ends before the message

    events.clear()
    QTest.keyClicks(panel.input, "oops")
    QTest.keyClick(panel.input, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClick(panel.input, Qt.Key.Key_Backspace)
    assert events == [True, False]

    events.clear()
    QTest.keyClicks(panel.input, "draft")
    panel.input.clear()  # by code: still the end of typing
    assert events == [True, False]


def test_the_idle_timer_ends_typing(qtbot: QtBot, log: ChatLog) -> None:
    p = ChatPanel(log, typing_idle_s=0.05)  # real clock, a pause of 50 ms
    qtbot.addWidget(p)
    p.show()
    with qtbot.waitSignal(p.typing_changed, timeout=2000) as started:
        QTest.keyClicks(p.input, "x")
    assert started.args == [True]
    with qtbot.waitSignal(p.typing_changed, timeout=2000) as stopped:
        pass
    assert stopped.args == [False]


def test_peer_typing_label(panel: ChatPanel, log: ChatLog) -> None:
    assert not panel.typing_label.isVisible()
    log.set_peer_typing(True)
    assert panel.typing_label.isVisible()
    assert panel.typing_label.text() == "Alex is typing…"
    panel.set_peer_name("Sam")
    assert panel.typing_label.text() == "Sam is typing…"
    add_in(log, "m")  # a message ends its "typing…"
    assert not panel.typing_label.isVisible()
    log.set_peer_typing(True)
    log.clear()
    assert not panel.typing_label.isVisible()
    other = ChatLog()
    other.set_peer_typing(True)
    panel.set_log(other)
    assert panel.typing_label.isVisible()


# -- the panel: keyboard, accessibility, touch --------------------------------------------


def test_tab_reaches_every_control(qtbot: QtBot, panel: ChatPanel, log: ChatLog) -> None:
    add_in(log, "m")
    settle()
    panel.view.setFocus(Qt.FocusReason.TabFocusReason)
    qtbot.waitUntil(panel.view.hasFocus)
    order = [QApplication.focusWidget()]
    for _ in range(3):
        focused = QApplication.focusWidget()
        assert focused is not None
        QTest.keyClick(focused, Qt.Key.Key_Tab)
        order.append(QApplication.focusWidget())
    # ...and round again: nothing traps the focus.
    assert order == [panel.view, panel.input, panel.send_button, panel.view]


def test_focusing_the_list_starts_at_the_newest_message_on_screen(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog
) -> None:
    for i in range(20):
        add_in(log, f"m{i}")
    settle()
    panel.input.setFocus()
    qtbot.waitUntil(panel.input.hasFocus)
    assert not panel.view.currentIndex().isValid()
    QTest.keyClick(panel.input, Qt.Key.Key_Backtab)
    assert panel.view.hasFocus()
    assert panel.view.currentIndex().row() == 19
    assert panel.view.is_at_bottom()


def test_controls_have_names_and_touch_sizes(panel: ChatPanel) -> None:
    focusable = [
        w
        for w in panel.findChildren(QWidget)
        if w.focusPolicy() & Qt.FocusPolicy.TabFocus and w.isVisible()
    ]
    assert set(focusable) >= {panel.view, panel.input, panel.send_button}
    assert all(w.accessibleName() for w in focusable)
    for control in (panel.input, panel.send_button):
        assert control.height() >= theme.TOUCH_TARGET_PX
        assert control.width() >= theme.TOUCH_TARGET_PX


# -- the panel: what the user has seen ----------------------------------------------------


def _rows_on_screen(view: ChatView) -> set[int]:
    """Rows whose rectangle is at least half inside the viewport, computed here
    independently of ``visible_rows``."""
    viewport = view.viewport().rect()
    rows = set()
    for row in range(view.chat_model.rowCount()):
        rect = view.visualRect(view.chat_model.index(row))
        inside = rect & viewport
        if not inside.isEmpty() and inside.height() * 2 >= rect.height():
            rows.add(row)
    return rows


@pytest.fixture
def seen(panel: ChatPanel) -> list[str]:
    reported: list[str] = []
    panel.seen.connect(reported.extend)
    return reported


def _fill(log: ChatLog, count: int) -> list[str]:
    ids = [f"m{i}" for i in range(count)]
    for mid in ids:
        add_in(log, mid, f"message {mid}")
    return ids


def test_seen_reports_only_rows_on_screen_then_the_rest_when_scrolled(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    ids = _fill(log, 30)
    qtbot.waitUntil(lambda: bool(seen))
    settle()
    view = panel.view
    on_screen = _rows_on_screen(view)
    assert 0 < len(on_screen) < 30
    assert max(on_screen) == 29  # it followed the newest message
    assert set(seen) == {ids[row] for row in on_screen}
    assert "m0" not in seen

    view.scrollToTop()
    qtbot.waitUntil(lambda: "m0" in seen)
    settle()
    assert {ids[row] for row in _rows_on_screen(view)} <= set(seen)

    bar = view.verticalScrollBar()
    while bar.value() < bar.maximum():
        bar.setValue(bar.value() + view.viewport().height() // 2)
        settle()
    assert sorted(seen, key=ids.index) == ids
    assert len(seen) == len(set(seen))  # each once


def test_seen_ignores_own_and_already_read_messages(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    add_out(log, "mine")
    add_in(log, "read-before")
    log.mark_read(["read-before"])
    add_in(log, "new")
    qtbot.waitUntil(lambda: bool(seen))
    settle()
    assert seen == ["new"]


def test_nothing_is_seen_while_the_panel_is_hidden(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    panel.hide()  # e.g. the call window shows its video page
    add_in(log, "while-hidden")
    settle()
    assert seen == []
    panel.show()
    qtbot.waitUntil(lambda: seen == ["while-hidden"])


def test_nothing_is_seen_while_the_window_is_hidden(
    qtbot: QtBot, window: QWidget, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    window.hide()
    add_in(log, "while-hidden")
    settle()
    assert seen == []
    window.show()
    window.activateWindow()
    qtbot.waitUntil(lambda: seen == ["while-hidden"])


def test_nothing_is_seen_while_the_window_is_minimized(
    qtbot: QtBot, window: QWidget, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    window.showMinimized()
    add_in(log, "while-minimized")
    settle()
    assert seen == []
    window.showNormal()
    window.activateWindow()
    qtbot.waitUntil(lambda: seen == ["while-minimized"])


def test_nothing_is_seen_while_another_window_is_active(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    other = QWidget()
    qtbot.addWidget(other)
    other.show()
    other.activateWindow()
    qtbot.waitUntil(lambda: not panel.isActiveWindow())
    add_in(log, "while-away")
    settle()
    assert seen == []
    panel.activateWindow()
    qtbot.waitUntil(lambda: seen == ["while-away"])


def test_a_reader_scrolled_up_is_not_pulled_down_nor_reported_new_messages(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    _fill(log, 30)
    settle()
    panel.view.scrollToTop()
    settle()
    seen.clear()
    add_in(log, "below")
    settle()
    assert panel.view.verticalScrollBar().value() == 0
    assert "below" not in seen
    # A message the user sends brings them back to the bottom, and "below" with it.
    add_out(log, "reply")
    qtbot.waitUntil(lambda: "below" in seen)
    assert panel.view.is_at_bottom()


def test_seen_starts_afresh_with_a_new_log(
    qtbot: QtBot, panel: ChatPanel, log: ChatLog, seen: list[str]
) -> None:
    add_in(log, "a")
    qtbot.waitUntil(lambda: seen == ["a"])
    log.clear()
    add_in(log, "a")  # ids are only unique within a log's lifetime
    qtbot.waitUntil(lambda: seen == ["a", "a"])
    other = ChatLog()
    add_in(other, "a")
    panel.set_log(other)
    qtbot.waitUntil(lambda: seen == ["a", "a", "a"])
