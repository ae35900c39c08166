"""Redis losing writes or everything, end to end: a real broker, a real Redis.

A failover to a replica that missed the last writes (simulated by restoring a snapshot
taken earlier), and a Redis restarted empty (FLUSHALL): the worker must notice, replay
from the state's own offsets in the first case, refuse to go on in the second, and
`rfm-worker rebuild` must replay the orders topic into a clean, exact state.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import redis

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import assert_state_matches, converged, records_of
from tests.reference import expected_now
from worker.state.store import Store


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


def test_a_failover_that_lost_the_last_writes_is_replayed_from_the_state(
    deployment: Deployment, store: Store, redis_client: redis.Redis
) -> None:
    first, second = generate(60, seed=41), generate(60, seed=42)
    second = [{**e, "event_id": f"2-{e['event_id']}"} for e in second]  # new events
    worker = deployment.worker()
    deployment.produce(records_of(first))
    deployment.read(deployment.actions, until=converged(expected_now(first)))
    older = _snapshot(redis_client)  # what a lagging replica holds

    deployment.produce(records_of(second))
    expected = expected_now(first + second)
    deployment.read(deployment.actions, until=converged(expected))
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
    expected = expected_now(events)
    worker = deployment.worker()
    deployment.produce(records_of(events))
    deployment.read(deployment.actions, until=converged(expected))
    assert worker.stop() == 0

    redis_client.flushall()  # Redis came back empty
    refused = deployment.worker()
    assert refused.proc is not None
    assert refused.proc.wait(60) == 1
    assert "Redis holds no customer" in refused.log()
    assert "rfm-worker rebuild" in refused.log()
    assert store.reads.holds_customers() is False  # it wrote no customer

    rebuilt = deployment.command("rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt from" in rebuilt.stdout, rebuilt.stdout
    assert_state_matches(store, expected)
    # A second rebuild must be asked for explicitly: it deletes the state first.
    asked = deployment.command("rebuild")
    assert asked.returncode == 2 and "--yes" in asked.stderr

    later = [{**e, "event_id": f"L-{e['event_id']}"} for e in generate(30, seed=44)]
    worker = deployment.worker()  # resumes where the rebuild stopped
    deployment.produce(records_of(later))
    both = expected_now(events + later)
    deployment.read(deployment.actions, until=converged(both))
    assert_state_matches(store, both)
    assert "Redis holds no" not in worker.log()
    assert worker.stop() == 0


def _restore_at_once(client: redis.Redis, snapshot: dict[bytes, Any]) -> None:
    """A failover behind a stable address: in one transaction, Redis becomes the replica
    that missed the last writes (the worker never sees a half-restored state)."""
    pipe = client.pipeline(transaction=True)
    pipe.flushall()
    for key, blob in snapshot.items():
        pipe.restore(key, 0, blob)
    pipe.execute()


def assert_one_id_per_change(messages: list[Any]) -> None:
    """Every customer's changes form an unbroken chain once copies are dropped by
    change_id (as a consumer that deduplicates does), a recomputed copy says the same as
    the first, and no change is published under two ids."""
    seen: dict[str, tuple[Any, ...]] = {}
    ids: dict[tuple[Any, ...], str] = {}
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for msg in messages:
        change = orjson.loads(msg.value())
        if change["type"] != "rfm.changed":
            continue
        what = (
            change["tenant"],
            change["customer_id"],
            change["cause"],
            change["cause_event_id"],
            orjson.dumps(change["previous"]),
            orjson.dumps(change["current"]),
        )
        if change["change_id"] in seen:
            assert seen[change["change_id"]] == what  # a copy: the same change
            continue
        seen[change["change_id"]] = what
        assert ids.setdefault(what, change["change_id"]) == change["change_id"], what
        chains.setdefault((change["tenant"], change["customer_id"]), []).append(change)
    for customer, chain in chains.items():
        assert chain[0]["previous"] is None, customer
        for before, after in itertools.pairwise(chain):
            assert after["previous"] == before["current"], customer


def test_a_failover_under_the_running_worker_is_replayed_with_the_same_change_ids(
    deployment: Deployment, store: Store, redis_client: redis.Redis
) -> None:
    """Redis fails over, while the worker runs, to a replica that missed the last writes
    (same address). The worker's next commit sees it (the shards hold less than they
    vouched for), writes nothing on it, replays from what the state holds; the changes it
    publishes again carry the ids they had, so every chain stays unbroken."""
    first, second, third = (
        [{**e, "event_id": f"{n}-{e['event_id']}"} for e in generate(60, seed=seed)]
        for n, seed in (("1", 45), ("2", 46), ("3", 47))
    )
    second = [{**e, "customer_id": f"b-{e['customer_id']}"} for e in second]
    third = [{**e, "customer_id": f"c-{e['customer_id']}"} for e in third]
    worker = deployment.worker()
    deployment.produce(records_of(first))
    deployment.read(deployment.actions, until=converged(expected_now(first)))
    older = _snapshot(redis_client)  # what the lagging replica holds
    deployment.produce(records_of(second))
    deployment.read(deployment.actions, until=converged(expected_now(first + second)))

    _restore_at_once(redis_client, older)  # `second` is gone from Redis, not from Kafka
    deployment.produce(records_of(third))
    expected = expected_now(first + second + third)
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=90)
    _eventually(lambda: assert_state_matches(store, expected))
    assert "Redis lost writes while the worker ran" in worker.log()
    assert_one_id_per_change(actions)
    assert worker.proc is not None and worker.proc.poll() is None  # no restart needed
    assert worker.stop() == 0


def test_a_redis_flushed_under_the_running_worker_stops_it_before_any_write(
    deployment: Deployment, store: Store, redis_client: redis.Redis
) -> None:
    """FLUSHALL while the worker runs: its next commit sees that the shards lost what they
    vouched for, writes nothing, and the worker stops with one line asking for
    `rfm-worker rebuild`, which restores the exact state."""
    events, later = generate(60, seed=48), generate(40, seed=49)
    later = [{**e, "event_id": f"L-{e['event_id']}"} for e in later]
    worker = deployment.worker()
    deployment.produce(records_of(events))
    deployment.read(deployment.actions, until=converged(expected_now(events)))
    redis_client.flushall()
    deployment.produce(records_of(later))
    assert worker.proc is not None
    assert worker.proc.wait(60) == 1
    assert "Redis lost every record" in worker.log() and "rfm-worker rebuild" in worker.log()
    assert store.reads.holds_customers() is False  # nothing written on the empty Redis
    rebuilt = deployment.command("rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert_state_matches(store, expected_now(events + later))
