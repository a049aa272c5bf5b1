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
