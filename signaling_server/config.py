"""Server settings, with the defaults a small deployment wants."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    data_dir: Path = field(default_factory=lambda: Path("livesupport-data"))
    #: SQLAlchemy async URL; default: SQLite in the data folder.
    db_url: str | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    #: Seconds a device user has to answer an invite; no answer is a rejection.
    invite_timeout_s: float = 30.0
    #: Websocket ping interval; a peer silent for about twice this is dropped.
    heartbeat_s: float = 20.0
    #: Seconds a client has to authenticate after connecting.
    auth_timeout_s: float = 10.0
    #: How long a session survives the loss of one of its members before it is closed.
    grace_s: float = 60.0
    #: Per-connection message rate (token bucket): sustained rate and burst.
    rate_per_s: float = 50.0
    rate_burst: int = 100
    #: Refusals in a row after which an abusive connection is closed.
    max_rate_violations: int = 200
    technician_token_ttl_s: int = 12 * 3600
    #: Announce the server on the LAN with zeroconf (an address for clients, never trust).
    advertise: bool = True
    #: The name the server is advertised and shown under (default: "Live Support on <host>").
    name: str = ""
    enrolment_token_ttl_s: int = 24 * 3600
    #: Failed logins (signaling_server.login_guard): wrong passwords allowed in a row,
    #: then a lock per account and per address doubling from base to cap.
    login_free_failures: int = 3
    login_backoff_base_s: float = 1.0
    login_backoff_cap_s: float = 300.0
    #: TURN server urls ("turn:host:3478?transport=udp"); none: calls are never relayed.
    turn_urls: tuple[str, ...] = ()
    #: The secret shared with coturn (``static-auth-secret``): the server mints each
    #: call end a credential from it (signaling_server.turn); it never leaves the server.
    turn_secret: str = field(default="", repr=False)
    #: How long a minted TURN credential can make an allocation (see turn.py).
    turn_ttl_s: int = 600
    #: How often members of a running call get fresh credentials (None: TTL / 2).
    turn_refresh_s: float | None = None

    #: Redis shared by several nodes (docs/scale.md, "Several nodes"); None: one node.
    redis_url: str | None = None
    #: How often a node refreshes its liveness key in Redis (its TTL is 3 times this).
    bus_refresh_s: float = 2.0

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'livesupport.db').resolve()}"
