"""Display-safe text: what both call ends do to text someone else typed before showing it.

Device names, technician names and organisations, reasons, chat messages, notification
titles, bodies and answers all come from another person's machine. Qt would render
``<b>`` or ``<img src=...>`` in a label left on ``Qt.AutoText``; bidirectional controls
(U+202E RIGHT-TO-LEFT OVERRIDE and its kin) let ``exe.txt`` show as ``txt.exe`` or a
name show as someone else's; a megabyte string stalls a layout. So, at both ends:

* labels showing such text are ``Qt.PlainText`` (:class:`PlainLabel`, :func:`plain_label`)
  and item views show ``DisplayRole`` strings, which Qt never interprets as markup;
* :func:`display_text` shows every bidi embedding, override and isolate (U+202A–U+202E,
  U+2066–U+2069) and every control character as a visible escape, ``[U+202E]``: the
  reader sees that something was hidden there instead of text reordered by it. Plain
  right-to-left text (Arabic, Hebrew) needs none of these and is shown as written;
  the implicit marks U+200E, U+200F and U+061C reorder nothing by themselves and stay;
* it caps the text at a length for its place and ends a cut text with ``…`` (the
  visible marker); a single-line place also shows line breaks as escapes.

The caps are the protocol's own field limits (``protocol.fields``): a name is at most
128 characters and free text 4,000 on the wire, so honest text is never cut; a longer
string can only come from a bug or a hostile peer. The Qt-free models keep the text
as it came (a console exports it, a device answers it); the widgets that show it are
where it is made safe.

``docs/security.md`` lists where each end applies it.
"""

from __future__ import annotations

import re
import unicodedata

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

#: A name, a title, a device model (``protocol.fields.Name``: 128 characters).
NAME_LIMIT = 128
#: Free text: a chat message, a notification body or answer (``UserText``: 4,000).
TEXT_LIMIT = 4000
#: What ends a cut text.
CUT_MARKER = "…"

#: Bidirectional embeddings, overrides and isolates (UAX #9, explicit formatting).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# One pass finds whether anything needs doing; most text needs nothing (and the
# inventory asks for thousands of cells per paint).
_SUSPECT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(ch: str) -> str:
    return f"[U+{ord(ch):04X}]"


def display_text(text: str, limit: int = TEXT_LIMIT, *, multiline: bool = True) -> str:
    """``text`` as it may be shown: bidi and control characters escaped visibly, at
    most ``limit`` characters, a cut one ending in ``…``. Line breaks and tabs stay
    when ``multiline``; elsewhere they are escaped too."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    # Escapes only lengthen the text: look at no more of it than can be shown.
    head = text[: limit + 1]
    if _SUSPECT.search(head):
        allowed = {"\n", "\t"} if multiline else set()
        if multiline and "\r" in head:
            head = head.replace("\r\n", "\n").replace("\r", "\n")
        head = "".join(
            _escape(ch)
            if ch not in allowed
            and (ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp"))
            else ch
            for ch in head
        )
    if len(head) > limit or len(text) > limit:
        return head[: limit - len(CUT_MARKER)] + CUT_MARKER
    return head


def display_name(text: str) -> str:
    """A name or title: one line, at most :data:`NAME_LIMIT` characters."""
    return display_text(text, NAME_LIMIT, multiline=False)


class PlainLabel(QLabel):
    """A label for text someone else typed: never markup, always :func:`display_text`
    (also when set later with :meth:`setText`)."""

    def __init__(
        self,
        text: str = "",
        parent: QWidget | None = None,
        *,
        limit: int = TEXT_LIMIT,
        multiline: bool = True,
    ) -> None:
        super().__init__(parent)
        self.limit = limit
        self.multiline = multiline
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setText(text)

    def setText(self, text: str) -> None:
        super().setText(display_text(text, self.limit, multiline=self.multiline))


def plain_label(
    text: str = "",
    parent: QWidget | None = None,
    *,
    limit: int = TEXT_LIMIT,
    multiline: bool = True,
) -> PlainLabel:
    return PlainLabel(text, parent, limit=limit, multiline=multiline)
