"""Which local addresses a call may offer the other side as ICE host candidates.

aioice offers every address of every interface (loopback excepted) and aiortc has
no setting to narrow that. An operator may want fewer (only the managed network's
interface), and tests must stay on loopback: ``LIVESUPPORT_ICE_HOSTS`` (a comma-
separated list of local addresses) restricts the host candidates of every call of
the process to those addresses. Unset, aioice's own choice stands.

It works by replacing ``aioice.ice.get_host_addresses``, which aioice looks up at
gathering time; the original is kept and restored by ``restrict_host_addresses(None)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import aioice.ice

ENV = "LIVESUPPORT_ICE_HOSTS"

_original = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: Sequence[str] | None) -> None:
    """Offer only ``addresses`` as host candidates (None: every address, aioice's way)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original
        return
    allowed = [a.strip() for a in addresses if a.strip()]

    def only_allowed(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in allowed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = only_allowed


def apply_environment() -> None:
    """Apply ``LIVESUPPORT_ICE_HOSTS`` if it is set (idempotent)."""
    value = os.environ.get(ENV)
    if value:
        restrict_host_addresses(value.split(","))


#: Consent freshness (RFC 7675), which is how a lost media path is noticed. aioice
#: checks every 5 s (4-6 s) and gives up after 6 failed checks in a row, each with
#: one try and a 0.5 s timeout: about 30 s, which is RFC 7675's consent expiry but
#: far too long for a call to sit frozen after a network change. We check every
#: second (0.8-1.2 s) and give up after 3 failures in a row: the loss is noticed
#: 3-5 s after it happens (bench/faults/path_loss.py measures it), and aiortc then
#: reports the connection as "failed", which starts the recovery (docs/calls.md,
#: "Path loss"). A check is one ~100-byte STUN request each way per second.
#: Three consecutive misses are needed, so a single stall of the event loop (a busy
#: machine) does not end a healthy path; if it ever did, the recovery within the
#: grace period is automatic and costs a second or two of media.
CONSENT_INTERVAL_S = 1
CONSENT_FAILURES = 3


def apply_consent_checks(
    interval_s: int = CONSENT_INTERVAL_S, failures: int = CONSENT_FAILURES
) -> None:
    """Make aioice's consent checks (read from its module at each check) faster."""
    aioice.ice.CONSENT_INTERVAL = interval_s
    aioice.ice.CONSENT_FAILURES = failures
