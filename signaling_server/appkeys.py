"""The keys under which the aiohttp application holds the server's parts.

A module of their own so that every module of routes can reach the store and the hub
without importing :mod:`signaling_server.app`, which imports the routes.
"""

from __future__ import annotations

from aiohttp import web

from signaling_server.config import ServerConfig
from signaling_server.hub import Hub
from signaling_server.login_guard import LoginGuard
from signaling_server.store import Store

CONFIG = web.AppKey("config", ServerConfig)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", Hub)
FINGERPRINT = web.AppKey("fingerprint", str)
LOGIN_GUARD = web.AppKey("login_guard", LoginGuard)
#: Open websockets, closed with GOING_AWAY on shutdown; handlers remove their own.
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])
