"""Benchmark: a decay sweep costs what is due, not the population.

Requirement: "Sweep cost follows the due customers, not the population: 10,000 due among
1,000,000 takes at most 2x the time of 10,000 due alone."

Two populations are stored in two Redis servers of this script's own (worker.embedded,
never a shared Redis): A holds only the due customers, B the same due customers (same
ids, same state blobs) among a large population whose due instants are all well after
the sweep instant T. Each is swept at T through the real code path (Sweeper.sweep_all:
due index reads, per-customer decay, compare-and-set commit.lua, outbox, counters) with
a no-op publisher. Between repetitions the due customers, the segment counters and the
outboxes are restored, so every repetition sweeps exactly the same customers, and each
sweep is checked to rescore every due customer once and publish one change for each.

The population is written directly (pipelined MSET/ZADD/HINCRBY, ~10,000 customers a
pipeline), not through the engine: each customer is a realistic state blob (3-6 orders,
scored and published at the build instant, in one of 4 partitions) filed in the due
index under `worker.rules.decay.next_due`. Non-due blobs are drawn from a pool of templates
(a blob does not contain the customer id), so building 1,000,000 takes seconds.

Timing is noisy on a small shared machine, so the result is a ratio against a baseline
measured in the same run: one untimed warm-up sweep each, then the timed repetitions of
A and B interleaved (alternating which goes first), medians compared. Exit status 1 when
median(B) / median(A) exceeds 2.0, else 0.

    .venv/bin/python tests/benchmarks/sweep.py [--population 1000000] [--due 10000]

(also run by `make bench`, tests/benchmarks/run.py, which puts its figures in the table)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.embedded import EmbeddedRedis
from worker.rules.customer import Customer, Published
from worker.rules.decay import next_due, rhythm
from worker.rules.instants import DAY_MS
from worker.rules.orders import Order
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles
from worker.rules.scoring import score
from worker.services.sweeper import Sweep, Sweeper, zsets
from worker.state import keys
from worker.state.store import Store

TENANT = "shop"
PARTITIONS = frozenset({0, 1, 2, 3})
SWEEP_AT = 1_767_225_600_000  # T: 2026-01-01T00:00:00Z
BUILT_AT = SWEEP_AT - DAY_MS  # the instant every stored customer was last scored
CHUNK = 10_000  # customers written per pipeline
TEMPLATES = 4_096  # distinct state blobs the non-due customers are drawn from
MAX_RATIO = 2.0
SEED = 20_260_101


@dataclass(frozen=True, slots=True)
class Stored:
    """One customer as written: its state blob, due zset and due instant."""

    key: bytes
    shard: int
    blob: bytes
    zset: bytes
    due: int
    count_field: str


@dataclass(frozen=True, slots=True)
class Template:
    blob: bytes
    partition: int
    due: int
    count_field: str


@dataclass(slots=True)
class Scenario:
    name: str
    population: int
    server: EmbeddedRedis
    client: Any  # redis.Redis; redis-py's annotations are too loose to help here
    store: Store
    build_s: float = 0.0
    used_memory: int = 0
    empty_memory: int = 0
    counts: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)


# -- building customers ---------------------------------------------------------------------


def build_customer(
    rng: random.Random, customer_id: str, last_order_at: int, partition: int, profile: Profile
) -> tuple[bytes, int | None, str]:
    """A customer with 3-6 orders, the last at `last_order_at`, as stored by a commit at
    BUILT_AT: (state blob, next due instant, segment-counter field)."""
    customer = Customer(TENANT, customer_id, partition=partition, scored_at=BUILT_AT)
    placed_at = last_order_at
    for _ in range(rng.randint(3, 6)):
        order_id = f"ord-{rng.getrandbits(48):012x}"
        amount = rng.randrange(50_000, 4_000_000)  # 5.00 to 400.00 in money units
        customer.orders[order_id] = Order(placed_at=placed_at, amount=amount)
        placed_at -= rng.randint(20, 90) * DAY_MS + rng.randrange(DAY_MS)
    agg = customer.aggregates()
    assert agg is not None
    rh = rhythm(agg, profile)
    if rh is not None and rh.overdue_at <= SWEEP_AT:
        customer.alerted = agg.last_order_at  # that silence was alerted already
    current = score(agg, BUILT_AT, profile)
    customer.published = Published(current.r, current.f, current.m, current.segment)
    due = next_due(agg, profile, BUILT_AT, customer.alerted)
    field_ = keys.count_cell(TENANT, current.rfm, current.segment)
    return customer.encode(), due, field_


def build_due(rng: random.Random, count: int, profile: Profile) -> list[Stored]:
    """Customers whose last order was 31 days before T: R drops from 5 to 4 at T."""
    out: list[Stored] = []
    for i in range(count):
        customer_id = f"c{i:07d}"
        last = SWEEP_AT - 31 * DAY_MS - rng.randrange(DAY_MS)
        partition = rng.choice(sorted(PARTITIONS))
        blob, due, field_ = build_customer(rng, customer_id, last, partition, profile)
        agg = Customer.decode(TENANT, customer_id, blob).aggregates()
        assert agg is not None and score(agg, BUILT_AT, profile).r == 5
        assert score(agg, SWEEP_AT, profile).r == 4
        assert due is not None and BUILT_AT < due <= SWEEP_AT, due
        shard = keys.shard_of(TENANT, customer_id)
        key = keys.customer(TENANT, customer_id, shard)
        out.append(Stored(key, shard, blob, keys.due(shard, partition), due, field_))
    return out


def build_templates(rng: random.Random, profile: Profile) -> list[Template]:
    """Customers last seen 0-360 days before the build, due at least a day after T."""
    out: list[Template] = []
    while len(out) < TEMPLATES:
        last = BUILT_AT - rng.randrange(361 * DAY_MS)
        partition = rng.choice(sorted(PARTITIONS))
        blob, due, field_ = build_customer(rng, "template", last, partition, profile)
        if due is not None and due > SWEEP_AT + DAY_MS:
            out.append(Template(blob, partition, due, field_))
    return out


# -- writing and restoring ------------------------------------------------------------------


def write(client: Any, customers: list[Stored]) -> None:
    """One pipeline: an MSET per shard, a ZADD per due zset, the segment counters."""
    states: dict[int, dict[bytes, bytes]] = {}
    due: dict[bytes, dict[bytes, int]] = {}
    counts: Counter[tuple[int, str]] = Counter()
    for c in customers:
        states.setdefault(c.shard, {})[c.key] = c.blob
        due.setdefault(c.zset, {})[c.key] = c.due
        counts[(c.shard, c.count_field)] += 1
    pipe = client.pipeline(transaction=False)
    for mapping in states.values():
        pipe.mset(mapping)
    for zset, members in due.items():
        pipe.zadd(zset, members)
    for (shard, field_), n in counts.items():
        pipe.hincrby(keys.counts(shard), field_, n)
    pipe.execute()


def populate(
    scenario: Scenario, due: list[Stored], templates: list[Template], rng: random.Random
) -> None:
    client = scenario.client
    client.flushall()
    scenario.empty_memory = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    # No marking pass (it would SCAN everything): the stored customers are up to date.
    Store(client).marking.record_done(Profiles.builtin().versions())
    for start in range(0, len(due), CHUNK):
        write(client, due[start : start + CHUNK])
    for start in range(len(due), scenario.population, CHUNK):
        chunk: list[Stored] = []
        for i in range(start, min(start + CHUNK, scenario.population)):
            customer_id = f"c{i:07d}"
            t = templates[rng.randrange(TEMPLATES)]
            shard = keys.shard_of(TENANT, customer_id)
            key = keys.customer(TENANT, customer_id, shard)
            chunk.append(
                Stored(key, shard, t.blob, keys.due(shard, t.partition), t.due, t.count_field)
            )
        write(client, chunk)
    scenario.build_s = time.perf_counter() - started
    scenario.used_memory = int(client.info("memory")["used_memory"])
    if int(client.dbsize()) < scenario.population:
        raise SystemExit(f"{scenario.name}: expected {scenario.population} customers stored")
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.SHARDS):
        pipe.hgetall(keys.counts(shard))
    scenario.counts = {
        keys.counts(shard): cells for shard, cells in enumerate(pipe.execute()) if cells
    }


def restore(scenario: Scenario, due: list[Stored]) -> None:
    """Put the due customers, the segment counters and the (empty) outboxes back as built."""
    client = scenario.client
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.SHARDS):
        pipe.delete(keys.counts(shard), *(keys.outbox(shard, p) for p in sorted(PARTITIONS)))
    for key, cells in scenario.counts.items():
        pipe.hset(key, mapping=cells)
    pipe.execute()
    for start in range(0, len(due), CHUNK):
        states: dict[int, dict[bytes, bytes]] = {}
        zadds: dict[bytes, dict[bytes, int]] = {}
        for c in due[start : start + CHUNK]:
            states.setdefault(c.shard, {})[c.key] = c.blob
            zadds.setdefault(c.zset, {})[c.key] = c.due
        pipe = client.pipeline(transaction=False)
        for mapping in states.values():
            pipe.mset(mapping)
        for zset, members in zadds.items():
            pipe.zadd(zset, members)
        pipe.execute()


# -- sweeping -------------------------------------------------------------------------------


def timed_sweep(scenario: Scenario, profiles: Profiles, expected: int) -> float:
    """One full sweep at T; checks it rescored every due customer once. Seconds."""
    store = scenario.store
    due_zsets = zsets(PARTITIONS)
    backlog = store.due.backlog(due_zsets, SWEEP_AT)
    if backlog != expected:
        raise SystemExit(f"{scenario.name}: {backlog} customers due at T, expected {expected}")
    sweeper = Sweeper(store, profiles, interval=60, clock=lambda: SWEEP_AT, now_ms=lambda: SWEEP_AT)
    started = time.perf_counter()
    sweep: Sweep = sweeper.sweep_all(set(PARTITIONS), SWEEP_AT, publish=lambda committed: None)
    elapsed = time.perf_counter() - started
    left = store.due.backlog(due_zsets, SWEEP_AT)
    if (sweep.customers, sweep.changes, sweep.overdue, left) != (expected, expected, 0, 0):
        raise SystemExit(
            f"{scenario.name}: sweep rescored {sweep.customers} customer(s), published "
            f"{sweep.changes} change(s) and {sweep.overdue} overdue alert(s), left {left} "
            f"due; expected {expected}, {expected}, 0 and 0"
        )
    return elapsed


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=1_000_000, help="customers in B")
    parser.add_argument("--due", type=int, default=10_000, help="customers due at T")
    parser.add_argument("--repeat", type=int, default=5, help="timed sweeps per scenario")
    args = parser.parse_args(argv)
    if not 1 <= args.due <= args.population or args.population >= 10_000_000:
        parser.error("need 1 <= --due <= --population < 10,000,000")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def open_scenario(name: str, population: int) -> Scenario:
    server = EmbeddedRedis()
    client = redis.Redis.from_url(server.url)
    return Scenario(name, population, server, client, Store(client))


def main(argv: list[str] | None = None) -> int:
    figures = run(parse_args(argv))
    return 0 if figures["ratio"] <= MAX_RATIO else 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build both populations, sweep them, print the report; returns the figures (also
    used by tests/benchmarks/run.py)."""
    profiles = Profiles.builtin()
    profile = profiles.default
    rng = random.Random(SEED)
    due = build_due(rng, args.due, profile)
    templates = build_templates(rng, profile)
    scenarios = [
        open_scenario("A: due alone", args.due),
        open_scenario("B: due among population", args.population),
    ]
    try:
        for scenario in scenarios:
            populate(scenario, due, templates, rng)
        for scenario in scenarios:  # warm-up: connections, script cache, allocator
            timed_sweep(scenario, profiles, args.due)
            restore(scenario, due)
        for rep in range(args.repeat):
            for scenario in scenarios if rep % 2 == 0 else scenarios[::-1]:
                scenario.times.append(timed_sweep(scenario, profiles, args.due))
                restore(scenario, due)
    finally:
        for scenario in scenarios:
            scenario.client.close()
            scenario.server.stop()
    return report(scenarios, args.due, args.repeat, due)


