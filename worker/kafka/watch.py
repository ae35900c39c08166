"""What librdkafka says of the cluster, reported to the worker's health (worker/health.py):
an unreachable cluster (the error callback), a hung broker (the statistics callback), and,
while unreachable, a metadata request now and then to see it back. Also what the broker's
metadata says is wrong with a topic the worker writes to, for its log lines."""

from __future__ import annotations

import logging

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException

from worker.config import Settings
from worker.health import KAFKA_SILENT_S, Health
from worker.pacing import Every

logger = logging.getLogger(__name__)

KAFKA_DOWN = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE)
KAFKA_CHECK_S = 2.0  # while Kafka is unreachable, how often to ask it whether it is back


class KafkaWatch:
    """`on_error` and `on_stats` are the consumer's librdkafka callbacks (served inside
    consume()); `attach` gives it the consumer they belong to, for its metadata requests."""

    def __init__(self, settings: Settings, health: Health) -> None:
        self._settings = settings
        self._health = health
        self._consumer: Consumer | None = None
        self._check = Every(KAFKA_CHECK_S)

    def attach(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def on_error(self, err: KafkaError) -> None:
        """An unreachable cluster is said once, in the worker's words, and makes the worker
        not ready."""
        if err.code() not in KAFKA_DOWN or not self._health.kafka_ok:
            return
        self._health.kafka_reachable(False)
        logger.error(
            "Kafka at %s (RFM_KAFKA_BOOTSTRAP) is unreachable (%s): not ready until it answers",
            self._settings.kafka_bootstrap,
            err.str(),
        )

    def on_stats(self, stats: str) -> None:
        """Every second: a broker that has requests of ours in hand and has sent nothing
        for KAFKA_SILENT_S is hung, and the worker is not ready until it answers again."""
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
        before = self._health.silent_brokers
        if silent and not before:
            logger.error(
                "Kafka broker(s) %s have not answered for %.0f s (requests waiting): not "
                "ready until they do",
                ", ".join(silent),
                KAFKA_SILENT_S,
            )
        elif before and not silent:
            logger.info("Kafka broker(s) %s answer again", ", ".join(before))
        if tuple(silent) != before:
            self._health.brokers_silent(silent)

    def check(self) -> None:
        """While Kafka is unreachable, ask it for metadata now and then: back when it answers."""
        if self._health.kafka_ok or self._consumer is None or not self._check.due():
            return
        try:
            self._consumer.list_topics(self._settings.orders_topic, timeout=1)
        except KafkaException:
            return
        self._health.kafka_reachable(True)
        logger.info("Kafka at %s answers again", self._settings.kafka_bootstrap)

    def topic_problem(self, topic: str) -> str | None:
        """What the broker's metadata says is wrong with an output topic, if anything: a
        missing topic is the common case (brokers in production do not auto-create)."""
        if self._consumer is None:
            return None
        try:
            meta = self._consumer.list_topics(topic, timeout=2).topics.get(topic)
        except KafkaException:
            return None
        if meta is None or meta.error is None:
            return None
        if meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return f"the topic {topic} does not exist: create it"
        return f"topic {topic}: {meta.error.str()}"
