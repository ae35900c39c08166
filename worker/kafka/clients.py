"""Kafka clients built from the settings, with the properties the design needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AdminClient

__all__ = ["AdminClient", "Consumer", "Producer"]  # the client types, for the app's wiring

from worker.config import Settings

# librdkafka's own log lines go through the worker's logging (JSON, levels), and a line
# repeated within a minute (a broker that stays unreachable) is shown once.
RDKAFKA = logging.getLogger("worker.rdkafka")

# How long a command (`sweep --once`, `rebuild`) waits for the broker's metadata before it
# says that Kafka is unavailable.
METADATA_TIMEOUT_S = 10.0

# RFM_KAFKA_CONFIG applies to every client; these only mean something to one kind, and
# librdkafka warns at every start when the other kind is given them.
CONSUMER_ONLY = frozenset(
    {
        "group.id", "group.instance.id", "group.protocol", "group.remote.assignor",
        "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms",
        "partition.assignment.strategy", "auto.offset.reset", "enable.auto.commit",
        "auto.commit.interval.ms", "enable.auto.offset.store", "enable.partition.eof",
        "fetch.wait.max.ms", "fetch.min.bytes", "fetch.max.bytes", "fetch.message.max.bytes",
        "max.partition.fetch.bytes", "fetch.error.backoff.ms", "queued.min.messages",
        "queued.max.messages.kbytes", "isolation.level", "check.crcs",
        "coordinator.query.interval.ms",
    }
)  # fmt: skip
PRODUCER_ONLY = frozenset(
    {
        "acks", "request.required.acks", "enable.idempotence", "enable.gapless.guarantee",
        "linger.ms", "queue.buffering.max.ms", "queue.buffering.max.messages",
        "queue.buffering.max.kbytes", "batch.size", "batch.num.messages",
        "compression.type", "compression.codec", "compression.level", "message.timeout.ms",
        "delivery.timeout.ms", "request.timeout.ms", "retries", "message.send.max.retries",
        "max.in.flight.requests.per.connection", "max.in.flight", "transactional.id",
        "transaction.timeout.ms", "partitioner", "sticky.partitioning.linger.ms",
    }
)  # fmt: skip


STATS_INTERVAL_MS = 1000  # how often librdkafka reports its connections (readiness)

# While a backlog waits, librdkafka prefetches records until 100,000 are queued
# (queued.min.messages) or 64 MB of them (queued.max.messages.kbytes), whichever comes
# first: ~50 MB of resident memory with order events of ~175 bytes (each queued record
# costs ~0.5 KB), for nothing, since the worker takes 2,000 records at a time. 8 MB keeps
# it fed as fast and holds the peak ~30 MB lower (docs/operations.md#memory).
FETCH_QUEUE_KBYTES = 8192


class _Once(logging.Filter):
    """Drops a record whose message was already logged in the last `window` seconds."""

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self._seen: dict[str, float] = {}
        self._window = window

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        text = record.getMessage()
        if now - self._seen.get(text, -self._window) < self._window:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[text] = now
        return True


RDKAFKA.addFilter(_Once())


def _extra(settings: Settings, other_kind: frozenset[str]) -> dict[str, str]:
    return {k: v for k, v in settings.kafka_properties().items() if k not in other_kind}


def consumer_protocol(properties: Mapping[str, Any]) -> bool:
    """The group uses the consumer rebalance protocol (KIP-848: group.protocol=consumer)."""
    return str(properties.get("group.protocol", "classic")).lower() == "consumer"


def incremental(properties: Mapping[str, Any]) -> bool:
    """Rebalances hand out and take back only the partitions that move (cooperative)."""
    strategy = str(properties.get("partition.assignment.strategy", "cooperative-sticky"))
    return consumer_protocol(properties) or strategy.strip().lower() == "cooperative-sticky"


def consumer(
    settings: Settings,
    overrides: Mapping[str, str] | None = None,
    *,
    error_cb: Callable[[Any], None] | None = None,
    stats_cb: Callable[[str], None] | None = None,
) -> Consumer:
    extra = {**_extra(settings, PRODUCER_ONLY), **(overrides or {})}
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": settings.kafka_group,
        # Offsets are committed by the worker after a batch is applied and its DLQ
        # records are acked; never automatically.
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "client.id": "rfm-worker",
        "logger": RDKAFKA,
        "queued.max.messages.kbytes": FETCH_QUEUE_KBYTES,  # RFM_KAFKA_CONFIG may set it
    }
    if not consumer_protocol(extra):
        # Classic protocol: a rebalance moves only the partitions that change owner; the
        # others keep flowing. (The consumer protocol, KIP-848, is incremental by design
        # and refuses this property, as it refuses session and heartbeat timeouts.)
        config["partition.assignment.strategy"] = "cooperative-sticky"
    config.update(extra)
    if error_cb is not None:
        config["error_cb"] = error_cb
    if stats_cb is not None:  # librdkafka's statistics (JSON), served inside consume()
        config["stats_cb"] = stats_cb
        config.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
    return Consumer(config)


def producer(settings: Settings, **overrides: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            # Idempotent: retries never duplicate or reorder within a partition, so changes
            # reach the actions topic in outbox order per customer.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": "rfm-worker",
            "logger": RDKAFKA,
            **_extra(settings, CONSUMER_ONLY),
            **overrides,
        }
    )


def admin(settings: Settings) -> AdminClient:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "rfm-worker",
        "logger": RDKAFKA,
        **_extra(settings, CONSUMER_ONLY | PRODUCER_ONLY),
    }
    return AdminClient(config)


# The id of no topic: what a broker that keeps no topic ids answers.
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


def topic_id(client: AdminClient, topic: str, timeout: float = METADATA_TIMEOUT_S) -> str | None:
    """Kafka's id of the topic's current incarnation: it changes when the topic is deleted
    and created again under the same name. None when the broker does not say (the topic
    is missing, the user may not Describe it, or the broker keeps no ids)."""
    try:
        future = client.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
        found = str(future.result().topic_id or "")
    except KafkaException:
        return None
    return found if found and found != _NO_TOPIC_ID else None


def produce(
    producer: Producer,
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    on_delivery: Callable[[Any, Any], None] | None = None,
    headers: list[tuple[str, Any]] | None = None,
    partition: int = -1,  # -1: the producer's partitioner picks it (by key)
) -> None:
    """Produce, waiting out a full local queue by serving delivery reports meanwhile.
    Named parameters rather than **kwargs: the relay calls it for every change."""
    while True:
        try:
            producer.produce(
                topic,
                key=key,
                value=value,
                partition=partition,
                on_delivery=on_delivery,
                headers=headers,
            )
            return
        except BufferError:
            producer.poll(0.05)


def plain_producer(bootstrap: str) -> Producer:
    """An idempotent producer of a broker named directly, without the settings (the demo's
    order stream)."""
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})


def plain_consumer(bootstrap: str, group: str) -> Consumer:
    """A consumer of a broker named directly, without the settings, that commits nothing
    (the demo's tail, assigned its partitions: no group join to wait for)."""
    return Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
