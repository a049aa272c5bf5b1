"""Qt tests with asyncio: every async test and fixture here runs on a qasync loop,
the one loop the agent's UI and its asyncio code share in the product."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import pytestqt.plugin
import qasync
from PySide6.QtWidgets import QApplication

from peer.ui.app import executor

# The loop of the test being run: the last one made (one per test).
_current_loop: list[asyncio.AbstractEventLoop] = []


def _qt_loop() -> asyncio.AbstractEventLoop:
    app = QApplication.instance() or QApplication([])
    # As in the agent: closing a window must not quit the application (and stop
    # the loop under a test's feet).
    if isinstance(app, QApplication):
        app.setQuitOnLastWindowClosed(False)
    loop: asyncio.AbstractEventLoop = qasync.QEventLoop(app)
    loop.set_default_executor(executor())
    _current_loop[:] = [loop]
    return loop


def _process_events_as_the_loop() -> None:
    """pytest-qt processes Qt events between a test's phases (after the call, before
    and after teardown), outside any run_until_complete. qasync's callbacks are Qt
    timers, so they fire there too, with no running loop set: a task stepped then
    fails in asyncio.get_running_loop() (every sleep, every aiohttp timeout), and a
    task woken there can be left waiting for ever (the CI hang of issue 4). Qt
    processing events IS this loop running, so say so while it does."""
    app = QApplication.instance()
    if app is None:
        return
    loop = _current_loop[0] if _current_loop else None
    if loop is None or loop.is_closed() or loop.is_running():
        app.processEvents()
        return
    asyncio.events._set_running_loop(loop)
    try:
        app.processEvents()
    finally:
        asyncio.events._set_running_loop(None)


# pytest-qt looks the function up by name at each call.
pytestqt.plugin._process_events = _process_events_as_the_loop


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
