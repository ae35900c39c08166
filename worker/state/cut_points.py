"""Quantile cut points as stored: one versioned JSON per quantile profile (`rfm:quantiles`)
and the lock one worker holds while it computes new ones (worker/state/locks.py). What
they are and how they are computed: docs/profiles.md."""

from __future__ import annotations

from typing import Any

from worker.rules.quantiles import Cuts
from worker.state import keys
from worker.state.admin import text
from worker.state.locks import ProfileLocks


class CutPoints(ProfileLocks):
    def __init__(self, client: Any) -> None:
        super().__init__(client, keys.quantiles_lock)

    def read(self) -> dict[str, Cuts]:
        """The current cut points of every quantile profile that has some (name -> Cuts)."""
        return {
            text(name): Cuts.from_json(raw)
            for name, raw in self.redis.hgetall(keys.QUANTILES).items()
        }

    def write(self, name: str, cuts: Cuts) -> None:
        self.redis.hset(keys.QUANTILES, name, cuts.to_json())
