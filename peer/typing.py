"""When "I am typing" starts and stops, as a plain debounce: no Qt, no asyncio.

The peer shows "… is typing" from our first keystroke until we send, clear the text
or pause for :data:`TYPING_IDLE_S`. Only the changes matter (the call sends a typing
frame per change, ``Call.send_typing``), so a burst of keystrokes is one "started".

The owner drives time: it calls :meth:`TypingTracker.poll` when
:meth:`TypingTracker.seconds_until_idle` says the pause may be over (a Qt view from a
single-shot ``QTimer``). The clock is injectable so tests move time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from peer.chat import Listeners

#: A pause this long ends "typing" (about what common chat apps use).
TYPING_IDLE_S = 3.0


class TypingTracker:
    def __init__(
        self, *, idle_s: float = TYPING_IDLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if idle_s <= 0:
            raise ValueError(f"idle_s must be positive, not {idle_s}")
        self._idle_s = idle_s
        self._clock = clock
        self._active = False
        self._last_edit = 0.0
        #: Fired with the new value when typing starts or stops.
        self.changed: Listeners[bool] = Listeners()

    @property
    def active(self) -> bool:
        return self._active

    @property
    def idle_s(self) -> float:
        return self._idle_s

    def edited(self, text: str) -> None:
        """The text being composed is now ``text``. Blank text is not typing: the
        user deleted what they wrote, and the peer should stop waiting for it."""
        if not text.strip():
            self.stop()
            return
        self._last_edit = self._clock()
        self._set(True)

    def poll(self) -> None:
        """Stop if the pause has lasted long enough; call it when
        :meth:`seconds_until_idle` has elapsed (calling early is harmless)."""
        remaining = self.seconds_until_idle()
        if remaining is not None and remaining <= 0:
            self._set(False)

    def stop(self) -> None:
        """Typing is over: the message was sent, or the text cleared."""
        self._set(False)

    def seconds_until_idle(self) -> float | None:
        """How long until a pause ends typing; None while not typing."""
        if not self._active:
            return None
        return max(self._last_edit + self._idle_s - self._clock(), 0.0)

    def _set(self, active: bool) -> None:
        if active != self._active:
            self._active = active
            self.changed.fire(active)
