"""``livesupport agent admin``: the device's local administration utility.

It installs, uninstalls, enables and disables the Live Support service, sets the chat
services it offers, enrols the device again, and shows where it all stands::

    livesupport agent admin status [--json]
    livesupport agent admin install | uninstall | enable | disable
    livesupport agent admin services [--set text,voice]
    livesupport agent admin re-enrol CODE [--name NAME]

Every command works on the agent's state folder (``--state DIR``, default
``device_agent.state.default_state_dir()``). The files of that folder are the truth:
the utility only changes them, and a running agent notices the change within about a
second (``StateWatcher``), applies it and reports it to the server, so the Live
Support status changes on the device and on every console together.

Bad input (an unknown command or chat service, a folder with no enrolled device, a
bad or used enrolment code) gets one line on stderr and a non-zero exit code: 2 for
a malformed command line, 1 for anything else.

This module is loaded by the resident agent (for the watcher): it imports neither
aiortc nor PyAV, and the agent itself only when re-enrolling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from device_agent.session_host import process_alive
from device_agent.state import (
    AgentState,
    DeviceIdentity,
    ServiceConfig,
    default_state_dir,
)
from peer.signaling import RequestError
from protocol.enrolment import EnrolmentCode
from protocol.enums import LiveSupportStatus, Mode

log = logging.getLogger(__name__)

PROG = "livesupport agent admin"

# -- the watcher, run by the agent --------------------------------------------------

#: What ``os.stat`` says of a file (mtime_ns, size, inode, ctime_ns); None if absent.
FileSignature = tuple[int, int, int, int] | None


def file_signature(path: Path) -> FileSignature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


class StateWatcher:
    """Looks at some files of the state folder about once a second and runs the
    handler of each one that changed (written, replaced or removed).

    Plain asyncio, no Qt and no inotify: a handful of ``stat`` calls a second costs
    nothing, and works the same on every platform and file system. A handler that
    fails is logged; the file is looked at again at its next change.
    """

    def __init__(
        self,
        folder: Path,
        handlers: Mapping[str, Callable[[], Awaitable[None]]],
        *,
        interval_s: float = 1.0,
    ) -> None:
        self.folder = folder
        self.interval_s = interval_s
        self._handlers = dict(handlers)
        self._seen: dict[str, FileSignature] = {}
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Remember the files as they are now, and watch them from now on."""
        if self._task is None:
            self._seen = {name: file_signature(self.folder / name) for name in self._handlers}
            self._closing.clear()
            self._task = asyncio.create_task(self._run(), name="state-watcher")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching. A handler that is running is let finish (a reconnection
        cut in half would leave the agent without a link), within ``timeout_s``."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> None:
        """Look once: run the handler of every file that changed since the last look."""
        for name, handler in self._handlers.items():
            now = file_signature(self.folder / name)
            if now == self._seen.get(name):
                continue
            self._seen[name] = now
            try:
                await handler()
            except Exception:
                log.exception("applying the change of %s failed", name)

    async def _run(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval_s)
                return
            await self.check()


# -- the utility ----------------------------------------------------------------------


class AdminError(Exception):
    """Bad input or a refusal: one line for the user, exit code 1."""


class UsageError(AdminError):
    """A malformed command line: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


def _service_json(config: ServiceConfig) -> dict[str, Any]:
    return {
        "installed": config.installed,
        "enabled": config.enabled,
        "chat_services": [m.value for m in config.chat_services],
    }


def _service_text(config: ServiceConfig) -> str:
    if not config.installed:
        return "not installed"
    return "installed, " + ("enabled" if config.enabled else "disabled")


def _require_enrolled(state: AgentState) -> DeviceIdentity:
    if not state.folder.is_dir():
        raise AdminError(f"no agent state folder at {state.folder} (see --state)")
    if not state.enrolled:
        raise AdminError(
            f"not enrolled: {state.folder} holds no device identity "
            "(enrol first: livesupport agent --enrol CODE)"
        )
    try:
        device, _key = state.load()
    except (OSError, ValueError, TypeError) as exc:
        raise AdminError(f"cannot read the device identity in {state.folder}: {exc}") from None
    return device


def _read_service(state: AgentState) -> ServiceConfig:
    try:
        return state.service()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        path = state.folder / "service.json"
        raise AdminError(f"cannot read {path}: {exc}") from None


def running_agent(state: AgentState) -> dict[str, Any] | None:
    """The status the agent running on this folder last wrote, if it is still alive.
    (The file of an agent that died without cleaning up is ignored.)"""
    data = state.load_runtime()
    if data is None:
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not process_alive(pid):
        return None
    try:
        status = LiveSupportStatus(str(data.get("status")))
    except ValueError:
        return None
    return {
        "pid": pid,
        "status": status.value,
        "status_label": status.label,
        "online": bool(data.get("online")),
        "session_open": bool(data.get("session_open")),
        "updated_at_ms": data.get("updated_at_ms"),
    }


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if args.json else text)


def _picked_up(state: AgentState) -> str:
    if running_agent(state) is not None:
        return "the running agent applies it within a second"
    return "no agent is running: it applies it when it starts"


def _status(state: AgentState, args: argparse.Namespace) -> int:
    device = _require_enrolled(state)
    config = _read_service(state)
    agent = running_agent(state)
    data = {
        "state_dir": str(state.folder),
        "device": {
            "device_id": device.device_id,
            "server": device.server,
            "group_id": device.group_id,
        },
        "service": _service_json(config),
        "agent": {"running": True, **agent} if agent else {"running": False},
    }
    lines = [
        f"State folder:   {state.folder}",
        f"Device:         {device.device_id} (group {device.group_id}) at {device.server}",
        f"Service:        {_service_text(config)}",
        f"Chat services:  {', '.join(m.value for m in config.chat_services)}",
    ]
    if agent is None:
        lines.append("Agent:          not running")
    else:
        online = "online" if agent["online"] else "offline"
        lines.append(f"Agent:          running (pid {agent['pid']}), {online}")
        lines.append(f"Status:         {agent['status_label']}")
    _emit(args, data, "\n".join(lines))
    return 0


def _change_service(state: AgentState, args: argparse.Namespace, **change: Any) -> int:
    _require_enrolled(state)
    before = _read_service(state)
    after = replace(before, **change)
    changed = after != before
    if changed:
        state.save_service(after)
    data = {"changed": changed, "service": _service_json(after)}
    if changed:
        text = f"Live Support service: {_service_text(after)}; {_picked_up(state)}"
    else:
        text = f"Live Support service: already {_service_text(after)}"
    _emit(args, data, text)
    return 0


def parse_services(text: str) -> tuple[Mode, ...]:
    """``text,voice`` as chat services, in the usual order; AdminError if not that."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    known = ", ".join(m.value for m in Mode)
    if not names:
        raise AdminError(f"at least one chat service is needed (choose from {known})")
    for name in names:
        if name not in {m.value for m in Mode}:
            raise AdminError(f"unknown chat service {name!r} (choose from {known})")
    return tuple(m for m in Mode if m.value in names)


