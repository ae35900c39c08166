"""rfm_customers (worker/metrics.py) against the suite's Redis: what a scrape holds follows
its bounded label values, never the number of tenants the order events named."""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter
from collections.abc import Callable

import redis

from worker import metrics
from worker.rules.profiles import Profiles
from worker.state import keys
from worker.state.store import Store

TENANTS = 20_000


def count_customers(client: redis.Redis, customers: list[tuple[str, str]]) -> None:
    """The segment counters of these (tenant, customer id), as the commits keep them (one
    cell per tenant, rfm and segment in the customer's shard), without their states."""
    pipe = client.pipeline(transaction=False)
    for tenant, customer_id in customers:
        shard = keys.shard_of(tenant, customer_id)
        pipe.hincrby(keys.counts(shard), keys.count_cell(tenant, "111", "lost"), 1)
    pipe.execute()


def peak_bytes(call: Callable[[], object]) -> tuple[int, object]:
    """The most memory Python held during `call`, over what it held before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = call()
        return tracemalloc.get_traced_memory()[1] - before, out
    finally:
        tracemalloc.stop()


def scrape(collector: metrics.CustomersCollector) -> dict[tuple[str, str], float]:
    return {
        (s.labels["tenant"], s.labels["segment"]): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_a_scrape_holds_the_label_values_not_the_tenants(
    store: Store, redis_client: redis.Redis
) -> None:
    """20,000 customers each in its own tenant without a profile (one cell each) cost a
    scrape about what 20,000 customers of one tenant do: the tenants are summed under
    `other` as the counters are read, a few shards at a time, not gathered first."""
    profiles = Profiles.builtin()
    collector = metrics.CustomersCollector(store.reads.segment_counts, profiles.names(), ttl=0)

    count_customers(redis_client, [("shop", f"c{i}") for i in range(TENANTS)])
    one_peak, one = peak_bytes(lambda: scrape(collector))
    assert one == {("other", "lost"): TENANTS}

    redis_client.flushall()
    count_customers(redis_client, [(f"t{i}", "c") for i in range(TENANTS)])
    many_peak, many = peak_bytes(lambda: scrape(collector))
    assert many == one
    # ~7 MB when every tenant was gathered first; ~0.35 MB now (8 shards' cells at once).
    assert many_peak < one_peak + 1_000_000, (many_peak, one_peak)


def test_a_reader_that_ignores_the_labels_is_still_bounded() -> None:
    """A reader that returns per-tenant counts anyway is summed after the read."""
    counts = Counter({("vip", "lost"): 1, ("t1", "lost"): 2, ("t2", "lost"): 3})
    collector = metrics.CustomersCollector(lambda _label: counts, ["default", "vip"], ttl=0)
    assert scrape(collector) == {("vip", "lost"): 1, ("other", "lost"): 5}
