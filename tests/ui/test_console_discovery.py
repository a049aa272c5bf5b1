"""The console's login window finds servers on the LAN (zeroconf, loopback only here)
and fills in the address, never the pin: discovery grants no trust."""

from __future__ import annotations

import asyncio

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from peer.discovery import FoundServer, discover
from signaling_server.server import RunningServer
from tech_console.client import ConsoleClient
from tech_console.console_model import ConsoleSettings, KnownServer
from tech_console.ui.login import LoginDialog
from tests.integration.harness import FAST, until


async def on_loopback() -> list[FoundServer]:
    return await discover(interfaces=["127.0.0.1"], timeout_s=4)


async def test_found_servers_fill_the_address_and_never_the_pin(
    advertised: RunningServer, qtbot: QtBot
) -> None:
    clients: list[ConsoleClient] = []

    def make_client(address: str, pin: str) -> ConsoleClient:
        clients.append(ConsoleClient(address, pin, backoff=FAST))
        return clients[-1]

    remembered = KnownServer("https://127.0.0.1:1", advertised.fingerprint, "old")
    dialog = LoginDialog(
        ConsoleSettings(servers=(remembered,)), make_client, discoverer=on_loopback
    )
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.fingerprint.text() == advertised.fingerprint  # the remembered server's
    assert not dialog.found.isVisible()
    QTest.mouseClick(dialog.find_button, Qt.MouseButton.LeftButton)
    assert not dialog.find_button.isEnabled()
    assert dialog.status.text() == "Looking for servers on the network…"
    name = advertised.config.name

    def listed() -> list[str]:
        return [dialog.found.item(i).text() for i in range(dialog.found.count())]

    await until(lambda: any(name in text for text in listed()), 20)
    assert dialog.find_button.isEnabled()
    assert dialog.found.isVisible()
    assert f"{name} ({advertised.url})" in listed()  # markup in the name shown as text
    row = listed().index(f"{name} ({advertised.url})")
    dialog.found.itemClicked.emit(dialog.found.item(row))
    assert dialog.server.currentText() == advertised.url
    # A new address: the advertised pin is not taken on trust.
    assert dialog.fingerprint.text() == ""
    assert "is new here" in dialog.status.text()
    dialog.fingerprint.setText(advertised.fingerprint)
    dialog.username.setText("nobody")
    dialog.password.setText("wrong")
    logged_in: list[ConsoleClient] = []
    dialog.logged_in.connect(logged_in.append)
    QTest.mouseClick(dialog.login_button, Qt.MouseButton.LeftButton)
    # The found address answers over the pinned connection (the login itself is refused:
    # this server has no technicians).
    await until(lambda: dialog.status.text().startswith("Not logged in"), 20)
    assert "unavailable" not in dialog.status.text()
    assert "pin" not in dialog.status.text()
    assert logged_in == []
    for client in clients:
        await client.close()


async def test_a_search_still_running_when_the_dialog_is_done_is_cancelled(qtbot: QtBot) -> None:
    """Its widgets may be deleted next: the search ends without touching them (it
    re-enabled a deleted button once, at a test run's end)."""
    never = asyncio.Event()

    async def silent_network() -> list[FoundServer]:
        await never.wait()
        return []

    def no_login(address: str, pin: str) -> ConsoleClient:
        raise AssertionError("nobody logs in here")

    dialog = LoginDialog(ConsoleSettings(), no_login, discoverer=silent_network)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.find_servers()
    finding = dialog._finding
    assert finding is not None
    dialog.reject()
    await until(finding.done, 5)
    assert finding.cancelled()
    assert not dialog.find_button.isEnabled()  # untouched since the search began
