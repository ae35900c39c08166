"""Fuzz: hostile order records through the real consume path, as an attacker would send them.

Hypothesis generates 2,000 hostile records, seeded (`derandomize=True`: every run sends
the same records, timestamps relative to now): arbitrary bytes, JSON that is not an
object, missing fields, every field of the wrong JSON type, strings at the edges of their
lengths (multibyte characters included), forbidden tenant characters, amounts and
timestamps at and beyond every edge, unknown types, bad and mismatched currencies, unknown
fields nested 10 to 5,000 deep or huge, duplicate keys (plain and \\u-escaped), other
encodings (BOM, UTF-16/32, Latin-1, overlong and CESU-8 sequences, lone surrogate escapes,
raw and escaped NUL), values padded to the exact byte around the worker's 64 KiB limit,
events the documented rules accept with every value at an edge, Kafka keys null, empty, binary or
huge, headers binary, null or spoofing the worker's own `rfm.*` ones, and tombstones. A
few more are made by hand: values, keys and headers near the ~1 MB a Kafka client sends
by default (the broker takes more), and 20,000 headers.

They go to the orders topic in one go, one known-valid event after every 3 of them; one
`rfm-worker run` (a currency per profile, a sweep every second) consumes them all; then:

1. every record is accounted for: each hostile record is in the DLQ exactly once, with the
   class `worker.rules.events.validate` gives it (a documented one) and a one-line reason, with
   its key, value and headers (or, for a copy too large for the DLQ, without its value and
   with `rfm.error.value_dropped`), or it was applied (its customer exists); no valid
   event is dead-lettered; `rfm_events_total` adds up to what was produced;
2. the known-valid customers' state equals the batch recomputation (tests/reference.py),
   so no hostile record touched them; everything published is schema-valid;
3. the worker is still running, healthy, and exits 0 on SIGTERM;
4. no reason and no log line carries a traceback, unless an event valid in process raised
   once applied (an `internal_error` dead letter, printed with its record).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Deployment
from tests.factories import iso_days_ago
from tests.fixtures import assert_changes_consistent, assert_state_matches, fetch, records_of
from tests.reference import expected_now
from worker.kafka.dead_letters import OWN
from worker.rules.events import MAX_EVENT_BYTES, Rejection, validate
from worker.rules.messages import RfmChanged, RfmOverdue
from worker.rules.profiles import Profiles
from worker.state.store import Store

CASES = 2000
VALID_EVERY = 3  # one known-valid event after every 3 hostile records
VALID_CUSTOMERS = frozenset(f"v{i}" for i in range(40))
CLASSES = frozenset(
    {  # README, "Records": the dead-letter classes, plus internal_error (consumer.py)
        "empty",
        "oversized",
        "invalid_encoding",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "unknown_type",
        "invalid_amount",
        "invalid_timestamp",
        "future_timestamp",
        "invalid_currency",
        "currency_mismatch",
        "invalid_field",
        "internal_error",
    }
)
# What the worker appends to the original headers, in this order (worker/kafka/dead_letters.py).
ADDED = (
    "rfm.error.class",
    "rfm.error.reason",
    "rfm.source.topic",
    "rfm.source.partition",
    "rfm.source.offset",
)
VALUE_DROPPED = "rfm.error.value_dropped"
PROCESS_TIMEOUT = 60  # seconds; it takes ~5 (pytest's own timeout is 120 for everything)
PRODUCER_MAX_BYTES = 10_000_000  # ours, so the near-limit records can be sent at all

# The default profile is the built-in one (what tests/reference.py `expected_now` scores
# with) plus a currency, and a tenant has its own: currency_mismatch is reachable.
PROFILES_TOML = """
[profiles.default]
currency = "EUR"
recency_days = [30, 90, 180, 365]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[profiles.sofa-shop]
currency = "USD"
recency_days = [30, 365, 730, 1825]
frequency_orders = [2, 3, 4, 6]
monetary = [500, 1500, 3000, 6000]
"""

Headers = list[tuple[str, bytes | None]]
Record = tuple[bytes | None, bytes | None, Headers | None]
Pairs = list[tuple[str, str]]  # an object as (raw JSON key, raw JSON value): duplicates allowed


# -- the raw JSON text of hostile values ----------------------------------------------------


def _j(value: Any, ascii_only: bool = True) -> str:
    """JSON text; NaN and infinities become the non-standard tokens, on purpose."""
    return json.dumps(value, ensure_ascii=ascii_only)


def _render(pairs: Pairs) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes CESU bytes


def _set(pairs: Pairs, field: str, raw: str) -> Pairs:
    key = _j(field)
    if any(k == key for k, _ in pairs):
        return [(k, raw if k == key else v) for k, v in pairs]
    return [*pairs, (key, raw)]


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


REQUIRED = ("event_id", "type", "order_id", "customer_id", "amount", "occurred_at")
WRONG_TYPES = ["null", "true", "false", "0", "-1", "1.5", "1e400", "[]", '["x"]', "{}", '{"a":1}']
EDGE_CHARS = [
    "a",
    "é",  # 2 bytes
    "€",  # 3 bytes
    "😀",  # 4 bytes, a surrogate pair once escaped
    "e\u0301",  # combining: 2 code points per "character"
    "\x00",
    "\n",
    " ",
    "{",
    "}",
    ":",
    "/",
    "\\",
    '"',
    "\u200b",
    "\ufeff",
    "\ufffe",
    "\U0010ffff",
    "\ud800",  # lone surrogates: "\ud800" escaped, CESU bytes when not
    "\udfff",
]
TENANTS = [
    "",
    "a",
    "a" * 100,
    "a" * 101,
    "default",
    "Default",
    "sofa-shop",
    "-",
    ".",
    "..",
    "_",
    "a:b",
    "a{b",
    "a}b",
    "{x}",
    "a b",
    "a/b",
    "a\\b",
    "a*",
    "a\n",
    "a\x00",
    "é",
    "ä" * 100,
    "😀",
    "ｄｅｆａｕｌｔ",
    " default",
    "default ",
]
AMOUNT_STRINGS = [
    "0",
    "-0",
    "0.0",
    "-0.0",
    "0.0001",
    "0.00001",
    "-0.0001",
    "999999999999.9999",
    "999999999999.99999",
    "1000000000000",
    "1e12",
    "1E12",
    "1e11",
    "9.999999999999999e11",
    "1E-4",
    "1e-5",
    "-1e-9",
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1,5",
    "1.5.5",
    " 1 ",
    "\t1",
    "0x10",
    "0b1",
    "",
    "-",
    "+1",
    "1.",
    ".5",
    "\u200b1",
    "1_000",
    "٣",
    "１",
    "1e-1000000000",
    "0E+1000000000",
    "1e1000000000",
    "0E-5",
    "9" * 400,
    "0." + "0" * 400 + "1",
    "1" + "0" * 5000,
    "12.34",
    "1/2",
    "1e",
    "e1",
]
AMOUNT_NUMBERS = [  # raw JSON number texts, some not JSON at all
    "0",
    "-0",
    "0.0",
    "-0.0",
    "0.0001",
    "0.00001",
    "1e12",
    "1E12",
    "999999999999.9999",
    "999999999999.99999",
    "1e308",
    "-1e308",
    "1e309",
    "1e-400",
    "4.9e-324",
    "-1e-9",
    "9" * 400,
    "0." + "0" * 400 + "1",
    "1" + "0" * 5000,
    "NaN",
    "Infinity",
    "-Infinity",
    "1E+2",
    "1.0e1",
    "-1",
    "00",
    "01",
    "1.",
    ".5",
    "+1",
    "0x10",
]
TIMESTAMPS = [
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "0001-01-01T00:00:00-01:00",
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "1969-12-31T23:59:59.9999999Z",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00.000+00:00",
    "1970-01-01T01:00:00+01:00",
    "1970-01-01T00:59:59.999+01:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
    "10000-01-01T00:00:00Z",
    "+002024-01-01T00:00:00Z",
    "2026-06-30T23:59:60Z",  # leap second
    "2024-01-01T24:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-01-01T00:00:00+24:00",
    "2024-01-01T00:00:00-23:59",
    "2024-01-01T00:00:00+23:59",
    "2024-01-01T00:00:00+99:00",
    "2024-01-01T00:00:00+01:60",
    "2024-01-01T00:00:00+0100",
    "2024-01-01T00:00:00+01",
    "2024-01-01T00:00:00+00:00:30",
    "2024-01-01T00:00:00-00:00",
    "2024-01-01T00:00:00.123456789Z",
    "2024-01-01T00:00:00.1234567890123Z",
    "2024-01-01T00:00:00.Z",
    "2024-01-01t00:00:00z",
    "2024-01-01 00:00:00Z",
    "2024-01-01_00:00:00Z",
    "2024-01-01T00:00:00",
    "2024-01-01T00:00Z",
    "2024-01-01",
    "2024-W01-1T00:00:00Z",
    "2024-01-01T00:00:00+01:00[Europe/Paris]",
    " 2024-01-01T00:00:00Z",
    "2024-01-01T00:00:00Z ",
    "２０２４-01-01T00:00:00Z",
    "now",
    "",
    "1700000000",
    "1700000000000",
    "1700000000.5",
    "0",
    "-1",
    "1e9",
]
TIMESTAMP_NUMBERS = ["0", "-1", "1700000000", "1700000000000", "1.7e9", "1e308", "-1e308", "1e30"]
TYPES = [
    "order_placed",
    "order_refunded",
    "order_cancelled",
    "ORDER_PLACED",
    "Order_Placed",
    " order_placed",
    "order_placed ",
    "order_placed\n",
    "order_placed\x00",
    "order-placed",
    "orderplaced",
    "order_shipped",
    "оrder_placed",  # Cyrillic o
    "",
    "rfm.changed",
]
CURRENCIES = [
    "EUR",
    "USD",
    "XXX",
    "eur",
    "EURO",
    "EU",
    "",
    "€",
    "ÉUR",
    "E\u0301UR",
    "EUR\n",
    " EUR",
]
EXTRA_KEYS = [
    "x",
    "",
    "\x00",
    "__proto__",
    "constructor",
    "$where",
    "Amount",
    "AMOUNT",
    "amount ",
    "event_id\x00",
    "type\u200b",
    "a" * 1000,
]
NEST_DEPTHS = [10, 64, 127, 128, 129, 199, 200, 201, 255, 256, 257, 1000, 5000]
INJECTIONS = [  # bytes put into a JSON string as they are: encodings and escapes
    b"\xc0\xaf",  # overlong "/"
    b"\xc0\x80",  # overlong NUL (modified UTF-8)
    b"\xe0\x80\xaf",
    b"\xf0\x80\x80\xaf",
    b"\xed\xa0\x80",  # CESU-8 lone surrogate
    b"\xed\xa0\xbd\xed\xb8\x80",  # CESU-8 pair
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
    b"\x80",
    b"\xff",
    b"\xe2\x82",  # truncated
    b"\xe9",  # Latin-1 e-acute
    b"\xef\xbf\xbe",  # U+FFFE, valid UTF-8
    b"\x00",  # raw control characters: not allowed unescaped in JSON
    b"\n",
    b"\x1f",
    b"\x7f",
    b"\\ud800",
    b"\\udfff",
    b"\\udc00\\ud800",
    b"\\ud800\\u0041",
    b"\\ud83d\\ude00",  # a valid pair
    b"\\u0000",
    b"\\u00",
    b"\\x41",
    b"\\'",
    b"\\/",
]
MARK = "@@INJ@@"
# Values the documented rules accept, at their edges: events made of them reach the engine.
EDGE_IDS = [
    "\x00",
    "a" * 200,
    "😀" * 200,
    "é" * 200,
    "e\u0301" * 100,
    "{x}",
    ":",
    " ",
    "\\",
    "/..",
    "%2F",
    "\u200b",
    "\ufffe",
    "\U0010ffff",
    "\n",
]
EDGE_AMOUNTS = ['"0"', '"-0"', '"0.0001"', '"999999999999.9999"', '"1E-4"', '"0E+1000000000"']
EDGE_AMOUNTS += ["0", "-0.0", "0.0001", "999999999999.9999", "1e-400", "1E+2", '"12.34"']
EDGE_TIMESTAMPS = [
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00.001Z",
    "1970-01-01T01:00:00+01:00",
    "2000-02-29T23:59:59.999+14:00",
    "2024-01-01T00:00:00-23:59",
    "2024-01-01T00:00:00.123456789Z",
]


def _nest(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    if kind == "mixed":
        half = max(1, depth // 2)
        return '[{"amount":' * half + "null" + "}]" * half
    return "[" * depth  # never closed


def _escaped_key(field: str) -> str:
    """The same key, spelled with a \\u escape: equal once parsed."""
    return '"' + f"\\u{ord(field[0]):04x}" + field[1:] + '"'


def hostile_records(now: datetime) -> st.SearchStrategy[Record]:
    """Every hostile record, relative to `now` for the timestamps that need it."""

    def ahead(delta: timedelta, offset_minutes: int = 0) -> str:
        tz = timezone(timedelta(minutes=offset_minutes))
        return (now + delta).astimezone(tz).isoformat().replace("+00:00", "Z")

    # Far enough from the 5-minute tolerance that the worker and the check agree.
    too_far = [
        ahead(timedelta(minutes=10)),
        ahead(timedelta(hours=1), 14 * 60),
        ahead(timedelta(days=1), -12 * 60),
        ahead(timedelta(days=365 * 100)),
    ]
    near = [  # accepted: a last order slightly in the future
        ahead(timedelta(minutes=4)),
        ahead(timedelta(minutes=4), -23 * 60 - 59),
        ahead(timedelta(milliseconds=50)),
        ahead(timedelta(milliseconds=-1)),
    ]

    def text_of(chars: str, length: int, ascii_only: bool) -> str:
        return _j(chars * length, ascii_only)

    edge_string = st.builds(
        text_of,
        st.sampled_from(EDGE_CHARS),
        st.sampled_from([0, 1, 2, 199, 200, 201, 1000]),
        st.booleans(),
    )
    any_string = st.builds(
        _j, st.text(max_size=300).filter(lambda s: s not in VALID_CUSTOMERS), st.booleans()
    )
    id_value = st.one_of(edge_string, any_string, st.sampled_from(WRONG_TYPES))
    tenant_value = st.one_of(
        st.builds(_j, st.sampled_from(TENANTS), st.booleans()),
        st.builds(
            text_of, st.sampled_from(EDGE_CHARS), st.sampled_from([1, 99, 100, 101]), st.booleans()
        ),
        st.sampled_from(WRONG_TYPES),
    )
    amount_value = st.one_of(
        st.sampled_from(AMOUNT_STRINGS).map(_j),
        st.sampled_from(AMOUNT_NUMBERS),
        st.decimals(allow_nan=True, allow_infinity=True).map(lambda d: _j(str(d))),
        st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
        st.floats().map(_j),
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(WRONG_TYPES),
    )
    generated_ts = st.builds(
        lambda at, off, frac, sep, zulu: (
            at.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
            + (("." + f"{at.microsecond:06d}" * 2)[: frac + 1] if frac else "")
            + (
                zulu
                if off == 0 and zulu
                else f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
            )
        ),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        st.one_of(st.just(0), st.integers(-1439, 1439)),
        st.integers(0, 12),
        st.sampled_from(["T", "t", " "]),
        st.sampled_from(["Z", "z", ""]),
    )
    ts_value = st.one_of(
        st.sampled_from(TIMESTAMPS + too_far + near).map(_j),
        st.sampled_from(TIMESTAMP_NUMBERS),
        generated_ts.map(_j),
        st.sampled_from(WRONG_TYPES),
    )
    type_value = st.one_of(
        st.builds(_j, st.sampled_from(TYPES), st.booleans()),
        st.text(max_size=20).map(_j),
        st.sampled_from(WRONG_TYPES),
    )
    currency_value = st.one_of(
        st.builds(_j, st.sampled_from(CURRENCIES), st.booleans()),
        st.text(max_size=4).map(_j),
        st.sampled_from(["978", '["EUR"]', '{"code":"EUR"}', *WRONG_TYPES]),
    )
    values = {
        "event_id": id_value,
        "order_id": id_value,
        "customer_id": id_value,
        "tenant": tenant_value,
        "amount": amount_value,
        "occurred_at": ts_value,
        "type": type_value,
        "currency": currency_value,
    }
    huge = st.one_of(
        st.builds(
            _nest,
            st.one_of(st.sampled_from(NEST_DEPTHS), st.integers(10, 5000)),
            st.sampled_from(["list", "object", "mixed", "unclosed"]),
        ),
        st.sampled_from([1000, 30_000, 60_000]).map(lambda n: _j("x" * n)),
        st.sampled_from([100, 1000, 5000]).map(
            lambda n: "{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}"
        ),
        st.sampled_from([100, 5000]).map(lambda n: "1" * n),
        st.sampled_from([100, 5000]).map(lambda n: '"' + "\\u0041" * n + '"'),
        st.sampled_from(WRONG_TYPES),
    )
    extra_key = st.one_of(st.sampled_from(EXTRA_KEYS), st.text(max_size=20)).map(_j)

    @st.composite
    def base(draw: st.DrawFn) -> Pairs:
        n = draw(st.integers(0, 10**6))
        event: dict[str, Any] = {
            "event_id": f"h{n}",
            "type": draw(st.sampled_from(["order_placed", "order_refunded", "order_cancelled"])),
            "order_id": f"ho{draw(st.integers(0, 30))}",
            "customer_id": f"hc{draw(st.integers(0, 30))}",  # few: hostile events meet
            "amount": "1.00",
            "occurred_at": _iso(now - timedelta(days=draw(st.integers(0, 400)))),
        }
        if draw(st.booleans()):
            event["tenant"] = draw(st.sampled_from(["default", "sofa-shop", "t-1"]))
        if draw(st.booleans()):
            event["currency"] = "EUR"
        return [(_j(k), _j(v)) for k, v in event.items()]

    @st.composite
    def mutated(draw: st.DrawFn, pairs: Pairs) -> Pairs:
        kind = draw(st.sampled_from(["set"] * 10 + ["drop", "duplicate"] * 2 + ["extra", "inject"]))
        if kind == "set":
            field = draw(st.sampled_from(sorted(values)))
            return _set(pairs, field, draw(values[field]))
        if kind == "drop":
            gone = {_j(f) for f in draw(st.sets(st.sampled_from(REQUIRED), min_size=1))}
            return [(k, v) for k, v in pairs if k not in gone]
        if kind == "duplicate":  # the second spelling of a key: plain, or \u-escaped
            field = draw(st.sampled_from(sorted(values)))
            key = _escaped_key(field) if draw(st.booleans()) else _j(field)
            other = draw(st.one_of(values[field], st.sampled_from(['"b"', '"2.00"', '"-1"'])))
            at = draw(st.integers(0, len(pairs)))
            return [*pairs[:at], (key, other), *pairs[at:]]
        if kind == "extra":
            at = draw(st.integers(0, len(pairs)))
            return [*pairs[:at], (draw(extra_key), draw(huge)), *pairs[at:]]
        field = draw(st.sampled_from(sorted(values)))  # inject: a marker, bytes later
        prefix = draw(st.sampled_from(["", "h", "1", "2024-01-01T00:00:00"]))
        return _set(pairs, field, _j(prefix + MARK))

    @st.composite
    def event_bytes(draw: st.DrawFn) -> bytes:
        pairs = draw(base())
        for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
            pairs = draw(mutated(pairs))
        text = _render(pairs)
        encoding = draw(
            st.sampled_from(
                ["utf-8"] * 30
                + ["bom", "utf-16-le", "utf-16-be", "utf-16", "utf-32", "utf-32-be", "latin-1"]
                + ["truncate", "trailing", "leading"]
            )
        )
        if encoding == "bom":
            raw = b"\xef\xbb\xbf" + _utf8(text)
        elif encoding == "latin-1":  # non-ASCII characters as single Latin-1 bytes
            latin = _set(pairs, "customer_id", _j(f"hé{draw(st.integers(0, 30))}", False))
            raw = _render(latin).encode("latin-1", "replace")
        elif encoding.startswith("utf-") and encoding != "utf-8":
            raw = text.encode(encoding, "surrogatepass")
        else:
            raw = _utf8(text)
        if MARK.encode() in raw:
            raw = raw.replace(MARK.encode(), draw(st.sampled_from(INJECTIONS)))
        if encoding == "truncate" and raw:
            raw = raw[: draw(st.integers(0, len(raw) - 1))]
        elif encoding == "trailing":
            raw += draw(st.sampled_from([b" x", b"\x00", b"}", b",", b"{}", b"\xff", b" \n\t\r"]))
        elif encoding == "leading":
            raw = draw(st.sampled_from([b" \t\n\r", b"\x00", b"\xef\xbb\xbf" * 2, b"\x0c"])) + raw
        return raw

    @st.composite
    def sized(draw: st.DrawFn) -> bytes:
        """Padded to an exact size around the worker's limit (valid events included)."""
        pairs = plain = draw(base())
        if draw(st.booleans()):
            pairs = draw(mutated(pairs))
        target = MAX_EVENT_BYTES + draw(st.sampled_from([-2, -1, 0, 1, 2, 1000, MAX_EVENT_BYTES]))
        how = draw(st.sampled_from(["ascii", "2-byte", "4-byte", "escaped", "key", "whitespace"]))
        skeleton = _utf8(_render([*pairs, ('"pad"', '""')]))
        room = target - len(skeleton)
        if room < 0:  # the mutation alone was larger: pad the unmutated event
            pairs = plain
            room = target - len(_utf8(_render([*pairs, ('"pad"', '""')])))
        if how == "whitespace":
            raw = b" \n" * (room // 2) + b" " * (room % 2) + _utf8(_render(pairs))
            raw += b" " * (target - len(raw))
        elif how == "key":
            raw = _utf8(_render([*pairs, (_j("p" * (room + 3)), '""')]))
        else:
            unit = {"ascii": "x", "2-byte": "é", "4-byte": "😀", "escaped": "\\u0041"}[how]
            width = len(_utf8(unit))
            pad = unit * (room // width) + "x" * (room % width)
            raw = _utf8(_render([*pairs, ('"pad"', '"' + pad + '"')]))
        assert len(raw) == target, (how, len(raw), target)
        return raw

    @st.composite
    def edge_valid(draw: st.DrawFn) -> bytes:
        """Accepted by the documented rules, every value at an edge: a few customers collect
        them."""
        kind = draw(st.sampled_from(["order_placed", "order_refunded", "order_cancelled"]))
        stamps = [*EDGE_TIMESTAMPS, *near]
        pairs = [
            (
                _j("event_id"),
                _j(
                    draw(st.sampled_from(["e", *EDGE_IDS])) + str(draw(st.integers(0, 99))),
                    draw(st.booleans()),
                ),
            ),
            (_j("type"), _j(kind)),
            (_j("order_id"), _j(draw(st.sampled_from(EDGE_IDS)), draw(st.booleans()))),
            (_j("customer_id"), _j(draw(st.sampled_from(EDGE_IDS)), draw(st.booleans()))),
            (_j("occurred_at"), _j(draw(st.sampled_from(stamps)))),
        ]
        if kind != "order_cancelled" or draw(st.booleans()):
            pairs.append((_j("amount"), draw(st.sampled_from(EDGE_AMOUNTS))))
        tenant = draw(st.sampled_from([None, "default", "a" * 100, "..", "-", "_", "Z.9"]))
        if tenant is not None:
            pairs.append((_j("tenant"), _j(tenant)))
        if draw(st.booleans()):
            pairs.append((_j("currency"), _j(draw(st.sampled_from(["EUR", "USD", "XXX"])))))
        order = draw(st.permutations(range(len(pairs))))
        return _utf8(_render([pairs[i] for i in order]))

    json_not_object = st.one_of(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4),
            max_leaves=8,
        ).map(_j),
        base().map(lambda p: "[" + _render(p) + "]"),  # a valid event, wrapped
        base().map(lambda p: _j(_render(p))),  # a valid event, encoded twice
    ).map(_utf8)

    @st.composite
    def value(draw: st.DrawFn) -> bytes | None:  # buckets: one_of weighs its branches unevenly
        bucket = draw(st.integers(0, 99))
        if bucket < 5:
            return draw(st.binary(min_size=1, max_size=512))  # empty: the next bucket
        if bucket < 12:
            return draw(json_not_object)
        if bucket < 16:
            return draw(
                st.sampled_from([None, b"", b" ", b"\x00", b"{}", b"null", b"\xef\xbb\xbf{}"])
            )
        if bucket < 26:
            return draw(sized())
        if bucket < 40:
            return draw(edge_valid())
        return draw(event_bytes())

    @st.composite
    def key(draw: st.DrawFn) -> bytes | None:
        bucket = draw(st.integers(0, 99))
        if bucket < 20:
            return None
        if bucket < 25:
            return b""
        if bucket < 60:
            return draw(st.text(max_size=40)).encode("utf-8")
        if bucket < 85:
            return draw(st.binary(max_size=64))
        if bucket < 97:
            return draw(st.binary(min_size=64, max_size=1024))
        return b"\x00\xff" * draw(st.sampled_from([5_000, 32_768, 50_000]))

    header_name = st.one_of(
        st.sampled_from([*ADDED, VALUE_DROPPED, "traceparent", "", "ñ", "a" * 300]),
        # no NUL: confluent-kafka passes header names as C strings (cut at the first NUL)
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=16),
    )
    header_value = st.one_of(
        st.none(),
        st.just(b""),
        st.binary(max_size=64),
        st.sampled_from([b"0", b"-1", b"internal_error", b"\xff" * 10, b"x" * 10_000]),
    )

    @st.composite
    def headers(draw: st.DrawFn) -> Headers | None:
        bucket = draw(st.integers(0, 99))
        if bucket < 40:
            return None
        if bucket < 50:
            return []
        return draw(st.lists(st.tuples(header_name, header_value), max_size=6))

    return st.tuples(key(), value(), headers())


