"""Order independence, end to end through Store: any delivery equals a batch recomputation.

Random events for a few tenants/customers/orders, delivered with duplicates, shuffled and
cut into random batches (tests/strategies.py: `scenarios`), go through the real validation
and causes.apply_batch. The result must equal `recompute` there, a plain recomputation
written from the documented rules (docs/profiles.md, docs/records-and-triggers.md).
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import orjson
import redis
from hypothesis import HealthCheck, given, settings

from tests.strategies import (
    PROFILES,
    THRESHOLDS,
    Expected,
    Spec,
    apply_batches,
    partition_of,
    recompute,
    scenarios,
)
from worker.embedded import EmbeddedRedis
from worker.rules.profile import Profile
from worker.state import keys
from worker.state.keys import SHARDS
from worker.state.store import Store

UNIT = Decimal("0.0001")


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


def check(store: Store, events: dict[str, Spec], batches: list[list[bytes]]) -> None:
    outcomes = apply_batches(store, batches)
    assert sum(outcomes.values()) == sum(len(b) for b in batches)

    expected = recompute(events)
    counted: Counter[tuple[str, str]] = Counter()
    cells: Counter[str] = Counter()
    for (tenant, customer), exp in expected.items():
        stored = store.reads.customer(tenant, customer)
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

    assert {(c.tenant, c.customer_id) for c in store.reads.customers()} == set(expected)
    segments = store.reads.segment_counts()
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
        for _, _, key, value in store.outbox.entries(partition_of(tenant, customer))
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
