"""The segment index: each tenant's customers by the segment and R x F cell of their
published score, ranked four ways, kept by the same commit call as their state. Pure.

One sorted set per (tenant, ordering) in each shard (worker/state/keys.py `segment_index`,
in the shard's hash slot, so that the commit call of a shard can write it on Redis
Cluster too). Every score is 0 and the member is the customer's place, then its position:

    place     4 hex digits of the segment name's UTF-8 length, the name, the R and F digits
    position  16 hex digits of 2^63 - 1 - the rank value (highest first), the customer id

so the set is ordered bytewise (ZRANGEBYLEX): each (segment, cell) is one contiguous
range, highest rank first, ties by customer id. A listing's position is therefore one
position, valid in every range of the listing, and a page is a range read after it in
each (O(log n + page) per range).

A customer's entry is a function of its stored record alone (`entry_of`): the published
segment and cell (what the segment counters follow) and the rank values derived from its
orders (net spend, last order, lifetime orders) and its published expected value. The
commit that rewrites the record moves the entry from what the record held before to what
it holds after, so the index is exact wherever the record is: a replayed or retried call
recomputes the same move from the same record, and a rebuild wipes and replays both.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from typing import NamedTuple

from worker.rules.customer import Customer

# Orderings as the API names them -> the code in keys, cursors and the entry's slot.
ORDERINGS = {"spend": "s", "last_order": "l", "orders": "o", "expected_value": "v"}
DEFAULT_ORDERING = "spend"
_TOP = (1 << 63) - 1
RANK_WIDTH = 16  # hex digits of a rank: a 64-bit unsigned number


class Entry(NamedTuple):
    """Where a customer is indexed: its published segment and cell, and its rank values
    (money units, epoch ms, a count, money units or None: no expected value published, so
    not in the expected-value ranking)."""

    segment: str
    r: int
    f: int
    spend: int
    last_order: int
    orders: int
    value: int | None


# One ordering's change for a customer: (the ordering's code, the member it leaves, the
# member it enters; None: none).
Move = tuple[str, bytes | None, bytes | None]


def entry_of(customer: Customer) -> Entry | None:
    """The customer's entry as its record stands; None while it has no published score."""
    pub = customer.published
    if pub is None:
        return None
    agg = customer.aggregates()
    # (built as a plain tuple is, twice per customer a commit decides: Entry(...) is a
    # Python-level __new__, twice as slow)
    if agg is None:  # a published score always has counted orders; ranked last if not
        return _entry(Entry, (pub.segment, pub.r, pub.f, 0, 0, 0, pub.value))
    return _entry(
        Entry,
        (
            pub.segment,
            pub.r,
            pub.f,
            agg.monetary,
            agg.last_order_at,
            agg.orders_lifetime,
            pub.value,
        ),
    )


_entry = tuple.__new__


def moves(before: Entry | None, after: Entry | None, customer_id: bytes) -> list[Move]:
    """The set changes that take the customer `customer_id` (encoded) from `before` to
    `after`: none for an ordering whose cell, segment and rank are unchanged. Built for
    every customer a commit touches, so the orderings are spelled out rather than looped
    over, and each member is one %-format of its place (cached), rank and id."""
    if before == after:
        return []
    if before is None or after is None or (at := before[:3]) != after[:3]:
        return _replaced(before, after, customer_id)
    here, cid = _place_of(at), customer_id  # the same range: only the ranks that changed move
    out: list[Move] = []
    if (old := before.spend) != (new := after.spend):
        out.append(("s", _member(here, old, cid), _member(here, new, cid)))
    if (old := before.last_order) != (new := after.last_order):
        out.append(("l", _member(here, old, cid), _member(here, new, cid)))
    if (old := before.orders) != (new := after.orders):
        out.append(("o", _member(here, old, cid), _member(here, new, cid)))
    if (was := before.value) != (now := after.value):
        left = None if was is None else _member(here, was, cid)
        out.append(("v", left, None if now is None else _member(here, now, cid)))
    return out


