"""A notification to a group of 10,000 online devices, timed through the hub alone.

The real ``Hub`` and SQLite ``Store`` in this process; the websockets are replaced by
transports that only count frames (no TLS, no sockets), so what is timed is the hub's
and the store's share of issue 7's "a notification to 10,000 devices within 5 s":
storing the targets, the deliveries, and every device acknowledging its delivery at
once (a handler each, as the websocket handlers would run) until the technician's
console has heard of all of them. The load tester (bench/load) measures the whole
path, at up to 2,000 devices on a shared machine.

    .venv/bin/python -m bench.notify_fanout [--devices 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert

from protocol.enums import DeviceAck, Role
from protocol.messages import SIGNALING, NotifyAck, NotifySend
from signaling_server.config import ServerConfig
from signaling_server.hub import Connection, Hub, TokenBucket
from signaling_server.store import Base, Store


class CountingTransport:
    """A websocket that keeps nothing: it hands each frame to ``on_frame``."""

    def __init__(self, on_frame: Callable[[str], None] | None = None) -> None:
        self.on_frame = on_frame

    async def send_frame(self, frame: str) -> None:
        if self.on_frame is not None:
            self.on_frame(frame)

    async def close(self, code: int, reason: str) -> None:
        pass


def _unlimited() -> TokenBucket:
    return TokenBucket(1e9, 10**9)


async def measure(devices: int, folder: Path | None = None) -> dict[str, float]:
    folder = folder or Path(tempfile.mkdtemp(prefix="notify-fanout-"))
    store = await Store.open(f"sqlite+aiosqlite:///{folder / 'store.db'}")
    group = await store.create_group("Fleet")
    tech = await store.create_technician(
        "admin",
        "not-a-real-password",
        display_name="Admin",
        role=Role.ADMIN,
        organisation="Bench",
        groups=[group.id],
    )
    async with store.engine.begin() as db:
        await db.execute(
            insert(Base.metadata.tables["devices"]),
            [
                {
                    "id": f"dev-{i:016x}",
                    "name": f"Device {i}",
                    "group_id": group.id,
                    "public_key": f"key-{i}",
                    "enrolled_at_ms": 1,
                }
                for i in range(devices)
            ],
        )
    hub = Hub(store, ServerConfig(data_dir=folder), "bench")
    loop = asyncio.get_running_loop()
    told = loop.create_future()
    updates = 0
    last_delivery = 0.0
    handlers: set[asyncio.Task[None]] = set()

    def on_console_frame(frame: str) -> None:
        nonlocal updates
        if '"notify.update"' in frame:
            updates += 1
            if updates == devices and not told.done():
                told.set_result(time.perf_counter())

    console = Connection(CountingTransport(on_console_frame), "console", _unlimited())
    console.role, console.principal_id, console.technician = Role.ADMIN, tech.id, tech
    hub.consoles[tech.id] = {console}

    def device_transport(conn: Connection) -> CountingTransport:
        def on_frame(frame: str) -> None:
            nonlocal last_delivery
            if '"notify.deliver"' not in frame:
                return
            last_delivery = time.perf_counter()
            notification_id = str(json.loads(frame)["notification_id"])
            ack = SIGNALING.encode(
                NotifyAck(notification_id=notification_id, state=DeviceAck.DELIVERED, rid=1)
            )
            task = loop.create_task(hub.handle_frame(conn, ack))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

        return CountingTransport(on_frame)

    for device in await store.devices([group.id]):
        conn = Connection(CountingTransport(), "device", _unlimited())
        conn.role, conn.principal_id, conn.device = Role.DEVICE, device.id, device
        conn.transport = device_transport(conn)
        hub.devices_online[device.id] = conn

    start = time.perf_counter()
    send = NotifySend(group_id=group.id, title="Bench", body="Please ignore", rid=1)
    await hub.handle_frame(console, SIGNALING.encode(send))
    handled = time.perf_counter()
    all_told = await asyncio.wait_for(told, 600)
    await hub.shutdown()
    await store.close()
    return {
        "devices": devices,
        "send_handled_s": round(handled - start, 3),
        "last_delivery_s": round(last_delivery - start, 3),
        "all_acks_told_to_console_s": round(all_told - start, 3),
        "write_transactions": hub.writes.stats["transactions"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args(argv)
    for name, value in asyncio.run(measure(args.devices)).items():
        print(f"{name:32} {value}")


if __name__ == "__main__":
    main()
