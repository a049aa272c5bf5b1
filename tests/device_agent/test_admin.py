"""The device's local admin utility, ``livesupport agent admin``, run as a real process
against the state folder of a real running agent: each command changes the Live
Support status on the device (the agent picks the change up by itself) and on the
console (the server derives it from the agent's report)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device_agent.admin import StateWatcher, parse_services
from device_agent.agent import enrol
from device_agent.state import RUNTIME_FILE, AgentState
from protocol.enums import LiveSupportStatus, Mode
from tech_console.client import ConsoleClient
from tests.conftest import PASSWORD, Lab
from tests.integration.harness import FAST, Pair, make_pair, until

#: The agent looks at its state folder about once a second; then one round trip to
#: the server and one to the console. Generous, for a loaded machine.
PICKUP_S = 5.0


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        data = json.loads(self.out)
        assert isinstance(data, dict)
        return data


async def admin(state: Path, *args: str) -> Ran:
    """``livesupport agent admin ARGS --state STATE``, in its own process. Run without
    blocking: the server and the agent it talks to live in this process's loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer.cli",
        "agent",
        "admin",
        *args,
        "--state",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def assert_refused(ran: Ran, words: str) -> None:
    """A clear refusal: non-zero, nothing on stdout, one line on stderr, no traceback."""
    assert ran.code != 0, ran
    assert ran.out == "", ran
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("livesupport agent admin: "), ran.err
    assert words in lines[0], ran.err


def seen(pair: Pair, status: LiveSupportStatus, device_id: str | None = None) -> bool:
    """The status, online, on both sides."""
    device_id = device_id or pair.device_id
    device = pair.console.devices.get(device_id)
    return (
        pair.agent.status is status
        and pair.agent.online
        and device is not None
        and device.status is status
        and device.online
    )


@pytest.fixture
async def pair(lab: Lab, tmp_path: Path) -> AsyncIterator[Pair]:
    async with make_pair(lab, tmp_path) as made:
        yield made


def folder(pair: Pair) -> Path:
    return pair.agent.state.folder


async def test_uninstall_shows_not_installed_and_install_brings_it_back(pair: Pair) -> None:
    ran = await admin(folder(pair), "uninstall")
    assert ran.code == 0, ran.err
    assert "not installed" in ran.out
    await until(lambda: seen(pair, LiveSupportStatus.NOT_INSTALLED), PICKUP_S)
    assert not pair.agent.service.installed

    ran = await admin(folder(pair), "install")
    assert ran.code == 0, ran.err
    await until(lambda: seen(pair, LiveSupportStatus.DISCONNECTED), PICKUP_S)
    assert pair.agent.service.installed


async def test_disable_shows_disabled_and_enable_brings_it_back(pair: Pair) -> None:
    statuses: list[LiveSupportStatus] = []
    pair.agent.status_listeners.add(statuses.append)
    ran = await admin(folder(pair), "disable")
    assert ran.code == 0, ran.err
    assert "installed, disabled" in ran.out
    await until(lambda: seen(pair, LiveSupportStatus.DISABLED), PICKUP_S)
    assert LiveSupportStatus.DISABLED in statuses  # the device's views were told
    # The agent's runtime file follows: `status` shows it.
    shown = (await admin(folder(pair), "status", "--json")).json()
    assert shown["agent"]["status"] == "disabled"
    assert shown["service"]["enabled"] is False
    # Doing it again changes nothing, and says so.
    again = await admin(folder(pair), "disable")
    assert again.code == 0
    assert "already" in again.out

    ran = await admin(folder(pair), "enable")
    assert ran.code == 0, ran.err
    await until(lambda: seen(pair, LiveSupportStatus.DISCONNECTED), PICKUP_S)
    assert pair.agent.service.enabled


async def test_services_set_narrows_what_the_console_may_offer(pair: Pair) -> None:
    device_id = pair.device_id
    assert pair.console.devices[device_id].allowed_modes == (Mode.TEXT, Mode.VOICE, Mode.VIDEO)
    ran = await admin(folder(pair), "services", "--set", "voice, TEXT")
    assert ran.code == 0, ran.err
    await until(
        lambda: pair.console.devices[device_id].allowed_modes == (Mode.TEXT, Mode.VOICE),
        PICKUP_S,
    )
    assert pair.agent.service.chat_services == (Mode.TEXT, Mode.VOICE)
    assert seen(pair, LiveSupportStatus.DISCONNECTED)
    shown = await admin(folder(pair), "services", "--json")
    assert shown.json() == {"chat_services": ["text", "voice"]}


async def test_re_enrol_connects_the_agent_as_the_new_device(lab: Lab, pair: Pair) -> None:
    old_id = pair.device_id
    ran = await admin(folder(pair), "re-enrol", await lab.enrolment_code(), "--json")
    assert ran.code == 0, ran.err
    result = ran.json()
    new_id = result["device_id"]
    assert result["previous_device_id"] == old_id
    assert new_id != old_id
    await until(
        lambda: (
            pair.agent.device.device_id == new_id
            and seen(pair, LiveSupportStatus.DISCONNECTED, new_id)
        ),
        PICKUP_S,
    )
    # The old identity has left the server.
    await until(lambda: not pair.console.devices[old_id].online)
    assert not (folder(pair) / "device-key.pem.pending").exists()
    shown = (await admin(folder(pair), "status", "--json")).json()
    assert shown["device"]["device_id"] == new_id
    assert shown["agent"]["online"] is True


