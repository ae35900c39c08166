"""The outbox relay: publishes committed changes to the actions topic, at least once.

A change is first written to its outbox stream in the same atomic call as the state it
comes from (worker/store.py). The relay produces it with the idempotent producer and
deletes the entry only after the broker acknowledged it. After a crash, whatever is left in
the outbox of a partition is published again, with the same change_id, before any new
event of that partition is processed (`recover`, called on assignment).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from worker import metrics
from worker.clients import produce
from worker.store import Committed, Store

logger = logging.getLogger(__name__)


class Relay:
    def __init__(self, store: Store, producer: Any, topic: str) -> None:
        self._store = store
        self._producer = producer
        self._topic = topic
        self._acked: dict[bytes, list[bytes]] = defaultdict(list)
        self._failed: list[tuple[bytes, bytes, bytes, bytes]] = []
        self.in_flight = 0

    def publish(self, committed: Iterable[Committed]) -> None:
        for c in committed:
            self._produce(c.outbox, c.entry_id, c.key, c.value)
            if c.change.kind == "rfm.overdue":
                metrics.OVERDUE.inc()
                continue
            metrics.CHANGES.labels(c.change.cause).inc()
            metrics.TRANSITIONS.labels(
                c.change.from_segment or "none", c.change.to_segment or "none"
            ).inc()

    def recover(self, partitions: Iterable[int]) -> int:
        """Publish every change left in the outboxes of these partitions (oldest first)."""
        count = 0
        for partition in partitions:
            for stream, entry_id, key, value in self._store.outbox_entries(partition):
                self._produce(stream, entry_id, key, value)
                count += 1
        if count:
            logger.info("relaying %d change(s) left in the outbox", count)
        return count

    def _produce(self, stream: bytes, entry_id: bytes, key: bytes, value: bytes) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            self.in_flight -= 1
            if err is None:
                self._acked[stream].append(entry_id)
            else:
                metrics.DELIVERY_ERRORS.labels(self._topic).inc()
                logger.warning("change %s not delivered, will retry: %s", entry_id, err)
                self._failed.append((stream, entry_id, key, value))

        produce(self._producer, self._topic, value=value, key=key, on_delivery=delivered)
        self.in_flight += 1

    def settle(self) -> None:
        """Serve delivery reports, trim acknowledged entries, re-produce failed ones."""
        self._producer.poll(0)
        if self._acked:
            self._store.delete_outbox(self._acked)  # if Redis fails, kept for the next try
            self._acked = defaultdict(list)
        if self._failed:
            failed, self._failed = self._failed, []
            for entry in failed:
                self._produce(*entry)
        metrics.OUTBOX_IN_FLIGHT.set(self.in_flight)

    def drain(self, timeout: float) -> bool:
        """Wait until every produced change is acknowledged and trimmed (on revoke, stop)."""
        remaining = self._producer.flush(timeout)
        self.settle()
        return remaining == 0 and not self._failed and self.in_flight == 0
