"""Short-lived TURN credentials, in coturn's shared-secret scheme (the "TURN REST API").

The server and the TURN server (coturn with ``use-auth-secret`` and
``static-auth-secret``) share one secret and nothing else: no user list to keep in
step. For every call end the hub mints a credential that names its own expiry::

    username = "<expiry, Unix seconds>:<who>"
    password = base64(HMAC-SHA1(secret, username))

coturn recomputes the password from the username and refuses it once the expiry has
passed, so a credential copied out of a client is worth nothing after its TTL, and
no password that lives longer than a call setup ever goes over the wire.

The TTL covers making an allocation, not the call: coturn checks the expiry when a
client allocates, and an allocation made in time goes on being refreshed (aioice
refreshes every 500 s) after the credential expired: a relayed call whose credential
expired 10 s after its setup was still connected after 700 s against coturn 4.6.1
(measured while writing this module). So ten minutes is plenty for a call setup, and
a credential copied out of a client is worthless soon after. Every ``connecting`` and
``in_call`` update carries a freshly minted one, so a connection that replaces a lost
one (path loss, a resumed call) never needs an old credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.messages import IceServer

#: Ten minutes: far longer than a call setup (see the module's docstring).
DEFAULT_TTL_S = 600


class TurnConfigError(ValueError):
    """The TURN settings are unusable (no secret for the urls, a bad url)."""


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """Where the TURN server is and the secret it shares with us."""

    urls: tuple[str, ...]
    secret: str
    ttl_s: int = DEFAULT_TTL_S

    def __post_init__(self) -> None:
        if not self.urls:
            raise TurnConfigError("a TURN server needs at least one turn: or turns: url")
        for url in self.urls:
            if not url.startswith(("turn:", "turns:", "stun:", "stuns:")):
                raise TurnConfigError(f"not a STUN/TURN url: {url!r}")
        if not self.secret:
            raise TurnConfigError("the TURN shared secret is empty")
        if self.ttl_s < 60:
            raise TurnConfigError("a TURN credential must live at least 60 s (a call setup)")


def turn_password(secret: str, username: str) -> str:
    """coturn's password for ``username``: base64 of HMAC-SHA1 keyed with the secret."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint(settings: TurnSettings, who: str, *, now_s: float | None = None) -> IceServer:
    """A fresh credential for one call end (``who``: e.g. the session and party),
    valid ``settings.ttl_s`` from now."""
    expiry = int(now_s if now_s is not None else time.time()) + settings.ttl_s
    username = f"{expiry}:{who}"
    return IceServer(
        urls=settings.urls,
        username=username,
        credential=turn_password(settings.secret, username),
    )


def expiry_of(username: str) -> int:
    """The expiry (Unix seconds) a minted username carries."""
    head, _, _ = username.partition(":")
    return int(head)


def read_secret(path: Path) -> str:
    """The secret from a file (its first line), so that it stays out of ``ps``."""
    text = path.read_text(encoding="utf-8").strip()
    secret = text.splitlines()[0].strip() if text else ""
    if not secret:
        raise TurnConfigError(f"{path} holds no secret")
    return secret
