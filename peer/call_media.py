"""The media of one end of a call: devices, local tracks, controls, what the peer says.

``CallMedia`` is Qt-free and shared by both ends. It opens the devices only when the
call asks for its tracks (after the device user accepted; the console only offers
after that too), and closes every one of them when the call ends, so a camera light
goes off with the call.

Devices come and go during a call: when the camera, microphone or audio output in use
disappears, the call moves to the platform's default of that kind (or turns that
device off when none is left) and tells the peer, as if the user had switched.

The controls (mute, camera on/off, switch camera, audio output) each change what is
sent *and* produce a new :class:`~protocol.chat.MediaState` that the call sends to
the peer on the data channel, so the other side sees both the effect (silence, no
frames, another camera) and the reason.

A platform audio interruption (a phone call on the device) mutes Live Support audio
both ways: the interrupted end sends silence and plays nothing, and tells the peer,
whose end then does the same until the interruption ends. The user's own mute choice
is kept apart and comes back afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.chat import Listeners
from peer.devices import DeviceKind, MediaDevice
from peer.media import (
    AudioReceiver,
    DisplayFrame,
    LocalAudioTrack,
    LocalVideoTrack,
    MediaDevices,
    VideoReceiver,
)
from protocol.chat import MediaState
from protocol.enums import AudioInterruption, CameraFacing, Mode

if TYPE_CHECKING:
    from av.frame import Frame
    from av.packet import Packet

    from peer.devices import AudioOutput, VideoSource

log = logging.getLogger(__name__)

VIDEO_CODECS = ("VP8", "H264")


#: The peer's picture is converted to at most this size for a view.
DISPLAY_BOX = (1280, 720)


@dataclasses.dataclass(frozen=True, slots=True)
class MediaOptions:
    """How one end captures: the size and rate asked of the camera, the preferred video
    codec (the offerer's preference decides), and whether the camera starts on."""

    width: int = 640
    height: int = 480
    fps: int = 30
    video_codec: str = "VP8"
    camera_on: bool = True

    def __post_init__(self) -> None:
        if self.video_codec not in VIDEO_CODECS:
            raise ValueError(f"video codec must be one of {VIDEO_CODECS}")


def _facing(device: MediaDevice | None) -> CameraFacing:
    if device is None:
        return CameraFacing.UNKNOWN
    try:
        return CameraFacing(device.facing.value)
    except ValueError:
        return CameraFacing.UNKNOWN


class ConnectionTrack(MediaStreamTrack):
    """One peer connection's view of a track of the call. aiortc's sender stops the
    track it sends when its connection closes; it stops this stand-in, and the call's
    own track (camera or microphone still open) goes on for the next connection."""

    def __init__(self, track: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = track.kind
        self.track = track

    async def recv(self) -> Frame | Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.track.recv()


class CallMedia:
    """Devices and tracks of one call end, for one accepted mode."""

    def __init__(
        self, devices: MediaDevices, mode: Mode, options: MediaOptions | None = None
    ) -> None:
        self.devices = devices
        self.mode = mode
        self.options = options or MediaOptions()
        self.audio_track: LocalAudioTrack | None = None
        self.video_track: LocalVideoTrack | None = None
        self.camera: MediaDevice | None = None
        self.microphone: MediaDevice | None = None
        self.speaker: MediaDevice | None = None
        self.audio_in: AudioReceiver | None = None
        self.video_in: VideoReceiver | None = None
        #: The peer's media as it last told us (None until it did).
        self.peer_state: MediaState | None = None
        #: Fired with our own new state after every change (the call sends it).
        self.local_listeners: Listeners[MediaState] = Listeners()
        #: Fired with the peer's state each time it tells us.
        self.peer_listeners: Listeners[MediaState] = Listeners()
        #: Fired with a receiver's kind ("audio", "video") when the peer's track arrives.
        self.remote_listeners: Listeners[str] = Listeners()

        self._user_muted = False
        self._camera_on = self.options.camera_on
        self._local_interruption = AudioInterruption.NONE
        self._output: AudioOutput | None = None
        self._opened = False
        self._closed = False
        self._unsubscribe = devices.changed.add(self._on_devices_changed)

    # -- what the mode carries --------------------------------------------------------

    @property
    def has_audio(self) -> bool:
        return self.mode in (Mode.VOICE, Mode.VIDEO)

    @property
    def has_video(self) -> bool:
        return self.mode is Mode.VIDEO

    # -- opening and closing ----------------------------------------------------------

    def open(self) -> list[MediaStreamTrack]:
        """Open the devices this mode needs and return the tracks to send. Called once
        by the call when it makes its offer or answer, never before acceptance."""
        if self._opened or self._closed:
            raise RuntimeError("the call's media was already opened")
        self._opened = True
        tracks: list[MediaStreamTrack] = []
        if self.has_audio:
            self.microphone = self.devices.default(DeviceKind.MICROPHONE)
            source = self.devices.open_microphone(self.microphone) if self.microphone else None
            self.audio_track = LocalAudioTrack(source)
            tracks.append(self.audio_track)
            self.speaker = self.devices.default(DeviceKind.SPEAKER)
            if self.speaker is not None:
                self._output = self.devices.open_speaker(self.speaker)
                if self.audio_in is not None:
                    # The answerer hears of the peer's track (setRemoteDescription)
                    # before it opens its own devices: give the receiver its output.
                    self.audio_in.set_output(self._output)
        if self.has_video:
            self.camera = self.devices.default(DeviceKind.CAMERA)
            self.video_track = LocalVideoTrack(self._open_camera() if self._camera_on else None)
            tracks.append(self.video_track)
        self._apply_audio_gates()
        return tracks

    @property
    def opened(self) -> bool:
        return self._opened

    def tracks(self) -> list[MediaStreamTrack]:
        """What one peer connection sends: a stand-in for each open track
        (``ConnectionTrack``), so that the next connection of the same call (after a
        lost path) sends the same tracks: the devices stay open, nothing restarts."""
        if not self._opened or self._closed:
            raise RuntimeError("the call's media is not open")
        return [ConnectionTrack(t) for t in (self.audio_track, self.video_track) if t]

    async def detach_remote(self) -> None:
        """Stop receiving the peer's tracks of a connection that is gone; the next
        connection's tracks attach afresh (``attach_remote``)."""
        receivers, self.audio_in, self.video_in = (self.audio_in, self.video_in), None, None
        for receiver in receivers:
            if receiver is not None:
                await receiver.stop()
        if self._output is not None and self._output.closed and self.speaker is not None:
            # The audio receiver owns its output and closed it with itself: the next
            # connection's sound plays on the same speaker, opened again.
            self._output = self.devices.open_speaker(self.speaker)

    def _open_camera(self) -> VideoSource | None:
        if self.camera is None:
            return None
        o = self.options
        return self.devices.open_camera(self.camera, width=o.width, height=o.height, fps=o.fps)

    def route_display(
        self,
        remote: Callable[[DisplayFrame], None],
        local: Callable[[DisplayFrame], None],
        box: tuple[int, int] = DISPLAY_BOX,
    ) -> None:
        """Send the peer's picture (scaled to fit ``box``) and our own camera's preview
        to a view, once their tracks exist; a track already routed is left alone. Both
        call windows call this on every change, as tracks come after the call starts."""
        if self.video_in is not None and self.video_in.on_display is None:
            self.video_in.display_size = box
            self.video_in.on_display = remote
        if self.video_track is not None and self.video_track.preview.on_display is None:
            self.video_track.preview.on_display = local

    def attach_remote(self, track: MediaStreamTrack) -> None:
        """A track from the peer (aiortc's "track" event): receive and decode it."""
        if self._closed:
            return
        if track.kind == "audio" and self.audio_in is None:
            self.audio_in = AudioReceiver(track, self._output)
            self.audio_in.start()
            self._apply_audio_gates()
        elif track.kind == "video" and self.video_in is None:
            self.video_in = VideoReceiver(track)
            self.video_in.start()
        else:
            log.warning("ignored an unexpected %s track from the peer", track.kind)
            return
        self.remote_listeners.fire(track.kind)

    async def close(self) -> None:
        """Stop receiving and sending and release every device at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        # Tracks first: stopping them closes the camera and microphone sources.
        for track in (self.audio_track, self.video_track):
            if track is not None:
                track.stop()
        if self._output is not None:
            self._output.close()
            self._output = None
        for receiver in (self.audio_in, self.video_in):
            if receiver is not None:
                await receiver.stop()
        self.peer_state = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def released(self) -> bool:
        """No camera, microphone or speaker of this call is held any more."""
        return not self.devices.open_devices()

    def _on_devices_changed(self, kind: DeviceKind) -> None:
        """A device was plugged in or removed: if ours is gone, move to the default."""
        if self._closed or not self._opened:
            return
        present = self.devices.devices(kind)
        if kind is DeviceKind.CAMERA and self.video_track is not None:
            if self.camera in present:
                return
            self.camera = self.devices.default(kind)
            self.video_track.set_source(self._open_camera() if self._camera_on else None)
        elif kind is DeviceKind.MICROPHONE and self.audio_track is not None:
            if self.microphone in present:
                return
            self.microphone = self.devices.default(kind)
            mic = self.microphone
            self.audio_track.set_source(self.devices.open_microphone(mic) if mic else None)
        elif kind is DeviceKind.SPEAKER and self.has_audio:
            if self.speaker in present:
                return
            self.speaker = self.devices.default(kind)
            old = self._output
            self._output = self.devices.open_speaker(self.speaker) if self.speaker else None
            if self.audio_in is not None:
                self.audio_in.set_output(self._output)
            if old is not None and not old.closed:
                old.close()
        else:
            return
        log.info("the %s in use went away; now using the default", kind.value)
        self._changed()

    # -- controls ---------------------------------------------------------------------

    @property
    def muted(self) -> bool:
        """The user's own mute choice (an interruption mutes on top of it)."""
        return self._user_muted

    @property
    def camera_on(self) -> bool:
        return self._camera_on

    @property
    def interruption(self) -> AudioInterruption:
        """Ours if we have one, else the peer's: either mutes the call both ways."""
        if self._local_interruption is not AudioInterruption.NONE:
            return self._local_interruption
        if self.peer_state is not None:
            return self.peer_state.interruption
        return AudioInterruption.NONE

    def set_muted(self, muted: bool) -> None:
        self._require_audio()
        self._user_muted = muted
        self._apply_audio_gates()
        self._changed()

    def set_camera(self, on: bool) -> None:
        """Camera on or off: off closes the camera (its light goes off) and sends
        nothing until it is back on."""
        self._require_video()
        assert self.video_track is not None
        if on == self._camera_on:
            return
        self._camera_on = on
        self.video_track.set_source(self._open_camera() if on else None)
        self._changed()

    def switch_camera(self, device: MediaDevice | None = None) -> MediaDevice | None:
        """Use ``device``, or the next camera in the list; returns the camera now used."""
        self._require_video()
        assert self.video_track is not None
        chosen = device or self.devices.next_camera(self.camera)
        if chosen is None or chosen == self.camera:
            return self.camera
        if chosen.kind is not DeviceKind.CAMERA:
            raise ValueError(f"{chosen.name} is not a camera")
        # Close the old one before opening the new: a phone cannot open both.
        self.video_track.set_source(None)
        self.camera = chosen
        if self._camera_on:
            self.video_track.set_source(self._open_camera())
        self._changed()
        return chosen

    def set_audio_output(self, device: MediaDevice) -> None:
        self._require_audio()
        if device.kind is not DeviceKind.SPEAKER:
            raise ValueError(f"{device.name} is not an audio output")
        if device == self.speaker:
            return
        old, self._output = self._output, self.devices.open_speaker(device)
        self.speaker = device
        if self.audio_in is not None:
            self.audio_in.set_output(self._output)
        if old is not None and not old.closed:
            old.close()
        self._changed()

    def set_interruption(self, interruption: AudioInterruption) -> None:
        """The platform's audio interruption on this end began or ended."""
        if interruption is self._local_interruption:
            return
        self._local_interruption = interruption
        self._apply_audio_gates()
        self._changed()

    def apply_peer_state(self, state: MediaState) -> None:
        """What the peer told us about its media (from the data channel)."""
        before = self.interruption
        self.peer_state = state
        self._apply_audio_gates()
        self.peer_listeners.fire(state)
        if self.interruption is not before:
            # Our own microphone went silent (or came back) because of the peer.
            self._changed()

    def _apply_audio_gates(self) -> None:
        interrupted = self.interruption is not AudioInterruption.NONE
        if self.audio_track is not None:
            self.audio_track.muted = self._user_muted or interrupted
        if self.audio_in is not None:
            self.audio_in.paused = interrupted

    def _require_audio(self) -> None:
        if not self.has_audio:
            raise ValueError(f"a {self.mode.value} call has no audio")

    def _require_video(self) -> None:
        if not self.has_video:
            raise ValueError(f"a {self.mode.value} call has no video")

    # -- state ------------------------------------------------------------------------

    def state(self) -> MediaState:
        """Our media as the peer should see it."""
        track = self.video_track
        sending_video = track is not None and self._camera_on and track.source is not None
        return MediaState(
            microphone=self.audio_track is not None and not self.audio_track.muted,
            camera=sending_video,
            camera_name=(self.camera.name[:128] if self.camera and sending_video else ""),
            camera_facing=_facing(self.camera) if sending_video else CameraFacing.UNKNOWN,
            audio_output=self.speaker.name[:128] if self.speaker else "",
            interruption=self._local_interruption,
        )

    def _changed(self) -> None:
        if not self._closed:
            self.local_listeners.fire(self.state())

    def counters(self) -> dict[str, Any]:
        """Frame rates, sizes and levels of each direction, for the call's stats."""
        sent_video = self.video_track
        video_in = self.video_in
        return {
            "video_sent": None
            if sent_video is None
            else {
                "frames": sent_video.frames_sent,
                "fps": sent_video.fps,
                "width": sent_video.width,
                "height": sent_video.height,
            },
            "video_received": None
            if video_in is None
            else {
                "frames": video_in.frames,
                "fps": video_in.fps,
                "width": video_in.width,
                "height": video_in.height,
            },
            "audio_sent_frames": None if self.audio_track is None else self.audio_track.frames_sent,
            "audio_received_frames": None if self.audio_in is None else self.audio_in.frames,
            "audio_received_level": None if self.audio_in is None else self.audio_in.level,
            # Frames handed to the output (a synthetic output counts what it was given).
            "audio_played_frames": getattr(self._output, "frames_written", None),
        }
