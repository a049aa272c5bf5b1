"""One WebRTC call for one session, on aiortc: negotiation, the chat channel, stats.

The rules of this module:

- One ``PeerCall`` is one ``RTCPeerConnection`` for one session. The technician's
  console is always the offerer, the device always the answerer; each side refuses an
  SDP of the wrong direction or for another session.
- Signaling goes out through the ``send_signal`` callback as ``protocol`` messages;
  this module never touches a socket of the signaling link.
- We never trickle: aiortc gathers every candidate inside ``setLocalDescription``, so
  the SDP we send (``pc.localDescription``, never ``createOffer()``'s result) already
  carries them all. Candidates a peer trickles are still accepted.
- ICE servers are always passed explicitly: with ``iceServers`` unset aiortc asks a
  public STUN server, and a call must never reach beyond the servers we configured.
- Chat travels on one ordered data channel labelled ``"chat"`` with the
  ``protocol.chat`` registry. Anything the peer sends is untrusted: a frame that does
  not decode is dropped and counted, never allowed to disturb the call.
- Voice and video ride the same peer connection: a ``CallMedia`` (``peer.call_media``)
  opens its devices in ``_add_local_media``, before the offer (console) or the answer
  (device), never earlier; each end tells the other its media state (``call.media``)
  on the chat channel when it opens and on every change.
- Nothing of the conversation is logged; ``close()`` clears the chat log and releases
  the camera and microphone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypedDict, get_args

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCRemoteOutboundRtpStreamStats,
)

from peer import ice
from peer.chat import ChatLog, Listeners, now_ms
from protocol.chat import CHAT, ChatMessage, ChatReceipt, ChatTyping, MediaState, MessageIds
from protocol.codec import Message, Sender
from protocol.enums import ReceiptState, SdpType
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.identity import sdp_fingerprint
from protocol.messages import SignalCandidate, SignalSdp

if TYPE_CHECKING:
    from peer.call_media import CallMedia

logger = logging.getLogger(__name__)

CHAT_LABEL = "chat"
#: How long close() waits for the peer to acknowledge the chat channel's reset (a few ms
#: on a working path; on a lost one nothing comes back and this is what a hang-up costs).
CLOSE_HANDSHAKE_S = 0.5

#: How many ids one receipt frame may carry, read from the protocol's own field
#: constraint so the two cannot drift apart.
RECEIPT_BATCH: int = get_args(MessageIds)[1].max_items

SendSignal = Callable[[Message], Awaitable[None]]


class CallState(StrEnum):
    """aiortc's ``connectionState`` values (it has no "disconnected" today; kept for
    when it does, as the W3C API has it)."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    CLOSED = "closed"


#: RTP clock rates, to turn RTCP jitter (in timestamp units) into milliseconds.
CLOCK_RATES = {"audio": 48_000, "video": 90_000}


class StreamStats(TypedDict):
    """One direction of one kind of media."""

    packets: int
    bytes: int
    #: Over the time since the previous ``stats()`` call (None on the first).
    bitrate_kbps: float | None
    #: Sent streams: as the receiver reported in RTCP; received: as we counted.
    packets_lost: int | None
    jitter_ms: float | None
    #: Video only (frames counted by our own tracks and receivers).
    fps: float | None
    width: int | None
    height: int | None


class CallStats(TypedDict):
    """What ``PeerCall.stats()`` reports. ``None`` where aiortc cannot tell us."""

    state: str
    #: Round trip from RTCP receiver reports (None without media or before one came).
    rtt_ms: float | None
    audio_sent: StreamStats | None
    audio_received: StreamStats | None
    video_sent: StreamStats | None
    video_received: StreamStats | None
    #: "direct" (host, srflx or prflx on both ends) or "relayed" (a TURN relay).
    route: str | None
    local_candidate_type: str | None
    remote_candidate_type: str | None
    #: Chat payload bytes (UTF-8 of the frames) we sent and received; aiortc keeps no
    #: per-channel byte counters, so these are counted here.
    chat_bytes_sent: int
    chat_bytes_received: int
    chat_frames_sent: int
    chat_frames_received: int
    bad_frames: int


