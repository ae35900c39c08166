"""The consume -> validate -> apply -> publish loop (`rfm-worker run`).

One iteration handles one consumed batch:
1. validate every record (pure); rejected ones are produced to the DLQ topic;
2. apply the valid ones to Redis: one atomic script call per shard, pipelined
   (worker/store.py), which also writes the resulting changes to the outbox;
3. hand the committed changes to the relay (published, trimmed after the broker's ack);
4. wait for the DLQ acks, then commit the batch's offsets to Kafka;
5. one bounded step of the decay sweep of the owned partitions (worker/sweeper.py), whose
   changes go through the same relay, so each customer's changes stay in commit order.

Redelivery after a crash or rebalance is harmless: the state merge is idempotent, so a
replayed event is a duplicate and emits nothing, while changes not yet published are still
in the outbox and are relayed on assignment. Redis outages stall the loop (it retries with
backoff and reports not ready); nothing is dead-lettered because of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker import metrics
from worker.config import Settings
from worker.delivery import Deliveries
from worker.dlq import dlq_headers
from worker.errors import RfmError
from worker.events import Rejection, ValidEvent, validate
from worker.profiles import Profiles
from worker.relay import Relay
from worker.store import Store
from worker.sweeper import Sweeper

logger = logging.getLogger(__name__)

BATCH_SIZE = 2000
POLL_TIMEOUT = 0.2
DRAIN_TIMEOUT = 20.0
# Redis conditions that pass: wait and retry (never dead-letter, never crash). OOM stalls
# the worker rather than losing data; failover (read-only replica, cluster down) too.
REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
)


T = TypeVar("T")


class BatchAbandonedError(RfmError):
    """Stopping before the batch in hand could be completed; it is consumed again later."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Worker:
    def __init__(
        self,
        settings: Settings,
        profiles: Profiles,
        store: Store,
        consumer: Any,
        producer: Any,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self.store = store
        self.consumer = consumer
        self.producer = producer
        self.relay = Relay(store, producer, settings.actions_topic)
        self.now_ms = now_ms
        self.stopping = threading.Event()
        self.assigned: set[int] = set()
        self.redis_ok = True
        self.heartbeat = time.monotonic()
        self.dead_letters: Deliveries[None] = Deliveries(producer, settings.dlq_topic)
        self._last_lag = 0.0
        self._done: dict[tuple[str, int], int] = {}  # next offset per processed partition
        self.sweeper = Sweeper(
            store, profiles, interval=settings.sweep_interval, clock=self.clock, now_ms=now_ms
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.redis_ok and bool(self.assigned) and not self.stopping.is_set()

    def is_healthy(self) -> bool:
        """The loop is turning (a Redis outage keeps it turning: not ready, still alive)."""
        return time.monotonic() - self.heartbeat < 60

    def stop(self) -> None:
        self.stopping.set()

    def clock(self) -> int:
        """Now as scores see it: the wall clock, or the event clock (RFM_CLOCK=event)."""
        if self.settings.clock == "event":
            return self.store.read_clock() or self.now_ms()
        return self.now_ms()

    def run(self) -> None:
        self.consumer.subscribe(
            [self.settings.orders_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        logger.info(
            "consuming %s as group %s", self.settings.orders_topic, self.settings.kafka_group
        )
        try:
            while not self.stopping.is_set():
                self.heartbeat = time.monotonic()
                messages = self.consumer.consume(BATCH_SIZE, POLL_TIMEOUT)
                if messages:
                    self.process(messages)
                self.relay.publish(self._retry_redis(lambda: self.sweeper.tick(self.assigned)))
                self._retry_redis(self.relay.settle)
                self._report_lag()
        except (*REDIS_ERRORS, BatchAbandonedError) as exc:
            if not self.stopping.is_set():
                raise
            logger.warning(
                "stopped with a batch in hand (%s); it was not committed and "
                "will be consumed again",
                exc,
            )
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        logger.info("draining: relaying the last changes and closing")
        if not self._drain():
            logger.warning(
                "some changes were not acknowledged in time; they stay in the "
                "outbox and are relayed at the next start"
            )
        self._commit_sync(self._done)
        self.consumer.close()
        metrics.READY.set(0)

    def _drain(self) -> bool:
        try:
            return self.relay.drain(DRAIN_TIMEOUT)
        except REDIS_ERRORS as exc:  # acknowledged entries stay; relayed again later
            logger.warning("could not trim the outbox: %s", exc)
            return False

    def _commit_sync(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit processed offsets synchronously (revoke, stop): less to redeliver."""
        if not offsets:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:  # harmless: those events are redelivered as duplicates
            logger.warning("offset commit failed: %s", exc)

    # -- rebalance callbacks (run inside consume()) --------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        new = {p.partition for p in partitions}
        logger.info("assigned partitions %s", sorted(new))
        # Changes a previous owner committed but did not publish go out before new ones.
        self._retry_redis(lambda: self.relay.recover(new))
        self.assigned |= new

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {p.partition for p in partitions}
        logger.info("revoked partitions %s", sorted(gone))
        # The batch in hand is done (callbacks run between batches): publish what it made,
        # commit what was processed, so the next owner starts where this one stopped.
        self._drain()
        self._commit_sync({tp: o for tp, o in self._done.items() if tp[1] in gone})
        for tp in [tp for tp in self._done if tp[1] in gone]:
            del self._done[tp]
        self.assigned -= gone

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already. Commit nothing.
        gone = {p.partition for p in partitions}
        logger.warning("lost partitions %s", sorted(gone))
        for tp in [tp for tp in self._done if tp[1] in gone]:
            del self._done[tp]
        self.assigned -= gone

    # -- one batch ----------------------------------------------------------------------

    def process(self, messages: list[Any]) -> None:
        started = time.perf_counter()
        now = self.now_ms()
        valid: list[tuple[ValidEvent, int]] = []
        sources: dict[int, Any] = {}  # id(event) -> its message, to dead-letter it later
        offsets: dict[tuple[str, int], int] = {}
        newest = 0
        for msg in messages:
            if msg.error():
                self._log_consume_error(msg.error())
                continue
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            outcome = validate(msg.value(), self.profiles, now)
            if isinstance(outcome, Rejection):
                self._dead_letter(msg, outcome)
            else:
                valid.append((outcome, msg.partition()))
                sources[id(outcome)] = msg
                newest = max(newest, outcome.occurred_at)
        if valid:
            as_of = now
            if self.settings.clock == "event":
                as_of = self._retry_redis(lambda: self.store.advance_clock(newest))
            result = self._retry_redis(
                lambda: self.store.apply_batch(valid, self.profiles, as_of_ms=as_of, now_ms=now)
            )
            for outcome_name, count in result.outcomes.items():
                metrics.EVENTS.labels(outcome_name).inc(count)
            metrics.STORE_CONFLICTS.inc(result.conflicts)
            metrics.RESCORED.labels("events").inc(result.customers)
            self.relay.publish(result.committed)
            for event, _partition, exc in result.rejected:
                self._internal_error(sources[id(event)], exc)
        self._await_dead_letters()
        self._done.update(offsets)
        if offsets:
            try:  # asynchronous: the state, not the commit, protects against redelivery
                self.consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    asynchronous=True,
                )
            except KafkaException as exc:
                logger.warning("offset commit failed (events will be redelivered): %s", exc)
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)

    def _internal_error(self, msg: Any, exc: Exception) -> None:
        """An event that passed validation but raised while applied: a bug costs it alone."""
        logger.error(
            "event at %s[%d]@%d raised while applied; dead-lettered as internal_error",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            exc_info=exc,
        )
        reason = f"applying the event raised {type(exc).__name__}: {exc}"
        self._dead_letter(msg, Rejection("internal_error", " ".join(reason.split())[:500]))

    def _dead_letter(self, msg: Any, rejection: Rejection) -> None:
        metrics.EVENTS.labels("dead_lettered").inc()
        metrics.DEAD_LETTERS.labels(rejection.error_class).inc()
        logger.info(
            "dead-lettered %s[%d]@%d: %s (%s)",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            rejection.error_class,
            rejection.reason,
        )
        self.dead_letters.send(msg.key(), msg.value(), None, dlq_headers(msg, rejection))

    def _await_dead_letters(self) -> None:
        """A record's offset is done only after its DLQ copy is acked: wait, retry failures."""
        deadline = None
        while not self.dead_letters.settled:
            if self.stopping.is_set():
                deadline = deadline or time.monotonic() + DRAIN_TIMEOUT
                if time.monotonic() > deadline:
                    raise BatchAbandonedError("dead letters unacknowledged at the drain timeout")
            self.heartbeat = time.monotonic()
            self.producer.poll(0.05)
            self.dead_letters.collect()

    # -- helpers --------------------------------------------------------------------------

    def _retry_redis(self, call: Callable[[], T]) -> T:
        """Run a Redis call until it succeeds: an outage stalls the worker, never drops data.

        Every call retried here is idempotent (see worker/store.py), so a retry after a
        timeout whose command did run changes nothing twice.
        """
        delay = 0.1
        while True:
            try:
                value = call()
            except REDIS_ERRORS as exc:
                metrics.REDIS_ERRORS.inc()
                if self.redis_ok:
                    logger.error("redis unavailable, retrying with backoff: %s", exc)
                self.redis_ok = False
                metrics.READY.set(0)
                self.heartbeat = time.monotonic()
                if self.stopping.wait(delay):
                    raise  # stopping: leave the batch uncommitted, it is redelivered
                delay = min(delay * 2, 5.0)
                continue
            if not self.redis_ok:
                logger.info("redis is back")
            self.redis_ok = True
            metrics.READY.set(1 if self.ready else 0)
            return value

    def _log_consume_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        logger.warning("consumer error: %s", err)

    def _report_lag(self) -> None:
        if time.monotonic() - self._last_lag < 1:
            return
        self._last_lag = time.monotonic()
        for partition in sorted(self.assigned):
            tp = TopicPartition(self.settings.orders_topic, partition)
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = self.consumer.position([tp])[0].offset
            except Exception as exc:  # lag is informative; never let it stop the loop
                logger.debug("no lag for partition %d: %s", partition, exc)
                continue
            if high >= 0 and position >= 0:
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, high - position))
