"""Enumerations shared by every message. Values are the wire strings."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """What a session offers or was accepted as."""

    TEXT = "text"
    VOICE = "voice"
    VIDEO = "video"


class Role(StrEnum):
    """Who is on the other end of a connection."""

    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    TECHNICIAN = "technician"
    VIEWER = "viewer"
    DEVICE = "device"


class LiveSupportStatus(StrEnum):
    """The four Live Support statuses of a device (see DESIGN.md)."""

    NOT_INSTALLED = "not_installed"
    DISABLED = "disabled"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"

    @property
    def label(self) -> str:
        return _STATUS_LABELS[self]


_STATUS_LABELS = {
    LiveSupportStatus.NOT_INSTALLED: "Not Installed",
    LiveSupportStatus.DISABLED: "Disabled",
    LiveSupportStatus.CONNECTED: "Connected",
    LiveSupportStatus.DISCONNECTED: "Disconnected",
}


def derive_status(
    *, service_installed: bool, service_enabled: bool, policy_enabled: bool, session_open: bool
) -> LiveSupportStatus:
    """The status follows from real conditions only; it is never set by hand.

    Order matters: a missing service outranks a disabled one, and a disabled service
    cannot have a session open.
    """
    if not service_installed:
        return LiveSupportStatus.NOT_INSTALLED
    if not (service_enabled and policy_enabled):
        return LiveSupportStatus.DISABLED
    if session_open:
        return LiveSupportStatus.CONNECTED
    return LiveSupportStatus.DISCONNECTED


class SessionState(StrEnum):
    INVITED = "invited"  # waiting for the device user's answer
    CONNECTING = "connecting"  # accepted; the call is being negotiated
    IN_CALL = "in_call"  # the peer connection is up
    CALL_ENDED = "call_ended"  # the device user hung up; the session is still open
    REJECTED = "rejected"  # the device user said no
    EXPIRED = "expired"  # no answer before the invite timeout: a rejection
    CLOSED = "closed"  # the technician (or the server, on a lost peer) closed it


class RejectReason(StrEnum):
    DECLINED = "declined"
    #: Nobody answered before the invite ran out (the device's prompt, or the server).
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"  # the service is disabled or not installed


class CloseReason(StrEnum):
    CLOSED_BY_TECHNICIAN = "closed_by_technician"
    TECHNICIAN_LOST = "technician_lost"  # console gone past the grace period
    DEVICE_LOST = "device_lost"  # device gone past the grace period
    DEVICE_REVOKED = "device_revoked"
    SERVICE_DISABLED = "service_disabled"
    CANCELLED = "cancelled"  # closed before the device answered


class SdpType(StrEnum):
    OFFER = "offer"
    ANSWER = "answer"


class NotificationState(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    ANSWERED = "answered"
    EXPIRED = "expired"


class DeviceAck(StrEnum):
    """What a device may acknowledge about a notification (answers have their own message)."""

    DELIVERED = "delivered"
    READ = "read"


class ReceiptState(StrEnum):
    """Chat receipts: gray double check (delivered) and blue double check (read)."""

    DELIVERED = "delivered"
    READ = "read"


class CameraFacing(StrEnum):
    """Where the camera in use looks (tablets have a front and a back camera)."""

    FRONT = "front"
    BACK = "back"
    EXTERNAL = "external"
    UNKNOWN = "unknown"


class AudioInterruption(StrEnum):
    """Why Live Support audio is muted both ways by the platform, if it is."""

    NONE = "none"
    PHONE_CALL = "phone_call"  # an incoming or ongoing phone call on the device
    OTHER = "other"  # another app took the audio (an alarm, a navigation prompt...)
