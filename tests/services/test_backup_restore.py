"""Redis restored from a backup taken earlier, end to end: a real broker, a real Redis
restarted on its own port and directory from a copy of its dump.rdb (docs/operations.md,
"Backup and recovery").

The backup's applied offsets (rfm:{NN}:applied) say up to where its state holds each
partition; the worker replays from there, whether it was stopped during the restore or
kept running through it (it sees Redis go away, then the lost writes). The state ends
equal to the recomputation from every event, and every change published again for the
replayed events carries the id it had the first time. Records the orders topic no longer
holds when the backup is restored are lost to the state: the worker says so and counts
it, and producing those orders again recovers them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from tests.conftest import Deployment, deployed
from tests.factories import generate
from tests.fixtures import assert_state_matches, converged, records_of
from tests.reference import expected_now
from tests.services.test_topic_recreated import resets, wait_applied
from worker.embedded import EmbeddedRedis
from worker.state.store import Store


@pytest.fixture
def restorable(kafka: Any, tmp_path: Path) -> Iterator[tuple[Deployment, EmbeddedRedis]]:
    """A deployment on the suite's broker and a Redis of this test's own, which
    `EmbeddedRedis.backup` and `restore` back up (BGSAVE, a copy of its dump.rdb) and
    restore (SHUTDOWN NOSAVE, the copy put back, started again on the same port)."""
    with EmbeddedRedis() as server, deployed(kafka, server, tmp_path) as dep:
        yield dep, server


def phases(seed: int, *names: str) -> list[list[dict[str, Any]]]:
    """Streams of events, one per name: new events (ids of their own) of the same
    customers, so the later ones move scores the earlier ones set."""
    return [
        [
            {**e, "event_id": f"{name}-{e['event_id']}", "order_id": f"{name}-{e['order_id']}"}
            for e in generate(60, seed=seed + i)
        ]
        for i, name in enumerate(names)
    ]


def published(dep: Deployment, events: list[dict[str, Any]], timeout: float = 90) -> list[Any]:
    """The actions topic once every customer's last change is the recomputation's."""
    return dep.read(dep.actions, until=converged(expected_now(events)), timeout=timeout)


def exact(dep: Deployment, store: Store, events: list[dict[str, Any]]) -> list[Any]:
    """Until the state equals the recomputation from `events` (their changes published
    before may make the actions topic look done already); then the actions topic."""
    expected = expected_now(events)
    deadline = time.monotonic() + 90
    while True:
        try:
            assert_state_matches(store, expected)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    return published(dep, events)


def what(change: dict[str, Any]) -> tuple[Any, ...]:
    """A change without its id: what a change id is derived from."""
    return (
        change["tenant"],
        change["customer_id"],
        change["cause"],
        change["cause_event_id"],
        orjson.dumps(change["previous"]),
        orjson.dumps(change["current"]),
    )


def assert_replayed_with_the_same_ids(
    before: list[Any], actions: list[Any], replayed: list[dict[str, Any]]
) -> None:
    """Every change published after the restore for a replayed event was published before
    it, with the same id; every chain is unbroken (assert_chains_unbroken)."""
    changes = [orjson.loads(m.value()) for m in before]
    ids = {what(c): c["change_id"] for c in changes if c["type"] == "rfm.changed"}
    positions = {(m.partition(), m.offset()) for m in before}
    replayed_ids = {e["event_id"] for e in replayed}
    again = 0
    for msg in actions:
        change = orjson.loads(msg.value())
        if (msg.partition(), msg.offset()) in positions or change["type"] != "rfm.changed":
            continue
        if change["cause_event_id"] in replayed_ids:
            again += 1
            assert ids.get(what(change)) == change["change_id"], change
    assert again, "no change was published again for the replayed events"
    assert_chains_unbroken(actions)


def assert_chains_unbroken(actions: list[Any]) -> None:
    """Per customer, in topic order, copies dropped by change_id (as a consumer that
    deduplicates does): each change starts where the previous one ended. A copy may be a
    change computed again (a replay), so it says the same as the first but for when it
    was computed (`as_of`, `emitted_at`); no change is published under two ids."""
    seen: dict[str, tuple[Any, ...]] = {}
    ids: dict[tuple[Any, ...], str] = {}
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for msg in actions:
        change = orjson.loads(msg.value())
        assert msg.key() == change["customer_id"].encode()
        if change["type"] != "rfm.changed":
            continue
        if change["change_id"] in seen:
            assert seen[change["change_id"]] == what(change), change
            continue
        seen[change["change_id"]] = what(change)
        assert ids.setdefault(what(change), change["change_id"]) == change["change_id"], change
        chains.setdefault((change["tenant"], change["customer_id"]), []).append(change)
    for customer, chain in chains.items():
        assert chain[0]["previous"] is None, customer
        for before, after in itertools.pairwise(chain):
            assert after["previous"] == before["current"], customer
            assert after["previous"] != after["current"], customer


def backed_up_between(
    dep: Deployment,
    server: EmbeddedRedis,
    store: Store,
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    tmp_path: Path,
    partitions: tuple[int, int] | None = None,
) -> tuple[Path, list[Any]]:
    """`first` applied, Redis backed up, then `second` applied (to these partitions, if
    given): the backup, and every change published by then."""

    def send(events: list[dict[str, Any]], partition: int | None) -> None:
        if partition is None:
            dep.produce(records_of(events))
        else:
            produce_to(dep, partition, events)

    to_first, to_second = partitions or (None, None)
    send(first, to_first)
    published(dep, first)
    wait_applied(store, dep.orders, len(first))
    backup = server.backup(tmp_path / "backup.rdb")
    send(second, to_second)
    before = published(dep, first + second)
    wait_applied(store, dep.orders, len(first + second))
    return backup, before


def test_a_backup_restored_while_the_workers_were_stopped_is_replayed_exactly(
    restorable: tuple[Deployment, EmbeddedRedis], tmp_path: Path
) -> None:
    """The group's committed offsets are past the backup's applied offsets: the worker
    starts where the restored state is, not where the group is."""
    dep, server = restorable
    first, second, third = phases(310, "1", "2", "3")
    store = Store(redis.Redis.from_url(server.url))
    worker = dep.worker()
    backup, before = backed_up_between(dep, server, store, first, second, tmp_path)
    assert worker.stop() == 0

    server.restore(backup)
    store = Store(redis.Redis.from_url(server.url))
    assert_state_matches(store, expected_now(first))  # the backup's state: `second` lost
    dep.produce(records_of(third))
    again = dep.worker()
    actions = exact(dep, store, first + second + third)
    assert_replayed_with_the_same_ids(before, actions, second)
    assert "Kafka's commit says" in again.log() and "(Redis lost writes)" in again.log()
    assert again.stop() == 0


def test_a_backup_restored_under_a_running_worker_is_replayed_exactly(
    restorable: tuple[Deployment, EmbeddedRedis], tmp_path: Path
) -> None:
    """Redis stops, comes back from the backup on the same address; the worker waits out
    the outage, then sees that the shards hold less than they vouched for and replays
    from the backup's applied offsets, without a restart."""
    dep, server = restorable
    first, second, third = phases(320, "1", "2", "3")
    store = Store(redis.Redis.from_url(server.url))
    worker = dep.worker()
    backup, before = backed_up_between(dep, server, store, first, second, tmp_path)

    server.restore(backup)
    store = Store(redis.Redis.from_url(server.url))
    dep.produce(records_of(third))
    actions = exact(dep, store, first + second + third)
    assert_replayed_with_the_same_ids(before, actions, second)
    assert "Redis lost writes while the worker ran" in worker.log()
    assert worker.proc is not None and worker.proc.poll() is None  # no restart needed
    assert worker.stop() == 0


