"""Reading a topic from its start at offsets of our choosing, not the group's: the rebuild's
replay (to each partition's end) and the demo's tail of the actions topic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def assign_from_start(consumer: Consumer, topic: str, partitions: Iterable[int]) -> None:
    """Read these partitions of `topic` from their first offset, whatever the group
    committed."""
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])


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
