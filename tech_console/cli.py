"""``livesupport console``: the technician console.

The Qt console is built on ``ConsoleClient``; until it lands, the console runs
headless: ``--script demo`` plays the demo session and writes a JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from peer import encoders
from peer.signaling import RequestError
from tech_console.client import ConsoleClient
from tech_console.scripted import run_demo_session


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="livesupport console", description=__doc__)
    parser.add_argument("--server", required=True, help="https://host:port")
    parser.add_argument("--fingerprint", required=True, help="the server's 'sha-256 AB:..' pin")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-stdin", action="store_true")
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--script", choices=["demo"], help="play a scripted session")
    parser.add_argument("--expected-replies", type=int, default=0)
    parser.add_argument("--report", type=Path, help="write the script's JSON report here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s console %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.user}: ")
    if not args.script:
        print(
            "livesupport console: the Qt console is not built yet; use --script demo",
            file=sys.stderr,
        )
        return 2
    # aiortc offers no encoder settings; ours are tuned for interactive calls.
    encoders.install(encoders.INTERACTIVE)
    try:
        report = asyncio.run(_run(args, password))
    except RequestError as exc:
        print(f"livesupport console: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        args.report.write_text(text)
    else:
        print(text)
    return 0


async def _run(args: argparse.Namespace, password: str) -> dict[str, object]:
    console = ConsoleClient(args.server, args.fingerprint)
    try:
        await console.login(args.user, password)
        return await run_demo_session(console, expected_replies=args.expected_replies)
    finally:
        await console.logout()
