"""`Checkpoint` without a broker or Redis: where each assigned partition starts
(`_reconcile`, docs/operations.md "Where a worker starts"), a topic recreated under the
running worker (`check_topic`), and what is recorded and committed on a batch, a revoke and
a lost assignment. In-memory stand-ins for the consumer, the store's applied offsets, the
relay and the topic id; what the broker tests reach end to end, decision by decision."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    TopicPartition,
)
from prometheus_client import REGISTRY

from worker.config import Settings
from worker.errors import DataLossError, StateLostError
from worker.health import Health
from worker.kafka.orders import OrdersConsumer
from worker.pacing import Backoff, Stopping
from worker.services import checkpoint as checkpoint_module
from worker.services.checkpoint import Applied, Checkpoint
from worker.services.redis_retry import RedisRetry
from worker.state import keys

TOPIC = "orders"


def field_of(partition: int) -> str:
    return keys.applied_field(TOPIC, partition)


# -- in-memory stand-ins ------------------------------------------------------------------


class FakeConsumer:
    """The consumer calls `Checkpoint` makes, answered from dicts and recorded in lists."""

    def __init__(self) -> None:
        self.committed_offsets: dict[int, int] = {}  # partition -> the group's commit
        self.watermarks: dict[int, tuple[int, int]] = {}  # partition -> (low, high)
        self.positions: dict[int, int] = {}
        self.assigned: list[tuple[str, int, int]] = []
        self.assign_calls: list[str] = []  # "assign" or "incremental_assign"
        self.paused: list[int] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.commits: list[tuple[list[tuple[str, int, int]], bool]] = []
        self.committed_asked = 0
        self.callbacks: dict[str, Callable[[object, list[TopicPartition]], None]] = {}

    def subscribe(
        self, topics: list[str], **callbacks: Callable[[object, list[TopicPartition]], None]
    ) -> None:
        self.callbacks = callbacks

    def rebalance(self, callback: str, partitions: Iterable[int]) -> None:
        """librdkafka calling `callback` (on_assign, on_revoke, on_lost) inside consume()."""
        self.callbacks[callback](self, [TopicPartition(TOPIC, p) for p in partitions])

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.committed_asked += 1
        return [
            TopicPartition(
                tp.topic, tp.partition, self.committed_offsets.get(tp.partition, OFFSET_INVALID)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        if tp.partition not in self.watermarks:
            raise KafkaException("no watermarks in this test")
        return self.watermarks[tp.partition]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assign_calls.append("assign")
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assign_calls.append("incremental_assign")
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused += [tp.partition for tp in partitions]

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(([(t.topic, t.partition, t.offset) for t in offsets], asynchronous))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, OFFSET_INVALID))
            for tp in partitions
        ]

    def starts(self) -> dict[int, int]:
        """Partition -> the offset it was assigned from (the last assignment of each)."""
        return {p: o for _, p, o in self.assigned}


class FakeApplied:
    """`AppliedOffsets` over a dict: field -> (lowest offset over the shards, shards holding
    a record). `adopt` of another topic id drops the records, as topic.lua does."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[int | None, int]] = {}
        self.floors: dict[int, tuple[str, int]] = {}
        self.topic_id: str | None = None
        self.marks: list[dict[int, tuple[str, int]]] = []
        self.lost = False  # mark raises StateLostError (Redis lost writes)

    def read(self, fields: Sequence[str]) -> dict[str, tuple[int | None, int]]:
        return {f: self.records.get(f, (None, 0)) for f in fields}

    def mark(self, offsets: Mapping[int, tuple[str, int]]) -> None:
        if self.lost:
            raise StateLostError("1 shard(s) hold less than they vouched for")
        self.marks.append(dict(offsets))
        for partition, (name, offset) in offsets.items():
            self.records[name] = (offset, keys.SHARDS)
            self.floors[partition] = (name, offset)

    def vouched(self, partition: int) -> int | None:
        floor = self.floors.get(partition)
        return None if floor is None else floor[1]

    def vouch(self, partition: int, field: str, offset: int) -> None:
        self.floors[partition] = (field, offset)

    def forget(self, partition: int | None = None) -> None:
        if partition is None:
            self.floors.clear()
        else:
            self.floors.pop(partition, None)

    def adopt(self, topic: str, topic_id: str) -> str | None:
        previous, self.topic_id = self.topic_id, topic_id
        if previous is None or previous == topic_id:
            return None
        self.records.clear()
        self.floors.clear()
        return previous


