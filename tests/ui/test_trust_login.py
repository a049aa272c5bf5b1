"""The login window's trust decisions against a real server: a first contact shows
the certificate the server presents and logs in only once the technician confirms it
(then remembers it as the pin); a server back with another certificate is refused
with a plain explanation, and re-trusting it takes the same explicit confirmation."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from tech_console.client import ConsoleClient
from tech_console.console_model import ConsoleSettings, KnownServer
from tech_console.ui.login import LoginDialog
from tests.conftest import PASSWORD, Lab
from tests.integration.harness import FAST, until
from tests.integration.test_trust import restart_with_a_new_certificate
from tests.ui.test_console import click


def dialog_for(
    qtbot: QtBot, settings: ConsoleSettings, clients: list[ConsoleClient]
) -> LoginDialog:
    def make_client(address: str, pin: str) -> ConsoleClient:
        clients.append(ConsoleClient(address, pin, backoff=FAST))
        return clients[-1]

    dialog = LoginDialog(settings, make_client)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


async def logins(lab: Lab) -> int:
    return len([r for r in await lab.store.audit_rows() if r.action == "login"])


async def test_first_contact_then_a_changed_certificate(lab: Lab, qtbot: QtBot) -> None:
    clients: list[ConsoleClient] = []
    try:
        dialog = dialog_for(qtbot, ConsoleSettings(), clients)
        logged_in: list[ConsoleClient] = []
        dialog.logged_in.connect(logged_in.append)
        dialog.prefill(lab.url, "", "tech")
        dialog.password.setText(PASSWORD)
        click(dialog.login_button)
        await until(lambda: dialog.trust_button.isVisible())
        assert lab.fingerprint in dialog.status.text()
        assert dialog.status.text().startswith("This console has never logged in")
        # Nothing was sent yet: the certificate was only read.
        assert (logged_in, clients, await logins(lab)) == ([], [], 0)
        click(dialog.trust_button)
        await until(lambda: bool(logged_in))
        assert dialog.fingerprint.text() == lab.fingerprint
        remembered = dialog.settings
        assert remembered.servers == (KnownServer(lab.url, lab.fingerprint, "tech"),)
        await logged_in[0].close()

        server = await restart_with_a_new_certificate(lab)
        try:
            again = dialog_for(qtbot, remembered, clients)
            again_in: list[ConsoleClient] = []
            again.logged_in.connect(again_in.append)
            assert again.fingerprint.text() == lab.fingerprint  # the remembered pin
            again.password.setText(PASSWORD)
            click(again.login_button)
            await until(lambda: again.status.text().startswith("Refused"))
            assert "does not match its pin" in again.status.text()
            assert not again.trust_button.isVisible()  # no silent re-pinning
            assert again.login_button.isEnabled()
            assert again_in == []

            # The technician clears the pin to look at the new certificate: it is
            # shown with a warning, and trusted only on an explicit confirmation.
            again.fingerprint.selectAll()
            QTest.keyClick(again.fingerprint, Qt.Key.Key_Delete)
            click(again.login_button)
            await until(lambda: again.trust_button.isVisible())
            assert again.status.text().startswith("WARNING")
            assert server.fingerprint in again.status.text()
            click(again.trust_button)
            await until(lambda: bool(again_in))
            assert again.settings.servers == (KnownServer(lab.url, server.fingerprint, "tech"),)
        finally:
            for client in clients:
                await client.close()
            await server.stop()
    finally:
        for client in clients:
            await client.close()
