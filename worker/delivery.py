"""Records sent with acknowledgements: what the relay and the dead-letter path share.

A `Deliveries` produces records to one topic, counts those in flight, hands back a token
for each one the broker acknowledged, and produces again those it refused. The caller
decides what an acknowledgement means (trim the outbox, let an offset be committed).
"""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

from worker import metrics
from worker.clients import produce

logger = logging.getLogger(__name__)

T = TypeVar("T")
Headers = list[tuple[str, bytes | None]]


class Deliveries(Generic[T]):
    def __init__(self, producer: Any, topic: str) -> None:
        self._producer, self.topic = producer, topic
        self.in_flight = 0
        self._acked: list[T] = []
        self._failed: list[tuple[bytes | None, bytes | None, Headers | None, T]] = []

    def send(
        self, key: bytes | None, value: bytes | None, token: T, headers: Headers | None = None
    ) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            self.in_flight -= 1
            if err is None:
                self._acked.append(token)
                return
            metrics.DELIVERY_ERRORS.labels(self.topic).inc()
            logger.warning("delivery to %s failed, will retry: %s", self.topic, err)
            self._failed.append((key, value, headers, token))

        record: dict[str, Any] = {"key": key, "value": value, "on_delivery": delivered}
        if headers is not None:
            record["headers"] = headers
        produce(self._producer, self.topic, **record)
        self.in_flight += 1

    def collect(self) -> list[T]:
        """The tokens acknowledged since the last call; refused records are sent again.
        Delivery reports are served by the caller's `producer.poll`/`flush`."""
        failed, self._failed = self._failed, []
        for key, value, headers, token in failed:
            self.send(key, value, token, headers)
        acked, self._acked = self._acked, []
        return acked

    @property
    def settled(self) -> bool:
        """Nothing in flight and nothing waiting to be sent again."""
        return self.in_flight == 0 and not self._failed
