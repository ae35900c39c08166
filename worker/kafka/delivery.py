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
customer), whatever the producer does with a failed batch. One record per key also lets a
delivery report find its record by the message's key: every record shares one callback,
no closure per record (the relay produces one per change published). A record shrunk
there keeps its key.
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
Key = bytes | None
Record = tuple[Key, bytes | None, Headers | None]


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
        self._ordered = ordered
        self.in_flight = 0
        self.error: str | None = None  # why the last delivery failed; None once one succeeds
        self._acked: list[T] = []
        self._failed: list[tuple[Record, T]] = []
        self._retry_at = 0.0
        # ordered: key -> its record produced and not yet acknowledged (in flight, or refused
        # and to be sent again): (value, headers, token, shrunk). A delivery report finds
        # it by the message's key: one callback (`_report`) for every record.
        self._flight: dict[Key, tuple[bytes | None, Headers | None, T, bool]] = {}
        # ordered: key -> the records waiting for that key's record to be acknowledged
        # (only keys that have some: most never have a second record in flight)
        self._queued: dict[Key, deque[tuple[Record, T]]] = {}
        self._report = self._reporter()

    def send(
        self, key: bytes | None, value: bytes | None, token: T, headers: Headers | None = None
    ) -> None:
        if not self._ordered:
            self._send((key, value, headers), token, shrunk=False)
        elif key in self._flight:  # one of this key is not acknowledged yet: wait behind it
            queue = self._queued.get(key)
            if queue is None:
                queue = self._queued[key] = deque()
            queue.append(((key, value, headers), token))
        else:
            self._send_ordered(key, value, headers, token, False)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged: in flight, to be retried, or waiting their turn."""
        return self.in_flight + len(self._failed) + self.waiting

    @property
    def waiting(self) -> int:
        """Records held back behind an unacknowledged one of the same key."""
        return sum(map(len, self._queued.values()))

    def _send(self, record: Record, token: T, *, shrunk: bool) -> None:
        if self._ordered:
            self._send_ordered(*record, token, shrunk)
            return

        def delivered(err: Any, _msg: Any) -> None:
            self.in_flight -= 1
            if err is None:
                self._acked.append(token)
                self.error = None
            else:
                self._refused(record, token, shrunk, err)

        self._produce(record, token, shrunk, delivered)

    def _send_ordered(
        self, key: Key, value: bytes | None, headers: Headers | None, token: T, shrunk: bool
    ) -> None:
        self._flight[key] = (value, headers, token, shrunk)
        try:  # the producer's own call (no wrapper): this runs for every change published
            self._producer.produce(
                self.topic, key=key, value=value, on_delivery=self._report, headers=headers
            )
        except BufferError:  # the local queue is full: wait for room
            self._produce((key, value, headers), token, shrunk, self._report)
            return
        except KafkaException as exc:  # refused before it left (too large, unknown topic)
            self._refused((key, value, headers), token, shrunk, exc.args[0])
            return
        self.in_flight += 1

    def _reporter(self) -> Callable[[Any, Any], None]:
        """The delivery callback of the ordered records produced from now until `forget`."""
        flight = self._flight

        def report(err: Any, msg: Any) -> None:
            if flight is not self._flight:  # forgotten since: a purged record reported late
                return
            self.in_flight -= 1
            key = msg.key()
            if err is not None:
                value, headers, token, shrunk = flight[key]  # the key stays taken until acked
                self._refused((key, value, headers), token, shrunk, err)
                return
            self._acked.append(flight.pop(key)[2])
            self.error = None
            if self._queued and (queue := self._queued.get(key)):  # the key's next record
                (_, value, headers), token = queue.popleft()
                if not queue:
                    del self._queued[key]
                self._send_ordered(key, value, headers, token, False)

        return report

    def _produce(
        self, record: Record, token: T, shrunk: bool, on_delivery: Callable[[Any, Any], None]
    ) -> None:
        key, value, headers = record
        try:  # waits out a full local queue, serving delivery reports meanwhile
            produce(
                self._producer,
                self.topic,
                key=key,
                value=value,
                on_delivery=on_delivery,
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
        shrunk = self._shrink(record)
        # ordered: the key is what orders the records (and finds the record of a report)
        return (record[0], *shrunk[1:]) if self._ordered else shrunk

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
        return self.in_flight == 0 and not self._failed and not self._queued

    def forget(self) -> int:
        """Drop every record not yet acknowledged (a revoked relay: they stay in the outbox
        for the next owner); returns how many."""
        dropped = self.pending
        self._failed = []
        self._flight, self._queued = {}, {}
        self._report = self._reporter()  # reports of the dropped records are ignored
        self.in_flight = 0
        return dropped
