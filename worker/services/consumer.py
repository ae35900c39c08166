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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker import collector, metrics
from worker.config import Settings
from worker.errors import StateLostError
from worker.health import Health
from worker.kafka.dead_letters import BatchAbandonedError, DeadLetters
from worker.kafka.orders import OrdersConsumer
from worker.kafka.records import KafkaMessage, partition_eof
from worker.kafka.relay import Relay
from worker.pacing import Stopping
from worker.rules.customer import MAX_ORDERS
from worker.rules.events import Rejection, ValidEvent, validate
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.checkpoint import Checkpoint, drain
from worker.services.churn_upkeep import load_fits
from worker.services.quantile_upkeep import load_cuts
from worker.services.redis_retry import REDIS_ERRORS, RedisRetry
from worker.services.roster import Roster
from worker.services.sweeper import Sweeper
from worker.state.clock import scoring_now
from worker.state.store import BatchResult, Committed, Store

logger = logging.getLogger(__name__)

BATCH_SIZE = 2000
POLL_TIMEOUT = 0.01  # a batch waits at most this to fill: the latency floor at low rates
MAX_BACKLOG = 50_000  # unacknowledged changes before consumption pauses


@dataclass(frozen=True, slots=True)
class Parts:
    """What the loop drives, built and owned by the app (worker/app.py)."""

    store: Store
    orders: OrdersConsumer
    relay: Relay
    dead_letters: DeadLetters
    checkpoint: Checkpoint
    sweeper: Sweeper
    roster: Roster
    health: Health
    retry_redis: RedisRetry
    stopping: Stopping


