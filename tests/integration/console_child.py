"""A technician console in a process of its own, for the console-crash test: it logs
in (the password on stdin), calls one device, and once the call is up and the
consent verified writes a ready file (session id, pid) and waits to be killed.

    python -m tests.integration.console_child --server URL --fingerprint FP \\
        --user tech --device DEV --mode video --ready FILE < password
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from peer.call_media import MediaOptions
from protocol.enums import Mode, SessionState
from tech_console.client import ConsoleClient


async def run(args: argparse.Namespace, password: str) -> None:
    console = ConsoleClient(
        args.server, args.fingerprint, media_options=MediaOptions(width=320, height=240)
    )
    await console.login(args.user, password)
    session = await console.start_session(args.device, Mode(args.mode), "ticket CRASH-1")
    await console.wait_session(session, [SessionState.IN_CALL], timeout_s=60)
    while not session.consent_verified:
        await session.changed.wait()
    ready = Path(args.ready)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"session_id": session.session_id, "pid": os.getpid()}))
    tmp.replace(ready)
    await asyncio.Event().wait()  # until killed


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("--server", "--fingerprint", "--user", "--device", "--ready"):
        parser.add_argument(name, required=True)
    parser.add_argument("--mode", default="video")
    args = parser.parse_args()
    asyncio.run(run(args, sys.stdin.readline().strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
