"""Lose a call's network path for real, on loopback: a blackhole route per address.

A call's ICE host candidates are restricted (``peer.ice.ENV``) to a few loopback
addresses of our own, each one standing for a network of the machine (Wi-Fi,
cellular). ``cut(address)`` adds ``blackhole ADDRESS/32`` to the kernel's *local*
routing table, which is what a network change does to the old address: packets to
it are dropped (sending gives EINVAL), binding it fails (it is no longer a local
address), and sockets already bound to it hear nothing any more. ``restore`` takes
the route away again. Needs root and iproute2's ``ip``; no iptables or nftables.

Only addresses in 127.0.0.0/8 other than 127.0.0.1 (the server's) are accepted, and
every route added is removed by ``restore_all`` (use the object as a context manager
so that happens even when a test fails).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from types import TracebackType

#: Two "networks" of the device and the console, kept apart from 127.0.0.1.
WIFI = "127.0.66.2"
CELLULAR = "127.0.66.3"
HOSTS = (WIFI, CELLULAR)


class PathCutError(RuntimeError):
    """The route could not be added or removed (not root, no ``ip``)."""


def _checked(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if ip.version != 4 or ip not in ipaddress.ip_network("127.0.0.0/8") or address == "127.0.0.1":
        raise ValueError(f"{address} is not a loopback address of ours")
    return str(ip)


class LoopbackPaths:
    def __init__(self) -> None:
        self.ip = shutil.which("ip")
        self.cut_addresses: list[str] = []

    def _route(self, verb: str, address: str) -> None:
        if self.ip is None:
            raise PathCutError("iproute2's ip is not installed")
        command = [self.ip, "route", verb, "blackhole", f"{address}/32", "table", "local"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PathCutError(f"ip route {verb} failed: {done.stderr.strip()}")

    def cut(self, address: str) -> None:
        """The address stops working (as a network that went away)."""
        address = _checked(address)
        if address in self.cut_addresses:
            return
        self._route("add", address)
        self.cut_addresses.append(address)

    def restore(self, address: str) -> None:
        address = _checked(address)
        if address in self.cut_addresses:
            self._route("del", address)
            self.cut_addresses.remove(address)

    def restore_all(self) -> None:
        errors = []
        for address in list(self.cut_addresses):
            try:
                self.restore(address)
            except PathCutError as exc:
                errors.append(str(exc))
        if errors:
            raise PathCutError("; ".join(errors))

    def __enter__(self) -> LoopbackPaths:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore_all()