def test_a_backup_restored_under_an_idle_worker_is_replayed_without_a_new_order(
    restorable: tuple[Deployment, EmbeddedRedis], tmp_path: Path
) -> None:
    """No order comes after the restore: the worker still notices, by itself, that the
    state holds less than it vouched for, and replays."""
    dep, server = restorable
    first, second = phases(330, "1", "2")
    store = Store(redis.Redis.from_url(server.url))
    worker = dep.worker()
    backup, before = backed_up_between(dep, server, store, first, second, tmp_path)

    server.restore(backup)
    store = Store(redis.Redis.from_url(server.url))
    actions = exact(dep, store, first + second)
    assert_replayed_with_the_same_ids(before, actions, second)
    assert "Redis lost writes while the worker ran" in worker.log()
    assert worker.stop() == 0


def test_a_backup_older_than_the_topic_s_start_loses_those_orders_until_produced_again(
    restorable: tuple[Deployment, EmbeddedRedis], apache_kafka: Any, tmp_path: Path
) -> None:
    """The orders between the backup and the restore were deleted from the topic (as
    retention deletes them) before it was restored: the worker says how many records it
    cannot replay, counts it (`before_start`), and goes on; producing those orders again
    (duplicates count once) makes the state exact."""
    dep, server = restorable
    first, second = phases(340, "1", "2")
    store = Store(redis.Redis.from_url(server.url))
    worker = dep.worker()
    backup, _ = backed_up_between(dep, server, store, first, second, tmp_path)
    assert worker.stop() == 0
    admin = AdminClient({"bootstrap.servers": apache_kafka.bootstrap})
    wiped = [TopicPartition(dep.orders, p, -1) for p in range(4)]  # -1: every record
    for future in admin.delete_records(wiped).values():
        future.result()

    server.restore(backup)
    store = Store(redis.Redis.from_url(server.url))
    again = dep.worker()
    wait_logged(again, "were deleted (retention) before this worker applied them")
    # (one reset per partition, counted as each is assigned and started: wait for all four)
    port, deadline = int(again.env["RFM_HTTP_PORT"]), time.monotonic() + 30
    while resets(port, "before_start") < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resets(port, "before_start") == 4
    assert_state_matches(store, expected_now(first))  # `second` is gone from both

    source = tmp_path / "second.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in second))
    produced = dep.command("produce", str(source))
    assert produced.returncode == 0, produced.stderr
    exact(dep, store, first + second)
    assert again.stop() == 0


def wait_logged(worker: Any, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{worker.log()[-3000:]}"
        time.sleep(0.2)


def produce_to(dep: Deployment, partition: int, events: list[dict[str, Any]]) -> None:
    """Produce `events` to one partition of the orders topic, whatever their keys."""
    producer = dep.producer(**{"linger.ms": 5})
    for key, value in records_of(events):
        producer.produce(dep.orders, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def test_a_backup_older_than_a_partition_s_first_record_stops_a_running_worker_once(
    restorable: tuple[Deployment, EmbeddedRedis], tmp_path: Path
) -> None:
    """The backup holds no record of partition 1 (its first order came after it): the
    running worker, which vouched for it, stops (it cannot tell that from a Redis that
    lost everything of it); started again, it applies that partition from its start."""
    dep, server = restorable
    first, second = phases(350, "1", "2")
    store = Store(redis.Redis.from_url(server.url))
    worker = dep.worker()
    backup, _ = backed_up_between(dep, server, store, first, second, tmp_path, partitions=(0, 1))

    server.restore(backup)
    assert worker.proc is not None
    assert worker.proc.wait(60) == 1
    assert "Redis lost every record of" in worker.log()
    again = dep.worker()
    exact(dep, Store(redis.Redis.from_url(server.url)), first + second)
    assert again.stop() == 0