class FakeReads:
    def __init__(self) -> None:
        self.customers = False

    def holds_customers(self) -> bool:
        return self.customers


@dataclass
class FakeStore:
    applied: FakeApplied = field(default_factory=FakeApplied)
    reads: FakeReads = field(default_factory=FakeReads)


class FakeRelay:
    def __init__(self) -> None:
        self.recovered: list[set[int]] = []
        self.abandoned = 0
        self.drains = True  # what drain() answers: everything acknowledged in time

    def drain(self, timeout: float) -> bool:
        return self.drains

    def recover(self, partitions: Iterable[int]) -> int:
        self.recovered.append(set(partitions))
        return 0

    def abandon(self) -> None:
        self.abandoned += 1


class TopicIds(OrdersConsumer):
    """The adapter over the fake consumer; the topic's id is what the test says."""

    def __init__(self, settings: Settings, health: Health, consumer: FakeConsumer) -> None:
        super().__init__(settings, health, consumer=cast(Consumer, consumer))
        self.answer: str | None = None

    def topic_id(self) -> str | None:
        return self.answer


@dataclass
class Rig:
    """A `Checkpoint` listening to the consumer adapter over the fake consumer, and its
    other stand-ins."""

    checkpoint: Checkpoint
    orders: TopicIds
    consumer: FakeConsumer
    store: FakeStore
    relay: FakeRelay
    health: Health
    stopping: Stopping

    def assign(self, *partitions: int) -> dict[int, int]:
        """`on_assign` of these partitions; returns where each was started."""
        before = len(self.consumer.assigned)
        self.consumer.rebalance("on_assign", partitions)
        return {p: o for _, p, o in self.consumer.assigned[before:]}

    def record(self, partition: int, offset: int | None, shards: int = keys.SHARDS) -> None:
        self.store.applied.records[field_of(partition)] = (offset, shards)


@pytest.fixture
def rig() -> Rig:
    settings = Settings(orders_topic=TOPIC)
    consumer = FakeConsumer()
    store = FakeStore()
    relay = FakeRelay()
    stopping = Stopping(budget=1.0)
    health = Health(settings, stopping)
    orders = TopicIds(settings, health, consumer)
    retry = RedisRetry(health, stopping, Backoff(first=0.001, cap=0.001))
    cp = Checkpoint(
        settings,
        orders,
        cast(Applied, store.applied),
        store.reads,
        relay,
        retry,
        health,
        stopping,
    )
    orders.subscribe(cp)
    return Rig(cp, orders, consumer, store, relay, health, stopping)


def resets(reason: str) -> float:
    """rfm_offset_resets_total{reason} in this process (0 before its first increment)."""
    value = REGISTRY.get_sample_value("rfm_offset_resets_total", {"reason": reason})
    return value or 0.0


def all_resets() -> dict[str, float]:
    return {r: resets(r) for r in ("topic_recreated", "beyond_end", "before_start")}


# -- where an assigned partition starts ---------------------------------------------------


def test_state_ahead_of_kafkas_commit_starts_at_the_state(rig: Rig) -> None:
    """The state, not the group's commit, says where to start: ahead of it, no replay."""
    rig.consumer.committed_offsets[0] = 5
    rig.consumer.watermarks[0] = (0, 100)
    rig.record(0, 40)
    before = all_resets()
    assert rig.assign(0) == {0: 40}
    assert rig.consumer.starts() == {0: 40}
    assert all_resets() == before


