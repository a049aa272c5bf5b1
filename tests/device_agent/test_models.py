"""The agent's and the call window's logic without any display: the Qt-free models
the widgets are thin views of. A real server, agent, console and call, no Qt."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_agent.agent_model import (
    PROMPT_MARGIN_S,
    AgentModel,
    IncomingCall,
    PromptState,
    decode_photo,
)
from device_agent.call_model import (
    BannerKind,
    CallControl,
    CallWindowModel,
    banner_for,
    clock_text,
)
from device_agent.call_process import CallSession
from peer.call import CallState
from peer.call_media import MediaOptions
from protocol.enums import AudioInterruption, Mode, SessionState
from protocol.messages import NotifyDeliver, SessionInvite, TechnicianCard
from tests.conftest import Lab
from tests.integration.harness import Pair, make_pair, until
from tests.integration.inprocess import in_process_hosts
from tests.integration.test_calls import close, peer, start_call

ROOT = Path(__file__).resolve().parents[2]
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)


def test_the_models_load_no_qt() -> None:
    code = (
        "import sys, device_agent.call_model, device_agent.agent_model;"
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'qasync'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_banners_most_important_first() -> None:
    def kind(**kw: object) -> BannerKind | None:
        args: dict[str, object] = {
            "technician": "Ada",
            "call_state": CallState.CONNECTED,
            "interruption": AudioInterruption.NONE,
            "peer_interruption": AudioInterruption.NONE,
        }
        args.update(kw)
        banner = banner_for(**args)  # type: ignore[arg-type]
        return banner.kind if banner is not None else None

    assert kind() is None
    assert kind(call_state=CallState.CONNECTING) is BannerKind.CONNECTING
    assert kind(call_state=CallState.FAILED) is BannerKind.RECOVERING
    assert kind(call_state=CallState.DISCONNECTED) is BannerKind.RECOVERING
    assert kind(call_state=None) is BannerKind.CALL_ENDED
    assert kind(peer_interruption=AudioInterruption.PHONE_CALL) is BannerKind.PEER_INTERRUPTED
    # The user's own phone call explains the silence before anything else.
    assert (
        kind(interruption=AudioInterruption.PHONE_CALL, call_state=CallState.FAILED)
        is BannerKind.PHONE_CALL
    )


def test_call_timer_text() -> None:
    assert clock_text(7.9) == "0:07"
    assert clock_text(754) == "12:34"
    assert clock_text(3723) == "1:02:03"
    assert clock_text(-1) == "0:00"


def invite(modes: tuple[Mode, ...], *, expires_in_s: float = 30, photo: str = "") -> SessionInvite:
    return SessionInvite(
        session_id="ses-1",
        technician=TechnicianCard(
            technician_id="tec-1", display_name="Ada Lovelace", organisation="IT", photo=photo
        ),
        mode=modes[0],
        offered_modes=modes,
        reason="<b>ticket</b>",
        expires_at_ms=int((time.time() + expires_in_s) * 1000),
    )


async def test_the_prompt_offers_what_is_offered_and_allowed_and_counts_down() -> None:
    offer = invite((Mode.VIDEO, Mode.VOICE, Mode.TEXT), photo=PNG_1PX)
    # 30 s before the invite runs out; the prompt gives up PROMPT_MARGIN_S earlier.
    now = [offer.expires_at_ms / 1000 - 30]
    call = IncomingCall(offer, (Mode.VOICE, Mode.TEXT), clock=lambda: now[0])
    assert [c.mode for c in call.choices] == [Mode.VOICE, Mode.TEXT]
    assert call.photo is not None
    assert call.reason == "<b>ticket</b>"
    assert call.remaining_s() == pytest.approx(30 - PROMPT_MARGIN_S)
    assert call.countdown_text() == "Declines automatically in 30 s"  # 29.5 s, rounded up
    now[0] += 10
    assert call.countdown_text() == "Declines automatically in 20 s"
    now[0] += 30
    assert call.remaining_s() == 0
    with pytest.raises(ValueError, match="not offered or not allowed"):
        call.accept(Mode.VIDEO)
    call.accept(Mode.VOICE)
    assert call.state is PromptState.ACCEPTED
    assert await call.decision is Mode.VOICE
    call.reject()  # too late: the first answer stands
    assert call.state is PromptState.ACCEPTED


def test_a_photo_that_is_not_an_image_is_ignored() -> None:
    assert decode_photo("") is None
    assert decode_photo("bm90IGFuIGltYWdl") is None  # "not an image"
    assert decode_photo("%%%") is None
    assert decode_photo(PNG_1PX) is not None


@pytest.fixture
async def pair_and_sessions(
    lab: Lab, tmp_path: Path
) -> AsyncIterator[tuple[Pair, list[CallSession]]]:
    sessions: list[CallSession] = []
    async with make_pair(lab, tmp_path, host_factory=in_process_hosts(sessions.append)) as pair:
        pair.console.media_options = MediaOptions(width=320, height=240)
        yield pair, sessions


async def test_call_window_model_controls_act_on_the_call(
    pair_and_sessions: tuple[Pair, list[CallSession]],
) -> None:
    pair, sessions = pair_and_sessions
    session = await start_call(pair, Mode.VIDEO)
    model = CallWindowModel(sessions[-1])
    frames: list[object] = []
    model.remote_frames.add(frames.append)
    await until(lambda: model.elapsed_s() is not None)
    assert {c.control for c in model.controls() if c.visible} == {
        CallControl.TEXT,
        CallControl.AUDIO_OUTPUT,
        CallControl.MUTE,
        CallControl.CAMERA,
        CallControl.SWITCH_CAMERA,
        CallControl.HANG_UP,
    }
    await until(lambda: len(frames) > 2)
    model.press(CallControl.MUTE)
    await until(lambda: peer(session).microphone is False)
    assert model.control(CallControl.MUTE).label == "Unmute"
    model.press(CallControl.CAMERA)
    await until(lambda: peer(session).camera is False)
    assert not model.local_camera_on()

    # Read receipts only while the window and the chat are shown.
    console_call = session.call
    assert console_call is not None
    message_id = await console_call.send_chat("hello")
    await until(lambda: model.unread() == 1)
    model.seen([message_id])  # the chat is closed: not read
    model.set_chat_open(True)
    model.set_window_visible(False)
    model.seen([message_id])  # the window is hidden: not read
    await asyncio.sleep(0.2)  # proving an absence: nothing may arrive
    entry = console_call.chat.outgoing(message_id)
    assert entry is not None
    assert entry.state.name == "DELIVERED"
    model.set_window_visible(True)
    model.seen([message_id])
    await until(lambda: model.unread() == 0)

    model.press(CallControl.HANG_UP)
    await pair.console.wait_session(session, [SessionState.CALL_ENDED])
    await until(lambda: model.control(CallControl.CALL_AGAIN).visible)
    banner = model.banner()
    assert banner is not None
    assert banner.kind is BannerKind.CALL_ENDED
    model.close()
    await close(pair, session)


async def test_only_the_configured_chat_services_show(
    pair_and_sessions: tuple[Pair, list[CallSession]],
) -> None:
    pair, sessions = pair_and_sessions
    from device_agent.state import ServiceConfig

    await pair.agent.set_service(ServiceConfig(chat_services=(Mode.VOICE,)))
    await until(lambda: pair.agent.chat_services == (Mode.VOICE,))
    session = await start_call(pair, Mode.VOICE)
    model = CallWindowModel(sessions[-1])
    visible = {c.control for c in model.controls() if c.visible}
    assert CallControl.TEXT not in visible, "text is not configured"
    assert CallControl.CAMERA not in visible
    assert CallControl.MUTE in visible
    model.close()
    await close(pair, session)


async def test_agent_model_inbox_and_answers(lab: Lab, tmp_path: Path) -> None:
    async with make_pair(lab, tmp_path) as pair:
        model = AgentModel(pair.agent)
        popups: list[str] = []
        model.popups.add(lambda item: popups.append(item.notification_id))
        progress = await pair.console.notify(title="T", body="B", device_ids=[pair.device_id])
        await until(lambda: len(model.inbox()) == 1)
        assert model.status_view().unread_notifications == 1
        # A resend (after a reconnect) does not pop up twice.
        note = pair.agent.notifications[progress.notification_id]
        await model.on_notification(note)
        assert popups == [progress.notification_id]
        with pytest.raises(ValueError, match="Write an answer"):
            await model.reply(progress.notification_id, "   ")
        with pytest.raises(ValueError, match="at most"):
            await model.reply(progress.notification_id, "x" * 4001)
        await model.reply(progress.notification_id, "ok")
        assert model.inbox() == []
        # An expired notification leaves the inbox by itself.
        expired = NotifyDeliver(
            notification_id="not-old",
            sender_name="Ada",
            title="Old",
            body="old",
            sent_at_ms=int(time.time() * 1000) - 5000,
            expires_at_ms=int(time.time() * 1000) - 1,
        )
        await model.on_notification(expired)
        assert model.inbox() == []
        model.close()
