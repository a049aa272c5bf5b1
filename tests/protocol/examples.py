"""One hand-written, valid message of every wire type (the same ones docs/protocol.md
shows), for round trips and as seeds of the mutation tests."""

from __future__ import annotations

from protocol.chat import ChatMessage, ChatReceipt, ChatTyping, MediaState
from protocol.codec import Message
from protocol.enums import (
    AudioInterruption,
    CameraFacing,
    CloseReason,
    DeviceAck,
    LiveSupportStatus,
    Mode,
    NotificationState,
    ReceiptState,
    RejectReason,
    Role,
    SdpType,
    SessionState,
)
from protocol.errors import ErrorCode
from protocol.messages import (
    AuthChallenge,
    AuthDevice,
    AuthOk,
    AuthTechnician,
    CallConnected,
    CallHangup,
    ConsentReceipt,
    DeviceInfo,
    DevicesSnapshot,
    DevicesSubscribe,
    DeviceStatus,
    DevicesUnsubscribe,
    DeviceUpdate,
    Error,
    NotifyAck,
    NotifyAnswer,
    NotifyDeliver,
    NotifySend,
    NotifySent,
    NotifyUpdate,
    Ok,
    SessionAccept,
    SessionAttach,
    SessionClose,
    SessionConsent,
    SessionInvite,
    SessionReject,
    SessionResume,
    SessionStart,
    SessionUpdate,
    SignalCandidate,
    SignalSdp,
    StatusReport,
    TechnicianCard,
)

FP_OFFER = "sha-256 " + ":".join(["AB"] * 32)
FP_ANSWER = "sha-256 " + ":".join(["CD"] * 32)
PUBLIC_KEY = "GB9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
SIGNATURE = "A" * 86 + "=="
SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 " + FP_OFFER[8:]

DEVICE = DeviceInfo(
    device_id="dev-7f3a",
    name="Front desk tablet",
    group_id="grp-lobby",
    group_name="Lobby",
    model="Galaxy Tab A8",
    os="Android 14",
    status=LiveSupportStatus.DISCONNECTED,
    online=True,
    last_seen_ms=1_718_000_000_000,
    allowed_modes=(Mode.TEXT, Mode.VOICE, Mode.VIDEO),
    public_key=PUBLIC_KEY,
)

RECEIPT = ConsentReceipt(
    session_id="ses-91c2",
    device_id="dev-7f3a",
    technician_id="tec-ana",
    mode=Mode.VIDEO,
    accepted_at_ms=1_718_000_012_345,
    offer_fingerprint=FP_OFFER,
    answer_fingerprint=FP_ANSWER,
    signature=SIGNATURE,
)

SIGNALING_EXAMPLES: list[Message] = [
    AuthChallenge(
        nonce="q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=",
        server_time_ms=1_718_000_000_000,
        server_fingerprint=FP_OFFER,
    ),
    AuthDevice(device_id="dev-7f3a", signature=SIGNATURE, agent_version="0.1.0"),
    AuthTechnician(token="tok_3kTMd8sQ2bW9xZ1vN5yR7uP0"),
    AuthOk(
        principal_id="tec-ana",
        role=Role.TECHNICIAN,
        display_name="Ana Souza",
        heartbeat_s=20,
        invite_timeout_s=30,
    ),
    Ok(rid=12),
    Error(rid=12, code=ErrorCode.OUT_OF_SCOPE, message="the device is not in your groups"),
    StatusReport(
        service_installed=True,
        service_enabled=True,
        chat_services=(Mode.TEXT, Mode.VOICE),
        name="Front desk tablet",
        model="Galaxy Tab A8",
        os="Android 14",
    ),
    DeviceStatus(
        status=LiveSupportStatus.CONNECTED,
        policy_enabled=True,
        allowed_modes=(Mode.TEXT, Mode.VOICE),
        session_id="ses-91c2",
    ),
    DevicesSubscribe(rid=1),
    DevicesUnsubscribe(rid=2),
    DevicesSnapshot(rid=1, devices=(DEVICE,)),
    DeviceUpdate(device=DEVICE),
    SessionStart(rid=3, device_id="dev-7f3a", mode=Mode.VIDEO, reason="INC-4711 printer"),
    SessionInvite(
        session_id="ses-91c2",
        technician=TechnicianCard(
            technician_id="tec-ana", display_name="Ana Souza", organisation="IT Service Desk"
        ),
        mode=Mode.VIDEO,
        offered_modes=(Mode.TEXT, Mode.VOICE, Mode.VIDEO),
        reason="INC-4711 printer",
        expires_at_ms=1_718_000_030_000,
    ),
    SessionAccept(rid=4, session_id="ses-91c2", mode=Mode.VOICE),
    SessionReject(session_id="ses-91c2", reason=RejectReason.BUSY),
    SessionConsent(receipt=RECEIPT),
    SessionResume(session_id="ses-91c2"),
    SessionAttach(rid=4, session_id="ses-91c2"),
    SessionClose(rid=9, session_id="ses-91c2"),
    SessionUpdate(
        session_id="ses-91c2",
        device_id="dev-7f3a",
        technician_id="tec-ana",
        state=SessionState.CLOSED,
        mode=Mode.VOICE,
        close_reason=CloseReason.CLOSED_BY_TECHNICIAN,
    ),
    CallConnected(session_id="ses-91c2"),
    CallHangup(session_id="ses-91c2"),
    SignalSdp(session_id="ses-91c2", sdp_type=SdpType.OFFER, sdp=SDP),
    SignalCandidate(
        session_id="ses-91c2",
        candidate="candidate:1 1 udp 2130706431 192.0.2.10 50000 typ host",
        sdp_mid="0",
        sdp_mline_index=0,
    ),
    NotifySend(rid=5, device_ids=("dev-7f3a",), title="Restart tonight", body="Please dock."),
    NotifySent(rid=5, notification_id="ntf-001", device_ids=("dev-7f3a",), expires_at_ms=9),
    NotifyDeliver(
        notification_id="ntf-001",
        sender_name="Ana Souza",
        title="Restart tonight",
        body="Please dock.",
        sent_at_ms=1_718_000_000_000,
        expires_at_ms=1_718_086_400_000,
    ),
    NotifyAck(notification_id="ntf-001", state=DeviceAck.READ),
    NotifyAnswer(notification_id="ntf-001", text="Done,\nit is docked."),
    NotifyUpdate(
        notification_id="ntf-001",
        device_id="dev-7f3a",
        state=NotificationState.ANSWERED,
        at_ms=1_718_000_100_000,
        answer="Done,\nit is docked.",
    ),
]

CHAT_EXAMPLES: list[Message] = [
    ChatMessage(
        message_id="m-1", text="Hello! 👋", sent_at_ms=1_718_000_020_000, author="Ana Souza"
    ),
    ChatReceipt(message_ids=("m-1", "m-2"), state=ReceiptState.READ),
    ChatTyping(active=True),
    MediaState(
        microphone=False,
        camera=True,
        camera_name="Back camera",
        camera_facing=CameraFacing.BACK,
        audio_output="Headset",
        interruption=AudioInterruption.PHONE_CALL,
    ),
]
