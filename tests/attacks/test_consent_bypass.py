"""Ways around the device user's consent, each refused by the real server.

A call needs, in order: a technician's ``session.start`` (in scope), the device user's
``session.accept`` on that device, then SDP and candidates, then the device's signed
consent receipt binding both DTLS fingerprints. Each test tries to skip or fake one
step and checks the typed refusal, that the session did not move on (the store and
the hub), and what the other side saw (nothing).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import identity
from protocol.enums import Mode, RejectReason, SdpType, SessionState
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import (
    AuthTechnician,
    SessionAccept,
    SessionClose,
    SessionConsent,
    SessionInvite,
    SessionStart,
    SessionUpdate,
    SignalCandidate,
    SignalSdp,
)
from tests.conftest import PASSWORD, Lab
from tests.signaling_server.wire import (
    FINGERPRINT_A,
    FINGERPRINT_B,
    EnrolledDevice,
    Wire,
    clients,
    enrol,
    hub_of,
    login,
    post,
    sdp,
    small_lab,
)

CANDIDATE = "candidate:1 1 udp 2122260223 127.0.0.1 54321 typ host"


async def _invite(console: Wire, device: EnrolledDevice, device_wire: Wire) -> str:
    update = await console.ok(
        SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="Ticket #7")
    )
    assert isinstance(update, SessionUpdate)
    await device_wire.expect(SessionInvite, where=lambda i: i.session_id == update.session_id)
    return update.session_id


async def _denials(lab: Lab, actor: str, action: str) -> list[str]:
    return [
        r.outcome for r in await lab.store.audit_rows() if r.actor == actor and r.action == action
    ]


async def test_a_device_cannot_start_a_session_not_even_with_itself(lab: Lab) -> None:
    """(tests/signaling_server/test_server.py checks a device starting one with
    another device; here it tries itself, and the attempt is audited.)"""
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        console = await c.console("tech")
        await wire.refused(
            SessionStart(device_id=device.device_id, mode=Mode.VIDEO, reason="me"),
            ErrorCode.UNKNOWN_TYPE,
        )
        assert await lab.store.sessions() == []
        assert hub_of(lab.server).sessions == {}
        assert await _denials(lab, device.device_id, "session.start") == ["unknown_type"]
        await console.round_trip()
        assert not console.pending(SessionUpdate)


async def test_sdp_candidates_and_consent_before_acceptance_are_refused(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        console = await c.console("tech")
        session_id = await _invite(console, device, device_wire)

        # The console pushes an offer and candidates at a device that has not accepted.
        offer = SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(FINGERPRINT_A))
        await console.refused(offer, ErrorCode.BAD_STATE)
        await console.refused(
            SignalCandidate(session_id=session_id, candidate=CANDIDATE), ErrorCode.BAD_STATE
        )
        # The device answers (or consents) before its user accepted.
        answer = SignalSdp(session_id=session_id, sdp_type=SdpType.ANSWER, sdp=sdp(FINGERPRINT_B))
        await device_wire.refused(answer, ErrorCode.BAD_STATE)
        await device_wire.refused(
            SignalCandidate(session_id=session_id, candidate=CANDIDATE), ErrorCode.BAD_STATE
        )
        receipt = identity.sign_consent(
            device.key,
            session_id=session_id,
            device_id=device.device_id,
            technician_id=lab.tech.id,
            mode=Mode.TEXT,
            accepted_at_ms=1,
            offer_fingerprint=FINGERPRINT_A,
            answer_fingerprint=FINGERPRINT_B,
        )
        await device_wire.refused(SessionConsent(receipt=receipt), ErrorCode.BAD_STATE)

        # Nothing crossed over, and the session is where it was.
        await device_wire.round_trip()
        await console.round_trip()
        assert not device_wire.pending(SignalSdp)
        assert not device_wire.pending(SignalCandidate)
        assert not console.pending(SignalSdp)
        assert not console.pending(SessionConsent)
        live = hub_of(lab.server).sessions[session_id]
        assert live.machine.state is SessionState.INVITED
        assert live.offer_fingerprint is None
        assert live.answer_fingerprint is None
        row = await lab.store.session(session_id)
        assert row is not None
        assert row.state == SessionState.INVITED.value
        assert row.consent_receipt is None
        assert row.accepted_mode is None


async def test_acceptance_by_another_device_is_refused(lab: Lab) -> None:
    async with clients(lab) as c:
        called, intruder = await enrol(lab, name="Called"), await enrol(lab, name="Intruder")
        called_wire, intruder_wire = await c.device(called), await c.device(intruder)
        console = await c.console("tech")
        session_id = await _invite(console, called, called_wire)

        await intruder_wire.refused(
            SessionAccept(session_id=session_id, mode=Mode.TEXT), ErrorCode.NOT_FOUND
        )
        # The same refusal as for a session that does not exist (nothing leaks), but
        # the attempt on a real session is recorded.
        assert await _denials(lab, intruder.device_id, "session.accept") == ["not_found"]
        row = await lab.store.session(session_id)
        assert row is not None
        assert row.state == SessionState.INVITED.value
        assert row.accepted_mode is None
        await console.round_trip()
        assert not console.pending(SessionUpdate)
        # The called device's own answer still counts.
        await called_wire.ok(SessionAccept(session_id=session_id, mode=Mode.TEXT))
        await console.expect(
            SessionUpdate,
            where=lambda u: u.state is SessionState.CONNECTING and u.mode is Mode.TEXT,
        )


async def _accepted_with_sdp(console: Wire, device: EnrolledDevice, device_wire: Wire) -> str:
    session_id = await _invite(console, device, device_wire)
    await device_wire.ok(SessionAccept(session_id=session_id, mode=Mode.TEXT))
    await console.send(
        SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(FINGERPRINT_A))
    )
    await device_wire.expect(SignalSdp)
    await device_wire.send(
        SignalSdp(session_id=session_id, sdp_type=SdpType.ANSWER, sdp=sdp(FINGERPRINT_B))
    )
    await console.expect(SignalSdp)
    return session_id


def _receipt(
    lab: Lab, device: EnrolledDevice, session_id: str, key: Ed25519PrivateKey | None = None
) -> SessionConsent:
    return SessionConsent(
        receipt=identity.sign_consent(
            device.key if key is None else key,
            session_id=session_id,
            device_id=device.device_id,
            technician_id=lab.tech.id,
            mode=Mode.TEXT,
            accepted_at_ms=1_700_000_000_000,
            offer_fingerprint=FINGERPRINT_A,
            answer_fingerprint=FINGERPRINT_B,
        )
    )


async def test_replayed_acceptance_and_consent_are_refused(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        console = await c.console("tech")

        first = await _accepted_with_sdp(console, device, device_wire)
        old_consent = _receipt(lab, device, first)
        await device_wire.ok(old_consent)
        await console.expect(SessionConsent)
        # Accepting again within the same session moves nothing.
        await device_wire.refused(
            SessionAccept(session_id=first, mode=Mode.TEXT), ErrorCode.BAD_STATE
        )
        await console.ok(_close(first))

        second = await _accepted_with_sdp(console, device, device_wire)
        # The first session's acceptance and receipt, replayed.
        await device_wire.refused(
            SessionAccept(session_id=first, mode=Mode.TEXT), ErrorCode.NOT_FOUND
        )
        await device_wire.refused(old_consent, ErrorCode.NOT_FOUND)
        # The old receipt pointed at the new session: the signature no longer holds
        # (same fingerprints, so only the signature can tell).
        moved = dataclasses.replace(old_consent.receipt, session_id=second)
        await device_wire.refused(SessionConsent(receipt=moved), ErrorCode.BAD_SIGNATURE)
        # A receipt for this session, signed by another key.
        forged = _receipt(lab, device, second, identity.generate_key())
        await device_wire.refused(forged, ErrorCode.BAD_SIGNATURE)
        # A receipt naming other fingerprints than the ones negotiated.
        other_call = dataclasses.replace(
            _receipt(lab, device, second).receipt, offer_fingerprint=FINGERPRINT_B
        )
        await device_wire.refused(SessionConsent(receipt=other_call), ErrorCode.INVALID_FIELD)

        await console.round_trip()
        assert not console.pending(SessionConsent)
        row = await lab.store.session(second)
        assert row is not None
        assert row.consent_receipt is None
        # The genuine receipt of this call is still taken.
        await device_wire.ok(_receipt(lab, device, second))
        await console.expect(SessionConsent, where=lambda m: m.receipt.session_id == second)


def _close(session_id: str) -> SessionClose:
    return SessionClose(session_id=session_id)


async def test_stale_expired_and_revoked_technician_tokens_are_refused(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)

        expired, _ = await lab.store.login("tech", PASSWORD, ttl_s=-1)
        logged_out = await login(lab, "tech")
        status, _ = await post(lab, "/api/v1/logout", {}, token=logged_out)
        assert status == 200
        for token in (expired, logged_out, "x" * 43):
            wire = await c.raw()
            await wire.send(AuthTechnician(token=token))
            await wire.expect_error(ErrorCode.UNAUTHENTICATED)
            assert await wire.wait_closed() == CloseCode.AUTH_FAILED

        # A console whose token is revoked while it is connected is closed at once,
        # before it can invite anyone.
        token = await login(lab, "tech")
        console = await c.raw()
        await console.auth_technician(token)
        status, _ = await post(lab, "/api/v1/logout", {}, token=token)
        assert status == 200
        assert await console.wait_closed() == CloseCode.AUTH_FAILED

        # A token that runs out while connected ends that connection too.
        short, _ = await lab.store.login("tech", PASSWORD, ttl_s=1)
        brief = await c.raw()
        await brief.auth_technician(short)
        assert await brief.wait_closed(timeout_s=15.0) == CloseCode.AUTH_FAILED

        assert await lab.store.sessions() == []
        await device_wire.round_trip()
        assert not device_wire.pending(SessionInvite)


async def test_an_unanswered_invite_expires_as_a_rejection_and_a_late_answer_is_refused(
    tmp_path: Path,
) -> None:
    async with small_lab(tmp_path, invite_timeout_s=0.5) as lab, clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        console = await c.console("admin")
        update = await console.ok(
            SessionStart(device_id=device.device_id, mode=Mode.TEXT, reason="Ticket")
        )
        assert isinstance(update, SessionUpdate)
        session_id = update.session_id
        await device_wire.expect(SessionInvite)

        rejected = await console.expect(
            SessionUpdate, where=lambda u: u.state is SessionState.EXPIRED
        )
        assert rejected.reject_reason is RejectReason.NO_ANSWER
        await device_wire.expect(SessionUpdate, where=lambda u: u.state is SessionState.EXPIRED)

        # Too late: the answer, SDP and consent of a timed-out invite are refused.
        await device_wire.refused(
            SessionAccept(session_id=session_id, mode=Mode.TEXT), ErrorCode.NOT_FOUND
        )
        await console.refused(
            SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(FINGERPRINT_A)),
            ErrorCode.NOT_FOUND,
        )
        await device_wire.refused(
            SessionConsent(
                receipt=identity.sign_consent(
                    device.key,
                    session_id=session_id,
                    device_id=device.device_id,
                    technician_id=lab.admin.id,
                    mode=Mode.TEXT,
                    accepted_at_ms=1,
                    offer_fingerprint=FINGERPRINT_A,
                    answer_fingerprint=FINGERPRINT_B,
                )
            ),
            ErrorCode.NOT_FOUND,
        )
        row = await lab.store.session(session_id)
        assert row is not None
        assert row.state == SessionState.EXPIRED.value
        assert row.end_reason == RejectReason.NO_ANSWER.value
        assert row.accepted_mode is None
        assert row.consent_receipt is None
        assert session_id not in lab.hub.sessions
        await console.round_trip()
        assert not console.pending(SessionConsent)
