"""Hypothesis models shared by the property tests, each with the oracle that judges it.

- Deliveries (tests/rules/test_property.py, tests/services/test_sweeper.py): random events for a few
  tenants, customers and orders, delivered with duplicates, shuffled and cut into random
  batches (`scenarios`); `recompute` is a plain recomputation of them written from the
  documented rules (docs/profiles.md, docs/records-and-triggers.md):

  - events are a set (by event_id); one order per (tenant, customer, order_id);
  - among conflicting order_placed events the smallest (occurred_at, amount) is the order;
  - a cancelled order counts for nothing; refunds are per distinct refund event and an
    order's value is max(0, amount - refunds); monetary is the sum of the values;
  - days = floor((as_of - last_order_at) / 24h); R/F/M from the profile thresholds.

- Histories (tests/rules/test_decay.py, tests/rules/test_quantiles.py): a customer's order times
  around T0 (`histories`), instants near the ones where its score may change
  (`instants`), and `first_change`, the first instant time alone changes the score.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from itertools import pairwise
from typing import Any

import orjson
from hypothesis import strategies as st

from tests.factories import DAY_MS
from worker.rules.aggregates import Aggregates
from worker.rules.decay import rhythm
from worker.rules.events import ValidEvent, validate
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles
from worker.rules.scoring import Score, score
from worker.services import causes
from worker.state.store import Store

# -- deliveries -----------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The instant deliveries are applied at: noon, unlike tests/factories.py's AS_OF.
AS_OF_MS = (datetime(2026, 6, 1, 12, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
NOW_MS = AS_OF_MS + DAY_MS  # lets events a little after as_of through validation


PROFILES = Profiles.from_toml(
    """
    [profiles.default]
    recency_days = [15, 30, 45, 60]
    frequency_orders = [2, 3, 5, 10]
    monetary = [100, 250, 500, 1000]

    [profiles.t2]
    recency_days = [7, 60]
    frequency_orders = [1, 2, 3]
    frequency_window_days = 30
    monetary = [50, 500]

    [[profiles.t2.segments]]
    name = "active"
    r = [2, 3]

    [[profiles.t2.segments]]
    name = "repeat_lapsed"
    f = [3, 4]

    [[profiles.t2.segments]]
    name = "lapsed"
    """
)
THRESHOLDS = {  # the same numbers as the TOML above, written out for the oracle
    "default": ([15, 30, 45, 60], [2, 3, 5, 10], None, [100, 250, 500, 1000]),
    "t2": ([7, 60], [1, 2, 3], 30, [50, 500]),
}

TENANTS = ["default", "t2", "t3"]  # t3 has no profile: it is scored with default's
CUSTOMERS = ["c1", "{c}:2\n🎉"]
ORDERS = ["o1", "o2", "o3"]
AMOUNTS = ["0", "0.1", "0.2", "0.0001", "30", "49.9999", "50", "99.9999", "100", "250.5"]
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


@dataclass(frozen=True)
class Spec:
    kind: str
    tenant: str
    customer: str
    order: str
    amount: Decimal | None
    occurred_ms: int


PLACED_AMOUNTS = st.one_of(
    st.sampled_from(AMOUNTS).map(Decimal),
    st.decimals(min_value=0, max_value=1200, places=4),
    st.just(Decimal("999999999999.9999")),
)
REFUND_AMOUNTS = st.one_of(  # mostly smaller than orders, so a refund counted twice shows
    st.sampled_from(["0.0001", "0.1", "0.2", "10", "49.9999"]).map(Decimal),
    st.decimals(min_value=0, max_value=60, places=4),
)


# Few distinct instants, so placed events often tie on occurred_at, around the profile
# boundaries (7, 15, 30, 45, 60 days; t2's window is 30 days) to the millisecond.
INSTANTS = st.builds(
    lambda days, delta: AS_OF_MS - days * DAY_MS + delta,
    st.sampled_from([0, 7, 8, 15, 16, 30, 31, 45, 60, 61, 400]),
    st.sampled_from([-1, 0, 0, 1, 3_600_000]),
)


@st.composite
def order_history(draw: st.DrawFn, tenant: str, customer: str, order: str) -> list[Spec]:
    """The events of one order: usually one placed, sometimes competing ones, refunds, cancel."""
    out = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 0]))):
        # A competing claim often names the same instant: the amount decides then.
        same = out and draw(st.booleans())
        at = out[0].occurred_ms if same else draw(INSTANTS)
        out.append(Spec("placed", tenant, customer, order, draw(PLACED_AMOUNTS), at))
    out += [
        Spec("refunded", tenant, customer, order, draw(REFUND_AMOUNTS), draw(INSTANTS))
        for _ in range(draw(st.sampled_from([0, 0, 1, 2])))
    ]
    if draw(st.sampled_from([False, False, False, False, True])):
        out.append(Spec("cancelled", tenant, customer, order, None, draw(INSTANTS)))
    return out


def to_json(event_id: str, spec: Spec, zone: timezone, as_number: bool) -> bytes:
    ts = EPOCH + timedelta(milliseconds=spec.occurred_ms)
    doc: dict[str, Any] = {
        "event_id": event_id,
        "type": f"order_{spec.kind}",
        "order_id": spec.order,
        "customer_id": spec.customer,
        "occurred_at": ts.astimezone(zone).isoformat(timespec="milliseconds"),
    }
    if spec.tenant != "default" or as_number:
        doc["tenant"] = spec.tenant
    if spec.kind != "cancelled":
        assert spec.amount is not None
        exact_float = Decimal(repr(float(spec.amount))) == spec.amount
        doc["amount"] = float(spec.amount) if as_number and exact_float else str(spec.amount)
    return orjson.dumps(doc)


# -- deliveries: the oracle -------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    first: int
    last: int
    lifetime: int
    monetary: Decimal
    times: tuple[int, ...]
    r: int
    f: int
    m: int
    segment: str


def _recency(days: int, limits: list[int]) -> int:
    for i, limit in enumerate(limits):
        if days <= limit:
            return len(limits) + 1 - i
    return 1


def _at_least(value: Decimal | int, limits: list[int]) -> int:
    return 1 + sum(1 for limit in limits if value >= limit)


def _segment(tenant: str, r: int, f: int, m: int) -> str:
    if tenant == "t2":
        if r >= 2:
            return "active"
        return "repeat_lapsed" if f >= 3 else "lapsed"
    # The standard map: the docs name it, the profile carries it (tested elsewhere).
    return PROFILES.default.segment_map.segment(r, f, m)


def recompute(
    events: dict[str, Spec], as_of_ms: int = AS_OF_MS
) -> dict[tuple[str, str], Expected | None]:
    placed: dict[tuple[str, str, str], list[tuple[int, Decimal]]] = defaultdict(list)
    refunds: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    cancelled: set[tuple[str, str, str]] = set()
    customers: set[tuple[str, str]] = set()
    for spec in events.values():  # one entry per distinct event_id
        key = (spec.tenant, spec.customer, spec.order)
        customers.add((spec.tenant, spec.customer))
        if spec.kind == "placed":
            assert spec.amount is not None
            placed[key].append((spec.occurred_ms, spec.amount))
        elif spec.kind == "refunded":
            assert spec.amount is not None
            refunds[key] += spec.amount
        else:
            cancelled.add(key)
    out: dict[tuple[str, str], Expected | None] = {}
    for tenant, customer in customers:
        times: list[int] = []
        monetary = Decimal(0)
        for key, claims in placed.items():
            if key[:2] != (tenant, customer) or key in cancelled:
                continue
            at, amount = min(claims)
            times.append(at)
            monetary += max(Decimal(0), amount - refunds[key])
        if not times:
            out[(tenant, customer)] = None
            continue
        times.sort()
        rec, freq, window, mon = THRESHOLDS.get(tenant, THRESHOLDS["default"])
        in_window = [t for t in times if window is None or (as_of_ms - t) // DAY_MS < window]
        r = _recency((as_of_ms - times[-1]) // DAY_MS, rec)
        f = _at_least(len(in_window), freq)
        m = _at_least(monetary, mon)
        out[(tenant, customer)] = Expected(
            times[0],
            times[-1],
            len(times),
            monetary,
            tuple(times),
            r,
            f,
            m,
            _segment(tenant, r, f, m),
        )
    return out


# -- deliveries: the scenarios and applying them ------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Spec], list[list[bytes]]]:
    slots = st.tuples(*(st.sampled_from(x) for x in (TENANTS, CUSTOMERS, ORDERS)))
    distinct = [
        spec
        for slot in draw(st.lists(slots, min_size=1, max_size=7, unique=True))
        for spec in draw(order_history(*slot))
    ]
    if not distinct:
        distinct = [Spec("cancelled", "default", "c1", "o1", None, AS_OF_MS)]
    events = {f"ev-{i}": spec for i, spec in enumerate(distinct)}
    deliveries = [
        to_json(eid, spec, draw(st.sampled_from(ZONES)), draw(st.booleans()))
        for eid, spec in events.items()
    ]
    # Redeliveries: byte-identical or re-serialised (another offset, number vs string).
    extra = draw(st.lists(st.sampled_from(sorted(events)), max_size=12))
    deliveries += [
        to_json(eid, events[eid], draw(st.sampled_from(ZONES)), draw(st.booleans()))
        for eid in extra
    ]
    deliveries = draw(st.permutations(deliveries))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(deliveries) - 1)), max_size=5)))
    bounds = [0, *cuts, len(deliveries)]
    batches = [deliveries[a:b] for a, b in pairwise(bounds) if b > a]
    return events, batches


def partition_of(tenant: str, customer: str) -> int:
    """The partition of a customer's events (Kafka keys by customer id: one customer, one
    partition)."""
    return (TENANTS.index(tenant) + CUSTOMERS.index(customer)) % 3


def apply_batches(store: Store, batches: list[list[bytes]]) -> Counter[str]:
    """Validate and apply each delivery batch at AS_OF_MS, as the consumer would."""
    outcomes: Counter[str] = Counter()
    for batch in batches:
        items = []
        for raw in batch:
            valid = validate(raw, PROFILES, NOW_MS)
            assert isinstance(valid, ValidEvent), (raw, valid)
            items.append((valid, partition_of(valid.tenant, valid.customer_id)))
        result = causes.apply_batch(store, items, PROFILES, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)
        assert result.conflicts == 0
        outcomes.update(result.outcomes)
    return outcomes


# -- histories ------------------------------------------------------------------------------

# Deliberately not on a day boundary: the decay tests' instants are T0 + whole days + some ms.
T0 = int(datetime(2026, 11, 20, 18, 30, 12, tzinfo=UTC).timestamp()) * 1000 + 345

# Offsets from T0: any millisecond, or whole days and the ms before them (boundaries).
OFFSETS = st.one_of(
    st.integers(-500 * DAY_MS, 5 * DAY_MS),
    st.integers(-500, 5).map(lambda d: d * DAY_MS),
    st.integers(-500, 5).map(lambda d: d * DAY_MS - 1),
)


def key(s: Score) -> tuple[int, int, int, str]:
    """What a change of score compares."""
    return (s.r, s.f, s.m, s.segment)


@st.composite
def histories(draw: st.DrawFn) -> Aggregates:
    offsets = draw(st.lists(OFFSETS, min_size=1, max_size=12))
    offsets += draw(st.lists(st.sampled_from(offsets), max_size=3))  # same-instant orders
    if draw(st.booleans()):  # a regular rhythm, for the overdue rule
        gap = draw(st.integers(1, 90 * DAY_MS))
        offsets = [-i * gap for i in range(len(offsets))]
    times = tuple(sorted(T0 + o for o in offsets))
    return Aggregates(times[0], times[-1], len(times), draw(st.integers(0, 20_000_000)), times)


def instants(agg: Aggregates, p: Profile) -> st.SearchStrategy[int]:
    """Instants near the ones where something happens, and anywhere."""
    marks = [agg.last_order_at + (t + 1) * DAY_MS for t in p.recency_days]
    if p.frequency_window_days is not None:
        marks += [t + p.frequency_window_days * DAY_MS for t in agg.order_times]
    rh = rhythm(agg, p)
    if rh is not None:
        marks.append(rh.overdue_at)
    near = st.tuples(st.sampled_from(marks), st.sampled_from([-1, 0, 1])).map(sum)
    return near | st.integers(T0 - 510 * DAY_MS, T0 + 900 * DAY_MS)


def first_change(agg: Aggregates, p: Profile, as_of: int) -> int | None:
    """Oracle: R and F only ever fall with time, and only at these instants."""
    marks = [agg.last_order_at + (t + 1) * DAY_MS for t in p.recency_days]
    if p.frequency_window_days is not None:
        marks += [t + p.frequency_window_days * DAY_MS for t in agg.order_times]
    now = key(score(agg, as_of, p))
    return min((m for m in marks if m > as_of and key(score(agg, m, p)) != now), default=None)
