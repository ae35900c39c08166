"""Quantile cut points as stored: one versioned JSON per quantile profile (`rfm:quantiles`)
and the lock one worker holds while it computes new ones (redis-py's Lock: SET NX PX with
its own token). What they are and how they are computed: docs/profiles.md."""

from __future__ import annotations

import contextlib
from typing import Any

import redis

from worker.rules.quantiles import Cuts
from worker.state import keys
from worker.state.admin import text


class CutPoints:
    def __init__(self, client: Any) -> None:
        self.redis = client
        self._locks: dict[str, Any] = {}  # profile name -> the lock this process holds

    def read(self) -> dict[str, Cuts]:
        """The current cut points of every quantile profile that has some (name -> Cuts)."""
        return {
            text(name): Cuts.from_json(raw)
            for name, raw in self.redis.hgetall(keys.QUANTILES).items()
        }

    def write(self, name: str, cuts: Cuts) -> None:
        self.redis.hset(keys.QUANTILES, name, cuts.to_json())

    def try_lock(self, name: str, ttl_ms: int) -> bool:
        """Take the lock for computing profile `name`'s cut points, for `ttl_ms` unless
        renewed."""
        lock = self.redis.lock(keys.quantiles_lock(name), timeout=ttl_ms / 1000, thread_local=False)
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
