"""The console as a program: the login window, then the main window until it closes.

Also the demo's variant: the scripted session plays while the main window follows
it (offscreen), and pictures of the inventory, the session and the notifications
are saved as they show.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QWidget

from peer.signaling import Backoff
from tech_console.client import ConsoleClient
from tech_console.console_model import (
    ConsoleSettings,
    load_settings,
    save_settings,
    settings_path,
)
from tech_console.scripted import CONSOLE_SCREENSHOTS, run_demo_session
from tech_console.ui.login import LoginDialog
from tech_console.ui.main_window import ConsoleWindow

log = logging.getLogger(__name__)


async def run_console(
    *,
    server: str = "",
    fingerprint: str = "",
    username: str = "",
    settings_file: Path | None = None,
) -> None:
    """Log in (the form prefilled from the arguments and the remembered servers),
    then run the main window until the technician closes it; log out at the end."""
    path = settings_file or settings_path()
    settings = load_settings(path)
    login = LoginDialog(settings, lambda address, pin: ConsoleClient(address, pin))
    login.prefill(server, fingerprint, username)
    logged_in: asyncio.Future[ConsoleClient] = asyncio.get_running_loop().create_future()

    def on_login(client: ConsoleClient) -> None:
        if not logged_in.done():
            logged_in.set_result(client)

    login.logged_in.connect(on_login)
    login.rejected.connect(logged_in.cancel)
    login.show()
    try:
        client = await logged_in
    except asyncio.CancelledError:
        return
    save_settings(path, login.settings)
    window = ConsoleWindow(client, login.settings)
    closed = asyncio.Event()
    window.closed.connect(closed.set)
    window.show()
    # What exists now (Qt, aiortc and av bindings, the window) lives as long as the
    # console. Out of the collector's sight, a full collection no longer walks its ~80,000
    # objects: measured 64-136 ms per full collection before, under 1 ms after, on this
    # project's 2-core machine; such a pause would freeze the window's scrolling.
    gc.freeze()
    try:
        await closed.wait()
    finally:
        await client.logout()


def _grab(widget: QWidget, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = widget.grab().save(str(path), "PNG")
    if not saved:
        log.warning("could not save %s", path)
    return saved


async def _until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def take_pictures(window: ConsoleWindow, folder: Path, timeout_s: float = 60.0) -> list[str]:
    """Save the console's pictures as the scripted session reaches each stage."""
    saved: list[str] = []
    inventory = window.inventory
    if await _until(lambda: inventory.proxy.rowCount() > 0, timeout_s):
        inventory.table.selectRow(0)
        window.tabs.setCurrentWidget(inventory)
        await asyncio.sleep(0.2)  # one paint of the selection
        if _grab(window, folder / CONSOLE_SCREENSHOTS[0]):
            saved.append(CONSOLE_SCREENSHOTS[0])

    def session_ready() -> bool:
        for panel in window.panels.values():
            chat = panel.model.chat
            if panel.stage.remote_view.frames_shown > 10 and chat is not None and len(chat) >= 3:
                window.tabs.setCurrentWidget(panel)
                return True
        return False

    if await _until(session_ready, timeout_s):
        await _until(lambda: any(p.model.quality for p in window.panels.values()), 5)
        await asyncio.sleep(0.3)
        if _grab(window, folder / CONSOLE_SCREENSHOTS[1]):
            saved.append(CONSOLE_SCREENSHOTS[1])

    def answered() -> bool:
        return any(p.answers for p in window.client.notifications.values())

    if await _until(answered, timeout_s):
        window.tabs.setCurrentWidget(window.notifications)
        await asyncio.sleep(0.3)
        if _grab(window, folder / CONSOLE_SCREENSHOTS[2]):
            saved.append(CONSOLE_SCREENSHOTS[2])
    return saved


async def run_scripted_with_window(
    server: str,
    fingerprint: str,
    username: str,
    password: str,
    *,
    expected_replies: int,
    screenshots: Path,
) -> dict[str, Any]:
    """The demo's console: the scripted session, with the main window following it."""
    client = ConsoleClient(server, fingerprint, backoff=Backoff())
    await client.login(username, password)
    window = ConsoleWindow(client, ConsoleSettings())
    window.resize(1280, 800)
    window.show()
    pictures = asyncio.ensure_future(take_pictures(window, screenshots))
    try:
        report = await run_demo_session(client, expected_replies=expected_replies)
        report["console.screenshots"] = await asyncio.wait_for(pictures, 30)
        return report
    finally:
        pictures.cancel()
        window.close()
        await client.logout()
