"""The resident agent's handle on one per-session process.

Starts ``device_agent.call_process`` with one end of a socket pair (no path on disk,
so no other process can speak for the session), reads its frames in order and hands
them to the agent, and ends it: politely first (``session.end``, then the process
reports that its devices are released and exits), by force if it does not.

This module imports neither aiortc nor PyAV: the resident agent stays small and only
the session process pays for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from device_agent.ipc import TO_AGENT, TO_SESSION, End, Ended, Link, Report
from protocol.codec import Message
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

#: Called with the host a frame came from, so the agent can tell which process spoke.
OnFrame = Callable[["SessionHost", Message], Awaitable[None]]

#: How long a session process may take to close its call and exit when told to.
END_TIMEOUT_S = 5.0


class SessionHost:
    def __init__(self, on_frame: OnFrame, *, extra_args: Sequence[str] = ()) -> None:
        self._on_frame = on_frame
        self._extra_args = list(extra_args)
        self.process: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        #: Set when the process said its devices are released (``session.ended``).
        self.ended: Ended | None = None
        #: The process's latest report (metadata: states, counts, device names).
        self.last_report: dict[str, Any] = {}
        #: Set once the process has exited (its return code in ``returncode``).
        self.exited = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    async def start(self) -> None:
        parent, child = socket.socketpair()
        try:
            await self._launch(child)
        finally:
            child.close()  # the child has its own copy now
        self.link = await Link.open(parent, inbound=TO_AGENT, outbound=TO_SESSION)
        self._reader = asyncio.ensure_future(self._read())
        log.info("session process %s started", self.pid)

    async def _launch(self, child: socket.socket) -> None:
        """Start the session on ``child``, the session's end of the socket pair."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "device_agent.call_process",
            "--ipc-fd",
            str(child.fileno()),
            *self._extra_args,
            pass_fds=(child.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            # stderr is inherited: the session's log lines land in the agent's log.
        )

    @property
    def started(self) -> bool:
        return self.process is not None

    async def _wait_exit(self) -> None:
        assert self.process is not None
        await self.process.wait()

    def _kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def _read(self) -> None:
        assert self.link is not None
        try:
            while True:
                try:
                    message = await self.link.receive()
                except ProtocolError as exc:
                    log.error("bad frame from the session process: %s", exc.code.value)
                    continue
                except ConnectionError:
                    # The process exited with frames of ours unread: its end of the
                    # link was reset, not closed. The same end of the link as EOF.
                    break
                if message is None:
                    break
                try:
                    if isinstance(message, Ended):
                        self.ended = message
                    elif isinstance(message, Report):
                        self.last_report = message.data()
                    await self._on_frame(self, message)
                except Exception:
                    log.exception("handling %s from the session process failed", message.TYPE)
        finally:
            await self._wait_exit()
            log.info("session process %s exited with %s", self.pid, self.returncode)
            self.exited.set()

    async def send(self, message: Message) -> bool:
        """Send a frame; False if the process is gone."""
        if self.link is None or self.exited.is_set():
            return False
        try:
            await self.link.send(message)
        except (ConnectionError, OSError):
            return False
        return True

    async def end(self, reason: str = "", timeout_s: float = END_TIMEOUT_S) -> None:
        """End the session process; returns once it has exited."""
        if not self.started:
            return
        await self.send(End(reason=reason))
        try:
            await asyncio.wait_for(self.exited.wait(), timeout_s)
        except TimeoutError:
            log.error("session process %s did not exit; killing it", self.pid)
            self._kill()
            await asyncio.wait_for(self.exited.wait(), timeout_s)
        if self.link is not None:
            await self.link.close()
        if self._reader is not None:
            await self._reader


def process_alive(pid: int) -> bool:
    """Whether a process with this pid still exists (for checks after a session)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
