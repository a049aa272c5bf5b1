"""Every signaling message of the session lifecycle.

One frozen dataclass per wire type, registered in :data:`SIGNALING` with the kinds of
sender allowed to send it. ``docs/protocol.md`` is the prose companion of this file;
the two are kept in step by ``tests/protocol/test_docs.py``.

Direction legend used in the docstrings: D = device agent, C = technician console,
S = signaling server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol.codec import Message, Registry, Sender
from protocol.enums import (
    CloseReason,
    DeviceAck,
    LiveSupportStatus,
    Mode,
    NotificationState,
    RejectReason,
    Role,
    SdpType,
    SessionState,
)
from protocol.errors import ErrorCode
from protocol.fields import (
    B64,
    Ident,
    Int,
    Items,
    Name,
    ShortText,
    Text,
    TimestampMs,
    UserText,
)

PROTOCOL_VERSION = 1

SIGNALING = Registry("signaling")

_S = Sender.SERVER
_D = Sender.DEVICE
_C = Sender.CONSOLE
_DC = Sender.DEVICE | Sender.CONSOLE
_ALL = Sender.SERVER | Sender.DEVICE | Sender.CONSOLE

Modes = Annotated[tuple[Mode, ...], Items(0, 3)]
Sdp = Annotated[str, Text(1, 32 * 1024, multiline=True)]
Token = Annotated[str, Text(16, 256, r"^[A-Za-z0-9_.~-]+$")]
Version = Annotated[str, Text(1, 32, r"^[A-Za-z0-9_.+-]+$")]
Fingerprint = Annotated[str, Text(1, 128, r"^[A-Za-z0-9-]+ [0-9A-Fa-f:]+$")]
DeviceIds = Annotated[tuple[Ident, ...], Items(0, 10_000)]


# --- nested value objects -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TechnicianCard:
    """Who is calling, as the device user sees it."""

    technician_id: Ident
    display_name: Name
    organisation: Annotated[str, Text(0, 128)] = ""
    #: Base64 PNG/JPEG photo of at most 48 KiB, or empty.
    photo: Annotated[str, Text(0, 65_536, r"^[A-Za-z0-9+/]*={0,2}$")] = ""


IceUrl = Annotated[str, Text(1, 256, r"^(stun|stuns|turn|turns):[^\s]+$")]


@dataclass(frozen=True, kw_only=True, slots=True)
class IceServer:
    """A STUN or TURN server for one call end. For TURN, the server mints a short-lived
    credential per call end (coturn's shared-secret scheme: ``username`` is
    ``"<expiry, Unix seconds>:<id>"``); no lasting password is ever sent."""

    urls: Annotated[tuple[IceUrl, ...], Items(1, 4)]
    username: Annotated[str, Text(0, 128, r"^[A-Za-z0-9_.:-]*$")] = ""
    credential: Annotated[str, Text(0, 128, r"^[A-Za-z0-9+/]*={0,2}$")] = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceInfo:
    """One device as a console sees it."""

    device_id: Ident
    name: Name
    group_id: Ident
    group_name: Name
    model: Annotated[str, Text(0, 128)] = ""
    os: Annotated[str, Text(0, 128)] = ""
    status: LiveSupportStatus
    online: bool
    last_seen_ms: TimestampMs | None = None
    #: Modes the device's group policy and local configuration both allow.
    allowed_modes: Modes = ()
    #: The device's Ed25519 public key (raw, base64): lets a console verify consent.
    public_key: B64
    session_id: Ident | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsentReceipt:
    """The device user's consent, signed with the device key (see ``identity``)."""

    session_id: Ident
    device_id: Ident
    technician_id: Ident
    mode: Mode
    accepted_at_ms: TimestampMs
    offer_fingerprint: Fingerprint
    answer_fingerprint: Fingerprint
    signature: B64


# --- connection and authentication ----------------------------------------------------


