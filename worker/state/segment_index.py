"""The segment index: each tenant's customers by the segment and R x F cell of their
published score, ranked four ways, kept by the same commit call as their state. Pure.

One sorted set per (tenant, ordering, cell, segment) in each shard (worker/state/keys.py
`segment_index`, in the shard's hash slot, so that the commit call of a shard can write it
on Redis Cluster too). Every score is 0 and the member is the rank followed by the
customer id, so the set is ordered bytewise (ZRANGEBYLEX): highest rank first, ties by
customer id. A listing's position is therefore one member, valid in every set of the
listing, and a page is a range read after it in each set (O(log n + page) per set).

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


class Move(NamedTuple):
    """One ordering's set change for a customer: (segment, r, f, rank) it leaves and enters
    (None: none)."""

    ordering: str
    left: tuple[str, int, int, int] | None
    entered: tuple[str, int, int, int] | None


def entry_of(customer: Customer) -> Entry | None:
    """The customer's entry as its record stands; None while it has no published score."""
    pub = customer.published
    if pub is None:
        return None
    agg = customer.aggregates()
    if agg is None:  # a published score always has counted orders; ranked last if not
        return Entry(pub.segment, pub.r, pub.f, 0, 0, 0, pub.value)
    return Entry(
        pub.segment, pub.r, pub.f, agg.monetary, agg.last_order_at, agg.orders_lifetime, pub.value
    )


def moves(before: Entry | None, after: Entry | None) -> list[Move]:
    """The set changes that take a customer from `before` to `after`: none for an ordering
    whose cell, segment and rank are unchanged."""
    if before == after:
        return []
    same_place = before is not None and after is not None and before[:3] == after[:3]
    olds, news = _ranks(before), _ranks(after)
    out: list[Move] = []
    for code, old, new in zip(_CODES, olds, news, strict=True):
        if same_place and old == new:
            continue
        left = None if before is None or old is None else (before.segment, before.r, before.f, old)
        entered = None if after is None or new is None else (after.segment, after.r, after.f, new)
        if left is not None or entered is not None:
            out.append(Move(code, left, entered))
    return out


_CODES = ("s", "l", "o", "v")
_NONE = (None, None, None, None)


def _ranks(e: Entry | None) -> tuple[int | None, ...]:
    return _NONE if e is None else (e.spend, e.last_order, e.orders, e.value)


def member(rank: int, customer_id: str) -> bytes:
    """The sorted-set member: the rank, descending, as 16 hex digits, then the id."""
    return member_of(rank, customer_id.encode())


def member_of(rank: int, customer_id: bytes) -> bytes:
    """`member` of an id already encoded (the commit plan encodes it once per customer)."""
    if not -_TOP - 1 <= rank <= _TOP:
        rank = min(max(rank, -_TOP - 1), _TOP)
    return b"%016x" % (_TOP - rank) + customer_id


def customer_id_of(member_: bytes) -> str:
    return member_[RANK_WIDTH:].decode()


def cursor(ordering: str, member_: bytes) -> str:
    """An opaque cursor: the ordering's code and the last member listed, base64url."""
    raw = ORDERINGS[ordering].encode() + member_
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(ordering: str, text: str) -> bytes | None:
    """The member a cursor of `ordering` lists after; None when it is no such cursor."""
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
