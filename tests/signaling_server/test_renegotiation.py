"""The server's part in a lost media path (docs/calls.md, "Path loss"): a new offer for
a call already up is relayed, its fingerprints replace the old ones (only a receipt
binding them is accepted), it is audited, and an offer sent while the device's own
signaling link is down (a network change takes both) reaches the device when it is
back. Hand-made frames against the lab's real server."""

from __future__ import annotations

import time

from protocol import identity
from protocol.enums import Mode, SdpType, SessionState
from protocol.errors import ErrorCode
from protocol.messages import (
    CallConnected,
    SessionAccept,
    SessionConsent,
    SessionStart,
    SessionUpdate,
    SignalSdp,
)
from tests.conftest import Lab
from tests.integration.harness import until
from tests.signaling_server.wire import (
    FINGERPRINT_A,
    FINGERPRINT_B,
    EnrolledDevice,
    Wire,
    clients,
    enrol,
    hub_of,
    sdp,
)

FINGERPRINT_C = "sha-256 " + ":".join(["EF"] * 32)
FINGERPRINT_D = "sha-256 " + ":".join(["12"] * 32)


def offer(session_id: str, fingerprint: str) -> SignalSdp:
    return SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(fingerprint))


def answer(session_id: str, fingerprint: str) -> SignalSdp:
    return SignalSdp(session_id=session_id, sdp_type=SdpType.ANSWER, sdp=sdp(fingerprint))


def receipt(
    lab: Lab, device: EnrolledDevice, session_id: str, offer_print: str, answer_print: str
) -> SessionConsent:
    return SessionConsent(
        receipt=identity.sign_consent(
            device.key,
            session_id=session_id,
            device_id=device.device_id,
            technician_id=lab.tech.id,
            mode=Mode.VIDEO,
            accepted_at_ms=int(time.time() * 1000),
            offer_fingerprint=offer_print,
            answer_fingerprint=answer_print,
        )
    )


async def in_call(lab: Lab, console: Wire, device_wire: Wire, device: EnrolledDevice) -> str:
    update = await console.ok(
        SessionStart(device_id=device.device_id, mode=Mode.VIDEO, reason="Ticket #9")
    )
    assert isinstance(update, SessionUpdate)
    session_id = update.session_id
    await device_wire.ok(SessionAccept(session_id=session_id, mode=Mode.VIDEO))
    await console.send(offer(session_id, FINGERPRINT_A))
    await device_wire.expect(SignalSdp)
    await device_wire.send(answer(session_id, FINGERPRINT_B))
    await console.expect(SignalSdp)
    await device_wire.ok(receipt(lab, device, session_id, FINGERPRINT_A, FINGERPRINT_B))
    await console.ok(CallConnected(session_id=session_id))
    return session_id


async def test_a_new_connection_replaces_the_keys_the_receipt_must_bind(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab, name="Tablet")
        console, device_wire = await c.console("tech"), await c.device(device)
        session_id = await in_call(lab, console, device_wire, device)

        await console.send(offer(session_id, FINGERPRINT_C))
        relayed = await device_wire.expect(SignalSdp, where=lambda m: m.sdp_type is SdpType.OFFER)
        assert identity.sdp_fingerprint(relayed.sdp) == FINGERPRINT_C
        await device_wire.send(answer(session_id, FINGERPRINT_D))
        await console.expect(SignalSdp, where=lambda m: m.sdp_type is SdpType.ANSWER)

        # The first connection's receipt no longer describes the call: refused.
        stale = receipt(lab, device, session_id, FINGERPRINT_A, FINGERPRINT_B)
        await device_wire.refused(stale, ErrorCode.INVALID_FIELD)
        await device_wire.ok(receipt(lab, device, session_id, FINGERPRINT_C, FINGERPRINT_D))
        assert hub_of(lab.server).sessions[session_id].machine.state is SessionState.IN_CALL
        actions = [(r.action, r.target) for r in await lab.store.audit_rows()]
        assert ("call.renegotiate", device.device_id) in actions


async def test_an_offer_sent_while_the_device_is_away_reaches_it_when_back(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab, name="Tablet")
        console, device_wire = await c.console("tech"), await c.device(device)
        session_id = await in_call(lab, console, device_wire, device)

        await device_wire.close()  # the network change takes the signaling link too
        hub = hub_of(lab.server)
        await until(lambda: device.device_id not in hub.devices_online)
        await console.send(offer(session_id, FINGERPRINT_C))
        await console.round_trip()  # the server has handled the offer

        back = await c.device(device)
        relayed = await back.expect(SignalSdp, where=lambda m: m.sdp_type is SdpType.OFFER)
        assert identity.sdp_fingerprint(relayed.sdp) == FINGERPRINT_C
        assert hub.sessions[session_id].pending_offer is None
        # Delivered once: a second reconnect does not bring it again.
        await back.close()
        again = await c.device(device)
        await again.round_trip()
        assert again.take(SignalSdp) is None