def _fingerprint(sdp: str) -> str:
    """The DTLS fingerprint of an SDP, as protocol.identity formats it.

    aiortc (1.16) announces its one certificate under three hashes (sha-256, sha-384,
    sha-512), and ``sdp_fingerprint`` as first committed refuses an SDP with more than
    one value. Both ends of a consent receipt must agree on one canonical value, so
    only the sha-256 lines are handed over; every browser sends sha-256. Should the
    SDP have none, the whole SDP goes through, so the protocol's own error explains
    why. Once ``sdp_fingerprint`` picks sha-256 itself (a change under way in
    protocol/), this filter is redundant and can go.
    """
    sha256 = [
        line for line in sdp.splitlines() if line.lower().startswith("a=fingerprint:sha-256 ")
    ]
    return sdp_fingerprint("\n".join(sha256) if sha256 else sdp)


def _parse_candidate(message: SignalCandidate) -> RTCIceCandidate:
    """An aiortc ``RTCIceCandidate`` from a trickled ``a=candidate`` value."""
    if message.sdp_mid is None and message.sdp_mline_index is None:
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, "a candidate needs sdp_mid or sdp_mline_index"
        )
    text = message.candidate.removeprefix("a=").removeprefix("candidate:")
    try:
        # aiortc's parser asserts on the field count and int()s the numbers.
        candidate = candidate_from_sdp(text)
    except (AssertionError, ValueError, IndexError):
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "not an ICE candidate") from None
    candidate.sdpMid = message.sdp_mid
    candidate.sdpMLineIndex = message.sdp_mline_index
    return candidate


class NoCandidates(LocalProtocolError):
    """ICE gathered no candidate: no address of this end works (no network)."""


