"""PeerCall: real loopback calls between two aiortc peer connections in one process.

As in aiortc's own tests, every connection-state change on both ends is recorded and
the whole history asserted. The two calls talk through a fake signaling link (like
h11's ConnectionPair): every signal goes through the real SIGNALING codec on the way,
so an SDP the server would refuse fails here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from peer.call import RECEIPT_BATCH, CallState, PeerCall
from peer.chat import DeliveryState, Listeners
from protocol.chat import CHAT, ChatMessage
from protocol.codec import Message
from protocol.enums import SdpType
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.messages import SIGNALING, SignalCandidate, SignalSdp

T = TypeVar("T")

#: Generous: a loopback call connects in well under a second, but CI machines stall.
TIMEOUT = 15.0
SESSION = "sess-1"

Filter = Callable[[Message], list[Message]]


class SignalLink:
    """Two PeerCalls wired to each other's ``handle_signal`` through queues.

    ``rewrite`` may change or split what the offerer sends (to test trickle ICE).
    Errors raised by ``handle_signal`` are collected, not lost in a task.
    """

    def __init__(self, *, rewrite_offerer: Filter | None = None) -> None:
        self._rewrite = rewrite_offerer or (lambda m: [m])
        self.to_answerer: asyncio.Queue[Message] = asyncio.Queue()
        self.to_offerer: asyncio.Queue[Message] = asyncio.Queue()
        self.sent_by_offerer: list[Message] = []
        self.sent_by_answerer: list[Message] = []
        self.errors: list[BaseException] = []
        self.offerer = PeerCall(
            session_id=SESSION,
            is_offerer=True,
            author="Ada Technician",
            send_signal=self._send_from_offerer,
        )
        self.answerer = PeerCall(
            session_id=SESSION,
            is_offerer=False,
            author="Tablet 7",
            send_signal=self._send_from_answerer,
        )
        self.offerer_states: list[str] = []
        self.answerer_states: list[str] = []
        self.offerer.state_listeners.add(lambda s: self.offerer_states.append(s.value))
        self.answerer.state_listeners.add(lambda s: self.answerer_states.append(s.value))
        self._pumps = [
            asyncio.create_task(self._pump(self.to_answerer, self.answerer)),
            asyncio.create_task(self._pump(self.to_offerer, self.offerer)),
        ]

    @staticmethod
    def _over_the_wire(message: Message) -> Message:
        decoded = SIGNALING.decode(SIGNALING.encode(message))
        assert decoded == message
        return decoded

    async def _send_from_offerer(self, message: Message) -> None:
        self.sent_by_offerer.append(message)
        for out in self._rewrite(message):
            self.to_answerer.put_nowait(self._over_the_wire(out))

    async def _send_from_answerer(self, message: Message) -> None:
        self.sent_by_answerer.append(message)
        self.to_offerer.put_nowait(self._over_the_wire(message))

    async def _pump(self, queue: asyncio.Queue[Message], call: PeerCall) -> None:
        while True:
            message = await queue.get()
            assert isinstance(message, SignalSdp | SignalCandidate)
            try:
                await call.handle_signal(message)
            except Exception as exc:
                self.errors.append(exc)

    async def connect(self) -> None:
        await self.offerer.start()
        await wait_event(self.offerer.connected)
        await wait_event(self.answerer.connected)

    async def aclose(self) -> None:
        await self.offerer.close()
        await self.answerer.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


async def wait_event(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), TIMEOUT)


async def wait_until(listeners: Listeners[T], condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds, re-checking whenever ``listeners`` fire."""
    if condition():
        return
    changed = asyncio.Event()

    def check(_: T) -> None:
        if condition():
            changed.set()

    unsubscribe = listeners.add(check)
    try:
        await asyncio.wait_for(changed.wait(), TIMEOUT)
    finally:
        unsubscribe()


def state_of(call: PeerCall, message_id: str, *, outgoing: bool) -> DeliveryState | None:
    entry = call.chat.outgoing(message_id) if outgoing else call.chat.incoming(message_id)
    return None if entry is None else entry.state


