"""Voice and video calls between the real device agent (its call in a real session
process) and the real console, through the lab's real server: synthetic media,
frames and audio really encoded, sent over loopback and decoded on the other side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device_agent.ipc import Control
from device_agent.session_host import process_alive
from peer.call_media import CallMedia, MediaOptions
from peer.devices import DeviceKind, Facing
from peer.media import identify_pattern
from protocol.enums import AudioInterruption, CameraFacing, LiveSupportStatus, Mode, SessionState
from protocol.messages import SignalCandidate, SignalSdp
from tech_console.client import ConsoleSession
from tests.conftest import Lab
from tests.integration.harness import Pair, make_pair, until

#: Small frames keep two VP8 encoders and decoders light on a 2-core machine.
SMALL = ["--fake-media", "--video-size", "320x240"]
#: RMS of the synthetic tone after Opus is far above this; silence far below.
SOUND = 0.02
SILENCE = 0.005


@pytest.fixture
async def pair(lab: Lab, tmp_path: Path) -> AsyncIterator[Pair]:
    async with make_pair(lab, tmp_path, session_args=SMALL) as made:
        made.console.media_options = MediaOptions(width=320, height=240)
        yield made


def media_of(session: ConsoleSession) -> CallMedia:
    media = session.media
    assert media is not None
    return media


async def start_call(pair: Pair, mode: Mode) -> ConsoleSession:
    pair.decision[0] = mode
    session = await pair.console.start_session(pair.device_id, mode, "ticket CALL-1")
    await asyncio.wait_for(pair.answers.get(), 5)
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: session.consent_verified)
    return session


async def close(pair: Pair, session: ConsoleSession) -> None:
    host = pair.agent.session.host if pair.agent.session is not None else None
    await pair.console.close_session(session.session_id)
    await pair.console.wait_session(session, [SessionState.CLOSED])
    await until(lambda: pair.agent.session is None)
    if host is not None:
        await asyncio.wait_for(host.exited.wait(), 10)


def level(session: ConsoleSession) -> float:
    audio_in = media_of(session).audio_in
    return audio_in.level if audio_in is not None else 0.0


def facing_seen(session: ConsoleSession) -> Facing | None:
    video_in = media_of(session).video_in
    if video_in is None or video_in.latest is None:
        return None
    return identify_pattern(video_in.latest)


def sends_silence(media: CallMedia) -> bool:
    return media.audio_track is not None and media.audio_track.muted


def peer(session: ConsoleSession) -> Any:
    return media_of(session).peer_state


async def test_voice_call_carries_sound_both_ways(pair: Pair) -> None:
    session = await start_call(pair, Mode.VOICE)
    media = media_of(session)
    assert media.video_track is None, "a voice call sends no video"
    # The device's tone, Opus-encoded in the session process, decoded here.
    await until(lambda: level(session) > SOUND)
    # And the technician's tone decoded in the session process.
    report = await pair.until_device(
        lambda r: (
            (r["stats"] or {}).get("audio_received") is not None
            and r["stats"]["audio_received"]["packets"] > 25
        )
    )
    assert report["local_media"]["microphone"] is True
    assert report["local_media"]["camera"] is False
    # Played, not only decoded: both ends hand the sound to their audio output.
    await pair.until_device(lambda r: (r["audio_played_frames"] or 0) > 25)
    assert (media.counters()["audio_played_frames"] or 0) > 25
    assert report["stats"]["video_received"] is None
    assert peer(session).microphone is True
    await close(pair, session)


async def test_video_call_frames_decoded_both_ways_with_stats(pair: Pair) -> None:
    session = await start_call(pair, Mode.VIDEO)
    media = media_of(session)
    await until(lambda: media.video_in is not None and media.video_in.frames > 10)
    assert facing_seen(session) is Facing.FRONT
    assert media.video_in is not None
    assert (media.video_in.width, media.video_in.height) == (320, 240)
    await until(lambda: level(session) > SOUND)

    report = await pair.until_device(
        lambda r: (
            (r["stats"] or {}).get("video_received") is not None
            and (r["stats"]["video_received"]["fps"] or 0) > 5
            and r["stats"]["rtt_ms"] is not None
        )
    )
    device_stats = report["stats"]
    assert device_stats["route"] == "direct"
    assert device_stats["video_received"]["width"] == 320
    assert device_stats["video_sent"]["packets"] > 0

    async def console_stats_ready() -> dict[str, Any]:
        while True:
            call = session.call
            assert call is not None
            stats: dict[str, Any] = dict(await call.stats())
            if stats["rtt_ms"] is not None and (stats["video_sent"] or {}).get("bitrate_kbps"):
                return stats
            await asyncio.sleep(0.2)

    stats = await asyncio.wait_for(console_stats_ready(), 15)
    assert stats["route"] == "direct"
    for key in ("audio_sent", "audio_received", "video_sent", "video_received"):
        assert stats[key] is not None, key
        assert stats[key]["packets"] > 0, key
    assert stats["video_sent"]["bitrate_kbps"] > 0
    assert stats["video_received"]["fps"] > 0
    assert stats["video_received"]["packets_lost"] is not None
    assert stats["video_received"]["jitter_ms"] is not None
    await close(pair, session)


async def test_every_device_control_is_seen_by_the_console(pair: Pair) -> None:
    session = await start_call(pair, Mode.VIDEO)
    media = media_of(session)
    await until(lambda: peer(session) is not None and level(session) > SOUND)
    await until(lambda: facing_seen(session) is Facing.FRONT)

    # Mute: the console is told, and the sound really stops.
    await pair.agent.control(Control.MUTE)
    await until(lambda: peer(session).microphone is False)
    await until(lambda: level(session) < SILENCE)
    await pair.agent.control(Control.UNMUTE)
    await until(lambda: peer(session).microphone is True and level(session) > SOUND)

    # Camera off: told, and frames stop (observing an absence needs a window).
    await pair.agent.control(Control.CAMERA_OFF)
    await until(lambda: peer(session).camera is False)
    assert media.video_in is not None
    frames = media.video_in.frames
    await asyncio.sleep(0.6)
    assert media.video_in.frames <= frames + 3, "frames kept coming with the camera off"
    report = await pair.device_report()
    assert "Synthetic front camera" not in report["open_devices"], "camera not released"
    await pair.agent.control(Control.CAMERA_ON)
    await until(lambda: peer(session).camera is True)
    await until(lambda: media.video_in is not None and media.video_in.frames > frames + 10)

    # Switch camera: the back camera's picture arrives, and its name.
    await pair.agent.control(Control.SWITCH_CAMERA)
    await until(lambda: peer(session).camera_facing is CameraFacing.BACK)
    await until(lambda: facing_seen(session) is Facing.BACK)
    report = await pair.device_report()
    assert "Synthetic front camera" not in report["open_devices"]

    # Audio output: the device now plays through another output and says which.
    before = peer(session).audio_output
    await pair.agent.control(Control.AUDIO_OUTPUT)
    await until(lambda: peer(session).audio_output not in ("", before))
    report = await pair.device_report()
    assert report["local_media"]["audio_output"] == peer(session).audio_output

    # Hang up: the call ends on both sides, the session stays, the devices are released.
    await pair.agent.control(Control.HANG_UP)
    await pair.console.wait_session(session, [SessionState.CALL_ENDED])
    await until(lambda: session.call is None)
    report = await pair.until_device(lambda r: r["calls"] == 1 and r["call_state"] is None)
    assert report["open_devices"] == []
    assert pair.agent.status is LiveSupportStatus.CONNECTED
    await close(pair, session)


async def test_hang_up_then_resume_without_a_new_prompt(pair: Pair) -> None:
    session = await start_call(pair, Mode.VIDEO)
    first_receipt = session.consent
    await until(lambda: facing_seen(session) is Facing.FRONT)
    await pair.agent.hang_up()
    await pair.console.wait_session(session, [SessionState.CALL_ENDED])

    await pair.agent.resume()
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: session.consent is not first_receipt and session.consent_verified)
    media = media_of(session)
    await until(lambda: media.video_in is not None and media.video_in.frames > 5)
    await until(lambda: level(session) > SOUND)
    assert pair.answers.empty(), "resuming must not prompt the device user again"
    report = await pair.until_device(lambda r: r["calls"] == 2 and r["chat_open"])
    assert report["local_media"]["camera"] is True
    await close(pair, session)


async def test_phone_call_mutes_the_call_both_ways_and_both_sides_know(pair: Pair) -> None:
    session = await start_call(pair, Mode.VOICE)
    media = media_of(session)
    await until(lambda: level(session) > SOUND)
    await pair.until_device(lambda r: (r["stats"] or {}).get("audio_received") is not None)

    await pair.agent.audio_interruption(AudioInterruption.PHONE_CALL)
    # The console is told why, and sends silence itself.
    await until(lambda: peer(session).interruption is AudioInterruption.PHONE_CALL)
    assert media.interruption is AudioInterruption.PHONE_CALL
    assert sends_silence(media)
    assert media.state().microphone is False
    await until(lambda: level(session) < SILENCE)
    # The device plays nothing, sends silence, and knows the console is silent too.
    report = await pair.until_device(
        lambda r: (
            r["audio_paused"]
            and r["peer_media"] is not None
            and r["peer_media"]["microphone"] is False
        )
    )
    assert report["local_media"]["interruption"] == "phone_call"
    assert report["local_media"]["microphone"] is False

    await pair.agent.audio_interruption(AudioInterruption.NONE)
    await until(lambda: peer(session).interruption is AudioInterruption.NONE)
    await until(lambda: level(session) > SOUND)
    assert not sends_silence(media), "the technician's own choice (unmuted) comes back"
    report = await pair.until_device(
        lambda r: not r["audio_paused"] and r["peer_media"]["microphone"] is True
    )
    await close(pair, session)


async def test_technician_close_ends_the_session_process_and_releases_devices(
    pair: Pair,
) -> None:
    session = await start_call(pair, Mode.VIDEO)
    report = await pair.until_device(lambda r: len(r["open_devices"]) >= 2)
    assert "Synthetic front camera" in report["open_devices"]
    assert pair.agent.session is not None
    host = pair.agent.session.host
    assert host.pid is not None
    assert process_alive(host.pid)
    await close(pair, session)
    assert host.exited.is_set()
    assert not process_alive(host.pid)
    assert host.returncode == 0
    assert host.ended is not None
    assert host.ended.media_released
    # And the console released its own camera and microphone with the call.
    assert pair.console.media_devices.open_devices() == []


async def test_a_server_gone_past_the_grace_period_ends_the_session(pair: Pair, lab: Lab) -> None:
    pair.agent.server_grace_s = 1.0
    session = await start_call(pair, Mode.VIDEO)
    media = media_of(session)
    assert pair.agent.session is not None
    host = pair.agent.session.host
    await lab.server.stop()
    # Peer to peer, the call goes on without the server for now.
    await until(lambda: not pair.agent.online)
    assert media.video_in is not None
    frames = media.video_in.frames
    await until(lambda: media.video_in is not None and media.video_in.frames > frames + 5)
    # Past the grace period the device ends the session and releases its devices.
    await asyncio.wait_for(host.exited.wait(), 10)
    await until(lambda: pair.agent.session is None)
    assert host.ended is not None
    assert host.ended.media_released


async def test_technician_camera_off_and_on(pair: Pair) -> None:
    session = await start_call(pair, Mode.VIDEO)
    media = media_of(session)
    await pair.until_device(
        lambda r: (
            (r["stats"] or {}).get("video_received") is not None
            and r["stats"]["video_received"]["packets"] > 0
        )
    )
    media.set_camera(False)
    assert DeviceKind.CAMERA not in {d.kind for d in pair.console.media_devices.open_devices()}
    await pair.until_device(lambda r: r["peer_media"]["camera"] is False)
    media.set_camera(True)
    await pair.until_device(lambda r: r["peer_media"]["camera"] is True)
    await close(pair, session)


async def test_nothing_is_sent_or_opened_before_acceptance(pair: Pair) -> None:
    sent: list[str] = []
    original_send = pair.agent.client.send

    async def spy(message: Any) -> None:
        sent.append(message.TYPE)
        await original_send(message)

    pair.agent.client.send = spy  # type: ignore[method-assign]
    release = asyncio.Event()
    seen_during_prompt: dict[str, Any] = {}

    async def slow_user(invite: Any) -> Mode | None:
        # While the prompt is up: the session process may exist (warming up), but no
        # signal has left the device and the console has no call yet.
        seen_during_prompt["sent"] = list(sent)
        seen_during_prompt["console_call"] = pair.console.sessions[invite.session_id].call
        seen_during_prompt["session"] = pair.agent.session
        await release.wait()
        return Mode.VIDEO

    pair.agent.invite_handler = slow_user
    session = await pair.console.start_session(pair.device_id, Mode.VIDEO, "ticket CALL-9")
    await until(lambda: "sent" in seen_during_prompt)
    assert not {SignalSdp.TYPE, SignalCandidate.TYPE} & set(seen_during_prompt["sent"])
    assert seen_during_prompt["console_call"] is None
    assert seen_during_prompt["session"] is None
    release.set()
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    assert SignalSdp.TYPE in sent
    await close(pair, session)


async def test_a_rejected_invite_ends_the_warm_process(pair: Pair) -> None:
    pair.decision[0] = None
    session = await pair.console.start_session(pair.device_id, Mode.VIDEO, "ticket CALL-3")
    await pair.console.wait_session(session, [SessionState.REJECTED])
    await until(lambda: len(pair.agent.hosts) == 1 and pair.agent.hosts[0].exited.is_set())
    host = pair.agent.hosts[0]
    assert host.pid is not None
    assert not process_alive(host.pid)
    assert host.ended is None, "the process never began a session"
    assert pair.agent.session is None


async def test_a_prewarmed_process_takes_the_call_and_another_is_made_ready(
    lab: Lab, tmp_path: Path
) -> None:
    async with make_pair(lab, tmp_path, session_args=SMALL, prewarm=True) as pair:
        pair.console.media_options = MediaOptions(width=320, height=240)
        agent = pair.agent
        await until(lambda: agent._spare is not None and agent._spare.pid is not None)
        spare = agent._spare
        assert spare is not None
        session = await start_call(pair, Mode.VIDEO)
        assert agent.session is not None
        assert agent.session.host is spare, "the call runs in the process made ready"
        media = media_of(session)
        await until(lambda: media.video_in is not None and media.video_in.frames > 5)
        await close(pair, session)
        assert spare.ended is not None
        assert spare.ended.media_released
        # A fresh one (not the old one again) waits for the next invite.
        await until(lambda: agent._spare is not None and agent._spare.pid is not None)
        assert agent._spare is not spare


async def test_a_crashed_session_process_hangs_up_and_the_user_can_resume(pair: Pair) -> None:
    session = await start_call(pair, Mode.VOICE)
    assert pair.agent.session is not None
    crashed = pair.agent.session.host
    assert crashed.process is not None
    crashed.process.kill()
    await pair.console.wait_session(session, [SessionState.CALL_ENDED])
    await until(lambda: pair.agent.session is not None and pair.agent.session.host is not crashed)
    await pair.agent.resume()
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: level(session) > SOUND)
    assert pair.answers.empty(), "no new prompt"
    await close(pair, session)
