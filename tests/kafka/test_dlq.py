"""Dead-letter headers (docs/records-and-triggers.md): the original headers, then the
reason and source."""

from __future__ import annotations

from dataclasses import dataclass

from worker.kafka.dead_letters import dlq_headers
from worker.rules.events import Rejection, validate
from worker.rules.profiles import Profiles


@dataclass
class FakeMessage:
    """The four methods of confluent_kafka.Message that dead-lettering reads."""

    _headers: list[tuple[str, bytes | None]] | None
    _topic: str = "orders"
    _partition: int = 3
    _offset: int = 42

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def rejection() -> Rejection:
    out = validate(b"{not json", Profiles.builtin(), 0)
    assert isinstance(out, Rejection)
    assert out.error_class == "invalid_json"
    return out


def test_original_headers_are_kept_in_order_then_rfm_headers_appended() -> None:
    original: list[tuple[str, bytes | None]] = [
        ("traceparent", b"00-abc-def-01"),
        ("no-value", None),
        ("empty", b""),
        ("dup", b"1"),
        ("dup", b"2"),
        ("rfm.error.class", b"upstream's own"),  # spoofs the worker's: left out
        ("rfm.source.offset", b"1" * 999_000),  # and would make the copy too large
        ("rfm.triggers", b"kept"),  # not a name the worker writes on a dead letter
        ("binary", bytes(range(256))),
    ]
    msg = FakeMessage(list(original), "orders-eu", 7, 123456789012)
    rej = rejection()
    headers = dlq_headers(msg, rej)
    assert headers == [
        *original[:5],
        *original[7:],
        ("rfm.error.class", b"invalid_json"),
        ("rfm.error.reason", rej.reason.encode()),
        ("rfm.source.topic", b"orders-eu"),
        ("rfm.source.partition", b"7"),
        ("rfm.source.offset", b"123456789012"),
    ]
    assert headers[1] == ("no-value", None)  # null stays null, distinct from empty
    assert headers[2] == ("empty", b"")
    assert msg.headers() == original  # the message itself is left alone


def test_message_without_headers() -> None:
    rej = Rejection("invalid_amount", "amount: must be ≥ 0 (got '-1')")
    headers = dlq_headers(FakeMessage(None, "orders", 0, 0), rej)
    assert headers == [
        ("rfm.error.class", b"invalid_amount"),
        ("rfm.error.reason", "amount: must be ≥ 0 (got '-1')".encode()),
        ("rfm.source.topic", b"orders"),
        ("rfm.source.partition", b"0"),
        ("rfm.source.offset", b"0"),
    ]
    assert dlq_headers(FakeMessage([]), rej)[0] == ("rfm.error.class", b"invalid_amount")


def test_every_added_header_is_bytes_and_the_reason_one_line() -> None:
    headers = dlq_headers(FakeMessage([("k", b"v")]), rejection())
    added = dict(headers[1:])
    assert set(added) == {
        "rfm.error.class",
        "rfm.error.reason",
        "rfm.source.topic",
        "rfm.source.partition",
        "rfm.source.offset",
    }
    for value in added.values():
        assert isinstance(value, bytes)
    reason = added["rfm.error.reason"]
    assert reason and b"\n" not in reason
    assert reason.decode()  # UTF-8