def report(
    scenarios: list[Scenario], due: int, repeat: int, stored: list[Stored]
) -> dict[str, Any]:
    b = scenarios[1]
    medians = [statistics.median(s.times) for s in scenarios]
    ratio = medians[1] / medians[0]
    print(
        f"sweep at T of {due:,} due customers; {repeat} timed sweeps per scenario "
        "(after one warm-up), A and B interleaved"
    )
    header = ("scenario", "population", "build s", "median s", "min s", "due/s (median)")
    rows = [
        (
            s.name,
            f"{s.population:,}",
            f"{s.build_s:.2f}",
            f"{m:.3f}",
            f"{min(s.times):.3f}",
            f"{due / m:,.0f}",
        )
        for s, m in zip(scenarios, medians, strict=True)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells))
    for s in scenarios:
        print(f"  {s.name}: " + " ".join(f"{t:.3f}" for t in s.times) + " s")
    net = b.used_memory - b.empty_memory
    blob = statistics.fmean(len(c.blob) for c in stored)
    print(
        f"Redis used_memory, B: {b.used_memory / 2**20:,.1f} MiB = "
        f"{b.used_memory / b.population:,.0f} B per customer "
        f"({net / b.population:,.0f} B net of an empty server; due blobs {blob:.0f} B)"
    )
    verdict = "OK" if ratio <= MAX_RATIO else "FAIL: above the limit"
    print(f"ratio B/A (medians): {ratio:.2f} (limit {MAX_RATIO:.1f}) {verdict}")
    return {
        "due": due,
        "repeat": repeat,
        "scenarios": [
            {
                "name": s.name,
                "population": s.population,
                "build_s": round(s.build_s, 2),
                "times_s": [round(t, 4) for t in s.times],
                "median_s": round(m, 4),
                "due_per_s": round(due / m, 1),
            }
            for s, m in zip(scenarios, medians, strict=True)
        ],
        "redis_bytes_per_customer_b": round(b.used_memory / b.population, 1),
        "redis_net_bytes_per_customer_b": round(net / b.population, 1),
        "ratio": round(ratio, 3),
        "limit": MAX_RATIO,
    }


if __name__ == "__main__":
    sys.exit(main())
