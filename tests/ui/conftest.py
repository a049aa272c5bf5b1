"""Qt tests with asyncio: every async test and fixture here runs on a qasync loop,
the one loop the agent's UI and its asyncio code share in the product."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import qasync
from PySide6.QtWidgets import QApplication

from device_agent.ui.app import executor


def _qt_loop() -> asyncio.AbstractEventLoop:
    app = QApplication.instance() or QApplication([])
    # As in the agent: closing a window must not quit the application (and stop
    # the loop under a test's feet).
    if isinstance(app, QApplication):
        app.setQuitOnLastWindowClosed(False)
    loop: asyncio.AbstractEventLoop = qasync.QEventLoop(app)
    loop.set_default_executor(executor())
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"qt": _qt_loop}


@pytest.fixture(autouse=True)
async def _no_task_left_behind() -> AsyncIterator[None]:
    """After each test, cancel what is still running and wait for it, with a deadline:
    a task that ignores its cancellation would otherwise hang the loop's shutdown (the
    Qt loop does not run Python's signal handlers, so not even pytest-timeout fires)."""
    yield
    current = asyncio.current_task()
    # Rounds: a closing peer connection's timers may start a task or two after the
    # first round; the loop's own shutdown must find nothing left to cancel.
    for _round in range(5):
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not pending:
            await asyncio.sleep(0.2)
            if not [t for t in asyncio.all_tasks() if t is not current and not t.done()]:
                return
            continue
        for task in pending:
            task.cancel()
        _done, stuck = await asyncio.wait(pending, timeout=10)
        assert not stuck, [repr(t) for t in stuck]
