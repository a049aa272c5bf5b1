"""ChatLog: the Qt-free chat model, tested synchronously."""

from __future__ import annotations

import pytest

from peer.chat import ChatEntry, ChatLog, DeliveryState, Listeners
from protocol.enums import ReceiptState


class FakeClock:
    """A monotonic clock the test moves by hand, so round trips are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log(clock: FakeClock) -> ChatLog:
    return ChatLog(clock=clock)


def send(log: ChatLog, mid: str, text: str = "hello") -> ChatEntry:
    return log.add_outgoing(message_id=mid, author="Ada", text=text, sent_at_ms=1_000)


def receive(log: ChatLog, mid: str, text: str = "hi") -> ChatEntry:
    return log.add_incoming(message_id=mid, author="Device", text=text, sent_at_ms=2_000)


def test_entries_keep_order_across_directions(log: ChatLog) -> None:
    send(log, "a")
    receive(log, "b")
    send(log, "c")
    assert [(e.message_id, e.outgoing) for e in log] == [("a", True), ("b", False), ("c", True)]
    assert len(log) == 3
    assert log.outgoing("a") is not None
    assert log.incoming("a") is None


def test_new_entries_start_sent_or_delivered(log: ChatLog) -> None:
    assert send(log, "a").state is DeliveryState.SENT
    incoming = receive(log, "b")
    # We answer an arrival with a delivered receipt at once.
    assert incoming.state is DeliveryState.DELIVERED
    assert not incoming.read_sent


def test_same_id_in_both_directions_is_two_messages(log: ChatLog) -> None:
    send(log, "x")
    receive(log, "x")
    log.apply_receipt(["x"], ReceiptState.READ)
    out, inc = log.outgoing("x"), log.incoming("x")
    assert out is not None
    assert inc is not None
    assert out.state is DeliveryState.READ
    assert inc.state is DeliveryState.DELIVERED


def test_duplicate_ids_are_refused(log: ChatLog) -> None:
    send(log, "a")
    receive(log, "b")
    with pytest.raises(ValueError, match="already"):
        send(log, "a")
    with pytest.raises(ValueError, match="already"):
        receive(log, "b")
    assert len(log) == 2


@pytest.mark.parametrize(
    ("receipts", "final"),
    [
        ([ReceiptState.DELIVERED], DeliveryState.DELIVERED),
        ([ReceiptState.DELIVERED, ReceiptState.READ], DeliveryState.READ),
        # Read implies delivered.
        ([ReceiptState.READ], DeliveryState.READ),
        # Never backwards.
        ([ReceiptState.READ, ReceiptState.DELIVERED], DeliveryState.READ),
        ([ReceiptState.DELIVERED, ReceiptState.DELIVERED], DeliveryState.DELIVERED),
    ],
)
def test_receipts_only_move_forward(
    log: ChatLog, receipts: list[ReceiptState], final: DeliveryState
) -> None:
    send(log, "a")
    for receipt in receipts:
        log.apply_receipt(["a"], receipt)
    entry = log.outgoing("a")
    assert entry is not None
    assert entry.state is final


def test_receipt_returns_and_fires_only_changes(log: ChatLog) -> None:
    send(log, "a")
    send(log, "b")
    log.apply_receipt(["a"], ReceiptState.READ)
    seen: list[ChatEntry] = []
    log.listeners.add(seen.append)
    changed = log.apply_receipt(["a", "b", "unknown"], ReceiptState.DELIVERED)
    assert [e.message_id for e in changed] == ["b"]
    assert seen == changed


def test_receipts_for_unknown_or_incoming_ids_are_ignored(log: ChatLog) -> None:
    receive(log, "theirs")
    assert log.apply_receipt(["nope", "theirs"], ReceiptState.READ) == []
    entry = log.incoming("theirs")
    assert entry is not None
    assert entry.state is DeliveryState.DELIVERED


def test_unread_incoming_and_mark_read(log: ChatLog) -> None:
    receive(log, "a")
    send(log, "mine")
    receive(log, "b")
    receive(log, "c")
    assert [e.message_id for e in log.unread_incoming()] == ["a", "b", "c"]
    changed = log.mark_read(["b", "a", "mine", "unknown"])
    assert [e.message_id for e in changed] == ["b", "a"]
    assert [e.message_id for e in log.unread_incoming()] == ["c"]
    read = log.incoming("a")
    assert read is not None
    assert read.read_sent
    # Marking again changes nothing.
    assert log.mark_read(["a"]) == []


def test_listeners_get_every_new_and_changed_entry(log: ChatLog) -> None:
    seen: list[tuple[str, DeliveryState]] = []
    unsubscribe = log.listeners.add(lambda e: seen.append((e.message_id, e.state)))
    send(log, "a")
    receive(log, "b")
    log.apply_receipt(["a"], ReceiptState.DELIVERED)
    log.mark_read(["b"])
    assert seen == [
        ("a", DeliveryState.SENT),
        ("b", DeliveryState.DELIVERED),
        ("a", DeliveryState.DELIVERED),
        ("b", DeliveryState.READ),
    ]
    unsubscribe()
    send(log, "c")
    assert len(seen) == 4


def test_entries_are_snapshots(log: ChatLog) -> None:
    first = send(log, "a")
    log.apply_receipt(["a"], ReceiptState.READ)
    assert first.state is DeliveryState.SENT


def test_text_stays_out_of_repr(log: ChatLog) -> None:
    entry = send(log, "a", text="my secret password")
    assert "secret" not in repr(entry)


def test_peer_typing_fires_on_change_and_stops_on_a_message(log: ChatLog) -> None:
    seen: list[bool] = []
    log.typing_listeners.add(seen.append)
    log.set_peer_typing(True)
    log.set_peer_typing(True)
    assert seen == [True]
    assert log.peer_typing
    receive(log, "a")
    assert seen == [True, False]
    assert log.peer_typing is bool(seen[-1])


def test_delivery_rtts_from_send_to_first_receipt(log: ChatLog, clock: FakeClock) -> None:
    send(log, "a")
    clock.now += 0.010
    send(log, "b")
    clock.now += 0.005
    send(log, "c")
    log.apply_receipt(["a"], ReceiptState.DELIVERED)  # 15 ms after a
    clock.now += 0.020
    log.apply_receipt(["b"], ReceiptState.READ)  # read first: still its round trip
    log.apply_receipt(["a", "b"], ReceiptState.READ)  # later receipts change nothing
    rtts = log.delivery_rtts_ms()
    assert list(rtts) == ["a", "b"]  # c has no receipt yet
    assert rtts["a"] == pytest.approx(15.0)
    assert rtts["b"] == pytest.approx(25.0)


def test_clear_drops_everything(log: ChatLog) -> None:
    cleared: list[None] = []
    log.clear_listeners.add(cleared.append)
    send(log, "a")
    receive(log, "b")
    log.apply_receipt(["a"], ReceiptState.DELIVERED)
    log.set_peer_typing(True)
    log.clear()
    assert len(log) == 0
    assert log.entries() == []
    assert log.unread_incoming() == []
    assert log.delivery_rtts_ms() == {}
    assert not log.peer_typing
    assert log.outgoing("a") is None
    assert log.incoming("b") is None
    assert cleared == [None]
    # The ids are free again: nothing of the old conversation is remembered.
    send(log, "a")
    assert len(log) == 1


def test_listener_may_unsubscribe_while_firing() -> None:
    listeners: Listeners[int] = Listeners()
    calls: list[str] = []

    def once(_: int) -> None:
        calls.append("once")
        listeners.remove(once)

    listeners.add(once)
    listeners.add(lambda _: calls.append("always"))
    listeners.fire(1)
    listeners.fire(2)
    assert calls == ["once", "always", "always"]
    assert len(listeners) == 1
