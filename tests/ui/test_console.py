"""The technician console's window, driven with pytest-qt against a real server and a
real device agent; the device's session runs in this process (see
``tests/integration/inprocess.py``) so that the test can see what reaches the device."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QDialogButtonBox, QPushButton
from pytestqt.qtbot import QtBot

from device_agent.call_process import CallSession
from device_agent.state import ServiceConfig
from peer.call_media import MediaOptions
from peer.chat import DeliveryState
from peer.ui.chat import check_marks
from protocol.enums import CameraFacing, LiveSupportStatus, Mode, NotificationState, SessionState
from tech_console.client import ConsoleClient
from tech_console.console_model import ConsoleSettings, KnownServer, SessionControl
from tech_console.ui.inventory import Column
from tech_console.ui.login import LoginDialog
from tech_console.ui.main_window import ConsoleWindow
from tech_console.ui.session_window import SessionPanel
from tests.conftest import PASSWORD, Lab
from tests.integration.harness import FAST, Pair, make_pair, until
from tests.integration.inprocess import in_process_hosts


@dataclass
class Console:
    pair: Pair
    window: ConsoleWindow
    device_sessions: list[CallSession]

    @property
    def device_session(self) -> CallSession:
        return self.device_sessions[-1]

    def row_text(self, column: Column) -> str:
        inventory = self.window.inventory
        row = inventory.proxy.row_of(self.pair.device_id)
        assert row is not None
        return str(inventory.proxy.index(row, column).data())


@pytest.fixture
async def console(lab: Lab, tmp_path: Path, qtbot: QtBot) -> AsyncIterator[Console]:
    device_sessions: list[CallSession] = []
    async with make_pair(
        lab, tmp_path, host_factory=in_process_hosts(device_sessions.append)
    ) as pair:
        pair.console.media_options = MediaOptions(width=320, height=240)
        # Closed here, not by pytest-qt: closing is part of what is tested (it logs the
        # window's listeners off the client) and must happen before the client closes.
        window = ConsoleWindow(pair.console)
        window.show()
        yield Console(pair, window, device_sessions)
        window.close()
        window.deleteLater()


def click(button: QPushButton) -> None:
    assert button.isVisible(), button.objectName()
    assert button.isEnabled(), button.objectName()
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


async def test_the_inventory_follows_status_changes_live(console: Console) -> None:
    window, pair = console.window, console.pair
    inventory = window.inventory
    await until(lambda: inventory.proxy.row_of(pair.device_id) is not None)
    assert console.row_text(Column.STATUS) == "Disconnected"
    assert console.row_text(Column.ONLINE) == "Online"
    assert console.row_text(Column.NAME) == pair.console.devices[pair.device_id].name
    assert inventory.select_device(pair.device_id)
    await until(lambda: inventory.start_buttons[Mode.VIDEO].isEnabled())

    await pair.agent.set_service(ServiceConfig(enabled=False))
    await until(lambda: console.row_text(Column.STATUS) == "Disabled")
    assert not inventory.start_buttons[Mode.TEXT].isEnabled()
    assert "disabled" in inventory.blocker_label.text()

    await pair.agent.set_service(ServiceConfig(installed=False))
    await until(lambda: console.row_text(Column.STATUS) == "Not Installed")
    assert "not installed" in inventory.blocker_label.text()

    await pair.agent.set_service(ServiceConfig(chat_services=(Mode.TEXT,)))
    await until(lambda: console.row_text(Column.STATUS) == "Disconnected")
    await until(lambda: inventory.start_buttons[Mode.TEXT].isEnabled())
    assert not inventory.start_buttons[Mode.VIDEO].isEnabled()
    assert "does not allow video" in inventory.start_buttons[Mode.VIDEO].toolTip()

    # Filters: the search and the status filter narrow the table; the count says so.
    QTest.keyClicks(inventory.search, "no such device")
    await until(lambda: inventory.proxy.rowCount() == 0)
    assert inventory.count_label.text() == "0 of 1 devices"
    inventory.search.clear()
    inventory.status_filter.setCurrentIndex(
        inventory.status_filter.findData(LiveSupportStatus.DISABLED)
    )
    assert inventory.proxy.rowCount() == 0
    inventory.status_filter.setCurrentIndex(0)
    assert inventory.proxy.rowCount() == 1

    await pair.agent.stop()
    await until(lambda: console.row_text(Column.ONLINE) == "Offline")
    assert inventory.select_device(pair.device_id)
    await until(lambda: "offline" in inventory.blocker_label.text())


async def test_a_viewer_sees_why_nothing_can_be_started(lab: Lab, console: Console) -> None:
    viewer = ConsoleClient(lab.url, lab.fingerprint, backoff=FAST)
    await viewer.login("viewer", PASSWORD)
    try:
        window = ConsoleWindow(viewer)
        window.show()
        inventory = window.inventory
        await until(lambda: inventory.select_device(console.pair.device_id))
        await until(lambda: "viewer" in inventory.blocker_label.text())
        assert not any(b.isEnabled() for b in inventory.start_buttons.values())
        window.close()
    finally:
        await viewer.close()


async def test_a_reason_is_required_to_start(console: Console) -> None:
    inventory = console.window.inventory
    await until(lambda: inventory.select_device(console.pair.device_id))
    await until(lambda: inventory.start_buttons[Mode.TEXT].isEnabled())
    click(inventory.start_buttons[Mode.TEXT])
    assert "reason" in inventory.start_status.text()
    assert not console.window.panels
    assert console.pair.answers.empty()


async def start_from_window(console: Console, mode: Mode) -> SessionPanel:
    window, pair = console.window, console.pair
    inventory = window.inventory
    pair.decision[0] = mode
    await until(lambda: inventory.select_device(pair.device_id))
    await until(lambda: inventory.start_buttons[mode].isEnabled())
    QTest.keyClicks(inventory.reason, "TICKET-42 screen stays black")
    click(inventory.start_buttons[mode])
    invite = await pair.answers.get()
    assert invite.reason == "TICKET-42 screen stays black"
    await until(lambda: len(window.panels) == 1)
    return next(iter(window.panels.values()))


async def test_a_video_session_with_every_technician_control(
    console: Console, lab: Lab, qtbot: QtBot
) -> None:
    window = console.window
    panel = await start_from_window(console, Mode.VIDEO)
    model = panel.model
    session = model.session
    await console.pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: "Consent verified" in panel.consent_label.text())
    assert window.tabs.currentWidget() is panel
    await until(lambda: panel.stage.remote_view.frames_shown > 3)
    await until(lambda: panel.stage.local_view.frames_shown > 0)
    await until(lambda: bool(console.device_sessions))
    device = console.device_session

    def seen_by_device() -> object:
        media = device.media
        assert media is not None
        return media.peer_state

    # Microphone, camera, switch camera: each reaches the device user's side.
    click(panel.buttons[SessionControl.MUTE])
    await until(lambda: getattr(seen_by_device(), "microphone", None) is False)
    assert panel.buttons[SessionControl.MUTE].text() == "Unmute"
    click(panel.buttons[SessionControl.MUTE])
    await until(lambda: getattr(seen_by_device(), "microphone", None) is True)
    click(panel.buttons[SessionControl.CAMERA])
    await until(lambda: getattr(seen_by_device(), "camera", None) is False)
    await until(lambda: panel.stage.local_view.placeholder == "Your camera is off")
    click(panel.buttons[SessionControl.CAMERA])
    await until(lambda: getattr(seen_by_device(), "camera", None) is True)
    click(panel.buttons[SessionControl.SWITCH_CAMERA])
    await until(lambda: getattr(seen_by_device(), "camera_facing", None) is CameraFacing.BACK)

    # Audio output: the menu lists the speakers; the choice is applied.
    click(panel.buttons[SessionControl.AUDIO_OUTPUT])
    menu = panel.output_menu
    await until(menu.isVisible)
    actions = {a.text(): a for a in menu.actions()}
    actions["Synthetic headset (silent)"].trigger()
    menu.hide()
    media = session.media
    assert media is not None
    await until(lambda: media.speaker is not None and "headset" in media.speaker.name)

    # Call quality is measured and shown.
    await until(lambda: model.quality is not None and model.quality.rtt_ms is not None, 15)
    await until(lambda: "Round trip" in panel.stats_label.text())
    assert "Direct" in panel.stats_label.text()

    # Chat: a saved reply is sent; checks turn gray then blue as the device reads it.
    panel.saved_replies.setCurrentIndex(1)
    panel.saved_replies.activated.emit(1)
    assert panel.chat_panel.input.text().startswith("Hello")
    QTest.keyClick(panel.chat_panel.input, Qt.Key.Key_Return)
    device_call = device.call
    assert device_call is not None
    await until(lambda: len(device_call.chat) == 1)
    chat = model.chat
    assert chat is not None
    await until(lambda: chat.entries()[0].state is DeliveryState.DELIVERED)
    assert check_marks(chat.entries()[0].state)[0] == "✓✓"
    await device_call.mark_read([device_call.chat.entries()[0].message_id])
    await until(lambda: chat.entries()[0].state is DeliveryState.READ)

    # The device user types and writes while the technician looks at another tab:
    # the tab shows the unread count and a desktop notification is given.
    window.tabs.setCurrentWidget(window.inventory)
    await device_call.send_typing(True)
    await until(lambda: panel.chat_panel.typing_label.isVisible() or chat.peer_typing)
    await device_call.send_chat("<b>It works</b> now")
    index = window.tabs.indexOf(panel)
    await until(lambda: window.tabs.tabText(index).endswith("(1)"))
    assert window.alerts == [f"New message from {model.device_name}"]
    window.tabs.setCurrentWidget(panel)
    await until(lambda: not window.tabs.tabText(index).endswith(")"), 10)
    row = panel.chat_panel.model.rowCount() - 1
    assert panel.chat_panel.model.entry_at(row).text == "<b>It works</b> now"

    # Hang up: the call ends, the session stays open.
    click(panel.buttons[SessionControl.HANG_UP])
    await console.pair.console.wait_session(session, [SessionState.CALL_ENDED])
    await until(lambda: not panel.buttons[SessionControl.HANG_UP].isEnabled())

    # Closing asks for the summary; an empty one is refused and nothing closes.
    click(panel.buttons[SessionControl.CLOSE_SESSION])
    dialog = window.summary_dialogs[session.session_id]
    await until(dialog.isVisible)
    dialog.submit()
    assert "required" in dialog.problem_labels["summary"].text()
    assert session.state is SessionState.CALL_ENDED
    dialog.set_values(
        {
            "summary": "Display driver reset; picture back.",
            "impact": "One user, 20 minutes",
            "next_owner": "none: resolved",
        }
    )
    dialog.submit()
    await console.pair.console.wait_session(session, [SessionState.CLOSED])
    await until(lambda: model.summary_written)
    row_ = await lab.store.session(session.session_id)
    assert row_ is not None
    assert row_.summary is not None
    stored = json.loads(row_.summary)
    assert stored["summary"] == "Display driver reset; picture back."
    assert stored["next_owner"] == "none: resolved"
    assert "It works" not in row_.summary
    await until(lambda: "closed" in panel.state_label.text().lower())
    # A closed session's tab can now be closed.
    window.tabs.tabCloseRequested.emit(window.tabs.indexOf(panel))
    assert window.tabs.indexOf(panel) == -1


async def test_a_notification_to_a_group_with_answers(console: Console, lab: Lab) -> None:
    window, pair = console.window, console.pair
    inventory = window.inventory
    await until(lambda: inventory.select_device(pair.device_id))
    click(inventory.notify_button)
    dialog = window.compose
    assert dialog is not None
    await until(dialog.isVisible)
    dialog.target.setCurrentIndex(dialog.target.findData(lab.tablets.id))
    dialog.submit()
    assert dialog.status.text() == "Write a title."
    QTest.keyClicks(dialog.title, "Update tonight")
    dialog.body.setPlainText("Can you leave the tablet charging? Reply yes or no.")
    dialog.submit()
    note = await pair.notes.get()
    assert note.title == "Update tonight"
    view = window.notifications
    await until(lambda: window.tabs.currentWidget() is view)
    await until(lambda: view.progress_model.rowCount() == 1)
    assert view.progress_model.index(0, 0).data() == pair.console.devices[pair.device_id].name
    await until(lambda: view.progress_model.index(0, 1).data() == "Delivered")
    await pair.agent.answer_notification(note.notification_id, "yes, <i>charging</i>")
    await until(lambda: view.progress_model.index(0, 1).data() == "Answered")
    assert view.progress_model.index(0, 2).data() == "yes, <i>charging</i>"
    assert view.progress_model.counts()[NotificationState.ANSWERED] == 1
    assert "(1/1 answered)" in view.list.item(0).text()


async def test_login_checks_the_form_and_remembers_the_server_not_the_password(
    lab: Lab, qtbot: QtBot
) -> None:
    clients: list[ConsoleClient] = []

    def make_client(address: str, pin: str) -> ConsoleClient:
        clients.append(ConsoleClient(address, pin, backoff=FAST))
        return clients[-1]

    dialog = LoginDialog(ConsoleSettings(), make_client)
    qtbot.addWidget(dialog)
    dialog.show()
    logged_in: list[ConsoleClient] = []
    dialog.logged_in.connect(logged_in.append)
    dialog.prefill(lab.url, "sha-256 12:34", "tech")
    click(dialog.login_button)
    assert "certificate pin" in dialog.status.text()
    dialog.fingerprint.setText(lab.fingerprint)
    click(dialog.login_button)
    assert dialog.status.text() == "Enter your password."
    QTest.keyClicks(dialog.password, "wrong password")
    click(dialog.login_button)
    await until(lambda: dialog.status.text().startswith("Not logged in"))
    assert dialog.login_button.isEnabled()
    dialog.password.setText(PASSWORD)
    QTest.keyClick(dialog.password, Qt.Key.Key_Return)
    await until(lambda: bool(logged_in))
    try:
        assert logged_in[0].display_name == lab.tech.display_name
        assert dialog.password.text() == ""
        assert dialog.settings.servers == (KnownServer(lab.url, lab.fingerprint, "tech"),)
    finally:
        for client in clients:
            await client.close()


def png(colour: str, folder: Path) -> bytes:
    image = QImage(32, 32, QImage.Format.Format_RGB32)
    image.fill(QColor(colour))
    path = folder / "photo.png"
    assert image.save(str(path))  # the format from the name
    return path.read_bytes()


async def test_the_profile_is_what_the_device_user_sees_next(
    console: Console, tmp_path: Path
) -> None:
    window, pair = console.window, console.pair
    dialog = window.open_profile()
    assert dialog is not None
    await until(lambda: dialog.save_button.isEnabled())
    assert dialog.display_name.text() == pair.console.display_name
    dialog.display_name.setText("Dana from IT")
    dialog.set_photo(b"not an image")
    click(dialog.save_button)
    await until(lambda: dialog.status.text().startswith("Not saved"))
    photo = png("#2e7d32", tmp_path)
    dialog.set_photo(photo)
    click(dialog.save_button)
    await until(lambda: dialog.status.text().startswith("Saved"))
    session = await pair.console.start_session(pair.device_id, Mode.TEXT, "profile check")
    invite = await pair.answers.get()
    assert invite.technician.display_name == "Dana from IT"
    assert base64.b64decode(invite.technician.photo) == photo
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await pair.console.close_session(session.session_id)


async def test_the_tabs_follow_the_role(lab: Lab, console: Console, qtbot: QtBot) -> None:
    def titles(window: ConsoleWindow) -> list[str]:
        return [window.tabs.tabText(i) for i in range(window.tabs.count())]

    assert titles(console.window) == ["Devices", "Notifications", "History"]
    assert console.window.history is not None
    for user, expected in (
        ("admin", ["Devices", "Notifications", "History", "Administration"]),
        ("viewer", ["Devices", "Notifications"]),
    ):
        client = ConsoleClient(lab.url, lab.fingerprint, backoff=FAST)
        await client.login(user, PASSWORD)
        try:
            window = ConsoleWindow(client)
            assert titles(window) == expected
            admin = window.admin
            if admin is not None:
                # Loaded when first shown.
                window.tabs.setCurrentWidget(admin)
                assert admin.runner.task is not None
                await admin.runner.task
                assert admin.technician_model.rowCount() > 0
            window.close()
            window.deleteLater()
        finally:
            await client.close()


async def test_a_session_the_server_ended_still_gets_its_summary(
    console: Console, lab: Lab
) -> None:
    """The device goes away mid-session and the server closes the session after its
    grace period: the tab offers "Write summary…", and the summary is stored."""
    window, pair = console.window, console.pair
    session = await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket 77")
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: session.session_id in window.panels)
    panel = window.panels[session.session_id]
    button = panel.buttons[SessionControl.CLOSE_SESSION]
    assert button.text() == "Close session…"
    await pair.agent.stop()
    await pair.console.wait_session(session, [SessionState.CLOSED], timeout_s=20)
    await until(lambda: button.text() == "Write summary…")
    window.tabs.setCurrentWidget(panel)
    click(button)
    dialog = window.summary_dialogs[session.session_id]
    await until(dialog.isVisible)
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    assert ok.text() == "Save summary"
    dialog.set_values({"summary": "Device left mid-session.", "next_owner": "tech"})
    dialog.submit()
    await until(lambda: panel.model.summary_written)
    row = await lab.store.session(session.session_id)
    assert row is not None
    assert row.summary is not None
    assert json.loads(row.summary)["summary"] == "Device left mid-session."
    await until(lambda: not button.isEnabled())
