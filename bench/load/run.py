"""The load tester's orchestrator: one server process, device and console workers in
processes of their own, the figures of issue 7 beside their targets.

Steps (one server process, ``livesupport server``, SQLite, under ``build/bench/load``):

1. the fleet in the store, in bulk: N devices with real Ed25519 keys in three groups
   (a group of up to 10,000 to notify, a small watched group whose devices the
   consoles see, the rest), technicians and their bearer tokens;
2. K device workers connect their share of the fleet (each over its own source
   address 127.0.0.x); the connect rate, and the server's RSS before and after,
   divided by N;
3. M consoles subscribe; probe devices of the watched group report a new name one
   after another; each probe's latency is from its send (device process) to its
   arrival at each console (console process), p50 and p99 over all;
4. a notification to the big group, from a console: the time until the last online
   device of the group received it;
5. the server killed (SIGKILL) and started again on the same port: the time from its
   ready file until every device authenticated again;
6. the devices leave: the server's RSS against its RSS at start;
7. the floor: 2,000 bare aiohttp TLS websockets held by a server that does nothing
   else, their memory per connection and the server CPU per connect; then N bare
   aiohttp TLS websockets connecting at once from K processes, the time until all
   are connected (bench/load/connect_floor.py);
8. the three-node step (bench/load/nodes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import aiohttp

from bench.faults._restartable import (
    PASSWORD,
    ServerProcess,
    bulk_devices,
    open_store,
    raise_open_files_limit,
    raw_private_key,
)
from bench.load.clients import console_process, device_process
from peer.signaling import pinned, ws_url
from protocol.codec import Sender
from protocol.enums import Role
from protocol.messages import (
    SIGNALING,
    AuthChallenge,
    AuthOk,
    AuthTechnician,
    NotifySend,
    NotifySent,
)
from signaling_server import limits

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "bench" / "load.json"

#: Issue 7's targets.
TARGET_CONNECTIONS = 18_000
TARGET_KIB_PER_CONNECTION = 16.0
TARGET_MEMORY_BACK = 0.10
TARGET_RECONNECT_S = 10.0
TARGET_PROPAGATION_P99_MS = 10.0
TARGET_NOTIFY_S = 5.0
NOTIFY_GROUP = 10_000
#: Connections of the floor (per-connection figures; more would only take longer).
FLOOR_DEVICES = 2_000
WATCHED = 100
#: Deadlines (not targets): how long a step may take before the run gives up.
CONNECT_DEADLINE_S = 600.0
RECONNECT_DEADLINE_S = 300.0


@dataclass
class WorkerHandle:
    process: multiprocessing.process.BaseProcess
    pipe: Pipe
    name: str

    async def ask(self, command: str, timeout_s: float = 900.0, **args: Any) -> Any:
        self.pipe.send((command, args))
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self.pipe.poll, timeout_s)
        if not ready:
            raise TimeoutError(f"{self.name}: no answer to {command!r}")
        answer = self.pipe.recv()
        if isinstance(answer, dict) and "failed" in answer:
            raise RuntimeError(f"{self.name}: {command} failed: {answer['failed']}")
        return answer


@dataclass
class Run:
    devices: int
    device_processes: int
    consoles: int
    probes: int
    folder: Path
    results: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss_parts_kib(pid: int) -> dict[str, int]:
    """The RSS by kind: anonymous (the heap, Python's arenas), file-backed (the
    interpreter and libraries' code), shared memory."""
    parts = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
            name, value = line.split(":")
            parts[name[3:].lower()] = int(value.split()[0])
    return parts


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clients_cpu_s(workers: list[WorkerHandle]) -> float:
    return sum(cpu_s(w.process.pid) for w in workers if w.process.pid is not None)


async def settled_rss(pid: int, deadline_s: float = 120.0) -> int:
    """The RSS once it stopped falling for three of the server's samples: it gives
    freed memory back on its own next sample (signaling_server/limits.py), and a
    fleet that left all at once leaves work behind it (a last-seen write each)."""
    window = 3 * limits.OpenFilesGuard.SAMPLE_S
    lowest, since = rss_kib(pid), time.monotonic()
    deadline = since + deadline_s
    while time.monotonic() < deadline and time.monotonic() - since < window:
        await asyncio.sleep(0.5)
        now = rss_kib(pid)
        if now < lowest * 0.99:
            since = time.monotonic()
        lowest = min(lowest, now)
    return lowest


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def health(server: ServerProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=pinned(server.fingerprint))
        ) as http,
        http.get(f"{server.url}/api/v1/health") as response,
    ):
        body: dict[str, Any] = await response.json()
        return body


