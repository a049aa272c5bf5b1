"""``peer.typing.TypingTracker``: when "typing" starts and stops, on a hand-moved clock.

(The tracker lives in ``peer/`` but is tested here, beside the panel it drives.)
"""

from __future__ import annotations

import pytest

from peer.typing import TYPING_IDLE_S, TypingTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[bool]:
    return []


@pytest.fixture
def tracker(clock: FakeClock, changes: list[bool]) -> TypingTracker:
    t = TypingTracker(clock=clock)
    t.changed.add(changes.append)
    return t


def test_a_burst_of_keystrokes_is_one_start(tracker: TypingTracker, changes: list[bool]) -> None:
    for text in ("h", "he", "hel", "hell", "hello"):
        tracker.edited(text)
    assert changes == [True]
    assert tracker.active


def test_a_pause_ends_typing(tracker: TypingTracker, clock: FakeClock, changes: list[bool]) -> None:
    assert TYPING_IDLE_S == 3.0
    tracker.edited("h")
    clock.now += 2.0
    tracker.edited("hi")  # the pause counts from the last keystroke
    assert tracker.seconds_until_idle() == pytest.approx(3.0)
    clock.now += 2.9
    tracker.poll()
    assert changes == [True]
    assert tracker.seconds_until_idle() == pytest.approx(0.1)
    clock.now += 0.1
    tracker.poll()
    assert changes == [True, False]
    assert tracker.seconds_until_idle() is None
    tracker.poll()
    assert changes == [True, False]


def test_typing_again_after_a_pause_starts_again(
    tracker: TypingTracker, clock: FakeClock, changes: list[bool]
) -> None:
    tracker.edited("h")
    clock.now += 5
    tracker.poll()
    tracker.edited("hi")
    assert changes == [True, False, True]


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_blank_text_is_not_typing(tracker: TypingTracker, changes: list[bool], blank: str) -> None:
    tracker.edited(blank)
    assert changes == []
    tracker.edited("x")
    tracker.edited(blank)
    assert changes == [True, False]


def test_stop_is_told_once(tracker: TypingTracker, changes: list[bool]) -> None:
    tracker.stop()
    tracker.edited("x")
    tracker.stop()
    tracker.stop()
    assert changes == [True, False]


def test_idle_must_be_positive(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="positive"):
        TypingTracker(idle_s=0, clock=clock)
