"""Hostile Kafka records, as an attacker would send them (hypothesis strategies): what the
fuzz test sends through the real consume path (tests/services/test_fuzz.py) and what the
validation tests hold the lean path to (tests/rules/test_events.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from worker.rules.events import MAX_EVENT_BYTES

VALID_CUSTOMERS = frozenset(f"v{i}" for i in range(40))  # the fuzz test's valid customers
# What the worker appends to the original headers, in this order (worker/kafka/dead_letters.py).
ADDED = (
    "rfm.error.class",
    "rfm.error.reason",
    "rfm.source.topic",
    "rfm.source.partition",
    "rfm.source.offset",
)
VALUE_DROPPED = "rfm.error.value_dropped"

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


def iso_at(at: datetime) -> str:
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
            "occurred_at": iso_at(now - timedelta(days=draw(st.integers(0, 400)))),
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
