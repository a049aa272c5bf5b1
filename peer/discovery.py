"""Finding Live Support servers on the LAN (zeroconf), for the agent and the console.

What is found is an address and the fingerprint the server claims. Nothing here is
trusted: a client connects only with a pin it already holds (from its enrolment code,
or confirmed by a person), and the TLS handshake is checked against that pin.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from protocol.discovery import SERVICE_TYPE, Advertisement, BadAdvertisement

log = logging.getLogger(__name__)

#: Comma-separated addresses of the interfaces to browse on (default: every one).
#: Tests set it to 127.0.0.1 so that nothing leaves loopback.
ENV = "LIVESUPPORT_MDNS_INTERFACES"


@dataclass(frozen=True, slots=True)
class FoundServer:
    """A server as it advertises itself: not verified until a pinned connection."""

    name: str
    url: str
    fingerprint: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.url})"


def _interfaces(interfaces: Sequence[str] | None) -> InterfaceChoice | list[str]:
    if interfaces is None:
        configured = os.environ.get(ENV, "").strip()
        interfaces = [a.strip() for a in configured.split(",") if a.strip()] or None
    return list(interfaces) if interfaces else InterfaceChoice.All


def _url(address: str, port: int) -> str:
    host = address if ipaddress.ip_address(address).version == 4 else f"[{address}]"
    return f"https://{host}:{port}"


async def discover(
    *,
    timeout_s: float = 3.0,
    want_fingerprint: str | None = None,
    interfaces: Sequence[str] | None = None,
) -> list[FoundServer]:
    """Servers answering on the LAN within ``timeout_s``, sorted by name.

    With ``want_fingerprint`` it returns as soon as a server claiming that pin is found
    (the agent looking for its own server)."""
    found: dict[str, FoundServer] = {}
    names: asyncio.Queue[str] = asyncio.Queue()
    wanted = asyncio.Event()
    azc = AsyncZeroconf(interfaces=_interfaces(interfaces), ip_version=IPVersion.V4Only)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.put_nowait(name)

    async def resolve() -> None:
        while True:
            name = await names.get()
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, 1500):
                continue
            try:
                advert = Advertisement.parse(info.properties)
            except BadAdvertisement as exc:
                log.info("zeroconf: ignoring %r: %s", name, exc)
                continue
            addresses = info.parsed_addresses(IPVersion.V4Only)
            if not addresses or info.port is None:
                continue
            server = FoundServer(
                name.removesuffix("." + SERVICE_TYPE),
                _url(addresses[0], info.port),
                advert.fingerprint,
            )
            found[name] = server
            if want_fingerprint is not None and advert.fingerprint == want_fingerprint:
                wanted.set()

    browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    resolver = asyncio.ensure_future(resolve())
    try:
        await asyncio.wait_for(wanted.wait(), timeout_s)
    except TimeoutError:
        pass
    finally:
        resolver.cancel()
        await asyncio.gather(resolver, return_exceptions=True)
        await browser.async_cancel()
        await azc.async_close()
    return sorted(found.values(), key=lambda s: (s.name, s.url))


def pick(servers: Sequence[FoundServer], fingerprint: str) -> FoundServer | None:
    """The found server claiming our pin (the connection will still check it)."""
    return next((s for s in servers if s.fingerprint == fingerprint), None)
