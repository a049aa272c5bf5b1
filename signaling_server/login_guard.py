"""Failed logins slow down exponentially, per account and per address.

After ``free_failures`` wrong passwords in a row, each further failure locks the
account name (and, separately, the client address) for ``base_s · 2^k`` seconds,
capped at ``cap_s``. A login tried while either is locked is answered at once with
429 and ``Retry-After``: the server never sleeps on a request, so an attacker cannot
hold connections or scrypt time open by guessing, and the check runs before the
password hash is computed.

Why both keys: per account stops one address (or a botnet) hammering one name;
per address stops one address spraying many names. A success resets its account's
counter, not its address's: otherwise an attacker holding one valid account could
clear their address between guesses at others. An address's counter is forgotten
once it has been idle for ``forget_after_s``.

Memory is bounded: at most ``max_entries`` keys are kept, the least recently seen
going first. An attacker rotating names to flush the table still meets the
per-address lock on every name. Unknown user names are counted like real ones, so
the guard does not tell which names exist.

Sans-IO: the clock is injected; the aiohttp handler in :mod:`signaling_server.app`
asks and records.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last_seen: float = 0.0


@dataclass(frozen=True, slots=True)
class Lockout:
    """A failure that started (or lengthened) a lock: what the audit records."""

    key: str  # "account:<name>" or "address:<ip or /64>"
    failures: int
    seconds: float


def address_key(address: str) -> str:
    """An IPv4 address as is; an IPv6 address by its /64 (one subscriber's block:
    rotating addresses inside it must not reset the count)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class LoginGuard:
    def __init__(
        self,
        *,
        base_s: float = 1.0,
        cap_s: float = 300.0,
        free_failures: int = 3,
        forget_after_s: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base_s <= 0 or cap_s < base_s or free_failures < 0 or max_entries < 2:
            raise ValueError("login guard: 0 < base_s <= cap_s, free_failures >= 0")
        self.base_s = base_s
        self.cap_s = cap_s
        self.free_failures = free_failures
        self.forget_after_s = max(forget_after_s, cap_s)
        self.max_entries = max_entries
        #: Public so a test can drive a running server's guard with its own clock.
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    @staticmethod
    def keys(username: str, address: str) -> tuple[str, str]:
        # Case-folded: "Admin" and "admin" are one account to an attacker.
        return f"account:{username.strip().casefold()[:128]}", f"address:{address_key(address)}"

    def delay_for(self, failures: int) -> float:
        """The lock after the ``failures``-th failure in a row (0: none yet)."""
        over = failures - self.free_failures
        if over <= 0:
            return 0.0
        return float(min(self.cap_s, self.base_s * 2.0 ** min(over - 1, 60)))

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until a login for this name from this address may be tried (0: now)."""
        now = self.clock()
        wait = 0.0
        for key in self.keys(username, address):
            record = self._get(key, now)
            if record is not None:
                record.last_seen = now
                self._records.move_to_end(key)
                wait = max(wait, record.locked_until - now)
        return wait

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        """Whole seconds, rounded up: a client must never retry too early."""
        return str(max(1, math.ceil(seconds)))

    def failed(self, username: str, address: str) -> list[Lockout]:
        """Count a wrong password; the locks it starts (for the audit)."""
        now = self.clock()
        lockouts = []
        for key in self.keys(username, address):
            record = self._get(key, now)
            if record is None:
                record = self._records[key] = _Record()
                self._evict()
            record.failures += 1
            record.last_seen = now
            self._records.move_to_end(key)
            delay = self.delay_for(record.failures)
            if delay > 0:
                record.locked_until = now + delay
                lockouts.append(Lockout(key, record.failures, delay))
        return lockouts

    def succeeded(self, username: str, address: str) -> None:
        account, _ = self.keys(username, address)
        self._records.pop(account, None)

    def _get(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and self._forgotten(record, now):
            del self._records[key]
            return None
        return record

    def _forgotten(self, record: _Record, now: float) -> bool:
        return now >= record.locked_until and now - record.last_seen >= self.forget_after_s

    def _evict(self) -> None:
        while len(self._records) > self.max_entries:
            self._records.popitem(last=False)
