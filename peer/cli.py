"""The one command-line entry point, ``livesupport``.

It is only a launcher: each subcommand lives in the package that owns it, imported by
name when asked for, so that starting the console does not load the server and the
parts stay independent (the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "server": ("signaling_server.program", "server_command", "run the signaling server"),
    "admin": ("signaling_server.cli", "admin_main", "technicians, groups, enrolment, revocation"),
    "agent": ("device_agent.cli", "main", "run the device agent (or enrol it)"),
    "console": ("tech_console.cli", "main", "run the technician console"),
    "demo": ("tech_console.demo", "main", "a server, an agent and a console on this machine"),
}


def usage() -> str:
    lines = ["usage: livesupport COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "livesupport COMMAND --help shows the options of one command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"livesupport: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