class PeerCall:
    """One peer connection for one session, with its chat.

    Usage (console)::

        call = PeerCall(session_id=sid, is_offerer=True, author="Ada", send_signal=send)
        await call.start()
        ...  # feed every SignalSdp / SignalCandidate of the session to handle_signal
        await asyncio.wait_for(call.connected.wait(), 20)
        await call.send_chat("Hello")
        await call.close()  # always: it is what clears the chat
    """

    def __init__(
        self,
        *,
        session_id: str,
        is_offerer: bool,
        author: str,
        send_signal: SendSignal,
        ice_servers: Sequence[RTCIceServer] = (),
        relay_only: bool = False,
        media: CallMedia | None = None,
        chat: ChatLog | None = None,
    ) -> None:
        # Check the author once here rather than failing on the first message sent.
        CHAT.encode(ChatMessage(message_id="check", text="-", sent_at_ms=0, author=author))
        self.session_id = session_id
        self.is_offerer = is_offerer
        self.author = author
        self._send_signal = send_signal
        #: Voice and video of this end (None: a text call).
        self.media = media

        #: A recovered call (a new connection after a lost path) continues the chat
        #: log and the media of the call it replaces: see ``detach``.
        self.chat = chat if chat is not None else ChatLog()
        #: Set once the chat channel is open on this side.
        self.connected = asyncio.Event()
        #: Set once the peer connection is closed, by us or by the far end.
        self.closed = asyncio.Event()
        #: Fired with every change of the connection state.
        self.state_listeners: Listeners[CallState] = Listeners()
        #: Chat frames from the peer that failed to decode (or made no sense) and were dropped.
        self.bad_frames = 0
        #: The connection failed or closed without this end closing it, and without the
        #: peer saying so first: its media path was lost. The session's owners then
        #: replace it.
        self.dropped = False
        #: The peer closed the chat channel while the connection was up: it ended the
        #: call on purpose (hang-up, session closed); not a lost path.
        self.peer_closed = False
        self._channel_closed = asyncio.Event()

        self._state = CallState.NEW
        #: Why the call failed, when this end knows (no relay candidate in relay-only mode).
        self.failure: str | None = None
        self._closing = False
        #: Handed its chat and media to a successor (``detach``): close() leaves them.
        self._detached = False
        self._started = False
        self._typing_sent = False
        self._local_fingerprint: str | None = None
        self._remote_fingerprint: str | None = None
        self._bytes_sent = 0
        self._bytes_received = 0
        self._frames_sent = 0
        self._frames_received = 0
        # handle_signal and start await inside aiortc; one negotiation step at a time.
        self._negotiation = asyncio.Lock()
        #: (time, bytes) of each stream at the previous stats() call, for bitrates.
        self._byte_marks: dict[str, tuple[float, int]] = {}

        ice.apply_environment()  # an operator's (or the tests') choice of host addresses
        ice.apply_consent_checks()  # a lost path is noticed in seconds, not 30 s
        #: Kept for a call that replaces this one (same servers, same policy).
        self.ice_servers = list(ice_servers)
        #: Relay-only policy: aioice then gathers nothing but TURN relay candidates
        #: and hides the relay candidate's related address, so no address of this
        #: host (private or public) is ever sent; every packet goes via the relay.
        self.relay_only = relay_only
        policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=self.ice_servers, iceTransportPolicy=policy)
        )
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._pc.on("track", self._on_track)
        self._unhook_media = (
            media.local_listeners.add(self._send_media_state) if media is not None else None
        )
        self._channel: RTCDataChannel | None = None
        if is_offerer:
            # Created before the offer so the offer carries the SCTP m-line.
            self._attach_channel(self._pc.createDataChannel(CHAT_LABEL, ordered=True))
        else:
            self._pc.on("datachannel", self._on_datachannel)

    # -- state ------------------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self._state

    @property
    def local_fingerprint(self) -> str | None:
        """Our DTLS fingerprint ("sha-256 AB:..."), once our SDP exists."""
        return self._local_fingerprint

    @property
    def remote_fingerprint(self) -> str | None:
        """The peer's DTLS fingerprint, once its SDP was accepted."""
        return self._remote_fingerprint

    @property
    def chat_open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open"

    # -- negotiation ------------------------------------------------------------------

    async def start(self, *, require_candidates: bool = False) -> None:
        """Offerer only: create the offer and send it. With ``require_candidates``,
        an offer without a single candidate (this end has no network at all) is not
        sent: ``NoCandidates`` is raised instead (aiortc would wait forever on it)."""
        if not self.is_offerer:
            raise LocalProtocolError(ErrorCode.BAD_STATE, "only the offerer starts a call")
        async with self._negotiation:
            self._check_open()
            if self._started:
                raise LocalProtocolError(ErrorCode.BAD_STATE, "the call is already started")
            self._started = True
            self._add_local_media()
            await self._pc.setLocalDescription(await self._pc.createOffer())
            if require_candidates and "a=candidate:" not in self._pc.localDescription.sdp:
                raise NoCandidates(ErrorCode.BAD_STATE, "no network address to offer")
            await self._send_local_description(SdpType.OFFER)

    async def handle_signal(self, message: SignalSdp | SignalCandidate) -> None:
        """Apply one signaling message from the peer."""
        async with self._negotiation:
            self._check_open()
            if message.session_id != self.session_id:
                raise LocalProtocolError(ErrorCode.BAD_STATE, "the signal is for another session")
            if isinstance(message, SignalSdp):
                await self._handle_sdp(message)
            elif isinstance(message, SignalCandidate):
                await self._pc.addIceCandidate(_parse_candidate(message))
            else:  # a caller's bug; the type hint already says so
                raise LocalProtocolError(
                    ErrorCode.UNKNOWN_TYPE, f"{type(message).__name__} is not a call signal"
                )

    async def _handle_sdp(self, message: SignalSdp) -> None:
        expected, signaling_state = (
            (SdpType.ANSWER, "have-local-offer") if self.is_offerer else (SdpType.OFFER, "stable")
        )
        if message.sdp_type is not expected:
            side = "offerer" if self.is_offerer else "answerer"
            raise LocalProtocolError(
                ErrorCode.BAD_STATE, f"the {side} takes no {message.sdp_type.value}"
            )
        if self._pc.signalingState != signaling_state:
            raise LocalProtocolError(
                ErrorCode.BAD_STATE,
                f"no {message.sdp_type.value} expected in state {self._pc.signalingState}",
            )
        # Before aiortc sees it: an SDP without exactly one certificate cannot be bound
        # into a consent receipt, and aiortc would accept even "garbage" as an offer.
        fingerprint = _fingerprint(message.sdp)
        if self._remote_fingerprint not in (None, fingerprint):
            raise RemoteProtocolError(
                ErrorCode.INVALID_FIELD, "the peer's DTLS certificate changed mid-session"
            )
        try:
            await self._pc.setRemoteDescription(
                RTCSessionDescription(sdp=message.sdp, type=message.sdp_type.value)
            )
        except Exception as exc:
            # aiortc's SDP handling raises what it happens to hit (ValueError,
            # AttributeError, ...) on bad input: all of it is the peer's fault.
            raise RemoteProtocolError(
                ErrorCode.INVALID_FIELD, f"the peer's SDP was refused: {type(exc).__name__}"
            ) from exc
        self._remote_fingerprint = fingerprint
        if not self.is_offerer:
            self._add_local_media()
            await self._pc.setLocalDescription(await self._pc.createAnswer())
            await self._send_local_description(SdpType.ANSWER)

    async def _send_local_description(self, sdp_type: SdpType) -> None:
        # The local description, not createOffer()/createAnswer()'s result: only
        # this one carries the candidates gathered in setLocalDescription.
        sdp: str = self._pc.localDescription.sdp
        await self._check_relay(sdp)
        self._local_fingerprint = _fingerprint(sdp)
        await self._send_signal(SignalSdp(session_id=self.session_id, sdp_type=sdp_type, sdp=sdp))

    async def _check_relay(self, sdp: str) -> None:
        """A TURN server that gave no relay candidate (aioice drops the error: an
        expired or forged credential, a server that cannot be reached) is said
        here. In relay-only mode the call cannot connect without one: it fails at
        once, with the reason, instead of waiting out ICE's timeout."""
        turn = any(
            url.startswith("turn")
            for server in self.ice_servers
            for url in ([server.urls] if isinstance(server.urls, str) else server.urls)
        )
        if not turn or " typ relay" in sdp:
            return
        reason = (
            "the TURN server gave no relay candidate: it refused this end's credential "
            "(expired or not minted with its secret) or cannot be reached"
        )
        if not self.relay_only:
            logger.warning("%s; the call tries direct routes only", reason)
            return
        # Failed, and not ``dropped``: no path was lost, and a new connection with
        # the same credential would fail the same way. The owner closes the call.
        self.failure = reason
        self._state = CallState.FAILED
        self.state_listeners.fire(CallState.FAILED)
        raise LocalProtocolError(ErrorCode.UNAVAILABLE, reason)

    def _add_local_media(self) -> None:
        """Open this end's devices and add their tracks, before the offer or the answer
        is made, so the first negotiation carries them. A text call has none.

        The offerer's codec preference decides the video codec: the answerer keeps
        the order of the offer."""
        if self.media is None:
            return
        if not self.media.opened:
            self.media.open()
        # Stand-ins: a recovered call sends the tracks its predecessor had open.
        for track in self.media.tracks():
            sender = self._pc.addTrack(track)
            if self.is_offerer and track.kind == "video":
                self._prefer_codec(sender, self.media.options.video_codec)

    def _prefer_codec(self, sender: RTCRtpSender, codec: str) -> None:
        transceiver = next(t for t in self._pc.getTransceivers() if t.sender is sender)
        codecs = RTCRtpSender.getCapabilities("video").codecs
        mime = f"video/{codec}".lower()
        first = [c for c in codecs if c.mimeType.lower() == mime]
        rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
        rest = [c for c in codecs if c not in first and c not in rtx]
        transceiver.setCodecPreferences(first + rest + rtx)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.media is None:
            logger.warning("ignored a %s track in a text call", track.kind)
            return
        self.media.attach_remote(track)

    def _send_media_state(self, state: MediaState) -> None:
        if self.chat_open and not self._closing:
            self._send_message(state)

    # -- chat -----------------------------------------------------------------------

    async def send_chat(self, text: str) -> str:
        """Send one chat message; returns its id. Raises LocalProtocolError if the
        text breaks the protocol's limits or the channel is not open, before sending."""
        message = ChatMessage(
            message_id=secrets.token_hex(8),
            text=text,
            sent_at_ms=now_ms(),
            author=self.author,
        )
        frame = CHAT.encode(message)
        self._check_chat_open()
        self.chat.add_outgoing(
            message_id=message.message_id,
            author=message.author,
            text=message.text,
            sent_at_ms=message.sent_at_ms,
        )
        self._send_frame(frame)
        return message.message_id

    async def mark_read(self, message_ids: Iterable[str]) -> list[str]:
        """Tell the peer these incoming messages were read: one frame for up to
        ``RECEIPT_BATCH`` ids. Ids unknown or already marked are skipped; returns
        the ids the receipt was sent for."""
        pending = [
            mid
            for mid in dict.fromkeys(message_ids)  # dedupe, keep order
            if (entry := self.chat.incoming(mid)) is not None and not entry.read_sent
        ]
        if not pending:
            return []
        self._check_chat_open()
        for start in range(0, len(pending), RECEIPT_BATCH):
            batch = tuple(pending[start : start + RECEIPT_BATCH])
            self._send_message(ChatReceipt(message_ids=batch, state=ReceiptState.READ))
        self.chat.mark_read(pending)
        return pending

    async def send_typing(self, active: bool) -> None:
        """Tell the peer we started or stopped typing (only changes are sent)."""
        if active == self._typing_sent:
            return
        self._check_chat_open()
        self._send_message(ChatTyping(active=active))
        self._typing_sent = active

    def _send_message(self, message: Message) -> None:
        self._send_frame(CHAT.encode(message))

    def _send_frame(self, frame: str) -> None:
        assert self._channel is not None
        self._channel.send(frame)
        self._frames_sent += 1
        self._bytes_sent += len(frame.encode("utf-8"))

    def _on_frame(self, data: str | bytes) -> None:
        """A frame from the peer (aiortc calls this synchronously from its SCTP
        receive path, so nothing may escape from here)."""
        if self._closing:
            return
        self._frames_received += 1
        self._bytes_received += len(data) if isinstance(data, bytes) else len(data.encode())
        try:
            message = CHAT.decode(data, Sender.PEER)
        except RemoteProtocolError as exc:
            self.bad_frames += 1
            logger.info("dropped a chat frame: %s", exc.code.value)  # the code, never content
            return
        try:
            self._dispatch(message)
        except Exception as exc:
            # A bug in a listener (a view) must not break the SCTP association.
            logger.error("chat handling failed: %s", type(exc).__name__)

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, ChatMessage):
            try:
                self.chat.add_incoming(
                    message_id=message.message_id,
                    author=message.author,
                    text=message.text,
                    sent_at_ms=message.sent_at_ms,
                )
            except ValueError:  # an id the peer already used: not a new message
                self.bad_frames += 1
                return
            # Delivered as soon as it is in the log: the gray double check.
            self._send_message(
                ChatReceipt(message_ids=(message.message_id,), state=ReceiptState.DELIVERED)
            )
        elif isinstance(message, ChatReceipt):
            self.chat.apply_receipt(message.message_ids, message.state)
        elif isinstance(message, ChatTyping):
            self.chat.set_peer_typing(message.active)
        elif isinstance(message, MediaState) and self.media is not None:
            self.media.apply_peer_state(message)

    # -- aiortc events --------------------------------------------------------------

    def _attach_channel(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.on("open", self._on_channel_open)
        channel.on("message", self._on_frame)
        channel.on("close", self._on_channel_close)

    def _on_channel_close(self) -> None:
        self._channel_closed.set()
        # The peer reset the stream (or aborted the association) while the path still
        # works: see close(). When aiortc closes our own connection (its consent checks
        # failed: a lost path), the signaling state turns "closed" before the channel
        # closes, so that case stays a drop.
        if (
            not self._closing
            and self._pc.signalingState != "closed"
            and self._pc.connectionState == "connected"
        ):
            self.peer_closed = True

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHAT_LABEL or self._channel is not None:
            logger.warning("ignored an unexpected data channel from the peer")
            return
        self._attach_channel(channel)
        # aiortc opens a channel announced by the peer before emitting "datachannel",
        # so its "open" event has already passed.
        if channel.readyState == "open":
            self._on_channel_open()

    def _on_channel_open(self) -> None:
        self.connected.set()
        if self.media is not None:
            # The peer learns our media state first thing, then every change.
            self._send_media_state(self.media.state())

    def _on_connection_state(self) -> None:
        raw: str = self._pc.connectionState
        try:
            state = CallState(raw)
        except ValueError:
            logger.warning("unknown connection state %r", raw)
            return
        if state is self._state:
            return
        self._state = state
        if state in (CallState.FAILED, CallState.CLOSED) and not (
            self._closing or self.peer_closed
        ):
            # Not our close(): the path is gone (consent checks failed; aiortc then
            # closes the whole connection) or the peer closed its end.
            self.dropped = True
        if state is CallState.CLOSED:
            self.closed.set()
        self.state_listeners.fire(state)

    # -- closing and stats ----------------------------------------------------------

    async def close(self) -> None:
        """Close the channel and the peer connection and forget the conversation.
        Safe to call any number of times, also after the far end closed."""
        if not self._closing:
            self._closing = True
            self.chat.clear()
            if self._channel is not None:
                was_open = self._channel.readyState == "open"
                self._channel.close()
                if was_open:
                    # The stream reset tells the peer we end the call on purpose (it
                    # takes a few ms); closing the connection at once would abort the
                    # association first and the peer would take it for a lost path.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._channel_closed.wait(), CLOSE_HANDSHAKE_S)
        # aiortc's close is idempotent: a second call waits for the first to finish.
        await self._pc.close()
        if self.media is not None and not self._detached:
            # After the peer connection: its senders no longer pull from our tracks.
            await self.media.close()
        self.closed.set()

    async def detach(self) -> None:
        """Close the peer connection but keep the chat log and the media open, for
        the call that replaces this one after its path was lost (same session, same
        window): the successor is made with ``chat=old.chat, media=old.media``."""
        self._detached = True
        if not self._closing:
            self._closing = True
            if self._unhook_media is not None:
                self._unhook_media()
            # No channel.close(): its SCTP reset cannot cross a lost path (aiortc
            # would log the failed send); closing the connection ends the channel.
        await self._pc.close()
        if self.media is not None:
            # The peer's tracks of this connection end with it; the next connection's
            # tracks get fresh receivers.
            await self.media.detach_remote()
        self.closed.set()

    async def stats(self) -> CallStats:
        local_type, remote_type = self._selected_candidate_types()
        route: str | None = None
        if local_type is not None and remote_type is not None:
            route = "relayed" if "relay" in (local_type, remote_type) else "direct"
        media = await self._media_stats()
        return CallStats(
            state=self._state.value,
            rtt_ms=media["rtt_ms"],
            audio_sent=media["audio_sent"],
            audio_received=media["audio_received"],
            video_sent=media["video_sent"],
            video_received=media["video_received"],
            route=route,
            local_candidate_type=local_type,
            remote_candidate_type=remote_type,
            chat_bytes_sent=self._bytes_sent,
            chat_bytes_received=self._bytes_received,
            chat_frames_sent=self._frames_sent,
            chat_frames_received=self._frames_received,
            bad_frames=self.bad_frames,
        )

    async def _media_stats(self) -> dict[str, Any]:
        """RTP and RTCP figures from aiortc, with frame rates and sizes from our own
        tracks; bitrates over the time since the previous call."""
        result: dict[str, Any] = {
            "rtt_ms": None,
            "audio_sent": None,
            "audio_received": None,
            "video_sent": None,
            "video_received": None,
        }
        if self.media is None or self._pc.connectionState == "closed":
            return result
        report = await self._pc.getStats()
        counters = self.media.counters()
        now = time.monotonic()
        rtts: list[float] = []
        remote_in: dict[str, RTCRemoteInboundRtpStreamStats] = {}
        remote_out: dict[str, RTCRemoteOutboundRtpStreamStats] = {}
        for item in report.values():
            if isinstance(item, RTCRemoteInboundRtpStreamStats):
                remote_in[item.kind] = item
                if item.roundTripTime:
                    rtts.append(item.roundTripTime * 1000)
            elif isinstance(item, RTCRemoteOutboundRtpStreamStats):
                remote_out[item.kind] = item
        for item in report.values():
            if isinstance(item, RTCOutboundRtpStreamStats):
                key = f"{item.kind}_sent"
                peer_view = remote_in.get(item.kind)
                result[key] = self._stream(
                    key,
                    now,
                    packets=item.packetsSent,
                    nbytes=item.bytesSent,
                    lost=peer_view.packetsLost if peer_view else None,
                    jitter=peer_view.jitter if peer_view else None,
                    kind=item.kind,
                    video=counters.get("video_sent"),
                )
            elif isinstance(item, RTCInboundRtpStreamStats):
                key = f"{item.kind}_received"
                # aiortc counts no received bytes; the sender's own report (RTCP SR)
                # of what it sent is the closest figure.
                sender_view = remote_out.get(item.kind)
                result[key] = self._stream(
                    key,
                    now,
                    packets=item.packetsReceived,
                    nbytes=sender_view.bytesSent if sender_view else 0,
                    lost=item.packetsLost,
                    jitter=item.jitter,
                    kind=item.kind,
                    video=counters.get("video_received"),
                )
        if rtts:
            result["rtt_ms"] = round(min(rtts), 2)
        return result

    def _stream(
        self,
        key: str,
        now: float,
        *,
        packets: int,
        nbytes: int,
        lost: int | None,
        jitter: int | None,
        kind: str,
        video: dict[str, Any] | None,
    ) -> StreamStats:
        bitrate: float | None = None
        mark = self._byte_marks.get(key)
        if mark is not None and now > mark[0] and nbytes >= mark[1]:
            bitrate = round((nbytes - mark[1]) * 8 / (now - mark[0]) / 1000, 1)
        self._byte_marks[key] = (now, nbytes)
        rate = CLOCK_RATES.get(kind)
        return StreamStats(
            packets=packets,
            bytes=nbytes,
            bitrate_kbps=bitrate,
            packets_lost=lost,
            jitter_ms=round(jitter * 1000 / rate, 2) if jitter is not None and rate else None,
            fps=round(video["fps"], 1) if video and kind == "video" else None,
            width=video["width"] if video and kind == "video" else None,
            height=video["height"] if video and kind == "video" else None,
        )

    def _selected_candidate_types(self) -> tuple[str | None, str | None]:
        """The candidate types of the pair ICE nominated for the chat transport.

        aiortc exposes no selected pair (its getStats covers RTP only), so this reads
        aioice's private ``_nominated`` table; any change there yields (None, None)
        rather than an error.
        """
        sctp = self._pc.sctp
        if sctp is None:
            return None, None
        try:
            connection = sctp.transport.transport._connection
            pair = connection._nominated.get(1)  # component 1: RTP/SCTP over bundle
            if pair is None:
                return None, None
            return str(pair.local_candidate.type), str(pair.remote_candidate.type)
        except AttributeError:
            return None, None

    def selected_hosts(self) -> tuple[str, str] | None:
        """The local and the remote address of the pair ICE nominated (None before
        one is, or if aioice's private table changed): which path the call is on."""
        sctp = self._pc.sctp
        try:
            pair = sctp.transport.transport._connection._nominated.get(1) if sctp else None
            if pair is None:
                return None
            return str(pair.local_candidate.host), str(pair.remote_candidate.host)
        except AttributeError:
            return None

    def _check_open(self) -> None:
        if self._closing:
            raise LocalProtocolError(ErrorCode.BAD_STATE, "the call is closed")

    def _check_chat_open(self) -> None:
        self._check_open()
        if not self.chat_open:
            raise LocalProtocolError(ErrorCode.BAD_STATE, "the chat channel is not open")
