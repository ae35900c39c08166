"""Redis memory per customer and per further order: what sizing a deployment needs.

Customers are written through `causes.apply_batch`, the worker's own commit path (state
blob, due index entry, segment counters, segment index members), without Kafka: the worker would write the same
keys, only slower to set up. The outbox entries the commits write are deleted (the relay
would trim them once published), so what is measured is what stays.

1. BENCH_MEMORY_CUSTOMERS (100,000) customers x BENCH_MEMORY_ORDERS (5) orders, one order
   per customer per round as a stream would bring them: INFO memory `used_memory` after,
   minus an empty server's, divided by the customers.
2. BENCH_GROW_CUSTOMERS (10,000) of them then grow to BENCH_GROW_ORDERS (25) orders: the
   growth of `used_memory` divided by the orders added, the cost of a customer's history
   (the dedup data is the order map itself, kept for the customer's life).

The blob sizes (STRLEN of 1,000 sampled customers) are reported beside, for reference.

    .venv/bin/python tests/benchmarks/run.py --only memory
"""

from __future__ import annotations

import statistics
from typing import Any

from common import Config, Row, Section, Stack, customer_ids, days_ago, preload, say

from worker.rules.profile import DEFAULT_TENANT
from worker.rules.profiles import Profiles
from worker.state import keys

SAMPLE = 1_000


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def blob_bytes(client: Any, customers: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for customer_id in customers[:SAMPLE]:
        pipe.strlen(keys.customer(DEFAULT_TENANT, customer_id))
    return statistics.fmean(pipe.execute())


def run(cfg: Config) -> Section:
    profiles = Profiles.builtin()
    count, orders = cfg.memory_customers, cfg.memory_orders
    grow, grow_to = min(cfg.grow_customers, count), cfg.grow_orders
    everyone = customer_ids("m", count)
    with Stack() as stack:
        client, store = stack.redis, stack.store()
        empty = used_memory(client)
        say(f"  {count:,} customers x {orders} orders through causes.apply_batch")
        load_s = preload(
            store,
            profiles,
            everyone,
            orders_each=orders,
            first_ms=days_ago(360),
            last_ms=days_ago(60),
            prefix="m",
        )
        loaded = used_memory(client)
        if int(client.dbsize()) < count:
            raise SystemExit(f"memory: {client.dbsize()} keys for {count} customers")
        blob_before = blob_bytes(client, everyone)
        say(f"  {grow:,} of them grow to {grow_to} orders")
        grown = everyone[:grow]
        grow_s = preload(
            store,
            profiles,
            grown,
            orders_each=grow_to - orders,
            first_ms=days_ago(59),
            last_ms=days_ago(1),
            prefix="m-more",
        )
        after = used_memory(client)
        blob_after = blob_bytes(client, grown)
    per_customer = (loaded - empty) / count
    added = grow * (grow_to - orders)
    per_order = (after - loaded) / added if added else float("nan")
    data = {
        "customers": count,
        "orders_each": orders,
        "used_memory_empty": empty,
        "used_memory_loaded": loaded,
        "bytes_per_customer": round(per_customer, 1),
        "blob_bytes_mean": round(blob_before, 1),
        "grow_customers": grow,
        "grow_to_orders": grow_to,
        "used_memory_grown": after,
        "bytes_per_further_order": round(per_order, 1),
        "blob_bytes_mean_grown": round(blob_after, 1),
        "load_seconds": round(load_s, 1),
        "grow_seconds": round(grow_s, 1),
        "apply_batch_events_per_s": round(count * orders / load_s, 1),
    }
    say(f"  {per_customer:,.0f} B per customer, {per_order:,.0f} B per further order")
    section = Section("memory", data=data)
    section.rows = [
        Row(
            f"Redis memory per customer, {count:,} customers x {orders} orders "
            f"(state blob {blob_before:.0f} B)",
            f"{per_customer:,.0f} bytes",
        ),
        Row(
            f"Redis memory per further order ({grow:,} customers from {orders} to {grow_to} "
            f"orders; blob {blob_after:,.0f} B)",
            f"{per_order:,.0f} bytes",
        ),
    ]
    return section
