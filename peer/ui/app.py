"""Running asyncio code under Qt: one loop on the GUI thread, through qasync.

Both ends use it: the device agent (tray, prompt, call window) and the console."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import qasync
from PySide6.QtWidgets import QApplication

T = TypeVar("T")


def application(app_name: str) -> QApplication:
    """The process's QApplication (made once)."""
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        return existing
    app = QApplication(sys.argv[:1])
    app.setApplicationName(app_name)
    app.setApplicationDisplayName(app_name)
    app.setOrganizationName("Live Support")
    # The agent lives in the tray and the console ends when its main coroutine does:
    # closing a last window must not stop the loop under either.
    app.setQuitOnLastWindowClosed(False)
    return app


def executor() -> concurrent.futures.ThreadPoolExecutor:
    """The loop's executor for ``run_in_executor`` and ``to_thread`` (aiortc's encoders,
    our frame conversions). qasync's own QThreadExecutor was seen to leave a task
    cancelled mid-encode waiting for ever when the loop shut down; Python's pool
    hands results back through ``call_soon_threadsafe`` like any asyncio loop."""
    return concurrent.futures.ThreadPoolExecutor(thread_name_prefix="livesupport")


def run_with_qt(main: Coroutine[Any, Any, T], *, app_name: str) -> T:
    """Run ``main`` to completion on a qasync loop, with Qt's events flowing."""
    app = application(app_name)
    loop = qasync.QEventLoop(app)
    loop.set_default_executor(executor())
    asyncio.set_event_loop(loop)
    try:
        result: T = loop.run_until_complete(main)
        return result
    finally:
        loop.close()
        asyncio.set_event_loop(None)
