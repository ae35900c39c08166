"""Redis calls of the consumer loop, retried until they succeed: an outage stalls the
worker and makes it not ready, never drops data and never dead-letters (docs/architecture.md,
Failure behaviour).

Here rather than in worker/state/: the state layer says what a call does; waiting out an
outage is the running worker's policy, tied to its readiness and to its stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import redis

from worker import metrics
from worker.health import Health
from worker.pacing import REDIS_RETRY, Backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Redis conditions that pass: wait and retry (never dead-letter, never crash). OOM stalls
# the worker rather than losing data; failover (read-only replica, cluster down) too.
REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
)


class RedisRetry:
    """Called with a Redis call, runs it until it succeeds, pausing as `policy` says
    between tries; once `stopping` is set, the failure is raised instead (the batch in
    hand is left uncommitted, it is redelivered)."""

    def __init__(
        self, health: Health, stopping: threading.Event, policy: Backoff = REDIS_RETRY
    ) -> None:
        self._health = health
        self._stopping = stopping
        self._policy = policy
        self.failures = 0  # Redis calls that raised, ever: tells a retried call

    def __call__(self, call: Callable[[], T]) -> T:
        """Every call retried here is idempotent (see worker/state/store.py), so a retry
        after a timeout whose command did run changes nothing twice."""
        pauses = self._policy.pauses()
        while True:
            try:
                value = call()
            except REDIS_ERRORS as exc:
                metrics.REDIS_ERRORS.inc()
                self.failures += 1
                if self._health.redis_ok:
                    logger.error("redis unavailable, retrying with backoff: %s", exc)
                self._health.redis_ok = False
                metrics.READY.set(0)
                self._health.beat()
                if self._stopping.wait(next(pauses)):
                    raise  # stopping: leave the batch uncommitted, it is redelivered
                continue
            if not self._health.redis_ok:
                logger.info("redis is back")
            self._health.redis_ok = True
            metrics.READY.set(1 if self._health.ready else 0)
            return value
