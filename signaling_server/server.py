"""Running the server: TLS identity, store, aiohttp site, and a clean stop."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from signaling_server import limits, tls
from signaling_server.app import make_app
from signaling_server.config import ServerConfig
from signaling_server.discovery import Advertiser
from signaling_server.store import Store

log = logging.getLogger(__name__)

#: Timers shorter than this are not rounded up to whole seconds (see start()).
HEARTBEATS_UNROUNDED_BELOW_S = 3600.0


class RunningServer:
    """A started server; ``url`` and ``fingerprint`` are what clients need."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.fingerprint = ""
        self.port = 0
        self.app: web.Application | None = None
        self.advertiser: Advertiser | None = None

    async def start(self) -> RunningServer:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Every connection is a file and a TLS state: see signaling_server/limits.py.
        limits.raise_open_files_to_hard()
        limits.share_tls_read_buffer()
        identity, created = tls.load_or_create(
            config.data_dir, cert_path=config.cert_path, key_path=config.key_path
        )
        if created:
            log.warning("made a new TLS certificate: %s", identity.cert_path)
        store = await Store.open(config.database_url)
        self.app = make_app(config, store, identity.fingerprint)
        self.runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            # aiohttp rounds a timer longer than this up to a whole second. For the
            # websockets' heartbeat (20 s) that put every connection's ping on the
            # same instant: with 18,000 held, ~900 pings in one loop iteration every
            # second (~100 ms, measured: the p99 of a status change to consoles).
            # Unrounded, each connection pings on its own schedule.
            timeout_ceil_threshold=HEARTBEATS_UNROUNDED_BELOW_S,
        )
        await self.runner.setup()
        # aiohttp's count of the site's connections, closing ones included.
        connections = self.runner.server
        assert connections is not None
        guard = self.app[limits.OPEN_FILES]
        guard.tcp_connections = lambda: len(connections.connections)
        tables = limits.grown_tables(asyncio.get_running_loop(), connections)
        guard.before_trim.append(functools.partial(limits.shrink_all, tables))
        site = web.TCPSite(
            self.runner,
            config.host,
            config.port,
            ssl_context=identity.server_context(),
            backlog=4096,
        )
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else config.port
        host = config.host if ":" not in config.host else f"[{config.host}]"
        self.url = f"https://{host}:{self.port}"
        self.fingerprint = identity.fingerprint
        if config.advertise:
            self.advertiser = Advertiser(
                name=config.name or f"Live Support on {socket.gethostname()}",
                host=config.host,
                port=self.port,
                fingerprint=self.fingerprint,
            )
            await self.advertiser.start()
        return self

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "port": self.port, "fingerprint": self.fingerprint}

    async def stop(self) -> None:
        if self.advertiser is not None:
            await self.advertiser.stop()
            self.advertiser = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def serve(config: ServerConfig, *, ready_file: Path | None = None) -> None:
    """Run until SIGINT or SIGTERM."""
    server = await RunningServer(config).start()
    # The server's own process only: a process hosting servers among other work
    # (the tests) keeps its collector as it is.
    assert server.app is not None
    freezing = limits.own_the_collector(server.app[limits.OPEN_FILES])
    info = server.describe()
    print(f"Live Support server listening on {server.url}", flush=True)
    print(f"certificate fingerprint: {server.fingerprint}", flush=True)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(ready_file)  # atomic: a reader never sees half a file
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        freezing.cancel()
        await server.stop()
