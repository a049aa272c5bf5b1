"""The resident agent stays small: it never loads aiortc, PyAV or numpy (the session
process does). import-linter checks the static imports; this checks what a real
interpreter ends up loading, lazy and indirect imports included."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_resident_agent_loads_no_media_stack() -> None:
    code = (
        "import json, sys\n"
        "import device_agent.cli, device_agent.agent, device_agent.session_host\n"
        "heavy = ('aiortc', 'av', 'numpy', 'aioice', 'pylibsrtp', 'PySide6')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []
