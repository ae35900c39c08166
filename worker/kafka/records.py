"""A consumed Kafka record as the worker reads it (the consumer loop, dead letters).

`confluent_kafka.Message` satisfies `KafkaMessage`, and so does a test's fake with these
methods. The return types are the client's own: topic, partition and offset are set on
every record consumed without error, None only on an error event.
"""

from __future__ import annotations

from typing import Protocol

from confluent_kafka import KafkaError

HeaderValue = str | bytes | None
# A consumed record carries a list of (name, bytes | None); the client's type also allows
# the dict form it accepts when producing.
ClientHeaders = list[tuple[str, HeaderValue]] | dict[str, HeaderValue]


class KafkaMessage(Protocol):
    """The methods of confluent_kafka.Message that the worker calls."""

    def error(self) -> KafkaError | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> ClientHeaders | None: ...


def partition_eof(err: object) -> bool:
    """A consume error that is only the end of a partition (enable.partition.eof)."""
    return isinstance(err, KafkaError) and err.code() == KafkaError._PARTITION_EOF