class Worker:
    """The loop of `rfm-worker run` over the parts the app built."""

    def __init__(
        self,
        settings: Settings,
        profiles: Profiles,
        parts: Parts,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self.store = parts.store
        self.orders = parts.orders
        self.relay = parts.relay
        self.dead_letters = parts.dead_letters
        self.checkpoint = parts.checkpoint
        self.sweeper = parts.sweeper
        self.roster = parts.roster
        self.health = parts.health
        self.retry_redis = parts.retry_redis
        self.stopping = parts.stopping
        self.now_ms = now_ms
        self.max_backlog = MAX_BACKLOG
        self._shared = False  # the first assignment's upkeep is done (see _first_join)

    @property
    def paused(self) -> bool:
        """Consumption is paused: the actions topic does not take changes fast enough."""
        return self.orders.paused

    # -- lifecycle ----------------------------------------------------------------------

    def _first_join(self) -> None:
        """Shared state is written by working members of the group only: a worker that
        cannot reach Kafka, or is misconfigured, never joins and never writes (nor sweeps,
        nor runs the marking pass, see `run`). After the first assignment, before the
        first batch: the cut points of quantile profiles that have none yet (so a base
        switched to quantile mode moves once, to its quintiles), the first fit of churn
        models that have none, and the start of flow recording."""
        self._shared = True
        now = self.clock()
        self.retry_redis(lambda: load_cuts(self.store, self.profiles, compute_missing_at=now))
        self.retry_redis(lambda: load_fits(self.store, self.profiles, compute_missing_at=now))
        self.retry_redis(lambda: self.store.flows.start_recording(now))

    def stop(self) -> None:
        self.stopping.set()

    def clock(self) -> int:
        """Now as scores see it (worker/state/clock.py)."""
        return scoring_now(self.settings, self.store.clock, self.now_ms)

    def run(self) -> None:
        self.orders.subscribe(self.checkpoint)
        logger.info(
            "consuming %s as group %s", self.settings.orders_topic, self.settings.kafka_group
        )
        try:
            while not self.stopping.is_set():
                self._turn()
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

    def _turn(self) -> None:
        """One turn of the loop: a batch, the chores of the owned partitions, the relay."""
        self.health.beat()
        messages = self.orders.consume(BATCH_SIZE, POLL_TIMEOUT)
        try:
            if self.health.is_joined and not self._shared:
                self._first_join()
            if messages:
                self.process(messages)
            if not self.paused and self.health.is_joined:  # see _first_join
                swept, retried = self.retry_redis.attempts(
                    lambda: self.sweeper.tick(self.checkpoint.assigned)
                )
                self._publish(swept, self.checkpoint.assigned, retried)
                self.retry_redis(self.roster.tick)
            self.checkpoint.tick()  # offsets of the batches since the last record
        except StateLostError as exc:
            self.checkpoint.replay_lost(exc)
        self.retry_redis(self.relay.settle)
        self._bound_backlog()
        self.orders.watch.check()
        self.checkpoint.report_lag()
        self.checkpoint.check_topic()

    def _shutdown(self) -> None:
        logger.info("draining: relaying the last changes and closing")
        if not drain(self.relay, self.stopping):
            logger.warning(
                "some changes were not acknowledged in time; they stay in the "
                "outbox and are relayed at the next start"
            )
        self.checkpoint.commit_processed()
        with contextlib.suppress(*REDIS_ERRORS):  # else it ages out of rfm:members
            self.roster.leave()
        self.orders.close()
        self.health.stopped()

    # -- one batch ----------------------------------------------------------------------

    def process(self, messages: Sequence[KafkaMessage]) -> None:
        started = time.perf_counter()
        with collector.paused():  # the batch's work, its objects freed as it returns
            next_offsets = self._apply_batch(messages)
        self.dead_letters.await_acks()
        self.checkpoint.commit(next_offsets)
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)

    def _apply_batch(self, messages: Sequence[KafkaMessage]) -> dict[int, int]:
        """Validate, dead-letter the rejected, apply and publish the rest; returns the
        offset after each partition's last message."""
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
            assert partition is not None and offset is not None  # a record without error
            next_offsets[partition] = offset + 1
            outcome = validate(msg.value(), self.profiles, now)
            if isinstance(outcome, Rejection):
                self.dead_letters.send(msg, outcome)
            else:
                valid.append((outcome, partition))
                sources.append(msg)
        if not valid:
            return next_offsets
        as_of = now
        if self.settings.clock == "event":
            newest = max(event.occurred_at for event, _ in valid)
            as_of = self.retry_redis(lambda: self.store.clock.advance(newest))
        result, retried = self.retry_redis.attempts(lambda: self._apply(valid, as_of, now))
        self._count(result)
        self._publish(result.committed, {p for _, p in valid}, retried)
        if result.rejected:
            source = {id(event): msg for (event, _), msg in zip(valid, sources, strict=True)}
            for event, _partition, exc in result.rejected:
                self.dead_letters.internal_error(source[id(event)], exc)
        return next_offsets

    @staticmethod
    def _count(result: BatchResult) -> None:
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

    def _apply(self, valid: list[tuple[ValidEvent, int]], as_of: int, now: int) -> BatchResult:
        """One attempt at the batch's commit."""
        return causes.apply_batch(
            self.store,
            valid,
            self.profiles,
            as_of_ms=as_of,
            now_ms=now,
            erasure_key=self.settings.erasure_secret,
        )

    def _bound_backlog(self) -> None:
        """Changes committed but not acknowledged wait in Redis (the outbox): when the
        actions topic is unavailable, pause consuming (the group membership stays) rather
        than grow Redis without limit; resume once most of them are out."""
        backlog = self.relay.backlog
        metrics.OUTBOX_SIZE.set(backlog)
        if not self.paused and backlog > self.max_backlog:
            self.orders.pause()
            logger.warning(
                "%d changes are waiting for the actions topic %s (%s): consumption paused "
                "until they are delivered",
                backlog,
                self.settings.actions_topic,
                self.orders.watch.topic_problem(self.settings.actions_topic) or "not acknowledged",
            )
        elif self.paused and backlog <= self.max_backlog // 2:
            self.orders.resume()
            logger.info("the actions topic accepts changes again: consumption resumed")

    def _publish(self, committed: list[Committed], partitions: set[int], retried: bool) -> None:
        """Publish what a commit call returned. If the call had to be retried, a lost reply
        may hide a commit that did run (the retry then found its events applied): publish
        those partitions' outboxes now, in order, rather than at the next assignment."""
        if not retried:
            self.relay.publish(committed)
            return
        self.retry_redis(lambda: self.relay.recover(partitions))

    def _log_consume_error(self, err: object) -> None:
        if not partition_eof(err):
            logger.warning("consumer error: %s", err)
