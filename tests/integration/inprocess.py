"""The device's session, run in the test's own process and loop (a test seam).

The agent normally starts each session in a process of its own. To drive the call
window with pytest-qt, the session must live where the test's widgets do: this host
runs the very same ``call_process.serve`` over a real socket pair and the real IPC
codec, only without the process boundary (and so without its isolation, which the
tests of real session processes cover).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence

from device_agent.call_process import CallSession, serve
from device_agent.ipc import TO_AGENT, TO_SESSION, Begin, Link
from device_agent.session_host import OnFrame, SessionHost
from peer.call_media import MediaOptions
from peer.media import MediaDevices

OnSession = Callable[[CallSession], None]


class InProcessSessionHost(SessionHost):
    def __init__(
        self,
        on_frame: OnFrame,
        *,
        extra_args: Sequence[str] = (),
        on_session: OnSession = lambda _s: None,
        options: MediaOptions | None = None,
    ) -> None:
        super().__init__(on_frame, extra_args=extra_args)
        self._on_session = on_session
        self._options = options or MediaOptions(width=320, height=240)
        self._task: asyncio.Task[int] | None = None
        self.session: CallSession | None = None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def returncode(self) -> int | None:
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception():
            return None
        return task.result()

    @property
    def started(self) -> bool:
        return self._task is not None

    async def _launch(self, child: socket.socket) -> None:
        sock = child.dup()  # the caller closes ``child`` once we return

        async def body() -> int:
            link = await Link.open(sock, inbound=TO_SESSION, outbound=TO_AGENT)

            def make_session(begin: Begin) -> CallSession:
                session = CallSession(link, begin, MediaDevices(None, fake=True), self._options)
                self.session = session
                self._on_session(session)
                return session

            try:
                return await serve(link, make_session)
            finally:
                await link.close()

        self._task = asyncio.ensure_future(body())

    async def _wait_exit(self) -> None:
        assert self._task is not None
        await asyncio.wait({self._task})

    def _kill(self) -> None:
        if self._task is not None:
            self._task.cancel()


def in_process_hosts(on_session: OnSession) -> Callable[..., SessionHost]:
    """A ``host_factory`` for ``DeviceAgent``: every session runs in this process."""

    def factory(on_frame: OnFrame, *, extra_args: Sequence[str] = ()) -> SessionHost:
        return InProcessSessionHost(on_frame, extra_args=extra_args, on_session=on_session)

    return factory
