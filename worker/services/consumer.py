"""The consume -> validate -> apply -> publish loop (`rfm-worker run`).

One iteration handles one consumed batch:
1. validate every record (pure); rejected ones are produced to the DLQ topic
   (worker/kafka/dead_letters.py);
2. apply the valid ones to Redis: atomic script calls (worker/state/store.py), which also write
   the resulting changes to the outbox;
3. hand the committed changes to the relay (worker/kafka/relay.py: published, trimmed after
   the broker's ack);
4. wait for the DLQ acks (worker/kafka/dead_letters.py), then record the batch's offsets next
   to the state and commit them to Kafka (worker/services/checkpoint.py);
5. one bounded step of the decay sweep of the owned partitions (worker/services/sweeper.py), whose
   changes go through the same relay, so each customer's changes stay in commit order.

Redelivery after a crash or rebalance is harmless: the state merge is idempotent, so a
replayed event is a duplicate and emits nothing, while changes not yet published are still
in the outbox and are relayed on assignment (worker/services/checkpoint.py). Redis outages
stall the loop (it retries with backoff, worker/services/redis_retry.py, and reports not
ready, worker/health.py); nothing is dead-lettered because of them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from worker import metrics
from worker.config import Settings
from worker.errors import StateLostError
from worker.health import Health
from worker.kafka import clients
from worker.kafka.dead_letters import BatchAbandonedError, DeadLetters
from worker.kafka.records import KafkaMessage
from worker.kafka.relay import DRAIN_TIMEOUT, Relay
from worker.rules.customer import MAX_ORDERS
from worker.rules.events import Rejection, ValidEvent, validate
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.checkpoint import Checkpoint
from worker.services.churn_upkeep import load_fits
from worker.services.quantile_upkeep import load_cuts
from worker.services.redis_retry import REDIS_ERRORS, RedisRetry
from worker.services.roster import Roster
from worker.services.sweeper import Sweeper
from worker.state import flows
from worker.state.clock import scoring_now
from worker.state.store import Committed, Store

logger = logging.getLogger(__name__)

BATCH_SIZE = 2000
POLL_TIMEOUT = 0.01  # a batch waits at most this to fill: the latency floor at low rates
MAX_BACKLOG = 50_000  # unacknowledged changes before consumption pauses


class Worker:
    def __init__(
        self,
        settings: Settings,
        profiles: Profiles,
        store: Store,
        consumer: Consumer,
        producer: Producer,
        now_ms: Callable[[], int] = wall_ms,
        *,
        admin: AdminClient | None = None,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self.store = store
        self.consumer = consumer
        self.producer = producer
        self.relay = Relay(store, producer, settings.actions_topic)
        self.now_ms = now_ms
        self.stopping = threading.Event()
        self._stop_by = 0.0
        self.max_backlog = MAX_BACKLOG
        self.paused = False
        self.health = Health(settings, consumer, self.stopping)
        self.retry_redis = RedisRetry(self.health, self.stopping)
        self.dead_letters = DeadLetters(
            producer, settings.dlq_topic, self.health, out_of_time=self._out_of_time
        )
        self.checkpoint = Checkpoint(
            settings,
            store,
            consumer,
            self.relay,
            self.retry_redis,
            self.health,
            self.stopping,
            drain=self._drain,
            paused=lambda: self.paused,
            first_join=self._first_join,
            topic_id=lambda: (
                None if admin is None else clients.topic_id(admin, settings.orders_topic, 2.0)
            ),
        )
        self.sweeper = Sweeper(
            store, profiles, interval=settings.sweep_interval, clock=self.clock, now_ms=now_ms
        )
        self.roster = Roster(store, profiles, now_ms)

    # -- lifecycle ----------------------------------------------------------------------

    def _first_join(self) -> None:
        """Shared state is written by working members of the group only: a worker that
        cannot reach Kafka, or is misconfigured, never joins and never writes (nor sweeps,
        nor runs the marking pass, see `run`). At the first assignment, before the first
        batch: the cut points of quantile profiles that have none yet (so a base switched
        to quantile mode moves once, to its quintiles), the first fit of churn models that
        have none, and the start of flow recording."""
        now = self.clock()
        self.retry_redis(lambda: load_cuts(self.store, self.profiles, compute_missing_at=now))
        self.retry_redis(lambda: load_fits(self.store, self.profiles, compute_missing_at=now))
        self.retry_redis(lambda: flows.start_recording(self.store.redis, now))

    def stop(self) -> None:
        self._stop_by = time.monotonic() + DRAIN_TIMEOUT
        self.stopping.set()

    def _time_left(self) -> float:
        """Seconds left to drain: the whole budget until stop() is called."""
        if not self.stopping.is_set():
            return DRAIN_TIMEOUT
        return max(0.5, self._stop_by - time.monotonic())

    def _out_of_time(self) -> bool:
        """Stopping, and the drain budget is spent."""
        return self.stopping.is_set() and time.monotonic() > self._stop_by

    def clock(self) -> int:
        """Now as scores see it (worker/state/clock.py)."""
        return scoring_now(self.settings, self.store.clock, self.now_ms)

    def run(self) -> None:
        self.consumer.subscribe(
            [self.settings.orders_topic],
            on_assign=self.checkpoint.on_assign,
            on_revoke=self.checkpoint.on_revoke,
            on_lost=self.checkpoint.on_lost,
        )
        logger.info(
            "consuming %s as group %s", self.settings.orders_topic, self.settings.kafka_group
        )
        try:
            while not self.stopping.is_set():
                self.health.beat()
                messages = self.consumer.consume(BATCH_SIZE, POLL_TIMEOUT)
                try:
                    if messages:
                        self.process(messages)
                    if not self.paused and self.health.joined:  # see _first_join
                        failures = self.retry_redis.failures
                        swept = self.retry_redis(
                            lambda: self.sweeper.tick(self.checkpoint.assigned)
                        )
                        self._publish(swept, self.checkpoint.assigned, failures)
                        self.retry_redis(self.roster.tick)
                    self.checkpoint.tick()  # offsets of the batches since the last record
                except StateLostError as exc:
                    self.checkpoint.replay_lost(exc)
                self.retry_redis(self.relay.settle)
                self._bound_backlog()
                self.health.check_kafka()
                self.checkpoint.report_lag()
                self.checkpoint.check_topic()
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
        self.checkpoint.commit_processed()
        with contextlib.suppress(*REDIS_ERRORS):  # else it ages out of rfm:members
            self.roster.leave()
        self.consumer.close()
        metrics.READY.set(0)

    def _drain(self) -> bool:
        try:
            return self.relay.drain(self._time_left())
        except REDIS_ERRORS as exc:  # acknowledged entries stay; relayed again later
            logger.warning("could not trim the outbox: %s", exc)
            return False

    # -- one batch ----------------------------------------------------------------------

    def process(self, messages: Sequence[KafkaMessage]) -> None:
        started = time.perf_counter()
        now = self.now_ms()
        valid: list[tuple[ValidEvent, int]] = []
        sources: list[KafkaMessage] = []  # the message of each valid event, to dead-letter it
        next_offsets: dict[int, int] = {}  # partition -> offset after its last message
        for msg in messages:
            err = msg.error()
            if err:
                self._log_consume_error(err)
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None  # set on a record without error
            next_offsets[partition] = offset + 1
            outcome = validate(msg.value(), self.profiles, now)
            if isinstance(outcome, Rejection):
                self.dead_letters.send(msg, outcome)
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
                as_of = self.retry_redis(lambda: self.store.clock.advance(newest))
            failures = self.retry_redis.failures
            result = self.retry_redis(
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
                    self.dead_letters.internal_error(source[id(event)], exc)
        self.dead_letters.await_acks()
        self.checkpoint.commit(offsets)
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
                self.health.topic_problem(self.settings.actions_topic) or "not acknowledged",
            )
        elif self.paused and backlog <= self.max_backlog // 2:
            self.paused = False
            self.consumer.resume(self.consumer.assignment())
            logger.info("the actions topic accepts changes again: consumption resumed")

    def _publish(self, committed: list[Committed], partitions: set[int], failures: int) -> None:
        """Publish what a commit call returned. If the call had to be retried, a lost reply
        may hide a commit that did run (the retry then found its events applied): publish
        those partitions' outboxes now, in order, rather than at the next assignment."""
        if self.retry_redis.failures == failures:
            self.relay.publish(committed)
            return
        self.retry_redis(lambda: self.relay.recover(partitions))

    def _log_consume_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        logger.warning("consumer error: %s", err)
