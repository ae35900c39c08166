"""Input validation (docs/records-and-triggers.md): valid events and every rejection class."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.rules.events import MAX_EVENT_BYTES, Rejection, ValidEvent, digest, validate
from worker.rules.profiles import Profiles

NOW = datetime(2026, 11, 20, 18, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp()) * 1000
PAST = "2026-11-01T10:00:00Z"
PAST_MS = int(datetime(2026, 11, 1, 10, tzinfo=UTC).timestamp()) * 1000
BUILTIN = Profiles.builtin()
EUR_PROFILES = Profiles.from_toml(
    """
[profiles.default]
currency = "EUR"
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[profiles.us-shop]
currency = "USD"
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[profiles.anything]
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""
)


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "evt-1",
        "type": "order_placed",
        "order_id": "ord-1",
        "customer_id": "67543",
        "amount": "120.50",
        "occurred_at": PAST,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def raw(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def check(value: bytes | None, profiles: Profiles = BUILTIN, now_ms: int = NOW_MS) -> ValidEvent:
    result = validate(value, profiles, now_ms)
    assert isinstance(result, ValidEvent), result
    return result


def reject(
    value: bytes | None, error_class: str, profiles: Profiles = BUILTIN, now_ms: int = NOW_MS
) -> Rejection:
    result = validate(value, profiles, now_ms)
    assert isinstance(result, Rejection), result
    assert result.error_class == error_class, result
    assert result.reason.strip()
    assert "\n" not in result.reason, "a rejection reason is one sentence"
    return result


# -- valid events -------------------------------------------------------------------------


def test_valid_order_placed() -> None:
    ev = check(raw(event()))
    assert ev.event_id == "evt-1"
    assert ev.type == "order_placed"
    assert ev.order_id == "ord-1"
    assert ev.customer_id == "67543"
    assert ev.tenant == "default"
    assert ev.amount == 1_205_000
    assert ev.occurred_at == PAST_MS
    assert ev.digest == digest("evt-1")


def test_valid_refund_and_cancel() -> None:
    refund = check(raw(event(type="order_refunded", amount="20")))
    assert refund.type == "order_refunded"
    assert refund.amount == 200_000
    cancel = check(raw(event(type="order_cancelled", amount=_DROP)))
    assert cancel.type == "order_cancelled"
    assert cancel.amount is None
    cancel_null = check(raw(event(type="order_cancelled", amount=None)))
    assert cancel_null.amount is None


def test_tenant_and_currency_are_carried() -> None:
    ev = check(raw(event(tenant="sofa-shop.EU_2", currency="EUR")))
    assert ev.tenant == "sofa-shop.EU_2"


def test_unknown_fields_are_ignored() -> None:
    ev = check(raw(event(channel="web", items=[{"sku": "x"}])))
    assert ev.amount == 1_205_000


@pytest.mark.parametrize(
    "customer_id",
    [
        "{}:*",
        "rfm:{00}:c:default:*",
        "line1\nline2\r\n",
        "tab\there",
        "🍕 customer 👩‍👩‍👧",
        " ",
        "\\",
        '"quoted"',
        "x" * 200,
    ],
)
def test_customer_ids_with_any_characters_are_valid(customer_id: str) -> None:
    ev = check(raw(event(customer_id=customer_id)))
    assert ev.customer_id == customer_id


def test_ids_of_200_characters_are_valid_and_tenant_of_100() -> None:
    ev = check(raw(event(event_id="e" * 200, order_id="o" * 200, tenant="t" * 100)))
    assert len(ev.event_id) == 200
    assert len(ev.order_id) == 200
    assert len(ev.tenant) == 100


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        ("999999999999.9999", 9_999_999_999_999_999),
        ("0", 0),
        ("0.0001", 1),
        ("0.1", 1_000),
        ("12.3456", 123_456),
        ("1.50000", 15_000),  # trailing zeros are not extra decimals
        ("1E+3", 10_000_000),
    ],
)
def test_amount_strings_parse_exactly(amount: str, units: int) -> None:
    assert check(raw(event(amount=amount))).amount == units


@pytest.mark.parametrize(
    ("number", "units"),
    [
        ("999999999999.9999", 9_999_999_999_999_999),
        ("0.1", 1_000),
        ("0.3", 3_000),
        ("12.3456", 123_456),
        ("120", 1_200_000),
        ("0", 0),
        ("1e3", 10_000_000),
    ],
)
def test_amount_numbers_parse_exactly(number: str, units: int) -> None:
    # Written by hand: JSON numbers must not pass through a binary float.
    value = (
        '{"event_id": "e", "type": "order_placed", "order_id": "o", "customer_id": "c", '
        f'"amount": {number}, "occurred_at": "{PAST}"}}'
    ).encode()
    assert check(value).amount == units


