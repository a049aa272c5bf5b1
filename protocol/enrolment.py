"""Enrolment codes: what an admin hands to a device, as text or a QR code.

A code carries the server's address, the one-time token and the server certificate's
fingerprint, so the device pins the server from its very first connection::

    livesupport-enrol:?server=https%3A%2F%2F10.0.0.5%3A8443&token=...&fp=sha-256%20AB%3A...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

SCHEME = "livesupport-enrol"
_FINGERPRINT = re.compile(r"^sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class BadEnrolmentCode(ValueError):
    """The text is not an enrolment code; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class EnrolmentCode:
    server: str  # https://host:port
    token: str
    fingerprint: str  # sha-256 AB:CD:...

    def __post_init__(self) -> None:
        parts = urlsplit(self.server)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise BadEnrolmentCode("the server must be an https://host:port address")
        if not _TOKEN.match(self.token):
            raise BadEnrolmentCode("the token is malformed")
        if not _FINGERPRINT.match(self.fingerprint):
            raise BadEnrolmentCode("the fingerprint must be 'sha-256' and 32 hex bytes")

    def encode(self) -> str:
        return (
            f"{SCHEME}:?server={quote(self.server, safe='')}"
            f"&token={quote(self.token, safe='')}&fp={quote(self.fingerprint, safe='')}"
        )

    @classmethod
    def parse(cls, text: str) -> EnrolmentCode:
        text = text.strip()
        prefix = f"{SCHEME}:?"
        if not text.startswith(prefix):
            raise BadEnrolmentCode(f"an enrolment code starts with {prefix!r}")
        try:
            query = parse_qs(text[len(prefix) :], strict_parsing=True)
        except ValueError:
            raise BadEnrolmentCode(
                "the code is not of the form server=...&token=...&fp=..."
            ) from None
        try:
            (server,), (token,), (fingerprint,) = query["server"], query["token"], query["fp"]
        except (KeyError, ValueError):
            raise BadEnrolmentCode("the code needs one server, token and fp") from None
        return cls(server=server, token=token, fingerprint=fingerprint)


def fingerprint_bytes(fingerprint: str) -> bytes:
    """``sha-256 AB:CD:...`` as the 32 raw bytes a TLS pin compares against."""
    if not _FINGERPRINT.match(fingerprint):
        raise BadEnrolmentCode("the fingerprint must be 'sha-256' and 32 hex bytes")
    return bytes.fromhex(fingerprint.split(" ", 1)[1].replace(":", ""))
