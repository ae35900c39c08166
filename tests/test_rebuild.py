"""Redis losing writes or everything, end to end: a real broker, a real Redis.

A failover to a replica that missed the last writes (simulated by restoring a snapshot
taken earlier), and a Redis restarted empty (FLUSHALL): the worker must notice, replay
from the state's own offsets in the first case, refuse to go on in the second, and
`rfm-worker rebuild` must replay the orders topic into a clean, exact state.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from tests.conftest import Deployment
from tests.test_consumer import (
    _converged,
    _expected,
    _records,
    assert_state_matches,
    generate,
)
from worker.store import Store

pytestmark = pytest.mark.integration


def _snapshot(client: redis.Redis) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in client.keys(b"*")}  # type: ignore[misc]


def _restore(client: redis.Redis, snapshot: dict[bytes, Any]) -> None:
    client.flushall()
    for key, blob in snapshot.items():
        client.restore(key, 0, blob)


def _eventually(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _rfm(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=dep.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_failover_that_lost_the_last_writes_is_replayed_from_the_state(
    deployment: Deployment, store: Store, redis_client: redis.Redis
) -> None:
    first, second = generate(60, seed=41), generate(60, seed=42)
    second = [{**e, "event_id": f"2-{e['event_id']}"} for e in second]  # new events
    worker = deployment.worker()
    deployment.produce(_records(first))
    deployment.read(deployment.actions, until=_converged(_expected(first)))
    older = _snapshot(redis_client)  # what a lagging replica holds

    deployment.produce(_records(second))
    expected = _expected(first + second)
    deployment.read(deployment.actions, until=_converged(expected))
    assert worker.stop() == 0  # Kafka's committed offsets are past `second` now

    _restore(redis_client, older)  # the failover: `second` is gone from Redis
    again = deployment.worker()
    _eventually(lambda: assert_state_matches(store, expected))
    assert "Redis lost writes" in again.log() and "replaying from" in again.log()
    assert again.stop() == 0


def test_redis_restarted_empty_stops_the_worker_until_a_rebuild(
    deployment: Deployment, store: Store, redis_client: redis.Redis
) -> None:
    events = generate(80, seed=43)
    expected = _expected(events)
    worker = deployment.worker()
    deployment.produce(_records(events))
    deployment.read(deployment.actions, until=_converged(expected))
    assert worker.stop() == 0

    redis_client.flushall()  # Redis came back empty
    refused = deployment.worker()
    assert refused.proc is not None
    assert refused.proc.wait(60) == 1
    assert "Redis holds no customer" in refused.log()
    assert "rfm-worker rebuild" in refused.log()
    assert store.holds_customers() is False  # it wrote no customer

    rebuilt = _rfm(deployment, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt from" in rebuilt.stdout, rebuilt.stdout
    assert_state_matches(store, expected)
    # A second rebuild must be asked for explicitly: it deletes the state first.
    asked = _rfm(deployment, "rebuild")
    assert asked.returncode == 2 and "--yes" in asked.stderr

    later = [{**e, "event_id": f"L-{e['event_id']}"} for e in generate(30, seed=44)]
    worker = deployment.worker()  # resumes where the rebuild stopped
    deployment.produce(_records(later))
    both = _expected(events + later)
    deployment.read(deployment.actions, until=_converged(both))
    assert_state_matches(store, both)
    assert "Redis holds no" not in worker.log()
    assert worker.stop() == 0
