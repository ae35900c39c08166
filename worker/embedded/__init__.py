"""Services the project starts itself, on free loopback ports, for the demo, the tests and
the benchmark: Redis, Tansu (a Kafka-protocol broker in memory, the quick demo's) and
Apache Kafka (fetched with Maven, see apache_kafka/)."""

from __future__ import annotations

from typing import Any, Literal

from worker.embedded.local import EmbeddedRedis, Tansu, create_topics
from worker.embedded.processes import die_with_parent, free_port, wait_for_port

__all__ = [
    "BrokerKind",
    "EmbeddedRedis",
    "Tansu",
    "create_topics",
    "die_with_parent",
    "free_port",
    "start_broker",
    "wait_for_port",
]

BrokerKind = Literal["tansu", "kafka"]


def start_broker(kind: BrokerKind) -> Any:
    """A started broker of that kind (Tansu, or Apache Kafka from worker/embedded/apache_kafka)."""
    if kind == "kafka":
        from worker.embedded.apache_kafka import ApacheKafka

        return ApacheKafka()
    return Tansu()
