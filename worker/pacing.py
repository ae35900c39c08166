"""Pacing for the loops: how long to wait before a retry, how often a chore runs.

Retry policies are data (`Backoff`), so the pauses of every retrying loop read side by
side here; periodic chores (lag report, sweeps, cut-point checks, outbox trims) ask an
`Every` whether their turn has come instead of keeping their own timestamps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses of a retrying loop: `first`, then each `factor` times longer, up to `cap`."""

    first: float
    factor: float = 2.0
    cap: float = 5.0

    def pauses(self) -> Iterator[float]:
        pause = self.first
        while True:
            yield pause
            pause = min(pause * self.factor, self.cap)


# Redis unavailable: retry soon (a blip), then every 5 s (an outage) without hammering it.
REDIS_RETRY = Backoff(first=0.1, factor=2.0, cap=5.0)
# Cluster slots moving (a resharding): a migration moves keys in batches, so wait a bit.
SLOTS_MOVING = Backoff(first=0.05, factor=1.5, cap=0.5)
# A record the broker refused (a missing topic, a full queue): sent again after a pause,
# always the same (the relay and the dead letters keep their order, so they wait anyway).
BROKER_REFUSED = Backoff(first=1.0, factor=1.0, cap=1.0)


class Every:
    """A chore's turn: `due()` is True at most once per `seconds` (monotonic time).

    `due()` is True at the first call unless `first_after` says otherwise; `now()` makes
    the next call True (something changed that the chore must see at once).
    """

    __slots__ = ("_next", "seconds")

    def __init__(self, seconds: float, *, first_after: float = 0.0) -> None:
        self.seconds = seconds
        self._next = time.monotonic() + first_after

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True

    def now(self) -> None:
        self._next = 0.0


class Stopping:
    """The worker's stop, shared by the parts of the loop: set once (SIGTERM, SIGINT), then
    what is in hand drains within `budget` seconds (the relay's acknowledgements, the dead
    letters' wait); waits that must end at the stop wait on it."""

    def __init__(self, budget: float) -> None:
        self._event = threading.Event()
        self._budget = budget
        self._by = 0.0

    def set(self) -> None:
        self._by = time.monotonic() + self._budget
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True (at once) when the stop comes meanwhile."""
        return self._event.wait(seconds)

    def time_left(self) -> float:
        """Seconds left to drain: the whole budget until the stop is set."""
        if not self._event.is_set():
            return self._budget
        return max(0.5, self._by - time.monotonic())

    def out_of_time(self) -> bool:
        """Stopping, and the drain budget is spent."""
        return self._event.is_set() and time.monotonic() > self._by
