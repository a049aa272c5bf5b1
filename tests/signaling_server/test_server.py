"""The signaling server over real websockets, with raw clients (``wire.Wire``).

Each test speaks the wire protocol by hand against a real server on loopback with a
real SQLite store (the ``lab`` fixture, or a ``small_lab`` with settings of its own),
and checks what comes back: the replies, the frames the other members see, the close
codes, the audit log and the store.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from protocol import identity
from protocol.codec import MAX_FRAME_BYTES, Message
from protocol.enums import (
    CloseReason,
    DeviceAck,
    LiveSupportStatus,
    Mode,
    NotificationState,
    RejectReason,
    SdpType,
    SessionState,
)
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import (
    AuthDevice,
    AuthTechnician,
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
    SessionClose,
    SessionInvite,
    SessionReject,
    SessionStart,
    SessionUpdate,
    SignalCandidate,
    SignalSdp,
    StatusReport,
)
from signaling_server.store import Device, ProgressWrite
from tests.conftest import Lab
from tests.signaling_server.wire import (
    FINGERPRINT_A,
    FINGERPRINT_B,
    EnrolledDevice,
    Wire,
    clients,
    enrol,
    hub_of,
    sdp,
    small_lab,
)

CANDIDATE = "candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host"


def start(device: EnrolledDevice, mode: Mode = Mode.VIDEO) -> SessionStart:
    return SessionStart(device_id=device.device_id, mode=mode, reason="Ticket #42")


async def invite(console: Wire, device: EnrolledDevice, mode: Mode = Mode.VIDEO) -> str:
    """Start a session; the id of the session, now ``invited``."""
    update = await console.ok(start(device, mode))
    assert isinstance(update, SessionUpdate), update
    assert update.state is SessionState.INVITED
    return update.session_id


async def state_of(wire: Wire, session_id: str, state: SessionState) -> SessionUpdate:
    return await wire.expect(
        SessionUpdate, where=lambda u: u.session_id == session_id and u.state is state
    )


async def device_update(
    console: Wire, device: EnrolledDevice, status: LiveSupportStatus
) -> DeviceUpdate:
    return await console.expect(
        DeviceUpdate,
        where=lambda u: u.device.device_id == device.device_id and u.device.status is status,
    )


async def settled(*wires: Wire) -> None:
    """A round trip on each wire: whatever the server sent before is read by now."""
    for wire in wires:
        await wire.round_trip()


# --- 1. only technicians start sessions -----------------------------------------------


async def test_a_device_cannot_start_a_session(lab: Lab) -> None:
    async with clients(lab) as c:
        a, b = await enrol(lab, name="A"), await enrol(lab, name="B")
        wire_a, wire_b = await c.device(a), await c.device(b)

        await wire_a.send(wire_a.with_rid(start(b)))
        error = await wire_a.expect_error(ErrorCode.UNKNOWN_TYPE)
        assert error.message == "'session.start' may not be sent by a DEVICE"

        # The connection still works, and the other device saw nothing.
        await wire_a.report()
        await wire_b.report()
        assert not wire_b.pending(SessionInvite)
        assert not wire_b.pending(Error)
        assert not wire_a.pending(Error)
        assert await lab.store.sessions() == []
        hub = hub_of(lab.server)
        assert set(hub.devices_online) == {a.device_id, b.device_id}
        assert hub.sessions == {}


async def test_a_change_committed_while_a_snapshot_is_read_is_not_undone_by_it(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot read before a status change was committed must not reach the
    console after that change's update (it would undo it there): updates made while
    a console's snapshot is read are sent after it. Found in CI: a device that came
    back disabled showed as enabled on a console that subscribed at that moment."""
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        await device_wire.report(enabled=True)
        viewer = await c.console("viewer")
        read, release = asyncio.Event(), asyncio.Event()
        read_devices = lab.store.devices

        async def read_then_wait(groups: Sequence[str] | None) -> list[Device]:
            devices = await read_devices(groups)  # before the change below
            read.set()
            await release.wait()
            return devices

        monkeypatch.setattr(lab.store, "devices", read_then_wait)
        subscribing = asyncio.create_task(viewer.ok(DevicesSubscribe()))
        await asyncio.wait_for(read.wait(), 5)
        await device_wire.report(enabled=False)  # committed and fanned out meanwhile
        release.set()
        snapshot = await subscribing
        assert isinstance(snapshot, DevicesSnapshot)
        # Read before the change: not disabled.
        assert [d.status is LiveSupportStatus.DISABLED for d in snapshot.devices] == [False]
        assert viewer.pending(DeviceUpdate) == []  # nothing came before the snapshot
        await device_update(viewer, device, LiveSupportStatus.DISABLED)