async def wait_health(server: ServerProcess, test: Any, deadline_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    while True:
        state = await health(server)
        if test(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.2)


async def make_fleet(run: Run, server: ServerProcess) -> dict[str, Any]:
    store = await open_store(server)
    try:
        notify_n = min(NOTIFY_GROUP, max(1, run.devices * NOTIFY_GROUP // TARGET_CONNECTIONS))
        watched_n = min(WATCHED, max(1, run.devices // 10))
        rest_n = run.devices - notify_n - watched_n
        notify = await store.create_group("Notified")
        watched = await store.create_group("Watched")
        rest = await store.create_group("Rest")
        await store.create_technician(
            "watcher", PASSWORD, display_name="Watcher", role=Role.TECHNICIAN, groups=[watched.id]
        )
        await store.create_technician(
            "notifier", PASSWORD, display_name="Notifier", role=Role.TECHNICIAN, groups=[notify.id]
        )
        tokens = [
            (await store.login("watcher", PASSWORD, ttl_s=24 * 3600))[0]
            for _ in range(run.consoles)
        ]
        notifier_token, _ = await store.login("notifier", PASSWORD, ttl_s=24 * 3600)
    finally:
        await store.close()
    fleet: list[tuple[str, bytes, str, str]] = []
    for group, n in ((notify, notify_n), (watched, watched_n), (rest, rest_n)):
        if n <= 0:
            continue
        for device_id, key in await bulk_devices(server, group, n):
            raw = raw_private_key(key)
            fleet.append((device_id, raw, f"{group.name} {len(fleet)}", group.id))
    return {
        "fleet": fleet,
        "notify_group": notify.id,
        "notify_n": notify_n,
        "watched": [d for d, _, _, g in fleet if g == watched.id],
        "tokens": tokens,
        "notifier_token": notifier_token,
    }


def spawn(target: Any, name: str, *args: Any) -> WorkerHandle:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=target, args=(theirs, *args), name=name, daemon=True)
    process.start()
    return WorkerHandle(process, ours, name)


async def notifier_console(
    server: ServerProcess, token: str
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pinned(server.fingerprint)))
    ws = await http.ws_connect(ws_url(server.url), compress=0)
    assert isinstance(
        SIGNALING.decode(await ws.receive_str(timeout=30), Sender.SERVER), AuthChallenge
    )
    await ws.send_str(SIGNALING.encode(AuthTechnician(token=token, rid=1)))
    assert isinstance(SIGNALING.decode(await ws.receive_str(timeout=30), Sender.SERVER), AuthOk)
    return http, ws


async def time_probes(
    owner: dict[str, WorkerHandle],
    consoles: list[WorkerHandle],
    watched: list[str],
    probes: int,
    console_count: int,
    *,
    first: int = 0,
    deadline_s: float = 30.0,
    slowest: list[dict[str, float]] | None = None,
) -> dict[str, list[float]]:
    """Probe devices of the watched group report a new name one after another (their
    worker in ``owner``); the latency of each arrival at each console, in ms, from the
    probe's send (device process) to its arrival (console process), per console
    worker. Probes are numbered from ``first``: arrivals of earlier ones are left out.
    ``slowest`` receives the 10 probes whose last arrival took longest, with the wall
    time of their send (to find them in a server's log)."""
    sent: dict[int, float] = {}
    wall: dict[int, float] = {}
    for seq in range(first, first + probes):
        device_id = watched[seq % len(watched)]
        wall[seq] = time.time()
        sent[seq] = await owner[device_id].ask("probe", device_id=device_id, seq=seq)
        await asyncio.sleep(0.05)  # one probe at a time: latency, not throughput
    heard: dict[str, dict[int, list[float]]] = {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        heard = {
            c.name: {int(seq): ts for seq, ts in (await c.ask("heard")).items() if int(seq) in sent}
            for c in consoles
        }
        if sum(len(ts) for h in heard.values() for ts in h.values()) >= probes * console_count:
            break
        await asyncio.sleep(0.2)
    if slowest is not None:
        last = {
            seq: max((t for h in heard.values() for t in h.get(seq, ())), default=0.0)
            for seq in sent
        }
        worst = sorted(sent, key=lambda seq: last[seq] - sent[seq], reverse=True)[:10]
        slowest.extend(
            {
                "sent_at": round(wall[seq], 3),
                "probe": seq,
                "ms": round((last[seq] - sent[seq]) * 1000, 1),
            }
            for seq in worst
        )
    return {
        name: [(t - sent[seq]) * 1000 for seq, ts in h.items() for t in ts]
        for name, h in heard.items()
    }


async def measure(run: Run) -> dict[str, Any]:
    raise_open_files_limit(20_000)
    run.folder.mkdir(parents=True, exist_ok=True)
    data = run.folder / "server"
    if data.exists():
        import shutil

        shutil.rmtree(data)
    (run.folder / "server.log").unlink(missing_ok=True)
    server = ServerProcess(data, grace_s=60.0, log=run.folder / "server.log")
    setup = await make_fleet(run, server)
    fleet = setup["fleet"]
    r = run.results
    r.update(devices=run.devices, device_processes=run.device_processes, consoles=run.consoles)
    await server.start()
    assert server.process is not None
    workers: list[WorkerHandle] = []
    consoles: list[WorkerHandle] = []
    owner: dict[str, WorkerHandle] = {}
    try:
        await wait_health(server, lambda s: True, 5)  # the first request warms the server
        rss_start = rss_kib(server.process.pid)
        r["server_rss_start_kib"] = rss_start
        share = math.ceil(len(fleet) / run.device_processes)
        for k in range(run.device_processes):
            part = fleet[k * share : (k + 1) * share]
            handle = spawn(
                device_process,
                f"devices-{k}",
                server.url,
                server.fingerprint,
                f"127.0.0.{k + 2}",
                [(d, raw, name) for d, raw, name, _ in part],
            )
            workers.append(handle)
            for d, *_ in part:
                owner[d] = handle

        # -- 2. connect -----------------------------------------------------------
        started = time.monotonic()
        cpu_before = cpu_s(server.process.pid)
        clients_before = clients_cpu_s(workers)
        await asyncio.gather(*(w.ask("start") for w in workers))
        online = await asyncio.gather(
            *(w.ask("online", after=started, deadline_s=CONNECT_DEADLINE_S) for w in workers)
        )
        times = [t for o in online for t in o["times"]]
        connected = len(times)
        r["connected"] = connected
        r["connect_s"] = round(max(times) - started, 2) if times else None
        r["connect_rate_per_s"] = round(connected / (max(times) - started), 1) if times else 0
        # What one connect costs the server, whatever the clients' share of the cores.
        r["server_cpu_ms_per_connect"] = round(
            1000 * (cpu_s(server.process.pid) - cpu_before) / max(1, connected), 2
        )
        # The simulated devices' share of the same two cores: with the server's, the
        # CPU one connect costs this machine, whatever the server does.
        r["clients_cpu_ms_per_connect"] = round(
            1000 * (clients_cpu_s(workers) - clients_before) / max(1, connected), 2
        )
        state = await wait_health(server, lambda s: s["devices_online"] >= connected, 30)
        r["held_by_server"] = state["devices_online"]
        r["open_files"] = state.get("open_files")
        r["open_files_limit"] = state.get("open_files_limit")
        r["open_files_near_cap"] = state.get("open_files_near_cap")
        rss_full = rss_kib(server.process.pid)
        r["server_rss_full_kib"] = rss_full
        r["kib_per_connection"] = round((rss_full - rss_start) / max(1, connected), 2)

        # -- 3. status propagation to consoles --------------------------------------
        console_processes = max(1, min(2, run.consoles))
        per = math.ceil(run.consoles / console_processes)
        for k in range(console_processes):
            tokens = setup["tokens"][k * per : (k + 1) * per]
            if tokens:
                consoles.append(
                    spawn(
                        console_process,
                        f"consoles-{k}",
                        server.url,
                        server.fingerprint,
                        f"127.0.1.{k + 2}",
                        tokens,
                    )
                )
        await asyncio.gather(*(c.ask("start") for c in consoles))
        slowest: list[dict[str, float]] = []
        per_worker = await time_probes(
            owner, consoles, setup["watched"], run.probes, run.consoles, slowest=slowest
        )
        r["slowest_probes"] = slowest
        latencies = [ms for each in per_worker.values() for ms in each]
        r["probes"] = run.probes
        r["probe_arrivals"] = len(latencies)
        r["probe_arrivals_expected"] = run.probes * run.consoles
        r["propagation_p50_ms"] = round(statistics.median(latencies), 2) if latencies else None
        r["propagation_p99_ms"] = round(percentile(latencies, 0.99), 2) if latencies else None
        await asyncio.gather(*(c.ask("close") for c in consoles))

        # -- 4. notification to a big group --------------------------------------
        http, ws = await notifier_console(server, setup["notifier_token"])
        try:
            sent_at = time.monotonic()
            await ws.send_str(
                SIGNALING.encode(
                    NotifySend(
                        group_id=setup["notify_group"], title="Load test", body="Hello", rid=5
                    )
                )
            )
            while True:
                reply = SIGNALING.decode(await ws.receive_str(timeout=60), Sender.SERVER)
                if isinstance(reply, NotifySent):
                    notification_id = reply.notification_id
                    break
                if reply.TYPE == "error":
                    raise RuntimeError(f"notify refused: {reply}")
            deadline = time.monotonic() + 60
            while True:
                got = await asyncio.gather(
                    *(w.ask("notified", notification_id=notification_id) for w in workers)
                )
                received = sum(g["received"] for g in got)
                if received >= setup["notify_n"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            r["notify_group"] = setup["notify_n"]
            r["notify_received"] = received
            r["notify_s"] = round(max(g["last"] for g in got) - sent_at, 3) if received else None
        finally:
            await ws.close()
            await http.close()

        # -- 5. restart and reconnect --------------------------------------------
        killed_at = await server.kill()
        ready_at = await server.start()
        assert server.process is not None
        # Read at once: the devices are already on their way back.
        rss_restart = rss_kib(server.process.pid)
        r["server_rss_restart_kib"] = rss_restart
        r["server_rss_restart_parts_kib"] = rss_parts_kib(server.process.pid)
        cpu_ready = cpu_s(server.process.pid)
        clients_ready = clients_cpu_s(workers)
        back = await asyncio.gather(
            *(w.ask("online", after=killed_at, deadline_s=RECONNECT_DEADLINE_S) for w in workers)
        )
        back_times = [t for b in back for t in b["times"]]
        r["reconnected"] = len(back_times)
        r["reconnect_s"] = round(max(back_times) - ready_at, 2) if back_times else None
        r["reconnect_p50_s"] = (
            round(statistics.median(back_times) - ready_at, 2) if back_times else None
        )
        r["restart_s"] = round(ready_at - killed_at, 2)
        r["server_cpu_ms_per_reconnect"] = round(
            1000 * (cpu_s(server.process.pid) - cpu_ready) / max(1, len(back_times)), 2
        )
        r["clients_cpu_ms_per_reconnect"] = round(
            1000 * (clients_cpu_s(workers) - clients_ready) / max(1, len(back_times)), 2
        )

        # -- 6. the devices leave ------------------------------------------------
        closed = await asyncio.gather(*(w.ask("close") for w in workers))
        failures = [tuple(f) for c in closed for f in c["failures"]]

        def lost_to_the_restart(at: float, up_since: float | None) -> bool:
            # The kill drops every link up before it (however late a busy worker
            # notices) and refuses attempts until the new server listens: those are
            # the fault itself; any other failure is an error.
            return killed_at <= at <= ready_at or (
                up_since is not None and up_since < killed_at <= at
            )

        errors = sorted(
            (f for f in failures if not lost_to_the_restart(f[0], f[3])), key=lambda f: f[0]
        )
        r["links_lost_to_the_restart"] = len(failures) - len(errors)
        r["client_errors"] = len(errors)
        r["client_error_kinds"] = dict(Counter(kind for _, kind, _, _ in errors))
        # The errors themselves (not the restart's lost links), seconds after ready.
        r["client_error_examples"] = [
            f"{at - ready_at:+.1f} s: {kind}: {what}" for at, kind, what, _ in errors
        ][:10]
        # Until their TCP connections closed too (TLS shutdowns end up to 30 s after the
        # websockets): this health request's own is the one left.
        left_at = time.monotonic()
        gone = await wait_health(
            server, lambda s: s["connections"] == 0 and s["tcp_connections"] <= 1, 90
        )
        r["connections_closed_s"] = round(time.monotonic() - left_at, 1)
        r["tcp_connections_left"] = gone["tcp_connections"] - 1
        rss_left = await settled_rss(server.process.pid)
        r["server_rss_left_kib"] = rss_left
        r["server_rss_left_parts_kib"] = rss_parts_kib(server.process.pid)
        # Against the restarted process at its start: the devices that came back
        # and left must not leave their memory behind.
        r["memory_back_ratio"] = round((rss_left - rss_restart) / rss_restart, 3)
    finally:
        for handle in [*workers, *consoles]:
            handle.process.join(timeout=5)
            if handle.process.is_alive():
                handle.process.kill()
        await server.stop()
    log = (run.folder / "server.log").read_text(errors="replace")
    r["server_errors"] = log.count("Traceback") + log.count(" ERROR ")
    r["server_warned_open_files"] = "open files at" in log
    r["machine"] = machine()
    return r


def machine() -> str:
    import os
    import platform

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    memory = f"{mem_kib // 1024 // 1024 + 1} GiB"
    return f"{os.cpu_count()} CPU ({model}), {memory}, Python {platform.python_version()}"


def rows(r: dict[str, Any]) -> list[tuple[str, Any, str, bool | None]]:
    """(figure, value, target, met) for the table."""
    n = r["devices"]
    floor: dict[str, Any] = r.get("floor", {})
    full = n >= TARGET_CONNECTIONS

    def met(ok: bool) -> bool | None:
        return ok if full else None  # a smaller run says nothing about a target

    p99 = r.get("propagation_p99_ms")
    notify_s = r.get("notify_s")
    reconnect_s = r.get("reconnect_s")
    errors = r.get("client_errors", 0) + r.get("server_errors", 0)
    figures = [
        (
            "idle device connections held",
            r.get("held_by_server"),
            f">= {TARGET_CONNECTIONS:,}",
            met(r.get("held_by_server", 0) >= TARGET_CONNECTIONS),
        ),
        (
            "server memory per connection (KiB)",
            r.get("kib_per_connection"),
            f"<= {TARGET_KIB_PER_CONNECTION:g}",
            met(r.get("kib_per_connection", 1e9) <= TARGET_KIB_PER_CONNECTION),
        ),
        (
            "  floor: bare aiohttp TLS websocket (KiB)",
            floor.get("kib_per_connection"),
            f"({floor.get('devices', 0):,} held)",
            None,
        ),
        (
            "  floor: asyncio TLS socket alone (KiB)",
            floor.get("tls_kib_per_connection"),
            f"({floor.get('devices', 0):,} held)",
            None,
        ),
        (
            "memory after they left, vs start",
            f"{100 * r.get('memory_back_ratio', 0):+.1f} %",
            f"within {100 * TARGET_MEMORY_BACK:g} %",
            met(abs(r.get("memory_back_ratio", 1)) <= TARGET_MEMORY_BACK),
        ),
        ("connect rate (devices/s)", r.get("connect_rate_per_s"), "(reported)", None),
        ("server CPU per connect (ms)", r.get("server_cpu_ms_per_connect"), "(reported)", None),
        (
            "  floor: bare aiohttp TLS websocket (ms)",
            floor.get("cpu_ms_per_connect"),
            "(handshake + upgrade)",
            None,
        ),
        ("clients' CPU per connect (ms)", r.get("clients_cpu_ms_per_connect"), "(reported)", None),
        (
            "server CPU per reconnect (ms)",
            r.get("server_cpu_ms_per_reconnect"),
            "(reported)",
            None,
        ),
        (
            "clients' CPU per reconnect (ms)",
            r.get("clients_cpu_ms_per_reconnect"),
            "(reported)",
            None,
        ),
        (
            "reconnect of all after a restart (s)",
            reconnect_s,
            f"< {TARGET_RECONNECT_S:g}",
            met(
                reconnect_s is not None
                and reconnect_s < TARGET_RECONNECT_S
                and r.get("reconnected") == n
            ),
        ),
        (
            "  floor: bare aiohttp TLS websockets connecting (s)",
            floor.get("connect_s"),
            f"({floor.get('connect_devices', 0):,} at once"
            + (f", {floor['connect_failed']:,} failed)" if floor.get("connect_failed") else ")"),
            None,
        ),
        (
            "  floor: their server / clients' CPU per connect (ms)",
            f"{floor.get('connect_server_cpu_ms')} / {floor.get('connect_clients_cpu_ms')}",
            "(nothing of ours)",
            None,
        ),
        (
            f"status to {r['consoles']} consoles, p50 (ms)",
            r.get("propagation_p50_ms"),
            "(reported)",
            None,
        ),
        (
            f"status to {r['consoles']} consoles, p99 (ms)",
            p99,
            f"<= {TARGET_PROPAGATION_P99_MS:g}",
            met(p99 is not None and p99 <= TARGET_PROPAGATION_P99_MS),
        ),
        (
            f"notification to a group of {r.get('notify_group', 0):,} (s)",
            notify_s,
            f"< {TARGET_NOTIFY_S:g}",
            met(
                notify_s is not None
                and notify_s < TARGET_NOTIFY_S
                and r.get("notify_received") == r.get("notify_group")
            ),
        ),
        ("errors (clients + server log)", errors, "0", errors == 0),
        *(nodes_rows(r["nodes"]) if "nodes" in r else []),
    ]
    # The floor's rows only when it was measured (--floor-devices 0: not).
    return [f for f in figures if floor or not f[0].lstrip().startswith("floor:")]


def nodes_rows(r: dict[str, Any]) -> list[tuple[str, Any, str, bool | None]]:
    from bench.load import nodes  # it builds on this module

    errors = r.get("client_errors", 0) + r.get("server_errors", 0)
    return [*nodes.rows(r), ("errors of the 3 nodes (clients + logs)", errors, "0", errors == 0)]


def table(r: dict[str, Any]) -> str:
    lines = [f"{'figure':<58} {'measured':>10}  {'target':<24} ok", "-" * 98]
    for name, value, target, ok in rows(r):
        verdict = "-" if ok is None else ("yes" if ok else "NO")
        lines.append(f"{name:<58} {value!s:>10}  {target:<24} {verdict}")
    lines.append(f"machine: {r.get('machine')}")
    if r["devices"] < TARGET_CONNECTIONS:
        lines.append(
            f"({r['devices']:,} devices: a smaller run; "
            f"targets are judged at {TARGET_CONNECTIONS:,})"
        )
    return "\n".join(lines)


async def floor(folder: Path, n: int, fleet: int, processes: int) -> dict[str, Any]:
    """The floor under three figures: N bare aiohttp TLS websockets held by a server
    that does nothing else (bench/memory_per_connection.py's ``wss`` layer, the same
    TLS read buffer sharing): the memory one idle connection and the server CPU one
    connect cost below anything of ours; then the whole fleet of bare websockets
    connecting at once from as many client processes as the devices'
    (bench/load/connect_floor.py): the time under the reconnect."""
    from bench import memory_per_connection as layers
    from bench.load import connect_floor

    measured = await layers.measure("wss", n, False, folder / "floor", watch_s=0.0)
    per = measured["per_connection"]
    # Below aiohttp: asyncio's TLS transport holding the socket, and nothing else.
    bare = await layers.measure("tls", n, False, folder / "floor", watch_s=0.0)
    # A failed connect is reported, not raised: the run's other figures are kept.
    connecting = await connect_floor.measure(folder / "floor", fleet, processes)
    return {
        "devices": measured["online"],
        "kib_per_connection": round(per["rss"] / 1024, 2),
        "cpu_ms_per_connect": round(per["cpu_ms"], 2),
        "tls_kib_per_connection": round(bare["per_connection"]["rss"] / 1024, 2),
        "connect_devices": fleet,
        "connect_s": connecting["seconds"],
        "connect_server_cpu_ms": connecting["server_cpu_ms_per_connect"],
        "connect_clients_cpu_ms": connecting["clients_cpu_ms_per_connect"],
        "connect_failed": connecting["failed"],
        "connect_failures": connecting["failures"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--devices", type=int, default=TARGET_CONNECTIONS)
    parser.add_argument("--processes", type=int, default=4, help="device worker processes")
    parser.add_argument("--consoles", type=int, default=50)
    parser.add_argument("--probes", type=int, default=200, help="status changes timed")
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "bench" / "load")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--nodes-devices",
        type=int,
        default=3_000,
        help="the three-node step's fleet (bench/load/nodes.py); 0: no three-node step",
    )
    parser.add_argument(
        "--floor-devices",
        type=int,
        default=FLOOR_DEVICES,
        help="connections of the bare aiohttp TLS websocket floor; 0: no floor",
    )
    args = parser.parse_args(argv)
    run = Run(args.devices, args.processes, args.consoles, args.probes, args.folder)
    results = asyncio.run(measure(run))
    if args.floor_devices > 0:
        results["floor"] = asyncio.run(
            floor(args.folder, args.floor_devices, args.devices, args.processes)
        )
    if args.nodes_devices > 0:
        from bench.load import nodes  # it builds on this module

        three = Run(args.nodes_devices, nodes.NODES, args.consoles, args.probes, args.folder)
        results["nodes"] = asyncio.run(nodes.measure(three))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
