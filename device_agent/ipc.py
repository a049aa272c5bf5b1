"""The link between the resident agent and the device's per-session process.

The resident agent keeps the signaling connection and the device key; the session
process (``device_agent.call_process``) owns the call, the chat and the media. They
talk over a private socket pair the agent creates and hands to the child (never a
path on disk), one JSON frame per line, each decoded with the same strict codec as
the wire protocol, one registry per direction.

What crosses this link is signaling and metadata only: SDP and candidates (forwarded
to and from the server), the DTLS fingerprints the agent signs into the consent
receipt, call events, control commands and a status report of counts, states and
device names. Chat text never does: it lives in the session process alone, so the
resident agent cannot keep what it never holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from protocol.codec import Message, Registry, Sender
from protocol.enums import AudioInterruption, Mode
from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.fields import Ident, Items, Name, Text
from protocol.messages import SIGNALING, SignalCandidate, SignalSdp

log = logging.getLogger(__name__)

#: An SDP with every candidate, wrapped once more, fits comfortably.
MAX_FRAME_BYTES = 256 * 1024

#: Frames the agent sends to the session process.
TO_SESSION = Registry("to-session", max_frame_bytes=MAX_FRAME_BYTES)
#: Frames the session process sends to the agent.
TO_AGENT = Registry("to-agent", max_frame_bytes=MAX_FRAME_BYTES)

_P = Sender.PEER
SignalFrame = Annotated[str, Text(1, 200_000, multiline=True)]
IceUrl = Annotated[str, Text(1, 512)]


@dataclass(frozen=True, kw_only=True, slots=True)
class IceServer:
    """A STUN or TURN server as aiortc's ``RTCIceServer`` takes it (kept aiortc-free
    here: the resident agent must not import aiortc)."""

    urls: Annotated[tuple[IceUrl, ...], Items(1, 8)]
    username: Annotated[str, Text(0, 256)] = ""
    credential: Annotated[str, Text(0, 256)] = ""


class Control(StrEnum):
    """The device user's call controls, as ``session.control`` names them."""

    MUTE = "mute"
    UNMUTE = "unmute"
    CAMERA_ON = "camera_on"
    CAMERA_OFF = "camera_off"
    SWITCH_CAMERA = "switch_camera"
    AUDIO_OUTPUT = "audio_output"
    HANG_UP = "hang_up"
    RESUME = "resume"


# -- agent -> session -----------------------------------------------------------------