def by_hand_records(now: datetime) -> list[Record]:
    """A few by hand: near the ~1 MB a default Kafka client sends (message.max.bytes), and
    20,000 headers. The broker takes them; the worker's dead-letter copy adds headers to
    them and may no longer fit its own producer's limit.
    """
    event = {
        "event_id": "h-big",
        "type": "order_placed",
        "order_id": "ho-big",
        "customer_id": "hc-big",
        "amount": "1.00",
        "occurred_at": _iso(now - timedelta(days=1)),
    }

    def padded(size: int) -> bytes:
        skeleton = orjson.dumps({**event, "pad": ""})
        raw = orjson.dumps({**event, "pad": "x" * (size - len(skeleton))})
        assert len(raw) == size
        return raw

    return [
        (b"big-1", padded(900_000), None),
        (b"big-2", padded(1_000_000 - 200), [("traceparent", b"00-abc-def-01")]),
        (None, padded(1_000_000), None),
        (b"big-4", padded(1_048_577), [("h", None)]),
        (b"\x00\xff" * 150_000, padded(700_000), None),  # a 300 kB key and a 700 kB value
        (b"k" * 999_000, None, None),  # a tombstone whose key alone is near the limit
        (b"big-7", b"{", [("x", b"\x00" * 999_900)]),  # invalid JSON, a huge header
        # the same, the huge header named like the worker's own (rfm.*): a spoof
        (b"big-8", b"{", [("rfm.error.reason", b"r" * 999_900)]),
        (b"many-headers", b"{", [(f"h{i}", b"") for i in range(20_000)]),
    ]


