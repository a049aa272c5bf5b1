"""Advertising the server on the LAN with zeroconf (mDNS / DNS-SD).

Clients find an address this way, never trust: the advertisement carries the pin so a
client can pick the server it already trusts, and its TLS connection is then checked
against that pin (see protocol/discovery.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from protocol.discovery import SERVICE_TYPE, VERSION, Advertisement, instance_name

log = logging.getLogger(__name__)

#: Bind addresses meaning "every interface" (compared against, never bound here).
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104


def advertised_addresses(host: str) -> list[str]:
    """The IPv4 addresses clients can reach a server bound to ``host`` at.

    A wildcard bind is reachable on every address but loopback (other machines cannot
    use it); a specific address is advertised as it is."""
    if host in WILDCARDS:
        return [
            ip.ip
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback
        ]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [socket.gethostbyname(host)]  # a host name in the config
    return [str(address)] if address.version == 4 else []


class Advertiser:
    """Announces one running server; ``stop()`` says goodbye so browsers drop it at once."""

    def __init__(self, *, name: str, host: str, port: int, fingerprint: str) -> None:
        self.addresses = advertised_addresses(host)
        self.info = ServiceInfo(
            SERVICE_TYPE,
            instance_name(name),
            port=port,
            properties=Advertisement(VERSION, fingerprint).properties(),
            parsed_addresses=self.addresses,
            # The host label must be unique on the LAN, like the instance name.
            server=f"livesupport-{port}-{socket.gethostname()[:40]}.local.",
        )
        # Multicast goes out only where the server listens: a loopback server stays on
        # loopback, a wildcard one uses every interface.
        wildcard = host in WILDCARDS
        self._interfaces: InterfaceChoice | list[str] = (
            InterfaceChoice.All if wildcard else list(self.addresses)
        )
        self._zeroconf: AsyncZeroconf | None = None
        self._registered: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.info.name

    async def start(self) -> None:
        if not self.addresses:
            log.warning("zeroconf: no IPv4 address to advertise; not advertising")
            return
        self._zeroconf = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        # Registration probes the name for about a second first: the server serves
        # meanwhile, so it is not awaited here. A name taken by another server on the LAN
        # is renamed by zeroconf ("name (2)").
        self._registered = asyncio.ensure_future(self._register())

    async def _register(self) -> None:
        assert self._zeroconf is not None
        try:
            done = await self._zeroconf.async_register_service(self.info, allow_name_change=True)
            await done
            log.info("zeroconf: advertised as %r on %s", self.info.name, self.addresses)
        except Exception:
            log.exception("zeroconf advertisement failed; clients need the address")

    async def wait_registered(self) -> None:
        if self._registered is not None:
            await asyncio.shield(self._registered)

    async def stop(self) -> None:
        if self._zeroconf is None:
            return
        if self._registered is not None and not self._registered.done():
            self._registered.cancel()
        try:
            await self._zeroconf.async_unregister_all_services()
        finally:
            await self._zeroconf.async_close()
            self._zeroconf = None