@TO_SESSION.register("session.begin", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Begin(Message):
    """The session the process serves; the first frame it receives."""

    session_id: Ident
    mode: Mode
    technician_name: Name
    #: Shown as the author of the device user's chat messages.
    device_name: Name
    ice_servers: Annotated[tuple[IceServer, ...], Items(0, 8)] = ()
    technician_organisation: Annotated[str, Text(0, 128)] = ""
    #: The chat services the configuration allows (policy and the local service):
    #: the call window shows only the functions they cover.
    chat_services: Annotated[tuple[Mode, ...], Items(0, 3)] = (Mode.TEXT, Mode.VOICE, Mode.VIDEO)
    #: Open the call window at once (the user just accepted), or keep it hidden.
    show_window: bool = True


@TO_SESSION.register("session.ice", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class IceConfig(Message):
    """The ICE servers and policy of the session's next calls, from the server's
    ``connecting`` update (a TURN credential minted for this call end, the group's
    relay-only flag), before the technician's offer. Replaces ``Begin.ice_servers``."""

    ice_servers: Annotated[tuple[IceServer, ...], Items(0, 8)] = ()
    relay_only: bool = False


@TO_SESSION.register("session.signal", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class SignalIn(Message):
    """A ``signal.sdp`` or ``signal.candidate`` from the server, as its wire frame."""

    frame: SignalFrame


@TO_SESSION.register("session.remote_hangup", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class RemoteHangup(Message):
    """The technician hung up: end the call, release the devices, keep the session."""


@TO_SESSION.register("session.control", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class ControlIn(Message):
    """A control operated outside the call window (tray, automation, tests)."""

    control: Control
    #: For ``audio_output``: the device id of the output to use.
    argument: Annotated[str, Text(0, 256)] = ""


@TO_SESSION.register("session.interruption", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Interruption(Message):
    """The platform's audio interruption began (``phone_call``...) or ended (``none``)."""

    interruption: AudioInterruption


@TO_SESSION.register("session.show", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Show(Message):
    """The device user chose "Live Support" in the agent: bring the call window back."""


@TO_SESSION.register("session.query", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Query(Message):
    """Ask for a :class:`Report` now."""


@TO_SESSION.register("session.end", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class End(Message):
    """The session is over: close the call, release the devices, report and exit."""

    reason: Annotated[str, Text(0, 64)] = ""


# -- session -> agent -----------------------------------------------------------------


@TO_AGENT.register("session.signal_out", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class SignalOut(Message):
    """An SDP or candidate for the server to route to the technician."""

    frame: SignalFrame


@TO_AGENT.register("session.fingerprints", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Fingerprints(Message):
    """The call's two DTLS fingerprints, for the agent to sign the consent receipt."""

    offer_fingerprint: Annotated[str, Text(1, 256)]
    answer_fingerprint: Annotated[str, Text(1, 256)]


@TO_AGENT.register("session.call_connected", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class CallUp(Message):
    """The peer connection and its chat channel are up."""


@TO_AGENT.register("session.path_lost", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class PathLost(Message):
    """The call's media path is gone (its consent checks failed): the technician's
    side will offer a new connection, which the agent lets through without a new
    prompt only within its grace period (docs/calls.md, "Path loss")."""


@TO_AGENT.register("session.hang_up", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class HangUp(Message):
    """The device user hung up (the call ended; the session stays)."""


@TO_AGENT.register("session.resume", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Resume(Message):
    """The device user reopened the call: ask the server to resume the session."""


@TO_AGENT.register("session.report", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Report(Message):
    """Counts, states and device names of the call (metadata, never content), as a
    JSON object: sent on every change and when asked."""

    report_json: Annotated[str, Text(2, 60_000, multiline=True)]

    @staticmethod
    def of(report: dict[str, Any]) -> Report:
        return Report(report_json=json.dumps(report, separators=(",", ":")))

    def data(self) -> dict[str, Any]:
        value = json.loads(self.report_json)
        if not isinstance(value, dict):
            raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "a report is a JSON object")
        return value


@TO_AGENT.register("session.ended", _P)
@dataclass(frozen=True, kw_only=True, slots=True)
class Ended(Message):
    """The last frame: the call is closed and every device released (or not)."""

    media_released: bool


# -- helpers ----------------------------------------------------------------------------


def wrap_signal(message: SignalSdp | SignalCandidate) -> str:
    return SIGNALING.encode(message)


def unwrap_signal(frame: str, session_id: str) -> SignalSdp | SignalCandidate:
    """A forwarded signal, checked: of a signal type, and for this session only."""
    message = SIGNALING.decode(frame)
    if not isinstance(message, SignalSdp | SignalCandidate):
        raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"{message.TYPE} is not a call signal")
    if message.session_id != session_id:
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "the signal is for another session")
    return message


class Link:
    """One end of the socket pair: write frames of one registry, read the other's."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        inbound: Registry,
        outbound: Registry,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._inbound = inbound
        self._outbound = outbound

    @classmethod
    async def open(cls, sock: Any, *, inbound: Registry, outbound: Registry) -> Link:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_FRAME_BYTES + 1)
        return cls(reader, writer, inbound=inbound, outbound=outbound)

    async def send(self, message: Message) -> None:
        frame = self._outbound.encode(message)
        self._writer.write(frame.encode("utf-8") + b"\n")
        await self._writer.drain()

    async def receive(self) -> Message | None:
        """The next frame from the other end; None when it closed the link. A frame
        that does not decode raises RemoteProtocolError (the caller decides)."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            raise RemoteProtocolError(ErrorCode.TOO_LARGE, "an IPC frame is too large") from None
        return self._inbound.decode(line[:-1], Sender.PEER)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