def valid_events(count: int, seed: int) -> list[dict[str, Any]]:
    """Known-valid events of customers v0..v39: orders, duplicates, refunds, cancels."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    placed: list[dict[str, Any]] = []
    for n in range(count):
        roll = rng.random()
        if placed and roll < 0.08:  # the same event again
            events.append(dict(rng.choice(events)))
        elif placed and roll < 0.13:
            order = rng.choice(placed)
            events.append(
                {
                    "event_id": f"vr{n}",
                    "type": "order_refunded",
                    "order_id": order["order_id"],
                    "customer_id": order["customer_id"],
                    "amount": f"{rng.randint(1, 5000) / 100:.2f}",
                    "occurred_at": iso_days_ago(0),
                }
            )
        elif placed and roll < 0.16:
            order = rng.choice(placed)
            events.append(
                {
                    "event_id": f"vc{n}",
                    "type": "order_cancelled",
                    "order_id": order["order_id"],
                    "customer_id": order["customer_id"],
                    "occurred_at": iso_days_ago(0),
                }
            )
        elif placed and roll < 0.19:  # the same order placed again: the smaller amount wins
            again = {**rng.choice(placed), "event_id": f"vp{n}-again"}
            again["amount"] = f"{rng.randint(1, 40000) / 100:.2f}"
            events.append(again)
        else:
            event: dict[str, Any] = {
                "event_id": f"vp{n}",
                "type": "order_placed",
                "order_id": f"vo{n}",
                "customer_id": f"v{rng.randrange(len(VALID_CUSTOMERS))}",
                "amount": f"{rng.randint(1, 40000) / 100:.2f}",
                "occurred_at": iso_days_ago(rng.randint(0, 300)),
            }
            if rng.random() < 0.2:
                event["tenant"] = "default"
            if rng.random() < 0.2:
                event["currency"] = "EUR"
            placed.append(event)
            events.append(event)
    return events


@dataclass
class Sent:
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    hostile: bool
    partition: int = -1
    offset: int = -1
    error: str | None = None


def _produce(deployment: Deployment, records: list[tuple[Record, bool]]) -> list[Sent]:
    """Everything in one go, each record's partition and offset taken from its ack."""
    producer = Producer(
        {
            "bootstrap.servers": deployment.kafka.bootstrap,
            "linger.ms": 20,
            "message.max.bytes": PRODUCER_MAX_BYTES,
        }
    )
    sent: list[Sent] = []
    for (key, value, headers), hostile in records:
        item = Sent(key, value, headers, hostile)

        def acked(err: Any, msg: Any, item: Sent = item) -> None:
            if err is not None:
                item.error = str(err)
            else:
                item.partition, item.offset = msg.partition(), msg.offset()

        record: dict[str, Any] = {"key": key, "value": value, "on_delivery": acked}
        if headers is not None:
            record["headers"] = headers
        while True:
            try:
                producer.produce(deployment.orders, **record)
                break
            except BufferError:
                producer.poll(0.05)
        sent.append(item)
    assert producer.flush(60) == 0
    producer.close()
    return sent


