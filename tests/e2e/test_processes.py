"""End to end across real processes: `livesupport demo` starts a server, an agent (with
its Qt windows, offscreen) and a console as separate processes on loopback and plays a
full video session (the device's call, and its call window, in its own session
process) and a notification round. Then we check that nothing of the conversation
reached the agent's disk, and that the windows' pictures were saved."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtGui import QImage

from tech_console import demo, scripted

pytestmark = pytest.mark.e2e


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One run of the demo (about 15 s) that the tests read."""
    out = tmp_path_factory.mktemp("e2e") / "demo"
    return out, demo.run(out, timeout_s=90)


@pytest.mark.timeout(180)
def test_demo_plays_a_full_session_across_processes(
    played: tuple[Path, dict[str, Any]],
) -> None:
    _, report = played

    for key in demo.REQUIRED_TRUE:
        assert report.get(key), f"{key} is {report.get(key)!r}: {report}"
    assert report["chat.sent"] == len(scripted.DEMO_MESSAGES) + len(demo.DEVICE_REPLIES)
    assert report["chat.delivered_count"] == report["chat.sent"]
    assert report["chat.read_count"] == report["chat.sent"]
    assert report["session.setup_ms"] > 0
    assert report["chat.rtt_ms_p50"] > 0
    assert report["device.status_during"] == "connected"
    assert report["device.status_after"] == "disconnected"
    assert report["session.chat_cleared"] is True
    assert report["call.route"] == "direct"
    assert report["call.mode"] == "video"
    assert report["call.first_frame_ms"] >= report["session.setup_ms"] > 0
    assert report["call.controls"] == dict.fromkeys(scripted.DEVICE_CONTROLS, True)
    assert report["call.fps_received.console_avg"] > 5
    assert report["call.fps_received.device_avg"] > 5
    assert report["session.processes"] == 1
    assert report["session.process_exited"] is True
    assert report["session.media_released"] is True


@pytest.mark.timeout(180)
def test_no_conversation_content_reaches_the_agents_disk(
    played: tuple[Path, dict[str, Any]],
) -> None:
    out, report = played
    assert report["ok"], report

    assert report["device_leftovers.canary_hits"] == 0
    assert report["device_leftovers.files_written_during_session"] == []
    assert report["device_leftovers.folders_made_during_session"] == []
    canaries = [*scripted.DEMO_MESSAGES, *demo.DEVICE_REPLIES, demo.NOTIFICATION_ANSWER]
    # Checked here again, independently of the demo's own scan: the agent's state,
    # its home, data, config, cache and temp folders, and its log.
    leftovers = _files(out / "agent-folders")
    agent_files = _files(out / "agent-state")
    # The agent keeps its identity, its key and nothing else.
    assert sorted(p.name for p in agent_files) == ["device-key.pem", "identity.json"]
    # Neither its state nor its log (stderr) holds a word of the conversation.
    for path in [*agent_files, *leftovers, out / "logs" / "agent.log"]:
        content = path.read_bytes()
        for canary in canaries:
            assert canary.encode() not in content, f"{canary!r} found in {path}"
    # The server keeps metadata only: no chat line in its database or log. (The
    # notification answer is stored server-side on purpose: store-and-forward.)
    for path in [*_files(out / "server-data"), out / "logs" / "server.log"]:
        content = path.read_bytes()
        for canary in [*scripted.DEMO_MESSAGES, *demo.DEVICE_REPLIES]:
            assert canary.encode() not in content, f"{canary!r} found in {path}"


def _png_chunks(content: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG file, each checked against its CRC."""
    assert content[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    chunks, at = [], 8
    while at < len(content):
        (length,) = struct.unpack(">I", content[at : at + 4])
        kind, data = content[at + 4 : at + 8], content[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", content[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + data) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, data))
        at += 12 + length
    return chunks


@pytest.mark.timeout(180)
def test_the_device_windows_pictures_are_saved(
    played: tuple[Path, dict[str, Any]],
) -> None:
    out, report = played
    folder = out / "screenshots"
    assert report["screenshots.folder"] == str(folder)
    assert report["screenshots.complete"] is True
    assert report["screenshots.missing"] == []
    listed = {entry["file"]: entry for entry in report["screenshots"]}
    assert sorted(listed) == sorted(demo.SCREENSHOTS)
    # Outside the agent's folders (the leftovers check must not have to skip them).
    assert not folder.is_relative_to(out / "agent-folders")
    assert not folder.is_relative_to(out / "agent-state")
    for name in demo.SCREENSHOTS:
        path = folder / name
        assert path.is_file(), f"{name} is missing"
        content = path.read_bytes()
        chunks = _png_chunks(content)
        kinds = [kind for kind, _ in chunks]
        assert kinds[0] == b"IHDR", name
        assert kinds[-1] == b"IEND", name
        assert b"IDAT" in kinds, name
        width, height = struct.unpack(">II", chunks[0][1][:8])
        assert (width, height) == (listed[name]["width"], listed[name]["height"]), name
        assert listed[name]["bytes"] == len(content), name
        image = QImage(str(path))
        assert not image.isNull(), f"{name} does not decode"
        assert (image.width(), image.height()) == (width, height), name
        assert width >= 300, f"{name} is {width}x{height}"
        assert height >= 200, f"{name} is {width}x{height}"
        # A picture of a window, not a blank: many colours.
        sample = {
            image.pixel(x, y)
            for x in range(0, width, max(1, width // 40))
            for y in range(0, height, max(1, height // 40))
        }
        assert len(sample) > 8, f"{name} looks blank"
    # The call window as a desktop window (landscape) and as a tablet in portrait.
    desktop, tablet = listed["call-window.png"], listed["call-window-tablet.png"]
    assert desktop["width"] > desktop["height"]
    assert tablet["height"] > tablet["width"]
