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
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from worker import metrics
from worker.config import Settings
from worker.errors import DataLossError, StateLostError
from worker.health import Health
from worker.kafka import KafkaException
from worker.kafka.orders import FROM_START, NO_OFFSET, OrdersConsumer
from worker.pacing import Every, Stopping
from worker.services.redis_retry import REDIS_ERRORS, RedisRetry
from worker.state import keys

logger = logging.getLogger(__name__)

LAG_REPORT_S = 1.0  # how often rfm_consumer_lag is refreshed
TOPIC_CHECK_S = 5.0  # how often a running worker asks whether its topic was recreated
WATERMARK_TIMEOUT_S = 10.0
APPLIED_EVERY_S = 0.1  # how often processed offsets are recorded next to the state
CHECK_STATE_S = 5.0  # how often an idle worker checks that the state holds what it vouched


class Applied(Protocol):
    """The applied offsets stored with the state (worker/state/applied.py)."""

    def read(self, fields: Sequence[str]) -> dict[str, tuple[int | None, int]]: ...
    def mark(self, offsets: Mapping[int, tuple[str, int]]) -> None: ...
    def adopt(self, topic: str, topic_id: str) -> str | None: ...
    def vouched(self, partition: int) -> int | None: ...
    def vouch(self, partition: int, field: str, offset: int) -> None: ...
    def forget(self, partition: int | None = None) -> None: ...


class Customers(Protocol):
    def holds_customers(self) -> bool: ...


class Outboxes(Protocol):
    """The relay of the outboxes to the actions topic (worker/kafka/relay.py)."""

    def recover(self, partitions: set[int]) -> int: ...
    def drain(self, timeout: float) -> bool: ...
    def abandon(self) -> None: ...


def drain(relay: Outboxes, stopping: Stopping) -> bool:
    """Wait for the relay to publish what it holds, within the stop's budget; True when all
    was acknowledged (and trimmed)."""
    try:
        return relay.drain(stopping.time_left())
    except REDIS_ERRORS as exc:  # acknowledged entries stay; relayed again later
        logger.warning("could not trim the outbox: %s", exc)
        return False


