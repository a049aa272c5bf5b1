"""The session state machine.

Rules of this module (as in h11's ``_state.py``):

* Everything that decides whether a session may move lives here, as one table.
* It does no I/O and does not know whether it runs on the server or a client: the
  server owns the authoritative copy, and the ends keep one to refuse what the server
  would refuse anyway.
* An illegal event raises :class:`LocalProtocolError` and leaves the state unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from protocol.enums import SessionState
from protocol.errors import ErrorCode, LocalProtocolError


class SessionEvent(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    TIMEOUT = "timeout"
    CALL_CONNECTED = "call_connected"
    HANG_UP = "hang_up"
    RESUME = "resume"
    CLOSE = "close"


class Party(StrEnum):
    """Who causes an event."""

    TECHNICIAN = "technician"
    DEVICE = "device"
    SERVER = "server"  # timeouts, lost peers, revocation


T, D, S = Party.TECHNICIAN, Party.DEVICE, Party.SERVER
St, Ev = SessionState, SessionEvent

#: state -> event -> (next state, who may cause it)
TRANSITIONS: dict[SessionState, dict[SessionEvent, tuple[SessionState, frozenset[Party]]]] = {
    St.INVITED: {
        Ev.ACCEPT: (St.CONNECTING, frozenset({D})),
        Ev.REJECT: (St.REJECTED, frozenset({D, S})),
        Ev.TIMEOUT: (St.EXPIRED, frozenset({S})),
        Ev.CLOSE: (St.CLOSED, frozenset({T, S})),
    },
    St.CONNECTING: {
        Ev.CALL_CONNECTED: (St.IN_CALL, frozenset({T, D})),
        Ev.HANG_UP: (St.CALL_ENDED, frozenset({T, D, S})),
        Ev.CLOSE: (St.CLOSED, frozenset({T, S})),
    },
    St.IN_CALL: {
        Ev.HANG_UP: (St.CALL_ENDED, frozenset({T, D, S})),
        Ev.CLOSE: (St.CLOSED, frozenset({T, S})),
    },
    St.CALL_ENDED: {
        Ev.RESUME: (St.CONNECTING, frozenset({D, T})),
        Ev.CLOSE: (St.CLOSED, frozenset({T, S})),
    },
    St.REJECTED: {},
    St.EXPIRED: {},
    St.CLOSED: {},
}

#: States in which the session is open: the device's status is Connected.
OPEN_STATES = frozenset({St.CONNECTING, St.IN_CALL, St.CALL_ENDED})
#: States after which nothing can happen.
FINAL_STATES = frozenset(s for s, events in TRANSITIONS.items() if not events)
#: States in which SDP and ICE candidates may flow. Before acceptance the device sends
#: nothing, and a technician's offer would leak its addresses to an unconsenting device.
SIGNALING_STATES = frozenset({St.CONNECTING, St.IN_CALL})


@dataclass
class SessionMachine:
    """The state of one session, moved only through :meth:`handle`."""

    state: SessionState = SessionState.INVITED
    history: list[tuple[SessionEvent, Party, SessionState]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def may_signal(self) -> bool:
        return self.state in SIGNALING_STATES

    def allowed(self, event: SessionEvent, by: Party) -> bool:
        entry = TRANSITIONS[self.state].get(event)
        return entry is not None and by in entry[1]

    def handle(self, event: SessionEvent, by: Party) -> SessionState:
        """Apply ``event`` caused by ``by``; return the new state or raise."""
        entry = TRANSITIONS[self.state].get(event)
        if entry is None:
            raise LocalProtocolError(
                ErrorCode.BAD_STATE, f"cannot {event.value} a session that is {self.state.value}"
            )
        next_state, parties = entry
        if by not in parties:
            raise LocalProtocolError(
                ErrorCode.FORBIDDEN, f"the {by.value} cannot {event.value} a session"
            )
        self.state = next_state
        self.history.append((event, by, next_state))
        return next_state
