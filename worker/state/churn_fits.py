"""Churn-model fits as stored: one versioned JSON per profile with a model (`rfm:churn`)
and the lock one worker holds while it fits (worker/state/locks.py), as for quantile cut
points (cut_points.py); what a fit is: docs/churn.md."""

from __future__ import annotations

import logging
from typing import Any

from worker.rules.churn import Fit
from worker.state import keys
from worker.state.admin import text
from worker.state.locks import ProfileLocks

logger = logging.getLogger(__name__)


class ChurnFits(ProfileLocks):
    def __init__(self, client: Any) -> None:
        super().__init__(client, keys.churn_lock)

    def read(self) -> dict[str, Fit]:
        """The current fit of every profile that has one (name -> Fit); an entry this
        release cannot read (a model it does not know) is left out, as if never fitted."""
        fits: dict[str, Fit] = {}
        for name, raw in self.redis.hgetall(keys.CHURN).items():
            try:
                fits[text(name)] = Fit.from_json(raw)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("unreadable churn fit of profile %s: %s", text(name), exc)
        return fits

    def write(self, name: str, fit: Fit) -> None:
        self.redis.hset(keys.CHURN, name, fit.to_json())