def _events_total(port: int) -> Counter[str]:
    body = fetch(port, "/metrics")[1].decode()
    return Counter(
        {
            m[1]: int(float(m[2]))
            for m in re.finditer(r'^rfm_events_total\{outcome="(\w+)"\} (\S+)$', body, re.M)
        }
    )


def _metrics(port: int, *prefixes: str) -> str:
    body = fetch(port, "/metrics")[1].decode()
    return "; ".join(line for line in body.splitlines() if line.startswith(prefixes))


def _changes_total(port: int) -> int:
    body = fetch(port, "/metrics")[1].decode()
    found = re.findall(r"^rfm_(?:changes|overdue)_total(?:\{[^}]*\})? (\S+)$", body, re.M)
    return sum(int(float(n)) for n in found)


def _check_dead_letter(
    msg: Any, by_source: dict[tuple[int, int], Sent], deployment: Deployment
) -> tuple[tuple[int, int], str, str, bool]:
    """One DLQ record: its source, class, reason, and whether its value was dropped.

    The worker's headers come last (original ones spoofing them are left out). A copy too large
    for the DLQ topic is sent without its value (and may lose the original headers and a
    huge key), with a trailing `rfm.error.value_dropped` header saying so.
    """
    headers = list(msg.headers() or [])
    names = tuple(name for name, _ in headers)
    dropped = bool(names) and names[-1] == VALUE_DROPPED
    ours = headers[-len(ADDED) - 1 : -1] if dropped else headers[-len(ADDED) :]
    assert tuple(name for name, _ in ours) == ADDED, headers[-len(ADDED) - 1 :]
    added = {name: (value or b"").decode() for name, value in ours}
    source = (int(added["rfm.source.partition"]), int(added["rfm.source.offset"]))
    item = by_source.get(source)
    assert item is not None, f"a dead letter of no produced record: {source}"
    assert item.hostile, f"a valid event dead-lettered: {_describe(item)} {added}"
    error_class, reason = added["rfm.error.class"], added["rfm.error.reason"]
    assert error_class in CLASSES, (error_class, _describe(item))
    assert reason.strip() and "\n" not in reason and len(reason) <= 1000, reason
    assert "Traceback" not in reason, reason
    assert added["rfm.source.topic"] == deployment.orders
    # The original headers, less any that use the worker's own names (spoofs are dropped).
    original = [(k, v) for k, v in item.headers or [] if not k.startswith(OWN)]
    kept = headers[: len(headers) - len(ours) - dropped]
    if not dropped:
        assert kept == original, _describe(item)
        assert msg.key() == item.key, _describe(item)
        assert (msg.value() or b"") == (item.value or b""), _describe(item)
        return source, error_class, reason, False
    # Dropped: only for a copy that would not fit the ~1 MB a Kafka client sends by default.
    size = len(item.key or b"") + len(item.value or b"")
    size += sum(len(k.encode()) + len(v or b"") for k, v in original)
    assert size > 950_000, f"value dropped from a {size}-byte record: {_describe(item)}"
    assert msg.value() is None, _describe(item)
    assert msg.key() in (item.key, None), _describe(item)
    assert all(h in original for h in kept), (kept[:5], _describe(item))
    assert (headers[-1][1] or b"").strip(), headers[-1]
    return source, error_class, reason, True


