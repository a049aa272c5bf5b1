"""The ring of an incoming call: a two-tone ring on the default audio output, or
the platform's beep where there is no audio output."""

from __future__ import annotations

import functools
import math
import struct

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject, QTimer
from PySide6.QtMultimedia import QAudio, QAudioFormat, QAudioSink, QMediaDevices
from PySide6.QtWidgets import QApplication

RATE = 24_000


@functools.cache
def ring_cycle(rate: int = RATE) -> bytes:
    """One cycle of the ring as 16-bit mono PCM: 0.4 s of 440 + 480 Hz, 0.2 s of
    silence, again, then 2 s of silence (a familiar telephone cadence)."""

    def tone(seconds: float) -> list[int]:
        n = int(rate * seconds)
        step_a, step_b = 2 * math.pi * 440 / rate, 2 * math.pi * 480 / rate
        return [int(6000 * (math.sin(step_a * i) + math.sin(step_b * i))) for i in range(n)]

    def silence(seconds: float) -> list[int]:
        return [0] * int(rate * seconds)

    samples = tone(0.4) + silence(0.2) + tone(0.4) + silence(2.0)
    return struct.pack(f"<{len(samples)}h", *samples)


class Ringer(QObject):
    """Rings until stopped. ``method`` says how: "audio" or "beep"."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ringing = False
        self.method = ""
        self._sink: QAudioSink | None = None
        self._buffer: QBuffer | None = None
        self._pcm = QByteArray(ring_cycle())
        self._beeper = QTimer(self)
        self._beeper.setInterval(3000)
        self._beeper.timeout.connect(QApplication.beep)

    def start(self) -> None:
        if self.ringing:
            return
        self.ringing = True
        device = QMediaDevices.defaultAudioOutput()
        if device.isNull():
            self.method = "beep"
            QApplication.beep()
            self._beeper.start()
            return
        fmt = QAudioFormat()
        fmt.setSampleRate(RATE)
        fmt.setChannelCount(1)
        fmt.setSampleFormat(QAudioFormat.SampleFormat.Int16)
        self.method = "audio"
        self._sink = QAudioSink(device, fmt, self)
        self._sink.stateChanged.connect(self._on_state)
        self._play_cycle()

    def _play_cycle(self) -> None:
        if self._sink is None:
            return
        self._buffer = QBuffer(self)
        self._buffer.setData(self._pcm)
        self._buffer.open(QIODevice.OpenModeFlag.ReadOnly)
        self._sink.start(self._buffer)

    def _on_state(self, state: QAudio.State) -> None:
        # The cycle played out: ring again while the prompt is up.
        if state == QAudio.State.IdleState and self.ringing:
            self._play_cycle()

    def stop(self) -> None:
        self.ringing = False
        self._beeper.stop()
        if self._sink is not None:
            self._sink.stop()
            self._sink.deleteLater()
            self._sink = None