@pytest.fixture
async def link() -> AsyncIterator[SignalLink]:
    pair = SignalLink()
    try:
        yield pair
    finally:
        await pair.aclose()
    assert pair.errors == []


@pytest.fixture
async def connected(link: SignalLink) -> SignalLink:
    await link.connect()
    return link


# -- negotiation -------------------------------------------------------------------------


async def test_call_connects_and_closes_with_the_whole_state_history(link: SignalLink) -> None:
    assert link.offerer.state is CallState.NEW
    await link.connect()
    assert link.offerer.chat_open
    assert link.answerer.chat_open
    assert link.offerer_states == ["connecting", "connected"]
    assert link.answerer_states == ["connecting", "connected"]

    # One offer, one answer, no trickled candidates: aiortc put them all in the SDP.
    assert [type(m) for m in link.sent_by_offerer] == [SignalSdp]
    assert [type(m) for m in link.sent_by_answerer] == [SignalSdp]
    offer, answer = link.sent_by_offerer[0], link.sent_by_answerer[0]
    assert isinstance(offer, SignalSdp)
    assert isinstance(answer, SignalSdp)
    assert offer.sdp_type is SdpType.OFFER
    assert answer.sdp_type is SdpType.ANSWER
    assert "a=candidate:" in offer.sdp
    assert "a=candidate:" in answer.sdp

    # The technician closes; the device's connection notices and closes by itself.
    await link.offerer.close()
    await wait_event(link.answerer.closed)
    assert link.offerer.closed.is_set()
    assert link.offerer_states == ["connecting", "connected", "closed"]
    assert link.answerer_states == ["connecting", "connected", "closed"]
    assert link.answerer.state is CallState.CLOSED


async def test_fingerprints_match_crosswise(link: SignalLink) -> None:
    assert link.offerer.local_fingerprint is None
    assert link.offerer.remote_fingerprint is None
    await link.connect()
    offerer, answerer = link.offerer, link.answerer
    assert offerer.local_fingerprint is not None
    assert offerer.local_fingerprint.startswith("sha-256 ")
    assert offerer.local_fingerprint == answerer.remote_fingerprint
    assert answerer.local_fingerprint == offerer.remote_fingerprint
    assert offerer.local_fingerprint != answerer.local_fingerprint


async def test_wrong_direction_and_wrong_session_are_refused(connected: SignalLink) -> None:
    offerer, answerer = connected.offerer, connected.answerer
    offer, answer = connected.sent_by_offerer[0], connected.sent_by_answerer[0]
    assert isinstance(offer, SignalSdp)
    assert isinstance(answer, SignalSdp)

    for call, sdp in [(offerer, offer), (answerer, answer)]:
        with pytest.raises(LocalProtocolError) as excinfo:
            await call.handle_signal(sdp)
        assert excinfo.value.code is ErrorCode.BAD_STATE

    elsewhere = SignalSdp(session_id="sess-2", sdp_type=SdpType.OFFER, sdp=offer.sdp)
    with pytest.raises(LocalProtocolError) as excinfo:
        await answerer.handle_signal(elsewhere)
    assert excinfo.value.code is ErrorCode.BAD_STATE

    # A second offer in the middle of the call's first answer is out of state too.
    with pytest.raises(LocalProtocolError):
        await answerer.start()
    with pytest.raises(LocalProtocolError):
        await offerer.start()

    # Nothing was disturbed.
    mid = await offerer.send_chat("still here?")
    await wait_until(answerer.chat.listeners, lambda: answerer.chat.incoming(mid) is not None)
    assert connected.offerer_states == ["connecting", "connected"]


async def test_sdp_without_a_certificate_is_the_peers_fault(link: SignalLink) -> None:
    # aiortc itself would accept "garbage" as an offer with no media at all.
    for sdp in ["garbage", "v=0\r\n"]:
        with pytest.raises(RemoteProtocolError) as excinfo:
            await link.answerer.handle_signal(
                SignalSdp(session_id=SESSION, sdp_type=SdpType.OFFER, sdp=sdp)
            )
        assert excinfo.value.code is ErrorCode.INVALID_FIELD
    assert link.answerer.remote_fingerprint is None
    assert link.sent_by_answerer == []