def _replaced(before: Entry | None, after: Entry | None, customer_id: bytes) -> list[Move]:
    """`moves` from one place to another (or from none, or to none): every member moves."""
    if before is None or after is None:
        left = _NONE if before is None else _members(before, customer_id)
        entered = _NONE if after is None else _members(after, customer_id)
        return [
            (code, old, new)
            for code, old, new in zip(_CODES, left, entered, strict=True)
            if old is not None or new is not None
        ]
    was, now, cid = _place_of(before[:3]), _place_of(after[:3]), customer_id
    out: list[Move] = [
        ("s", _member(was, before.spend, cid), _member(now, after.spend, cid)),
        ("l", _member(was, before.last_order, cid), _member(now, after.last_order, cid)),
        ("o", _member(was, before.orders, cid), _member(now, after.orders, cid)),
    ]
    old, new = before.value, after.value
    if old is not None or new is not None:
        gone = None if old is None else _member(was, old, cid)
        out.append(("v", gone, None if new is None else _member(now, new, cid)))
    return out


def _members(e: Entry, customer_id: bytes) -> tuple[bytes | None, ...]:
    """The customer's member in each ordering (None: not ranked in it), as `_CODES`."""
    here = _place_of(e[:3])
    value = e.value
    return (
        _member(here, e.spend, customer_id),
        _member(here, e.last_order, customer_id),
        _member(here, e.orders, customer_id),
        None if value is None else _member(here, value, customer_id),
    )


_CODES = ("s", "l", "o", "v")
_NONE = (None, None, None, None)
_LAST = (1 << 64) - 1  # the highest position's rank part: the lowest rank


@lru_cache(maxsize=10_000)  # a few per profile's segment
def _place_of(at: tuple[str, int, int]) -> bytes:
    """`place` of an entry's (segment, r, f)."""
    return place(*at)


def _member(place_: bytes, rank: int, customer_id: bytes) -> bytes:
    """place_ + position_of(rank, customer_id), in one format."""
    at = _TOP - rank
    if at >> 64:  # the rank beyond 64 bits: clamped (position_of)
        at = 0 if at < 0 else _LAST
    return b"%s%016x%s" % (place_, at, customer_id)


def place(segment: str, r: int, f: int) -> bytes:
    """The prefix of a (segment, cell) range: no place is a prefix of another's members
    (the length comes first, and the position after the place starts with a hex digit)."""
    name = segment.encode()
    return b"%04x%s%d%d" % (len(name), name, r, f)


def place_end(place_: bytes) -> bytes:
    """The first byte string after every member of the place's range (ZRANGEBYLEX max)."""
    return place_ + b"g"


def position(rank: int, customer_id: str) -> bytes:
    """A member's position: the rank, descending, as 16 hex digits, then the id."""
    return position_of(rank, customer_id.encode())


def position_of(rank: int, customer_id: bytes) -> bytes:
    """`position` of an id already encoded (the commit plan encodes it once per customer)."""
    if not -_TOP - 1 <= rank <= _TOP:
        rank = min(max(rank, -_TOP - 1), _TOP)
    return b"%016x" % (_TOP - rank) + customer_id


def customer_id_of(position_: bytes) -> str:
    return position_[RANK_WIDTH:].decode()


def cursor(ordering: str, position_: bytes) -> str:
    """An opaque cursor: the ordering's code and the last position listed, base64url."""
    raw = ORDERINGS[ordering].encode() + position_
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(ordering: str, text: str) -> bytes | None:
    """The position a cursor of `ordering` lists after; None when it is no such cursor."""
    if not text or len(text) > 2000:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    code, found = raw[:1], raw[1:]
    if code != ORDERINGS[ordering].encode() or len(found) <= RANK_WIDTH:
        return None
    rank = found[:RANK_WIDTH]
    if any(ch not in b"0123456789abcdef" for ch in rank):
        return None
    try:
        found[RANK_WIDTH:].decode()
    except UnicodeDecodeError:
        return None
    return found
