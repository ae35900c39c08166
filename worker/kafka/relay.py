"""The outbox relay: publishes committed changes to the actions topic, at least once.

A change is first written to its outbox stream in the same atomic call as the state it
comes from (worker/state/store.py). The relay produces it with the idempotent producer and
deletes the entry only after the broker acknowledged it. After a crash, whatever is left in
the outbox of a partition is published again, with the same change_id, before any new
event of that partition is processed (`recover`, called on assignment).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import orjson

from worker import metrics
from worker.kafka.delivery import Deliveries, Headers
from worker.pacing import Every
from worker.rules.engine import Change

logger = logging.getLogger(__name__)

TRIM_INTERVAL_S = 0.1
# Once stopping (SIGTERM, the end of `sweep --once`): all the waiting for acknowledgements
# fits in this; what is not acknowledged by then stays in the outbox for the next owner.
DRAIN_TIMEOUT = 20.0
TRIGGERS_HEADER = "rfm.triggers"  # the record's "triggers", comma-separated (b"" if none)


_NO_TRIGGERS: Headers = [(TRIGGERS_HEADER, b"")]  # shared, never mutated: most records


def triggers_header(names: Sequence[str]) -> Headers:
    return [(TRIGGERS_HEADER, ",".join(names).encode())] if names else _NO_TRIGGERS


def stored_triggers_header(value: bytes) -> Headers:
    """The header of a change read back from the outbox (its value only): from the record's
    own "triggers" (absent in records stored before triggers existed: none)."""
    try:
        names = orjson.loads(value).get("triggers") or []
    except (orjson.JSONDecodeError, AttributeError):
        names = []
    return triggers_header(names)


class Outbox(Protocol):
    """The outbox streams, per orders-topic partition (worker/state/outbox.py)."""

    def entries(self, partition: int) -> Iterator[tuple[bytes, bytes, bytes, bytes]]: ...
    def delete(self, done: dict[bytes, list[bytes]]) -> None: ...


class Committed(Protocol):
    """A change durably in an outbox stream (worker/state/store.py's `Committed`)."""

    @property
    def outbox(self) -> bytes: ...  # the stream's key
    @property
    def entry_id(self) -> bytes: ...
    @property
    def key(self) -> bytes: ...  # the customer id, the Kafka key
    @property
    def value(self) -> bytes: ...  # the rfm.changed or rfm.overdue record
    @property
    def change(self) -> Change: ...


class Relay:
    def __init__(self, outbox: Outbox, producer: Any, topic: str) -> None:
        self._outbox = outbox
        self._producer = producer
        # Ordered: a customer's changes go out one at a time, in outbox order.
        self._deliveries: Deliveries[tuple[bytes, bytes]] = Deliveries(
            producer, topic, ordered=True
        )
        self._trim: dict[bytes, list[bytes]] = defaultdict(list)  # acked, not yet deleted
        self._trims = Every(TRIM_INTERVAL_S)

    @property
    def in_flight(self) -> int:
        return self._deliveries.in_flight

    @property
    def backlog(self) -> int:
        """Changes handed to the relay and not yet acknowledged."""
        return self._deliveries.pending

    def publish(self, committed: Iterable[Committed]) -> None:
        send = self._deliveries.send
        # (cause, from, to) of the rfm.changed records: the metrics are counted from these
        # once per call (a labelled metric's lookup costs as much as producing the record)
        changed: dict[tuple[str, str | None, str | None], int] = {}
        triggers: Counter[tuple[str, str]] = Counter()
        overdue = erased = 0
        for c in committed:
            change = c.change
            names = change.triggers
            send(c.key, c.value, (c.outbox, c.entry_id), triggers_header(names))
            if names:
                # Bounded tenant label: named only when the tenant has its own profile.
                tenant = metrics.tenant_label(change.tenant, (change.profile,))
                for name in names:
                    triggers[(tenant, name)] += 1
            kind = change.kind
            if kind == "rfm.overdue":
                overdue += 1
            elif kind == "rfm.erased":
                erased += 1
            else:
                key = (change.cause, change.from_segment, change.to_segment)
                changed[key] = changed.get(key, 0) + 1  # a Counter's += costs more
        self._count(changed, triggers, overdue, erased)

    @staticmethod
    def _count(
        changed: dict[tuple[str, str | None, str | None], int],
        triggers: Counter[tuple[str, str]],
        overdue: int,
        erased: int,
    ) -> None:
        causes: Counter[str] = Counter()
        moves: Counter[tuple[str, str]] = Counter()
        for (cause, before, after), n in changed.items():
            causes[cause] += n
            if before != after:  # a real move, not 453 -> 353
                moves[(before or "none", after or "none")] += n
        for cause, n in causes.items():
            metrics.CHANGES.labels(cause).inc(n)
        for (before, after), n in moves.items():
            metrics.TRANSITIONS.labels(before, after).inc(n)
        if overdue:
            metrics.OVERDUE.inc(overdue)
        if erased:
            metrics.ERASED.inc(erased)
        for (tenant, name), n in triggers.items():
            metrics.TRIGGERS.labels(tenant, name).inc(n)

    def recover(self, partitions: Iterable[int]) -> int:
        """Publish every change left in the outboxes of these partitions (oldest first)."""
        count = 0
        for partition in partitions:
            for stream, entry_id, key, value in self._outbox.entries(partition):
                self._deliveries.send(key, value, (stream, entry_id), stored_triggers_header(value))
                count += 1
        if count:
            logger.info("relaying %d change(s) left in the outbox", count)
        return count

    def settle(self, *, trim_now: bool = False) -> None:
        """Serve delivery reports, re-produce failed ones, trim acknowledged entries (at
        most every TRIM_INTERVAL_S unless `trim_now`: one XDEL per stream then carries many
        ids; an entry acknowledged but not yet trimmed when the worker dies is published
        again, with its change_id, by the next owner)."""
        self._producer.poll(0)
        trim = self._trim
        for stream, entry_id in self._deliveries.collect():
            trim[stream].append(entry_id)
        if self._trim and (trim_now or self._trims.due()):
            self._outbox.delete(self._trim)  # if Redis fails, kept for the next try
            self._trim = defaultdict(list)
        metrics.OUTBOX_IN_FLIGHT.set(self.in_flight)

    def drain(self, timeout: float) -> bool:
        """Wait until every produced change is acknowledged and trimmed (on revoke, stop)."""
        deadline = time.monotonic() + timeout
        while True:  # ordered: acknowledgements release the next changes, so flush again
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
            self.settle(trim_now=True)
            if self._deliveries.settled or time.monotonic() >= deadline:
                return remaining == 0 and self._deliveries.settled
            if remaining == 0:
                time.sleep(0.01)  # only failed changes left: their retry pause

    def abandon(self) -> None:
        """Stop publishing (revoked, drain timed out): nothing more leaves this worker;
        what was not acknowledged stays in the outbox for the partitions' next owner."""
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.poll(0)
        dropped = self._deliveries.forget()
        logger.warning(
            "stopped publishing %d unacknowledged change(s): left to the next owner", dropped
        )
