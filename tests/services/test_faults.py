"""Fault injection through the real consume path: a real broker, a real Redis, the Worker
loop in process, with faults injected between it and them (a reply that never comes back
after the command ran; a delivery the broker refuses). Per customer, the actions topic
must carry a gap-free, ordered chain of changes ending at the batch recomputation, and it
must get there without a restart or a rebalance.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from confluent_kafka import KafkaError

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import assert_changes_consistent, assert_state_matches, converged, records_of
from tests.reference import expected_now
from worker import app
from worker.services.consumer import Worker
from worker.state.store import Store

# The drain budget of the workers in process here (DRAIN_TIMEOUT is 20 s): what these tests
# show (the budget is kept; what is still held when it is spent is dropped) does not depend
# on its length. tests/test_deploy.py checks the real one against the grace periods.
DRAIN_S = 3.0


@pytest.fixture
def short_drain(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(app, "DRAIN_TIMEOUT", DRAIN_S)
    return DRAIN_S


class DropReplies:
    """A Redis client that loses the replies of chosen rounds of commit calls (the calls
    Store sends for a batch on one connection): the commands run, then the caller sees a
    connection error (as after a reset or a timeout)."""

    def __init__(self, client: redis.Redis, drop: set[int]) -> None:
        self._client, self.drop, self.commits, self.dropped = client, drop, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @property
    def connection_pool(self) -> Any:
        return _LossyPool(self)


class _LossyPool:
    def __init__(self, owner: DropReplies) -> None:
        self._owner, self._pool = owner, owner._client.connection_pool

    def get_connection(self) -> Any:
        return _LossyConnection(self._owner, self._pool.get_connection())

    def release(self, conn: Any) -> None:
        self._pool.release(conn.real)


class _LossyConnection:
    def __init__(self, owner: DropReplies, real: Any) -> None:
        self._owner, self.real, self._sent, self._lose = owner, real, 0, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_packed_command(self, packed: list[bytes], *args: Any, **kwargs: Any) -> Any:
        # The store packs one bytes object per commit call (worker/state/script_calls.py).
        if any(b"EVALSHA" in call[:32] for call in packed) and not self._sent:
            self._owner.commits += 1
            self._lose = self._owner.commits in self._owner.drop
        self._sent += len(packed)
        return self.real.send_packed_command(packed, *args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self._lose:  # let every call of the round run, then lose the replies
            for _ in range(self._sent):
                with contextlib.suppress(redis.ResponseError):
                    self.real.read_response()
            self._owner.dropped += 1
            raise redis.ConnectionError("injected: the reply was lost")
        return self.real.read_response(*args, **kwargs)


class Reported:
    """The message of a delivery report: librdkafka's carries the record, failed or not."""

    def __init__(self, topic: str, record: dict[str, Any]) -> None:
        self._topic, self._record = topic, record

    def topic(self) -> str:
        return self._topic

    def key(self) -> Any:
        return self._record.get("key")

    def value(self) -> Any:
        return self._record.get("value")

    def headers(self) -> Any:
        return self._record.get("headers")


class RefuseDeliveries:
    """A producer that reports every `every`-th record to `topic` as failed (never sent)."""

    def __init__(self, producer: Any, topic: str, every: int, limit: int) -> None:
        self._producer, self.topic, self.every, self.limit = producer, topic, every, limit
        self.seen = self.refused = 0
        self._pending: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def produce(self, topic: str, **record: Any) -> None:
        if topic == self.topic:
            self.seen += 1
            if self.seen % self.every == 0 and self.refused < self.limit:
                self.refused += 1
                self._pending.append(record)
                return
        self._producer.produce(topic, **record)

    def _report(self) -> None:
        pending, self._pending = self._pending, []
        for record in pending:
            record["on_delivery"](
                KafkaError(KafkaError._MSG_TIMED_OUT), Reported(self.topic, record)
            )

    def poll(self, timeout: float = 0) -> int:
        self._report()
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 0) -> int:
        self._report()
        return int(self._producer.flush(timeout))


def test_lost_commit_replies_still_publish_their_changes_now(
    deployment: Deployment, store: Store, worker_in_process: Callable[..., Worker]
) -> None:
    events = generate(150, seed=31)
    expected = expected_now(events)
    lossy: list[DropReplies] = []

    def wrap(client: redis.Redis) -> DropReplies:
        lossy.append(DropReplies(client, drop={1, 2, 4, 6}))
        return lossy[0]

    worker = worker_in_process(wrap_redis=wrap)
    deadline = time.monotonic() + 30
    while not worker.checkpoint.assigned and time.monotonic() < deadline:
        time.sleep(0.1)
    records = records_of(events)
    for i in range(0, len(records), 60):  # several batches, several commit calls
        deployment.produce(records[i : i + 60])
        time.sleep(0.2)
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=60)
    assert lossy[0].dropped >= 3
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert worker.checkpoint.assigned  # no restart, no rebalance was needed


def test_a_refused_change_is_never_overtaken_by_a_later_one(
    deployment: Deployment, store: Store, worker_in_process: Callable[..., Worker]
) -> None:
    events = generate(80, seed=32)
    expected = expected_now(events)
    refusing: list[RefuseDeliveries] = []

    def wrap(producer: Any) -> RefuseDeliveries:
        refusing.append(RefuseDeliveries(producer, deployment.actions, every=7, limit=30))
        return refusing[0]

    worker_in_process(wrap_producer=wrap)
    deployment.produce(records_of(events))
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=60)
    assert refusing[0].refused >= 10
    assert_changes_consistent(actions)  # in topic order: each change starts where the last ended
    assert_state_matches(store, expected)


