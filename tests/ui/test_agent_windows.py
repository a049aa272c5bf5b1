"""The resident agent's windows, driven with pytest-qt against a real server, a real
device agent (its sessions in real session processes) and a real console: the
status shown from the conditions that cause it, the incoming-call prompt with its
buttons, countdown and automatic decline, and notifications answered and read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QLabel, QPushButton
from pytestqt.qtbot import QtBot

from device_agent.agent_model import AgentModel, PromptState
from device_agent.state import ServiceConfig
from device_agent.ui.agent_window import AgentUi
from device_agent.ui.notifications import NotificationPopup
from device_agent.ui.prompt import IncomingCallDialog
from peer.ui.theme import MIN_TEXT_CONTRAST, STATUS_COLOURS, contrast_ratio
from protocol.enums import (
    LiveSupportStatus,
    Mode,
    NotificationState,
    RejectReason,
    SessionState,
)
from protocol.messages import SessionUpdate
from tests.conftest import Lab
from tests.integration.harness import Pair, make_pair, until

HEADLESS_SESSION = ["--fake-media", "--video-size", "320x240"]


@dataclass
class Agent:
    pair: Pair
    model: AgentModel
    ui: AgentUi


@pytest.fixture
async def agent(lab: Lab, tmp_path: Path, qtbot: QtBot) -> AsyncIterator[Agent]:
    async with make_pair(lab, tmp_path, session_args=HEADLESS_SESSION) as pair:
        model = AgentModel(pair.agent)
        ui = AgentUi(model)
        ui.show_window()
        yield Agent(pair, model, ui)
        ui.close()
        model.close()


def click(target: QPushButton) -> None:
    assert target.isVisible(), target.objectName()
    assert target.isEnabled(), target.objectName()
    QTest.mouseClick(target, Qt.MouseButton.LeftButton)


def badge(agent: Agent) -> str:
    return agent.ui.window.badge.text()


def console_status(agent: Agent) -> LiveSupportStatus:
    return agent.pair.console.devices[agent.pair.device_id].status


def last_update(agent: Agent, session_id: str) -> SessionUpdate:
    update = agent.pair.console.sessions[session_id].last_update
    assert update is not None
    return update


def ringing(prompt: IncomingCallDialog) -> bool:
    # Read through a function: mypy would keep the value of an attribute asserted once.
    return prompt.ringer.ringing


def popup_for(agent: Agent, notification_id: str) -> NotificationPopup | None:
    return next(
        (p for p in agent.ui.popups if p.card.item.notification_id == notification_id), None
    )


async def prompt_of(agent: Agent) -> IncomingCallDialog:
    await until(lambda: agent.ui.prompt is not None and agent.ui.prompt.isVisible())
    prompt = agent.ui.prompt
    assert prompt is not None
    return prompt


async def test_each_status_is_shown_from_the_conditions_that_cause_it(agent: Agent) -> None:
    window = agent.ui.window
    assert badge(agent) == "Disconnected"
    assert window.online.text().endswith("Online")
    assert not window.open_call.isEnabled(), "no session: nothing to reopen"

    service = agent.pair.agent.service
    await agent.pair.agent.set_service(ServiceConfig(installed=False))
    await until(lambda: badge(agent) == "Not Installed")
    await until(lambda: console_status(agent) is LiveSupportStatus.NOT_INSTALLED)
    await agent.pair.agent.set_service(ServiceConfig(enabled=False))
    await until(lambda: badge(agent) == "Disabled")
    await until(lambda: console_status(agent) is LiveSupportStatus.DISABLED)
    await agent.pair.agent.set_service(service)
    await until(lambda: badge(agent) == "Disconnected")

    # A session open: Connected, and "Live Support" brings the call window back.
    agent.pair.decision[0] = Mode.TEXT
    session = await agent.pair.console.start_session(agent.pair.device_id, Mode.TEXT, "T-1")
    prompt = await prompt_of(agent)
    click(prompt.accept_buttons["text"])
    await agent.pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: badge(agent) == "Connected")
    assert window.open_call.isEnabled()
    click(window.open_call)
    await until(lambda: window._task is not None and window._task.done())
    assert window._task is not None
    assert window._task.result() is True, "the session process got the request"

    await agent.pair.console.close_session(session.session_id)
    await until(lambda: badge(agent) == "Disconnected")
    assert not window.open_call.isEnabled()


async def test_offline_is_shown_beside_the_status(agent: Agent, lab: Lab) -> None:
    window = agent.ui.window
    await lab.server.stop()
    await until(lambda: "Offline" in window.online.text())
    assert badge(agent) == "Disconnected", "presence is not mixed into the status"


async def test_the_prompt_shows_who_why_and_how_and_accepting_as_voice(agent: Agent) -> None:
    pair = agent.pair
    session = await pair.console.start_session(pair.device_id, Mode.VIDEO, "Ticket 4411 <b>")
    prompt = await prompt_of(agent)
    assert ringing(prompt)
    assert prompt.windowFlags() & Qt.WindowType.WindowStaysOnTopHint
    labels = {label.objectName(): label for label in prompt.findChildren(QLabel)}
    assert labels["reason"].text() == "Ticket 4411 <b>"
    assert labels["reason"].textFormat() is Qt.TextFormat.PlainText
    assert labels["headline"].text().endswith("wants to start a video call with you")
    assert not labels["photo"].pixmap().isNull(), "a photo, or the initials instead"
    assert set(prompt.accept_buttons) == {"video", "voice", "text"}
    first = prompt.countdown.text()
    assert first.startswith("Declines automatically in")
    await until(lambda: prompt.countdown.text() != first)

    click(prompt.accept_buttons["voice"])
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    assert last_update(agent, session.session_id).mode is Mode.VOICE
    await until(lambda: not prompt.isVisible())
    assert not ringing(prompt)
    await pair.console.close_session(session.session_id)


async def test_decline_and_only_allowed_modes(agent: Agent) -> None:
    pair = agent.pair
    await pair.agent.set_service(ServiceConfig(chat_services=(Mode.TEXT,)))
    await until(lambda: pair.agent.chat_services == (Mode.TEXT,))
    session = await pair.console.start_session(pair.device_id, Mode.TEXT, "T-2")
    prompt = await prompt_of(agent)
    assert set(prompt.accept_buttons) == {"text"}, "only what the configuration allows"
    click(prompt.reject_button)
    update = await pair.console.wait_session(session, [SessionState.REJECTED])
    assert update is SessionState.REJECTED
    assert last_update(agent, session.session_id).reject_reason is (RejectReason.DECLINED)
    assert prompt.call.state is PromptState.REJECTED


async def test_the_countdown_declines_for_the_user(agent: Agent) -> None:
    pair = agent.pair
    session = await pair.console.start_session(pair.device_id, Mode.VOICE, "T-3")
    prompt = await prompt_of(agent)
    # The lab's invites last 5 s; the prompt says "no answer" just before.
    await pair.console.wait_session(session, [SessionState.REJECTED], timeout_s=10)
    assert last_update(agent, session.session_id).reject_reason is (RejectReason.NO_ANSWER)
    assert prompt.call.state is PromptState.NO_ANSWER
    await until(lambda: not prompt.isVisible())
    assert not ringing(prompt)
    assert pair.agent.session is None
    # The server has told everyone the device is free again.
    await until(lambda: pair.console.devices[pair.device_id].session_id is None)
    await until(lambda: badge(agent) == "Disconnected")


async def test_a_notification_replied_to_and_one_marked_read(agent: Agent) -> None:
    pair = agent.pair
    first = await pair.console.notify(
        title="Update tonight", body="Keep the tablet <i>charged</i>", device_ids=[pair.device_id]
    )
    await until(lambda: len(agent.ui.popups) == 1 and agent.ui.popups[0].isVisible())
    popup = agent.ui.popups[0]
    assert popup.card.body.text() == "Keep the tablet <i>charged</i>"
    assert popup.card.body.textFormat() is Qt.TextFormat.PlainText
    await until(lambda: agent.ui.window.inbox_button.text() == "Notifications (1)")

    # An empty answer is refused in place; a real one goes to the console.
    click(popup.card.reply_button)
    await until(lambda: popup.card.error.isVisible())
    QTest.keyClicks(popup.card.answer, "Done, it is plugged in")
    click(popup.card.reply_button)
    await until(lambda: first.states.get(pair.device_id) is NotificationState.ANSWERED)
    assert first.answers[pair.device_id] == "Done, it is plugged in"
    await until(lambda: not popup.isVisible())

    second = await pair.console.notify(
        title="Survey", body="How was your support?", device_ids=[pair.device_id]
    )
    await until(lambda: popup_for(agent, second.notification_id) is not None)
    later = popup_for(agent, second.notification_id)
    assert later is not None
    later_button = later.findChild(QPushButton, "later")
    assert later_button is not None
    click(later_button)  # it stays in the inbox
    assert not later.isVisible()
    agent.ui.open_inbox()
    inbox = agent.ui.inbox
    await until(lambda: second.notification_id in inbox.cards)
    assert list(inbox.cards) == [second.notification_id]
    click(inbox.cards[second.notification_id].read_button)
    await until(lambda: second.states.get(pair.device_id) is NotificationState.READ)
    await until(lambda: not inbox.cards and inbox.empty.isVisible())
    assert agent.ui.window.inbox_button.text() == "Notifications"


async def test_keyboard_reaches_every_prompt_button(agent: Agent) -> None:
    pair = agent.pair
    session = await pair.console.start_session(pair.device_id, Mode.VIDEO, "T-5")
    prompt = await prompt_of(agent)
    buttons = [*prompt.accept_buttons.values(), prompt.reject_button]
    for target in buttons:
        assert target.focusPolicy() & Qt.FocusPolicy.TabFocus
        assert target.accessibleName()
    # Escape declines, as the Decline button does.
    QTest.keyClick(prompt, Qt.Key.Key_Escape)
    await pair.console.wait_session(session, [SessionState.REJECTED])
    await asyncio.sleep(0)


def test_status_badges_are_readable() -> None:
    for status, colour in STATUS_COLOURS.items():
        assert contrast_ratio("#ffffff", colour) >= MIN_TEXT_CONTRAST, status
