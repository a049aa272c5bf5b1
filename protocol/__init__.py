"""The Live Support wire protocol, sans-IO.

Messages and their codec, the session state machine, the role × action permission
table and the Ed25519 identity helpers. Nothing here opens a socket, runs an event
loop or draws a widget: it is plain, synchronous Python, tested as such.
"""

from __future__ import annotations

from protocol.codec import MAX_FRAME_BYTES, Message, Registry, Sender
from protocol.errors import (
    CloseCode,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.messages import PROTOCOL_VERSION, SIGNALING

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "SIGNALING",
    "CloseCode",
    "ErrorCode",
    "LocalProtocolError",
    "Message",
    "ProtocolError",
    "Registry",
    "RemoteProtocolError",
    "Sender",
]
