"""The failed-login guard on its own, with an injected clock: the doubling, the cap,
the two keys, the reset on success, and its bounded memory."""

from __future__ import annotations

import pytest

from signaling_server.login_guard import LoginGuard, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **overrides: float) -> LoginGuard:
    settings: dict[str, float] = {"base_s": 1.0, "cap_s": 60.0, "free_failures": 3}
    settings.update(overrides)
    return LoginGuard(
        base_s=settings["base_s"],
        cap_s=settings["cap_s"],
        free_failures=int(settings["free_failures"]),
        max_entries=int(settings.get("max_entries", 10_000)),
        forget_after_s=settings.get("forget_after_s", 900.0),
        clock=clock,
    )


def test_the_lock_doubles_per_failure_up_to_the_cap() -> None:
    clock = Clock()
    g = guard(clock)
    locks = []
    for _ in range(12):
        assert g.retry_after("alice", "10.0.0.1") == 0
        lockouts = g.failed("alice", "10.0.0.1")
        locks.append(max((lock.seconds for lock in lockouts), default=0.0))
        # The next try is refused for exactly the lock just started...
        assert g.retry_after("alice", "10.0.0.1") == locks[-1]
        clock.now += locks[-1]  # ...and allowed once it ran out.
    assert locks == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_per_account_whatever_the_address_and_per_address_whatever_the_account() -> None:
    clock = Clock()
    g = guard(clock, free_failures=0)
    # One name guessed from many addresses: the account locks.
    g.failed("alice", "10.0.0.1")
    assert g.retry_after("alice", "10.9.9.9") == 1.0
    assert g.retry_after("ALICE ", "10.9.9.9") == 1.0  # one account, however spelled
    assert g.retry_after("bob", "10.9.9.9") == 0
    # One address spraying many names: the address locks for every name.
    assert g.retry_after("bob", "10.0.0.1") == 1.0
    assert g.retry_after("carol", "10.0.0.1") == 1.0


def test_a_success_resets_the_account_not_the_address() -> None:
    clock = Clock()
    g = guard(clock, free_failures=1)
    for _ in range(3):
        clock.now += 100
        g.failed("alice", "10.0.0.1")
    clock.now += 100
    g.succeeded("alice", "10.0.0.1")
    assert g.retry_after("alice", "10.0.0.2") == 0
    # The address keeps its count: one valid account does not whitewash guessing.
    lockouts = g.failed("mallory", "10.0.0.1")
    assert [lock.key for lock in lockouts] == ["address:10.0.0.1"]
    assert lockouts[0].failures == 4
    assert lockouts[0].seconds == 4.0


def test_idle_records_are_forgotten() -> None:
    clock = Clock()
    g = guard(clock, free_failures=0, forget_after_s=120)
    g.failed("alice", "10.0.0.1")
    assert len(g) == 2
    clock.now += 119
    g.failed("alice", "10.0.0.1")  # still remembered: the second failure doubles
    assert g.retry_after("alice", "10.0.0.1") == 2.0
    clock.now += 200
    assert g.retry_after("alice", "10.0.0.1") == 0
    assert len(g) == 0
    assert [lock.failures for lock in g.failed("alice", "10.0.0.1")] == [1, 1]


def test_memory_is_bounded_when_names_rotate() -> None:
    clock = Clock()
    g = guard(clock, free_failures=0, max_entries=100)
    for n in range(10_000):
        g.failed(f"user{n}", "10.0.0.1")
    assert len(g) <= 100
    # The rotating address is the hottest key and is never the one evicted.
    assert g.retry_after("a-new-name", "10.0.0.1") > 0


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("?", "?"),
    ],
)
def test_address_keys(address: str, key: str) -> None:
    assert address_key(address) == key


def test_retry_after_is_rounded_up_and_bad_settings_are_refused() -> None:
    assert LoginGuard.retry_after_header(0.01) == "1"
    assert LoginGuard.retry_after_header(2.2) == "3"
    with pytest.raises(ValueError, match="base_s"):
        LoginGuard(base_s=0)
    with pytest.raises(ValueError, match="base_s"):
        LoginGuard(base_s=10, cap_s=1)
