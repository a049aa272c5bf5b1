"""A scripted technician: the headless demo session, measured step by step.

Plays: wait for the device → invite as text → accepted → data channel open (setup
time) → consent verified → chat both ways with delivered and read receipts → close →
summary → a notification round (delivered, read, answered). Returns a flat report;
it contains counts and timings only, never chat content.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from peer.chat import DeliveryState
from protocol.enums import LiveSupportStatus, Mode, NotificationState, SessionState
from tech_console.client import ConsoleClient

DEMO_MESSAGES = (
    "Hello, this is the service desk. I can see the printer queue is stuck.",
    "Could you tell me which printer you were using?",
    "Thanks, I have cleared the queue. Please try printing again.",
)


async def _until(predicate: Callable[[], bool], timeout_s: float, poke: asyncio.Event) -> None:
    async def wait() -> None:
        while not predicate():
            poke.clear()
            await poke.wait()

    await asyncio.wait_for(wait(), timeout_s)


async def run_demo_session(
    console: ConsoleClient, *, expected_replies: int, timeout_s: float = 30.0
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    changed = asyncio.Event()
    console.device_listeners.add(lambda _d: changed.set())
    console.session_listeners.add(lambda _s: changed.set())
    console.notification_listeners.add(lambda _n: changed.set())

    def ready_device() -> str | None:
        for device in console.devices.values():
            if device.online and device.status is LiveSupportStatus.DISCONNECTED:
                return device.device_id
        return None

    await _until(lambda: ready_device() is not None, timeout_s, changed)
    device_id = ready_device()
    assert device_id is not None
    report["device.status_before"] = console.devices[device_id].status.value

    started = time.monotonic()
    session = await console.start_session(device_id, Mode.TEXT, "Demo: ticket DEMO-1")
    state = await console.wait_session(
        session,
        [SessionState.CONNECTING, SessionState.REJECTED, SessionState.EXPIRED],
        timeout_s,
    )
    report["session.accepted"] = state is SessionState.CONNECTING
    if not report["session.accepted"]:
        return report
    await _until(lambda: session.call is not None, timeout_s, changed)
    call = session.call
    assert call is not None
    await asyncio.wait_for(call.connected.wait(), timeout_s)
    report["session.setup_ms"] = round((time.monotonic() - started) * 1000, 1)
    await _until(lambda: session.consent is not None, timeout_s, changed)
    report["session.consent_verified"] = session.consent_verified
    await _until(
        lambda: console.devices[device_id].status is LiveSupportStatus.CONNECTED, timeout_s, changed
    )
    report["device.status_during"] = console.devices[device_id].status.value

    chat_changed = asyncio.Event()
    call.chat.listeners.add(lambda _e: chat_changed.set())

    async def read_incoming() -> None:
        unread = [e.message_id for e in call.chat.unread_incoming()]
        if unread:
            await call.mark_read(unread)

    for text in DEMO_MESSAGES:
        await call.send_chat(text)
        await read_incoming()

    def done() -> bool:
        outgoing = [e for e in call.chat.entries() if e.outgoing]
        incoming = [e for e in call.chat.entries() if not e.outgoing]
        return (
            all(e.state is DeliveryState.READ for e in outgoing)
            and len(incoming) >= expected_replies
        )

    async def pump() -> None:
        while not done():
            chat_changed.clear()
            await read_incoming()
            if done():
                break
            await chat_changed.wait()
        await read_incoming()

    await asyncio.wait_for(pump(), timeout_s)
    entries = call.chat.entries()
    outgoing = [e for e in entries if e.outgoing]
    incoming = [e for e in entries if not e.outgoing]
    rtts = list(call.chat.delivery_rtts_ms().values())
    report["chat.console_sent"] = len(outgoing)
    report["chat.console_delivered"] = sum(e.state >= DeliveryState.DELIVERED for e in outgoing)
    report["chat.console_read"] = sum(e.state is DeliveryState.READ for e in outgoing)
    report["chat.device_messages_received"] = len(incoming)
    report["chat.device_messages_read_receipts_sent"] = sum(
        e.state is DeliveryState.READ for e in incoming
    )
    report["chat.rtt_ms_p50"] = round(statistics.median(rtts), 2) if rtts else None
    report["chat.rtt_ms_max"] = round(max(rtts), 2) if rtts else None
    stats = await call.stats()
    report["call.route"] = stats.get("route")

    await console.close_session(session.session_id)
    final = await console.wait_session(session, [SessionState.CLOSED], timeout_s)
    report["session.closed"] = final is SessionState.CLOSED
    report["session.chat_cleared"] = len(call.chat) == 0
    await _until(
        lambda: console.devices[device_id].status is LiveSupportStatus.DISCONNECTED,
        timeout_s,
        changed,
    )
    report["device.status_after"] = console.devices[device_id].status.value
    await console.write_summary(
        session.session_id,
        summary="Cleared a stuck print queue.",
        impact="One user could not print for an hour.",
        expected_vs_actual="Expected printing; the queue was stuck.",
        evidence="Queue cleared; test page printed.",
        next_owner="none",
    )
    report["session.summary_stored"] = True

    progress = await console.notify(
        title="Maintenance tonight",
        body="The tablet will restart at 22:00. Reply if that is a problem.",
        device_ids=[device_id],
    )

    def answered() -> bool:
        return progress.states.get(device_id) is NotificationState.ANSWERED

    await _until(answered, timeout_s, changed)
    seen = set(progress.history.get(device_id, []))
    report["notification.delivered"] = NotificationState.DELIVERED in seen
    report["notification.read"] = NotificationState.READ in seen
    report["notification.answered"] = NotificationState.ANSWERED in seen
    report["notification.answer_received"] = bool(progress.answers.get(device_id))
    return report
