"""Input validation (docs/records-and-triggers.md): valid events and every rejection class."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import (
    ValidationError,
)

from tests import strategies
from tests.frozen_validation import frozen_validate
from tests.hostile import hostile_records
from worker.rules.events import (
    _LEAN,
    MAX_EVENT_BYTES,
    Rejection,
    ValidEvent,
    _accept,
    digest,
    validate,
)
from worker.rules.instants import MAX_FUTURE_MS
from worker.rules.profiles import Profiles

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


# -- the lean path: the same outcomes as the former validate ------------------------------
#
# `validate` first tries a lean schema that only ever accepts (worker/rules/events.py,
# `_LEAN` then `_accept`) and hands everything else to OrderEvent. `frozen_validate`
# (tests/frozen_validation.py) is `validate` as it was before the lean path, verbatim,
# with its own copies of the model and helpers: every input must give exactly the same
# ValidEvent, or the same Rejection (class and reason: the DLQ headers are a public
# contract). tests/benchmarks/validation.py times it against the lean path.


def same_as_frozen(value: bytes | None, profiles: Profiles, now_ms: int) -> ValidEvent | Rejection:
    got = validate(value, profiles, now_ms)
    want = frozen_validate(value, profiles, now_ms)
    assert type(got) is type(want), (value, got, want)
    assert got == want, (value, got, want)
    return got


def _lean(value: bytes, profiles: Profiles, now_ms: int) -> ValidEvent | None:
    """What the lean path alone says: the event, or None when OrderEvent decides."""
    try:
        doc = _LEAN.validate_json(value)
    except ValidationError:
        return None
    return _accept(doc, profiles, now_ms)


def lean(**changes: Any) -> bytes:
    """A benchmark-like event (tests/benchmarks/common.py) with some fields changed."""
    return orjson.dumps(
        event(**{"currency": "EUR", "occurred_at": "2026-11-01T10:00:00.555Z", **changes})
    )


# Each pair: just inside what the lean schema accepts, and just outside it, where OrderEvent
# decides (accepting or rejecting). Both must give the former outcome.
_AHEAD = _at(timedelta(minutes=5))
_AHEAD_1MS = _at(timedelta(minutes=5, milliseconds=1))
BOUNDARIES = [
    ({"amount": "999999999999.9999"}, {"amount": "0999999999999.9999"}),  # 13 digits: valid
    ({"amount": "999999999999.9999"}, {"amount": "1000000000000"}),
    ({"amount": "1.2345"}, {"amount": "1.23450"}),  # 5 decimals, the last 0: valid
    ({"amount": "1.2345"}, {"amount": "1.23456"}),
    ({"amount": "0"}, {"amount": "-0"}),
    ({"amount": "1"}, {"amount": "1\n"}),  # `$` ends the text in Rust's regex, not in re's
    ({"amount": "0.5"}, {"amount": ".5"}),
    ({"amount": "120"}, {"amount": "1.2E+2"}),
    ({"amount": 999_999_999_999}, {"amount": 10**12}),
    ({"amount": 0}, {"amount": -1}),
    ({"amount": 120}, {"amount": 120.0}),  # a JSON float: OrderEvent reads it
    ({"amount": 120}, {"amount": True}),
    ({"type": "order_cancelled", "amount": _DROP}, {"type": "order_placed", "amount": _DROP}),
    ({"type": "order_cancelled", "amount": None}, {"type": "order_refunded", "amount": None}),
    (
        {"occurred_at": "2026-11-01T10:00:00.123456Z"},
        {"occurred_at": "2026-11-01T10:00:00.1234567Z"},
    ),
    ({"occurred_at": "2026-11-01T10:00:00.1Z"}, {"occurred_at": "2026-11-01T10:00:00.Z"}),
    ({"occurred_at": "2026-11-01T10:00:00Z"}, {"occurred_at": "2026-11-01t10:00:00Z"}),
    ({"occurred_at": "2026-11-01T10:00:00Z"}, {"occurred_at": "2026-11-01T10:00:00Z\n"}),
    ({"occurred_at": "2026-11-01T10:00:00Z"}, {"occurred_at": "2026-11-01T10:00:00z"}),
    ({"occurred_at": "2026-11-01T10:00:00+23:59"}, {"occurred_at": "2026-11-01T10:00:00+24:00"}),
    ({"occurred_at": "2026-11-01T10:00:00-23:59"}, {"occurred_at": "2026-11-01T10:00:00-23:60"}),
    ({"occurred_at": "2026-11-01T10:00:00-00:00"}, {"occurred_at": "2026-11-01T10:00:00-0000"}),
    ({"occurred_at": "2016-12-31T23:59:59Z"}, {"occurred_at": "2016-12-31T23:59:60Z"}),
    ({"occurred_at": "2024-02-29T00:00:00Z"}, {"occurred_at": "2023-02-29T00:00:00Z"}),
    ({"occurred_at": "2026-04-30T00:00:00Z"}, {"occurred_at": "2026-04-31T00:00:00Z"}),
    ({"occurred_at": "2025-12-31T23:59:59Z"}, {"occurred_at": "2025-13-01T00:00:00Z"}),
    ({"occurred_at": "1970-01-01T00:00:00Z"}, {"occurred_at": "1969-12-31T23:59:59.999Z"}),
    ({"occurred_at": "1970-01-01T01:00:00+01:00"}, {"occurred_at": "1970-01-01T00:59:59+01:00"}),
    ({"occurred_at": "2026-11-01T10:00:00Z"}, {"occurred_at": "0000-01-01T00:00:00Z"}),
    ({"occurred_at": _AHEAD}, {"occurred_at": _AHEAD_1MS}),
    ({"currency": "EUR"}, {"currency": "USD"}),
    ({"currency": None}, {"currency": "usd"}),
    ({"tenant": "anything", "currency": "JPY"}, {"tenant": "us-shop", "currency": "JPY"}),
    ({"tenant": "a" * 100}, {"tenant": "a" * 101}),
    ({"customer_id": "x" * 200}, {"customer_id": "x" * 201}),
    ({"event_id": "e"}, {"event_id": ""}),
    ({"order_id": "o"}, {"order_id": 7}),
]


@pytest.mark.parametrize(("inside", "outside"), BOUNDARIES)
def test_lean_path_boundaries_from_both_sides(
    inside: dict[str, Any], outside: dict[str, Any]
) -> None:
    value = lean(**inside)
    assert _lean(value, EUR_PROFILES, NOW_MS) is not None, "the lean path accepts it"
    assert isinstance(same_as_frozen(value, EUR_PROFILES, NOW_MS), ValidEvent)
    value = lean(**outside)
    assert _lean(value, EUR_PROFILES, NOW_MS) is None, "OrderEvent decides"
    same_as_frozen(value, EUR_PROFILES, NOW_MS)


def test_lean_path_takes_the_benchmark_event() -> None:
    value = lean()
    ev = _lean(value, EUR_PROFILES, NOW_MS)
    assert ev == frozen_validate(value, EUR_PROFILES, NOW_MS)
    assert ev is not None
    assert (ev.amount, ev.occurred_at) == (1_205_000, PAST_MS + 555)


def test_lean_path_leaves_oversized_values_to_the_full_path() -> None:
    doc = raw(event())
    padded = doc[:-1] + b" " * (MAX_EVENT_BYTES + 1 - len(doc)) + b"}"
    assert isinstance(same_as_frozen(padded, BUILTIN, NOW_MS), Rejection)
    assert validate(padded, BUILTIN, NOW_MS) == frozen_validate(padded, BUILTIN, NOW_MS)


# -- generated inputs: valid, nearly valid, hostile ----------------------------------------

_TENANT_NAMES = ["default", "us-shop", "anything", "other", "", "a b", "é", "a" * 100, "a" * 101]
_DIGITS = "0123456789"


@st.composite
def amount_texts(draw: st.DrawFn) -> str:
    """Decimal texts around the lean pattern: signs, digits, points, exponents, lengths."""
    sign = draw(st.sampled_from(["", "", "", "-", "+", " "]))
    whole = draw(st.text(_DIGITS, min_size=0, max_size=14))
    point = draw(st.sampled_from(["", "", "."]))
    frac = draw(st.text(_DIGITS, max_size=6)) if point else ""
    exp = draw(st.sampled_from(["", "", "", "", "e3", "E+2", "e-4", "E12", "e"]))
    return sign + whole + point + frac + exp


AMOUNTS_JSON = st.one_of(
    amount_texts().map(json.dumps),
    st.decimals(min_value=0, max_value=10**12, places=4, allow_nan=False).map(
        lambda d: json.dumps(str(d))
    ),
    st.integers(-5, 10**12 + 5).map(str),
    st.sampled_from(
        [str(10**12 - 1), str(10**12), "-0", "0", "1.5", "1e3", "-0.0", "1E+2", "1" * 30]
    ),
    st.sampled_from(["true", "null", '"NaN"', "NaN", "Infinity", "[]", '"١"', '"1_0"']),
)


def _offset(minutes: int, zulu: str) -> str:
    if minutes == 0 and zulu:
        return zulu
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def timestamp_texts(draw: st.DrawFn) -> str:
    """RFC 3339 texts, near the 5-minute limit and the epoch, or from random fields (some
    out of range: month 13, hour 24, second 60, offset +24:00...)."""
    fraction = draw(st.one_of(st.just(""), st.text(_DIGITS, min_size=0, max_size=10)))
    fraction = "." + fraction if fraction or draw(st.booleans()) else ""
    zone_minutes = draw(st.one_of(st.just(0), st.integers(-1440, 1440)))
    zone = draw(st.sampled_from(["Z", "Z", "z", ""]))
    sep = draw(st.sampled_from(["T", "T", "T", "t", " "]))
    how = draw(st.sampled_from(["near now", "near the epoch", "fields"]))
    if how != "fields":
        center = NOW_MS + MAX_FUTURE_MS if how == "near now" else 0
        ms = center + draw(st.sampled_from([-1, 0, 1, draw(st.integers(-3_600_000, 3_600_000))]))
        tz = timezone(timedelta(minutes=max(-1439, min(1439, zone_minutes))))
        at = (EPOCH + timedelta(milliseconds=ms)).astimezone(tz)
        if at.year < 1:
            at = datetime(1, 1, 1, tzinfo=tz)
        micro = f"{at.microsecond:06d}"
        fraction = "." + (micro + fraction[1:])[: draw(st.integers(1, 12))] if fraction else ""
        minutes = int(tz.utcoffset(None).total_seconds()) // 60
        return at.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + fraction + _offset(minutes, zone)
    year = draw(
        st.one_of(st.sampled_from([0, 1, 1969, 1970, 2000, 2024, 9999]), st.integers(0, 9999))
    )
    fields = [draw(st.integers(lo, hi)) for lo, hi in [(0, 13), (0, 32), (0, 24), (0, 60), (0, 61)]]
    month, day, hour, minute, second = fields
    hh, mm = divmod(abs(zone_minutes), 60)
    off = f"{'-' if zone_minutes < 0 else '+'}{hh:02d}:{mm:02d}" if zone_minutes else zone
    return (
        f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{fraction}{off}"
    )


def _id_json(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


IDS_JSON = st.one_of(
    st.text(min_size=1, max_size=12).map(_id_json),
    st.text(max_size=202).map(_id_json),
    st.sampled_from(["x" * 200, "x" * 201, "😀" * 200, "\x00", "\ud800"]).map(json.dumps),
    st.sampled_from(["1", "null", "[]", '"\\ud800"', '"\\u0041"']),
)
FIELDS_JSON: dict[str, st.SearchStrategy[str]] = {
    "event_id": IDS_JSON,
    "order_id": IDS_JSON,
    "customer_id": IDS_JSON,
    "type": st.sampled_from(
        ["order_placed"] * 4 + ["order_refunded", "order_cancelled", "ORDER_PLACED", ""]
    ).map(json.dumps)
    | st.just("null"),
    "tenant": st.sampled_from(_TENANT_NAMES).map(json.dumps) | st.just("null"),
    "amount": AMOUNTS_JSON,
    "currency": st.sampled_from(["EUR", "EUR", "USD", "JPY", "eur", "", "EURO"]).map(json.dumps)
    | st.sampled_from(["null", "978"]),
    "occurred_at": timestamp_texts().map(json.dumps) | st.sampled_from(["1700000000", "null"]),
}
_DEFAULTS_JSON = {
    "event_id": '"e-1"',
    "type": '"order_placed"',
    "order_id": '"o-1"',
    "customer_id": '"c-1"',
    "amount": '"120.50"',
    "occurred_at": '"2026-11-01T10:00:00.555Z"',
}


@st.composite
def near_valid_values(draw: st.DrawFn) -> bytes:
    """A valid event with a few fields drawn from their strategies, some dropped, some
    spelled twice (the last spelling counts, as for OrderEvent), unknown ones added."""
    pairs = [(json.dumps(k), v) for k, v in _DEFAULTS_JSON.items()]
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS_JSON)), max_size=4)):
        pairs = [p for p in pairs if p[0] != json.dumps(name)]
        pairs.append((json.dumps(name), draw(FIELDS_JSON[name])))
    gone = draw(st.sets(st.sampled_from(sorted(_DEFAULTS_JSON)), max_size=1))
    pairs = [p for p in pairs if json.loads(p[0]) not in gone or draw(st.booleans())]
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(sorted(FIELDS_JSON)))
        pairs.insert(draw(st.integers(0, len(pairs))), (json.dumps(name), draw(FIELDS_JSON[name])))
    if draw(st.integers(0, 9)) == 0:
        pairs.append((json.dumps(draw(st.text(max_size=8))), draw(IDS_JSON)))
    pairs = draw(st.permutations(pairs))
    return ("{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}").encode("utf-8", "surrogatepass")


TABLES = st.sampled_from([BUILTIN, EUR_PROFILES])


@settings(max_examples=400, database=None, deadline=None)
@given(value=near_valid_values(), table=TABLES)
def test_lean_path_equals_the_frozen_validate_on_nearly_valid_events(
    value: bytes, table: Profiles
) -> None:
    hypothesis.event("lean" if _lean(value, table, NOW_MS) else "full")
    same_as_frozen(value, table, NOW_MS)


@settings(max_examples=200, database=None, deadline=None)
@given(scenario=strategies.scenarios())
def test_lean_path_equals_the_frozen_validate_on_valid_deliveries(
    scenario: tuple[dict[str, strategies.Spec], list[list[bytes]]],
) -> None:
    values = [value for batch in scenario[1] for value in batch]
    for value in values:
        assert isinstance(same_as_frozen(value, strategies.PROFILES, strategies.NOW_MS), ValidEvent)
    got = [validate(v, strategies.PROFILES, strategies.NOW_MS) for v in values]
    assert got == [frozen_validate(v, strategies.PROFILES, strategies.NOW_MS) for v in values]


@settings(max_examples=600, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(record=hostile_records(NOW))
def test_lean_path_equals_the_frozen_validate_on_hostile_records(
    record: tuple[bytes | None, bytes | None, Any],
) -> None:
    same_as_frozen(record[1], EUR_PROFILES, NOW_MS)


@settings(max_examples=200, database=None, deadline=None)
@given(
    values=st.lists(
        near_valid_values() | st.sampled_from([None, b"", b"{}", b"\xff", b"[1]"]), max_size=20
    ),
    table=TABLES,
)
def test_validate_equals_the_frozen_validate_on_mixed_good_and_bad_values(
    values: list[bytes | None], table: Profiles
) -> None:
    got = [validate(v, table, NOW_MS) for v in values]
    assert got == [frozen_validate(v, table, NOW_MS) for v in values]


_YEAR_10000_MS = 253_402_300_800_000  # as `now`: no instant up to year 9999 is in the future


@settings(max_examples=500, database=None, deadline=None)
@given(
    at=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    zone_minutes=st.integers(-1439, 1439),
    digits=st.integers(0, 8),
    zulu=st.booleans(),
)
def test_lean_timestamps_convert_as_the_frozen_validate(
    at: datetime, zone_minutes: int, digits: int, zulu: bool
) -> None:
    micro = f"{at.microsecond:06d}77"
    text = at.strftime("%Y-%m-%dT%H:%M:%S") + ("." + micro[:digits] if digits else "")
    text += "Z" if zulu else _offset(zone_minutes, "")
    value = lean(occurred_at=text)
    got = same_as_frozen(value, BUILTIN, _YEAR_10000_MS)
    if digits <= 6 and isinstance(got, ValidEvent):
        assert _lean(value, BUILTIN, _YEAR_10000_MS) == got


@settings(max_examples=500, database=None, deadline=None)
@given(
    amount=st.decimals(min_value=0, max_value=10**12, places=4, allow_nan=False)
    | st.integers(0, 10**12),
    as_text=st.booleans(),
)
def test_lean_amounts_convert_as_the_frozen_validate(amount: Decimal | int, as_text: bool) -> None:
    literal = f"{amount:f}" if isinstance(amount, Decimal) else str(amount)
    value = lean(amount=literal if as_text or isinstance(amount, Decimal) else amount)
    got = same_as_frozen(value, BUILTIN, NOW_MS)
    if isinstance(got, ValidEvent):
        assert _lean(value, BUILTIN, NOW_MS) == got
