"""The chat protocol spoken peer to peer on the WebRTC data channel.

The signaling server never sees these frames: chat content travels only between the
two ends of a call. Each message has an id chosen by its sender; the receiver answers
with a ``delivered`` receipt when the message arrives and a ``read`` receipt when the
person actually sees it (gray, then blue double check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol.codec import Message, Registry, Sender
from protocol.enums import ReceiptState
from protocol.fields import Ident, Items, Text, TimestampMs, UserText

#: Chat frames are small: one message of at most 4000 characters plus its envelope.
CHAT = Registry("chat", max_frame_bytes=32 * 1024)

_P = Sender.PEER
MessageIds = Annotated[tuple[Ident, ...], Items(1, 256)]


@CHAT.register("chat.message", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class ChatMessage(Message):
    message_id: Ident
    text: UserText
    sent_at_ms: TimestampMs
    #: Who wrote it, as shown to the other side.
    author: Annotated[str, Text(1, 128)]


@CHAT.register("chat.receipt", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class ChatReceipt(Message):
    """Receipts for one or more messages, so a burst costs one frame."""

    message_ids: MessageIds
    state: ReceiptState


@CHAT.register("chat.typing", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class ChatTyping(Message):
    active: bool