def _trickle_offer(message: Message) -> list[Message]:
    """Send the offer without its candidates, then each one as a SignalCandidate."""
    if not isinstance(message, SignalSdp):
        return [message]
    lines = message.sdp.split("\r\n")
    candidates = [line for line in lines if line.startswith("a=candidate:")]
    kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-cand"))]
    bare = SignalSdp(
        session_id=message.session_id, sdp_type=message.sdp_type, sdp="\r\n".join(kept)
    )
    trickled: list[Message] = [
        SignalCandidate(session_id=message.session_id, candidate=line[2:], sdp_mid="0")
        for line in candidates
    ]
    assert trickled, "aiortc gathered no candidate"
    return [bare, *trickled]


async def test_trickled_candidates_are_accepted() -> None:
    link = SignalLink(rewrite_offerer=_trickle_offer)
    try:
        await link.connect()
        # ICE could also succeed on peer-reflexive candidates learnt from the
        # offerer's checks (same address, type "prflx"); make sure the trickled host
        # candidates really reached aiortc.
        offer = link.sent_by_offerer[0]
        assert isinstance(offer, SignalSdp)
        sctp = link.answerer._pc.sctp
        assert sctp is not None
        remote = sctp.transport.transport.getRemoteCandidates()
        known = {(c.ip, c.port, c.type) for c in remote}
        announced = {
            (bits[4], int(bits[5]), bits[7])
            for line in offer.sdp.split("\r\n")
            if line.startswith("a=candidate:") and (bits := line.split())
        }
        assert announced
        assert announced <= known
        mid = await link.offerer.send_chat("trickled")
        answerer = link.answerer
        await wait_until(answerer.chat.listeners, lambda: answerer.chat.incoming(mid) is not None)
    finally:
        await link.aclose()
    assert link.errors == []


@pytest.mark.parametrize(
    ("candidate", "mid", "index"),
    [
        ("candidate:1 1 udp 1 127.0.0.1 9 typ host", None, None),  # no m-line named
        ("candidate:not a candidate", "0", None),
        ("candidate:1 1 udp high 127.0.0.1 9 typ host", "0", None),
    ],
)
async def test_bad_candidates_are_the_peers_fault(
    link: SignalLink, candidate: str, mid: str | None, index: int | None
) -> None:
    bad = SignalCandidate(
        session_id=SESSION, candidate=candidate, sdp_mid=mid, sdp_mline_index=index
    )
    with pytest.raises(RemoteProtocolError) as excinfo:
        await link.answerer.handle_signal(bad)
    assert excinfo.value.code is ErrorCode.INVALID_FIELD


# -- chat --------------------------------------------------------------------------------


async def exchange_with_receipts(sender: PeerCall, receiver: PeerCall) -> None:
    seen: list[DeliveryState] = []
    sender.chat.listeners.add(lambda e: seen.append(e.state) if e.outgoing else None)

    mid = await sender.send_chat("Hello\nthere ✓")
    await wait_until(
        sender.chat.listeners,
        lambda: state_of(sender, mid, outgoing=True) is DeliveryState.DELIVERED,
    )
    received = receiver.chat.incoming(mid)
    assert received is not None
    assert received.text == "Hello\nthere ✓"
    assert received.author == sender.author
    assert not received.outgoing
    assert [e.message_id for e in receiver.chat.unread_incoming()] == [mid]

    assert await receiver.mark_read([mid]) == [mid]
    await wait_until(
        sender.chat.listeners,
        lambda: state_of(sender, mid, outgoing=True) is DeliveryState.READ,
    )
    assert receiver.chat.unread_incoming() == []
    assert seen == [DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.READ]
    assert list(sender.chat.delivery_rtts_ms()) == [mid]
    assert sender.chat.delivery_rtts_ms()[mid] >= 0.0


