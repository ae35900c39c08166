"""Pacing (worker/pacing.py): a retry's pauses and a chore's turns, on a fake clock."""

from __future__ import annotations

import itertools
import time

import pytest

from worker import pacing
from worker.pacing import Backoff, Every


def first(n: int, backoff: Backoff) -> list[float]:
    return list(itertools.islice(backoff.pauses(), n))


def test_backoff_grows_by_its_factor_up_to_its_cap() -> None:
    """`first`, then each `factor` times the last, never above `cap`, for ever."""
    assert first(7, Backoff(first=0.1, factor=2.0, cap=1.0)) == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    )
    assert first(4, Backoff(first=1.0, factor=3.0, cap=20.0)) == pytest.approx(
        [1.0, 3.0, 9.0, 20.0]
    )


def test_backoff_with_factor_one_is_constant() -> None:
    """A factor of 1 pauses the same every time (BROKER_REFUSED)."""
    assert first(5, pacing.BROKER_REFUSED) == [1.0] * 5


def test_backoff_defaults_and_fresh_iterators() -> None:
    """Defaults: factor 2, cap 5 s; each `pauses()` starts again from `first`."""
    backoff = Backoff(first=1.0)
    assert first(5, backoff) == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert first(2, backoff) == [1.0, 2.0]


def test_redis_retry_policy() -> None:
    """The Redis retry: soon after a blip (0.1 s), every 5 s in an outage."""
    assert first(8, pacing.REDIS_RETRY) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


class Clock:
    """time.monotonic, set by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)  # (worker.pacing calls time.monotonic)
    return fake


def test_every_is_due_at_once_then_once_per_period(clock: Clock) -> None:
    """Due at the first call; then not before `seconds` have passed, and once only."""
    every = Every(10.0)
    assert every.due()
    assert not every.due()
    clock.now += 9.75
    assert not every.due()
    clock.now += 0.25  # exactly `seconds` later
    assert every.due()
    assert not every.due()


def test_every_counts_from_the_turn_taken_not_the_one_missed(clock: Clock) -> None:
    """A turn asked for late sets the next one `seconds` after it (no burst to catch up)."""
    every = Every(10.0)
    assert every.due()
    clock.now += 35.0
    assert every.due()
    assert not every.due()
    clock.now += 9.0
    assert not every.due()
    clock.now += 1.0
    assert every.due()


def test_every_first_after_delays_the_first_turn(clock: Clock) -> None:
    """`first_after` keeps the first turn back that long."""
    every = Every(10.0, first_after=3.0)
    assert not every.due()
    clock.now += 2.5
    assert not every.due()
    clock.now += 0.5
    assert every.due()
    assert not every.due()


def test_every_now_makes_the_next_call_due(clock: Clock) -> None:
    """`now()` gives the chore a turn at the next call, then the period resumes."""
    every = Every(10.0)
    assert every.due()
    every.now()
    assert every.due()
    assert not every.due()
