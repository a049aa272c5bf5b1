"""The server's zeroconf (DNS-SD) advertisement: its service type and TXT record.

Discovery gives an address, never trust. The advertised fingerprint only lets a client
pick, among the servers on the LAN, the one it already pins; the TLS connection that
follows is checked against the pin itself, so a forged advertisement gets nowhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SERVICE_TYPE = "_livesupport._tcp.local."
#: TXT keys: protocol version and the certificate's pin ("sha-256 AB:CD:...").
VERSION_KEY = "v"
FINGERPRINT_KEY = "fp"
VERSION = "1"

_FINGERPRINT = re.compile(r"^sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}$")


class BadAdvertisement(ValueError):
    """A TXT record that is not a Live Support server's (ignored by browsers)."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    version: str
    fingerprint: str

    def properties(self) -> dict[str, str]:
        return {VERSION_KEY: self.version, FINGERPRINT_KEY: self.fingerprint}

    @classmethod
    def parse(cls, properties: Mapping[bytes, bytes | None]) -> Advertisement:
        """The advertisement from a TXT record as zeroconf hands it over (bytes)."""
        try:
            version = (properties.get(VERSION_KEY.encode()) or b"").decode("ascii")
            fingerprint = (properties.get(FINGERPRINT_KEY.encode()) or b"").decode("ascii")
        except UnicodeDecodeError:
            raise BadAdvertisement("TXT values are not ASCII") from None
        if version != VERSION:
            raise BadAdvertisement(f"unknown protocol version {version[:16]!r}")
        if not _FINGERPRINT.match(fingerprint):
            raise BadAdvertisement("the fingerprint is not 'sha-256' and 32 hex bytes")
        return cls(version, fingerprint)


def instance_name(server_name: str) -> str:
    """The DNS-SD instance name: the server's name, cut to the 63-byte label limit."""
    label = " ".join(server_name.split()).replace(".", " ") or "Live Support"
    encoded = label.encode()[:63]
    return encoded.decode("utf-8", "ignore") + "." + SERVICE_TYPE
