"""CallMedia without a network: which devices each mode opens, every control's effect
on the tracks and on the state the peer is told, interruptions both ways, devices
that come and go, and release on close. Synthetic devices; no display."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from peer.call_media import CallMedia, MediaOptions
from peer.devices import DeviceKind, MediaDevice
from peer.media import (
    SYNTHETIC_BACK,
    SYNTHETIC_FRONT,
    SYNTHETIC_HEADSET,
    SYNTHETIC_SPEAKER,
    SYNTHETIC_TONE,
    MediaDevices,
)
from protocol.chat import MediaState
from protocol.enums import AudioInterruption, CameraFacing, Mode


@pytest.fixture
async def devices() -> AsyncIterator[MediaDevices]:
    made = MediaDevices(None, fake=True)
    yield made
    made.close()


def opened(devices: MediaDevices) -> set[str]:
    return {d.device_id for d in devices.open_devices()}


# Read through functions: mypy would otherwise narrow the attribute after one assert.
def silent(media: CallMedia) -> bool:
    return media.audio_track is not None and media.audio_track.muted


def camera(media: CallMedia) -> MediaDevice | None:
    return media.camera


def interruption(media: CallMedia) -> AudioInterruption:
    return media.interruption


def last(states: list[MediaState]) -> MediaState:
    return states[-1]


def watch(media: CallMedia) -> list[MediaState]:
    states: list[MediaState] = []
    media.local_listeners.add(states.append)
    return states


async def test_each_mode_opens_only_what_it_needs(devices: MediaDevices) -> None:
    voice = CallMedia(devices, Mode.VOICE)
    assert [t.kind for t in voice.open()] == ["audio"]
    assert opened(devices) == {SYNTHETIC_TONE.device_id, SYNTHETIC_SPEAKER.device_id}
    assert voice.state() == MediaState(
        microphone=True, camera=False, audio_output=SYNTHETIC_SPEAKER.name
    )
    with pytest.raises(ValueError, match="no video"):
        voice.set_camera(False)
    await voice.close()
    assert voice.released

    video = CallMedia(devices, Mode.VIDEO, MediaOptions(width=320, height=240))
    assert sorted(t.kind for t in video.open()) == ["audio", "video"]
    assert SYNTHETIC_FRONT.device_id in opened(devices)
    state = video.state()
    assert state.camera is True
    assert state.camera_name == SYNTHETIC_FRONT.name
    assert state.camera_facing is CameraFacing.FRONT
    with pytest.raises(RuntimeError):
        video.open()
    await video.close()
    await video.close()  # idempotent
    assert video.released
    assert opened(devices) == set()


async def test_nothing_is_opened_before_the_call_asks(devices: MediaDevices) -> None:
    media = CallMedia(devices, Mode.VIDEO)
    assert opened(devices) == set()
    assert media.audio_track is None
    assert media.video_track is None
    await media.close()


async def test_controls_change_tracks_and_the_state_told_to_the_peer(
    devices: MediaDevices,
) -> None:
    media = CallMedia(devices, Mode.VIDEO, MediaOptions(width=320, height=240))
    media.open()
    states = watch(media)
    assert media.audio_track is not None
    assert media.video_track is not None

    media.set_muted(True)
    assert silent(media)
    assert last(states).microphone is False
    media.set_muted(False)
    assert not silent(media)
    assert last(states).microphone is True

    media.set_camera(False)
    assert media.video_track.source is None
    assert SYNTHETIC_FRONT.device_id not in opened(devices), "camera off releases it"
    assert last(states).camera is False
    assert last(states).camera_name == ""
    media.set_camera(True)
    assert SYNTHETIC_FRONT.device_id in opened(devices)
    assert last(states).camera is True

    assert media.switch_camera() == SYNTHETIC_BACK
    assert SYNTHETIC_BACK.device_id in opened(devices)
    assert SYNTHETIC_FRONT.device_id not in opened(devices), "one camera at a time"
    assert last(states).camera_facing is CameraFacing.BACK
    assert media.switch_camera(SYNTHETIC_FRONT) == SYNTHETIC_FRONT
    assert last(states).camera_facing is CameraFacing.FRONT
    with pytest.raises(ValueError, match="not a camera"):
        media.switch_camera(SYNTHETIC_TONE)

    media.set_audio_output(SYNTHETIC_HEADSET)
    assert last(states).audio_output == SYNTHETIC_HEADSET.name
    assert SYNTHETIC_SPEAKER.device_id not in opened(devices)
    assert SYNTHETIC_HEADSET.device_id in opened(devices)
    with pytest.raises(ValueError, match="not an audio output"):
        media.set_audio_output(SYNTHETIC_BACK)
    count = len(states)
    media.set_audio_output(SYNTHETIC_HEADSET)  # no change, nothing told
    assert len(states) == count
    await media.close()
    assert media.released


async def test_interruptions_mute_both_ways_and_restore_the_users_choice(
    devices: MediaDevices,
) -> None:
    media = CallMedia(devices, Mode.VOICE)
    media.open()
    states = watch(media)
    assert media.audio_track is not None

    # Our own phone call: silence, and the peer is told why.
    media.set_interruption(AudioInterruption.PHONE_CALL)
    assert silent(media)
    assert last(states).interruption is AudioInterruption.PHONE_CALL
    assert last(states).microphone is False
    media.set_interruption(AudioInterruption.NONE)
    assert not silent(media)
    assert last(states).microphone is True

    # The peer's phone call: we go silent too, and say our microphone is off.
    media.set_muted(True)
    media.apply_peer_state(
        MediaState(microphone=False, camera=False, interruption=AudioInterruption.PHONE_CALL)
    )
    assert interruption(media) is AudioInterruption.PHONE_CALL
    assert silent(media)
    media.apply_peer_state(MediaState(microphone=True, camera=False))
    assert interruption(media) is AudioInterruption.NONE
    assert silent(media), "the user had muted: it stays muted"
    media.set_muted(False)
    assert not silent(media)
    await media.close()


async def test_a_device_that_goes_away_is_replaced_and_the_peer_told(
    devices: MediaDevices,
) -> None:
    media = CallMedia(devices, Mode.VIDEO, MediaOptions(width=320, height=240))
    media.open()
    states = watch(media)
    assert media.switch_camera() == SYNTHETIC_BACK

    devices.synthetic.unplug(SYNTHETIC_BACK.device_id)
    assert media.camera == SYNTHETIC_FRONT
    assert last(states).camera_facing is CameraFacing.FRONT
    assert SYNTHETIC_FRONT.device_id in opened(devices)

    devices.synthetic.unplug(SYNTHETIC_FRONT.device_id)
    assert camera(media) is None
    assert last(states).camera is False, "no camera left: the peer sees the camera off"

    usb = MediaDevice(
        device_id="synthetic:camera:usb", name="USB camera", kind=DeviceKind.CAMERA, synthetic=True
    )
    devices.synthetic.plug(usb)
    # The user never turned the camera off: the first camera to appear is used.
    assert camera(media) == usb
    assert last(states).camera is True
    assert last(states).camera_name == "USB camera"

    media.set_audio_output(SYNTHETIC_HEADSET)
    devices.synthetic.unplug(SYNTHETIC_HEADSET.device_id)
    assert media.speaker == SYNTHETIC_SPEAKER
    assert last(states).audio_output == SYNTHETIC_SPEAKER.name
    await media.close()
    assert media.released
