"""Hostile text end to end: a real server, a real device agent with its windows and a
real console. Markup and bidi controls that the protocol lets through (within its
field limits) reach the other end's widgets, which show them as plain text with the
controls escaped (``peer/ui/text.py``). The technician's name cannot carry bidi
controls through REST (refused there); here it is put in the store directly, as the
admin CLI could, to show the device does not rely on that alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QLabel, QPushButton
from pytestqt.qtbot import QtBot

from device_agent.agent_model import AgentModel
from device_agent.ui.agent_window import AgentUi
from peer.ui.text import NAME_LIMIT
from protocol.enums import Mode, NotificationState, SessionState
from protocol.messages import DevicesSnapshot, DevicesSubscribe
from tech_console.ui.inventory import InventoryModel
from tech_console.ui.notifications import ProgressModel
from tests.conftest import Lab
from tests.integration.harness import Pair, make_pair, until
from tests.signaling_server.wire import clients, enrol

HEADLESS_SESSION = ["--fake-media", "--video-size", "320x240"]
MARKUP = "<b>Admin</b> <img src='https://evil.example/x.png'>"
SPOOF = "Support \u202eyrtnuoc"  # shows as "Support country" reversed: a fake name
ESCAPED = "Support [U+202E]yrtnuoc"


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


def _label(parent: object, name: str) -> QLabel:
    assert hasattr(parent, "findChild")
    label = parent.findChild(QLabel, name)
    assert isinstance(label, QLabel), name
    return label


async def test_the_device_shows_a_hostile_technician_name_and_reason_as_plain_text(
    agent: Agent, lab: Lab
) -> None:
    pair = agent.pair
    await lab.store.update_technician(lab.tech.id, display_name=f"{MARKUP} {SPOOF}")
    reason = f"Ticket <a href='https://evil.example'>#1</a> {SPOOF}"
    session = await pair.console.start_session(pair.device_id, Mode.TEXT, reason)
    await until(lambda: agent.ui.prompt is not None and agent.ui.prompt.isVisible())
    prompt = agent.ui.prompt
    assert prompt is not None

    headline = _label(prompt, "headline")
    assert headline.textFormat() is Qt.TextFormat.PlainText
    assert headline.text().startswith(f"{MARKUP} {ESCAPED} wants to start")
    assert "\u202e" not in prompt.windowTitle()
    assert ESCAPED in prompt.windowTitle()
    shown_reason = _label(prompt, "reason")
    assert shown_reason.textFormat() is Qt.TextFormat.PlainText
    assert shown_reason.text() == f"Ticket <a href='https://evil.example'>#1</a> {ESCAPED}"
    reject = prompt.reject_button
    assert isinstance(reject, QPushButton)
    QTest.mouseClick(reject, Qt.MouseButton.LeftButton)
    # The session process started at the invite winds down with the rejection: the
    # test ends once it has, not in the middle (its reader task was left cancelling).
    await pair.console.wait_session(session, [SessionState.REJECTED])
    await until(lambda: all(host.exited.is_set() for host in pair.agent.hosts), 20)


async def test_a_hostile_notification_and_its_hostile_answer(agent: Agent, qtbot: QtBot) -> None:
    pair = agent.pair
    body = f"{MARKUP}\n{SPOOF}\n" + "x" * 3000
    progress = await pair.console.notify(
        title=f"{SPOOF} <i>urgent</i>", body=body, device_ids=[pair.device_id]
    )
    await until(lambda: len(agent.ui.popups) == 1 and agent.ui.popups[0].isVisible())
    card = agent.ui.popups[0].card
    for label in (card.title, card.meta, card.body):
        assert label.textFormat() is Qt.TextFormat.PlainText
        assert "\u202e" not in label.text()
    assert card.title.text() == f"{ESCAPED} <i>urgent</i>"
    assert card.body.text() == body.replace(SPOOF, ESCAPED)
    assert "\u202e" not in agent.ui.popups[0].windowTitle()

    # The device user answers with markup and an override; the console shows it escaped.
    card.answer.setText(f"<b>done</b> {SPOOF}")  # QTest.keyClicks cannot type U+202E
    QTest.mouseClick(card.reply_button, Qt.MouseButton.LeftButton)
    await until(lambda: progress.states.get(pair.device_id) is NotificationState.ANSWERED)
    assert progress.answers[pair.device_id] == f"<b>done</b> {SPOOF}"  # kept as typed
    model = ProgressModel(pair.console)
    model.show_progress(progress)
    assert model.data(model.index(0, 2)) == f"<b>done</b> {ESCAPED}"


async def test_the_console_inventory_shows_a_hostile_device_name_escaped(lab: Lab) -> None:
    async with clients(lab) as c:
        device = await enrol(lab)
        wire = await c.device(device)
        name = (MARKUP + SPOOF)[:NAME_LIMIT]
        await wire.report(name=name)
        console = await c.console("tech")
        snapshot = await console.ok(DevicesSubscribe())
        assert isinstance(snapshot, DevicesSnapshot)
        assert [d.name for d in snapshot.devices] == [name]  # the server kept it as typed
        model = InventoryModel()
        model.set_devices(snapshot.devices)
        assert model.data(model.index(0, 0)) == name.replace("\u202e", "[U+202E]")