def test_state_behind_kafkas_commit_replays_from_the_state(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis lost writes the commit counts as applied: start where the state is, and say so."""
    rig.consumer.committed_offsets[0] = 50
    rig.consumer.watermarks[0] = (0, 100)
    rig.record(0, 20)
    with caplog.at_level(logging.WARNING, logger="worker.services.checkpoint"):
        assert rig.assign(0) == {0: 20}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Redis lost writes" in w and "replaying from 20" in w for w in warnings)


def test_no_record_while_kafka_committed_and_redis_is_empty_is_data_loss(rig: Rig) -> None:
    """Kafka says events were applied, Redis holds no customer and no record: Redis lost
    its data; the worker refuses to consume (and assigns nothing)."""
    rig.consumer.committed_offsets[0] = 7
    rig.store.reads.customers = False
    with pytest.raises(DataLossError, match="Redis holds no customer"):
        rig.assign(0)
    assert rig.consumer.assigned == []
    assert rig.checkpoint.assigned == set()


def test_no_record_with_customers_held_starts_from_the_beginning(rig: Rig) -> None:
    """A partition new to a state that holds customers (another partition's): all of it."""
    rig.consumer.committed_offsets[0] = 7
    rig.store.reads.customers = True
    assert rig.assign(0) == {0: OFFSET_BEGINNING}


def test_no_record_and_no_commit_starts_from_the_beginning(rig: Rig) -> None:
    """A fresh partition (nothing committed, nothing recorded): from its first record."""
    assert rig.assign(0, 1) == {0: OFFSET_BEGINNING, 1: OFFSET_BEGINNING}
    assert rig.consumer.starts() == {0: OFFSET_BEGINNING, 1: OFFSET_BEGINNING}
    assert rig.checkpoint.assigned == {0, 1}


def test_record_missing_from_some_shards_is_data_loss(rig: Rig) -> None:
    """Some shards hold no record of the partition: part of the state was lost."""
    rig.consumer.watermarks[0] = (0, 100)
    rig.record(0, 10, shards=keys.SHARDS - 3)
    with pytest.raises(DataLossError, match=f"3 of {keys.SHARDS} Redis shards"):
        rig.assign(0)


def test_every_record_lost_while_running_is_data_loss(rig: Rig) -> None:
    """A partition this process vouched for (a floor) with no record left: Redis lost
    everything under it, whatever the customers and Kafka's commit say."""
    rig.store.applied.floors[0] = (field_of(0), 12)
    rig.store.reads.customers = True
    with pytest.raises(DataLossError, match="lost every record"):
        rig.assign(0)


def test_topic_recreated_starts_every_partition_from_the_beginning(rig: Rig) -> None:
    """The topic id changed since the state recorded its offsets (adopt returns the old
    id): every partition from its start, no DataLossError for Kafka's old commits, one
    `topic_recreated` reset."""
    rig.store.applied.topic_id = "old-id"
    rig.orders.answer = "new-id"
    for p in (0, 1):
        rig.consumer.committed_offsets[p] = 30
        rig.consumer.watermarks[p] = (0, 5)
        rig.record(p, 30)
    rig.store.reads.customers = False
    before = all_resets()
    assert rig.assign(0, 1) == {0: OFFSET_BEGINNING, 1: OFFSET_BEGINNING}
    after = all_resets()
    assert after["topic_recreated"] - before["topic_recreated"] == 1
    assert after["beyond_end"] == before["beyond_end"]


def test_same_topic_id_is_no_reset(rig: Rig) -> None:
    """The id the state already holds: the records stand, no reset counted."""
    rig.store.applied.topic_id = "same-id"
    rig.orders.answer = "same-id"
    rig.consumer.watermarks[0] = (0, 100)
    rig.record(0, 30)
    before = resets("topic_recreated")
    assert rig.assign(0) == {0: 30}
    assert resets("topic_recreated") == before


def test_state_before_the_logs_start_starts_at_its_start(rig: Rig) -> None:
    """Records deleted (retention) before they were applied: start at the low watermark,
    one `before_start` reset."""
    rig.consumer.watermarks[0] = (30, 100)
    rig.record(0, 10)
    before = resets("before_start")
    assert rig.assign(0) == {0: 30}
    assert resets("before_start") - before == 1


def test_state_beyond_the_logs_end_without_topic_ids_starts_from_the_beginning(
    rig: Rig,
) -> None:
    """No topic id from the broker and a record beyond the high watermark: the topic was
    recreated or truncated; from its start, one `beyond_end` reset."""
    rig.consumer.watermarks[0] = (0, 5)
    rig.record(0, 30)
    before = resets("beyond_end")
    assert rig.assign(0) == {0: OFFSET_BEGINNING}
    assert resets("beyond_end") - before == 1


def test_state_beyond_the_logs_end_with_a_topic_id_starts_at_the_state(rig: Rig) -> None:
    """Where the broker keeps topic ids (the same one as the state's), beyond the end is
    left to the consumer (auto.offset.reset): start at the state, no reset."""
    rig.orders.answer = "id-1"
    rig.consumer.watermarks[0] = (0, 5)
    rig.record(0, 30)
    before = all_resets()
    assert rig.assign(0) == {0: 30}
    assert all_resets() == before


def test_no_watermarks_starts_at_the_state(rig: Rig) -> None:
    """The broker does not answer for watermarks: start where the state is."""
    rig.record(0, 30)  # (no watermarks: get_watermark_offsets raises KafkaException)
    assert rig.assign(0) == {0: 30}


# -- assignment -------------------------------------------------------------------------


def test_assignment_joins_pauses_and_recovers_the_relay(rig: Rig) -> None:
    """The first assignment marks the worker joined; a paused
    worker pauses what it is assigned; the relay recovers the new partitions."""
    rig.orders.paused = True
    rig.assign(0, 1)
    rig.assign(2)
    assert rig.health.is_joined
    assert rig.consumer.paused == [0, 1, 2]
    assert rig.consumer.assign_calls == ["incremental_assign"] * 2  # cooperative by default
    assert rig.relay.recovered == [{0, 1}, {2}]
    assert rig.checkpoint.assigned == {0, 1, 2}


def test_assignment_while_stopping_starts_nothing(rig: Rig) -> None:
    """A rebalance that ends while closing: no offsets asked for, nothing assigned."""
    rig.stopping.set()
    rig.assign(0)
    assert rig.consumer.committed_asked == 0
    assert rig.consumer.assigned == []
    assert rig.checkpoint.assigned == set()


# -- the topic recreated under the running worker ----------------------------------------


def test_check_topic_restarts_owned_partitions_when_the_id_changes(rig: Rig) -> None:
    """A new topic id while running: every owned partition is sought back to its start,
    what was processed of the old incarnation is dropped, the relay recovers them."""
    rig.orders.answer = "id-1"
    for p in (0, 1):
        rig.consumer.watermarks[p] = (0, 100)
        rig.record(p, 10)
    assert rig.assign(0, 1) == {0: 10, 1: 10}
    rig.orders.answer = "id-2"
    before = resets("topic_recreated")
    rig.checkpoint.check_topic()
    assert rig.consumer.seeks == [(TOPIC, 0, OFFSET_BEGINNING), (TOPIC, 1, OFFSET_BEGINNING)]
    assert resets("topic_recreated") - before == 1
    assert rig.relay.recovered[-1] == {0, 1}


def test_check_topic_with_the_same_id_does_nothing(rig: Rig) -> None:
    """The same topic id: no seek, no reconcile, no reset."""
    rig.orders.answer = "id-1"
    rig.consumer.watermarks[0] = (0, 100)
    rig.record(0, 10)
    rig.assign(0)
    asked, recovered = rig.consumer.committed_asked, len(rig.relay.recovered)
    before = all_resets()
    rig.checkpoint.check_topic()
    assert rig.consumer.seeks == []
    assert rig.consumer.committed_asked == asked
    assert len(rig.relay.recovered) == recovered
    assert all_resets() == before


def test_replay_lost_restarts_owned_partitions_where_the_state_is(rig: Rig) -> None:
    """Redis lost writes under the running worker: each owned partition is sought back to
    what the state still holds."""
    rig.consumer.watermarks[0] = (0, 100)
    rig.record(0, 40)
    rig.assign(0)
    rig.record(0, 25)  # the state now holds less than it vouched for: writes lost
    rig.checkpoint.replay_lost(StateLostError("lost"))
    assert rig.consumer.seeks == [(TOPIC, 0, 25)]


@pytest.fixture
def quick_state_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle check of the vouched offsets at every turn (not every 5 s)."""
    monkeypatch.setattr(checkpoint_module, "CHECK_STATE_S", 0.0)


def test_an_idle_worker_checks_that_the_state_holds_what_it_vouched_for(
    quick_state_check: None, rig: Rig
) -> None:
    """Nothing to record (no order comes): the turn asks the shards for the offsets they
    vouched for again (applied.lua writes nothing then), so a Redis restored from a
    backup under the worker is seen (StateLostError: the loop replays) without an order."""
    rig.consumer.watermarks[0] = (0, 100)
    rig.record(0, 40)
    rig.assign(0)
    rig.checkpoint.tick()
    assert rig.store.applied.marks == [{0: (field_of(0), 40)}]
    rig.store.applied.lost = True  # the shards hold less than they vouched for
    with pytest.raises(StateLostError):
        rig.checkpoint.tick()


# -- commits: a batch, a revoke, a lost assignment, the stop -----------------------------


def offsets(**by_partition: int) -> dict[int, int]:
    """A batch's next offset per partition: offsets(p0=11) is partition 0 up to 11."""
    return {int(p[1:]): o for p, o in by_partition.items()}


@pytest.fixture
def slow_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records at most once an hour: after the first, batches stay unrecorded."""
    monkeypatch.setattr(checkpoint_module, "APPLIED_EVERY_S", 3600.0)


def test_commit_records_then_commits_asynchronously(rig: Rig) -> None:
    """A done batch is recorded next to the state, then committed (asynchronously)."""
    rig.assign(0, 1)
    rig.checkpoint.commit(offsets(p0=11, p1=21))
    assert rig.store.applied.marks == [{0: (field_of(0), 11), 1: (field_of(1), 21)}]
    assert rig.consumer.commits == [([(TOPIC, 0, 11), (TOPIC, 1, 21)], True)]


def test_commit_within_the_interval_waits_for_the_next_turn(slow_records: None, rig: Rig) -> None:
    """Batches between two records are recorded and committed together, later."""
    rig.assign(0)
    rig.checkpoint.commit(offsets(p0=5))
    rig.checkpoint.commit(offsets(p0=9))
    rig.checkpoint.tick()
    assert rig.store.applied.marks == [{0: (field_of(0), 5)}]
    assert [c for c, _ in rig.consumer.commits] == [[(TOPIC, 0, 5)]]


def test_no_kafka_commit_without_its_record(rig: Rig) -> None:
    """The record refused (Redis lost writes): Kafka's commit never runs ahead of it."""
    rig.assign(0)
    rig.store.applied.lost = True
    with pytest.raises(StateLostError):
        rig.checkpoint.commit(offsets(p0=5))
    assert rig.consumer.commits == []


def test_revoke_records_and_commits_only_the_revoked_partitions(
    slow_records: None, rig: Rig
) -> None:
    """A revoke records and synchronously commits what was processed of the partitions
    taken back, nothing of those kept; they are no longer owned."""
    rig.assign(0, 1)
    rig.checkpoint.commit(offsets(p0=3))  # the first turn records at once
    rig.checkpoint.commit(offsets(p0=11, p1=21))  # unrecorded: the next turn is an hour away
    marks, commits = len(rig.store.applied.marks), len(rig.consumer.commits)
    rig.consumer.rebalance("on_revoke", [1])
    assert rig.store.applied.marks[marks:] == [{1: (field_of(1), 21)}]
    assert rig.consumer.commits[commits:] == [([(TOPIC, 1, 21)], False)]
    assert rig.checkpoint.assigned == {0}
    assert rig.relay.abandoned == 0


def test_revoke_with_an_undrained_relay_abandons_and_recovers_the_kept(rig: Rig) -> None:
    """The relay not drained in time: abandoned, and the partitions kept recovered."""
    rig.assign(0, 1, 2)
    rig.relay.drains = False
    rig.consumer.rebalance("on_revoke", [1])
    assert rig.relay.abandoned == 1
    assert rig.relay.recovered[-1] == {0, 2}


def test_lost_partitions_commit_nothing(slow_records: None, rig: Rig) -> None:
    """Lost, not revoked (another member may own them): nothing recorded or committed,
    and their processed offsets are forgotten (the stop does not commit them either)."""
    rig.assign(0, 1)
    rig.checkpoint.commit(offsets(p0=3))
    rig.checkpoint.commit(offsets(p0=11, p1=21))
    marks, commits = len(rig.store.applied.marks), len(rig.consumer.commits)
    rig.consumer.rebalance("on_lost", [1])
    assert len(rig.store.applied.marks) == marks
    assert len(rig.consumer.commits) == commits
    assert rig.checkpoint.assigned == {0}
    rig.checkpoint.commit_processed()
    assert rig.store.applied.marks[marks:] == [{0: (field_of(0), 11)}]
    assert rig.consumer.commits[commits:] == [([(TOPIC, 0, 11)], False)]


def test_stop_records_and_commits_everything_synchronously(slow_records: None, rig: Rig) -> None:
    """At the stop, what was processed and not yet recorded is, then committed in sync."""
    rig.assign(0, 1)
    rig.checkpoint.commit(offsets(p0=3))
    rig.checkpoint.commit(offsets(p1=8))
    rig.checkpoint.commit_processed()
    assert rig.store.applied.marks[-1] == {1: (field_of(1), 8)}
    assert rig.consumer.commits[-1] == ([(TOPIC, 0, 3), (TOPIC, 1, 8)], False)


def test_stop_commits_nothing_when_the_record_is_refused(slow_records: None, rig: Rig) -> None:
    """Redis lost writes at the stop: no commit (the next start replays from the state)."""
    rig.assign(0)
    rig.checkpoint.commit(offsets(p0=3))
    rig.checkpoint.commit(offsets(p0=8))
    commits = len(rig.consumer.commits)
    rig.store.applied.lost = True
    rig.checkpoint.commit_processed()
    assert len(rig.consumer.commits) == commits
