"""Recovery (issue 6): the signaling server killed with SIGKILL and started again on
the same port and data folder, mid-call and between calls.

The server is a real ``livesupport server`` process (bench.faults._restartable); the
device is a real agent whose call runs in a real session process; the technician is
a real ConsoleClient with its PeerCall. Media and chat go peer to peer, so the call
must not notice the server's absence; afterwards both ends attach to the same session
and hang-up and close still work through the new server process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.faults._restartable import PASSWORD, Fleet, ServerProcess, enrolment_code, make_fleet
from device_agent.agent import DeviceAgent, enrol
from device_agent.session_host import process_alive
from device_agent.state import AgentState, ServiceConfig
from peer.call_media import MediaOptions
from peer.chat import DeliveryState
from protocol.enums import (
    CloseReason,
    LiveSupportStatus,
    Mode,
    NotificationState,
    SessionState,
)
from protocol.messages import NotifyAnswer, NotifyDeliver, SessionInvite
from signaling_server.store import Store
from tech_console.client import ConsoleClient, ConsoleSession
from tests.conftest import Lab
from tests.integration.harness import FAST, until

SMALL = ["--fake-media", "--video-size", "320x240"]

pytestmark = pytest.mark.timeout(180)


@dataclass
class Rig:
    server: ServerProcess
    fleet: Fleet
    state: AgentState
    agent: DeviceAgent
    console: ConsoleClient
    notes: asyncio.Queue[NotifyDeliver]
    decision: list[Mode]

    @property
    def device_id(self) -> str:
        return self.agent.device.device_id

    def new_agent(self) -> DeviceAgent:
        """An agent on the same state folder: what starts after an agent restart."""
        return make_agent(self.state, self.notes, self.decision)

    async def restart_server(self) -> None:
        await self.server.kill()
        await self.server.start()

    async def store(self) -> Store:
        return await Store.open(self.server.config.database_url)


def make_agent(
    state: AgentState, notes: asyncio.Queue[NotifyDeliver], decision: list[Mode]
) -> DeviceAgent:
    async def on_invite(invite: SessionInvite) -> Mode:
        return decision[0]

    async def on_note(note: NotifyDeliver) -> None:
        await notes.put(note)

    return DeviceAgent(
        state,
        invite_handler=on_invite,
        notification_handler=on_note,
        session_args=SMALL,
        backoff=FAST,
    )


@asynccontextmanager
async def rig(tmp_path: Path, *, grace_s: float = 30.0) -> AsyncIterator[Rig]:
    server = ServerProcess(tmp_path / "server", grace_s=grace_s, log=tmp_path / "server.log")
    fleet = await make_fleet(server)
    await server.start()
    state = AgentState(tmp_path / "agent")
    await enrol(state, await enrolment_code(server, fleet.group), name="Tablet 9")
    notes: asyncio.Queue[NotifyDeliver] = asyncio.Queue()
    decision = [Mode.VIDEO]
    console = ConsoleClient(
        server.url,
        server.fingerprint,
        backoff=FAST,
        media_options=MediaOptions(width=320, height=240),
    )
    made = Rig(server, fleet, state, make_agent(state, notes, decision), console, notes, decision)
    try:
        await made.agent.start()
        await made.agent.client.wait_online()
        await console.login("tech", PASSWORD)
        await until(
            lambda: made.device_id in console.devices and console.devices[made.device_id].online,
            20,
        )
        yield made
    finally:
        await console.close()
        await made.agent.stop()
        await server.stop()


@asynccontextmanager
async def unreachable(agent: DeviceAgent) -> AsyncIterator[None]:
    """The device's network is gone: its link leads nowhere (port 9 on loopback
    refuses) until the block ends."""
    link = agent.client
    link.server, reachable = "https://127.0.0.1:9", link.server
    try:
        yield
    finally:
        link.server = reachable


async def start_call(made: Rig, mode: Mode = Mode.VIDEO) -> ConsoleSession:
    made.decision[0] = mode
    session = await made.console.start_session(made.device_id, mode, "ticket REC-1")
    await made.console.wait_session(session, [SessionState.IN_CALL], timeout_s=40)
    await until(lambda: session.consent_verified, 20)
    return session


def frames_in(session: ConsoleSession) -> int:
    media = session.media
    video_in = media.video_in if media is not None else None
    return video_in.frames if video_in is not None else 0


async def test_a_call_survives_a_server_kill_and_both_ends_attach_again(tmp_path: Path) -> None:
    async with rig(tmp_path) as made:
        session = await start_call(made)
        call = session.call
        assert call is not None
        await until(lambda: frames_in(session) > 0, 20)
        host = made.agent.session.host if made.agent.session else None
        assert host is not None
        assert host.pid is not None

        await made.server.kill()
        await until(lambda: not made.agent.online and not made.console.link.online.is_set(), 20)
        # The server is gone; the call is not: frames keep coming and a chat line
        # reaches the device and is acknowledged, all peer to peer.
        before = frames_in(session)
        await until(lambda: frames_in(session) > before + 10, 20)
        line = await call.send_chat("sent while the server is down")
        await until(
            lambda: (
                (entry := call.chat.outgoing(line)) is not None
                and entry.state >= DeliveryState.DELIVERED
            ),
            20,
        )
        assert not made.server.alive

        await made.server.start()
        await until(lambda: made.agent.online and made.console.link.online.is_set(), 30)
        # Both ends took up the same session; the call is the same call.
        await until(lambda: session.state is SessionState.IN_CALL and made.agent.online)
        assert session.call is call
        assert made.agent.session is not None
        assert made.agent.session.session_id == session.session_id
        assert made.agent.session.host is host
        assert process_alive(host.pid)
        await until(
            lambda: (
                (device := made.console.devices.get(made.device_id)) is not None
                and device.status is LiveSupportStatus.CONNECTED
            ),
            20,
        )

        # Hang-up and close still work end to end through the new server process.
        await made.console.hang_up(session.session_id)
        await made.console.wait_session(session, [SessionState.CALL_ENDED], timeout_s=20)
        agent_session = made.agent.session
        await until(lambda: agent_session.state is SessionState.CALL_ENDED, 20)
        await made.console.close_session(session.session_id)
        await made.console.wait_session(session, [SessionState.CLOSED], timeout_s=20)
        await until(lambda: made.agent.session is None, 20)
        await asyncio.wait_for(host.exited.wait(), 20)
        assert host.ended is not None
        assert host.ended.media_released
        assert not process_alive(host.pid)

        store = await made.store()
        try:
            row = await store.session(session.session_id)
            assert row is not None
            assert (row.state, row.end_reason) == ("closed", CloseReason.CLOSED_BY_TECHNICIAN.value)
            assert row.consent_receipt  # signed before the restart, kept across it
            assert await store.live_sessions() == []
        finally:
            await store.close()


async def test_an_invite_being_answered_survives_a_server_restart(tmp_path: Path) -> None:
    """The prompt is showing when the server dies: the restarted server sends the
    invite again, and the agent, already answering it, does not refuse it as busy.
    The user's answer then goes to the new server and the call comes up."""
    async with rig(tmp_path) as made:
        shown: asyncio.Queue[SessionInvite] = asyncio.Queue()
        answer = asyncio.Event()

        async def prompt(invite: SessionInvite) -> Mode:
            await shown.put(invite)
            await answer.wait()  # the user reads the prompt
            return Mode.TEXT

        made.agent.invite_handler = prompt
        session = await made.console.start_session(made.device_id, Mode.TEXT, "ticket REC-2")
        invite = await asyncio.wait_for(shown.get(), 20)

        await made.restart_server()
        await until(lambda: made.agent.online and made.console.link.online.is_set(), 30)
        await made.console.wait_session(session, [SessionState.INVITED], timeout_s=20)
        answer.set()
        await made.console.wait_session(session, [SessionState.IN_CALL], timeout_s=40)
        assert made.agent.session is not None
        assert made.agent.session.session_id == invite.session_id
        assert shown.empty()  # one prompt, not a second one for the same invite