async def test_updates_held_for_a_snapshot_that_failed_never_follow_a_later_one(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot whose read fails drops the updates held for it: sent after the next
    snapshot, they would be older than it."""
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        await device_wire.report(enabled=True)
        viewer = await c.console("viewer")
        read, release = asyncio.Event(), asyncio.Event()
        read_devices = lab.store.devices

        async def read_then_fail(groups: Sequence[str] | None) -> list[Device]:
            read.set()
            await release.wait()
            raise RuntimeError("the store is gone")

        monkeypatch.setattr(lab.store, "devices", read_then_fail)
        failing = asyncio.create_task(viewer.request(DevicesSubscribe()))
        await asyncio.wait_for(read.wait(), 5)
        await device_wire.report(enabled=False)  # held for the snapshot
        release.set()
        assert isinstance(await failing, Error)
        # Sent at once (no snapshot under way); enabled and idle is shown as this.
        await device_wire.report(enabled=True)
        await device_update(viewer, device, LiveSupportStatus.DISCONNECTED)
        monkeypatch.setattr(lab.store, "devices", read_devices)
        snapshot = await viewer.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert [d.status for d in snapshot.devices] == [LiveSupportStatus.DISCONNECTED]
        # Whatever the server sent after the snapshot is read once this one arrives.
        await device_wire.report(enabled=True, name="After")
        await viewer.expect(DeviceUpdate, where=lambda u: u.device.name == "After")
        held_before = LiveSupportStatus.DISABLED
        assert [u for u in viewer.pending(DeviceUpdate) if u.device.status is held_before] == []


# --- 2, 3. permission and scope, audited ----------------------------------------------


async def test_a_viewer_may_not_start_a_session(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        viewer = await c.console("viewer")

        # The viewer may look at devices...
        snapshot = await viewer.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert [d.device_id for d in snapshot.devices] == [device.device_id]
        # ...but not call them nor notify them.
        await viewer.refused(start(device), ErrorCode.FORBIDDEN)
        await viewer.refused(
            NotifySend(device_ids=(device.device_id,), title="t", body="b"), ErrorCode.FORBIDDEN
        )

        denials = [
            r
            for r in await lab.store.audit_rows()
            if r.actor == lab.viewer.id and r.action == "session.start"
        ]
        assert len(denials) == 1
        assert denials[0].outcome == "forbidden"
        assert denials[0].target == device.device_id
        assert await lab.store.sessions() == []
        await device_wire.report()
        assert not device_wire.pending(SessionInvite)


async def test_a_device_outside_the_technicians_groups_is_out_of_scope(lab: Lab) -> None:
    async with clients(lab) as c:
        online, offline = await enrol(lab, name="Online"), await enrol(lab, name="Offline")
        device_wire = await c.device(online)
        other = await c.console("other-tech")  # scope: desktops

        snapshot = await other.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert snapshot.devices == ()
        await other.refused(start(online, Mode.TEXT), ErrorCode.OUT_OF_SCOPE)
        # The same answer for an offline device: presence does not leak out of scope.
        await other.refused(start(offline, Mode.TEXT), ErrorCode.OUT_OF_SCOPE)
        await other.refused(
            SessionStart(device_id="dev-0000000000000000", mode=Mode.TEXT, reason="x"),
            ErrorCode.NOT_FOUND,
        )

        denials = [
            r
            for r in await lab.store.audit_rows()
            if r.actor == lab.other_tech.id and r.action == "session.start"
        ]
        assert sorted((r.target, r.outcome) for r in denials) == sorted(
            [(online.device_id, "out_of_scope"), (offline.device_id, "out_of_scope")]
        )
        assert await lab.store.sessions() == []
        await device_wire.report()
        assert not device_wire.pending(SessionInvite)


# --- 4. device authentication -------------------------------------------------------


async def test_bad_device_signatures_are_refused_and_others_keep_working(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        first = await c.raw()
        captured = first.sign(device.key, device.device_id)
        await first.ok(AuthDevice(device_id=device.device_id, signature=captured))

        # A replay: the signature over the first connection's nonce.
        replay = await c.raw()
        assert replay.challenge.nonce != first.challenge.nonce
        await replay.send(AuthDevice(device_id=device.device_id, signature=captured))
        await replay.expect_error(ErrorCode.BAD_SIGNATURE)
        assert await replay.wait_closed() == CloseCode.AUTH_FAILED

        # Another key over the right nonce.
        foreign = await c.raw()
        forged = foreign.sign(identity.generate_key(), device.device_id)
        await foreign.send(AuthDevice(device_id=device.device_id, signature=forged))
        await foreign.expect_error(ErrorCode.BAD_SIGNATURE)
        assert await foreign.wait_closed() == CloseCode.AUTH_FAILED

        # The right key and nonce, but bound to another server's certificate.
        relayed = await c.raw()
        signature = identity.sign_challenge(
            device.key,
            nonce_b64=relayed.challenge.nonce,
            device_id=device.device_id,
            server_fingerprint=FINGERPRINT_A,
        )
        await relayed.send(AuthDevice(device_id=device.device_id, signature=signature))
        await relayed.expect_error(ErrorCode.BAD_SIGNATURE)
        assert await relayed.wait_closed() == CloseCode.AUTH_FAILED

        # An unknown device.
        unknown = await c.raw()
        key = identity.generate_key()
        await unknown.send(
            AuthDevice(device_id="dev-unknown", signature=unknown.sign(key, "dev-unknown"))
        )
        await unknown.expect_error(ErrorCode.UNAUTHENTICATED)
        assert await unknown.wait_closed() == CloseCode.AUTH_FAILED

        # The honest connection was not disturbed, and an honest newcomer gets in.
        await first.report()
        assert not first.pending(Error)
        second = await enrol(lab, name="Second")
        await c.device(second)
        hub = hub_of(lab.server)
        assert set(hub.devices_online) == {device.device_id, second.device_id}
        outcomes = [
            r.outcome
            for r in await lab.store.audit_rows()
            if r.action == "auth.device" and r.actor == device.device_id
        ]
        assert outcomes.count("bad_signature") == 3


# --- 5. bad frames ----------------------------------------------------------------------


async def test_bad_frames_get_clear_errors_and_the_connection_survives(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)

        await wire.send('{"type":"session.teleport","rid":1}')
        error = await wire.expect_error(ErrorCode.UNKNOWN_TYPE)
        assert "session.teleport" in error.message
        await wire.send('{"rid":1}')
        await wire.expect_error(ErrorCode.UNKNOWN_TYPE)
        await wire.send(b'{"type":"status.report"}')
        error = await wire.expect_error(ErrorCode.BAD_FRAME)
        assert "binary" in error.message
        await wire.send('{"type": "status.report",')
        await wire.expect_error(ErrorCode.BAD_FRAME)
        await wire.send("[1, 2, 3]")
        await wire.expect_error(ErrorCode.BAD_FRAME)
        await wire.send('{"type":"status.report","type":"status.report"}')
        await wire.expect_error(ErrorCode.BAD_FRAME)
        await wire.send('{"type":"status.report","service_installed":NaN}')
        await wire.expect_error(ErrorCode.BAD_FRAME)

        report = {
            "type": "status.report",
            "service_installed": True,
            "service_enabled": True,
            "name": "Tablet",
        }
        await wire.send(json.dumps({**report, "service_installed": "yes"}))
        error = await wire.expect_error(ErrorCode.INVALID_FIELD)
        assert error.message.startswith("service_installed:")
        await wire.send(json.dumps({**report, "name": "x" * 129}))
        await wire.expect_error(ErrorCode.TOO_LARGE)
        await wire.send(json.dumps({**report, "chat_services": ["telepathy"]}))
        await wire.expect_error(ErrorCode.INVALID_FIELD)
        await wire.send(json.dumps({**report, "admin": True}))
        error = await wire.expect_error(ErrorCode.INVALID_FIELD)
        assert "unknown field 'admin'" in error.message
        # A refused request still names itself, so a client waiting on it is answered.
        await wire.send(json.dumps({**report, "rid": 77, "service_enabled": 3}))
        error = await wire.expect_error(ErrorCode.INVALID_FIELD)
        assert error.rid == 77
        missing = dict(report)
        del missing["name"]
        await wire.send(json.dumps(missing))
        await wire.expect_error(ErrorCode.INVALID_FIELD)

        # Still authenticated and working after all that.
        await wire.send(json.dumps({**report, "rid": 99}))
        ok = await wire.expect(Ok)
        assert ok.rid == 99
        assert device.device_id in hub_of(lab.server).devices_online


async def test_frames_before_authentication_and_a_wrong_token(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        early = await c.raw()
        await early.refused(
            StatusReport(service_installed=True, service_enabled=True, name="Tablet"),
            ErrorCode.UNAUTHENTICATED,
        )
        await early.refused(DevicesSubscribe(), ErrorCode.UNAUTHENTICATED)
        # Refused, not closed: the client can still authenticate on this connection.
        await early.auth_device(device.device_id, device.key)
        await early.report()

        wrong = await c.raw()
        await wrong.send(AuthTechnician(token="x" * 43))
        await wrong.expect_error(ErrorCode.UNAUTHENTICATED)
        assert await wrong.wait_closed() == CloseCode.AUTH_FAILED

        # Once a device, a connection cannot authenticate again as someone else.
        await early.send(AuthTechnician(token="x" * 43))
        await early.expect_error(ErrorCode.UNKNOWN_TYPE)
        await early.report()


async def test_an_oversized_frame_closes_that_connection_only(lab: Lab) -> None:
    async with clients(lab) as c:
        a, b = await enrol(lab, name="A"), await enrol(lab, name="B")
        big, bystander = await c.device(a), await c.device(b)
        frame = json.dumps(
            {
                "type": "status.report",
                "service_installed": True,
                "service_enabled": True,
                "name": "x" * MAX_FRAME_BYTES,
            }
        )
        assert len(frame.encode()) > MAX_FRAME_BYTES
        await big.send(frame)
        assert await big.wait_closed() == CloseCode.TOO_BIG

        await bystander.report()
        hub = hub_of(lab.server)
        assert set(hub.devices_online) == {b.device_id}
        # The closed device may connect again at once.
        await c.device(a)
        assert set(hub.devices_online) == {a.device_id, b.device_id}


async def test_a_client_that_does_not_authenticate_in_time_is_closed(tmp_path: Path) -> None:
    async with small_lab(tmp_path, auth_timeout_s=0.3) as lab, clients(lab) as c:
        silent = await c.raw()
        assert await silent.wait_closed() == CloseCode.AUTH_TIMEOUT
        device = await enrol(lab)
        await c.device(device)  # authenticating in time is fine


# --- 6. rate limit ------------------------------------------------------------------------


async def test_a_flood_is_rate_limited_and_the_connection_recovers(tmp_path: Path) -> None:
    rate, burst, flood = 20.0, 20, 300
    async with (
        small_lab(tmp_path, rate_per_s=rate, rate_burst=burst, max_rate_violations=10_000) as lab,
        clients(lab) as c,
    ):
        console = await c.console("admin")
        device = await enrol(lab)
        device_wire = await c.device(device)
        for rid in range(1, flood + 1):
            await console.send(DevicesUnsubscribe(rid=rid))
        oks, limited = 0, 0
        for _ in range(flood):
            reply = await console.expect(Message, where=lambda m: isinstance(m, Ok | Error))
            if isinstance(reply, Ok):
                oks += 1
            else:
                assert isinstance(reply, Error)
                assert reply.code is ErrorCode.RATE_LIMITED, reply
                limited += 1
        assert oks + limited == flood
        assert oks >= burst - 1  # the auth frame took one token of the burst
        assert limited >= flood // 2, (oks, limited)

        # Others are not slowed down by one client's flood.
        await device_wire.report()
        # After a pause long enough for the bucket to refill a little, requests pass.
        await asyncio.sleep(3 / rate)
        for _ in range(2):
            await console.ok(DevicesUnsubscribe())


async def test_an_abusive_connection_is_closed(tmp_path: Path) -> None:
    async with (
        small_lab(tmp_path, rate_per_s=1.0, rate_burst=5, max_rate_violations=20) as lab,
        clients(lab) as c,
    ):
        console = await c.console("admin")
        for rid in range(1, 31):
            await console.send(DevicesUnsubscribe(rid=rid))
        assert await console.wait_closed() == CloseCode.RATE_LIMITED
        assert len(console.pending(Ok)) <= 6
        # The 20th refusal in a row closes the connection instead of answering.
        assert len(console.pending(Error)) >= 19
        # The server keeps serving others.
        await c.console("admin")


# --- 7. the session lifecycle at the signaling level ------------------------------------


async def test_session_lifecycle(lab: Lab) -> None:
    async with clients(lab) as c:
        device, bystander = await enrol(lab, name="Tablet"), await enrol(lab, name="Other")
        wire, other = await c.device(device), await c.device(bystander)
        console = await c.console("tech")
        snapshot = await console.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert {(d.device_id, d.status, d.online) for d in snapshot.devices} == {
            (device.device_id, LiveSupportStatus.DISCONNECTED, True),
            (bystander.device_id, LiveSupportStatus.DISCONNECTED, True),
        }

        before = int(time.time() * 1000)
        session_id = await invite(console, device, Mode.VIDEO)
        invitation = await wire.expect(SessionInvite)
        assert invitation.session_id == session_id
        assert invitation.technician.technician_id == lab.tech.id
        assert invitation.technician.display_name == "Tech"
        assert invitation.technician.organisation == "Test IT"
        assert invitation.mode is Mode.VIDEO
        assert invitation.offered_modes == (Mode.VIDEO, Mode.VOICE, Mode.TEXT)
        assert invitation.reason == "Ticket #42"
        timeout_ms = int(lab.config.invite_timeout_s * 1000)
        assert before + timeout_ms <= invitation.expires_at_ms <= before + timeout_ms + 2000

        # Before acceptance nothing of the call flows, in either direction.
        offer = SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(FINGERPRINT_A))
        answer = SignalSdp(session_id=session_id, sdp_type=SdpType.ANSWER, sdp=sdp(FINGERPRINT_B))
        candidate = SignalCandidate(session_id=session_id, candidate=CANDIDATE, sdp_mid="0")
        await console.refused(offer, ErrorCode.BAD_STATE)
        await console.refused(candidate, ErrorCode.BAD_STATE)
        await wire.refused(answer, ErrorCode.BAD_STATE)
        await wire.refused(candidate, ErrorCode.BAD_STATE)
        # Another device cannot answer someone else's invite, nor signal into it.
        await other.refused(
            SessionAccept(session_id=session_id, mode=Mode.TEXT), ErrorCode.NOT_FOUND
        )
        await other.refused(answer, ErrorCode.NOT_FOUND)
        # Another technician, even one who sees the device, cannot close it.
        supervisor = await c.console("super")
        await supervisor.refused(SessionClose(session_id=session_id), ErrorCode.NOT_FOUND)
        assert hub_of(lab.server).sessions[session_id].machine.state is SessionState.INVITED

        # Accept as video: both members hear of it, and so does the subscribed console.
        await wire.ok(SessionAccept(session_id=session_id, mode=Mode.VIDEO))
        for member in (console, wire):
            update = await state_of(member, session_id, SessionState.CONNECTING)
            assert update.mode is Mode.VIDEO
            assert update.device_id == device.device_id
            assert update.technician_id == lab.tech.id
        status = await wire.expect(DeviceStatus, where=lambda s: s.session_id == session_id)
        assert status.status is LiveSupportStatus.CONNECTED
        info = await device_update(console, device, LiveSupportStatus.CONNECTED)
        assert info.device.session_id == session_id
        await wire.refused(
            SessionAccept(session_id=session_id, mode=Mode.VIDEO), ErrorCode.BAD_STATE
        )

        # The technician offers, the device answers: never the other way round.
        await wire.refused(
            SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp=sdp(FINGERPRINT_B)),
            ErrorCode.FORBIDDEN,
        )
        await console.refused(
            SignalSdp(session_id=session_id, sdp_type=SdpType.ANSWER, sdp=sdp(FINGERPRINT_A)),
            ErrorCode.FORBIDDEN,
        )
        await console.refused(
            SignalSdp(session_id=session_id, sdp_type=SdpType.OFFER, sdp="v=0\r\n"),
            ErrorCode.INVALID_FIELD,
        )
        await console.send(console.with_rid(offer))
        relayed_offer = await wire.expect(SignalSdp)
        assert relayed_offer == offer  # relayed as is, without the sender's rid
        await wire.send(answer)
        assert await console.expect(SignalSdp) == answer
        await console.send(candidate)
        assert await wire.expect(SignalCandidate) == candidate
        await wire.send(candidate)
        assert await console.expect(SignalCandidate) == candidate
        await other.refused(candidate, ErrorCode.NOT_FOUND)
        live = hub_of(lab.server).sessions[session_id]
        assert (live.offer_fingerprint, live.answer_fingerprint) == (FINGERPRINT_A, FINGERPRINT_B)

        # Only the technician closes.
        await wire.send(wire.with_rid(SessionClose(session_id=session_id)))
        error = await wire.expect_error(ErrorCode.UNKNOWN_TYPE)
        assert "session.close" in error.message
        assert live.machine.state is SessionState.CONNECTING

        await console.ok(SessionClose(session_id=session_id))
        for member in (console, wire):
            closed = await state_of(member, session_id, SessionState.CLOSED)
            assert closed.close_reason is CloseReason.CLOSED_BY_TECHNICIAN
        status = await wire.expect(DeviceStatus, where=lambda s: s.session_id is None)
        assert status.status is LiveSupportStatus.DISCONNECTED
        info = await device_update(console, device, LiveSupportStatus.DISCONNECTED)
        assert info.device.session_id is None
        await console.refused(offer, ErrorCode.NOT_FOUND)
        await wire.refused(answer, ErrorCode.NOT_FOUND)

        (row,) = await lab.store.sessions()
        assert (row.id, row.state, row.offered_mode, row.accepted_mode, row.end_reason) == (
            session_id,
            "closed",
            "video",
            "video",
            "closed_by_technician",
        )
        assert row.reason == "Ticket #42"
        assert row.closed_at_ms is not None
        # The bystander never heard of any of it.
        await settled(other)
        assert not other.pending(SessionInvite)
        assert not other.pending(SessionUpdate)
        assert not other.pending(SignalSdp)
        assert not other.pending(SignalCandidate)


async def test_accepting_a_mode_not_offered_is_forbidden_and_a_reject_ends_it(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        console = await c.console("tech")
        session_id = await invite(console, device, Mode.VOICE)
        invitation = await wire.expect(SessionInvite)
        assert invitation.offered_modes == (Mode.VOICE, Mode.TEXT)

        await wire.refused(
            SessionAccept(session_id=session_id, mode=Mode.VIDEO), ErrorCode.FORBIDDEN
        )
        assert hub_of(lab.server).sessions[session_id].machine.state is SessionState.INVITED

        await wire.ok(SessionReject(session_id=session_id))
        for member in (console, wire):
            update = await state_of(member, session_id, SessionState.REJECTED)
            assert update.reject_reason is RejectReason.DECLINED
        await wire.refused(
            SessionAccept(session_id=session_id, mode=Mode.TEXT), ErrorCode.NOT_FOUND
        )
        (row,) = await lab.store.sessions()
        assert (row.state, row.accepted_mode, row.end_reason) == ("rejected", None, "declined")


# --- 8. invite timeout ------------------------------------------------------------------


async def test_an_unanswered_invite_expires(tmp_path: Path) -> None:
    async with small_lab(tmp_path, invite_timeout_s=0.5) as lab, clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        console = await c.console("admin")
        session_id = await invite(console, device)
        invitation = await wire.expect(SessionInvite)
        assert invitation.expires_at_ms - int(time.time() * 1000) <= 500

        for member in (console, wire):
            update = await state_of(member, session_id, SessionState.EXPIRED)
            assert update.reject_reason is RejectReason.NO_ANSWER
        # The invite is gone: the server no longer knows the session as a live one.
        await wire.refused(
            SessionAccept(session_id=session_id, mode=Mode.VIDEO), ErrorCode.NOT_FOUND
        )
        (row,) = await lab.store.sessions()
        assert (row.state, row.end_reason) == ("expired", "no_answer")
        status = await wire.expect(DeviceStatus, where=lambda s: s.session_id is None)
        assert status.status is LiveSupportStatus.DISCONNECTED
        # And the device can be called again.
        await invite(console, device)


# --- 9. availability, conflicts and policy ------------------------------------------------


async def test_unavailable_devices_conflicts_and_forbidden_modes(lab: Lab) -> None:
    async with clients(lab) as c:
        console = await c.console("tech")
        offline = await enrol(lab, name="Offline")
        error = await console.refused(start(offline), ErrorCode.UNAVAILABLE)
        assert "offline" in error.message

        not_installed = await enrol(lab, name="Not installed")
        await c.device(not_installed, installed=False)
        error = await console.refused(start(not_installed), ErrorCode.UNAVAILABLE)
        assert "not installed" in error.message

        disabled = await enrol(lab, name="Disabled")
        await c.device(disabled, enabled=False)
        error = await console.refused(start(disabled), ErrorCode.UNAVAILABLE)
        assert "disabled" in error.message

        device = await enrol(lab, name="Tablet")
        wire = await c.device(device)
        await lab.store.set_group_policy(lab.tablets.id, enabled=False)
        error = await console.refused(start(device), ErrorCode.UNAVAILABLE)
        assert "disabled" in error.message
        await lab.store.set_group_policy(lab.tablets.id, enabled=True)

        # A device whose own configuration narrowed its services to text.
        text_only = await enrol(lab, name="Text only")
        await c.device(text_only, chat_services=(Mode.TEXT,))
        error = await console.refused(start(text_only, Mode.VOICE), ErrorCode.FORBIDDEN)
        assert "voice" in error.message
        assert await lab.store.sessions() == []

        session_id = await invite(console, device)
        await wire.expect(SessionInvite)
        error = await console.refused(start(device, Mode.TEXT), ErrorCode.CONFLICT)
        assert "already" in error.message
        supervisor = await c.console("super")
        await supervisor.refused(start(device, Mode.TEXT), ErrorCode.CONFLICT)
        assert [r.id for r in await lab.store.sessions()] == [session_id]

        # The desktops group allows text only, whoever asks.
        desktop = await enrol(lab, lab.desktops, name="Desktop")
        desktop_wire = await c.device(desktop)
        admin = await c.console("admin")
        error = await admin.refused(start(desktop, Mode.VIDEO), ErrorCode.FORBIDDEN)
        assert "video" in error.message
        await admin.refused(start(desktop, Mode.VOICE), ErrorCode.FORBIDDEN)
        await invite(admin, desktop, Mode.TEXT)
        invitation = await desktop_wire.expect(SessionInvite)
        assert invitation.offered_modes == (Mode.TEXT,)


async def test_two_starts_in_the_same_instant_give_the_device_one_session(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both pass their checks before either is registered (two nodes, or two consoles
    of one, each awaiting the store): the store's unique live session per device lets
    one in, the other is refused, and the device hears one invite."""
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        tech, supervisor = await c.console("tech"), await c.console("super")
        # The instant made exact: each start's device read waits for the other's.
        both_read = asyncio.Barrier(2)
        real_device = lab.store.device

        async def read_together(device_id: str) -> Device | None:
            found = await real_device(device_id)
            await asyncio.wait_for(both_read.wait(), 5)
            return found

        monkeypatch.setattr(lab.store, "device", read_together)
        replies = await asyncio.gather(
            tech.request(start(device, Mode.TEXT)), supervisor.request(start(device, Mode.TEXT))
        )
        refused = [r for r in replies if isinstance(r, Error)]
        started = [r for r in replies if isinstance(r, SessionUpdate)]
        assert len(started) == 1, replies
        assert len(refused) == 1, replies
        assert refused[0].code is ErrorCode.CONFLICT
        assert [r.id for r in await lab.store.sessions()] == [started[0].session_id]
        invite = await wire.expect(SessionInvite)
        assert invite.session_id == started[0].session_id
        await wire.round_trip()
        assert not wire.pending(SessionInvite)


async def test_switching_the_service_off_ends_the_session(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        console = await c.console("tech")
        session_id = await invite(console, device)
        await wire.ok(SessionAccept(session_id=session_id, mode=Mode.VOICE))
        await state_of(console, session_id, SessionState.CONNECTING)

        await wire.report(enabled=False)
        for member in (console, wire):
            update = await state_of(member, session_id, SessionState.CLOSED)
            assert update.close_reason is CloseReason.SERVICE_DISABLED
        status = await wire.expect(
            DeviceStatus, where=lambda s: s.status is LiveSupportStatus.DISABLED
        )
        assert status.session_id is None


# --- 10. notifications ------------------------------------------------------------------


async def test_notifications_are_delivered_stored_and_acknowledged(lab: Lab) -> None:
    async with clients(lab) as c:
        online, offline = await enrol(lab, name="Online"), await enrol(lab, name="Offline")
        desktop = await enrol(lab, lab.desktops, name="Desktop")
        revoked = await enrol(lab, name="Revoked")
        await lab.store.revoke_device(revoked.device_id)
        online_wire, desktop_wire = await c.device(online), await c.device(desktop)
        console = await c.console("tech")

        sent = await console.ok(
            NotifySend(group_id=lab.tablets.id, title="Maintenance", body="Reboot tonight?")
        )
        assert isinstance(sent, NotifySent)
        # The group's devices, a revoked one left out.
        assert set(sent.device_ids) == {online.device_id, offline.device_id}
        note_id = sent.notification_id
        delivered = await online_wire.expect(NotifyDeliver)
        assert (delivered.notification_id, delivered.title, delivered.body) == (
            note_id,
            "Maintenance",
            "Reboot tonight?",
        )
        assert delivered.sender_name == "Tech"
        assert delivered.expires_at_ms == sent.expires_at_ms

        # A device that was not a target knows nothing of it and cannot touch it.
        await desktop_wire.refused(
            NotifyAck(notification_id=note_id, state=DeviceAck.READ), ErrorCode.NOT_FOUND
        )
        assert not desktop_wire.pending(NotifyDeliver)

        # Acknowledgements and the answer reach the console, in order.
        await online_wire.ok(NotifyAck(notification_id=note_id, state=DeviceAck.DELIVERED))
        await online_wire.ok(NotifyAck(notification_id=note_id, state=DeviceAck.READ))
        await online_wire.ok(NotifyAnswer(notification_id=note_id, text="Yes, after 8 pm"))
        updates = [await console.expect(NotifyUpdate) for _ in range(3)]
        assert [(u.notification_id, u.device_id) for u in updates] == [
            (note_id, online.device_id)
        ] * 3
        assert [u.state for u in updates] == [
            NotificationState.DELIVERED,
            NotificationState.READ,
            NotificationState.ANSWERED,
        ]
        assert [u.answer for u in updates] == [None, None, "Yes, after 8 pm"]
        assert updates[0].at_ms <= updates[1].at_ms <= updates[2].at_ms
        await online_wire.refused(
            NotifyAnswer(notification_id=note_id, text="again"), ErrorCode.CONFLICT
        )
        # The same answer again (a reply lost with a dropped link) is the same act.
        await online_wire.ok(NotifyAnswer(notification_id=note_id, text="Yes, after 8 pm"))
        # A late acknowledgement is accepted but changes nothing.
        await online_wire.ok(NotifyAck(notification_id=note_id, state=DeviceAck.DELIVERED))
        await online_wire.report()  # the late ack's handler has finished
        await settled(console)
        assert not console.pending(NotifyUpdate)

        # Store and forward: the offline device gets it when it connects, until it has
        # read it: delivered but unread, it comes again (the agent may have restarted).
        for _ in range(2):
            offline_wire = await c.device(offline)
            again = await offline_wire.expect(NotifyDeliver)
            assert again.notification_id == note_id
            await offline_wire.close()
        offline_wire = await c.device(offline)
        await offline_wire.expect(NotifyDeliver)
        await offline_wire.ok(NotifyAck(notification_id=note_id, state=DeviceAck.DELIVERED))
        update = await console.expect(NotifyUpdate)
        assert (update.device_id, update.state) == (offline.device_id, NotificationState.DELIVERED)
        await offline_wire.close()
        offline_wire = await c.device(offline)
        await offline_wire.expect(NotifyDeliver)
        await offline_wire.ok(NotifyAck(notification_id=note_id, state=DeviceAck.READ))
        await offline_wire.close()
        offline_wire = await c.device(offline)  # the report's ok follows any delivery
        assert not offline_wire.pending(NotifyDeliver)

        # Out of scope, by group and by device.
        await console.refused(
            NotifySend(group_id=lab.desktops.id, title="t", body="b"), ErrorCode.OUT_OF_SCOPE
        )
        await console.refused(
            NotifySend(device_ids=(desktop.device_id,), title="t", body="b"),
            ErrorCode.OUT_OF_SCOPE,
        )
        await console.refused(
            NotifySend(device_ids=("dev-nobody",), title="t", body="b"), ErrorCode.NOT_FOUND
        )
        await console.refused(NotifySend(title="t", body="b"), ErrorCode.INVALID_FIELD)
        await settled(desktop_wire)
        assert not desktop_wire.pending(NotifyDeliver)

        # One device by id: only that device gets it.
        single = await console.ok(
            NotifySend(device_ids=(online.device_id,), title="Hi", body="Just you")
        )
        assert isinstance(single, NotifySent)
        assert single.device_ids == (online.device_id,)
        just_you = await online_wire.expect(NotifyDeliver)
        assert just_you.notification_id == single.notification_id


# --- 12. revocation -----------------------------------------------------------------------


async def test_a_revoked_device_is_disconnected_at_once_and_refused_after(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        console = await c.console("tech")
        await console.ok(DevicesSubscribe())
        session_id = await invite(console, device)
        await wire.ok(SessionAccept(session_id=session_id, mode=Mode.TEXT))
        await state_of(console, session_id, SessionState.CONNECTING)

        await lab.store.revoke_device(device.device_id)
        await hub_of(lab.server).device_revoked(device.device_id)
        closed = await state_of(console, session_id, SessionState.CLOSED)
        assert closed.close_reason is CloseReason.DEVICE_REVOKED
        assert await wire.wait_closed() == CloseCode.REVOKED
        offline = await console.expect(
            DeviceUpdate,
            where=lambda u: u.device.device_id == device.device_id and not u.device.online,
        )
        assert offline.device.session_id is None

        again = await c.raw()
        await again.send(
            AuthDevice(
                device_id=device.device_id, signature=again.sign(device.key, device.device_id)
            )
        )
        error = await again.expect_error(ErrorCode.REVOKED)
        assert "revoked" in error.message
        assert await again.wait_closed() == CloseCode.REVOKED
        assert device.device_id not in hub_of(lab.server).devices_online
        assert any(
            r.action == "auth.device" and r.outcome == "revoked" and r.actor == device.device_id
            for r in await lab.store.audit_rows()
        )
        # Gone from the inventory, and out of reach.
        snapshot = await console.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert snapshot.devices == ()
        await console.refused(start(device), ErrorCode.NOT_FOUND)


async def test_a_device_that_reconnects_while_invited_gets_the_invite_again(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        first = await c.device(device)
        console = await c.console("tech")
        session_id = await invite(console, device, Mode.VOICE)
        original = await first.expect(SessionInvite)

        # The same device connects again (an agent restarted): the old socket goes.
        second = await c.device(device)
        assert await first.wait_closed() == CloseCode.REPLACED
        await state_of(second, session_id, SessionState.INVITED)
        assert await second.expect(SessionInvite) == original

        # The device drops and comes back within the grace period.
        await second.close()
        third = await c.device(device)
        assert await third.expect(SessionInvite) == original
        await third.ok(SessionAccept(session_id=session_id, mode=Mode.VOICE))
        await state_of(console, session_id, SessionState.CONNECTING)

        # Once accepted, a reconnect brings the state, not a new prompt.
        await third.close()
        fourth = await c.device(device)
        await state_of(fourth, session_id, SessionState.CONNECTING)
        await settled(fourth)
        assert not fourth.pending(SessionInvite)


async def test_stopping_the_server_closes_every_socket_at_once(tmp_path: Path) -> None:
    async with small_lab(tmp_path, heartbeat_s=30.0) as lab, clients(lab) as c:
        device = await enrol(lab)
        device_wire = await c.device(device)
        console = await c.console("admin")
        await invite(console, device)
        closing = [
            asyncio.create_task(wire.wait_closed(timeout_s=30.0)) for wire in (device_wire, console)
        ]
        began = time.monotonic()
        await lab.server.stop()
        assert time.monotonic() - began < 5.0
        assert await asyncio.gather(*closing) == [CloseCode.GOING_AWAY] * 2


async def test_consoles_hear_a_report_before_it_is_written_and_are_put_back_if_it_is_not(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write is off a status change's way to the consoles of this node; a report
    the store refused does not stay on their screens, and the device hears so."""
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        await wire.report(name="Before")
        console = await c.console("tech")
        await console.ok(DevicesSubscribe())
        real = lab.store.write_batch
        release = asyncio.Event()
        fail = True

        async def held_then_failing(
            progress: Sequence[ProgressWrite],
            last_seen: Mapping[str, int],
            reports: Sequence[Device] = (),
        ) -> None:
            if reports:
                await release.wait()  # the console must hear of it meanwhile
                if fail:
                    raise RuntimeError("database went away")
            await real(progress, last_seen, reports)

        monkeypatch.setattr(lab.store, "write_batch", held_then_failing)

        def named(name: str) -> Callable[[DeviceUpdate], bool]:
            return lambda u: u.device.device_id == device.device_id and u.device.name == name

        await wire.send(StatusReport(service_installed=True, service_enabled=True, name="After"))
        await console.expect(DeviceUpdate, where=named("After"))  # the write still held
        release.set()
        await wire.expect_error(ErrorCode.INTERNAL)
        await console.expect(DeviceUpdate, where=named("Before"))
        stored = await lab.store.device(device.device_id)
        assert stored is not None
        assert stored.name == "Before"

        fail = False
        await wire.report(name="After")  # stored this time, and not put back
        stored = await lab.store.device(device.device_id)
        assert stored is not None
        assert stored.name == "After"
        await console.expect(DeviceUpdate, where=named("After"))
        await settled(console)
        assert not [u for u in console.pending(DeviceUpdate) if u.device.name == "Before"]


async def test_an_internal_failure_is_reported_and_the_connection_keeps_serving(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the store fails once, as a lost database connection would.
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        other = await c.device(await enrol(lab))
        real = lab.store.write_batch
        calls = 0

        async def failing_once(
            progress: Sequence[ProgressWrite],
            last_seen: Mapping[str, int],
            reports: Sequence[Device] = (),
        ) -> None:
            nonlocal calls
            if reports:
                calls += 1
                if calls <= 2:  # the batch, then the report alone
                    raise RuntimeError("database went away")
            await real(progress, last_seen, reports)

        monkeypatch.setattr(lab.store, "write_batch", failing_once)
        report = StatusReport(service_installed=True, service_enabled=True, name="Tablet")
        error = await wire.refused(report, ErrorCode.INTERNAL)
        assert "database" not in error.message  # internals stay on the server
        await wire.report()  # the same connection works again
        await other.report()  # and so does every other one
