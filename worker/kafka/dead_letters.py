"""Dead letters: rejected records go to the DLQ topic with their key, value and headers,
plus the reason (docs/records-and-triggers.md, Dead letters); a batch's offsets are done
only once its copies are acknowledged (docs/architecture.md, Guarantees).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Producer

from worker import metrics
from worker.errors import RfmError
from worker.health import Health
from worker.kafka.delivery import Deliveries, Headers, Record
from worker.kafka.records import KafkaMessage
from worker.kafka.watch import KafkaWatch
from worker.pacing import Stopping
from worker.rules.erasure import NoErasureKeyError
from worker.rules.events import Rejection

logger = logging.getLogger(__name__)

OWN = ("rfm.error.", "rfm.source.")  # the header names this worker writes on a dead letter
MAX_KEPT_KEY = 4096
DLQ_STALL = 5.0  # seconds of unacknowledged dead letters before the worker says so


class BatchAbandonedError(RfmError):
    """Stopping before the batch in hand could be completed; it is consumed again later."""


def dlq_headers(message: KafkaMessage, rejection: Rejection) -> Headers:
    """Original headers, then rfm.error.* and rfm.source.* (docs/records-and-triggers.md).

    Original headers are kept as they are (a null header stays null: Kafka tells a null
    value from an empty one), except any that use this worker's own names: a reader of
    `rfm.error.class` must get the worker's, not one the producer made up.
    """
    original = message.headers() or []
    # A consumed record's headers are (name, value) pairs; the client's type allows a dict.
    pairs = original.items() if isinstance(original, dict) else original
    headers: Headers = [(k, v) for k, v in pairs if not k.startswith(OWN)]
    headers += [
        ("rfm.error.class", rejection.error_class.encode()),
        ("rfm.error.reason", rejection.reason.encode()),
        ("rfm.source.topic", str(message.topic()).encode()),
        ("rfm.source.partition", str(message.partition()).encode()),
        ("rfm.source.offset", str(message.offset()).encode()),
    ]
    return headers


def without_value(record: Record) -> Record:
    """A dead-letter copy too large for the DLQ topic: sent without its value (and without
    the original headers, or a huge key), saying so; the rfm.* headers locate the source."""
    key, value, headers = record
    kept = [(k, v) for k, v in headers or [] if k.startswith(OWN)]
    kept.append(
        (
            "rfm.error.value_dropped",
            f"the original value ({len(value or b'')} bytes) made this copy too large for "
            "the dead-letter topic; read it at the source offset".encode(),
        )
    )
    return (key if key is not None and len(key) <= MAX_KEPT_KEY else None), None, kept


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


class DeadLetters:
    """The DLQ topic of the consumer loop: `send` a rejected record, then `await_acks`
    before the batch's offsets count as done.

    Once the stop's drain budget is spent, the wait gives up (BatchAbandonedError) and the
    batch is consumed again after the restart.
    """

    def __init__(
        self, producer: Producer, topic: str, health: Health, stopping: Stopping, watch: KafkaWatch
    ) -> None:
        self.topic = topic
        self._producer = producer
        self._health = health
        self._stopping = stopping
        self._watch = watch
        self._deliveries: Deliveries[None] = Deliveries(producer, topic, shrink=without_value)
        self._log_budget = LogBudget(logger, "record(s) dead-lettered")

    def send(self, msg: KafkaMessage, rejection: Rejection) -> None:
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
        self._deliveries.send(msg.key(), msg.value(), None, dlq_headers(msg, rejection))

    def internal_error(self, msg: KafkaMessage, exc: Exception) -> None:
        """An event that passed validation but raised while applied: a bug costs it alone.
        An erasure without RFM_ERASURE_KEY is refused with its own class and reason."""
        if isinstance(exc, NoErasureKeyError):
            logger.warning("%s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            self.send(msg, Rejection("erasure_refused", str(exc)))
            return
        logger.error(
            "event at %s[%d]@%d raised while applied; dead-lettered as internal_error",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            exc_info=exc,
        )
        reason = f"applying the event raised {type(exc).__name__}: {exc}"
        self.send(msg, Rejection("internal_error", " ".join(reason.split())[:500]))

    def await_acks(self) -> None:
        """A record's offset is done only after its DLQ copy is acked: wait, retry failures.

        A DLQ topic that refuses copies (missing, not authorised) stalls the partitions
        here, never skips a record: not ready, a metric, and the reason in the log.
        """
        started = time.monotonic()
        while not self._deliveries.settled:
            now = time.monotonic()
            if self._stopping.out_of_time():
                raise BatchAbandonedError("dead letters unacknowledged at the drain timeout")
            if self._health.dlq_ok and now - started > DLQ_STALL:
                self._health.dead_letters_acknowledged(False)
                metrics.DLQ_BLOCKED.set(1)
                logger.error(
                    "dead letters to %s not acknowledged for %.0f s (%s): consumption is "
                    "stalled until the topic accepts them (check that it exists and that "
                    "this worker may write to it); nothing is skipped",
                    self.topic,
                    now - started,
                    self._stall_reason(),
                )
            self._health.beat()
            self._producer.poll(0.05)
            self._deliveries.collect()
        if not self._health.dlq_ok:
            logger.info("dead letters to %s are acknowledged again", self.topic)
            self._health.dead_letters_acknowledged(True)
            metrics.DLQ_BLOCKED.set(0)

    def _stall_reason(self) -> str:
        """Why copies are not acknowledged: the last delivery error (worded by the broker or
        by the client, whichever reported first) and what the topic's metadata says is
        wrong with it (a missing topic: create it), each when there is one."""
        reasons = [self._deliveries.error, self._watch.topic_problem(self.topic)]
        return "; ".join(r for r in reasons if r) or "no answer from the broker"