class Checkpoint:
    """The offsets of the orders topic for the worker that owns this; the consumer's
    rebalance listener (`on_assign`, `on_assigned`, `on_revoke`, `on_lost`)."""

    def __init__(
        self,
        settings: Settings,
        orders: OrdersConsumer,
        applied: Applied,
        customers: Customers,
        relay: Outboxes,
        retry_redis: RedisRetry,
        health: Health,
        stopping: Stopping,
    ) -> None:
        self._settings = settings
        self._orders = orders
        self._applied = applied
        self._customers = customers
        self._relay = relay
        self._retry_redis = retry_redis
        self._health = health
        self._stopping = stopping
        self._incarnation: str | None = None  # the topic id this worker last consumed
        self._topic_check = Every(TOPIC_CHECK_S)
        self.assigned: set[int] = set()
        self._done: dict[int, int] = {}  # next offset per processed partition
        self._unrecorded: dict[int, int] = {}  # processed, not yet recorded
        self._records = Every(APPLIED_EVERY_S)
        self._state_check = Every(CHECK_STATE_S, first_after=CHECK_STATE_S)
        self._starts: dict[int, int] = {}  # partition -> offset consumption starts from
        self._lag = Every(LAG_REPORT_S)

    # -- a processed batch, and the stop ------------------------------------------------

    def commit(self, offsets: dict[int, int]) -> None:
        """A batch fully done (state committed, dead letters acknowledged): record its next
        offset per partition next to the state and commit it to Kafka now, or with the next
        batches (`tick`)."""
        self._done.update(offsets)
        self._unrecorded.update(offsets)
        self.tick()

    def tick(self) -> None:
        """Record and commit what was processed, if APPLIED_EVERY_S has passed (a turn of
        the loop; StateLostError when Redis lost writes, see `replay_lost`). With nothing
        to record, every CHECK_STATE_S: check that the state still holds what it vouched
        for, so a Redis restored from a backup (or failed over) under an idle worker is
        replayed into now, not at the next order."""
        if self._unrecorded and self._records.due():
            offsets = self._record()
            try:  # asynchronous: the state, not the commit, protects against redelivery
                self._orders.commit(offsets, asynchronous=True)
            except KafkaException as exc:
                logger.warning("offset commit failed (events will be redelivered): %s", exc)
        elif not self._unrecorded and self._state_check.due():
            topic = self._orders.topic
            vouched = {
                p: (keys.applied_field(topic, p), offset)
                for p in self.assigned
                if (offset := self._applied.vouched(p)) is not None
            }
            # The same offsets again: applied.lua writes nothing, refuses if a shard holds less.
            self._retry_redis(lambda: self._applied.mark(vouched))

    def _record(self, partitions: set[int] | None = None) -> dict[int, int]:
        """Record processed offsets (of `partitions`, default all) next to the state;
        returns them. Kafka's commit of an offset follows its record, never precedes it."""
        offsets = {
            p: o for p, o in self._unrecorded.items() if partitions is None or p in partitions
        }
        if not offsets:
            return offsets
        topic = self._orders.topic
        applied = {p: (keys.applied_field(topic, p), o) for p, o in offsets.items()}
        self._retry_redis(lambda: self._applied.mark(applied))
        for p in offsets:
            del self._unrecorded[p]
        return offsets

    def commit_processed(self) -> None:
        """Stopping: record and commit every processed offset synchronously."""
        try:
            self._record()
        except StateLostError as exc:  # the next start replays from what the state holds
            logger.error("%s: offsets not committed", exc)
            return
        self._commit_sync(self._done)

    def _commit_sync(self, offsets: dict[int, int]) -> None:
        """Commit processed offsets synchronously (revoke, stop): less to redeliver."""
        if not offsets:
            return
        try:
            self._orders.commit(offsets, asynchronous=False)
        except KafkaException as exc:  # harmless: those events are redelivered as duplicates
            logger.warning("offset commit failed: %s", exc)

    # -- rebalances (inside consume(), between batches) ---------------------------------

    def on_assign(self, partitions: list[int]) -> dict[int, int] | None:
        """Where each new partition starts: where the state is, not where Kafka's commits
        say (Redis may have lost writes, a failover, a restart, that the committed offsets
        count as applied). None while closing: nothing more is consumed, so nothing to
        start from (asking the broker for offsets now may wait out the close)."""
        logger.info("assigned partitions %s", sorted(partitions))
        if self._stopping.is_set():
            return None
        if not partitions:  # (a cooperative round, or more workers than partitions)
            return {}
        return self._retry_redis(lambda: self._reconcile(partitions))

    def on_assigned(self, partitions: set[int]) -> None:
        # Changes a previous owner committed but did not publish go out before new ones.
        self._retry_redis(lambda: self._relay.recover(partitions))
        self.assigned |= partitions
        if not self._health.is_joined:
            self._health.joined()

    def _reconcile(self, partitions: list[int]) -> dict[int, int]:
        """Each partition's start offset, from the applied offsets stored with the state
        (docs/operations.md, "Where a worker starts").

        Behind Kafka's committed offset: seek back (replay is harmless). No record at all
        while Kafka says events were applied and Redis holds nothing: Redis lost its data;
        refuse to go on (DataLossError). A record missing from some shards only: those
        shards lost their data; refuse too. No record of a partition, or a topic deleted
        and created again since the state recorded its offsets: from the partition's start.
        A record beyond the partition's end (a truncated log) or before its start (records
        deleted before they were applied): from that end or start, saying so.
        """
        topic = self._orders.topic
        recreated = self._adopt_incarnation(topic)
        committed = self._orders.committed(partitions, timeout=30)
        fields = {p: keys.applied_field(topic, p) for p in partitions}
        applied = self._applied.read(list(fields.values()))
        for p in partitions:
            state, shards = applied[fields[p]]
            floor = self._applied.vouched(p)
            self._applied.forget(p)
            if state is None:
                self._check_nothing_lost(p, floor, committed.get(p, NO_OFFSET), recreated)
                # A new partition (or one whose offsets were of an older incarnation): all
                # of it, whatever Kafka's commits say; events already applied count once.
                self._starts[p] = FROM_START  # (lag: from low)
                continue
            if shards < keys.SHARDS:
                raise DataLossError(
                    f"{keys.SHARDS - shards} of {keys.SHARDS} Redis shards hold no record of "
                    f"{topic}[{p}]: part of the state was lost (a node "
                    "restarted empty?). Not consuming. Run `rfm-worker rebuild`."
                )
            self._applied.vouch(p, fields[p], state)
            self._say_where(p, state, floor, committed.get(p, NO_OFFSET))
            self._starts[p] = self._within_log(p, state)
        return {p: self._starts[p] for p in partitions}

    def _check_nothing_lost(self, p: int, floor: int | None, kafka: int, recreated: bool) -> None:
        """A partition the state holds no record of: Redis lost everything it held, unless
        the partition is new to the state (DataLossError otherwise)."""
        topic = self._orders.topic
        if floor is not None and floor >= 0:
            raise DataLossError(
                f"Redis lost every record of {topic}[{p}] while the "
                "worker ran (restarted empty, flushed, or failed over to a replica "
                "without the data). Not consuming. Run `rfm-worker rebuild` to replay "
                "the orders topic into a clean state, then start the workers again."
            )
        if kafka > 0 and not recreated and not self._customers.holds_customers():
            raise DataLossError(
                f"Redis holds no customer, but the consumer group "
                f"{self._settings.kafka_group} has committed offset {kafka} of "
                f"{topic}[{p}]: Redis was restarted empty or failed "
                "over to a replica without the data. Not consuming. Run "
                "`rfm-worker rebuild` to replay the orders topic into a clean state "
                "(it needs the topic's whole history), then start the workers again."
            )

    def _say_where(self, p: int, state: int, floor: int | None, kafka: int) -> None:
        """Log why a partition starts where the state is, when that is not where the
        worker or the group left it."""
        topic = self._orders.topic
        if floor is not None and state < floor:
            logger.warning(
                "%s[%d]: Redis lost writes while the worker ran: the state holds events "
                "up to offset %d, not %d: replaying from %d",
                topic,
                p,
                state,
                floor,
                state,
            )
        elif kafka >= 0 and state < kafka:
            logger.warning(
                "%s[%d]: the state holds events up to offset %d, Kafka's commit says "
                "%d (Redis lost writes): replaying from %d",
                topic,
                p,
                state,
                kafka,
                state,
            )
        elif kafka >= 0 and state > kafka:
            logger.info(
                "%s[%d]: starting at offset %d, where the state is; the group's committed "
                "offset %d only feeds the lag (to replay on purpose: rfm-worker rebuild)",
                topic,
                p,
                state,
                kafka,
            )

    def _adopt_incarnation(self, topic: str) -> bool:
        """Tie the state's applied offsets to the topic's incarnation (Kafka's topic id);
        True when they were of an older one (the topic was deleted and created again)."""
        current = self._orders.topic_id()
        if current is None:  # the broker does not say: the watermark checks remain
            return False
        previous = self._applied.adopt(topic, current)
        seen, self._incarnation = self._incarnation, current
        if previous is None and seen in (None, current):
            return False
        self._applied.forget()  # vouched for the old incarnation
        logger.warning(
            "%s was deleted and created again (topic id %s; the state's offsets were of %s): "
            "applying every partition from its start (events already applied count once)",
            topic,
            current,
            previous or seen,
        )
        metrics.OFFSET_RESETS.labels("topic_recreated").inc()
        return True

    def _within_log(self, p: int, state: int) -> int:
        """Where to start a partition the state holds up to `state`: there, unless the log
        does not reach it. Before the log's start: its records up to there were deleted
        (retention) before they were applied; start at its start, saying they are lost.
        Beyond its end, where the broker keeps no topic ids: the topic was recreated (or
        its log truncated); every record there is one the state has not seen: from its
        start. (Where it keeps ids, a recreated topic has a new one, see
        `_adopt_incarnation`, and a log truncated under the same id is a fetch out of
        range, which the consumer restarts from the start itself: auto.offset.reset.)"""
        topic = self._orders.topic
        try:
            low, high = self._orders.watermarks(p, timeout=WATERMARK_TIMEOUT_S)
        except KafkaException as exc:
            logger.warning("%s[%d]: no watermarks (%s)", topic, p, exc)
            return state
        if self._incarnation is None and 0 <= high < state:
            logger.warning(
                "%s[%d]: the state holds events up to offset %d, beyond the partition's end "
                "%d: the topic was recreated or its log truncated; applying the partition "
                "from its start (events already applied count once)",
                topic,
                p,
                state,
                high,
            )
            metrics.OFFSET_RESETS.labels("beyond_end").inc()
            return FROM_START
        if state < low:
            logger.error(
                "%s[%d]: the state holds events up to offset %d, but the partition starts at "
                "%d: %d record(s) were deleted (retention) before this worker applied them "
                "and are lost to the state; consuming from %d. Produce those orders again "
                "(rfm-worker produce: duplicates count once) to recover them",
                topic,
                p,
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
        current = self._orders.topic_id()
        if current is not None and current != self._incarnation:
            # (or its id was unknown at the assignment: a topic being created then)
            self._restart_owned()

    def _restart_owned(self) -> None:
        """Start every owned partition again where `_reconcile` says, and relay what the
        outboxes still hold. The batch in hand is abandoned: its events are consumed again,
        as duplicates where they were applied."""
        starts = self._retry_redis(lambda: self._reconcile(sorted(self.assigned)))
        for p, offset in starts.items():
            self._orders.seek(p, offset)
            self._done.pop(p, None)
            self._unrecorded.pop(p, None)
        self._retry_redis(lambda: self._relay.recover(self.assigned))

    def on_revoke(self, gone: set[int]) -> None:
        logger.info("revoked partitions %s", sorted(gone))
        # The batch in hand is done (callbacks run between batches): publish what it made,
        # commit what was processed, so the next owner starts where this one stopped. What
        # cannot be published in time is abandoned here: the next owner relays it, and
        # nothing of this worker lands after the next owner's changes.
        if not drain(self._relay, self._stopping):
            self._relay.abandon()
            # A cooperative revoke takes some partitions only: what was dropped of the
            # partitions kept goes out again, oldest first, before their next batch.
            kept = self.assigned - gone
            if kept:
                self._retry_redis(lambda: self._relay.recover(kept))
        try:
            self._record(gone)
            self._commit_sync({p: o for p, o in self._done.items() if p in gone})
        except StateLostError as exc:  # the next owner replays from what the state holds
            logger.error("%s: offsets of the revoked partitions not committed", exc)
        self._forget(gone)

    def on_lost(self, gone: set[int]) -> None:
        # Lost, not revoked: another member may own them already. Commit nothing.
        logger.warning("lost partitions %s", sorted(gone))
        self._forget(gone)

    def _forget(self, gone: set[int]) -> None:
        """Partitions no longer ours: their offsets and lag are another worker's."""
        for p in gone:
            self._done.pop(p, None)
            self._unrecorded.pop(p, None)
            self._starts.pop(p, None)
            self._applied.forget(p)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(p))
        self.assigned -= gone

    # -- lag ----------------------------------------------------------------------------

    def report_lag(self) -> None:
        if not self._lag.due():
            return
        for partition, lag in self._lags():
            metrics.CONSUMER_LAG.labels(str(partition)).set(lag)

    def _lags(self) -> Iterator[tuple[int, int]]:
        for partition in sorted(self.assigned):
            try:
                low, high, position = self._orders.lag_offsets(partition)
            except Exception as exc:  # lag is informative; never let it stop the loop
                logger.debug("no lag for partition %d: %s", partition, exc)
                continue
            if position < 0:  # nothing consumed yet: behind by all from where it starts
                start = self._starts.get(partition, NO_OFFSET)
                position = start if start >= 0 else low
            if high >= 0 and position >= 0:
                yield partition, max(0, high - position)
