"""The orders topic as the worker consumes it: one consumer-group member, in partitions
and offsets (plain ints), so that the code deciding where partitions start and what is
committed (worker/services/checkpoint.py) deals in no client type.

Rebalances reach a `Rebalance` listener, inside consume(), between batches: `on_assign`
says where each new partition starts (or None: take nothing, the worker is closing),
then the partitions are assigned (paused when consumption is paused), then `on_assigned`;
`on_revoke` and `on_lost` when they go.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from worker.config import Settings
from worker.health import Health
from worker.kafka import clients
from worker.kafka.records import KafkaMessage
from worker.kafka.watch import KafkaWatch

FROM_START = OFFSET_BEGINNING  # a partition's start offset: the first record it holds
NO_OFFSET = OFFSET_INVALID  # no committed offset, no position yet
TOPIC_ID_TIMEOUT_S = 2.0  # a running worker's question whether its topic was recreated


class Rebalance(Protocol):
    def on_assign(self, partitions: list[int]) -> dict[int, int] | None: ...
    def on_assigned(self, partitions: set[int]) -> None: ...
    def on_revoke(self, partitions: set[int]) -> None: ...
    def on_lost(self, partitions: set[int]) -> None: ...


class OrdersConsumer:
    """The consumer of RFM_ORDERS_TOPIC in RFM_KAFKA_GROUP. `paused` is the backpressure
    state (`pause`, `resume`): partitions assigned while paused start paused."""

    def __init__(
        self,
        settings: Settings,
        health: Health,
        *,
        consumer: Consumer | None = None,
        admin: AdminClient | None = None,
    ) -> None:
        self.topic = settings.orders_topic
        self.watch = KafkaWatch(settings, health)
        self._consumer = consumer or clients.consumer(
            settings, error_cb=self.watch.on_error, stats_cb=self.watch.on_stats
        )
        self.watch.attach(self._consumer)
        self._admin = admin
        # Cooperative rebalances (the default) add and take back partitions one by one.
        self.incremental = clients.incremental(settings.kafka_properties())
        self.paused = False

    def subscribe(self, listener: Rebalance) -> None:
        def on_assign(consumer: Any, tps: list[TopicPartition]) -> None:
            starts = listener.on_assign([tp.partition for tp in tps])
            if starts is None:
                return
            offsets = [self._tp(tp.partition, starts.get(tp.partition, NO_OFFSET)) for tp in tps]
            if self.incremental:
                consumer.incremental_assign(offsets)
            else:
                consumer.assign(offsets)
            if self.paused:
                consumer.pause(offsets)
            listener.on_assigned({tp.partition for tp in tps})

        self._consumer.subscribe(
            [self.topic],
            on_assign=on_assign,
            on_revoke=lambda _c, tps: listener.on_revoke({tp.partition for tp in tps}),
            on_lost=lambda _c, tps: listener.on_lost({tp.partition for tp in tps}),
        )

    def consume(self, count: int, timeout: float) -> Sequence[KafkaMessage]:
        return self._consumer.consume(count, timeout)

    def committed(self, partitions: Iterable[int], timeout: float) -> dict[int, int]:
        """The group's committed offset of each partition (NO_OFFSET: none)."""
        tps = [self._tp(p) for p in partitions]
        return {tp.partition: tp.offset for tp in self._consumer.committed(tps, timeout=timeout)}

    def watermarks(self, partition: int, timeout: float) -> tuple[int, int]:
        """(low, high): the partition's first offset and the offset after its last record,
        asked of the broker."""
        low, high = self._consumer.get_watermark_offsets(self._tp(partition), timeout=timeout)
        return low, high

    def lag_offsets(self, partition: int) -> tuple[int, int, int]:
        """(low, high, position) for the lag. The end offset comes with each fetch: a paused
        partition fetches nothing, so the broker is asked then, or the lag would stay
        where it paused."""
        tp = self._tp(partition)
        if self.paused:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=1)
        else:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
        return low, high, self._consumer.position([tp])[0].offset

    def seek(self, partition: int, offset: int) -> None:
        self._consumer.seek(self._tp(partition, offset))

    def commit(self, offsets: Mapping[int, int], *, asynchronous: bool) -> None:
        tps = [self._tp(p, o) for p, o in offsets.items()]
        if asynchronous:
            self._consumer.commit(offsets=tps, asynchronous=True)
        else:
            self._consumer.commit(offsets=tps, asynchronous=False)

    def pause(self) -> None:
        self.paused = True
        self._consumer.pause(self._consumer.assignment())

    def resume(self) -> None:
        self.paused = False
        self._consumer.resume(self._consumer.assignment())

    def topic_id(self) -> str | None:
        """Kafka's id of the topic's incarnation now (None: not known, see clients.topic_id)."""
        if self._admin is None:
            return None
        return clients.topic_id(self._admin, self.topic, TOPIC_ID_TIMEOUT_S)

    def close(self) -> None:
        self._consumer.close()

    def _tp(self, partition: int, offset: int = NO_OFFSET) -> TopicPartition:
        return TopicPartition(self.topic, partition, offset)
