"""The device's call window, driven with pytest-qt through its buttons and keys,
against a real server, a real device agent and a real console; the effect of each
control is checked where it matters: on the console, which receives the device's
media over a real aiortc call. The session runs in this process (see
``tests/integration/inprocess.py``) so that the test can reach its window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QBoxLayout, QPushButton
from pytestqt.qtbot import QtBot

from device_agent.call_model import CallControl, CallWindowModel
from device_agent.call_process import CallSession
from device_agent.ui.call_window import CallWindow
from peer.call_media import MediaOptions
from peer.chat import DeliveryState
from peer.devices import Facing
from peer.ui.chat import check_marks
from peer.ui.theme import TOUCH_TARGET_PX
from protocol.enums import AudioInterruption, CameraFacing, Mode, SessionState
from tech_console.client import ConsoleSession
from tests.conftest import Lab
from tests.integration.harness import Pair, make_pair, until
from tests.integration.inprocess import in_process_hosts
from tests.integration.test_calls import close, facing_seen, peer, start_call


@dataclass
class Device:
    pair: Pair
    windows: list[CallWindow]

    @property
    def window(self) -> CallWindow:
        return self.windows[-1]


@pytest.fixture
async def device(lab: Lab, tmp_path: Path, qtbot: QtBot) -> AsyncIterator[Device]:
    windows: list[CallWindow] = []

    def on_session(session: CallSession) -> None:
        window = CallWindow(CallWindowModel(session))
        window.resize(1024, 640)
        window.show()
        window.activateWindow()
        windows.append(window)

    async with make_pair(lab, tmp_path, host_factory=in_process_hosts(on_session)) as pair:
        pair.console.media_options = MediaOptions(width=320, height=240)
        yield Device(pair, windows)
    for window in windows:
        window.close_for_good()


def button(window: CallWindow, control: CallControl) -> QPushButton:
    return window.buttons[control]


def click(qtbot: QtBot, window: CallWindow, control: CallControl) -> None:
    target = button(window, control)
    assert target.isVisible(), control
    assert target.isEnabled(), control
    QTest.mouseClick(target, Qt.MouseButton.LeftButton)


def shown(window: CallWindow) -> set[CallControl]:
    return {c for c, b in window.buttons.items() if b.isVisible()}


async def test_every_call_window_control_reaches_the_console(device: Device, qtbot: QtBot) -> None:
    pair = device.pair
    session = await start_call(pair, Mode.VIDEO)
    window = device.window
    # The technician's video fills the window; the user's own is inset top-right.
    await until(lambda: window.remote_view.frames_shown > 3 and window.local_view.frames_shown > 0)
    inset, stage = window.local_view.geometry(), window.stage.rect()
    assert inset.right() > stage.width() * 0.9
    assert inset.top() < stage.height() * 0.1
    assert window.remote_view.geometry() == stage
    assert shown(window) == {
        CallControl.TEXT,
        CallControl.AUDIO_OUTPUT,
        CallControl.MUTE,
        CallControl.CAMERA,
        CallControl.SWITCH_CAMERA,
        CallControl.HANG_UP,
    }
    await until(lambda: window.timer_label.text().startswith("0:"))

    click(qtbot, window, CallControl.MUTE)
    await until(lambda: peer(session).microphone is False)
    assert button(window, CallControl.MUTE).text() == "Unmute"
    assert button(window, CallControl.MUTE).isChecked()
    # The keyboard does the same (Ctrl+D), as a screen-reader user would.
    QTest.keyClick(window, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
    await until(lambda: peer(session).microphone is True)

    click(qtbot, window, CallControl.CAMERA)
    await until(lambda: peer(session).camera is False)
    await until(lambda: window.local_view.placeholder == "Camera off")
    click(qtbot, window, CallControl.CAMERA)
    await until(lambda: peer(session).camera is True)

    click(qtbot, window, CallControl.SWITCH_CAMERA)
    await until(lambda: peer(session).camera_facing is CameraFacing.BACK)
    await until(lambda: facing_seen(session) is Facing.BACK, timeout_s=15)

    click(qtbot, window, CallControl.AUDIO_OUTPUT)
    menu = window.output_menu
    await until(menu.isVisible)
    actions = {a.text(): a for a in menu.actions()}
    assert set(actions) == {"Synthetic speaker (silent)", "Synthetic headset (silent)"}
    actions["Synthetic headset (silent)"].trigger()
    menu.hide()
    await until(lambda: peer(session).audio_output == "Synthetic headset (silent)")

    assert not window.chat_panel.isVisible()
    click(qtbot, window, CallControl.TEXT)
    assert window.chat_panel.isVisible()

    click(qtbot, window, CallControl.HANG_UP)
    await pair.console.wait_session(session, [SessionState.CALL_ENDED])
    await until(lambda: shown(window) >= {CallControl.CALL_AGAIN})
    assert CallControl.HANG_UP not in shown(window)
    assert "ended" in window.banner.text()

    click(qtbot, window, CallControl.CALL_AGAIN)
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: window.remote_view.frames_shown > 3)
    assert pair.answers.empty(), "calling again needs no new prompt"
    await close(pair, session)


async def test_checks_turn_gray_then_blue_and_reads_are_sent_only_when_seen(
    device: Device, qtbot: QtBot
) -> None:
    pair = device.pair
    session = await start_call(pair, Mode.TEXT)
    window = device.window
    console_call = session.call
    assert console_call is not None
    # A text session is the chat alone: no media controls.
    assert shown(window) == {CallControl.HANG_UP}
    panel = window.chat_panel
    assert panel.isVisible()

    # The device user writes; the console receives (gray), then reads (blue).
    QTest.keyClicks(panel.input, "Hello, my screen is black")
    QTest.keyClick(panel.input, Qt.Key.Key_Return)
    model = panel.model

    def own_state() -> DeliveryState | None:
        for row in range(model.rowCount()):
            entry = model.entry_at(row)
            if entry.outgoing:
                return entry.state
        return None

    await until(lambda: own_state() is DeliveryState.DELIVERED)
    assert check_marks(DeliveryState.DELIVERED)[0] == "✓✓"
    gray = check_marks(DeliveryState.DELIVERED)[1]
    incoming = [e for e in console_call.chat.entries() if not e.outgoing]
    await console_call.mark_read([incoming[0].message_id])
    await until(lambda: own_state() is DeliveryState.READ)
    assert check_marks(DeliveryState.READ)[1] != gray

    # The technician types, then writes; with the window hidden nothing is read.
    await console_call.send_typing(True)
    await until(lambda: panel.typing_label.isVisible())

    def console_state(message_id: str) -> DeliveryState | None:
        entry = console_call.chat.outgoing(message_id)
        return entry.state if entry is not None else None

    window.hide()
    message_id = await console_call.send_chat("<b>Restart</b> the tablet, please")
    await until(lambda: console_state(message_id) is DeliveryState.DELIVERED)
    await until(lambda: len(window.model.chat or ()) == 2)
    assert window.model.unread() == 1
    assert console_state(message_id) is DeliveryState.DELIVERED, "unseen: not read"
    # Shown again: the message is on screen, so the read receipt goes out.
    window.show()
    window.activateWindow()
    await until(lambda: console_state(message_id) is DeliveryState.READ)
    # And the technician's markup stayed text.
    texts = [model.entry_at(r).text for r in range(model.rowCount())]
    assert "<b>Restart</b> the tablet, please" in texts
    await close(pair, session)


async def test_banners_for_a_phone_call_on_either_side(device: Device) -> None:
    pair = device.pair
    session = await start_call(pair, Mode.VOICE)
    window = device.window
    assert shown(window) == {
        CallControl.TEXT,
        CallControl.AUDIO_OUTPUT,
        CallControl.MUTE,
        CallControl.HANG_UP,
    }, "a voice call has no camera controls"
    await until(lambda: not window.banner.isVisible())

    await pair.agent.audio_interruption(AudioInterruption.PHONE_CALL)
    await until(lambda: window.banner.isVisible() and "phone call" in window.banner.text())
    await until(lambda: peer(session).interruption is AudioInterruption.PHONE_CALL)
    await pair.agent.audio_interruption(AudioInterruption.NONE)
    await until(lambda: not window.banner.isVisible())

    console_media = session.media
    assert console_media is not None
    console_media.set_interruption(AudioInterruption.PHONE_CALL)
    await until(lambda: window.banner.isVisible() and "interrupted" in window.banner.text())
    console_media.set_interruption(AudioInterruption.NONE)
    await until(lambda: not window.banner.isVisible())
    await close(pair, session)


async def test_the_layout_fits_a_portrait_tablet_and_a_desktop(device: Device) -> None:
    pair = device.pair
    session: ConsoleSession = await start_call(pair, Mode.VIDEO)
    window = device.window
    window.model.set_chat_open(True)
    for (width, height), direction in (
        ((600, 960), QBoxLayout.Direction.TopToBottom),
        ((1280, 800), QBoxLayout.Direction.LeftToRight),
    ):
        window.resize(width, height)
        # Never QApplication.processEvents() here: this coroutine runs inside one of
        # qasync's timer callbacks, and processing events nested in it re-enters that
        # timer; qasync then drops another callback (a task's wake-up: the loop hung
        # at shutdown). A shown window gets its resize event at once; lay out now.
        layout = window.layout()
        assert layout is not None
        layout.activate()
        assert window.content.direction() is direction
        for control in shown(window):
            target = button(window, control)
            assert target.height() >= TOUCH_TARGET_PX, control
            assert target.width() >= TOUCH_TARGET_PX, control
            corner = target.mapTo(window, QPoint(target.width(), target.height()))
            assert window.rect().contains(corner - QPoint(1, 1)), (control, width)
        assert window.chat_panel.isVisible()
        assert window.stage.isVisible()
    await close(pair, session)
