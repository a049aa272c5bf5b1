"""``livesupport server`` as a program: the process it runs in.

The server keeps Python's objects on the C heap (``PYTHONMALLOC=malloc``), which it
gives back once a fleet has left (``limits.trim_heap``). Python's own allocator keeps
small objects in 1 MiB arenas and gives one back only once nothing in it is alive: a
few objects made during a fleet's time and alive after it kept dozens of arenas
(measured by ``make load``: the memory after 6,000 devices left was +58 % of the
start with Python's allocator, +9 % on the C heap; docs/scale.md, "Memory after
they left"). The C heap is given back by the page.

The allocator is chosen when the interpreter starts, before any of this code runs:
so the command starts itself again, at once, with the variable set (same process id,
arguments and descriptors). An operator's own ``PYTHONMALLOC`` (``pymalloc``
included) is kept as it is.

This module imports nothing of the server: the exec comes before those imports."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

ALLOCATOR_VARIABLE = "PYTHONMALLOC"
SERVER_ALLOCATOR = "malloc"


def run_on_the_c_heap() -> None:
    """Start this very command again on the C heap, unless the allocator was chosen
    already (or cannot be: ``python -E`` or ``-I``, or no ``exec`` that keeps the
    process, as on Windows). Returns only when it does not."""
    if ALLOCATOR_VARIABLE in os.environ or sys.flags.ignore_environment or os.name != "posix":
        return
    # Set in the new process's environment, so the exec happens once.
    environment = {**os.environ, ALLOCATOR_VARIABLE: SERVER_ALLOCATOR}
    # Anything buffered would be written twice (once here, once by the new image)
    # or lost: flushed first.
    sys.stdout.flush()
    sys.stderr.flush()
    # This interpreter and its own command line, as they were: nothing from outside.
    os.execve(sys.executable, sys.orig_argv, environment)  # noqa: S606


def server_command(argv: Sequence[str]) -> int:
    """``livesupport server``: on the C heap, then the server (``cli.server_main``)."""
    run_on_the_c_heap()
    # Imported after the exec: the server's imports (aiohttp, SQLAlchemy, ...) take
    # most of a start, and would be done twice.
    from signaling_server.cli import server_main

    return server_main(argv)