def _check_actions(messages: list[Any]) -> None:
    """Every published record is schema-valid, keyed by its customer; the known-valid
    customers' changes chain. (Hostile events are not keyed by customer id, so the order
    of their customers' changes is not promised: README, "Why this is effectively-once".)
    """
    known = []
    for msg in messages:
        change = orjson.loads(msg.value())
        assert msg.key() == change["customer_id"].encode(), change
        model = RfmOverdue if change["type"] == "rfm.overdue" else RfmChanged
        model.model_validate(change)
        if change["tenant"] == "default" and change["customer_id"] in VALID_CUSTOMERS:
            known.append(msg)
    assert_changes_consistent(known)


def _log_problems(worker: Any) -> str:
    """The worker's distinct warnings and errors (JSON log lines), with their counts."""
    seen: Counter[str] = Counter()
    for line in worker.log().splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            if "Traceback" in line or "Error" in line:
                seen[line[:300]] += 1
            continue
        if isinstance(doc, dict) and doc.get("level") in ("warning", "error", "critical"):
            seen[
                f"{doc['level']}: {str(doc.get('msg'))[:300]} {str(doc.get('exc', ''))[-600:]}"
            ] += 1
    return "\n".join(f"{n} x {text}" for text, n in seen.most_common(15)) or "(none)"


