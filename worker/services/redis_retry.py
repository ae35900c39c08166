"""Redis calls of the consumer loop, retried until they succeed: an outage stalls the
worker and makes it not ready, never drops data and never dead-letters (docs/architecture.md,
Failure behaviour).

Here rather than in worker/state/: the state layer says what a call does; waiting out an
outage is the running worker's policy, tied to its readiness and to its stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis

from worker import collector, metrics
from worker.health import Health
from worker.pacing import REDIS_RETRY, Backoff, Stopping
from worker.state.permissions import is_refusal

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Redis conditions that pass: wait and retry (never dead-letter, never crash). OOM stalls
# the worker rather than losing data; failover (read-only replica, cluster down) too.
PASSING = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
)
# Also waited out: a command refused (ACL, renamed), fixed by an operator while the worker
# waits; nothing is written on a refusal (worker/state/lua/commit.lua checks before its
# first write). Other ResponseErrors are re-raised (see _problem).
REDIS_ERRORS = (*PASSING, redis.ResponseError)


class RedisRetry:
    """Called with a Redis call, runs it until it succeeds, pausing as `policy` says
    between tries; once `stopping` is set, the failure is raised instead (the batch in
    hand is left uncommitted, it is redelivered)."""

    def __init__(self, health: Health, stopping: Stopping, policy: Backoff = REDIS_RETRY) -> None:
        self._health = health
        self._stopping = stopping
        self._policy = policy
        self.failures = 0  # Redis calls that raised, ever

    def __call__(self, call: Callable[[], T]) -> T:
        """Every call retried here is idempotent (see worker/state/store.py), so a retry
        after a timeout whose command did run changes nothing twice."""
        return self.attempts(call)[0]

    def attempts(self, call: Callable[[], T]) -> tuple[T, bool]:
        """The call's value, and whether it had to be retried: a retried call's lost reply
        may hide a first try that did run (see Worker._publish)."""
        failures = self.failures
        pauses = self._policy.pauses()
        while True:
            try:
                value = call()
            except REDIS_ERRORS as exc:
                problem = _problem(exc)
                if problem is None:
                    raise  # another error: a bug, not a condition to wait out
                metrics.REDIS_ERRORS.inc()
                self.failures += 1
                if self._health.redis_problem != problem:
                    logger.error("%s: retrying with backoff (%s)", problem, _one_line(exc))
                    self._health.redis_fails(problem)
                self._health.beat()
                with collector.resumed():  # a wait, maybe inside a batch
                    stopped = self._stopping.wait(next(pauses))
                if stopped:
                    raise  # stopping: leave the batch uncommitted, it is redelivered
                continue
            if self._health.redis_problem is not None:
                logger.info("redis is back")
                self._health.redis_answers()
            return value, self.failures != failures


def _problem(exc: BaseException) -> str | None:
    """What /readyz says of a Redis error the worker waits out (None: not one of those)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "Redis refuses writes: out of memory (maxmemory reached; free memory or raise it)"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "Redis is a read-only replica (a failover under way?)"
    if isinstance(exc, redis.BusyLoadingError):
        return "Redis is loading its data set"
    if isinstance(exc, redis.exceptions.ClusterDownError | redis.exceptions.TryAgainError):
        return "Redis Cluster is down or moving slots"
    if isinstance(exc, redis.exceptions.MasterDownError):
        return "Redis's master is down"
    if is_refusal(exc):
        return (
            f"Redis refuses a command the worker needs ({_one_line(exc)}): grant it "
            "(docs/operations.md, Least privilege)"
        )
    if isinstance(exc, PASSING):
        return "Redis (RFM_REDIS_URL) is unavailable"
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
