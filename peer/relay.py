"""ICE servers handed out by the signaling server, as aiortc takes them.

The server sends each call end its STUN/TURN servers with a short-lived TURN
credential in the ``connecting`` ``session.update`` (docs/turn.md). Both ends turn
them into aiortc's ``RTCIceServer`` here, ahead of any servers configured locally:
aiortc uses one TURN server (the first it is given), and the server's credential is
the one that works.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from aiortc import RTCIceServer


class IceServerLike(Protocol):
    """``protocol.messages.IceServer`` or ``device_agent.ipc.IceServer``."""

    @property
    def urls(self) -> tuple[str, ...]: ...

    @property
    def username(self) -> str: ...

    @property
    def credential(self) -> str: ...


def rtc_ice_servers(
    servers: Iterable[IceServerLike], local: Sequence[RTCIceServer] = ()
) -> list[RTCIceServer]:
    """The servers from the signaling server first, then the locally configured ones."""
    handed = [
        RTCIceServer(
            urls=list(server.urls),
            username=server.username or None,
            credential=server.credential or None,
        )
        for server in servers
    ]
    return handed + list(local)
