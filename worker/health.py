"""Readiness and liveness of `rfm-worker run`: what /readyz and /healthz answer
(docs/http-and-metrics.md, Readiness).

One object holds every fact readiness is made of; each part of the worker writes its own:
Kafka reachable and answering (librdkafka's error and statistics callbacks, here), Redis
answering (worker/services/redis_retry.py), dead letters acknowledged
(worker/kafka/dead_letters.py), in the consumer group (worker/services/checkpoint.py), not
stopping (worker/services/consumer.py). It sits beside worker/metrics.py, not in services/,
because the Kafka side (dead letters) writes it too.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException

from worker import metrics
from worker.config import Settings
from worker.pacing import Every

logger = logging.getLogger(__name__)

KAFKA_DOWN = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE)
# A broker that holds requests of this worker (a fetch, a heartbeat, a produce) unanswered
# for this long is hung (a frozen process, a stalled disk, a network black hole): not
# ready. A healthy broker answers a fetch within fetch.wait.max.ms (500 ms) and a
# heartbeat within its interval (3-5 s); TCP would take minutes to notice.
KAFKA_SILENT_S = 10.0
KAFKA_CHECK_S = 2.0  # while Kafka is unreachable, how often to ask it whether it is back


class Health:
    def __init__(self, settings: Settings, consumer: Consumer, stopping: threading.Event) -> None:
        self._settings = settings
        self._consumer = consumer
        self._stopping = stopping
        self.kafka_ok = True
        self.kafka_silent: list[str] = []  # brokers holding requests unanswered (stats)
        self.redis_problem: str | None = None  # why Redis does not serve the worker now
        self.dlq_ok = True
        self.joined = False  # the first assignment (possibly empty) has been received
        self.heartbeat = time.monotonic()
        self._kafka_check = Every(KAFKA_CHECK_S)

    @property
    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Why the worker is not able to work, in words (/readyz says them); empty: ready.
        A member with no partition (more workers than partitions) is ready, or a rollout
        would never complete."""
        s = self._settings
        reasons = []
        if self._stopping.is_set():
            reasons.append("stopping")
        if not self.kafka_ok:
            reasons.append(f"Kafka at {s.kafka_bootstrap} (RFM_KAFKA_BOOTSTRAP) is unreachable")
        if self.kafka_silent:
            reasons.append(
                f"Kafka broker(s) {', '.join(self.kafka_silent)} have not answered for "
                f"{KAFKA_SILENT_S:.0f} s"
            )
        if not self.joined:
            reasons.append(f"not yet a member of the consumer group {s.kafka_group}")
        if self.redis_problem is not None:
            reasons.append(self.redis_problem)
        if not self.dlq_ok:
            reasons.append(f"dead letters to {s.dlq_topic} are not acknowledged")
        return reasons

    def is_healthy(self) -> bool:
        """The loop is turning (a Redis outage keeps it turning: not ready, still alive)."""
        return time.monotonic() - self.heartbeat < 60

    def beat(self) -> None:
        """The loop turned (or waits on purpose: a Redis outage, a stalled DLQ topic)."""
        self.heartbeat = time.monotonic()

    def on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (served inside consume()): an unreachable cluster
        is said once, in the worker's words, and makes the worker not ready."""
        if err.code() not in KAFKA_DOWN or not self.kafka_ok:
            return
        self.kafka_ok = False
        metrics.READY.set(0)
        logger.error(
            "Kafka at %s (RFM_KAFKA_BOOTSTRAP) is unreachable (%s): not ready until it answers",
            self._settings.kafka_bootstrap,
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

    def check_kafka(self) -> None:
        """While Kafka is unreachable, ask it for metadata now and then: back when it answers."""
        if self.kafka_ok or not self._kafka_check.due():
            return
        try:
            self._consumer.list_topics(self._settings.orders_topic, timeout=1)
        except KafkaException:
            return
        self.kafka_ok = True
        logger.info("Kafka at %s answers again", self._settings.kafka_bootstrap)

    def topic_problem(self, topic: str) -> str | None:
        """What the broker's metadata says is wrong with an output topic, if anything: a
        missing topic is the common case (brokers in production do not auto-create)."""
        try:
            meta = self._consumer.list_topics(topic, timeout=2).topics.get(topic)
        except KafkaException:
            return None
        if meta is None or meta.error is None:
            return None
        if meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return f"the topic {topic} does not exist: create it"
        return f"topic {topic}: {meta.error.str()}"