@pytest.mark.parametrize(
    ("timestamp", "expected_ms"),
    [
        ("2026-11-01T10:00:00Z", PAST_MS),
        ("2026-11-01T10:00:00z", PAST_MS),
        ("2026-11-01T10:00:00+00:00", PAST_MS),
        ("2026-11-01T12:00:00+02:00", PAST_MS),
        ("2026-11-01T05:30:00-04:30", PAST_MS),
        ("2026-11-01T10:00:00.123Z", PAST_MS + 123),
        ("2026-11-01T10:00:00.123456Z", PAST_MS + 123),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_occurred_at_is_converted_to_utc_epoch_ms(timestamp: str, expected_ms: int) -> None:
    assert check(raw(event(occurred_at=timestamp))).occurred_at == expected_ms


def test_digest_is_stable_short_and_distinct() -> None:
    assert digest("evt-1") == digest("evt-1")
    assert digest("evt-1") != digest("evt-2")
    assert len(digest("evt-1")) == 11
    assert len({digest(f"refund-{i}") for i in range(10_000)}) == 10_000


# -- rejections ---------------------------------------------------------------------------


def test_empty_value() -> None:
    reject(None, "empty")
    reject(b"", "empty")


def test_oversized_value() -> None:
    doc = raw(event())
    padded = doc[:-1] + b" " * (MAX_EVENT_BYTES - len(doc)) + b"}"
    assert len(padded) == MAX_EVENT_BYTES
    check(padded)  # exactly the limit is fine
    reason = reject(padded + b" ", "oversized").reason
    assert str(MAX_EVENT_BYTES + 1) in reason
    reject(raw(event(note="x" * (MAX_EVENT_BYTES + 1))), "oversized")


def test_limit_is_reasonable() -> None:
    assert 4 * 1024 <= MAX_EVENT_BYTES <= 1024 * 1024


@pytest.mark.parametrize(
    "value",
    [
        b"\xff",
        b"\xfe\xff{}",
        raw(event())[:-2] + b'\xc3"}',  # truncated UTF-8 sequence inside a string
        json.dumps(event(customer_id="caf\u00e9"), ensure_ascii=False).encode("latin-1"),
    ],
)
def test_invalid_encoding(value: bytes) -> None:
    assert "UTF-8" in reject(value, "invalid_encoding").reason


@pytest.mark.parametrize(
    "value",
    [b"{", b"not json", b"{'event_id': 'e'}", b'{"a": 1,}', b"   ", raw(event()) + b"x"],
)
def test_invalid_json(value: bytes) -> None:
    reject(value, "invalid_json")


@pytest.mark.parametrize("value", [b"[]", b"[1, 2]", b'"order"', b"42", b"null", b"true"])
def test_not_an_object(value: bytes) -> None:
    reject(value, "not_an_object")


@pytest.mark.parametrize("field", ["event_id", "type", "order_id", "customer_id", "occurred_at"])
def test_missing_required_field(field: str) -> None:
    assert field in reject(raw(event(**{field: _DROP})), "missing_field").reason


@pytest.mark.parametrize("kind", ["order_placed", "order_refunded"])
def test_missing_amount_where_required(kind: str) -> None:
    assert "amount" in reject(raw(event(type=kind, amount=_DROP)), "missing_field").reason
    assert "amount" in reject(raw(event(type=kind, amount=None)), "missing_field").reason


@pytest.mark.parametrize("kind", ["order_shipped", "ORDER_PLACED", "", 5, None])
def test_unknown_type(kind: object) -> None:
    reject(raw(event(type=kind)), "unknown_type")


@pytest.mark.parametrize(
    "amount",
    [
        -1,
        "-0.01",
        "-0.0001",
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "1.00001",
        "0.00001",
        "12.34567",
        10**12,
        "1000000000000",
        "1000000000000.0000",
        "1E+12",
        True,
        False,
        "abc",
        "",
        "1,5",
        [1],
        {"value": 1},
    ],
)
def test_invalid_amount(amount: object) -> None:
    reject(raw(event(amount=amount)), "invalid_amount")


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "-1", "0.00001", "1e12", "1000000000000"]
)
def test_invalid_amount_number_literals(literal: str) -> None:
    value = (
        '{"event_id": "e", "type": "order_placed", "order_id": "o", "customer_id": "c", '
        f'"amount": {literal}, "occurred_at": "{PAST}"}}'
    ).encode()
    reject(value, "invalid_amount")


def test_amount_is_checked_on_refunds_too() -> None:
    reject(raw(event(type="order_refunded", amount="-5")), "invalid_amount")


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-11-01T10:00:00",  # naive
        "2026-11-01 10:00:00",  # naive, space separated
        1_793_354_400,  # epoch seconds
        1_793_354_400_000,  # epoch ms
        1_793_354_400.5,
        "2026-11-01",
        "yesterday",
        "",
        "2026-13-01T10:00:00Z",
        "2026-11-01T25:00:00Z",
        None,
        True,
        # Valid RFC 3339, but before the epoch: bounded so that nothing later (scoring,
        # formatting as UTC) can fail on it. The first is before year 1 once in UTC.
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:59:59+01:00",
    ],
)
def test_invalid_timestamp(timestamp: object) -> None:
    reject(raw(event(occurred_at=timestamp)), "invalid_timestamp")


