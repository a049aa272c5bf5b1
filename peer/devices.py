"""What a media device is, and what a backend that opens them must do.

Two backends implement :class:`MediaBackend`: the synthetic one (``peer.media``: a
moving test pattern with a clock, a tone, a null speaker, for machines without devices,
like a browser's fake-media-device switch) and the Qt Multimedia one
(``peer.qt_media``: real cameras, microphones and audio outputs).

The contract every backend keeps:

- ``open_*`` acquires the device at once (a camera light goes on) and ``close()`` of
  what it returned releases it at once; ``open_devices()`` lists what is held right now,
  so tests can prove that a session released its camera and microphone.
- Sources pace themselves in real time: ``read()`` returns the next frame when it is
  due, so a track that forwards them needs no clock of its own.
- Frames live in memory only; nothing is ever written to disk.
- Video frames are ``av.VideoFrame`` (any size; ``yuv420p`` preferred, what the encoders
  take); audio frames are ``av.AudioFrame`` of :data:`AUDIO_RATE` Hz, packed ``s16``,
  :data:`AUDIO_CHANNELS` channel(s), :data:`AUDIO_SAMPLES` samples (20 ms) each.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # av is only needed by the code that touches frames
    import av

    from peer.chat import Listeners

AUDIO_RATE = 48_000
AUDIO_CHANNELS = 1
AUDIO_SAMPLES = 960  # 20 ms at 48 kHz: one Opus frame


class DeviceKind(StrEnum):
    CAMERA = "camera"
    MICROPHONE = "microphone"
    SPEAKER = "speaker"


class Facing(StrEnum):
    """Where a camera looks, when the platform says (tablets: front and back)."""

    FRONT = "front"
    BACK = "back"
    EXTERNAL = "external"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class MediaDevice:
    #: Stable within its backend, e.g. ``"synthetic:camera:front"``.
    device_id: str
    #: As shown to the user ("FaceTime HD Camera", "Headset").
    name: str
    kind: DeviceKind
    facing: Facing = Facing.UNKNOWN
    synthetic: bool = False
    #: The platform's default device of its kind.
    is_default: bool = False


class SourceClosed(Exception):
    """``read()`` on a source that was closed (its device is released)."""


class VideoSource(Protocol):
    @property
    def device(self) -> MediaDevice: ...

    @property
    def closed(self) -> bool: ...

    async def read(self) -> av.VideoFrame:
        """The next frame, when it is due. Raises :class:`SourceClosed` once closed."""
        ...

    def close(self) -> None:
        """Release the device at once. Idempotent."""
        ...


class AudioSource(Protocol):
    @property
    def device(self) -> MediaDevice: ...

    @property
    def closed(self) -> bool: ...

    async def read(self) -> av.AudioFrame:
        """The next 20 ms, when it is due. Raises :class:`SourceClosed` once closed."""
        ...

    def close(self) -> None: ...


class AudioOutput(Protocol):
    @property
    def device(self) -> MediaDevice: ...

    @property
    def closed(self) -> bool: ...

    def write(self, frame: av.AudioFrame) -> None:
        """Play one frame. Never blocks: a backend that falls behind drops."""
        ...

    def close(self) -> None: ...


class MediaBackend(Protocol):
    #: "synthetic" or "qt".
    name: str
    #: Fired with the kind whose device list changed (plugged in, removed).
    changed: Listeners[DeviceKind]

    def devices(self, kind: DeviceKind) -> list[MediaDevice]: ...

    def open_camera(
        self, device: MediaDevice, *, width: int, height: int, fps: int
    ) -> VideoSource: ...

    def open_microphone(self, device: MediaDevice) -> AudioSource: ...

    def open_speaker(self, device: MediaDevice) -> AudioOutput: ...

    def open_devices(self) -> list[MediaDevice]:
        """Devices held open right now (camera, microphone, speaker)."""
        ...

    def close(self) -> None:
        """Close everything still open."""
        ...
