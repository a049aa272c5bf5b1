"""Several nodes (issue 7, docs/scale.md "Several nodes"): two real server processes
sharing one PostgreSQL and one Redis, a device agent connected to node A through an
ordinary load balancer, a console connected to node B. A full video session (real
aiortc, the device's real session process), chat, hang-up, close and a notification
round cross the nodes; then node A is killed (SIGKILL) and the device comes back
through node B and takes up its session there, which then ends as any other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.cluster import NodeProcess
from device_agent.agent import DeviceAgent, enrol
from device_agent.session_host import process_alive
from device_agent.state import AgentState
from peer.call_media import MediaOptions
from peer.chat import DeliveryState
from peer.signaling import RequestError
from protocol.enrolment import EnrolmentCode
from protocol.enums import (
    CloseReason,
    LiveSupportStatus,
    Mode,
    NotificationState,
    Role,
    SessionState,
)
from protocol.errors import ErrorCode
from protocol.messages import NotifyDeliver, SessionInvite
from signaling_server import tls
from signaling_server.store import Store
from tech_console.client import ConsoleClient, ConsoleSession
from tests.integration.harness import FAST, until
from tests.scale.nodes import LoadBalancer

PASSWORD = "correct horse battery"
SMALL = ["--fake-media", "--video-size", "320x240"]

pytestmark = pytest.mark.timeout(300)


@dataclass
class Cluster:
    a: NodeProcess
    b: NodeProcess
    balancer: LoadBalancer
    console_balancer: LoadBalancer
    agent: DeviceAgent
    console: ConsoleClient
    notes: asyncio.Queue[NotifyDeliver]
    db_url: str

    @property
    def device_id(self) -> str:
        return self.agent.device.device_id


async def _fresh_database(postgres_url: str, name: str) -> str:
    """A database of this test's own in the session's cluster."""
    import asyncpg  # type: ignore[import-untyped]

    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


async def _flush_redis(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
async def cluster(tmp_path: Path, redis_url: str, postgres_url: str) -> AsyncIterator[Cluster]:
    db_url = await _fresh_database(postgres_url, "multinode")
    await _flush_redis(redis_url)
    # One certificate and key for every node, as behind a real load balancer.
    identity, _ = tls.load_or_create(tmp_path / "tls")
    store = await Store.open(db_url)
    try:
        group = await store.create_group("Tablets")
        await store.create_technician(
            "tech",
            PASSWORD,
            display_name="Node Tech",
            role=Role.TECHNICIAN,
            organisation="Test IT",
            groups=[group.id],
        )
        token = await store.issue_enrolment_token(group.id, created_by="test", ttl_s=600)
    finally:
        await store.close()

    def node(name: str) -> NodeProcess:
        return NodeProcess(
            name,
            tmp_path / name,
            db_url=db_url,
            redis_url=redis_url,
            cert=identity.cert_path,
            key=identity.key_path,
        )

    a, b = node("a"), node("b")
    balancer: LoadBalancer | None = None
    console_balancer: LoadBalancer | None = None
    agent: DeviceAgent | None = None
    console: ConsoleClient | None = None
    try:
        await a.start()
        await b.start()
        assert a.fingerprint == b.fingerprint == identity.fingerprint
        # The device knows one address, the balancer's: node A while it lives.
        balancer = LoadBalancer([a.port, b.port])
        await balancer.start()
        state = AgentState(tmp_path / "agent")
        code = EnrolmentCode(server=balancer.url, token=token, fingerprint=identity.fingerprint)
        await enrol(state, code.encode(), name="Tablet 7")
        notes: asyncio.Queue[NotifyDeliver] = asyncio.Queue()

        async def on_invite(invite: SessionInvite) -> Mode:
            return invite.mode

        async def on_note(note: NotifyDeliver) -> None:
            await notes.put(note)

        agent = DeviceAgent(
            state,
            invite_handler=on_invite,
            notification_handler=on_note,
            session_args=SMALL,
            backoff=FAST,
        )
        await agent.start()
        await agent.client.wait_online()
        # The console's balancer prefers node B (as if it were nearer).
        console_balancer = LoadBalancer([b.port, a.port])
        await console_balancer.start()
        console = ConsoleClient(
            console_balancer.url,
            identity.fingerprint,
            backoff=FAST,
            media_options=MediaOptions(width=320, height=240),
        )
        await console.login("tech", PASSWORD)
        yield Cluster(a, b, balancer, console_balancer, agent, console, notes, db_url)
    finally:
        # Each part stops even if another failed to: no node outlives the test.
        try:
            if console is not None:
                await console.close()
            if agent is not None:
                await agent.stop()
        finally:
            for each in (balancer, console_balancer):
                if each is not None:
                    await each.stop()
            await a.stop()
            await b.stop()


def frames_in(session: ConsoleSession) -> int:
    media = session.media
    video_in = media.video_in if media is not None else None
    return video_in.frames if video_in is not None else 0


def seen_online(made: Cluster) -> bool:
    device = made.console.devices.get(made.device_id)
    return device is not None and device.online


async def test_two_nodes_a_session_across_them_and_a_node_killed(cluster: Cluster) -> None:
    made = cluster
    # Presence crosses nodes: the console on B sees the device held by A.
    await until(lambda: seen_online(made), 30)

    # A full video session, started on B, answered on A.
    session = await made.console.start_session(made.device_id, Mode.VIDEO, "ticket MN-1")
    await made.console.wait_session(session, [SessionState.IN_CALL], timeout_s=60)
    await until(lambda: session.consent_verified, 30)
    await until(lambda: frames_in(session) > 10, 30)
    await until(
        lambda: (
            (device := made.console.devices.get(made.device_id)) is not None
            and device.status is LiveSupportStatus.CONNECTED
            and device.session_id == session.session_id
        ),
        30,
    )
    call = session.call
    assert call is not None
    line = await call.send_chat("hello from node B's console")
    await until(
        lambda: (
            (entry := call.chat.outgoing(line)) is not None
            and entry.state >= DeliveryState.DELIVERED
        ),
        30,
    )
    agent_session = made.agent.session
    assert agent_session is not None
    assert agent_session.session_id == session.session_id
    host = agent_session.host
    assert host is not None
    assert host.pid is not None

    await made.console.hang_up(session.session_id)
    await made.console.wait_session(session, [SessionState.CALL_ENDED], timeout_s=30)
    await until(lambda: agent_session.state is SessionState.CALL_ENDED, 30)
    await made.console.close_session(session.session_id)
    await made.console.wait_session(session, [SessionState.CLOSED], timeout_s=30)
    await until(lambda: made.agent.session is None, 30)
    await asyncio.wait_for(host.exited.wait(), 30)
    assert host.ended is not None
    assert host.ended.media_released
    assert not process_alive(host.pid)
    await until(
        lambda: (
            (device := made.console.devices.get(made.device_id)) is not None
            and device.status is not LiveSupportStatus.CONNECTED
            and device.session_id is None
        ),
        30,
    )

    # A notification round: sent on B, delivered on A, read and answered on A,
    # every step back to the console on B.
    progress = await made.console.notify(
        title="Printer", body="Is it fixed?", device_ids=[made.device_id]
    )
    note = await asyncio.wait_for(made.notes.get(), 30)
    assert (note.notification_id, note.body) == (progress.notification_id, "Is it fixed?")
    await until(lambda: progress.states[made.device_id] is NotificationState.DELIVERED, 30)
    await made.agent.mark_notification_read(note.notification_id)
    await until(lambda: progress.states[made.device_id] is NotificationState.READ, 30)
    await made.agent.answer_notification(note.notification_id, "Yes, it prints")
    await until(lambda: progress.states[made.device_id] is NotificationState.ANSWERED, 30)
    assert progress.answers[made.device_id] == "Yes, it prints"

    # Node A dies in the middle of a (chat) session: only its connection, the
    # device's, goes with it; the console on B stays, and so does the session B owns.
    again = await made.console.start_session(made.device_id, Mode.TEXT, "ticket MN-2")
    await made.console.wait_session(again, [SessionState.IN_CALL], timeout_s=60)
    agent_again = made.agent.session
    assert agent_again is not None
    assert agent_again.session_id == again.session_id
    await made.a.kill()
    assert made.console.link.online.is_set()
    # The device comes back through the balancer, which finds only B now, and takes
    # up the same session there (session.attach); nothing else is needed of it.
    await until(lambda: made.agent.online, 60)
    await until(lambda: seen_online(made), 60)
    assert made.b.alive
    assert not made.a.alive
    assert made.agent.session is agent_again
    assert again.state is SessionState.IN_CALL
    # And the session ends as any other, through B alone, on both ends.
    await made.console.close_session(again.session_id)
    await made.console.wait_session(again, [SessionState.CLOSED], timeout_s=30)
    await until(lambda: made.agent.session is None, 30)
    assert again.last_update is not None
    assert again.last_update.close_reason is CloseReason.CLOSED_BY_TECHNICIAN


async def test_the_node_owning_a_session_dies_and_another_takes_it_over(cluster: Cluster) -> None:
    """The session's owner (node B, where the console started it) is killed: the
    console reconnects through its balancer to node A, which already holds the device;
    node A takes the orphan over from the live_sessions table when B's liveness key
    expires, and both ends go on with the same session, which then ends normally."""
    made = cluster
    await until(lambda: seen_online(made), 30)
    session = await made.console.start_session(made.device_id, Mode.TEXT, "ticket MN-3")
    await made.console.wait_session(session, [SessionState.IN_CALL], timeout_s=60)
    agent_session = made.agent.session
    assert agent_session is not None

    await made.b.kill()
    # The device's node is untouched: the device stays connected through it all.
    await until(lambda: made.console.link.online.is_set(), 60)
    store = await Store.open(made.db_url)
    try:
        # The session is still open in the shared store (nobody ended it), and a
        # request on it (close) reaches its new owner, node A, and ends it on both ends.
        row = await store.session(session.session_id)
        assert row is not None
        assert row.state == SessionState.IN_CALL.value
    finally:
        await store.close()
    assert made.agent.online
    assert made.agent.session is agent_session

    async def close_when_taken_over() -> None:
        # Until node A noticed B's death (its key's TTL), the session has no live
        # owner and a request is refused as unavailable; the console retries.
        while True:
            try:
                await made.console.close_session(session.session_id)
                return
            except RequestError as refusal:
                if refusal.code != ErrorCode.UNAVAILABLE.value:
                    raise
            await asyncio.sleep(0.2)  # a retry's pace, as a person clicking again

    await asyncio.wait_for(close_when_taken_over(), 60)
    await made.console.wait_session(session, [SessionState.CLOSED], timeout_s=30)
    await until(lambda: made.agent.session is None, 30)
    assert session.last_update is not None
    assert session.last_update.close_reason is CloseReason.CLOSED_BY_TECHNICIAN
