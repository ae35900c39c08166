"""What the segment index costs and what it buys (docs/segments.md, docs/performance.md).

    .venv/bin/python tests/benchmarks/run.py --only members

1. Cost per event: the same placed orders (BENCH_INDEX_CUSTOMERS customers, default
   20,000, x BENCH_INDEX_ORDERS, default 5, one per customer per round) go through
   `causes.apply_batch` (the commit path: engine, commit.lua, outbox; no broker) in
   batches of 2,000 into a fresh embedded Redis, with the index as shipped and with its
   planning switched off (`commit_plan._index` a no-op: what the commit path was without
   it), interleaved, best of 3. Reported: this process's CPU and the wall time per event,
   and Redis `used_memory` per customer after each (the outbox deleted, as the relay would).
2. A page: a segment of BENCH_SCALE_SMALL (10,000) and of BENCH_SCALE_CUSTOMERS
   (1,000,000) members, written straight into the index's sets (64 shards x 4 cells) with
   the counters that name them, the top customers' records beside: the API's answer for a
   page of 100 from the top (index read, records, views), and the index read of a page
   of 100 from the middle (a cursor half way down), median of 30 each; and the index's
   bytes per member at each size (MEMORY USAGE of its sets: small sets are listpacks,
   large ones skiplists, so a member costs more in a large segment).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import redis
from common import Config, Row, Section, ratio, say

from worker.config import Settings
from worker.embedded import EmbeddedRedis
from worker.rules.customer import Customer, Published
from worker.rules.events import ValidEvent
from worker.rules.instants import wall_ms
from worker.rules.orders import Order
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state import commit_plan, keys, segment_index
from worker.state.store import Store
from worker.web.api import Api

BATCH = 2000
PAGE = 100
REPEAT = 30
CELLS = ((4, 4), (4, 5), (5, 4), (5, 5))
SEGMENT = "champions"
TENANT = "default"


def _used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def _events(customers: int, orders: int, now: int) -> list[tuple[ValidEvent, int]]:
    rng = random.Random(5)
    out = []
    for round_ in range(orders):
        for c in range(customers):
            n = round_ * customers + c
            at = now - (orders - round_) * 30 * 86_400_000 - rng.randrange(86_400_000)
            amount = rng.randrange(500, 40_000) * 100
            event = ValidEvent(f"e{n}", "order_placed", f"o{n}", f"c{c}", TENANT, amount, at)
            out.append((event, c % 4))
    return out


def _apply(
    url: str, events: list[tuple[ValidEvent, int]], now: int, index: bool
) -> dict[str, float]:
    store = Store(_client(url))
    store.redis.flushall()
    empty = _used(store.redis)
    profiles = Profiles.builtin()
    kept = commit_plan._index
    if not index:
        commit_plan._index = lambda *_args: None
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, len(events), BATCH):
            batch = events[start : start + BATCH]
            causes.apply_batch(store, batch, profiles, as_of_ms=now, now_ms=now)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        commit_plan._index = kept
    for key in store.redis.scan_iter(match=keys.OUTBOX_PATTERN, count=1000):
        store.redis.unlink(key)
    customers = len({e.customer_id for e, _ in events})
    memory = (_used(store.redis) - empty) / customers
    store.redis.close()
    return {
        "cpu_us": 1e6 * cpu / len(events),
        "wall_us": 1e6 * wall / len(events),
        "bytes_per_customer": memory,
    }


def _client(url: str) -> Any:
    return redis.Redis.from_url(url)


def index_cost(customers: int, orders: int, repeats: int = 3) -> dict[str, Any]:
    now = wall_ms()
    events = _events(customers, orders, now)
    best: dict[str, dict[str, float]] = {}
    with EmbeddedRedis() as server:
        for _ in range(repeats):  # interleaved: drift hits both alike
            for name, index in (("without the index", False), ("with the index", True)):
                r = _apply(server.url, events, now, index)
                if name not in best or r["cpu_us"] < best[name]["cpu_us"]:
                    best[name] = r
    return {"events": len(events), "customers": customers, "per_event": best}


def _fill(store: Store, size: int, records: int, now: int) -> None:
    """`size` members in the segment's sets, the counters naming its cells, and the
    records of the top `records` (what a first page reads)."""
    rng = random.Random(size)
    client = store.redis
    pipe = client.pipeline(transaction=False)
    counted: dict[tuple[int, int, int], int] = {}
    top: list[tuple[bytes, str, int]] = []
    for n in range(size):
        cid = f"m{n}"
        shard = keys.shard_of(TENANT, cid)
        r, f = CELLS[n % len(CELLS)]
        spend = rng.randrange(1, 10**9)
        member = segment_index.member(spend, cid)
        pipe.zadd(keys.segment_index(shard, TENANT, "s", r, f, SEGMENT), {member: 0})
        counted[(shard, r, f)] = counted.get((shard, r, f), 0) + 1
        top.append((member, cid, shard))
        if len(top) > 4 * records:
            top = sorted(top)[:records]
        if n % 5000 == 4999:
            pipe.execute()
    for (shard, r, f), count in counted.items():
        pipe.hset(keys.counts(shard), keys.count_cell(TENANT, f"{r}{f}5", SEGMENT), count)
    for _member, cid, shard in sorted(top)[:records]:
        customer = Customer(TENANT, cid, {"o1": Order(now - 86_400_000, 1_000_000)})
        customer.published = Published(5, 5, 5, SEGMENT)
        customer.scored_at = now
        pipe.set(keys.customer(TENANT, cid, shard), customer.encode())
    pipe.execute()


def _median_ms(call: Any) -> float:
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def _one_size(store: Store, size: int, now: int) -> dict[str, float]:
    store.redis.flushall()
    say(f"  a segment of {size:,} members")
    _fill(store, size, 4 * PAGE, now)
    api = Api(Settings(), Profiles.builtin(), store, lambda: True, list)
    target = f"/v1/segments/{TENANT}/{SEGMENT}/customers?limit={PAGE}"
    response = api.handle(target)
    assert response.status == 200 and response.body.count(b'"customer_id"') == PAGE
    pages = store.segment_pages
    middle = segment_index.member(5 * 10**8, "")
    assert len(pages.page(TENANT, SEGMENT, "spend", PAGE, middle).customers) == PAGE
    return {
        "api_first_page_ms": _median_ms(lambda: api.handle(target)),
        "index_middle_page_ms": _median_ms(
            lambda: pages.page(TENANT, SEGMENT, "spend", PAGE, middle)
        ),
        "index_bytes_per_member": _index_bytes(store) / size,
    }


def _index_bytes(store: Store) -> int:
    """MEMORY USAGE of every set of the index (all of it: SAMPLES 0)."""
    sets = list(store.redis.scan_iter(match=b"rfm:{*}:m:*", count=1000))
    pipe = store.redis.pipeline(transaction=False)
    for key in sets:
        pipe.memory_usage(key, samples=0)
    return sum(pipe.execute())


def page_times(sizes: tuple[int, ...]) -> dict[str, Any]:
    now = wall_ms()
    with EmbeddedRedis() as server:
        store = Store(_client(server.url))
        out = {str(size): _one_size(store, size, now) for size in sizes}
        store.redis.close()
    return out


def run(cfg: Config) -> Section:
    say(f"  cost per event: {cfg.index_customers:,} customers x {cfg.index_orders} orders")
    cost = index_cost(cfg.index_customers, cfg.index_orders)
    small, large = cfg.scale_small, cfg.scale_big
    pages = page_times((small, large))
    section = Section("members", data={"cost": cost, "pages": pages})
    per = cost["per_event"]
    off, on = per["without the index"], per["with the index"]
    a, b = pages[str(small)], pages[str(large)]
    section.rows = [
        Row(
            f"segment index: worker CPU per event, {cost['events']:,} placed orders over "
            f"{cost['customers']:,} customers (`causes.apply_batch`, no broker): without / "
            "with the index",
            f"{off['cpu_us']:.1f} / {on['cpu_us']:.1f} µs",
            f"{ratio(on['cpu_us'] / off['cpu_us'])} of without",
        ),
        Row(
            "segment index: wall time per event (Redis included), without / with",
            f"{off['wall_us']:.1f} / {on['wall_us']:.1f} µs",
            f"{ratio(on['wall_us'] / off['wall_us'])} of without",
        ),
        Row(
            f"segment index: Redis bytes per customer ({cfg.index_orders} orders each), "
            "without / with",
            f"{off['bytes_per_customer']:,.0f} / {on['bytes_per_customer']:,.0f} B",
            f"+{on['bytes_per_customer'] - off['bytes_per_customer']:,.0f} B",
        ),
        Row(
            f"a page of {PAGE} (API: index, records, views), segment of {small:,} / {large:,}",
            f"{a['api_first_page_ms']:.2f} / {b['api_first_page_ms']:.2f} ms",
            f"{ratio(b['api_first_page_ms'] / a['api_first_page_ms'])} of {small:,}",
        ),
        Row(
            f"the index read of a page of {PAGE} half way down, {small:,} / {large:,}",
            f"{a['index_middle_page_ms']:.2f} / {b['index_middle_page_ms']:.2f} ms",
            f"{ratio(b['index_middle_page_ms'] / a['index_middle_page_ms'])} of {small:,}",
        ),
        Row(
            f"the index's Redis bytes per member and ordering, segment of {small:,} / {large:,}",
            f"{a['index_bytes_per_member']:.0f} / {b['index_bytes_per_member']:.0f} B",
        ),
    ]
    return section
