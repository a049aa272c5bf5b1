"""A real device agent and a real console client against the lab's real server, in
one test process; the device's calls run in real session processes it starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.agent import DeviceAgent, HostFactory, enrol
from device_agent.session_host import SessionHost
from device_agent.state import AgentState
from peer.signaling import Backoff
from protocol.enums import LiveSupportStatus, Mode
from protocol.messages import NotifyDeliver, SessionInvite
from tech_console.client import ConsoleClient
from tests.conftest import PASSWORD, Lab

FAST = Backoff(base_s=0.05, cap_s=0.5)


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait, with a deadline, for a condition that network callbacks make true.

    The conditions span several objects (call, chat log, inventory), so this polls
    the state every 10 ms rather than wiring an event into each; it never sleeps a
    fixed time hoping something happened.
    """

    async def wait() -> None:
        while not predicate():  # noqa: ASYNC110 (see the docstring)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout_s)


@dataclass
class Pair:
    agent: DeviceAgent
    console: ConsoleClient
    answers: asyncio.Queue[SessionInvite]
    decision: list[Mode | None]
    notes: asyncio.Queue[NotifyDeliver]

    @property
    def device_id(self) -> str:
        return self.agent.device.device_id

    async def device_report(self) -> dict[str, Any]:
        """A fresh report from the device's session process (metadata only)."""
        return await self.agent.query_session()

    async def until_device(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """Ask the session process for reports until one satisfies ``predicate``."""

        async def wait() -> dict[str, Any]:
            while not predicate(report := await self.device_report()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return report

        return await asyncio.wait_for(wait(), timeout_s)


@asynccontextmanager
async def make_pair(
    lab: Lab,
    folder: Path,
    *,
    session_args: Sequence[str] = (),
    prewarm: bool = False,
    host_factory: HostFactory = SessionHost,
    hold: asyncio.Event | None = None,
) -> AsyncIterator[Pair]:
    """``hold``: the device user answers an invite only once it is set (the prompt
    stays open until then)."""
    state = AgentState(folder / "agent")
    await enrol(state, await lab.enrolment_code(), name="Tablet 7")
    answers: asyncio.Queue[SessionInvite] = asyncio.Queue()
    notes: asyncio.Queue[NotifyDeliver] = asyncio.Queue()
    decision: list[Mode | None] = [Mode.TEXT]

    async def on_invite(invite: SessionInvite) -> Mode | None:
        await answers.put(invite)
        if hold is not None:
            await hold.wait()
        return decision[0]

    async def on_note(note: NotifyDeliver) -> None:
        await notes.put(note)

    agent = DeviceAgent(
        state,
        invite_handler=on_invite,
        notification_handler=on_note,
        session_args=session_args,
        prewarm=prewarm,
        backoff=FAST,
        host_factory=host_factory,
    )
    await agent.start()
    await agent.client.wait_online()
    console = ConsoleClient(lab.url, lab.fingerprint, backoff=FAST)
    await console.login("tech", PASSWORD)
    device_id = agent.device.device_id
    await until(
        lambda: (
            device_id in console.devices
            and console.devices[device_id].status is LiveSupportStatus.DISCONNECTED
            and console.devices[device_id].online
        )
    )
    try:
        yield Pair(agent, console, answers, decision, notes)
    finally:
        await console.close()
        await agent.stop()
