"""The consume -> validate -> apply -> publish loop (`rfm-worker run`).

One iteration handles one consumed batch:
1. validate every record (pure); rejected ones are produced to the DLQ topic;
2. apply the valid ones to Redis: atomic script calls (worker/state/store.py), which also write
   the resulting changes to the outbox;
3. hand the committed changes to the relay (published, trimmed after the broker's ack);
4. wait for the DLQ acks, then commit the batch's offsets to Kafka;
5. one bounded step of the decay sweep of the owned partitions (worker/services/sweeper.py), whose
   changes go through the same relay, so each customer's changes stay in commit order.

Redelivery after a crash or rebalance is harmless: the state merge is idempotent, so a
replayed event is a duplicate and emits nothing, while changes not yet published are still
in the outbox and are relayed on assignment. Redis outages stall the loop (it retries with
backoff and reports not ready); nothing is dead-lettered because of them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from worker import metrics
from worker.config import Settings
from worker.errors import RfmError, StateError, StateLostError
from worker.kafka import clients
from worker.kafka.delivery import Deliveries
from worker.kafka.dlq import dlq_headers, without_value
from worker.kafka.relay import DRAIN_TIMEOUT, Relay
from worker.rules.customer import MAX_ORDERS
from worker.rules.events import Rejection, ValidEvent, validate
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.sweeper import Sweeper
from worker.state import keys
from worker.state.clock import scoring_now
from worker.state.store import Committed, Store

logger = logging.getLogger(__name__)

BATCH_SIZE = 2000
POLL_TIMEOUT = 0.01  # a batch waits at most this to fill: the latency floor at low rates
KAFKA_DOWN = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE)
MAX_BACKLOG = 50_000  # unacknowledged changes before consumption pauses
DLQ_STALL = 5.0  # seconds of unacknowledged dead letters before the worker says so
# A broker that holds requests of this worker (a fetch, a heartbeat, a produce) unanswered
# for this long is hung (a frozen process, a stalled disk, a network black hole): not
# ready. A healthy broker answers a fetch within fetch.wait.max.ms (500 ms) and a
# heartbeat within its interval (3-5 s); TCP would take minutes to notice.
KAFKA_SILENT_S = 10.0
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


class LogBudget:
    """At most `limit` lines per `window` seconds for one kind of event; what was held
    back is counted in one line when the next window opens (a flood of bad input must
    not flood the log: the metrics count every one)."""

    def __init__(self, log: logging.Logger, what: str, limit: int = 20, window: float = 10):
        self._log, self._what, self._limit, self._window = log, what, limit, window
        self._start, self._used, self._held = 0.0, 0, 0

    def take(self) -> bool:
        now = time.monotonic()
        if now - self._start > self._window:
            if self._held:
                self._log.info("... and %d more %s in %.0f s", self._held, self._what, self._window)
            self._start, self._used, self._held = now, 0, 0
        if self._used < self._limit:
            self._used += 1
            return True
        self._held += 1
        return False


class DataLossError(StateError):
    """Redis lost state that Kafka's committed offsets count as applied."""


