"""Offsets and rebalances of the consumer loop: which partitions this worker owns, where
each starts, what was processed, and the commits that say so.

Where a partition starts is the offset the state holds it up to (the applied offsets
stored with it, worker/state/store.py), not Kafka's committed offset: Redis may have lost
writes that the commits count as applied (docs/architecture.md, Guarantees). A batch is
done once its state is committed and its dead letters acknowledged: its offsets are then
recorded next to the state and committed to Kafka asynchronously, at most every
APPLIED_EVERY_S (one record for many small batches: a record costs a script call on every
shard); on a revoke and at the stop, what was processed is recorded and committed
synchronously, so the next owner redelivers less. Kafka's commit never runs ahead of the
record: a restart then replays at most APPLIED_EVERY_S of events, as duplicates.
The rebalance callbacks run inside consume(), between batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    TopicPartition,
)

from worker import metrics
from worker.config import Settings
from worker.errors import DataLossError, StateLostError
from worker.health import Health
from worker.kafka import clients
from worker.kafka.relay import Relay
from worker.pacing import Every
from worker.services.redis_retry import RedisRetry
from worker.state import keys
from worker.state.store import Store

logger = logging.getLogger(__name__)

LAG_REPORT_S = 1.0  # how often rfm_consumer_lag is refreshed
TOPIC_CHECK_S = 5.0  # how often a running worker asks whether its topic was recreated
WATERMARK_TIMEOUT_S = 10.0
APPLIED_EVERY_S = 0.1  # how often processed offsets are recorded next to the state


class Checkpoint:
    """The offsets of the orders topic for the worker that owns this; its `on_assign`,
    `on_revoke` and `on_lost` are the consumer's rebalance callbacks.

    `drain` waits for the relay to publish what it holds (True when all was
    acknowledged); `paused` says whether consumption is paused (backpressure), so a
    partition assigned meanwhile is paused too; `first_join` runs at the first assignment,
    before anything is consumed.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        consumer: Consumer,
        relay: Relay,
        retry_redis: RedisRetry,
        health: Health,
        stopping: threading.Event,
        *,
        drain: Callable[[], bool],
        paused: Callable[[], bool],
        first_join: Callable[[], None] = lambda: None,
        topic_id: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._consumer = consumer
        self._relay = relay
        self._retry_redis = retry_redis
        self._health = health
        self._stopping = stopping
        self._drain = drain
        self._paused = paused
        self._first_join = first_join
        self._topic_id = topic_id  # the orders topic's incarnation now (Kafka's topic id)
        self._incarnation: str | None = None  # the one this worker last consumed
        self._topic_check = Every(TOPIC_CHECK_S)
        # Cooperative rebalances (the default) add and take back partitions one by one.
        self.incremental = clients.incremental(settings.kafka_properties())
        self.assigned: set[int] = set()
        self._done: dict[tuple[str, int], int] = {}  # next offset per processed partition
        self._unrecorded: dict[tuple[str, int], int] = {}  # processed, not yet recorded
        self._records = Every(APPLIED_EVERY_S)
        self._starts: dict[int, int] = {}  # partition -> offset consumption starts from
        self._lag = Every(LAG_REPORT_S)

    # -- a processed batch, and the stop ------------------------------------------------

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """A batch fully done (state committed, dead letters acknowledged): record it next
        to the state and commit it to Kafka now, or with the next batches (`tick`)."""
        self._done.update(offsets)
        self._unrecorded.update(offsets)
        self.tick()

    def tick(self) -> None:
        """Record and commit what was processed, if APPLIED_EVERY_S has passed (a turn of
        the loop; StateLostError when Redis lost writes, see `replay_lost`)."""
        if self._unrecorded and self._records.due():
            offsets = self._record()
            try:  # asynchronous: the state, not the commit, protects against redelivery
                self._consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    asynchronous=True,
                )
            except KafkaException as exc:
                logger.warning("offset commit failed (events will be redelivered): %s", exc)

    def _record(self, partitions: set[int] | None = None) -> dict[tuple[str, int], int]:
        """Record processed offsets (of `partitions`, default all) next to the state;
        returns them. Kafka's commit of an offset follows its record, never precedes it."""
        offsets = {
            tp: o for tp, o in self._unrecorded.items() if partitions is None or tp[1] in partitions
        }
        if not offsets:
            return offsets
        applied = {p: (keys.applied_field(t, p), o) for (t, p), o in offsets.items()}
        self._retry_redis(lambda: self._store.applied.mark(applied))
        for tp in offsets:
            del self._unrecorded[tp]
        return offsets

    def commit_processed(self) -> None:
        """Stopping: record and commit every processed offset synchronously."""
        try:
            self._record()
        except StateLostError as exc:  # the next start replays from what the state holds
            logger.error("%s: offsets not committed", exc)
            return
        self._commit_sync(self._done)

    def _commit_sync(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit processed offsets synchronously (revoke, stop): less to redeliver."""
        if not offsets:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:  # harmless: those events are redelivered as duplicates
            logger.warning("offset commit failed: %s", exc)

    # -- rebalance callbacks (run inside consume()) -------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = {p.partition for p in partitions}
        logger.info("assigned partitions %s", sorted(new))
        if self._stopping.is_set():
            # A rebalance that ends while closing: nothing more is consumed, so nothing to
            # start from (asking the broker for offsets now may wait out the close).
            return
        if not self._health.joined:
            self._first_join()  # a working member now: what it writes is shared state
        # Start where the state is, not where Kafka's commits say: Redis may have lost
        # writes (a failover, a restart) that the committed offsets count as applied.
        if partitions:  # (a cooperative round, or more workers than partitions: none)
            self._retry_redis(lambda: self._reconcile(consumer, partitions))
        if self.incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        if self._paused():
            consumer.pause(partitions)
        # Changes a previous owner committed but did not publish go out before new ones.
        self._retry_redis(lambda: self._relay.recover(new))
        self.assigned |= new
        self._health.joined = True

    def _reconcile(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Set each partition's start offset from the applied offsets stored with the state
        (docs/operations.md, "Where a worker starts").

        Behind Kafka's committed offset: seek back (replay is harmless). No record at all
        while Kafka says events were applied and Redis holds nothing: Redis lost its data;
        refuse to go on (DataLossError). A record missing from some shards only: those
        shards lost their data; refuse too. No record of a partition, or a topic deleted
        and created again since the state recorded its offsets: from the partition's start.
        A record beyond the partition's end (a truncated log) or before its start (records
        deleted before they were applied): from that end or start, saying so.
        """
        recreated = self._adopt_incarnation(partitions[0].topic)
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
        fields = {tp.partition: keys.applied_field(tp.topic, tp.partition) for tp in partitions}
        applied = self._store.applied.read(list(fields.values()))
        for tp in partitions:
            kafka = committed.get(tp.partition, OFFSET_INVALID)
            state, shards = applied[fields[tp.partition]]
            floor = self._store.applied.floors.pop(tp.partition, None)
            if state is None:
                if floor is not None and floor[1] >= 0:
                    raise DataLossError(
                        f"Redis lost every record of {tp.topic}[{tp.partition}] while the "
                        "worker ran (restarted empty, flushed, or failed over to a replica "
                        "without the data). Not consuming. Run `rfm-worker rebuild` to replay "
                        "the orders topic into a clean state, then start the workers again."
                    )
                if kafka > 0 and not recreated and not self._store.reads.holds_customers():
                    raise DataLossError(
                        f"Redis holds no customer, but the consumer group "
                        f"{self._settings.kafka_group} has committed offset {kafka} of "
                        f"{tp.topic}[{tp.partition}]: Redis was restarted empty or failed "
                        "over to a replica without the data. Not consuming. Run "
                        "`rfm-worker rebuild` to replay the orders topic into a clean state "
                        "(it needs the topic's whole history), then start the workers again."
                    )
                # A new partition (or one whose offsets were of an older incarnation): all
                # of it, whatever Kafka's commits say; events already applied count once.
                tp.offset = self._starts[tp.partition] = OFFSET_BEGINNING  # (lag: from low)
                continue
            if shards < keys.SHARDS:
                raise DataLossError(
                    f"{keys.SHARDS - shards} of {keys.SHARDS} Redis shards hold no record of "
                    f"{tp.topic}[{tp.partition}]: part of the state was lost (a node "
                    "restarted empty?). Not consuming. Run `rfm-worker rebuild`."
                )
            self._store.applied.floors[tp.partition] = (fields[tp.partition], state)
            if floor is not None and state < floor[1]:
                logger.warning(
                    "%s[%d]: Redis lost writes while the worker ran: the state holds events "
                    "up to offset %d, not %d: replaying from %d",
                    tp.topic,
                    tp.partition,
                    state,
                    floor[1],
                    state,
                )
            elif kafka >= 0 and state < kafka:
                logger.warning(
                    "%s[%d]: the state holds events up to offset %d, Kafka's commit says "
                    "%d (Redis lost writes): replaying from %d",
                    tp.topic,
                    tp.partition,
                    state,
                    kafka,
                    state,
                )
            elif kafka >= 0 and state > kafka:
                logger.info(
                    "%s[%d]: starting at offset %d, where the state is; the group's committed "
                    "offset %d only feeds the lag (to replay on purpose: rfm-worker rebuild)",
                    tp.topic,
                    tp.partition,
                    state,
                    kafka,
                )
            tp.offset = self._starts[tp.partition] = self._within_log(consumer, tp, state)

    def _adopt_incarnation(self, topic: str) -> bool:
        """Tie the state's applied offsets to the topic's incarnation (Kafka's topic id);
        True when they were of an older one (the topic was deleted and created again)."""
        current = self._topic_id()
        if current is None:  # the broker does not say: the watermark checks remain
            return False
        previous = self._store.applied.adopt(topic, current)
        seen, self._incarnation = self._incarnation, current
        if previous is None and seen in (None, current):
            return False
        self._store.applied.floors.clear()  # vouched for the old incarnation
        logger.warning(
            "%s was deleted and created again (topic id %s; the state's offsets were of %s): "
            "applying every partition from its start (events already applied count once)",
            topic,
            current,
            previous or seen,
        )
        metrics.OFFSET_RESETS.labels("topic_recreated").inc()
        return True

    def _within_log(self, consumer: Consumer, tp: TopicPartition, state: int) -> int:
        """Where to start a partition the state holds up to `state`: there, unless the log
        does not reach it. Before the log's start: its records up to there were deleted
        (retention) before they were applied; start at its start, saying they are lost.
        Beyond its end, where the broker keeps no topic ids: the topic was recreated (or
        its log truncated); every record there is one the state has not seen: from its
        start. (Where it keeps ids, a recreated topic has a new one, see
        `_adopt_incarnation`, and a log truncated under the same id is a fetch out of
        range, which the consumer restarts from the start itself: auto.offset.reset.)"""
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=WATERMARK_TIMEOUT_S)
        except KafkaException as exc:
            logger.warning("%s[%d]: no watermarks (%s)", tp.topic, tp.partition, exc)
            return state
        if self._incarnation is None and 0 <= high < state:
            logger.warning(
                "%s[%d]: the state holds events up to offset %d, beyond the partition's end "
                "%d: the topic was recreated or its log truncated; applying the partition "
                "from its start (events already applied count once)",
                tp.topic,
                tp.partition,
                state,
                high,
            )
            metrics.OFFSET_RESETS.labels("beyond_end").inc()
            return OFFSET_BEGINNING
        if state < low:
            logger.error(
                "%s[%d]: the state holds events up to offset %d, but the partition starts at "
                "%d: %d record(s) were deleted (retention) before this worker applied them "
                "and are lost to the state; consuming from %d. Produce those orders again "
                "(rfm-worker produce: duplicates count once) to recover them",
                tp.topic,
                tp.partition,
                state,
                low,
                low - state,
                low,
            )
            metrics.OFFSET_RESETS.labels("before_start").inc()
            return low
        return state

    def replay_lost(self, exc: StateLostError) -> None:
        """Redis lost writes under the running worker; nothing was written on the loss
        (commit.lua and applied.lua refuse). Start every owned partition again where the
        state still holds it (DataLossError when nothing is left: `rfm-worker rebuild`),
        and relay what the outboxes still hold."""
        logger.error("%s: replaying from what the state still holds", exc)
        self._restart_owned()

    def check_topic(self) -> None:
        """Every TOPIC_CHECK_S: the orders topic deleted and created again under the
        running worker (its topic id changed) restarts every owned partition from its
        start, whatever the consumer's positions in it are."""
        if not self.assigned or not self._health.kafka_ok or not self._topic_check.due():
            return
        current = self._topic_id()
        if current is not None and current != self._incarnation:
            # (or its id was unknown at the assignment: a topic being created then)
            self._restart_owned()

    def _restart_owned(self) -> None:
        """Start every owned partition again where `_reconcile` says, and relay what the
        outboxes still hold. The batch in hand is abandoned: its events are consumed again,
        as duplicates where they were applied."""
        topic = self._settings.orders_topic
        partitions = [TopicPartition(topic, p) for p in sorted(self.assigned)]
        self._retry_redis(lambda: self._reconcile(self._consumer, partitions))
        for tp in partitions:
            self._consumer.seek(TopicPartition(topic, tp.partition, tp.offset))
            self._done.pop((topic, tp.partition), None)
            self._unrecorded.pop((topic, tp.partition), None)
        self._retry_redis(lambda: self._relay.recover(self.assigned))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {p.partition for p in partitions}
        logger.info("revoked partitions %s", sorted(gone))
        # The batch in hand is done (callbacks run between batches): publish what it made,
        # commit what was processed, so the next owner starts where this one stopped. What
        # cannot be published in time is abandoned here: the next owner relays it, and
        # nothing of this worker lands after the next owner's changes.
        if not self._drain():
            self._relay.abandon()
            # A cooperative revoke takes some partitions only: what was dropped of the
            # partitions kept goes out again, oldest first, before their next batch.
            kept = self.assigned - gone
            if kept:
                self._retry_redis(lambda: self._relay.recover(kept))
        try:
            self._record(gone)
            self._commit_sync({tp: o for tp, o in self._done.items() if tp[1] in gone})
        except StateLostError as exc:  # the next owner replays from what the state holds
            logger.error("%s: offsets of the revoked partitions not committed", exc)
        self._forget(gone)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already. Commit nothing.
        gone = {p.partition for p in partitions}
        logger.warning("lost partitions %s", sorted(gone))
        self._forget(gone)

    def _forget(self, gone: set[int]) -> None:
        """Partitions no longer ours: their offsets and lag are another worker's."""
        for tp in [tp for tp in self._done if tp[1] in gone]:
            del self._done[tp]
            self._unrecorded.pop(tp, None)
        self.assigned -= gone
        for partition in gone:
            self._starts.pop(partition, None)
            self._store.applied.floors.pop(partition, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(partition))

    # -- lag ----------------------------------------------------------------------------

    def report_lag(self) -> None:
        if not self._lag.due():
            return
        for partition in sorted(self.assigned):
            tp = TopicPartition(self._settings.orders_topic, partition)
            try:
                # The cached end offset comes with each fetch: a paused partition fetches
                # nothing, so ask the broker then, or the lag would stay where it paused.
                if self._paused():
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=1)
                else:
                    low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                position = self._consumer.position([tp])[0].offset
            except Exception as exc:  # lag is informative; never let it stop the loop
                logger.debug("no lag for partition %d: %s", partition, exc)
                continue
            if position < 0:  # nothing consumed yet: behind by all from where it starts
                start = self._starts.get(partition, OFFSET_INVALID)
                position = start if start >= 0 else low
            if high >= 0 and position >= 0:
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, high - position))
