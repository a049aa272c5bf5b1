"""The theme's colours reach WCAG AA where they carry information, and the delivered
and read checks are told apart by more than lightness."""

from __future__ import annotations

import colorsys

import pytest

from peer.ui import theme
from peer.ui.theme import contrast_ratio, parse_hex


def test_contrast_ratio_known_values() -> None:
    assert contrast_ratio("#000000", "#FFFFFF") == pytest.approx(21.0)
    assert contrast_ratio("#FFFFFF", "#000000") == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#777777") == pytest.approx(1.0)
    # Reference values of WebAIM's contrast checker.
    assert contrast_ratio("#767676", "#FFFFFF") == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio("#0000FF", "#FFFFFF") == pytest.approx(8.59, abs=0.01)
    assert contrast_ratio("#FF0000", "#FFFFFF") == pytest.approx(4.0, abs=0.01)


def test_parse_hex() -> None:
    assert parse_hex("#0A66C2") == (0x0A, 0x66, 0xC2)
    assert parse_hex("0a66c2") == (0x0A, 0x66, 0xC2)
    with pytest.raises(ValueError, match="#RRGGBB"):
        parse_hex("#FFF")


@pytest.mark.parametrize(("what", "fg", "bg"), theme.TEXT_PAIRS, ids=lambda v: str(v))
def test_text_reaches_aa(what: str, fg: str, bg: str) -> None:
    assert contrast_ratio(fg, bg) >= theme.MIN_TEXT_CONTRAST, what


@pytest.mark.parametrize(("what", "fg", "bg"), theme.GRAPHIC_PAIRS, ids=lambda v: str(v))
def test_graphics_reach_aa(what: str, fg: str, bg: str) -> None:
    assert contrast_ratio(fg, bg) >= theme.MIN_GRAPHIC_CONTRAST, what


def test_both_checks_are_listed_against_the_own_bubble() -> None:
    pairs = {(fg, bg) for _, fg, bg in theme.GRAPHIC_PAIRS}
    assert (theme.CHECK_GRAY, theme.OWN_BUBBLE) in pairs
    assert (theme.CHECK_BLUE, theme.OWN_BUBBLE) in pairs


def _hsv(colour: str) -> tuple[float, float, float]:
    red, green, blue = (v / 255 for v in parse_hex(colour))
    return colorsys.rgb_to_hsv(red, green, blue)


def test_gray_and_blue_checks_differ_in_hue_not_only_in_lightness() -> None:
    _, gray_saturation, _ = _hsv(theme.CHECK_GRAY)
    blue_hue, blue_saturation, _ = _hsv(theme.CHECK_BLUE)
    assert gray_saturation <= 0.2  # a neutral gray
    assert blue_saturation >= 0.8  # a strong blue...
    assert 190 <= blue_hue * 360 <= 230  # ...on the blue-yellow axis every common
    # colour vision keeps, unlike red-green.


def test_touch_target() -> None:
    assert theme.TOUCH_TARGET_PX == 48
