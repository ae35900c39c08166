"""Per-profile locks: the one worker that computes a profile's cut points or fits its churn
model holds it (redis-py's Lock: SET NX PX with its own token), renewing it each step so
that a worker that died frees it within the TTL."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis


class ProfileLocks:
    def __init__(self, client: Any, key_of: Callable[[str], bytes]) -> None:
        self.redis = client
        self._key_of = key_of
        self._locks: dict[str, Any] = {}  # profile name -> the lock this process holds

    def try_lock(self, name: str, ttl_ms: int) -> bool:
        """Take profile `name`'s lock, for `ttl_ms` unless renewed."""
        lock = self.redis.lock(self._key_of(name), timeout=ttl_ms / 1000, thread_local=False)
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
