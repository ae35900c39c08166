"""Now as scores see it: the wall clock, or with RFM_CLOCK=event the event clock, the
latest `occurred_at` seen, kept in Redis (worker/state/lua/clock.lua)."""

from __future__ import annotations

from collections.abc import Callable

from worker.config import Settings
from worker.rules.instants import wall_ms
from worker.state.store import Store


def scoring_now(settings: Settings, store: Store, wall: Callable[[], int] = wall_ms) -> int:
    """The instant scores are taken at (epoch ms); the wall clock until the event clock has
    seen an event."""
    if settings.clock == "event":
        clock = store.read_clock()
        if clock is not None:
            return clock
    return wall()
