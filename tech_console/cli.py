"""``livesupport console``: the technician console.

Without ``--script`` it opens the Qt console: the login window (prefilled from the
arguments and the servers logged in to before), then the main window. With
``--script demo`` it plays the demo session and writes a JSON report: headless, or
with ``--screenshots DIR`` with the main window following the session (offscreen
where ``QT_QPA_PLATFORM=offscreen``) and pictures of it saved in DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from peer import encoders
from peer.signaling import RequestError
from tech_console.client import ConsoleClient
from tech_console.scripted import run_demo_session


def can_show_windows() -> bool:
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="livesupport console", description=__doc__)
    parser.add_argument("--server", default="", help="https://host:port")
    parser.add_argument("--fingerprint", default="", help="the server's 'sha-256 AB:..' pin")
    parser.add_argument("--user", default="")
    parser.add_argument("--password-stdin", action="store_true")
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--script", choices=["demo"], help="play a scripted session")
    parser.add_argument("--expected-replies", type=int, default=0)
    parser.add_argument("--report", type=Path, help="write the script's JSON report here")
    parser.add_argument(
        "--screenshots", type=Path, help="with --script: save the window's pictures"
    )
    parser.add_argument("--settings", type=Path, help="the console's settings file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s console %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiortc offers no encoder settings; ours are tuned for interactive calls.
    encoders.install(encoders.INTERACTIVE)
    if not args.script:
        if args.headless or not can_show_windows():
            print(
                "livesupport console: no display (set DISPLAY, or QT_QPA_PLATFORM); "
                "without one only --script demo runs",
                file=sys.stderr,
            )
            return 2
        from peer.ui.app import run_with_qt
        from tech_console.ui.main import run_console

        run_with_qt(
            run_console(
                server=args.server,
                fingerprint=args.fingerprint,
                username=args.user,
                settings_file=args.settings,
            ),
            app_name="Live Support console",
        )
        return 0
    if not (args.server and args.fingerprint and args.user):
        parser.error("--script needs --server, --fingerprint and --user")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.user}: ")
    try:
        if args.screenshots is not None:
            from peer.ui.app import run_with_qt
            from tech_console.ui.main import run_scripted_with_window

            report = run_with_qt(
                run_scripted_with_window(
                    args.server,
                    args.fingerprint,
                    args.user,
                    password,
                    expected_replies=args.expected_replies,
                    screenshots=args.screenshots,
                ),
                app_name="Live Support console",
            )
        else:
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