def test_actions_topic_unavailable_pauses_consumption_then_catches_up(
    deployment: Deployment, store: Store, worker_in_process: Callable[..., Worker]
) -> None:
    """Every change refused for a while: the backlog is bounded (consumption pauses, the
    group membership stays), then everything is published, in order, by itself."""
    events = generate(200, seed=33)
    expected = expected_now(events)
    refusing: list[RefuseDeliveries] = []

    def wrap(producer: Any) -> RefuseDeliveries:
        refusing.append(RefuseDeliveries(producer, deployment.actions, every=1, limit=10**9))
        return refusing[0]

    worker = worker_in_process(wrap_producer=wrap)
    worker.max_backlog = 40
    records = records_of(events)
    for i in range(0, len(records), 50):
        deployment.produce(records[i : i + 50])
    deadline = time.monotonic() + 30
    while not worker.paused and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.paused
    held = []
    for _ in range(10):  # paused: nothing more is consumed, the backlog stops growing
        held.append(worker.relay.backlog)
        time.sleep(0.2)
    assert worker.paused and max(held) == min(held) and held[0] < len(records)

    refusing[0].limit = refusing[0].refused  # the topic is back
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=60)
    assert not worker.paused
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)


def test_sigterm_in_the_worst_case_stays_within_the_grace_period(
    deployment: Deployment, worker_in_process: Callable[..., Worker], short_drain: float
) -> None:
    """Nothing can be delivered (the DLQ topic refuses copies, every change is refused)
    when the stop comes: the worker still exits within its drain budget (DRAIN_TIMEOUT)
    and a few seconds, leaving the batch uncommitted (it is consumed again) and the
    changes in the outbox."""
    deployment.extra_env["RFM_DLQ_TOPIC"] = "refused dlq!"
    worker = worker_in_process(
        wrap_producer=lambda p: RefuseDeliveries(p, deployment.actions, every=1, limit=10**9)
    )
    deployment.produce([*records_of(generate(30, seed=34)), (b"bad", b"{not json")])
    deadline = time.monotonic() + 40
    while worker.health.dlq_ok and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker.health.dlq_ok and worker.relay.backlog > 0
    started = time.monotonic()
    worker.stop()
    [loop] = [t for t in threading.enumerate() if t.name == f"worker-{id(worker)}"]
    loop.join(timeout=40)
    assert not loop.is_alive()
    assert time.monotonic() - started < short_drain + 5


class HoldDeliveries:
    """A producer that holds the records to `topic` instead of sending them (in flight for
    as long as the test wants); `purge` drops them, as librdkafka's purge does."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer, self.topic = producer, topic
        self.holding = True
        self.held: list[dict[str, Any]] = []
        self.purged = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def produce(self, topic: str, **record: Any) -> None:
        if topic == self.topic and self.holding:
            self.held.append(record)
            return
        self._producer.produce(topic, **record)

    def purge(self, *args: Any, **kwargs: Any) -> None:
        dropped, self.held = self.held, []
        self.purged += len(dropped)
        for record in dropped:
            record["on_delivery"](KafkaError(KafkaError._PURGE_QUEUE), Reported(self.topic, record))
        self._producer.purge(*args, **kwargs)

    def flush(self, timeout: float = 0) -> int:
        return int(self._producer.flush(timeout)) + len(self.held)

    def release(self) -> None:
        """Stop holding: what is held is sent now, in the order it came."""
        self.holding = False
        held, self.held = self.held, []
        for record in held:
            self._producer.produce(self.topic, **record)


def test_a_revoked_worker_stops_publishing_before_the_next_owner_starts(
    deployment: Deployment,
    store: Store,
    worker_in_process: Callable[..., Worker],
    short_drain: float,
) -> None:
    """Worker A cannot get its changes acknowledged when B joins: at the revoke, once its
    drain time is up, A drops what it still holds (nothing of it can land after B's
    changes); B relays those changes from the outbox, in order. With cooperative
    rebalancing A keeps some partitions: it sends their dropped changes again, and holds
    nothing of the partitions it lost."""
    events = generate(60, seed=35)
    expected = expected_now(events)
    holds: list[HoldDeliveries] = []

    def wrap(producer: Any) -> HoldDeliveries:
        holds.append(HoldDeliveries(producer, deployment.actions))
        return holds[0]

    a = worker_in_process(wrap_producer=wrap)
    deployment.produce(records_of(events))
    deadline = time.monotonic() + 30
    while a.relay.backlog < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert a.relay.backlog >= 20 and holds[0].held
    b = deployment.worker()  # a rebalance: A's drain cannot finish
    deadline = time.monotonic() + short_drain + 20
    while not holds[0].purged and time.monotonic() < deadline:
        time.sleep(0.2)
    assert holds[0].purged  # dropped, never to be sent late
    partition_of = {
        m.key(): m.partition()
        for m in deployment.read(deployment.orders, until=lambda m: len(m) >= len(events))
    }
    # (the purge comes first in the revoke; the partitions leave A's set after its commit)
    deadline = time.monotonic() + 10
    while set(a.checkpoint.assigned) == {0, 1, 2, 3} and time.monotonic() < deadline:
        time.sleep(0.1)
    kept = set(a.checkpoint.assigned)
    assert kept != {0, 1, 2, 3}  # B has a share
    assert all(partition_of[r["key"]] in kept for r in holds[0].held)
    holds[0].release()  # A's changes of the partitions it still owns flow
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=60)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert b.stop() == 0