async def test_a_session_whose_device_does_not_come_back_is_closed_after_grace(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, grace_s=3.0) as made:
        session = await start_call(made, Mode.TEXT)
        host = made.agent.session.host if made.agent.session else None
        assert host is not None

        await made.server.kill()
        # The device goes away for good while the server is down (its agent stops:
        # the session process ends with it).
        await made.agent.stop()
        await asyncio.wait_for(host.exited.wait(), 20)
        await made.server.start()

        # The console comes back and attaches; the device does not, so after the
        # grace period the restarted server closes the session as lost.
        await until(lambda: made.console.link.online.is_set(), 30)
        await made.console.wait_session(session, [SessionState.CLOSED], timeout_s=30)
        assert session.last_update is not None
        assert session.last_update.close_reason is CloseReason.DEVICE_LOST
        assert session.call is None


async def test_an_end_whose_session_ended_while_it_was_away_ends_it_too(tmp_path: Path) -> None:
    """The device is offline longer than the grace period: the server closes the
    session, and the device, when it comes back, learns it by attaching (not_found)
    and releases its camera and microphone."""
    async with rig(tmp_path, grace_s=2.0) as made:
        session = await start_call(made, Mode.VIDEO)
        host = made.agent.session.host if made.agent.session else None
        assert host is not None
        assert host.pid is not None

        # The device's network goes, and the server dies meanwhile.
        async with unreachable(made.agent):
            await made.server.kill()
            await until(lambda: not made.agent.online, 20)
            await made.server.start()
            await made.console.wait_session(session, [SessionState.CLOSED], timeout_s=30)
            assert session.last_update is not None
            assert session.last_update.close_reason is CloseReason.DEVICE_LOST
            assert made.agent.session is not None  # the device does not know yet
        await until(lambda: made.agent.online, 30)
        await until(lambda: made.agent.session is None, 20)
        await asyncio.wait_for(host.exited.wait(), 20)
        assert host.ended is not None
        assert host.ended.media_released
        assert not process_alive(host.pid)


