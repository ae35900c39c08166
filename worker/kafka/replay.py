"""Reading a topic at offsets of our choosing, not the group's: the rebuild's replay (from
its start or where the state is, to each partition's end) and the demo's tail of the
actions topic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def assign_from_start(consumer: Consumer, topic: str, partitions: Iterable[int]) -> None:
    """Read these partitions of `topic` from their first offset, whatever the group
    committed."""
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])


def assign_at(consumer: Consumer, topic: str, starts: Mapping[int, int]) -> None:
    """Read each partition of `starts` from its offset (0: from its first offset, whatever
    the retention left)."""
    consumer.assign(
        [TopicPartition(topic, p, at if at > 0 else OFFSET_BEGINNING) for p, at in starts.items()]
    )


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int], timeout: float = 10.0
) -> dict[int, tuple[int, int]]:
    """(first offset, end offset) of each partition, as the broker reports them: for an
    estimate only (some Kafka-protocol brokers report the end loosely)."""
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        for p in partitions
    }


def at_partition_end(error: Any) -> bool:
    """A message's error that only says its partition has no more records for now (with
    enable.partition.eof)."""
    return bool(error.code() == KafkaError._PARTITION_EOF)


def commit_offsets(consumer: Consumer, topic: str, offsets: Mapping[int, int]) -> None:
    """Commit the next offset of each partition for the consumer's group, and wait for it;
    a partition at 0 (nothing read) is left alone. Raises KafkaException when the group
    refuses (a member still in it)."""
    consumer.commit(
        offsets=[TopicPartition(topic, p, end) for p, end in offsets.items() if end > 0],
        asynchronous=False,
    )
