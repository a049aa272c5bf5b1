"""``protocol`` is sans-IO: importing it pulls in no event loop, socket, media or GUI.

Checked in a fresh interpreter, since this test process has long since imported all of
them. Importing each module on its own, first, also catches import cycles (as
python-zeroconf's tests do).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

MODULES = [
    "protocol",
    "protocol.errors",
    "protocol.fields",
    "protocol.enums",
    "protocol.codec",
    "protocol.messages",
    "protocol.chat",
    "protocol.session",
    "protocol.permissions",
    "protocol.identity",
    "protocol.enrolment",
]

# Checked once against the standard library and cryptography: none of these is pulled
# in by what protocol imports (json, re, enum, dataclasses, typing, unicodedata, base64,
# hashlib, cryptography), threading included, so none needs an exception.
FORBIDDEN = [
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "threading",
    "aiohttp",
    "aiortc",
    "av",
    "PySide6",
    "qasync",
    "sqlalchemy",
    "zeroconf",
    "signaling_server",
    "peer",
    "device_agent",
    "tech_console",
]


def _loaded_after(statement: str) -> list[str]:
    script = (
        "import json, sys\n"
        f"{statement}\n"
        f"print(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert isinstance(loaded, list)
    return [str(name) for name in loaded]


def test_the_whole_package_is_pure() -> None:
    statement = (
        "import protocol, protocol.messages, protocol.chat, protocol.session, "
        "protocol.permissions, protocol.identity, protocol.codec, protocol.enrolment"
    )
    assert _loaded_after(statement) == []


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    assert _loaded_after(f"import {module}") == []
