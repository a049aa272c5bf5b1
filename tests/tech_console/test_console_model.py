"""The console's decisions without a display: filters, why a start is refused, the
call-quality word, the summary form and the settings file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peer.call import CallStats, StreamStats
from protocol.enums import LiveSupportStatus, Mode, Role
from protocol.messages import DeviceInfo
from tech_console.console_model import (
    ConsoleSettings,
    InventoryFilter,
    KnownServer,
    Quality,
    call_quality,
    last_seen_text,
    load_settings,
    save_settings,
    start_blocker,
    summary_problems,
)

KEY = "A" * 43 + "="


def device(**changes: object) -> DeviceInfo:
    values: dict[str, object] = {
        "device_id": "dev-1",
        "name": "Front desk tablet",
        "group_id": "grp-1",
        "group_name": "Reception",
        "model": "Tab S9",
        "os": "Android 14",
        "status": LiveSupportStatus.DISCONNECTED,
        "online": True,
        "last_seen_ms": 1_000_000,
        "allowed_modes": (Mode.TEXT, Mode.VOICE, Mode.VIDEO),
        "public_key": KEY,
    }
    values.update(changes)
    return DeviceInfo(**values)  # type: ignore[arg-type]


def test_the_filter_matches_text_group_status_and_presence() -> None:
    tablet = device()
    assert InventoryFilter().matches(tablet)
    assert InventoryFilter(text="  front DESK ").matches(tablet)
    assert InventoryFilter(text="android").matches(tablet)
    assert InventoryFilter(text="reception").matches(tablet)
    assert not InventoryFilter(text="laptop").matches(tablet)
    assert InventoryFilter(group_id="grp-1").matches(tablet)
    assert not InventoryFilter(group_id="grp-2").matches(tablet)
    connected = frozenset({LiveSupportStatus.CONNECTED})
    assert not InventoryFilter(statuses=connected).matches(tablet)
    assert InventoryFilter(online=True).matches(tablet)
    assert not InventoryFilter(online=False).matches(tablet)


@pytest.mark.parametrize(
    ("changes", "role", "mode", "says"),
    [
        ({}, Role.VIEWER, Mode.TEXT, "viewer"),
        ({}, None, Mode.TEXT, "signed-out"),
        ({"status": LiveSupportStatus.NOT_INSTALLED}, Role.TECHNICIAN, Mode.TEXT, "not installed"),
        ({"status": LiveSupportStatus.DISABLED}, Role.TECHNICIAN, Mode.TEXT, "disabled"),
        ({"status": LiveSupportStatus.CONNECTED}, Role.TECHNICIAN, Mode.TEXT, "already"),
        ({"session_id": "ses-1"}, Role.TECHNICIAN, Mode.TEXT, "already"),
        ({"online": False}, Role.TECHNICIAN, Mode.TEXT, "offline"),
        ({"allowed_modes": (Mode.TEXT,)}, Role.TECHNICIAN, Mode.VIDEO, "does not allow video"),
        ({"allowed_modes": ()}, Role.ADMIN, Mode.VOICE, "allowed: nothing"),
    ],
)
def test_each_reason_a_start_is_refused(
    changes: dict[str, object], role: Role | None, mode: Mode, says: str
) -> None:
    blocker = start_blocker(device(**changes), mode, role)
    assert blocker is not None
    assert says in blocker


@pytest.mark.parametrize("role", [Role.TECHNICIAN, Role.SUPERVISOR, Role.ADMIN])
def test_a_start_is_allowed_when_nothing_stands_in_the_way(role: Role) -> None:
    for mode in Mode:
        assert start_blocker(device(), mode, role) is None


def test_last_seen_is_said_for_people() -> None:
    minute = 60_000
    assert last_seen_text(device(), 0) == "Online now"
    offline = device(online=False, last_seen_ms=0)
    assert last_seen_text(offline, 30_000) == "Just now"
    assert last_seen_text(offline, 5 * minute) == "5 min ago"
    assert last_seen_text(offline, 3 * 60 * minute) == "3 h ago"
    assert last_seen_text(offline, 72 * 60 * minute) == "3 days ago"
    assert last_seen_text(device(online=False, last_seen_ms=None), 0) == "Never seen"


def stream(packets: int, lost: int | None, kbps: float | None, fps: float | None) -> StreamStats:
    return StreamStats(
        packets=packets,
        bytes=packets * 1000,
        bitrate_kbps=kbps,
        packets_lost=lost,
        jitter_ms=None,
        fps=fps,
        width=None,
        height=None,
    )


def stats(rtt: float | None, video: StreamStats | None, route: str | None = "direct") -> CallStats:
    return CallStats(
        state="connected",
        rtt_ms=rtt,
        audio_sent=None,
        audio_received=stream(500, 0, 32.0, None),
        video_sent=None,
        video_received=video,
        route=route,
        local_candidate_type="host",
        remote_candidate_type="host",
        chat_bytes_sent=0,
        chat_bytes_received=0,
        chat_frames_sent=0,
        chat_frames_received=0,
        bad_frames=0,
    )


def test_call_quality_takes_the_worst_figure() -> None:
    good = call_quality(stats(40.0, stream(1000, 2, 800.0, 30.0)))
    assert good.quality is Quality.GOOD
    assert good.bitrate_kbps == 832.0
    assert good.fps == 30.0
    assert "Round trip: 40 ms" in good.lines()
    assert "Route: Direct (peer to peer)" in good.lines()
    assert call_quality(stats(250.0, stream(1000, 0, 800.0, 30.0))).quality is Quality.FAIR
    assert call_quality(stats(40.0, stream(900, 100, 800.0, 30.0))).quality is Quality.POOR
    relayed = call_quality(stats(None, stream(1000, None, None, None), route="relayed"))
    assert "Route: Relayed (TURN)" in relayed.lines()
    assert "Round trip: —" in relayed.lines()
    unknown = stats(None, None)
    unknown["audio_received"] = stream(10, None, None, None)
    assert call_quality(unknown).quality is Quality.UNKNOWN


def test_the_summary_needs_its_required_fields() -> None:
    problems = summary_problems({"summary": "  ", "impact": "x"})
    assert set(problems) == {"summary", "next_owner"}
    assert summary_problems({"summary": "Fixed", "next_owner": "none"}) == {}
    assert "at most" in summary_problems({"summary": "x" * 4001, "next_owner": "me"})["summary"]


def test_settings_keep_servers_and_replies_but_never_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "livesupport" / "console.json"
    assert load_settings(path) == ConsoleSettings()
    settings = ConsoleSettings().remember(KnownServer("https://a:1", "sha-256 AA", "dana"))
    settings = settings.remember(KnownServer("https://b:2", "sha-256 BB", "dana"))
    settings = settings.remember(KnownServer("https://a:1", "sha-256 AA", "dana"))
    assert [s.address for s in settings.servers] == ["https://a:1", "https://b:2"]
    save_settings(path, settings)
    assert path.stat().st_mode & 0o077 == 0, "only the technician can read it"
    text = path.read_text()
    assert set(json.loads(text)) == {"servers", "saved_replies"}
    assert "password" not in text
    assert "token" not in text
    assert load_settings(path) == settings
    assert load_settings(path).forget("https://a:1").servers[0].address == "https://b:2"
    path.write_text("{not json")
    assert load_settings(path) == ConsoleSettings()
