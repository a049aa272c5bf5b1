"""The Qt tests here run on the qasync loop, as tests/ui's do (see its conftest)."""

from tests.ui.conftest import _no_task_left_behind, pytest_asyncio_loop_factories

__all__ = ["_no_task_left_behind", "pytest_asyncio_loop_factories"]
