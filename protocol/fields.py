"""Field constraints for message dataclasses.

A message field is declared with ``Annotated[type, constraint]``; the codec reads the
constraints once, when a message class is registered, and checks every decoded value
against them. Keeping the limits beside the field makes each message its own schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True, slots=True)
class Text:
    """A string of ``min_len`` to ``max_len`` characters, optionally matching ``pattern``.

    Control characters other than tab and newline are refused unless
    ``allow_controls``: they have no business in names or ids, and refusing them early
    keeps terminal and log injection out.
    """

    min_len: int = 0
    max_len: int = 256
    pattern: str | None = None
    multiline: bool = False

    def compiled(self) -> re.Pattern[str] | None:
        return re.compile(self.pattern) if self.pattern else None


@dataclass(frozen=True, slots=True)
class Int:
    min: int = 0
    max: int = 2**53 - 1  # the largest integer every JSON implementation keeps exact


@dataclass(frozen=True, slots=True)
class Items:
    """Bounds on the number of items of a tuple field."""

    min_items: int = 0
    max_items: int = 100


ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"

#: Opaque identifiers (device, session, notification, group ids).
Ident = Annotated[str, Text(1, 64, ID_PATTERN)]
#: A client-chosen request id echoed in ``ok`` and ``error`` replies.
RequestId = Annotated[int, Int(0, 2**31 - 1)]
#: Milliseconds since the Unix epoch.
TimestampMs = Annotated[int, Int(0, 2**53 - 1)]
#: Base64 (standard alphabet, padded) of at most a few hundred bytes.
B64 = Annotated[str, Text(1, 512, r"^[A-Za-z0-9+/]+={0,2}$")]
#: A person's name, a device name, a title.
Name = Annotated[str, Text(1, 128)]
#: Free text typed by a person: chat messages, notification bodies and answers.
UserText = Annotated[str, Text(1, 4000, multiline=True)]
#: Free text that may be empty (an optional reason, a detail).
ShortText = Annotated[str, Text(0, 500, multiline=True)]
