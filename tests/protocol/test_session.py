"""The session state machine against its own table, cell by cell (as h11's test_state)."""

from __future__ import annotations

import itertools

import pytest

from protocol.enums import SessionState
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.session import (
    FINAL_STATES,
    OPEN_STATES,
    SIGNALING_STATES,
    TRANSITIONS,
    Party,
    SessionEvent,
    SessionMachine,
)

St, Ev, P = SessionState, SessionEvent, Party
EVERY_CELL = list(itertools.product(SessionState, SessionEvent, Party))


def _machine_in(state: SessionState) -> SessionMachine:
    return SessionMachine(state=state, history=[(Ev.ACCEPT, P.DEVICE, state)])


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(SessionState)


def test_a_new_session_is_invited() -> None:
    machine = SessionMachine()
    assert machine.state == St.INVITED
    assert machine.history == []


@pytest.mark.parametrize(("state", "event", "party"), EVERY_CELL, ids=str)
def test_every_state_event_party(state: SessionState, event: SessionEvent, party: Party) -> None:
    machine = _machine_in(state)
    before = list(machine.history)
    entry = TRANSITIONS[state].get(event)
    if entry is not None and party in entry[1]:
        assert machine.allowed(event, party)
        assert machine.handle(event, party) == entry[0]
        assert machine.state == entry[0]
        assert machine.history == [*before, (event, party, entry[0])]
        return
    assert not machine.allowed(event, party)
    with pytest.raises(LocalProtocolError) as info:
        machine.handle(event, party)
    expected = ErrorCode.BAD_STATE if entry is None else ErrorCode.FORBIDDEN
    assert info.value.code == expected
    assert machine.state == state
    assert machine.history == before


def test_the_table_as_written() -> None:
    """The allowed cells spelled out: changing the table is a conscious change."""
    T, D, S = P.TECHNICIAN, P.DEVICE, P.SERVER
    expected = {
        (St.INVITED, Ev.ACCEPT): (St.CONNECTING, {D}),
        (St.INVITED, Ev.REJECT): (St.REJECTED, {D, S}),
        (St.INVITED, Ev.TIMEOUT): (St.EXPIRED, {S}),
        (St.INVITED, Ev.CLOSE): (St.CLOSED, {T, S}),
        (St.CONNECTING, Ev.CALL_CONNECTED): (St.IN_CALL, {T, D}),
        (St.CONNECTING, Ev.HANG_UP): (St.CALL_ENDED, {T, D, S}),
        (St.CONNECTING, Ev.CLOSE): (St.CLOSED, {T, S}),
        (St.IN_CALL, Ev.HANG_UP): (St.CALL_ENDED, {T, D, S}),
        (St.IN_CALL, Ev.CLOSE): (St.CLOSED, {T, S}),
        (St.CALL_ENDED, Ev.RESUME): (St.CONNECTING, {T, D}),
        (St.CALL_ENDED, Ev.CLOSE): (St.CLOSED, {T, S}),
    }
    actual = {
        (state, event): (target, set(parties))
        for state, row in TRANSITIONS.items()
        for event, (target, parties) in row.items()
    }
    assert actual == expected


def test_open_final_and_signaling_states() -> None:
    assert {St.CONNECTING, St.IN_CALL, St.CALL_ENDED} == OPEN_STATES
    assert {St.REJECTED, St.EXPIRED, St.CLOSED} == FINAL_STATES
    assert {St.CONNECTING, St.IN_CALL} == SIGNALING_STATES
    assert not OPEN_STATES & FINAL_STATES
    assert SIGNALING_STATES <= OPEN_STATES
    # Invited is neither open nor final: the device is not Connected yet.
    assert St.INVITED not in OPEN_STATES | FINAL_STATES


@pytest.mark.parametrize("state", list(SessionState))
def test_machine_properties_follow_the_sets(state: SessionState) -> None:
    machine = SessionMachine(state=state)
    assert machine.is_open == (state in OPEN_STATES)
    assert machine.is_final == (state in FINAL_STATES)
    assert machine.may_signal == (state in {St.CONNECTING, St.IN_CALL})
    assert machine.is_final == (not TRANSITIONS[state])


def test_no_signaling_before_acceptance() -> None:
    machine = SessionMachine()
    assert not machine.may_signal
    machine.handle(Ev.ACCEPT, P.DEVICE)
    assert machine.may_signal


def test_full_lifecycle() -> None:
    machine = SessionMachine()
    steps = [
        (Ev.ACCEPT, P.DEVICE, St.CONNECTING, True),
        (Ev.CALL_CONNECTED, P.TECHNICIAN, St.IN_CALL, True),
        (Ev.HANG_UP, P.DEVICE, St.CALL_ENDED, False),
        (Ev.RESUME, P.DEVICE, St.CONNECTING, True),
        (Ev.CALL_CONNECTED, P.DEVICE, St.IN_CALL, True),
        (Ev.CLOSE, P.TECHNICIAN, St.CLOSED, False),
    ]
    for event, party, state, may_signal in steps:
        assert machine.handle(event, party) == state
        assert machine.may_signal == may_signal
        assert machine.is_open == (state != St.CLOSED)
    assert machine.is_final
    assert machine.history == [(e, p, s) for e, p, s, _ in steps]


@pytest.mark.parametrize(
    ("events", "final"),
    [
        ([(Ev.REJECT, P.DEVICE)], St.REJECTED),
        ([(Ev.TIMEOUT, P.SERVER)], St.EXPIRED),
        ([(Ev.CLOSE, P.TECHNICIAN)], St.CLOSED),  # cancelled before an answer
        ([(Ev.ACCEPT, P.DEVICE), (Ev.CLOSE, P.SERVER)], St.CLOSED),  # a member lost
    ],
)
def test_other_endings(events: list[tuple[SessionEvent, Party]], final: SessionState) -> None:
    machine = SessionMachine()
    for event, party in events:
        machine.handle(event, party)
    assert machine.state == final
    assert machine.is_final
    for event, party in itertools.product(SessionEvent, Party):
        with pytest.raises(LocalProtocolError) as info:
            machine.handle(event, party)
        assert info.value.code == ErrorCode.BAD_STATE


@pytest.mark.parametrize("state", list(SessionState))
def test_a_device_can_never_close(state: SessionState) -> None:
    machine = SessionMachine(state=state)
    with pytest.raises(LocalProtocolError):
        machine.handle(Ev.CLOSE, P.DEVICE)
    assert machine.state == state
    assert machine.history == []


def test_only_the_device_answers_an_invite() -> None:
    for party in (P.TECHNICIAN, P.SERVER):
        machine = SessionMachine()
        with pytest.raises(LocalProtocolError) as info:
            machine.handle(Ev.ACCEPT, party)
        assert info.value.code == ErrorCode.FORBIDDEN
        assert machine.state == St.INVITED


def test_hang_up_keeps_the_session_open() -> None:
    machine = SessionMachine(state=St.IN_CALL)
    machine.handle(Ev.HANG_UP, P.DEVICE)
    assert machine.is_open
    assert not machine.may_signal
