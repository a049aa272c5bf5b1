"""Colours and sizes of the call widgets, with the contrast they were chosen for.

Qt-free, so the accessibility thresholds are checked without a display. Every colour
that carries information is listed in :data:`TEXT_PAIRS` or :data:`GRAPHIC_PAIRS`
together with the background it is drawn on; the tests hold each pair to WCAG 2.x AA:
4.5:1 for text, 3:1 for graphics that must be seen (the receipt checks, the focus
ring, the input's border).

Delivered and read checks differ by hue and saturation (neutral gray, saturated blue)
rather than by lightness alone: gray against blue stays apparent with red-green colour
blindness, and the count of checks tells "sent" from "delivered" without any colour.
"""

from __future__ import annotations

#: Minimum height (and width) of anything clickable: a fingertip on a tablet.
TOUCH_TARGET_PX = 48

WINDOW_BACKGROUND = "#EEF1F4"
TEXT = "#1B1F24"
#: Time stamps, author names, "… is typing", input placeholders.
SECONDARY_TEXT = "#4D5663"

OWN_BUBBLE = "#D7F2D0"
PEER_BUBBLE = "#FFFFFF"
#: Decorative only (the text inside carries the information): a hint of an edge for
#: the white bubble on the light window.
PEER_BUBBLE_BORDER = "#D5DBE1"

#: One check (sent) and the double check of "delivered".
CHECK_GRAY = "#68717D"
#: The double check of "read".
CHECK_BLUE = "#0A66C2"

ACCENT = "#0A66C2"
ACCENT_HOVER = "#0959AB"
ACCENT_PRESSED = "#084F97"
ON_ACCENT = "#FFFFFF"
#: Keyboard focus ring, drawn over the window, an input or a bubble.
FOCUS_RING = "#0A66C2"
#: A blue ring would vanish on the blue button: it gets a dark one.
BUTTON_FOCUS_RING = TEXT

INPUT_BACKGROUND = "#FFFFFF"
INPUT_BORDER = "#7A838E"

#: Banners above a call: information ("the technician is sharing…"), warnings
#: ("audio paused: phone call on the device"), errors ("connection lost").
BANNER_INFO_BACKGROUND = "#E7F0FB"
BANNER_INFO_TEXT = "#0B3D75"
BANNER_WARNING_BACKGROUND = "#FFF4D6"
BANNER_WARNING_TEXT = "#5C4300"
BANNER_ERROR_BACKGROUND = "#FDE8E8"
BANNER_ERROR_TEXT = "#8A1C1C"

#: Behind the video and around its letterbox: dark, so the picture stands out.
VIDEO_BACKGROUND = "#101418"
VIDEO_PLACEHOLDER_TEXT = "#C9D1DA"

#: WCAG 2.x AA thresholds.
MIN_TEXT_CONTRAST = 4.5
MIN_GRAPHIC_CONTRAST = 3.0

#: (what, foreground, background) for every text the widgets draw.
TEXT_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("message in own bubble", TEXT, OWN_BUBBLE),
    ("message in peer bubble", TEXT, PEER_BUBBLE),
    ("time in own bubble", SECONDARY_TEXT, OWN_BUBBLE),
    ("author and time in peer bubble", SECONDARY_TEXT, PEER_BUBBLE),
    ("typing indicator", SECONDARY_TEXT, WINDOW_BACKGROUND),
    ("typed text", TEXT, INPUT_BACKGROUND),
    ("input placeholder", SECONDARY_TEXT, INPUT_BACKGROUND),
    ("button label", ON_ACCENT, ACCENT),
    ("button label, hovered", ON_ACCENT, ACCENT_HOVER),
    ("button label, pressed", ON_ACCENT, ACCENT_PRESSED),
    ("info banner", BANNER_INFO_TEXT, BANNER_INFO_BACKGROUND),
    ("warning banner", BANNER_WARNING_TEXT, BANNER_WARNING_BACKGROUND),
    ("error banner", BANNER_ERROR_TEXT, BANNER_ERROR_BACKGROUND),
    ("video placeholder", VIDEO_PLACEHOLDER_TEXT, VIDEO_BACKGROUND),
)

#: (what, foreground, background) for graphics that carry meaning.
GRAPHIC_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("sent/delivered check", CHECK_GRAY, OWN_BUBBLE),
    ("read check", CHECK_BLUE, OWN_BUBBLE),
    ("focus ring on window", FOCUS_RING, WINDOW_BACKGROUND),
    ("focus ring on own bubble", FOCUS_RING, OWN_BUBBLE),
    ("focus ring on peer bubble", FOCUS_RING, PEER_BUBBLE),
    ("focus ring of a button", BUTTON_FOCUS_RING, WINDOW_BACKGROUND),
    ("input border", INPUT_BORDER, WINDOW_BACKGROUND),
    ("send button", ACCENT, WINDOW_BACKGROUND),
)


def _channel_to_linear(value: int) -> float:
    """sRGB 0..255 to linear light, as WCAG 2.x defines relative luminance."""
    c = value / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def parse_hex(colour: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` (the ``#`` optional) to its red, green and blue bytes."""
    digits = colour.removeprefix("#")
    if len(digits) != 6:
        raise ValueError(f"not a #RRGGBB colour: {colour!r}")
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def relative_luminance(colour: str) -> float:
    red, green, blue = (_channel_to_linear(v) for v in parse_hex(colour))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast_ratio(fg_hex: str, bg_hex: str) -> float:
    """WCAG 2.x contrast ratio, from 1.0 (same colour) to 21.0 (black on white).
    Symmetric: which of the two is the foreground does not matter."""
    lighter, darker = sorted((relative_luminance(fg_hex), relative_luminance(bg_hex)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


#: The four Live Support statuses as badges (white text on each: >= 4.5:1), the same
#: on the device and in the console. Keyed by the status's wire value.
STATUS_COLOURS = {
    "connected": "#2e7d32",
    "disconnected": "#455a64",
    "disabled": "#b71c1c",
    "not_installed": "#6a1b9a",
}
