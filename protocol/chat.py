"""The protocol spoken peer to peer on the WebRTC data channel: chat and media state.

The signaling server never sees these frames: chat content travels only between the
two ends of a call. Each message has an id chosen by its sender; the receiver answers
with a ``delivered`` receipt when the message arrives and a ``read`` receipt when the
person actually sees it (gray, then blue double check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol.codec import Message, Registry, Sender
from protocol.enums import AudioInterruption, CameraFacing, ReceiptState
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


@CHAT.register("call.media", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class MediaState(Message):
    """The sender's media as it is now: sent when the channel opens and on every change
    (mute, camera on/off, switch camera, audio output, an audio interruption), so the
    other side shows what is happening and why, not just that a stream went quiet."""

    #: The microphone is sending sound (false: muted, or interrupted).
    microphone: bool
    #: The camera is sending video (false: camera off, or a voice-only call).
    camera: bool
    #: The camera in use, as its owner's device names it ("" when none).
    camera_name: Annotated[str, Text(0, 128)] = ""
    camera_facing: CameraFacing = CameraFacing.UNKNOWN
    #: Where the sender hears the call ("Speaker", "Headset"...; "" when unknown).
    audio_output: Annotated[str, Text(0, 128)] = ""
    #: A platform audio interruption mutes the call both ways until it ends.
    interruption: AudioInterruption = AudioInterruption.NONE