async def test_status_shows_the_running_agent(pair: Pair) -> None:
    ran = await admin(folder(pair), "status", "--json")
    assert ran.code == 0, ran.err
    assert ran.json() == {
        "state_dir": str(folder(pair)),
        "device": {
            "device_id": pair.device_id,
            "server": pair.agent.device.server,
            "group_id": pair.agent.device.group_id,
        },
        "service": {
            "installed": True,
            "enabled": True,
            "chat_services": ["text", "voice", "video"],
        },
        "agent": {
            "running": True,
            "pid": os.getpid(),
            "status": "disconnected",
            "status_label": "Disconnected",
            "online": True,
            "session_open": False,
            "updated_at_ms": ran.json()["agent"]["updated_at_ms"],
        },
    }
    # The runtime file is metadata, and nothing else.
    runtime = json.loads((folder(pair) / RUNTIME_FILE).read_text())
    assert set(runtime) == {"pid", "status", "online", "session_open", "updated_at_ms"}
    assert (folder(pair) / RUNTIME_FILE).stat().st_mode & 0o777 == 0o600
    text = await admin(folder(pair), "status")
    assert text.code == 0
    assert f"running (pid {os.getpid()}), online" in text.out
    assert "Status:         Disconnected" in text.out

    # A stopped agent takes its runtime file with it.
    await pair.agent.stop()
    assert not (folder(pair) / RUNTIME_FILE).exists()
    stopped = (await admin(folder(pair), "status", "--json")).json()
    assert stopped["agent"] == {"running": False}


async def test_bad_input_is_refused_in_one_line_and_changes_nothing(
    lab: Lab, pair: Pair, tmp_path: Path
) -> None:
    used = await lab.enrolment_code()
    await enrol(AgentState(tmp_path / "other"), used)
    empty = tmp_path / "empty"
    empty.mkdir()
    state = folder(pair)
    identity_before = (state / "identity.json").read_bytes()
    service_before = pair.agent.service
    results = await asyncio.gather(
        admin(state, "frobnicate"),
        admin(state, "services", "--set", "text,fax"),
        admin(state, "services", "--set", " , "),
        admin(state, "re-enrol", "not-a-code"),
        admin(state, "re-enrol", used),
        admin(empty, "status"),
        admin(empty, "disable"),
        admin(tmp_path / "nowhere", "uninstall"),
    )
    words = [
        "invalid choice: 'frobnicate'",
        "unknown chat service 'fax'",
        "at least one chat service",
        "bad enrolment code",
        "enrolment refused",
        "not enrolled",
        "not enrolled",
        "no agent state folder",
    ]
    for ran, expected in zip(results, words, strict=True):
        assert_refused(ran, expected)
    assert results[0].code == 2  # a malformed command line
    assert (state / "identity.json").read_bytes() == identity_before
    assert not (state / "device-key.pem.pending").exists()
    assert not (empty / "service.json").exists()
    assert not (tmp_path / "nowhere").exists()
    assert AgentState(state).service() == service_before
    assert seen(pair, LiveSupportStatus.DISCONNECTED)


async def test_a_real_agent_process_survives_re_enrolment(lab: Lab, tmp_path: Path) -> None:
    """The resident agent as its own process (`livesupport agent`): re-enrolled, it
    connects as the new device and keeps running."""
    state = tmp_path / "agent"
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer.cli",
        "agent",
        "--headless",
        "--state",
        str(state),
        "--enrol",
        await lab.enrolment_code(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    console = ConsoleClient(lab.url, lab.fingerprint, backoff=FAST)
    try:
        await console.login("tech", PASSWORD)

        def online() -> set[str]:
            return {d.device_id for d in console.devices.values() if d.online}

        await until(lambda: len(online()) == 1)
        (old_id,) = online()
        await until(lambda: (state / RUNTIME_FILE).exists())
        ran = await admin(state, "re-enrol", await lab.enrolment_code(), "--json")
        assert ran.code == 0, ran.err
        new_id = ran.json()["device_id"]
        await until(lambda: online() == {new_id}, PICKUP_S)
        assert console.devices[new_id].status is LiveSupportStatus.DISCONNECTED
        assert old_id in console.devices
        assert agent.returncode is None  # still running, as the new device
        shown = (await admin(state, "status", "--json")).json()
        assert shown["agent"]["pid"] == agent.pid
        assert shown["agent"]["online"] is True
    finally:
        await console.close()
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 15) == 0
    assert not (state / RUNTIME_FILE).exists()


async def test_the_watcher_reports_each_change_once(tmp_path: Path) -> None:
    changes: list[str] = []

    async def changed() -> None:
        changes.append("service")

    path = tmp_path / "service.json"
    watcher = StateWatcher(tmp_path, {"service.json": changed}, interval_s=3600)
    watcher.start()
    await watcher.check()
    assert changes == []  # as it was at start
    path.write_text("{}")
    await watcher.check()
    await watcher.check()
    assert changes == ["service"]
    replacement = tmp_path / "new.json"
    replacement.write_text("{}")  # same size: the inode and times tell it apart
    replacement.replace(path)
    await watcher.check()
    path.unlink()
    await watcher.check()
    assert changes == ["service"] * 3
    await watcher.stop()


def test_chat_services_are_parsed_strictly() -> None:
    assert parse_services("video,text") == (Mode.TEXT, Mode.VIDEO)
    assert parse_services(" Voice ,voice") == (Mode.VOICE,)
