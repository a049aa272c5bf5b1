"""First contact with a server the console has no pin for: trust on first use,
confirmed by a person.

The console never talks to a server unpinned. For a new server it opens one TLS
connection that verifies nothing, reads the certificate the server presents, and
closes it: nothing but the handshake goes over that connection (no user name, no
password, no request). The fingerprint is shown to the technician, who compares it
with the one the administrator gave (``livesupport admin fingerprint``); only once
they confirm does it become the pin, and the login runs pinned to it. A server that
presents another certificate by then is refused like any pin mismatch.

Qt-free: the login dialog shows :meth:`FirstContact.question` and calls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from peer.signaling import RequestError
from protocol.identity import certificate_pin


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    if parts.scheme != "https" or not parts.hostname:
        raise RequestError("invalid_field", "the server address starts with https://")
    try:
        port = parts.port or 443
    except ValueError:
        raise RequestError("invalid_field", "the server address has a bad port") from None
    return parts.hostname, port


async def presented_fingerprint(address: str, *, timeout_s: float = 10.0) -> str:
    """The fingerprint of the certificate the server at ``address`` presents now.

    Not a trust decision: a person must confirm it before it is used as a pin.
    """
    host, port = _host_port(address)
    # Verification off on purpose: this connection carries the handshake only, and
    # its one result is shown to a person, never acted on by itself.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout_s
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise RequestError("unavailable", f"cannot reach {address}: {exc}") from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if not der:
        raise RequestError("unavailable", f"{address} presented no certificate")
    return certificate_pin(der)


@dataclass(frozen=True, slots=True)
class FirstContact:
    """A certificate a server presented, waiting for a person's yes."""

    address: str
    fingerprint: str
    #: The pin remembered for this address before, if the technician cleared it.
    saved_pin: str | None = None

    @property
    def changed(self) -> bool:
        return self.saved_pin is not None and self.saved_pin != self.fingerprint

    def question(self) -> str:
        head = (
            f"WARNING: {self.address} now presents a different certificate from the one "
            "remembered for it. Its key changed, or someone is in between.\n"
            if self.changed
            else f"This console has never logged in to {self.address}.\n"
        )
        return (
            f"{head}The server presents the certificate\n{self.fingerprint}\n"
            "Trust it only if it is exactly the fingerprint your administrator gave you "
            "(livesupport admin fingerprint on the server)."
        )


async def first_contact(
    address: str, saved_pin: str | None = None, *, timeout_s: float = 10.0
) -> FirstContact:
    return FirstContact(
        address, await presented_fingerprint(address, timeout_s=timeout_s), saved_pin
    )


def refusal_text(error: RequestError, address: str) -> str:
    """What the login window says when a login fails; a pin mismatch said plainly."""
    if error.code == "pin_mismatch":
        return (
            f"Refused: the certificate of {address} does not match its pin. The server's "
            "key changed, or someone is in between; nothing was sent to it. Ask your "
            "administrator for the server's fingerprint before trusting a new one."
        )
    return f"Not logged in: {error}"
