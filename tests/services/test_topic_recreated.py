"""The orders topic deleted and created again under the same name (a cluster migration, a
recovery, an operator cleaning up): its offsets start again at 0, so the offsets the state
recorded for the old topic say nothing of the new one. The worker ties them to the topic's
id and applies a new incarnation from its start (docs/operations.md, "Where a worker
starts"): nothing skipped, nothing counted twice."""

from __future__ import annotations

import signal
import time
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import (
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    records_of,
)
from tests.reference import expected_now
from worker.state import keys
from worker.state.store import Store


def recreate(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete `topic` and create it again with as many partitions, once the broker lets it
    (a deleted topic's name is free only once its deletion is done)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result()
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_applied(store: Store, topic: str, records: int, timeout: float = 60) -> None:
    """Until the state's applied offsets of `topic`'s 4 partitions add up to `records`."""
    fields = [keys.applied_field(topic, p) for p in range(4)]
    deadline = time.monotonic() + timeout
    while sum(o or 0 for o, _ in store.applied.read(fields).values()) < records:
        assert time.monotonic() < deadline, f"{records} records of {topic} not applied in time"
        time.sleep(0.2)


def applied_then_stopped(dep: Deployment, store: Store, records: list[Any]) -> None:
    """A worker applies `records` on the topic as it is, then stops (SIGTERM)."""
    dep.produce(records)
    worker = dep.worker()
    wait_applied(store, dep.orders, len(records))
    assert worker.stop() == 0


def assert_exact(dep: Deployment, store: Store, events: list[Any], timeout: float = 90) -> None:
    """Every change published, in unbroken chains; the state equals the recomputation."""
    expected = expected_now(events)
    actions = dep.read(dep.actions, until=converged(expected), timeout=timeout)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)


def resets(port: int, reason: str) -> float:
    """rfm_offset_resets_total{reason} from the worker's /metrics."""
    status, body = fetch(port, "/metrics")
    assert status == 200
    line = f'rfm_offset_resets_total{{reason="{reason}"}} '
    found = [row for row in body.decode().splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_topic_recreated_while_the_workers_were_stopped_is_applied_from_its_start(
    deployment: Deployment, store: Store
) -> None:
    """A third of the stream on the old topic, the rest on the new one: more records per
    partition than the offsets recorded for the old topic, so a worker that seeked to those
    would skip the new topic's first records."""
    events = generate(300, seed=26)
    records = records_of(events)
    applied_then_stopped(deployment, store, records[: len(records) // 3])

    recreate(deployment.kafka.bootstrap, deployment.orders, 4)
    deployment.produce(records[len(records) // 3 :])
    second = deployment.worker()
    assert_exact(deployment, store, events)
    assert "was deleted and created again" in second.log()
    assert resets(int(second.env["RFM_HTTP_PORT"]), "topic_recreated") == 1
    assert second.stop() == 0


def test_a_topic_recreated_under_a_running_worker_is_applied_from_its_start(
    deployment: Deployment, store: Store
) -> None:
    """The worker paused (SIGSTOP) while the topic is recreated and filled, so that its
    consumer's positions are valid offsets of the new topic when it resumes: nothing but
    the topic's id says that they belong to another topic."""
    events = generate(300, seed=27)
    records = records_of(events)
    old, new = records[: len(records) // 3], records[len(records) // 3 :]
    worker = deployment.worker()
    deployment.produce(old)
    wait_applied(store, deployment.orders, len(old))
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        recreate(deployment.kafka.bootstrap, deployment.orders, 4)
        deployment.produce(new)
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    assert_exact(deployment, store, events, timeout=120)
    assert "was deleted and created again" in worker.log()
    assert resets(deployment.http_port, "topic_recreated") == 1
    assert worker.stop() == 0


def test_a_log_truncated_under_the_state_is_applied_from_its_start(
    deployment: Deployment, store: Store
) -> None:
    """The state vouches for offsets the log no longer reaches (a log truncated by an
    unclean leader election): the partition is consumed from its start, nothing skipped."""
    events = generate(120, seed=28)
    records = records_of(events)
    applied_then_stopped(deployment, store, records[: len(records) // 2])
    # As if the log had lost records the state applied: the state vouches for 1,000 more.
    for shard in range(keys.SHARDS):
        for partition in range(4):
            field = keys.applied_field(deployment.orders, partition)
            held = int(store.redis.hget(keys.applied(shard), field))
            store.redis.hset(keys.applied(shard), field, held + 1000)
    deployment.produce(records[len(records) // 2 :])
    second = deployment.worker()
    assert_exact(deployment, store, events)
    assert second.stop() == 0