def _services(state: AgentState, args: argparse.Namespace) -> int:
    if args.set is None:
        _require_enrolled(state)
        config = _read_service(state)
        names = [m.value for m in config.chat_services]
        _emit(args, {"chat_services": names}, f"Chat services: {', '.join(names)}")
        return 0
    modes = parse_services(args.set)
    _require_enrolled(state)
    before = _read_service(state)
    after = replace(before, chat_services=modes)
    changed = after != before
    if changed:
        state.save_service(after)
    services = ", ".join(m.value for m in modes)
    text = (
        f"Chat services: {services}; {_picked_up(state)}"
        if changed
        else f"Chat services: already {services}"
    )
    _emit(args, {"changed": changed, "chat_services": [m.value for m in modes]}, text)
    return 0


def _re_enrol(state: AgentState, args: argparse.Namespace) -> int:
    before = _require_enrolled(state)
    try:
        EnrolmentCode.parse(args.code)
    except ValueError as exc:
        raise AdminError(f"bad enrolment code: {exc}") from None
    # Imported here: the agent imports this module (for the watcher).
    from device_agent.agent import enrol

    try:
        device = asyncio.run(enrol(state, args.code, name=args.name))
    except RequestError as exc:
        state.discard_pending_key()
        raise AdminError(f"enrolment refused, the identity is unchanged: {exc}") from None
    data = {
        "device_id": device.device_id,
        "previous_device_id": before.device_id,
        "server": device.server,
        "group_id": device.group_id,
    }
    text = (
        f"Enrolled again as {device.device_id} with {device.server} "
        f"(was {before.device_id}); {_picked_up(state)}"
    )
    _emit(args, data, text)
    return 0


def _parser() -> argparse.ArgumentParser:
    # --state and --json are accepted before and after the command.
    common = _Parser(add_help=False)
    common.add_argument(
        "--state", type=Path, default=argparse.SUPPRESS, metavar="DIR", help="state folder"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable"
    )
    parser = _Parser(prog=PROG, description="The device's Live Support administration utility.")
    parser.add_argument("--state", type=Path, default=None, metavar="DIR", help="state folder")
    parser.add_argument("--json", action="store_true", default=False, help="machine-readable")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, run: Callable[..., int], **change: Any) -> _Parser:
        sub: _Parser = commands.add_parser(name, help=help_, parents=[common])
        sub.set_defaults(run=lambda state, args: run(state, args, **change))
        return sub

    command("status", "the service, the device and the running agent's status", _status)
    command("install", "install the Live Support service", _change_service, installed=True)
    command("uninstall", "uninstall it (status: Not Installed)", _change_service, installed=False)
    command("enable", "enable the service", _change_service, enabled=True)
    command("disable", "disable the service (status: Disabled)", _change_service, enabled=False)
    services = command("services", "show or set the chat services", _services)
    services.add_argument("--set", metavar="LIST", help="e.g. text,voice (of text, voice, video)")
    re_enrol = command("re-enrol", "enrol again with a new one-time code", _re_enrol)
    re_enrol.add_argument("code", metavar="CODE", help="the one-time enrolment code")
    re_enrol.add_argument("--name", help="device name shown to technicians")
    return parser


def main(argv: Sequence[str]) -> int:
    try:
        args = _parser().parse_args(list(argv))
        state = AgentState(args.state or default_state_dir())
        return int(args.run(state, args))
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