async def test_chat_both_ways_with_delivered_then_read_receipts(connected: SignalLink) -> None:
    await exchange_with_receipts(connected.offerer, connected.answerer)
    await exchange_with_receipts(connected.answerer, connected.offerer)
    assert len(connected.offerer.chat) == len(connected.answerer.chat) == 2


async def test_mark_read_batches_and_skips_what_is_done(connected: SignalLink) -> None:
    offerer, answerer = connected.offerer, connected.answerer
    count = RECEIPT_BATCH + 3
    mids = [await offerer.send_chat(f"message {i}") for i in range(count)]
    await wait_until(answerer.chat.listeners, lambda: len(answerer.chat) == count)
    assert [e.message_id for e in answerer.chat] == mids  # ordered channel

    frames_before = (await answerer.stats())["chat_frames_sent"]
    assert await answerer.mark_read([*mids, "unknown", mids[0]]) == mids
    stats = await answerer.stats()
    assert stats["chat_frames_sent"] - frames_before == 2  # one frame per batch of ids
    assert await answerer.mark_read(mids) == []  # already read: nothing sent
    assert (await answerer.stats())["chat_frames_sent"] == stats["chat_frames_sent"]

    await wait_until(
        offerer.chat.listeners,
        lambda: all(e.state is DeliveryState.READ for e in offerer.chat),
    )


async def test_typing_indicator(connected: SignalLink) -> None:
    offerer, answerer = connected.offerer, connected.answerer
    await answerer.send_typing(True)
    await wait_until(offerer.chat.typing_listeners, lambda: offerer.chat.peer_typing)
    await answerer.send_typing(True)  # no change: nothing sent
    await answerer.send_chat("done typing")
    await wait_until(offerer.chat.listeners, lambda: len(offerer.chat) == 1)
    assert not offerer.chat.peer_typing


async def test_too_long_text_is_refused_before_sending(connected: SignalLink) -> None:
    offerer = connected.offerer
    before = await offerer.stats()
    with pytest.raises(LocalProtocolError) as excinfo:
        await offerer.send_chat("x" * 4001)
    assert excinfo.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(LocalProtocolError):
        await offerer.send_chat("")
    assert len(offerer.chat) == 0
    assert (await offerer.stats())["chat_frames_sent"] == before["chat_frames_sent"]


async def test_bad_frames_are_dropped_and_counted(connected: SignalLink) -> None:
    offerer, answerer = connected.offerer, connected.answerer
    channel = offerer._channel  # the raw channel: a misbehaving peer
    assert channel is not None
    duplicate = await offerer.send_chat("first")
    await wait_until(answerer.chat.listeners, lambda: len(answerer.chat) == 1)
    garbage: list[str | bytes] = [
        "not json",
        b"\xff\xfe not utf-8",
        '{"type": "chat.nope"}',
        '{"type": "chat.typing", "active": "yes"}',
        '{"type": "chat.message", "message_id": "a", "text": "'
        + "x" * 4001
        + '", "sent_at_ms": 1, "author": "x"}',
        # A valid frame reusing an id is not a new message either.
        CHAT.encode(ChatMessage(message_id=duplicate, text="again", sent_at_ms=1, author="x")),
    ]
    for frame in garbage:
        channel.send(frame)
    # The channel is ordered: once this arrives, every frame before it was handled.
    mid = await offerer.send_chat("still fine")
    await wait_until(answerer.chat.listeners, lambda: answerer.chat.incoming(mid) is not None)
    assert answerer.bad_frames == len(garbage)
    assert (await answerer.stats())["bad_frames"] == len(garbage)
    assert [e.text for e in answerer.chat] == ["first", "still fine"]

    # And the call works both ways as before.
    back = await answerer.send_chat("and back")
    await wait_until(
        answerer.chat.listeners,
        lambda: state_of(answerer, back, outgoing=True) is DeliveryState.DELIVERED,
    )
    assert connected.answerer_states == ["connecting", "connected"]


