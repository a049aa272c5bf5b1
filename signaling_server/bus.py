"""The bus between server nodes (docs/scale.md, "Several nodes").

One node alone needs nothing of it: :class:`LocalBus` (the default) says so
(``remote`` is False) and the hub never publishes. Several nodes share one PostgreSQL
database and one Redis: :class:`RedisBus` carries the hub's events between them over
Redis pub/sub, one channel every node hears (``ls:all``) and one per node
(``ls:node:<id>``), and keeps what another node must be able to look up in Redis:

- ``ls:alive:<node>``: the node is alive; a key with a TTL the node refreshes, so a
  node that dies (SIGKILL, power) is known dead when it expires;
- ``ls:presence``: device id -> the node holding its connection (entries of a dead
  node are ignored, then removed by the first node that notices the death);
- ``ls:sessions``: live session id -> its owner node and members (see Hub: the node
  the technician started it on runs its timers).

Events are small JSON objects with a ``k`` (kind); the hub interprets them
(Hub.on_bus_event). Redis delivers one publisher's messages to one subscriber in the
order they were published, across channels, and the bus hands them to the hub one
at a time in that order: a session's state change always comes before the device
update it causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]
EventHandler = Callable[[Event], Awaitable[None]]

ALL = "ls:all"
PRESENCE = "ls:presence"
SESSIONS = "ls:sessions"
NODES = "ls:nodes"
#: Redis connections a node uses at most. A connect storm makes thousands of bus calls
#: at once (presence, ``online``): they wait for a free connection (up to
#: ``POOL_WAIT_S``) instead of failing, as redis-py's default pool does past 100 (lost
#: presence and events, a traceback each).
POOL_SIZE = 32
POOL_WAIT_S = 30.0
#: Opening a connection and waiting for a reply: redis-py's 5 s default was outlasted
#: by a node's loop busy with 1,000 devices leaving at once on a loaded machine (its
#: ``offline`` events lost). A Redis that is down refuses at once; this is for a slow one.
SOCKET_TIMEOUT_S = 30.0


def node_channel(node: str) -> str:
    return f"ls:node:{node}"


def alive_key(node: str) -> str:
    return f"ls:alive:{node}"


class BusError(Exception):
    """The bus could not be reached or used (a clear message for the operator)."""


class LocalBus:
    """One node: nobody to tell, nothing to look up."""

    remote = False

    def __init__(self) -> None:
        self.node_id = "local"

    async def start(self, handler: EventHandler) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish_all(self, event: Event) -> None:
        return None

    async def publish_node(self, node: str, event: Event) -> int:
        """Returns how many nodes heard it (0: that node is gone)."""
        return 0

    async def set_presence(self, device_id: str) -> None:
        return None

    async def clear_presence(self, device_id: str) -> None:
        return None

    async def presence(self) -> dict[str, str]:
        return {}

    async def put_session(self, session_id: str, info: Event) -> None:
        return None

    async def drop_session(self, session_id: str) -> None:
        return None

    async def sessions(self) -> dict[str, Event]:
        return {}

    async def claim(self, name: str) -> bool:
        return True

    def alive(self, node: str) -> bool:
        return node == self.node_id


class RedisBus(LocalBus):
    """Several nodes over one Redis (redis-py's asyncio client)."""

    remote = True

    def __init__(self, url: str, *, refresh_s: float = 2.0, node_id: str = "") -> None:
        super().__init__()
        self.url = url
        self.node_id = node_id or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.refresh_s = refresh_s
        #: Nodes whose key was there at the last look (this one included).
        self.live_nodes: set[str] = {self.node_id}
        self._redis: Any = None
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._handler: EventHandler | None = None

    @property
    def ttl_s(self) -> int:
        # Three refreshes may be missed (a busy loop) before the node is taken for dead.
        return max(2, round(self.refresh_s * 3))

    async def start(self, handler: EventHandler) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._handler = handler
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            decode_responses=True,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
        )
        self._redis = aioredis.Redis.from_pool(pool)
        try:
            await self._redis.ping()
            await self._beat()
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(ALL, node_channel(self.node_id))
            await self._look_for_dead_nodes()
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            raise BusError(f"cannot use Redis at {self.url}: {exc}") from exc
        self._tasks = [
            asyncio.create_task(self._listen(), name="bus-listen"),
            asyncio.create_task(self._heartbeat(), name="bus-heartbeat"),
        ]
        log.info("node %s on the Redis bus %s", self.node_id, self.url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._redis is None:
            return
        with contextlib.suppress(Exception):
            # A clean stop says so at once: the others need not wait for the TTL.
            await self._redis.delete(alive_key(self.node_id))
            await self._redis.srem(NODES, self.node_id)
            await self._redis.publish(ALL, json.dumps({"k": "node_dead", "node": self.node_id}))
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()
        self._redis = None

    # -- liveness ---------------------------------------------------------------------

    async def _beat(self) -> None:
        await self._redis.set(alive_key(self.node_id), "1", ex=self.ttl_s)
        await self._redis.sadd(NODES, self.node_id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self._beat()
                await self._look_for_dead_nodes()
            except Exception:
                log.exception("bus heartbeat failed")

    async def _look_for_dead_nodes(self) -> None:
        nodes: set[str] = set(await self._redis.smembers(NODES))
        live = {self.node_id}
        for node in nodes - {self.node_id}:
            if await self._redis.exists(alive_key(node)):
                live.add(node)
        dead = (self.live_nodes | nodes) - live
        self.live_nodes = live
        for node in dead:
            await self._bury(node)

    async def _bury(self, node: str) -> None:
        """A node whose key expired: forget where it held devices and tell the hub
        (every node does this on its own; all of it is idempotent)."""
        await self._redis.srem(NODES, node)
        presence: dict[str, str] = await self._redis.hgetall(PRESENCE)
        gone = [device for device, held_by in presence.items() if held_by == node]
        if gone:
            await self._redis.hdel(PRESENCE, *gone)
        log.warning("node %s is gone (%d devices were connected to it)", node, len(gone))
        if self._handler is not None:
            await self._handler({"k": "node_dead", "node": node, "devices": gone})

    def alive(self, node: str) -> bool:
        return node in self.live_nodes

    # -- events -----------------------------------------------------------------------

    async def _listen(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus receive failed")
                await asyncio.sleep(self.refresh_s)
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                event: Event = json.loads(message["data"])
            except (TypeError, ValueError):
                log.warning("bus: a message that is not JSON, dropped")
                continue
            if event.get("from") == self.node_id:
                continue  # our own broadcast
            if event.get("k") == "node_dead":
                node = str(event.get("node", ""))
                if node in self.live_nodes and node != self.node_id:
                    self.live_nodes.discard(node)
                    await self._bury(node)
                continue
            if event.get("from"):
                self.live_nodes.add(str(event["from"]))
            assert self._handler is not None
            try:
                await self._handler(event)
            except Exception:
                log.exception("bus event %s failed", event.get("k"))

    async def publish_all(self, event: Event) -> None:
        await self._redis.publish(ALL, json.dumps({**event, "from": self.node_id}))

    async def publish_node(self, node: str, event: Event) -> int:
        heard: int = await self._redis.publish(
            node_channel(node), json.dumps({**event, "from": self.node_id})
        )
        return heard

    # -- shared look-ups --------------------------------------------------------------

    async def set_presence(self, device_id: str) -> None:
        await self._redis.hset(PRESENCE, device_id, self.node_id)

    async def clear_presence(self, device_id: str) -> None:
        # Only our own entry: the device may have connected to another node since.
        if await self._redis.hget(PRESENCE, device_id) == self.node_id:
            await self._redis.hdel(PRESENCE, device_id)

    async def presence(self) -> dict[str, str]:
        held: dict[str, str] = await self._redis.hgetall(PRESENCE)
        return {device: node for device, node in held.items() if self.alive(node)}

    async def put_session(self, session_id: str, info: Event) -> None:
        await self._redis.hset(SESSIONS, session_id, json.dumps(info))

    async def drop_session(self, session_id: str) -> None:
        await self._redis.hdel(SESSIONS, session_id)

    async def sessions(self) -> dict[str, Event]:
        raw: dict[str, str] = await self._redis.hgetall(SESSIONS)
        return {session_id: json.loads(info) for session_id, info in raw.items()}

    async def claim(self, name: str) -> bool:
        """True for exactly one node asking (SET NX): who takes over an orphan."""
        return bool(await self._redis.set(f"ls:claim:{name}", self.node_id, nx=True, ex=3600))


def make_bus(redis_url: str | None, *, refresh_s: float = 2.0) -> LocalBus:
    return RedisBus(redis_url, refresh_s=refresh_s) if redis_url else LocalBus()
