"""Kafka and Redis clients built from the settings, with the properties the design needs."""

from __future__ import annotations

from typing import Any

import redis
from confluent_kafka import Consumer, Producer

from worker.config import Settings


def consumer(settings: Settings, **overrides: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": settings.kafka_group,
            # Offsets are committed by the worker after a batch is applied and its DLQ
            # records are acked; never automatically.
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Brokers that hold a fetch until it times out (rather than answering as soon as
            # data arrives) would add up to the default 500 ms to every change's latency.
            "fetch.wait.max.ms": "20",
            "client.id": "rfm-worker",
            **settings.kafka_properties(),
            **overrides,
        }
    )


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
            **settings.kafka_properties(),
            **overrides,
        }
    )


def produce(producer: Producer, topic: str, **record: Any) -> None:
    """Produce, waiting out a full local queue by serving delivery reports meanwhile."""
    while True:
        try:
            producer.produce(topic, **record)
            return
        except BufferError:
            producer.poll(0.05)


def redis_client(settings: Settings, timeout: float = 5.0) -> Any:
    """A Redis (or Redis Cluster) client; bytes in, bytes out; hiredis parses replies."""
    url = settings.redis_url.get_secret_value()
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)
