"""Logging in to a server: its address, its pinned certificate, the technician's name
and password. Servers logged in to before are remembered (address, pin and user
name; never the password). Servers on the LAN can be found with zeroconf: that fills in
an address only, never a pin (discovery grants no trust)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from peer.discovery import FoundServer, discover
from peer.signaling import RequestError
from tech_console.client import ConsoleClient
from tech_console.console_model import ConsoleSettings, KnownServer
from tech_console.first_contact import FirstContact, first_contact, refusal_text
from tech_console.ui.session_window import plain

log = logging.getLogger(__name__)

ITEM_SERVER_ROLE = Qt.ItemDataRole.UserRole

FINGERPRINT_FORM = re.compile(r"^sha-256 ([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$")

#: Makes the console client for an address and pin (tests pass their own backoff).
ClientFactory = Callable[[str, str], ConsoleClient]
#: Finds servers on the LAN (tests browse loopback only).
Discoverer = Callable[[], Awaitable[list[FoundServer]]]


def login_problem(address: str, fingerprint: str, username: str, password: str) -> str | None:
    """What is missing or malformed, said for people (None: ready to try)."""
    if not address.startswith("https://"):
        return "The server address starts with https:// (for example https://support.example:8443)."
    if not FINGERPRINT_FORM.match(fingerprint.strip()):
        return (
            "The certificate pin is the server's 'sha-256 AB:CD:…' fingerprint "
            "(from `livesupport server fingerprint` or your administrator); leave it "
            "empty to see the one the server presents and confirm it."
        )
    if not username.strip():
        return "Enter your user name."
    if not password:
        return "Enter your password."
    return None


class LoginDialog(QDialog):
    """Emits ``logged_in(ConsoleClient)`` once the server accepted the technician."""

    logged_in = Signal(object)

    def __init__(
        self,
        settings: ConsoleSettings,
        make_client: ClientFactory,
        parent: QWidget | None = None,
        discoverer: Discoverer = discover,
    ) -> None:
        super().__init__(parent)
        self.settings = settings
        self.make_client = make_client
        self.discoverer = discoverer
        self.setWindowTitle("Live Support console: log in")
        self.setObjectName("loginDialog")
        self.server = QComboBox(self)
        self.server.setObjectName("server")
        self.server.setEditable(True)
        self.server.setAccessibleName("Server address")
        for known in settings.servers:
            self.server.addItem(known.address)
        self.fingerprint = QLineEdit(self)
        self.fingerprint.setObjectName("fingerprint")
        self.fingerprint.setAccessibleName("Certificate pin")
        self.fingerprint.setPlaceholderText("sha-256 AB:CD:…")
        self.username = QLineEdit(self)
        self.username.setObjectName("username")
        self.username.setAccessibleName("User name")
        self.password = QLineEdit(self)
        self.password.setObjectName("password")
        self.password.setAccessibleName("Password")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.status = plain(parent=self)
        self.status.setObjectName("loginStatus")
        self.status.setWordWrap(True)
        self.login_button = QPushButton("Log in", self)
        self.login_button.setObjectName("login")
        self.login_button.setDefault(True)
        self.login_button.clicked.connect(self.submit)
        self.password.returnPressed.connect(self.submit)
        # First contact (no pin yet): shown with the certificate the server presents,
        # for the technician to compare and confirm (tech_console.first_contact).
        self.trust_button = QPushButton("Trust this certificate and log in", self)
        self.trust_button.setObjectName("trust")
        self.trust_button.setVisible(False)
        self.trust_button.clicked.connect(self.trust)
        self.contact: FirstContact | None = None
        self.fingerprint.textEdited.connect(self._forget_contact)
        self.server.currentTextChanged.connect(self._forget_contact)
        self.find_button = QPushButton("Find servers on the network", self)
        self.find_button.setObjectName("discover")
        self.find_button.clicked.connect(self.find_servers)
        self.found = QListWidget(self)
        self.found.setObjectName("foundServers")
        self.found.setAccessibleName("Servers found on the network")
        self.found.setVisible(False)
        self.found.itemActivated.connect(self._use_found)
        self.found.itemClicked.connect(self._use_found)
        form = QFormLayout()
        form.addRow("Server", self.server)
        form.addRow("", self.find_button)
        form.addRow("", self.found)
        form.addRow("Certificate pin", self.fingerprint)
        form.addRow("User name", self.username)
        form.addRow("Password", self.password)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.trust_button)
        layout.addWidget(self.login_button)
        self.server.currentTextChanged.connect(self._fill_known)
        self._fill_known(self.server.currentText())
        self._task: asyncio.Task[None] | None = None
        self._finding: asyncio.Task[None] | None = None

    def _fill_known(self, address: str) -> None:
        known = next((s for s in self.settings.servers if s.address == address), None)
        if known is not None:
            self.fingerprint.setText(known.fingerprint)
            self.username.setText(known.username)

    def find_servers(self) -> None:
        if self._finding is not None and not self._finding.done():
            return
        self.find_button.setEnabled(False)
        self.status.setText("Looking for servers on the network…")
        self._finding = asyncio.ensure_future(self._find())

    async def _find(self) -> None:
        # Cancelled (the dialog is done: see ``done``), it touches no widget: they
        # may be deleted by then.
        try:
            servers = await self.discoverer()
        except OSError as exc:  # no multicast on this network, for one
            self.find_button.setEnabled(True)
            self.status.setText(f"Could not look for servers: {exc}")
            return
        self.find_button.setEnabled(True)
        self.found.clear()
        for server in servers:
            item = QListWidgetItem(server.label)  # a list item shows text as it is
            item.setData(ITEM_SERVER_ROLE, server)
            self.found.addItem(item)
        self.found.setVisible(bool(servers))
        self.status.setText(
            f"Found {len(servers)} server(s): choose one." if servers else "No server answered."
        )

    def done(self, result: int) -> None:
        """Accepted, rejected or closed: a search still running is no one's."""
        if self._finding is not None:
            self._finding.cancel()
        super().done(result)

    def _use_found(self, item: QListWidgetItem) -> None:
        server: FoundServer = item.data(ITEM_SERVER_ROLE)
        self.server.setEditText(server.url)
        if not any(known.address == server.url for known in self.settings.servers):
            # What a server advertises about itself proves nothing: the pin comes from
            # the administrator (or a remembered login), never from the advertisement.
            self.fingerprint.clear()
            self.status.setText(
                f"{server.name} is new here: enter its certificate pin from your "
                "administrator, or log in with the pin empty to see the certificate the "
                "server presents and compare it (the network's claim is not trusted)."
            )

    def prefill(self, address: str, fingerprint: str, username: str) -> None:
        if address:
            self.server.setEditText(address)
        if fingerprint:
            self.fingerprint.setText(fingerprint)
        if username:
            self.username.setText(username)

    def _forget_contact(self, _text: str = "") -> None:
        self.contact = None
        self.trust_button.setVisible(False)

    def trust(self) -> None:
        """The technician confirmed the shown certificate: it becomes the pin."""
        contact = self.contact
        if contact is None:
            return
        self.fingerprint.setText(contact.fingerprint)
        self._forget_contact()
        self.submit()

    async def _first_contact(self, address: str) -> None:
        saved = next((s.fingerprint for s in self.settings.servers if s.address == address), None)
        try:
            contact = await first_contact(address, saved)
        except RequestError as exc:
            self.status.setText(f"Could not read the server's certificate: {exc}")
            return
        finally:
            self.login_button.setEnabled(True)
        self.contact = contact
        self.status.setText(contact.question())
        self.trust_button.setVisible(True)

    def submit(self) -> None:
        address = self.server.currentText().strip().rstrip("/")
        fingerprint = self.fingerprint.text().strip()
        if not fingerprint and address.startswith("https://"):
            if self._task is not None and not self._task.done():
                return
            self.status.setText(f"Reading the certificate of {address}…")
            self.login_button.setEnabled(False)
            self._task = asyncio.ensure_future(self._first_contact(address))
            return
        problem = login_problem(address, fingerprint, self.username.text(), self.password.text())
        if problem:
            self.status.setText(problem)
            return
        if self._task is not None and not self._task.done():
            return
        self.status.setText(f"Logging in to {address}…")
        self.login_button.setEnabled(False)
        self._task = asyncio.ensure_future(self._login(address, fingerprint))

    async def _login(self, address: str, fingerprint: str) -> None:
        client = self.make_client(address, fingerprint)
        username = self.username.text().strip()
        try:
            await asyncio.wait_for(client.login(username, self.password.text()), 20)
        except RequestError as exc:
            await client.close()
            self.status.setText(refusal_text(exc, address))
            self.login_button.setEnabled(True)
            return
        except (OSError, TimeoutError) as exc:
            await client.close()
            self.status.setText(f"Not logged in: {exc or type(exc).__name__}")
            self.login_button.setEnabled(True)
            return
        self.password.clear()
        self.settings = self.settings.remember(KnownServer(address, fingerprint, username))
        self.status.setText("")
        self.logged_in.emit(client)
        self.accept()
