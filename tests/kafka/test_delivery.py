"""Deliveries (worker/kafka/delivery.py) against a producer that reports when the test says:
the order per key, refusals and their retry, a full local queue, shrinking, forgetting.
(With a real broker: tests/services/test_faults.py, tests/kafka/test_dlq.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from worker.kafka import delivery
from worker.kafka.delivery import Deliveries, Record


class Message:
    """A delivery report's message: librdkafka's carries the record, failed or not."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._record = record

    def key(self) -> Any:
        return self._record["key"]


class Producer:
    """Keeps what is produced until `ack`/`fail` reports it; `full` BufferErrors first."""

    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []
        self.unreported: list[dict[str, Any]] = []
        self.full = 0  # how many produce() calls raise BufferError (a full local queue)
        self.refuse: KafkaError | None = None  # produce() raises KafkaException with it
        self.polls = 0

    def produce(self, topic: str, **record: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        if self.refuse is not None:
            raise KafkaException(self.refuse)
        self.produced.append(record)
        self.unreported.append(record)

    def poll(self, _timeout: float) -> int:
        self.polls += 1
        return 0

    def report(self, key: bytes | None, err: KafkaError | None = None) -> None:
        [record] = [r for r in self.unreported if r["key"] == key][:1]
        self.unreported.remove(record)
        record["on_delivery"](err, Message(record))

    def values(self) -> list[bytes | None]:
        return [r["value"] for r in self.produced]


TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The deliveries' monotonic clock, moved by the test (the retry pause)."""
    now = [1000.0]
    monkeypatch.setattr(delivery.time, "monotonic", lambda: now[0])
    return now


def test_ordered_sends_one_record_per_key_at_a_time_in_order() -> None:
    producer = Producer()
    d: Deliveries[int] = Deliveries(producer, "actions", ordered=True)
    for n, key in enumerate([b"a", b"b", b"a", b"a", b"c"]):
        d.send(key, b"%d" % n, n, [("h", b"")])
    assert producer.values() == [b"0", b"1", b"4"]  # a's 2 and 3 wait behind its 0
    assert (d.in_flight, d.waiting, d.pending, d.settled) == (3, 2, 5, False)
    producer.report(b"b")
    producer.report(b"a")  # releases a's next record
    assert producer.values() == [b"0", b"1", b"4", b"2"]
    assert d.collect() == [1, 0]
    producer.report(b"a")
    producer.report(b"c")
    producer.report(b"a")
    assert d.collect() == [2, 4, 3]
    assert producer.values() == [b"0", b"1", b"4", b"2", b"3"]
    assert [r["headers"] for r in producer.produced] == [[("h", b"")]] * 5
    assert (d.in_flight, d.pending, d.settled, d.error) == (0, 0, True, None)


def test_ordered_a_refused_record_is_retried_before_the_next_of_its_key(
    clock: list[float],
) -> None:
    producer = Producer()
    d: Deliveries[int] = Deliveries(producer, "actions", ordered=True)
    d.send(b"a", b"a0", 0)
    d.send(b"a", b"a1", 1)
    d.send(b"b", b"b0", 2)
    producer.report(b"a", TIMED_OUT)
    assert d.error is not None and "timed out" in d.error.lower()
    producer.report(b"b")
    assert d.collect() == [2] and d.error is None  # an acknowledgement clears it
    assert (d.in_flight, d.pending, d.settled) == (0, 2, False)
    d.send(b"a", b"a2", 3)  # the key is still taken: waits
    clock[0] += 0.5
    assert d.collect() == []  # within the retry pause: nothing sent again
    assert producer.values() == [b"a0", b"b0"]
    clock[0] += 1
    assert d.collect() == []
    assert producer.values() == [b"a0", b"b0", b"a0"]  # again, before a1
    producer.report(b"a")
    producer.report(b"a")
    producer.report(b"a")
    assert d.collect() == [0, 1, 3]
    assert producer.values() == [b"a0", b"b0", b"a0", b"a1", b"a2"]
    assert (d.settled, d.error) == (True, None)


def test_a_record_refused_before_it_left_is_kept_and_sent_again(clock: list[float]) -> None:
    producer = Producer()
    for ordered in (True, False):
        d: Deliveries[int] = Deliveries(producer, "actions", ordered=ordered)
        producer.refuse = KafkaError(KafkaError._UNKNOWN_TOPIC)
        d.send(b"a", b"a0", 0)
        d.send(b"a", b"a1", 1)
        assert d.pending == 2 and d.in_flight == 0 and d.error is not None
        producer.refuse = None
        clock[0] += 2
        d.collect()
        producer.report(b"a")
        producer.report(b"a")
        assert d.collect() == [0, 1] and d.settled


def test_a_full_local_queue_is_waited_out_by_serving_reports() -> None:
    producer = Producer()
    for ordered in (True, False):
        d: Deliveries[int] = Deliveries(producer, "actions", ordered=ordered)
        producer.full = 3
        d.send(b"a", b"a0", 0)
        assert producer.polls >= 2 and d.in_flight == 1 and d.error is None
        producer.report(b"a")
        assert d.collect() == [0]


def test_forget_drops_everything_and_ignores_late_reports() -> None:
    producer = Producer()
    d: Deliveries[int] = Deliveries(producer, "actions", ordered=True)
    d.send(b"a", b"a0", 0)
    d.send(b"a", b"a1", 1)
    d.send(b"b", b"b0", 2)
    assert d.forget() == 3
    assert (d.in_flight, d.pending, d.settled) == (0, 0, True)
    d.send(b"a", b"a2", 3)  # sent again after the revoke (a kept partition's outbox)
    producer.report(b"a")  # the report of the dropped a0, served late: not a2's
    producer.report(b"b", TIMED_OUT)
    assert (d.in_flight, d.pending, d.collect(), d.error) == (1, 1, [], None)
    producer.report(b"a")
    assert d.collect() == [3] and d.settled


def test_a_record_too_large_is_sent_shrunk_once() -> None:
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)

    def shrink(record: Record) -> Record:
        return None, b"small", [("dropped", str(len(record[1] or b"")).encode())]

    producer = Producer()
    d: Deliveries[int] = Deliveries(producer, "dlq", shrink=shrink)
    d.send(b"a", b"x" * 10, 0)
    producer.report(b"a", too_large)
    assert producer.produced[-1]["value"] == b"small" and producer.produced[-1]["key"] is None
    producer.report(None, too_large)  # shrunk and still too large: failed, kept
    assert d.error is not None and d.pending == 1

    ordered: Deliveries[int] = Deliveries(producer, "actions", shrink=shrink, ordered=True)
    ordered.send(b"k", b"y" * 10, 1)
    ordered.send(b"k", b"next", 2)
    producer.report(b"k", too_large)
    assert producer.produced[-1]["key"] == b"k"  # ordered: the key is kept
    assert producer.produced[-1]["value"] == b"small"
    producer.report(b"k")
    assert producer.produced[-1]["value"] == b"next"
    producer.report(b"k")
    assert ordered.collect() == [1, 2] and ordered.settled
