"""``livesupport server`` and ``livesupport admin``.

The admin commands work on the server's data folder (or ``--db`` URL) directly, so an
operator can set a deployment up before the first start.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from protocol.enrolment import EnrolmentCode
from protocol.enums import Mode, Role
from signaling_server import tls, turn
from signaling_server.config import ServerConfig
from signaling_server.server import serve
from signaling_server.store import Store, StoreError


def _modes(text: str) -> tuple[Mode, ...]:
    try:
        return tuple(Mode(m.strip()) for m in text.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("modes are a comma list of text, voice, video") from None


def server_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="livesupport server", description="Run the server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8443, help="port (0: any free port)")
    parser.add_argument("--data", type=Path, default=Path("livesupport-data"), help="data folder")
    parser.add_argument("--db", help="SQLAlchemy async URL (default: SQLite in the data folder)")
    parser.add_argument("--cert", type=Path, help="TLS certificate (PEM); default: self-made")
    parser.add_argument("--key", type=Path, help="TLS private key (PEM)")
    parser.add_argument("--invite-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--grace", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--ready-file", type=Path, help="write url and fingerprint here (JSON)")
    parser.add_argument(
        "--no-advertise", action="store_true", help="do not announce the server with zeroconf"
    )
    parser.add_argument("--name", default="", help="name advertised on the LAN and shown")
    parser.add_argument(
        "--turn-url",
        action="append",
        default=[],
        metavar="URL",
        help="TURN server for relayed calls, e.g. turn:turn.example.org:3478?transport=udp "
        "(repeatable; see docs/turn.md)",
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--turn-secret", help="coturn's static-auth-secret (visible in ps)")
    secret.add_argument(
        "--turn-secret-file", type=Path, help="file holding coturn's static-auth-secret"
    )
    parser.add_argument(
        "--turn-ttl",
        type=int,
        default=turn.DEFAULT_TTL_S,
        metavar="SECONDS",
        help="how long a minted TURN credential can make a relay (default 600)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="redis://host:port/db shared by several nodes (with a shared PostgreSQL "
        "--db); see docs/scale.md, 'Several nodes'",
    )
    parser.add_argument(
        "--bus-refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often a node says it is alive in Redis (dead after 3 missed)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    turn_secret = args.turn_secret or ""
    try:
        if args.turn_secret_file is not None:
            turn_secret = turn.read_secret(args.turn_secret_file)
        if args.turn_url or turn_secret:
            # Checked here, so that a bad setting stops the start with a clear message.
            turn.TurnSettings(tuple(args.turn_url), turn_secret, args.turn_ttl)
    except (OSError, turn.TurnConfigError) as exc:
        parser.error(f"TURN: {exc}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data,
        db_url=args.db,
        cert_path=args.cert,
        key_path=args.key,
        invite_timeout_s=args.invite_timeout,
        grace_s=args.grace,
        advertise=not args.no_advertise,
        name=args.name,
        turn_urls=tuple(args.turn_url),
        turn_secret=turn_secret,
        turn_ttl_s=args.turn_ttl,
        redis_url=args.redis,
        bus_refresh_s=args.bus_refresh,
    )
    asyncio.run(serve(config, ready_file=args.ready_file))
    return 0


def _admin_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livesupport admin", description="Set up technicians, groups and devices."
    )
    parser.add_argument("--data", type=Path, default=Path("livesupport-data"), help="data folder")
    parser.add_argument("--db", help="SQLAlchemy async URL (default: SQLite in the data folder)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    group = sub.add_parser("group-add", help="create a device group")
    group.add_argument("name")
    group.add_argument("--modes", type=_modes, default=tuple(Mode), help="e.g. text,voice")
    group.add_argument("--disabled", action="store_true", help="Live Support off by policy")
    group.add_argument(
        "--relay-only", action="store_true", help="calls relayed by TURN only (docs/turn.md)"
    )

    policy = sub.add_parser("group-policy", help="change a group's chat-service policy")
    policy.add_argument("group")
    policy.add_argument("--modes", type=_modes)
    state = policy.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true")
    state.add_argument("--disable", action="store_true")
    policy.add_argument(
        "--relay-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="calls relayed by TURN only, or not (docs/turn.md)",
    )

    sub.add_parser("groups", help="list device groups")

    tech = sub.add_parser("technician-add", help="create a technician account")
    tech.add_argument("username")
    tech.add_argument("--name", required=True, help="display name shown to device users")
    tech.add_argument(
        "--role",
        type=Role,
        default=Role.TECHNICIAN,
        choices=[r for r in Role if r is not Role.DEVICE],
    )
    tech.add_argument("--organisation", default="")
    tech.add_argument("--group", action="append", default=[], help="device group in scope")
    tech.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    sub.add_parser("technicians", help="list technicians")

    token = sub.add_parser("enrolment-token", help="issue a one-time device enrolment code")
    token.add_argument("group")
    token.add_argument("--server", default="https://127.0.0.1:8443", help="address devices use")
    token.add_argument("--ttl", type=int, default=24 * 3600, metavar="SECONDS")

    sub.add_parser("devices", help="list enrolled devices")
    revoke = sub.add_parser("revoke", help="revoke a device")
    revoke.add_argument("device_id")
    sub.add_parser("sessions", help="list sessions (metadata only)")
    sub.add_parser("audit", help="show the audit log")
    sub.add_parser("fingerprint", help="print the server certificate fingerprint")
    return parser


async def _admin(args: argparse.Namespace) -> object:
    config = ServerConfig(data_dir=args.data, db_url=args.db)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.database_url)
    try:
        commands: dict[str, Callable[[], Awaitable[object]]] = {
            "group-add": lambda: _group_add(store, args),
            "group-policy": lambda: _group_policy(store, args),
            "groups": lambda: _groups(store),
            "technician-add": lambda: _technician_add(store, args),
            "technicians": lambda: _technicians(store),
            "enrolment-token": lambda: _enrolment_token(store, config, args),
            "devices": lambda: _devices(store),
            "revoke": lambda: _revoke(store, args),
            "sessions": lambda: _sessions(store),
            "audit": lambda: _audit(store),
            "fingerprint": lambda: _fingerprint(config),
        }
        return await commands[args.command]()
    finally:
        await store.close()


async def _group_add(store: Store, args: argparse.Namespace) -> object:
    group = await store.create_group(
        args.name, allowed_modes=args.modes, enabled=not args.disabled, relay_only=args.relay_only
    )
    return {"group_id": group.id, "name": group.name, "relay_only": group.relay_only}


async def _group_policy(store: Store, args: argparse.Namespace) -> object:
    enabled = True if args.enable else False if args.disable else None
    group = await store.set_group_policy(
        args.group, allowed_modes=args.modes, enabled=enabled, relay_only=args.relay_only
    )
    return {
        "group_id": group.id,
        "modes": [m.value for m in group.allowed_modes],
        "enabled": group.service_enabled,
        "relay_only": group.relay_only,
    }


async def _groups(store: Store) -> object:
    return [
        {
            "group_id": g.id,
            "name": g.name,
            "modes": [m.value for m in g.allowed_modes],
            "enabled": g.service_enabled,
            "relay_only": g.relay_only,
        }
        for g in await store.groups()
    ]


async def _technician_add(store: Store, args: argparse.Namespace) -> object:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.username}: ")
    tech = await store.create_technician(
        args.username,
        password,
        display_name=args.name,
        role=args.role,
        organisation=args.organisation,
        groups=args.group,
    )
    await store.audit("admin-cli", "technician.add", target=tech.id, role=tech.role.value)
    return {"technician_id": tech.id, "username": tech.username, "role": tech.role.value}


async def _technicians(store: Store) -> object:
    return [
        {
            "technician_id": t.id,
            "username": t.username,
            "name": t.display_name,
            "role": t.role.value,
            "groups": sorted(t.groups),
        }
        for t in await store.technicians()
    ]


async def _enrolment_token(store: Store, config: ServerConfig, args: argparse.Namespace) -> object:
    identity, _ = tls.load_or_create(config.data_dir)
    token = await store.issue_enrolment_token(args.group, created_by="admin-cli", ttl_s=args.ttl)
    code = EnrolmentCode(server=args.server, token=token, fingerprint=identity.fingerprint)
    await store.audit("admin-cli", "enrolment_token.issue", target=args.group)
    return {"code": code.encode(), "expires_in_s": args.ttl}


async def _devices(store: Store) -> object:
    return [
        {
            "device_id": d.id,
            "name": d.name,
            "group": d.group_name,
            "model": d.model,
            "os": d.os,
            "revoked": d.revoked,
            "last_seen_ms": d.last_seen_ms,
        }
        for d in await store.devices()
    ]


async def _revoke(store: Store, args: argparse.Namespace) -> object:
    await store.revoke_device(args.device_id)
    await store.audit("admin-cli", "device.revoke", target=args.device_id)
    return {"revoked": args.device_id}


async def _sessions(store: Store) -> object:
    return [
        {
            "session_id": s.id,
            "technician_id": s.technician_id,
            "device_id": s.device_id,
            "mode": s.accepted_mode or s.offered_mode,
            "state": s.state,
            "reason": s.reason,
            "created_at_ms": s.created_at_ms,
            "closed_at_ms": s.closed_at_ms,
            "consent": s.consent_receipt is not None,
            "summary": s.summary,
        }
        for s in await store.sessions()
    ]


async def _audit(store: Store) -> object:
    return [
        {
            "at_ms": r.at_ms,
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "outcome": r.outcome,
            "detail": json.loads(r.detail),
        }
        for r in await store.audit_rows()
    ]


async def _fingerprint(config: ServerConfig) -> object:
    identity, _ = tls.load_or_create(config.data_dir)
    return {"fingerprint": identity.fingerprint}


def admin_main(argv: Sequence[str]) -> int:
    args = _admin_parser().parse_args(argv)
    try:
        result = asyncio.run(_admin(args))
    except StoreError as exc:
        print(f"livesupport admin: {exc}", file=sys.stderr)
        return 2
    if args.json or not isinstance(result, dict | list):
        print(json.dumps(result, indent=None if args.json else 2))
    elif isinstance(result, dict):
        for key, value in result.items():
            print(f"{key}: {value}")
    else:
        for row in result:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0
