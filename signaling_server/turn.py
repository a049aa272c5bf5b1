"""Short-lived TURN credentials, in coturn's shared-secret scheme (the "TURN REST API").

The server and the TURN server (coturn with ``use-auth-secret`` and
``static-auth-secret``) share one secret and nothing else: no user list to keep in
step. For every call end the hub mints a credential that names its own expiry::

    username = "<expiry, Unix seconds>:<who>"
    password = base64(HMAC-SHA1(secret, username))

coturn recomputes the password from the username and refuses it once the expiry has
passed, so a credential copied out of a client is worth nothing after its TTL, and
no password that lives longer than a call setup ever goes over the wire.

The TTL bounds more than the setup. coturn checks the credential on every
authenticated request of the allocation (aioice refreshes it every 500 s, and its
permissions and channels more often), and it also caps the allocation's lifetime at
the username's expiry: a relayed call cannot outlive its credential, and aiortc has
no way to hand a live allocation a new one. So the TTL is "the longest relayed call
we support": two hours by default (``--turn-ttl``), still short enough that a
credential copied out of a client soon stops working. A call that is resumed (a new
peer connection) gets fresh credentials, so a hung-up and resumed call starts a new
two hours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.messages import IceServer

#: Two hours: the longest relayed call (see the module's docstring).
DEFAULT_TTL_S = 2 * 3600


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