def _describe(item: Sent) -> str:
    def cut(raw: bytes | None) -> str:
        return (
            "None"
            if raw is None
            else repr(raw[:300]) + (f"... ({len(raw)} B)" if len(raw) > 300 else "")
        )

    return f"key={cut(item.key)} value={cut(item.value)} headers={item.headers!r:.300}"


@pytest.mark.demo_path
def test_hostile_records_are_applied_or_dead_lettered_and_valid_ones_stay_exact(
    deployment: Deployment, store: Store
) -> None:
    started = time.monotonic()
    now = datetime.now(UTC)
    hostile: list[Record] = []

    @settings(
        max_examples=CASES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_records(now))
    def collect(record: Record) -> None:
        hostile.append(record)

    collect()
    assert len(hostile) >= CASES
    hostile += by_hand_records(now)
    valid = valid_events(len(hostile) // VALID_EVERY, seed=7)
    valid_records = iter(records_of(valid))
    records: list[tuple[Record, bool]] = []
    for i, record in enumerate(hostile):
        records.append((record, True))
        if i % VALID_EVERY == VALID_EVERY - 1:
            key, value = next(valid_records)
            records.append(((key, value, None), False))
    generated = time.monotonic()

    # Precondition: no hostile record that passes validation is a known-valid customer's.
    profiles = Profiles.from_toml(PROFILES_TOML)
    for key, value, _headers in hostile:
        out = validate(value, profiles, int(time.time() * 1000))
        if not isinstance(out, Rejection):
            assert (out.tenant, out.customer_id) not in {("default", c) for c in VALID_CUSTOMERS}, (
                key,
                value,
            )

    profiles_file = deployment.tmp_path / "profiles.toml"
    profiles_file.write_text(PROFILES_TOML)
    deployment.extra_env["RFM_PROFILES"] = str(profiles_file)
    deployment.extra_env["RFM_SWEEP_INTERVAL"] = "1"  # sweep the hostile customers too
    sent = _produce(deployment, records)
    refused = [s for s in sent if s.error is not None]
    assert not [s for s in refused if not s.hostile], "the broker refused a valid event"
    sent = [s for s in sent if s.error is None]
    assert sum(1 for s in sent if s.hostile and len(s.value or b"") > MAX_EVENT_BYTES) >= 10
    produced = time.monotonic()

    worker = deployment.worker()
    port = deployment.http_port
    totals: Counter[str] = Counter()
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while True:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited with {worker.proc.returncode}: {_log_problems(worker)}")
        try:
            totals = _events_total(port)
        except OSError:  # not listening yet
            totals = Counter()
        done = totals["applied"] + totals["duplicate"] + totals["dead_lettered"]
        if done >= len(sent):
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"{done} of {len(sent)} records processed in {PROCESS_TIMEOUT} s: {dict(totals)}\n"
                f"{_log_problems(worker)}"
            )
        time.sleep(0.2)
    consumed = time.monotonic()
    assert done == len(sent), totals

    # 1. Every record accounted for: dead-lettered once with its class, or applied.
    # (counted when sent: a copy the DLQ never acknowledges is missing below, not here)
    dead = deployment.read(
        deployment.dlq, until=lambda m: len(m) >= totals["dead_lettered"], timeout=30
    )
    by_source = {(s.partition, s.offset): s for s in sent}
    dead_letters: dict[tuple[int, int], tuple[str, str]] = {}
    dropped = []
    for msg in dead:
        source, error_class, reason, was_dropped = _check_dead_letter(msg, by_source, deployment)
        assert source not in dead_letters, f"dead-lettered twice: {source}"
        if was_dropped:
            dropped.append(by_source[source])
        dead_letters[source] = (error_class, reason)

    at_check = int(time.time() * 1000)
    internal: list[tuple[Sent, str]] = []
    mismatched: list[str] = []
    applied = 0
    for item in sent:
        if not item.hostile:
            continue
        out = validate(item.value, profiles, at_check)
        got = dead_letters.get((item.partition, item.offset))
        if isinstance(out, Rejection):
            if got is None:
                mismatched.append(f"{out.error_class}, never in the DLQ: {_describe(item)}")
            elif got[0] != out.error_class:
                mismatched.append(f"{out.error_class} expected, got {got}: {_describe(item)}")
        elif got is not None:
            if got[0] == "internal_error":
                internal.append((item, got[1]))
            else:
                mismatched.append(f"valid in process, dead-lettered {got}: {_describe(item)}")
        else:
            applied += 1
            assert store.reads.customer(out.tenant, out.customer_id) is not None, _describe(item)
    if mismatched:
        pytest.fail(
            "\n".join(mismatched[:20])
            + f"\nmetrics: {_metrics(port, 'rfm_dlq', 'rfm_ready', 'rfm_delivery')}"
            + f"\nworker log:\n{_log_problems(worker)}"
        )
    assert len(dead) == totals["dead_lettered"], (len(dead), totals)
    assert applied + sum(1 for s in sent if not s.hostile) == (
        totals["applied"] + totals["duplicate"]
    )

    # 2. The known-valid customers are exact; what hostile events published is valid output.
    assert_state_matches(store, expected_now(valid))
    changes = _changes_total(port)
    actions = deployment.read(deployment.actions, until=lambda m: len(m) >= changes, timeout=60)
    _check_actions(actions)

    # 3. Still up and healthy, then a clean stop.
    assert worker.proc.poll() is None
    assert fetch(port, "/healthz")[0] == 200
    assert worker.stop() == 0

    # 4. No traceback for ordinary bad input: only an internal_error (an event valid in
    # process that raised once applied, dead-lettered by design) may log one.
    if not internal:
        assert "Traceback" not in worker.log(), _log_problems(worker)
    print(  # shown with -s or -rP
        f"{len(hostile)} hostile records ({len(refused)} refused by the broker), "
        f"{len(valid)} valid; {len(dead)} dead-lettered ({len(dropped)} without their value), "
        f"{applied} hostile applied, {len(internal)} internal errors; generated in "
        f"{generated - started:.1f} s, produced {produced - generated:.1f} s, consumed "
        f"{consumed - produced:.1f} s, total {time.monotonic() - started:.1f} s; classes "
        f"{dict(Counter(c for c, _ in dead_letters.values()).most_common())}"
    )
    for item, reason in internal:
        print(f"internal_error: {reason}: {_describe(item)}")
