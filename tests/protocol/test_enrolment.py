"""Enrolment codes: what is not one is refused with a typed error that says why."""

from __future__ import annotations

import pytest

from protocol.enrolment import BadEnrolmentCode, EnrolmentCode

GOOD = EnrolmentCode(
    server="https://127.0.0.1:8443",
    token="A" * 32,
    fingerprint="sha-256 " + ":".join(["AB"] * 32),
)


def test_a_code_round_trips() -> None:
    assert EnrolmentCode.parse(GOOD.encode()) == GOOD


@pytest.mark.parametrize(
    "text",
    [
        "",
        "https://127.0.0.1:8443",
        "livesupport-enrol:?garbage",
        "livesupport-enrol:?server=x",
        "livesupport-enrol:?server=http%3A%2F%2Fh&token=t&fp=f",
        GOOD.encode() + "&token=again",
    ],
)
def test_what_is_not_a_code_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(BadEnrolmentCode):
        EnrolmentCode.parse(text)
