"""Now as scores see it: the wall clock, or with RFM_CLOCK=event the event clock, the
latest `occurred_at` seen, kept in Redis (worker/state/lua/clock.lua; docs/time-and-sweeps.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.config import Settings
from worker.rules.instants import wall_ms
from worker.state import keys
from worker.state.scripts import script


class EventClock:
    """The event clock in Redis: it only moves forward, whoever advances it."""

    def __init__(self, client: Any) -> None:
        self.redis = client
        self._advance = client.register_script(script("clock.lua"))

    def advance(self, candidate_ms: int) -> int:
        """Move the clock to `candidate_ms` if that is later; returns where it is."""
        return int(self._advance(keys=[keys.CLOCK], args=[candidate_ms]))

    def read(self) -> int | None:
        raw = self.redis.get(keys.CLOCK)
        return int(raw) if raw else None


def scoring_now(settings: Settings, clock: EventClock, wall: Callable[[], int] = wall_ms) -> int:
    """The instant scores are taken at (epoch ms); the wall clock until the event clock has
    seen an event."""
    if settings.clock == "event":
        at = clock.read()
        if at is not None:
            return at
    return wall()
