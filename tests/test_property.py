"""Order independence, end to end through Store: any delivery equals a batch recomputation.

Random events for a few tenants/customers/orders, delivered with duplicates, shuffled and
cut into random batches, go through the real validation and Store.apply_batch. The result
must equal a plain recomputation written here from the documented rules (docs/profiles.md,
docs/records-and-triggers.md):

- events are a set (by event_id); one order per (tenant, customer, order_id);
- among conflicting order_placed events the smallest (occurred_at, amount) is the order;
- a cancelled order counts for nothing; refunds are per distinct refund event and an
  order's value is max(0, amount - refunds); monetary is the sum of the values;
- days = floor((as_of - last_order_at) / 24h); R/F/M from the profile thresholds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from itertools import pairwise
from typing import Any

import orjson
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import keys
from worker.embedded import EmbeddedRedis
from worker.events import ValidEvent, validate
from worker.keys import SHARDS
from worker.profiles import Profile, Profiles
from worker.store import Store

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AS_OF_MS = (datetime(2026, 6, 1, 12, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
DAY_MS = 86_400_000
NOW_MS = AS_OF_MS + DAY_MS  # lets events a little after as_of through validation
UNIT = Decimal("0.0001")

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


# -- the oracle -------------------------------------------------------------------------------


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


# -- the property -------------------------------------------------------------------------------


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


def _partition(tenant: str, customer: str) -> int:
    # Kafka keys by customer id: one customer, one partition.
    return (TENANTS.index(tenant) + CUSTOMERS.index(customer)) % 3


def test_profiles_are_what_the_oracle_assumes() -> None:
    for tenant, (rec, freq, window, mon) in THRESHOLDS.items():
        profile: Profile = PROFILES.for_tenant(tenant)
        assert profile.recency_days == rec
        assert profile.frequency_orders == freq
        assert profile.frequency_window_days == window
        assert [int(v) for v in profile.monetary] == mon
    assert PROFILES.for_tenant("t3") is PROFILES.default


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],  # redis_server is session-scoped
)
@given(scenario=scenarios())
def test_any_delivery_equals_batch_recomputation(
    redis_server: EmbeddedRedis, scenario: tuple[dict[str, Spec], list[list[bytes]]]
) -> None:
    events, batches = scenario
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        store = Store(client)
        check(store, events, batches)
    finally:
        client.close()


def apply_batches(store: Store, batches: list[list[bytes]]) -> Counter[str]:
    """Validate and apply each delivery batch at AS_OF_MS, as the consumer would."""
    outcomes: Counter[str] = Counter()
    for batch in batches:
        items = []
        for raw in batch:
            valid = validate(raw, PROFILES, NOW_MS)
            assert isinstance(valid, ValidEvent), (raw, valid)
            items.append((valid, _partition(valid.tenant, valid.customer_id)))
        result = store.apply_batch(items, PROFILES, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)
        assert result.conflicts == 0
        outcomes.update(result.outcomes)
    return outcomes


def check(store: Store, events: dict[str, Spec], batches: list[list[bytes]]) -> None:
    outcomes = apply_batches(store, batches)
    assert sum(outcomes.values()) == sum(len(b) for b in batches)

    expected = recompute(events)
    counted: Counter[tuple[str, str]] = Counter()
    cells: Counter[str] = Counter()
    for (tenant, customer), exp in expected.items():
        stored = store.get_customer(tenant, customer)
        assert stored is not None
        agg = stored.aggregates()
        if exp is None:
            assert agg is None
            assert stored.published is None
        else:
            assert agg is not None
            assert (agg.first_order_at, agg.last_order_at) == (exp.first, exp.last)
            assert agg.orders_lifetime == exp.lifetime
            assert tuple(agg.order_times) == exp.times
            assert Decimal(agg.monetary) * UNIT == exp.monetary
            assert stored.published is not None
            pub = stored.published
            assert (pub.r, pub.f, pub.m, pub.segment) == (exp.r, exp.f, exp.m, exp.segment)
            counted[(tenant, exp.segment)] += 1
            cells[f"{tenant}\t{exp.r}{exp.f}{exp.m}\t{exp.segment}"] += 1
        check_changes(store, events, tenant, customer, exp)

    assert {(c.tenant, c.customer_id) for c in store.scan_customers()} == set(expected)
    segments = store.segment_counts()
    assert segments == counted
    # The raw counter hashes: exactly the expected cells, no field left at zero or below.
    raw: Counter[str] = Counter()
    for shard in range(SHARDS):
        for fld, n in store.redis.hgetall(keys.counts(shard)).items():
            assert int(n) > 0, (fld, n)
            raw[fld.decode()] += int(n)
    assert raw == cells
    assert sum(segments.values()) == sum(1 for e in expected.values() if e is not None)


def check_changes(
    store: Store, events: dict[str, Spec], tenant: str, customer: str, exp: Expected | None
) -> None:
    """The customer's changes, in outbox order, chain from nothing to the expected score."""
    docs = [
        doc
        for _, _, key, value in store.outbox_entries(_partition(tenant, customer))
        if key == customer.encode() and (doc := orjson.loads(value))["tenant"] == tenant
    ]
    final = None
    if exp is not None:
        rfm = f"{exp.r}{exp.f}{exp.m}"
        final = {"r": exp.r, "f": exp.f, "m": exp.m, "rfm": rfm, "segment": exp.segment}
    if not docs:
        assert final is None
        return
    previous = None
    for doc in docs:
        assert doc["customer_id"] == customer
        assert doc["previous"] == previous
        assert doc["current"] != doc["previous"]
        cause = events[doc["cause_event_id"]]  # an event of this very customer
        assert (cause.tenant, cause.customer) == (tenant, customer)
        assert doc["cause"] == {"placed": "order", "refunded": "refund"}.get(cause.kind, "cancel")
        previous = doc["current"]
    assert previous == final
