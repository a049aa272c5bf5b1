"""Errors of the wire protocol.

As in h11, an error says whose fault it is: a ``LocalProtocolError`` means *we* tried
something the protocol forbids, a ``RemoteProtocolError`` means the peer did. Both
carry an :class:`ErrorCode` (sent to the peer in an ``error`` frame) and a hint: the
websocket close code to use when the error ends the connection, or ``None`` when the
connection stays open and only the one message is refused.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every error a peer can be told about. The values are the wire strings."""

    BAD_FRAME = "bad_frame"  # not a JSON object in UTF-8 text
    TOO_LARGE = "too_large"  # frame or field over its size limit
    UNKNOWN_TYPE = "unknown_type"  # no such message, or not one this sender may send
    INVALID_FIELD = "invalid_field"  # missing, extra or badly typed field
    UNAUTHENTICATED = "unauthenticated"  # no or failed authentication
    BAD_SIGNATURE = "bad_signature"  # an Ed25519 signature did not verify
    FORBIDDEN = "forbidden"  # the sender's role lacks the permission
    OUT_OF_SCOPE = "out_of_scope"  # the target device is outside the sender's groups
    NOT_FOUND = "not_found"  # no such device, session or notification
    BAD_STATE = "bad_state"  # not allowed in the session's current state
    RATE_LIMITED = "rate_limited"  # too many messages
    CONFLICT = "conflict"  # e.g. the device already has an open session
    EXPIRED = "expired"  # token, invite or notification no longer valid
    REVOKED = "revoked"  # the device was revoked by an admin
    UNAVAILABLE = "unavailable"  # the device is offline, not installed or disabled
    INTERNAL = "internal"  # a bug on the server: nothing the client did


class CloseCode:
    """Websocket close codes (4000-4999 are free for applications)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    AUTH_FAILED = 4401
    REVOKED = 4403
    AUTH_TIMEOUT = 4408
    REPLACED = 4409  # the same principal connected again elsewhere
    RATE_LIMITED = 4429


class ProtocolError(Exception):
    """Base of both error kinds; ``code`` goes on the wire, ``message`` is for people."""

    def __init__(self, code: ErrorCode, message: str, *, close_code: int | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.close_code = close_code


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug, or a refused action)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""
