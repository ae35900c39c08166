"""`RedisRetry` without Redis: the conditions it waits out (retried until the call
succeeds, the worker not ready meanwhile, saying why), the errors it does not (raised at
once), and the stop (raised instead of retried)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis

from worker.config import Settings
from worker.health import Health
from worker.pacing import Backoff, Stopping
from worker.services.redis_retry import RedisRetry

TINY = Backoff(first=0.001, factor=2.0, cap=0.002)
LOGGER = "worker.services.redis_retry"

UNAVAILABLE = "Redis (RFM_REDIS_URL) is unavailable"
OUT_OF_MEMORY = "out of memory"
REFUSED = "Redis refuses a command the worker needs"


class Rig:
    """A RedisRetry on a Health of its own, with tiny pauses."""

    def __init__(self) -> None:
        self.stopping = Stopping(budget=1.0)
        self.health = Health(Settings(), self.stopping)
        self.retry = RedisRetry(self.health, self.stopping, TINY)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def failing(errors: list[Exception], rig: Rig, seen: list[str | None]) -> Callable[[], str]:
    """A call raising `errors` one by one, then answering "ok"; notes, at each try, the
    problem Health says (what /readyz shows while the call waits)."""
    pending = list(errors)

    def call() -> str:
        seen.append(rig.health.redis_problem)
        if pending:
            raise pending.pop(0)
        return "ok"

    return call


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (redis.ConnectionError("Error 111 connecting to localhost:6379"), UNAVAILABLE),
        (redis.TimeoutError("Timeout reading from socket"), UNAVAILABLE),
        (
            redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory"),
            OUT_OF_MEMORY,
        ),
        (redis.exceptions.NoPermissionError("NOPERM no permissions to run 'evalsha'"), REFUSED),
        (redis.ResponseError("ERR unknown command 'EVALSHA', with args beginning with:"), REFUSED),
    ],
    ids=["connection", "timeout", "oom", "noperm", "unknown-command"],
)
def test_passing_errors_are_retried_until_success(rig: Rig, error: Exception, problem: str) -> None:
    """A passing condition is retried until the call succeeds; meanwhile Health names it
    (the worker is not ready), and success clears it; `failures` counts the tries that
    raised."""
    seen: list[str | None] = []
    assert rig.retry(failing([error, error, error], rig, seen)) == "ok"
    assert len(seen) == 4
    assert seen[0] is None
    for during in seen[1:]:
        assert during is not None and problem in during
    assert rig.health.redis_problem is None
    assert rig.retry.failures == 3
    assert rig.health.ready is False  # (not joined yet: Redis is no longer a reason)
    assert rig.health.not_ready() == [
        f"not yet a member of the consumer group {Settings().kafka_group}"
    ]


def test_each_problem_is_logged_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """One error line per problem (not per try), another when the problem changes, and
    one line when Redis is back."""
    down = redis.ConnectionError("down")
    oom = redis.exceptions.OutOfMemoryError("OOM")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        rig.retry(failing([down, down, down, oom, oom], rig, []))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(errors) == 2
    assert UNAVAILABLE in errors[0] and OUT_OF_MEMORY in errors[1]
    assert infos == ["redis is back"]
    assert rig.retry.failures == 5


def test_success_without_a_problem_logs_nothing(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """A call that succeeds at once: no line, no failure counted."""
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert rig.retry(lambda: 42) == 42
    assert caplog.records == []
    assert rig.retry.failures == 0


def test_other_response_errors_are_raised_at_once(rig: Rig) -> None:
    """A ResponseError that is no refusal (a bug, e.g. WRONGTYPE) is not waited out."""
    seen: list[str | None] = []
    error = redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        rig.retry(failing([error], rig, seen))
    assert len(seen) == 1
    assert rig.retry.failures == 0
    assert rig.health.redis_problem is None


def test_other_exceptions_pass_through(rig: Rig) -> None:
    """What is not a Redis error is not the retry's business: raised at once."""
    seen: list[str | None] = []
    with pytest.raises(ValueError, match="bug"):
        rig.retry(failing([ValueError("bug")], rig, seen))
    assert len(seen) == 1
    assert rig.retry.failures == 0


def test_stopping_raises_instead_of_retrying(rig: Rig) -> None:
    """Once stopping is set, a failure is raised after its try (the batch in hand is left
    uncommitted), still counted and still said."""
    rig.stopping.set()
    seen: list[str | None] = []
    with pytest.raises(redis.ConnectionError):
        rig.retry(failing([redis.ConnectionError("down")] * 5, rig, seen))
    assert len(seen) == 1
    assert rig.retry.failures == 1
    assert rig.health.redis_problem == UNAVAILABLE


def test_stopping_during_the_outage_ends_the_retries(rig: Rig) -> None:
    """A stop that comes while retrying ends the wait at the next failure."""
    seen: list[str | None] = []

    def call() -> str:
        seen.append(rig.health.redis_problem)
        if len(seen) == 3:
            rig.stopping.set()
        raise redis.ConnectionError("down")

    with pytest.raises(redis.ConnectionError):
        rig.retry(call)
    assert len(seen) == 3
    assert rig.retry.failures == 3


def test_attempts_says_whether_the_call_was_retried(rig: Rig) -> None:
    """A retried call's lost reply may hide a first try that ran: `attempts` says so."""
    assert rig.retry.attempts(failing([], rig, [])) == ("ok", False)
    down = redis.ConnectionError("down")
    assert rig.retry.attempts(failing([down], rig, [])) == ("ok", True)
