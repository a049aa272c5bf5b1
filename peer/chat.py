"""The chat of one call, as a plain model: no Qt, no asyncio, no aiortc.

``ChatLog`` holds the conversation of one session in memory and nowhere else; the
call clears it when it closes, since nothing of a conversation may outlive the
session (DESIGN.md, "Session lifecycle" 6). A Qt view model subscribes to its
listeners later, as napari's views subscribe to their models.

Receipt states only move forward (sent → delivered → read). For an outgoing message
the state is what the peer has told us; for an incoming one it is the receipt we have
sent back, so the two sides of a conversation show the same checks.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum
from typing import Generic, TypeVar

from protocol.enums import ReceiptState

T = TypeVar("T")

logger = logging.getLogger(__name__)


class DeliveryState(IntEnum):
    """Ordered, so "only forward" is a comparison rather than a transition table."""

    SENT = 0  # one check
    DELIVERED = 1  # gray double check
    READ = 2  # blue double check


_FROM_RECEIPT = {
    ReceiptState.DELIVERED: DeliveryState.DELIVERED,
    ReceiptState.READ: DeliveryState.READ,
}


class Listeners(Generic[T]):
    """A small observer (like python-zeroconf's ``Signal``): callbacks fired in order.

    Kept free of any framework so the model stays testable without a display; a Qt
    bridge connects a callback that emits its own ``Signal``.
    """

    def __init__(self) -> None:
        self._callbacks: list[Callable[[T], None]] = []

    def add(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Subscribe; returns a function that unsubscribes."""
        self._callbacks.append(callback)
        return lambda: self.remove(callback)

    def remove(self, callback: Callable[[T], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def fire(self, value: T) -> None:
        """Call every callback. One that raises is logged and skipped, as a Qt slot
        would be: a broken view must neither starve the others nor break the call
        whose network callback fired it."""
        # A copy: a callback may unsubscribe itself while we iterate.
        for callback in list(self._callbacks):
            try:
                callback(value)
            except Exception as exc:
                # Where it failed, never the message: it may quote chat content.
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                logger.error(
                    "listener failed: %s at %s:%s", type(exc).__name__, tb.filename, tb.lineno
                )

    def __len__(self) -> int:
        return len(self._callbacks)


@dataclasses.dataclass(frozen=True, slots=True)
class ChatEntry:
    """One message as shown. Frozen: a change replaces the entry, so a listener holds
    a consistent snapshot rather than an object that changes under it."""

    message_id: str
    author: str
    #: Left out of repr so that logging an entry never writes conversation content.
    text: str = dataclasses.field(repr=False)
    sent_at_ms: int
    outgoing: bool
    state: DeliveryState

    @property
    def read_sent(self) -> bool:
        """For an incoming message: have we told the peer it was read?"""
        return not self.outgoing and self.state is DeliveryState.READ


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, for display and for the wire."""
    return time.time_ns() // 1_000_000


class ChatLog:
    """The ordered messages of one conversation, both directions.

    Outgoing and incoming ids are kept apart: ids are chosen by each sender, and a
    receipt from the peer can only be about a message we sent, never one it sent.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        # Monotonic clock for round trips: wall-clock time can jump.
        self._clock = clock
        self._order: list[tuple[bool, str]] = []  # (outgoing, message_id)
        self._outgoing: dict[str, ChatEntry] = {}
        self._incoming: dict[str, ChatEntry] = {}
        self._sent_mono: dict[str, float] = {}
        self._delivered_mono: dict[str, float] = {}
        self._peer_typing = False
        #: Fired with the new entry whenever one is added or changes state.
        self.listeners: Listeners[ChatEntry] = Listeners()
        #: Fired with the new value when the peer starts or stops typing.
        self.typing_listeners: Listeners[bool] = Listeners()
        #: Fired (with None) after ``clear()``: a view drops all its rows.
        self.clear_listeners: Listeners[None] = Listeners()

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[ChatEntry]:
        return iter(self.entries())

    def entries(self) -> list[ChatEntry]:
        return [self._entry(outgoing, mid) for outgoing, mid in self._order]

    def outgoing(self, message_id: str) -> ChatEntry | None:
        return self._outgoing.get(message_id)

    def incoming(self, message_id: str) -> ChatEntry | None:
        return self._incoming.get(message_id)

    def unread_incoming(self) -> list[ChatEntry]:
        """Incoming messages we have not yet sent a read receipt for, oldest first."""
        return [
            entry
            for outgoing, mid in self._order
            if not outgoing and (entry := self._incoming[mid]).state < DeliveryState.READ
        ]

    @property
    def peer_typing(self) -> bool:
        return self._peer_typing

    def delivery_rtts_ms(self) -> dict[str, float]:
        """Send → delivered-receipt round trip per delivered outgoing message, in ms,
        in sending order. Messages still waiting for their receipt are left out."""
        return {
            mid: (self._delivered_mono[mid] - self._sent_mono[mid]) * 1000.0
            for outgoing, mid in self._order
            if outgoing and mid in self._delivered_mono
        }

    # -- changing -----------------------------------------------------------------------

    def add_outgoing(
        self, *, message_id: str, author: str, text: str, sent_at_ms: int | None = None
    ) -> ChatEntry:
        if message_id in self._outgoing:
            raise ValueError(f"outgoing message id {message_id!r} is already in the log")
        entry = ChatEntry(
            message_id=message_id,
            author=author,
            text=text,
            sent_at_ms=now_ms() if sent_at_ms is None else sent_at_ms,
            outgoing=True,
            state=DeliveryState.SENT,
        )
        self._sent_mono[message_id] = self._clock()
        return self._add(entry)

    def add_incoming(
        self, *, message_id: str, author: str, text: str, sent_at_ms: int
    ) -> ChatEntry:
        """Record a message from the peer. Its state starts at DELIVERED: the call
        sends the delivered receipt as soon as the message arrives."""
        if message_id in self._incoming:
            raise ValueError(f"incoming message id {message_id!r} is already in the log")
        entry = ChatEntry(
            message_id=message_id,
            author=author,
            text=text,
            sent_at_ms=sent_at_ms,
            outgoing=False,
            state=DeliveryState.DELIVERED,
        )
        # A message that arrives ends the "typing…" that announced it.
        self.set_peer_typing(False)
        return self._add(entry)

    def apply_receipt(self, message_ids: Iterable[str], state: ReceiptState) -> list[ChatEntry]:
        """Apply a receipt from the peer to our outgoing messages; returns what changed.

        Unknown ids are ignored (the peer may answer for a log we already cleared).
        A read receipt for a message not yet delivered implies delivery, and its
        arrival is the first proof of delivery, so it also ends the round trip.
        """
        target = _FROM_RECEIPT[state]
        changed: list[ChatEntry] = []
        for mid in message_ids:
            entry = self._outgoing.get(mid)
            if entry is None or entry.state >= target:
                continue
            self._delivered_mono.setdefault(mid, self._clock())
            changed.append(self._replace(entry, target))
        return changed

    def mark_read(self, message_ids: Iterable[str]) -> list[ChatEntry]:
        """Record that we sent a read receipt for these incoming messages."""
        changed: list[ChatEntry] = []
        for mid in message_ids:
            entry = self._incoming.get(mid)
            if entry is not None and entry.state < DeliveryState.READ:
                changed.append(self._replace(entry, DeliveryState.READ))
        return changed

    def set_peer_typing(self, active: bool) -> None:
        if active != self._peer_typing:
            self._peer_typing = active
            self.typing_listeners.fire(active)

    def clear(self) -> None:
        """Drop every message, receipt and timing: nothing outlives the session."""
        self._order.clear()
        self._outgoing.clear()
        self._incoming.clear()
        self._sent_mono.clear()
        self._delivered_mono.clear()
        self._peer_typing = False
        self.clear_listeners.fire(None)

    # -- internals ----------------------------------------------------------------------

    def _entry(self, outgoing: bool, message_id: str) -> ChatEntry:
        return (self._outgoing if outgoing else self._incoming)[message_id]

    def _add(self, entry: ChatEntry) -> ChatEntry:
        (self._outgoing if entry.outgoing else self._incoming)[entry.message_id] = entry
        self._order.append((entry.outgoing, entry.message_id))
        self.listeners.fire(entry)
        return entry

    def _replace(self, entry: ChatEntry, state: DeliveryState) -> ChatEntry:
        new = dataclasses.replace(entry, state=state)
        (self._outgoing if new.outgoing else self._incoming)[new.message_id] = new
        self.listeners.fire(new)
        return new
