"""Qt tests with asyncio: every async test and fixture here runs on a qasync loop,
the one loop the agent's UI and its asyncio code share in the product."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import qasync
from PySide6.QtWidgets import QApplication


def _qt_loop() -> asyncio.AbstractEventLoop:
    app = QApplication.instance() or QApplication([])
    # As in the agent: closing a window must not quit the application (and stop
    # the loop under a test's feet).
    if isinstance(app, QApplication):
        app.setQuitOnLastWindowClosed(False)
    loop: asyncio.AbstractEventLoop = qasync.QEventLoop(app)
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"qt": _qt_loop}