class BatchAbandonedError(RfmError):
    """Stopping before the batch in hand could be completed; it is consumed again later."""


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
        # Cooperative rebalances (the default) add and take back partitions one by one.
        self.incremental = clients.incremental(settings.kafka_properties())
        self.profiles = profiles
        self.store = store
        self.consumer = consumer
        self.producer = producer
        self.relay = Relay(store, producer, settings.actions_topic)
        self.now_ms = now_ms
        self.stopping = threading.Event()
        self._stop_by = 0.0
        self.assigned: set[int] = set()
        self.joined = False  # the first assignment (possibly empty) has been received
        self.kafka_ok = True
        self._kafka_check = 0.0
        self.kafka_silent: list[str] = []  # brokers holding requests unanswered (stats)
        self._log_budget = LogBudget(logger, "record(s) dead-lettered")
        self.redis_ok = True
        self.redis_failures = 0  # Redis calls that raised, ever: tells a retried call
        self.max_backlog = MAX_BACKLOG
        self.paused = False
        self.heartbeat = time.monotonic()
        self.dead_letters: Deliveries[None] = Deliveries(
            producer, settings.dlq_topic, shrink=without_value
        )
        self.dlq_ok = True
        self._last_lag = 0.0
        self._done: dict[tuple[str, int], int] = {}  # next offset per processed partition
        self._starts: dict[int, int] = {}  # partition -> offset consumption starts from
        self.sweeper = Sweeper(
            store, profiles, interval=settings.sweep_interval, clock=self.clock, now_ms=now_ms
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        # Able to work: in the group (a member with no partition, when there are more
        # workers than partitions, is ready too, or a rollout would never complete).
        return (
            self.redis_ok
            and self.kafka_ok
            and not self.kafka_silent
            and self.dlq_ok
            and self.joined
            and not self.stopping.is_set()
        )

    def is_healthy(self) -> bool:
        """The loop is turning (a Redis outage keeps it turning: not ready, still alive)."""
        return time.monotonic() - self.heartbeat < 60

    def stop(self) -> None:
        self._stop_by = time.monotonic() + DRAIN_TIMEOUT
        self.stopping.set()

    def on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (served inside consume()): an unreachable cluster
        is said once, in the worker's words, and makes the worker not ready."""
        if err.code() not in KAFKA_DOWN or not self.kafka_ok:
            return
        self.kafka_ok = False
        metrics.READY.set(0)
        logger.error(
            "Kafka at %s (RFM_KAFKA_BOOTSTRAP) is unreachable (%s): not ready until it answers",
            self.settings.kafka_bootstrap,
            err.str(),
        )

    def on_kafka_stats(self, stats: str) -> None:
        """librdkafka's statistics (every second, inside consume()): a broker that has
        requests of ours in hand and has sent nothing for KAFKA_SILENT_S is hung, and
        the worker is not ready until it answers again."""
        try:
            brokers = orjson.loads(stats).get("brokers", {}).values()
            silent = sorted(
                b["name"]
                for b in brokers
                if b.get("nodeid", -1) >= 0
                and b.get("waitresp_cnt", 0) > 0
                and b.get("rxidle", -1) > KAFKA_SILENT_S * 1_000_000
            )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            return  # statistics are a hint; never let them stop the loop
        if silent and not self.kafka_silent:
            metrics.READY.set(0)
            logger.error(
                "Kafka broker(s) %s have not answered for %.0f s (requests waiting): not "
                "ready until they do",
                ", ".join(silent),
                KAFKA_SILENT_S,
            )
        elif self.kafka_silent and not silent:
            logger.info("Kafka broker(s) %s answer again", ", ".join(self.kafka_silent))
        self.kafka_silent = silent

    def _check_kafka(self) -> None:
        """While Kafka is unreachable, ask it for metadata now and then: back when it answers."""
        if self.kafka_ok or time.monotonic() - self._kafka_check < 2:
            return
        self._kafka_check = time.monotonic()
        try:
            self.consumer.list_topics(self.settings.orders_topic, timeout=1)
        except KafkaException:
            return
        self.kafka_ok = True
        logger.info("Kafka at %s answers again", self.settings.kafka_bootstrap)

    def _time_left(self) -> float:
        """Seconds left to drain: the whole budget until stop() is called."""
        if not self.stopping.is_set():
            return DRAIN_TIMEOUT
        return max(0.5, self._stop_by - time.monotonic())

    def clock(self) -> int:
        """Now as scores see it (worker/state/clock.py)."""
        return scoring_now(self.settings, self.store.clock, self.now_ms)

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
                try:
                    if messages:
                        self.process(messages)
                    if not self.paused:
                        failures = self.redis_failures
                        swept = self._retry_redis(lambda: self.sweeper.tick(self.assigned))
                        self._publish(swept, self.assigned, failures)
                except StateLostError as exc:
                    self._replay_lost(exc)
                self._retry_redis(self.relay.settle)
                self._bound_backlog()
                self._check_kafka()
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
            return self.relay.drain(self._time_left())
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
        if self.stopping.is_set():
            # A rebalance that ends while closing: nothing more is consumed, so nothing to
            # start from (asking the broker for offsets now may wait out the close).
            return
        # Start where the state is, not where Kafka's commits say: Redis may have lost
        # writes (a failover, a restart) that the committed offsets count as applied.
        if partitions:  # (a cooperative round, or more workers than partitions: none)
            self._retry_redis(lambda: self._reconcile(consumer, partitions))
        if self.incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        if self.paused:
            consumer.pause(partitions)
        # Changes a previous owner committed but did not publish go out before new ones.
        self._retry_redis(lambda: self.relay.recover(new))
        self.assigned |= new
        self.joined = True

    def _reconcile(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Set each partition's start offset from the applied offsets stored with the state.

        Behind Kafka's committed offset: seek back (replay is harmless). No record at all
        while Kafka says events were applied and Redis holds nothing: Redis lost its data;
        refuse to go on (DataLossError). A record missing from some shards only: those
        shards lost their data; refuse too.
        """
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
        fields = {tp.partition: keys.applied_field(tp.topic, tp.partition) for tp in partitions}
        applied = self.store.applied.read(list(fields.values()))
        for tp in partitions:
            kafka = committed.get(tp.partition, OFFSET_INVALID)
            self._starts[tp.partition] = kafka  # where consumption starts, for the lag
            state, shards = applied[fields[tp.partition]]
            floor = self.store.applied.floors.pop(tp.partition, None)
            if state is None:
                if floor is not None and floor[1] >= 0:
                    raise DataLossError(
                        f"Redis lost every record of {tp.topic}[{tp.partition}] while the "
                        "worker ran (restarted empty, flushed, or failed over to a replica "
                        "without the data). Not consuming. Run `rfm-worker rebuild` to replay "
                        "the orders topic into a clean state, then start the workers again."
                    )
                if kafka > 0 and not self.store.reads.holds_customers():
                    raise DataLossError(
                        f"Redis holds no customer, but the consumer group "
                        f"{self.settings.kafka_group} has committed offset {kafka} of "
                        f"{tp.topic}[{tp.partition}]: Redis was restarted empty or failed "
                        "over to a replica without the data. Not consuming. Run "
                        "`rfm-worker rebuild` to replay the orders topic into a clean state "
                        "(it needs the topic's whole history), then start the workers again."
                    )
                continue  # a new partition, or state written before offsets were recorded
            if shards < keys.SHARDS:
                raise DataLossError(
                    f"{keys.SHARDS - shards} of {keys.SHARDS} Redis shards hold no record of "
                    f"{tp.topic}[{tp.partition}]: part of the state was lost (a node "
                    "restarted empty?). Not consuming. Run `rfm-worker rebuild`."
                )
            self.store.applied.floors[tp.partition] = (fields[tp.partition], state)
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
                tp.offset = self._starts[tp.partition] = state
                continue
            if state != kafka:
                if kafka >= 0 and state < kafka:
                    logger.warning(
                        "%s[%d]: the state holds events up to offset %d, Kafka's commit says "
                        "%d (Redis lost writes): replaying from %d",
                        tp.topic,
                        tp.partition,
                        state,
                        kafka,
                        state,
                    )
                tp.offset = self._starts[tp.partition] = state

    def _replay_lost(self, exc: StateLostError) -> None:
        """Redis lost writes under the running worker; nothing was written on the loss
        (commit.lua and applied.lua refuse). Start every owned partition again where the
        state still holds it (DataLossError when nothing is left: `rfm-worker rebuild`),
        and relay what the outboxes still hold. The batch in hand is abandoned: its
        events are consumed again, as duplicates where they were applied."""
        logger.error("%s: replaying from what the state still holds", exc)
        topic = self.settings.orders_topic
        partitions = [TopicPartition(topic, p) for p in sorted(self.assigned)]
        self._retry_redis(lambda: self._reconcile(self.consumer, partitions))
        for tp in partitions:
            start = self._starts.get(tp.partition, -1)  # what _reconcile chose
            # no offset anywhere: the partition's first batch was the one lost
            start = start if start >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(topic, tp.partition, start))
            self._done.pop((topic, tp.partition), None)
        self._retry_redis(lambda: self.relay.recover(self.assigned))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {p.partition for p in partitions}
        logger.info("revoked partitions %s", sorted(gone))
        # The batch in hand is done (callbacks run between batches): publish what it made,
        # commit what was processed, so the next owner starts where this one stopped. What
        # cannot be published in time is abandoned here: the next owner relays it, and
        # nothing of this worker lands after the next owner's changes.
        if not self._drain():
            self.relay.abandon()
            # A cooperative revoke takes some partitions only: what was dropped of the
            # partitions kept goes out again, oldest first, before their next batch.
            kept = self.assigned - gone
            if kept:
                self._retry_redis(lambda: self.relay.recover(kept))
        self._commit_sync({tp: o for tp, o in self._done.items() if tp[1] in gone})
        for tp in [tp for tp in self._done if tp[1] in gone]:
            del self._done[tp]
        self._forget(gone)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already. Commit nothing.
        gone = {p.partition for p in partitions}
        logger.warning("lost partitions %s", sorted(gone))
        for tp in [tp for tp in self._done if tp[1] in gone]:
            del self._done[tp]
        self._forget(gone)

    def _forget(self, gone: set[int]) -> None:
        """Partitions no longer ours: their lag is another worker's to report."""
        self.assigned -= gone
        for partition in gone:
            self._starts.pop(partition, None)
            self.store.applied.floors.pop(partition, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(partition))

    # -- one batch ----------------------------------------------------------------------

    def process(self, messages: list[Any]) -> None:
        started = time.perf_counter()
        now = self.now_ms()
        valid: list[tuple[ValidEvent, int]] = []
        sources: list[Any] = []  # the message of each valid event, to dead-letter it later
        next_offsets: dict[int, int] = {}  # partition -> offset after its last message
        for msg in messages:
            if msg.error():
                self._log_consume_error(msg.error())
                continue
            partition = msg.partition()
            next_offsets[partition] = msg.offset() + 1
            outcome = validate(msg.value(), self.profiles, now)
            if isinstance(outcome, Rejection):
                self._dead_letter(msg, outcome)
            else:
                valid.append((outcome, partition))
                sources.append(msg)
        # One topic is consumed (the orders topic): offsets are per partition of it.
        topic = self.settings.orders_topic
        offsets = {(topic, p): offset for p, offset in next_offsets.items()}
        if valid:
            as_of = now
            if self.settings.clock == "event":
                newest = max(event.occurred_at for event, _ in valid)
                as_of = self._retry_redis(lambda: self.store.clock.advance(newest))
            failures = self.redis_failures
            result = self._retry_redis(
                lambda: causes.apply_batch(
                    self.store, valid, self.profiles, as_of_ms=as_of, now_ms=now
                )
            )
            for outcome_name, count in result.outcomes.items():
                metrics.EVENTS.labels(outcome_name).inc(count)
            metrics.STORE_CONFLICTS.inc(result.conflicts)
            for tenant, customer_id, count in result.folded:
                metrics.ORDERS_FOLDED.inc(count)
                logger.warning(
                    "customer %r of tenant %r holds more than %d orders: its %d oldest were "
                    "folded into its aggregates (docs/architecture.md: the per-customer bound)",
                    customer_id,
                    tenant,
                    MAX_ORDERS,
                    count,
                )
            metrics.RESCORED.labels("events").inc(result.customers)
            self._publish(result.committed, {p for _, p in valid}, failures)
            if result.rejected:
                source = {id(event): msg for (event, _), msg in zip(valid, sources, strict=True)}
                for event, _partition, exc in result.rejected:
                    self._internal_error(source[id(event)], exc)
        self._await_dead_letters()
        # Fully done (state committed, dead letters acknowledged): say so next to the state.
        applied = {p: (keys.applied_field(t, p), o) for (t, p), o in offsets.items()}
        self._retry_redis(lambda: self.store.applied.mark(applied))
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

    def _bound_backlog(self) -> None:
        """Changes committed but not acknowledged wait in Redis (the outbox): when the
        actions topic is unavailable, pause consuming (the group membership stays) rather
        than grow Redis without limit; resume once most of them are out."""
        backlog = self.relay.backlog
        metrics.OUTBOX_SIZE.set(backlog)
        if not self.paused and backlog > self.max_backlog:
            self.paused = True
            self.consumer.pause(self.consumer.assignment())
            logger.warning(
                "%d changes are waiting for the actions topic %s (%s): consumption paused "
                "until they are delivered",
                backlog,
                self.settings.actions_topic,
                self._topic_problem(self.settings.actions_topic) or "not acknowledged",
            )
        elif self.paused and backlog <= self.max_backlog // 2:
            self.paused = False
            self.consumer.resume(self.consumer.assignment())
            logger.info("the actions topic accepts changes again: consumption resumed")

    def _publish(self, committed: list[Committed], partitions: set[int], failures: int) -> None:
        """Publish what a commit call returned. If the call had to be retried, a lost reply
        may hide a commit that did run (the retry then found its events applied): publish
        those partitions' outboxes now, in order, rather than at the next assignment."""
        if self.redis_failures == failures:
            self.relay.publish(committed)
            return
        self._retry_redis(lambda: self.relay.recover(partitions))

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
        if self._log_budget.take():
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
        """A record's offset is done only after its DLQ copy is acked: wait, retry failures.

        A DLQ topic that refuses copies (missing, not authorised) stalls the partitions
        here, never skips a record: not ready, a metric, and the reason in the log.
        """
        started = time.monotonic()
        while not self.dead_letters.settled:
            now = time.monotonic()
            if self.stopping.is_set() and now > self._stop_by:
                raise BatchAbandonedError("dead letters unacknowledged at the drain timeout")
            if self.dlq_ok and now - started > DLQ_STALL:
                self.dlq_ok = False
                metrics.DLQ_BLOCKED.set(1)
                metrics.READY.set(0)
                logger.error(
                    "dead letters to %s not acknowledged for %.0f s (%s): consumption is "
                    "stalled until the topic accepts them (check that it exists and that "
                    "this worker may write to it); nothing is skipped",
                    self.settings.dlq_topic,
                    now - started,
                    self.dead_letters.error
                    or self._topic_problem(self.settings.dlq_topic)
                    or "no answer from the broker",
                )
            self.heartbeat = now
            self.producer.poll(0.05)
            self.dead_letters.collect()
        if not self.dlq_ok:
            logger.info("dead letters to %s are acknowledged again", self.settings.dlq_topic)
            self.dlq_ok = True
            metrics.DLQ_BLOCKED.set(0)

    # -- helpers --------------------------------------------------------------------------

    def _retry_redis(self, call: Callable[[], T]) -> T:
        """Run a Redis call until it succeeds: an outage stalls the worker, never drops data.

        Every call retried here is idempotent (see worker/state/store.py), so a retry after a
        timeout whose command did run changes nothing twice.
        """
        delay = 0.1
        while True:
            try:
                value = call()
            except REDIS_ERRORS as exc:
                metrics.REDIS_ERRORS.inc()
                self.redis_failures += 1
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

    def _topic_problem(self, topic: str) -> str | None:
        """What the broker's metadata says is wrong with an output topic, if anything: a
        missing topic is the common case (brokers in production do not auto-create)."""
        try:
            meta = self.consumer.list_topics(topic, timeout=2).topics.get(topic)
        except KafkaException:
            return None
        if meta is None or meta.error is None:
            return None
        if meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return f"the topic {topic} does not exist: create it"
        return f"topic {topic}: {meta.error.str()}"

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
                # The cached end offset comes with each fetch: a paused partition fetches
                # nothing, so ask the broker then, or the lag would stay where it paused.
                if self.paused:
                    low, high = self.consumer.get_watermark_offsets(tp, timeout=1)
                else:
                    low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = self.consumer.position([tp])[0].offset
            except Exception as exc:  # lag is informative; never let it stop the loop
                logger.debug("no lag for partition %d: %s", partition, exc)
                continue
            if position < 0:  # nothing consumed yet: behind by all from where it starts
                start = self._starts.get(partition, OFFSET_INVALID)
                position = start if start >= 0 else low
            if high >= 0 and position >= 0:
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, high - position))
