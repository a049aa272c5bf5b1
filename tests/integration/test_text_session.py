"""A real device agent and a real console client against a real server, in one
process: real aiortc peer connections on loopback, real SQLite, real TLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_agent.session_host import process_alive
from device_agent.state import ServiceConfig
from peer.chat import DeliveryState
from peer.signaling import RequestError
from protocol.enums import LiveSupportStatus, Mode, NotificationState, SessionState
from tech_console.client import ConsoleClient
from tests.conftest import PASSWORD, Lab
from tests.integration.harness import FAST, Pair, make_pair, until

DEVICE_REPLY = "Hello from the device"


@pytest.fixture
async def pair(lab: Lab, tmp_path: Path) -> AsyncIterator[Pair]:
    # The scripted device user in the session process reads each message as it
    # arrives and answers the first one.
    async with make_pair(lab, tmp_path, session_args=["--reply", DEVICE_REPLY]) as made:
        yield made


async def test_text_session_with_receipts_both_ways(pair: Pair) -> None:
    console, agent = pair.console, pair.agent
    session = await console.start_session(pair.device_id, Mode.TEXT, "ticket INC-1")
    invite = await asyncio.wait_for(pair.answers.get(), 5)
    assert invite.technician.display_name == "Tech"
    assert invite.technician.organisation == "Test IT"
    assert invite.reason == "ticket INC-1"
    await until(lambda: session.call is not None and session.call.chat_open)
    await until(lambda: session.consent_verified)
    await until(lambda: agent.session is not None)
    assert agent.status is LiveSupportStatus.CONNECTED
    await until(lambda: console.devices[pair.device_id].status is LiveSupportStatus.CONNECTED)
    tech_call = session.call
    assert tech_call is not None

    mid = await tech_call.send_chat("Hello from the technician")
    # Gray, then blue: the device user (in the session process) reads it on arrival.
    await until(
        lambda: (e := tech_call.chat.outgoing(mid)) is not None and e.state is DeliveryState.READ
    )
    # ...and answers; the technician reads the answer, and the device sees blue checks.
    await until(lambda: any(not e.outgoing for e in tech_call.chat))
    reply = next(e for e in tech_call.chat if not e.outgoing)
    assert reply.text == DEVICE_REPLY
    await tech_call.mark_read([reply.message_id])
    report = await pair.until_device(lambda r: r["counts"]["chat_read"] == 1)
    assert report["counts"] == {
        "chat_received": 1,
        "chat_sent": 1,
        "chat_delivered": 1,
        "chat_read": 1,
    }
    assert agent.session is not None
    host = agent.session.host
    assert host.pid is not None

    await console.close_session(session.session_id)
    await console.wait_session(session, [SessionState.CLOSED])
    await until(lambda: agent.session is None)
    # The chat lived in the session process only, and that process is gone.
    await asyncio.wait_for(host.exited.wait(), 10)
    assert not process_alive(host.pid)
    assert host.ended is not None
    assert host.ended.media_released
    await until(lambda: console.devices[pair.device_id].status is LiveSupportStatus.DISCONNECTED)


async def test_hang_up_keeps_the_session_and_resume_needs_no_new_prompt(pair: Pair) -> None:
    console, agent = pair.console, pair.agent
    session = await console.start_session(pair.device_id, Mode.VOICE, "ticket INC-2")
    invite = await asyncio.wait_for(pair.answers.get(), 5)
    assert invite.offered_modes == (Mode.VOICE, Mode.TEXT)
    await until(lambda: session.call is not None and session.call.chat_open)
    first_receipt = session.consent
    await until(lambda: session.consent_verified)

    await agent.hang_up()
    await console.wait_session(session, [SessionState.CALL_ENDED])
    assert agent.status is LiveSupportStatus.CONNECTED  # the session is still open
    await until(lambda: session.call is None)

    await agent.resume()
    await console.wait_session(session, [SessionState.CONNECTING, SessionState.IN_CALL])
    await until(lambda: session.call is not None and session.call.chat_open)
    await until(lambda: session.consent is not first_receipt and session.consent_verified)
    assert pair.answers.empty(), "resuming must not prompt the device user again"

    await console.close_session(session.session_id)
    await console.wait_session(session, [SessionState.CLOSED])


async def test_rejection_and_timeout(pair: Pair, lab: Lab) -> None:
    pair.decision[0] = None
    session = await pair.console.start_session(pair.device_id, Mode.VIDEO, "ticket INC-3")
    assert await pair.console.wait_session(session, [SessionState.REJECTED]) is (
        SessionState.REJECTED
    )
    assert session.call is None
    rows = {r.id: r for r in await lab.store.sessions()}
    assert rows[session.session_id].state == "rejected"


async def test_disabled_service_refuses_sessions_and_shows_disabled(pair: Pair) -> None:
    await pair.agent.set_service(ServiceConfig(installed=True, enabled=False))
    await until(lambda: pair.console.devices[pair.device_id].status is LiveSupportStatus.DISABLED)
    assert pair.agent.status is LiveSupportStatus.DISABLED
    with pytest.raises(RequestError) as refused:
        await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket INC-4")
    assert refused.value.code == "unavailable"
    await pair.agent.set_service(ServiceConfig(installed=False, enabled=False))
    await until(
        lambda: pair.console.devices[pair.device_id].status is LiveSupportStatus.NOT_INSTALLED
    )


async def test_notification_delivered_read_and_answered(pair: Pair) -> None:
    progress = await pair.console.notify(
        title="Update", body="Please restart tonight", device_ids=[pair.device_id]
    )
    note = await asyncio.wait_for(pair.notes.get(), 5)
    assert note.body == "Please restart tonight"
    await until(lambda: progress.states[pair.device_id] is NotificationState.DELIVERED)
    await pair.agent.mark_notification_read(note.notification_id)
    await until(lambda: progress.states[pair.device_id] is NotificationState.READ)
    await pair.agent.answer_notification(note.notification_id, "OK, will do")
    await until(lambda: progress.states[pair.device_id] is NotificationState.ANSWERED)
    assert progress.answers[pair.device_id] == "OK, will do"
    assert progress.history[pair.device_id] == [
        NotificationState.DELIVERED,
        NotificationState.READ,
        NotificationState.ANSWERED,
    ]


async def test_agent_reconnects_after_losing_its_connection(pair: Pair, lab: Lab) -> None:
    made = pair.agent.client.connections_made
    ws = pair.agent.client._ws
    assert ws is not None
    await ws.close()
    await until(lambda: pair.agent.client.connections_made > made and pair.agent.online)
    await until(lambda: pair.console.devices[pair.device_id].online)


async def test_audit_has_metadata_and_no_chat(pair: Pair, lab: Lab) -> None:
    session = await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket INC-5")
    await until(lambda: session.call is not None and session.call.chat_open)
    assert session.call is not None
    await session.call.send_chat("canary-7f3a9 secret words")
    await until(lambda: session.consent_verified)
    await pair.console.close_session(session.session_id)
    await pair.console.wait_session(session, [SessionState.CLOSED])
    row = next(r for r in await lab.store.sessions() if r.id == session.session_id)
    assert row.consent_receipt is not None
    assert row.reason == "ticket INC-5"
    assert row.accepted_mode == "text"
    assert row.closed_at_ms is not None
    dump = json.dumps([vars(r) for r in await lab.store.audit_rows()], default=str)
    assert "canary-7f3a9" not in dump
    assert "canary-7f3a9" not in json.dumps(
        {k: v for k, v in vars(row).items() if not k.startswith("_")}, default=str
    )


async def test_revocation_by_another_process_disconnects_within_seconds(
    pair: Pair, lab: Lab
) -> None:
    # The admin CLI writes the revocation to the database from its own process; the
    # server's sweep notices and closes the device's socket for good.
    await lab.store.revoke_device(pair.device_id)
    await asyncio.wait_for(pair.agent.client.stopped.wait(), 10)
    assert pair.agent.client.fatal is not None
    assert "revoked" in str(pair.agent.client.fatal)


async def test_large_inventory_and_group_notification_come_in_parts(lab: Lab) -> None:
    # 400 devices do not fit in one 64 KiB frame: the snapshot and the notify.sent
    # list are split, and the console puts the parts back together.
    from protocol import identity

    for n in range(400):
        token = await lab.store.issue_enrolment_token(lab.tablets.id, created_by="t", ttl_s=60)
        await lab.store.enrol_device(
            token,
            public_key=identity.public_key_b64(identity.generate_key()),
            name=f"Tablet {n:03d} " + "x" * 100,
            model="Model " + "m" * 100,
            os="OS " + "o" * 100,
        )
    console = ConsoleClient(lab.url, lab.fingerprint, backoff=FAST)
    try:
        await console.login("tech", PASSWORD)
        await until(lambda: len(console.devices) == 400)
        progress = await console.notify(title="All", body="Hello", group_id=lab.tablets.id)
        await until(lambda: len(progress.device_ids) == 400)
        assert set(progress.device_ids) == set(console.devices)
    finally:
        await console.close()
