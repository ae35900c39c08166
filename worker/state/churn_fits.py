"""Churn-model fits as stored: one versioned JSON per profile with a model (`rfm:churn`)
and the lock one worker holds while it fits (redis-py's Lock: SET NX PX with its own
token). The same layout and lock as quantile cut points (cut_points.py); what a fit is:
docs/churn.md."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis

from worker.rules.churn import Fit
from worker.state import keys
from worker.state.admin import text

logger = logging.getLogger(__name__)


class ChurnFits:
    def __init__(self, client: Any) -> None:
        self.redis = client
        self._locks: dict[str, Any] = {}  # profile name -> the lock this process holds

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

    def try_lock(self, name: str, ttl_ms: int) -> bool:
        """Take the lock for fitting profile `name`'s model, for `ttl_ms` unless renewed."""
        lock = self.redis.lock(keys.churn_lock(name), timeout=ttl_ms / 1000, thread_local=False)
        if not lock.acquire(blocking=False):
            return False
        self._locks[name] = lock
        return True

    def renew_lock(self, name: str, ttl_ms: int) -> bool:
        """Extend the lock to `ttl_ms` from now if this process still holds it; False if it
        was lost (expired, taken by another worker)."""
        lock = self._locks.get(name)
        if lock is None:
            return False
        try:
            lock.extend(ttl_ms / 1000, replace_ttl=True)
        except redis.exceptions.LockError:
            del self._locks[name]
            return False
        return True

    def unlock(self, name: str) -> None:
        """Release the lock if this process still holds it."""
        lock = self._locks.pop(name, None)
        if lock is not None:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()