def _at(delta: timedelta) -> str:
    return (NOW + delta).isoformat().replace("+00:00", "Z")


def test_future_timestamp_beyond_five_minutes() -> None:
    reject(raw(event(occurred_at=_at(timedelta(minutes=5, milliseconds=1)))), "future_timestamp")
    reject(raw(event(occurred_at=_at(timedelta(hours=1)))), "future_timestamp")
    reject(raw(event(occurred_at=_at(timedelta(days=400)))), "future_timestamp")


def test_exactly_five_minutes_ahead_is_accepted() -> None:
    ev = check(raw(event(occurred_at=_at(timedelta(minutes=5)))))
    assert ev.occurred_at == NOW_MS + 5 * 60_000
    check(raw(event(occurred_at=_at(timedelta(minutes=4, seconds=59)))))
    check(raw(event(occurred_at=_at(timedelta(0)))))


def test_future_is_judged_against_the_given_clock() -> None:
    value = raw(event(occurred_at=_at(timedelta(hours=1))))
    check(value, now_ms=NOW_MS + 3_600_000)
    check(value, now_ms=NOW_MS + 3_600_000 - 5 * 60_000)
    reject(value, "future_timestamp", now_ms=NOW_MS + 3_600_000 - 5 * 60_000 - 1)


def test_future_offset_is_applied_before_comparing() -> None:
    # 20:30+02:00 is NOW: accepted; 20:36+02:00 is 6 minutes ahead: rejected.
    check(raw(event(occurred_at="2026-11-20T20:30:00+02:00")))
    reject(raw(event(occurred_at="2026-11-20T20:36:00+02:00")), "future_timestamp")


def test_very_old_timestamps_are_accepted() -> None:
    check(raw(event(occurred_at="2001-01-01T00:00:00Z")))


def test_currency_mismatch_against_the_tenant_profile() -> None:
    reason = reject(raw(event(currency="USD")), "currency_mismatch", EUR_PROFILES).reason
    assert "USD" in reason
    assert "EUR" in reason
    check(raw(event(currency="EUR")), EUR_PROFILES)
    check(raw(event(currency=_DROP)), EUR_PROFILES)
    # A tenant with its own currency.
    check(raw(event(tenant="us-shop", currency="USD")), EUR_PROFILES)
    reject(raw(event(tenant="us-shop", currency="EUR")), "currency_mismatch", EUR_PROFILES)
    # A tenant without a profile falls back to the default (EUR).
    reject(raw(event(tenant="other", currency="USD")), "currency_mismatch", EUR_PROFILES)
    # A tenant whose profile sets no currency accepts any.
    check(raw(event(tenant="anything", currency="JPY")), EUR_PROFILES)
    # Without a currency in the profile, any currency is fine.
    check(raw(event(currency="USD")), BUILTIN)


def test_currency_mismatch_applies_to_cancellations() -> None:
    cancel = event(type="order_cancelled", amount=_DROP, currency="USD")
    reject(raw(cancel), "currency_mismatch", EUR_PROFILES)


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1R", "", 978])
def test_invalid_currency(currency: object) -> None:
    reject(raw(event(currency=currency)), "invalid_currency")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer_id", 67543),
        ("customer_id", ""),
        ("customer_id", "x" * 201),
        ("customer_id", None),
        ("customer_id", ["a"]),
        ("event_id", 1),
        ("event_id", ""),
        ("event_id", "e" * 201),
        ("order_id", 12.5),
        ("order_id", ""),
        ("order_id", "o" * 201),
        ("tenant", "bad tenant"),
        ("tenant", "a/b"),
        ("tenant", "a:b"),
        ("tenant", "{x}"),
        ("tenant", "café"),
        ("tenant", ""),
        ("tenant", "t" * 101),
        ("tenant", 7),
    ],
)
def test_invalid_field(field: str, value: object) -> None:
    reason = reject(raw(event(**{field: value})), "invalid_field").reason
    assert field in reason


def test_long_inputs_are_abbreviated_in_the_reason() -> None:
    reason = reject(raw(event(customer_id="x" * 201)), "invalid_field").reason
    assert len(reason) < 200


@pytest.mark.parametrize(
    "timestamp",
    [
        "1700000000",  # a Unix time in a string
        "0",
        "1700000000.5",
        "2024-01-01_00:00:00Z",  # not the T separator
        "2024-01-01T00:00Z",  # no seconds
        "+0100",
        "2024-01-01T00:00:00+0100",  # offset without a colon
        "2024-01-01T00:00:00",  # no offset
        " 2024-01-01T00:00:00Z",
    ],
)
def test_occurred_at_must_be_rfc3339_text(timestamp: str) -> None:
    reject(raw(event(occurred_at=timestamp)), "invalid_timestamp")


@pytest.mark.parametrize("amount", [" 1 ", "+1", "1.", ".5", "1_000", "٣", "１", "0x10", ""])
def test_amount_strings_must_be_plain_decimals(amount: str) -> None:
    reject(raw(event(amount=amount)), "invalid_amount")
