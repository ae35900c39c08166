"""Records sent with acknowledgements: what the relay and the dead-letter path share.

A `Deliveries` produces records to one topic, counts those in flight, hands back a token
for each one the broker acknowledged, and produces again (after a pause) those it refused,
remembering why, so that a topic that keeps refusing is visible rather than retried in
silence. The caller decides what an acknowledgement means (trim the outbox, let an offset
be committed). A record too large for the topic can be shrunk once by a caller-supplied
function (the dead-letter path drops the value) instead of failing forever.

`ordered=True` (the relay) keeps at most one record per Kafka key in flight: the next
record of a key is produced only once the previous one is acknowledged, so a record that
failed and is retried is never overtaken by a later one of the same key (the same
customer), whatever the producer does with a failed batch.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError, KafkaException

from worker import metrics
from worker.kafka.clients import produce
from worker.kafka.records import HeaderValue
from worker.pacing import BROKER_REFUSED

logger = logging.getLogger(__name__)

T = TypeVar("T")
Headers = list[tuple[str, HeaderValue]]
Record = tuple[bytes | None, bytes | None, Headers | None]


class Deliveries(Generic[T]):
    def __init__(
        self,
        producer: Any,
        topic: str,
        shrink: Callable[[Record], Record] | None = None,
        *,
        ordered: bool = False,
    ) -> None:
        self._producer, self.topic, self._shrink = producer, topic, shrink
        self.in_flight = 0
        self.error: str | None = None  # why the last delivery failed; None once one succeeds
        self._acked: list[T] = []
        self._failed: list[tuple[Record, T]] = []
        self._retry_at = 0.0
        # ordered: key -> records waiting for that key's record in flight to be acknowledged
        # (None while nothing waits: most keys never have a second record in flight)
        self._waiting: dict[bytes | None, deque[tuple[Record, T]] | None] | None = (
            {} if ordered else None
        )

    def send(
        self, key: bytes | None, value: bytes | None, token: T, headers: Headers | None = None
    ) -> None:
        record = (key, value, headers)
        if self._waiting is not None:
            if key in self._waiting:  # one of this key is in flight: wait behind it
                queue = self._waiting[key]
                if queue is None:
                    queue = self._waiting[key] = deque()
                queue.append((record, token))
                return
            self._waiting[key] = None
        self._send(record, token, shrunk=False)

    def _next_of(self, key: bytes | None) -> None:
        """The key's record in flight was acknowledged: send its next one, if any."""
        assert self._waiting is not None
        queue = self._waiting.get(key)
        if queue:
            record, token = queue.popleft()
            self._send(record, token, shrunk=False)
        else:
            self._waiting.pop(key, None)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged: in flight, to be retried, or waiting their turn."""
        return self.in_flight + len(self._failed) + self.waiting

    @property
    def waiting(self) -> int:
        """Records held back behind an unacknowledged one of the same key."""
        return sum(len(q) for q in self._waiting.values() if q) if self._waiting else 0

    def _send(self, record: Record, token: T, *, shrunk: bool) -> None:
        key, value, headers = record

        def delivered(err: Any, _msg: Any) -> None:
            self.in_flight -= 1
            if err is None:
                self._acked.append(token)
                self.error = None
                if self._waiting is not None:
                    self._next_of(key)
            else:
                self._refused(record, token, shrunk, err)

        try:
            produce(
                self._producer,
                self.topic,
                key=key,
                value=value,
                on_delivery=delivered,
                headers=headers,
            )
        except KafkaException as exc:  # refused before it left (too large, unknown topic)
            self._refused(record, token, shrunk, exc.args[0])
            return
        self.in_flight += 1

    def _refused(self, record: Record, token: T, shrunk: bool, err: Any) -> None:
        if self._can_shrink(err, shrunk):
            self._send(self._shrunk(record), token, shrunk=True)
            return
        metrics.DELIVERY_ERRORS.labels(self.topic).inc()
        if self.error is None:
            logger.warning("delivery to %s failed, retrying: %s", self.topic, err)
        self.error = str(err)
        self._failed.append((record, token))
        self._retry_at = time.monotonic() + BROKER_REFUSED.first

    def _can_shrink(self, err: Any, shrunk: bool) -> bool:
        return (
            self._shrink is not None
            and not shrunk
            and isinstance(err, KafkaError)
            and err.code() == KafkaError.MSG_SIZE_TOO_LARGE
        )

    def _shrunk(self, record: Record) -> Record:
        assert self._shrink is not None
        logger.warning("a record for %s is too large for it: sent shrunk", self.topic)
        return self._shrink(record)

    def collect(self) -> list[T]:
        """The tokens acknowledged since the last call; refused records are sent again
        once the retry pause has passed. Delivery reports are served by the caller's
        `producer.poll`/`flush`."""
        if self._failed and time.monotonic() >= self._retry_at:
            failed, self._failed = self._failed, []
            for record, token in failed:
                self._send(record, token, shrunk=False)
        acked, self._acked = self._acked, []
        return acked

    @property
    def settled(self) -> bool:
        """Nothing in flight and nothing waiting to be sent again."""
        return self.in_flight == 0 and not self._failed and not self.waiting

    def forget(self) -> int:
        """Drop every record not yet acknowledged (a revoked relay: they stay in the outbox
        for the next owner); returns how many."""
        dropped = self.pending
        self._failed = []
        if self._waiting is not None:
            self._waiting = {}
        self.in_flight = 0
        return dropped