# --- store and forward across restarts ---------------------------------------------------


async def test_a_notification_sent_while_the_device_is_offline_survives_a_server_restart(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as made:
        await made.agent.stop()
        progress = await made.console.notify(
            title="Update", body="Restart tonight", device_ids=[made.device_id]
        )
        await made.restart_server()
        await until(lambda: made.console.link.online.is_set(), 30)

        made.agent = made.new_agent()
        await made.agent.start()
        note = await asyncio.wait_for(made.notes.get(), 30)
        assert (note.notification_id, note.body) == (progress.notification_id, "Restart tonight")
        await until(lambda: progress.states[made.device_id] is NotificationState.DELIVERED, 20)


async def test_a_delivered_but_unread_notification_comes_back_after_an_agent_restart(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as made:
        progress = await made.console.notify(
            title="Update", body="Restart tonight", device_ids=[made.device_id]
        )
        first = await asyncio.wait_for(made.notes.get(), 20)
        await until(lambda: progress.states[made.device_id] is NotificationState.DELIVERED, 20)

        # The agent restarts (and the server too) before the user read the pop-up.
        await made.agent.stop()
        await made.restart_server()
        made.agent = made.new_agent()
        await made.agent.start()
        again = await asyncio.wait_for(made.notes.get(), 30)
        assert again.notification_id == first.notification_id

        await made.agent.mark_notification_read(again.notification_id)
        store = await made.store()
        try:
            assert await store.pending_notifications(made.device_id) == []
        finally:
            await store.close()


async def test_answers_given_while_the_server_is_down_are_sent_once_on_reconnect(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as made:
        progress = await made.console.notify(
            title="Printer", body="Is it fixed?", device_ids=[made.device_id]
        )
        note = await asyncio.wait_for(made.notes.get(), 20)
        nid = note.notification_id
        await until(lambda: progress.states[made.device_id] is NotificationState.DELIVERED, 20)

        async with unreachable(made.agent):
            await made.server.kill()
            await until(lambda: not made.agent.online, 20)
            # The user reads, then answers, while the server is out of reach: kept.
            await made.agent.mark_notification_read(nid)
            await made.agent.answer_notification(nid, "Yes, it prints")
            assert list(made.agent.outbox) == [nid]
            await made.server.start()
            await until(lambda: made.console.link.online.is_set(), 30)
        await until(lambda: made.agent.online and not made.agent.outbox, 30)
        await until(lambda: progress.states[made.device_id] is NotificationState.ANSWERED, 20)
        assert progress.answers[made.device_id] == "Yes, it prints"

        # The reply to that answer lost with a dropping link: the agent sends it again,
        # and the server takes it as the same act (no second update, no refusal).
        made.agent.outbox[nid] = NotifyAnswer(notification_id=nid, text="Yes, it prints")
        await made.agent._flush_outbox()
        assert not made.agent.outbox
        # A later notification's update arrives after anything the repeat caused.
        later = await made.console.notify(title="Later", body="-", device_ids=[made.device_id])
        await until(lambda: later.states[made.device_id] is NotificationState.DELIVERED, 20)
        assert progress.history[made.device_id] == [
            NotificationState.DELIVERED,
            NotificationState.ANSWERED,
        ]


async def test_a_status_change_made_offline_is_reported_after_a_server_restart(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as made:
        await made.server.kill()
        await until(lambda: not made.agent.online, 20)
        await made.agent.set_service(ServiceConfig(installed=True, enabled=False))
        assert made.agent.status is LiveSupportStatus.DISABLED
        await made.server.start()
        await until(
            lambda: (
                made.console.devices.get(made.device_id) is not None
                and made.console.devices[made.device_id].online
                and made.console.devices[made.device_id].status is LiveSupportStatus.DISABLED
            ),
            30,
        )
        store = await made.store()
        try:
            device = await store.device(made.device_id)
            assert device is not None
            assert not device.service_enabled
        finally:
            await store.close()


# --- a console that crashes --------------------------------------------------------------


async def test_a_crashed_console_ends_the_session_and_the_device_releases_its_media(
    lab: Lab, tmp_path: Path
) -> None:
    """A console process killed mid-call (no goodbye: SIGKILL): after the grace period
    the server closes the session, and the device's session process exits with its
    camera and microphone released."""
    state = AgentState(tmp_path / "agent")
    await enrol(state, await lab.enrolment_code(), name="Tablet 3")
    agent = make_agent(state, asyncio.Queue(), [Mode.VIDEO])
    await agent.start()
    ready = tmp_path / "console.json"
    console = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.console_child",
        "--server",
        lab.url,
        "--fingerprint",
        lab.fingerprint,
        "--user",
        "tech",
        "--device",
        agent.device.device_id,
        "--ready",
        str(ready),
        stdin=asyncio.subprocess.PIPE,
    )
    try:
        assert console.stdin is not None
        console.stdin.write(f"{PASSWORD}\n".encode())
        await console.stdin.drain()
        await until(ready.exists, 90)
        session_id = json.loads(ready.read_text())["session_id"]
        assert agent.session is not None
        assert agent.session.session_id == session_id
        host = agent.session.host
        assert host.pid is not None
        report = await agent.query_session()
        assert report["call_state"] == "connected"

        console.send_signal(signal.SIGKILL)
        await console.wait()

        await until(lambda: agent.session is None, 30)
        await asyncio.wait_for(host.exited.wait(), 20)
        assert host.ended is not None
        assert host.ended.media_released
        assert not process_alive(host.pid)
        row = await lab.store.session(session_id)
        assert row is not None
        assert (row.state, row.end_reason) == ("closed", CloseReason.TECHNICIAN_LOST.value)
    finally:
        if console.returncode is None:
            console.kill()
            await console.wait()
        await agent.stop()