@SIGNALING.register("auth.challenge", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class AuthChallenge(Message):
    """S→D/C, first frame on every connection. Devices sign the nonce."""

    nonce: B64
    server_time_ms: TimestampMs
    protocol_version: Annotated[int, Int(1, 1000)] = PROTOCOL_VERSION
    server_fingerprint: Fingerprint


@SIGNALING.register("auth.device", _D)
@dataclass(frozen=True, kw_only=True, slots=True)
class AuthDevice(Message):
    """D→S: proof of the device key: an Ed25519 signature over the challenge."""

    device_id: Ident
    signature: B64
    agent_version: Version = "0"


@SIGNALING.register("auth.technician", _C)
@dataclass(frozen=True, kw_only=True, slots=True)
class AuthTechnician(Message):
    """C→S: the session token from ``POST /api/v1/login``."""

    token: Token


@SIGNALING.register("auth.ok", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class AuthOk(Message):
    """S→D/C: authenticated. ``heartbeat_s`` is the websocket ping interval."""

    principal_id: Ident
    role: Role
    display_name: Name
    heartbeat_s: Annotated[int, Int(1, 3600)]
    invite_timeout_s: Annotated[int, Int(1, 3600)]


@SIGNALING.register("ok", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class Ok(Message):
    """S→D/C: the request with this ``rid`` succeeded."""


@SIGNALING.register("error", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class Error(Message):
    """S→D/C: the request with this ``rid`` (or the last frame) was refused."""

    code: ErrorCode
    message: ShortText


# --- device status and presence -------------------------------------------------------


@SIGNALING.register("status.report", _D)
@dataclass(frozen=True, kw_only=True, slots=True)
class StatusReport(Message):
    """D→S: the local conditions the Live Support status derives from."""

    service_installed: bool
    service_enabled: bool
    #: Chat services configured on the device (the admin utility can narrow them).
    chat_services: Modes = (Mode.TEXT, Mode.VOICE, Mode.VIDEO)
    name: Name
    model: Annotated[str, Text(0, 128)] = ""
    os: Annotated[str, Text(0, 128)] = ""


@SIGNALING.register("status.device", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceStatus(Message):
    """S→D: the device's own status as the server derives it, and what policy allows."""

    status: LiveSupportStatus
    policy_enabled: bool
    allowed_modes: Modes
    session_id: Ident | None = None


@SIGNALING.register("devices.subscribe", _C)
@dataclass(frozen=True, kw_only=True, slots=True)
class DevicesSubscribe(Message):
    """C→S: send a snapshot of the devices in scope, then every change."""


@SIGNALING.register("devices.unsubscribe", _C)
@dataclass(frozen=True, kw_only=True, slots=True)
class DevicesUnsubscribe(Message):
    """C→S: stop sending device changes."""


@SIGNALING.register("devices.snapshot", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class DevicesSnapshot(Message):
    """S→C: the devices in the technician's scope, in one or more frames.

    A frame holds at most 64 KiB, so a large inventory comes as several snapshots with
    the request's ``rid``; ``complete`` is true on the last one only."""

    devices: Annotated[tuple[DeviceInfo, ...], Items(0, 100_000)]
    complete: bool = True


@SIGNALING.register("device.update", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceUpdate(Message):
    """S→C: one device changed (status, presence, name, session)."""

    device: DeviceInfo


# --- sessions -------------------------------------------------------------------------


@SIGNALING.register("session.start", _C)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionStart(Message):
    """C→S: invite a device. The reason (or ticket reference) goes to the audit log."""

    device_id: Ident
    mode: Mode
    reason: Annotated[str, Text(1, 500)]


@SIGNALING.register("session.invite", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionInvite(Message):
    """S→D: a technician is calling. ``offered_modes`` are what the user may accept as."""

    session_id: Ident
    technician: TechnicianCard
    mode: Mode
    offered_modes: Modes
    reason: Annotated[str, Text(1, 500)]
    expires_at_ms: TimestampMs


@SIGNALING.register("session.accept", _D)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionAccept(Message):
    """D→S: the device user accepts, as one of the offered modes."""

    session_id: Ident
    mode: Mode


@SIGNALING.register("session.reject", _D)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionReject(Message):
    """D→S: the device user rejects."""

    session_id: Ident
    reason: RejectReason = RejectReason.DECLINED


@SIGNALING.register("session.consent", _D | _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionConsent(Message):
    """D→S→C: the signed consent receipt, once both DTLS fingerprints are known."""

    receipt: ConsentReceipt


@SIGNALING.register("session.resume", _D)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionResume(Message):
    """D→S: reopen the call window within an open session (no new consent)."""

    session_id: Ident


@SIGNALING.register("session.attach", _DC)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionAttach(Message):
    """D/C→S: after a reconnect (or a restart of the server), take up membership of a
    session this end still holds. The reply is the session's ``session.update``;
    ``not_found`` means the session ended meanwhile and this end should end it too."""

    session_id: Ident


@SIGNALING.register("session.close", _C)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionClose(Message):
    """C→S: close the session. Only the technician does this."""

    session_id: Ident


@SIGNALING.register("session.update", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class SessionUpdate(Message):
    """S→D/C: the session moved to ``state``. Sent to both members on every change."""

    session_id: Ident
    device_id: Ident
    technician_id: Ident
    state: SessionState
    mode: Mode
    reject_reason: RejectReason | None = None
    close_reason: CloseReason | None = None
    #: Set when the device user resumed the call and a new offer is wanted.
    resumed: bool = False
    #: With ``connecting``: the ICE servers (and TURN credential) this member's peer
    #: connection uses; each member gets its own credential.
    ice_servers: Annotated[tuple[IceServer, ...], Items(0, 4)] = ()
    #: With ``connecting``: the device's group allows only relayed candidates (no host
    #: or server-reflexive address of either end reaches the other).
    relay_only: bool = False


@SIGNALING.register("call.connected", _DC)
@dataclass(frozen=True, kw_only=True, slots=True)
class CallConnected(Message):
    """D/C→S: the peer connection is up (moves the session to ``in_call``)."""

    session_id: Ident


@SIGNALING.register("call.hangup", _DC | _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class CallHangup(Message):
    """D/C→S→other: end the call but keep the session open."""

    session_id: Ident


@SIGNALING.register("signal.sdp", _ALL)
@dataclass(frozen=True, kw_only=True, slots=True)
class SignalSdp(Message):
    """D/C→S→other: an SDP offer (console) or answer (device), relayed as is."""

    session_id: Ident
    sdp_type: SdpType
    sdp: Sdp


@SIGNALING.register("signal.candidate", _ALL)
@dataclass(frozen=True, kw_only=True, slots=True)
class SignalCandidate(Message):
    """D/C→S→other: one trickled ICE candidate (``a=candidate`` line without ``a=``)."""

    session_id: Ident
    candidate: Annotated[str, Text(1, 512)]
    sdp_mid: Annotated[str, Text(0, 32)] | None = None
    sdp_mline_index: Annotated[int, Int(0, 64)] | None = None


# --- notifications --------------------------------------------------------------------


@SIGNALING.register("notify.send", _C)
@dataclass(frozen=True, kw_only=True, slots=True)
class NotifySend(Message):
    """C→S: a pop-up to devices and/or every device of a group."""

    device_ids: DeviceIds = ()
    group_id: Ident | None = None
    title: Name
    body: UserText
    ttl_s: Annotated[int, Int(60, 30 * 24 * 3600)] = 24 * 3600


@SIGNALING.register("notify.sent", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class NotifySent(Message):
    """S→C: the notification is stored; these devices will get it. A long list of
    devices comes in several frames with the same id and ``rid``; ``complete`` is true
    on the last one only."""

    notification_id: Ident
    device_ids: DeviceIds
    expires_at_ms: TimestampMs
    complete: bool = True


@SIGNALING.register("notify.deliver", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class NotifyDeliver(Message):
    """S→D: show this pop-up. Resent on reconnect until acknowledged or expired."""

    notification_id: Ident
    sender_name: Name
    title: Name
    body: UserText
    sent_at_ms: TimestampMs
    expires_at_ms: TimestampMs


@SIGNALING.register("notify.ack", _D)
@dataclass(frozen=True, kw_only=True, slots=True)
class NotifyAck(Message):
    """D→S: the pop-up was delivered (shown) or read."""

    notification_id: Ident
    state: DeviceAck


@SIGNALING.register("notify.answer", _D)
@dataclass(frozen=True, kw_only=True, slots=True)
class NotifyAnswer(Message):
    """D→S: the device user's text answer (implies read)."""

    notification_id: Ident
    text: UserText


@SIGNALING.register("notify.update", _S)
@dataclass(frozen=True, kw_only=True, slots=True)
class NotifyUpdate(Message):
    """S→C: one device's state for a notification changed."""

    notification_id: Ident
    device_id: Ident
    state: NotificationState
    at_ms: TimestampMs
    answer: UserText | None = None