async def test_a_failing_listener_does_not_break_the_call(connected: SignalLink) -> None:
    offerer, answerer = connected.offerer, connected.answerer

    def broken(_: object) -> None:
        raise RuntimeError("a view bug")

    remove = answerer.chat.listeners.add(broken)
    await offerer.send_chat("one")
    await wait_until(answerer.chat.listeners, lambda: len(answerer.chat) == 1)
    remove()
    mid = await offerer.send_chat("two")
    await wait_until(
        offerer.chat.listeners,
        lambda: state_of(offerer, mid, outgoing=True) is DeliveryState.DELIVERED,
    )


async def test_stats_report_a_direct_route_and_chat_bytes(connected: SignalLink) -> None:
    offerer, answerer = connected.offerer, connected.answerer
    mid = await offerer.send_chat("12345")
    await wait_until(
        offerer.chat.listeners,
        lambda: state_of(offerer, mid, outgoing=True) is DeliveryState.DELIVERED,
    )
    sent, received = await offerer.stats(), await answerer.stats()
    assert sent["state"] == received["state"] == "connected"
    assert sent["route"] == received["route"] == "direct"
    assert sent["local_candidate_type"] == "host"
    assert sent["chat_frames_sent"] == received["chat_frames_received"] == 1
    assert sent["chat_bytes_sent"] == received["chat_bytes_received"] > 5
    assert received["chat_frames_sent"] == sent["chat_frames_received"] == 1  # the receipt
    assert sent["bad_frames"] == 0


async def test_stats_before_connecting_are_honest(link: SignalLink) -> None:
    stats = await link.offerer.stats()
    assert stats["state"] == "new"
    assert stats["route"] is None
    assert stats["local_candidate_type"] is None


# -- closing -----------------------------------------------------------------------------


async def test_close_clears_the_chat_and_is_idempotent(connected: SignalLink) -> None:
    offerer, answerer = connected.offerer, connected.answerer
    mid = await offerer.send_chat("forget me")
    await wait_until(
        offerer.chat.listeners,
        lambda: state_of(offerer, mid, outgoing=True) is DeliveryState.DELIVERED,
    )
    cleared: list[None] = []
    answerer.chat.clear_listeners.add(cleared.append)

    await asyncio.gather(answerer.close(), answerer.close())
    await answerer.close()
    assert len(answerer.chat) == 0
    assert answerer.chat.delivery_rtts_ms() == {}
    assert cleared == [None]  # cleared once, however many closes
    assert answerer.closed.is_set()
    assert not answerer.chat_open

    with pytest.raises(LocalProtocolError) as excinfo:
        await answerer.send_chat("too late")
    assert excinfo.value.code is ErrorCode.BAD_STATE
    with pytest.raises(LocalProtocolError):
        await answerer.handle_signal(SignalCandidate(session_id=SESSION, candidate="x"))

    # The far end notices, and knows it was a close on purpose, not a lost path (the
    # console would otherwise offer a new connection: docs/calls.md, "Path loss").
    await wait_event(offerer.closed)
    assert offerer.peer_closed
    assert not offerer.dropped
    assert not answerer.peer_closed
    assert not answerer.dropped
    assert len(offerer.chat) == 1
    await offerer.close()
    assert len(offerer.chat) == 0


async def test_close_before_connecting(link: SignalLink) -> None:
    await link.offerer.close()
    await link.answerer.close()
    assert link.offerer.closed.is_set()
    assert link.answerer.closed.is_set()
    assert link.offerer_states == ["closed"]
    with pytest.raises(LocalProtocolError):
        await link.offerer.start()


async def test_chat_needs_an_open_channel(link: SignalLink) -> None:
    with pytest.raises(LocalProtocolError) as excinfo:
        await link.offerer.send_chat("nobody there")
    assert excinfo.value.code is ErrorCode.BAD_STATE
    with pytest.raises(LocalProtocolError):
        await link.answerer.send_typing(True)
    assert len(link.offerer.chat) == 0


def test_an_author_the_protocol_refuses_is_refused_at_once() -> None:
    async def send(_: Message) -> None:
        raise AssertionError("nothing may be sent")

    with pytest.raises(LocalProtocolError):
        PeerCall(session_id=SESSION, is_offerer=True, author="", send_signal=send)
