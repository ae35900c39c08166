"""Throughput of the real worker process against what consuming plus validation allows.

Every scenario runs on a fresh broker of the run's choice (BENCH_BROKER, see common.py:
Apache Kafka where it can run, else Tansu) and a fresh Redis.

- floor: a confluent_kafka Consumer reads N pre-produced order events (4 partitions,
  batches of 2,000, as the worker consumes) and validates each with
  `worker.rules.events.validate`, nothing else. The ceiling of a single-process Python worker on
  this machine and broker: what remains for the state, scoring and publishing is the gap
  to it.
- worker: `python -m worker run` (env as tests/conftest.py, with the consumer properties
  the broker needs) on the same N events, N placed orders over N/4 customers, fresh
  consumer group and fresh Redis. events/s from the first applied event to the last, read
  from /metrics polled every 250 ms; the run counts only once the outbox is empty (every
  change acknowledged by the broker). Reported against the floor.
- peer: a Quix Streams app doing the worker's job (quix_app.py, run by peer.py) on the same
  N events, after the worker: events/s, CPU per event, worker / peer; and a bare Quix
  per-customer aggregate. Skipped, saying why, where quixstreams is not installed.
- heavy: the same N events over 8 customers (N/8 orders each): the cost of a customer
  whose order history keeps growing, against the worker figure. Capped at
  BENCH_HEAVY_TIMEOUT_S (60 s): an unfinished run reports the rate over what it applied.
  Its events share batches (250 per customer in each), which spreads a customer's per-batch
  cost over them; so the same section also times, on its Redis, ONE new order alone in its
  batch (`causes.apply_batch`, no Kafka) for a customer holding 1, 1,000 and 5,000 orders:
  what a long history costs when its customer's events arrive one per batch.
- scale: the worker on N events hitting a population of 10,000 and of 1,000,000 customers
  (BENCH_SCALE_SMALL, BENCH_SCALE_CUSTOMERS). Each population is pre-loaded with one order
  per customer through `causes.apply_batch` (the commit path, without Kafka), then the
  worker applies N new orders: round robin over the 10,000 (N/10,000 each), a random
  sample of N of the 1,000,000 (one each). Does a large keyspace slow the worker down?

    .venv/bin/python tests/benchmarks/run.py --only throughput,heavy,scale
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import orjson
import peer
from common import (
    SEED,
    Config,
    Row,
    Section,
    Stack,
    Topics,
    Trace,
    count_records,
    customer_ids,
    days_ago,
    per_s,
    placed_orders,
    preload,
    produce_all,
    rate,
    ratio,
    say,
)
from pydantic import SecretStr

from worker.config import Settings
from worker.kafka import clients
from worker.rules.events import Rejection, ValidEvent, validate
from worker.rules.instants import wall_ms
from worker.rules.profile import DEFAULT_TENANT
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state.store import Store

BATCH = 2_000  # records per consume() call, as worker.services.consumer.BATCH_SIZE
HISTORIES = (1, 1_000, 5_000)  # orders held by the customer of a lone event (heavy section)


def floor(stack: Stack, topic: str, n: int, timeout: float = 120) -> dict[str, Any]:
    """Consume and validate n events from the start of `topic`, with the worker's own
    consumer settings on this broker and a fresh group. Timed from the first batch to the
    last event."""
    settings = Settings(
        kafka_bootstrap=stack.bootstrap,
        kafka_group=f"floor-{uuid.uuid4().hex[:8]}",
        kafka_config=SecretStr(orjson.dumps(stack.kafka_config()).decode()),
    )
    consumer = clients.consumer(settings)
    consumer.subscribe([topic])
    profiles = Profiles.builtin()
    seen = rejected = 0
    started: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while seen < n and time.monotonic() < deadline:
            messages = consumer.consume(BATCH, 0.2)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            now = wall_ms()
            for msg in messages:
                if msg.error():
                    continue
                rejected += isinstance(validate(msg.value(), profiles, now), Rejection)
                seen += 1
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
    if seen < n or rejected:
        raise SystemExit(f"floor: read {seen} of {n} events, {rejected} rejected")
    return {
        "events": seen,
        "seconds": round(elapsed, 3),
        "events_per_s": round(rate(seen, elapsed), 1),
    }


def worker_run(
    stack: Stack, topics: Topics, n: int, timeout: float, label: str, processes: int = 1
) -> Trace:
    """The real worker on a fresh group, followed until every event is applied and every
    change published (or `timeout`), then stopped."""
    say(f"  {label}: worker consuming {n:,} events")
    worker = stack.worker(topics, processes=processes)
    try:
        trace = worker.follow(n, timeout)
    finally:
        worker.kill()  # its state is thrown away: no need for a graceful stop
    if trace.finished:  # after the timing: every change counted is on the actions topic
        changes = trace.samples[-1].changes
        trace.published = count_records(
            stack.bootstrap, topics.actions, changes, config=stack.kafka.client_config
        )
        if trace.published < changes:
            raise SystemExit(
                f"{label}: {trace.published} records on the actions topic, {changes} changes"
            )
    say(
        f"  {label}: {trace.events_per_s:,.0f} events/s over {trace.seconds:.1f} s, "
        f"{trace.cpu_us_per_event:.1f} µs of worker CPU per event"
        + ("" if trace.finished else " (did not finish)")
    )
    return trace


def run_throughput(cfg: Config) -> Section:
    """floor and worker on the same N pre-produced events."""
    section = Section("throughput")
    n = cfg.n
    customers = customer_ids("t", max(1, n // 4))
    with Stack() as stack:
        topics = stack.topics("t")
        records = placed_orders(
            n, customers, prefix="t", first_ms=days_ago(60), last_ms=days_ago(1)
        )
        started = time.perf_counter()
        produce_all(stack.bootstrap, topics.orders, records)
        produce_s = time.perf_counter() - started
        del records
        say(f"  produced {n:,} events in {produce_s:.1f} s")
        fl = floor(stack, topics.orders, n)
        say(f"  floor: {fl['events_per_s']:,.0f} events/s")
        servers = peer.servers_cpu(stack)
        trace = worker_run(stack, topics, n, cfg.worker_timeout_s, "worker")
        servers = peer.servers_cpu(stack, since=servers)
        quix = peer.measure(stack, topics, n, cfg.worker_timeout_s, servers)
        stack.redis.flushall()  # the same events again, into an empty state
        two = worker_run(stack, topics, n, cfg.worker_timeout_s, "worker x2", processes=2)
        broker_name = stack.kafka.name
    if not trace.finished or not two.finished:
        raise SystemExit("worker: did not finish within BENCH_WORKER_TIMEOUT_S")
    w = trace.summary()
    w2 = two.summary()
    section.data = {
        "events": n,
        "customers": len(customers),
        "produce_seconds": round(produce_s, 2),
        "floor": fl,
        "worker": w,
        "worker_over_floor": round(w["events_per_s"] / fl["events_per_s"], 3),
        "worker_2_processes": w2,
        "two_over_one": round(w2["events_per_s"] / w["events_per_s"], 3),
        "changes_per_event": round(w["changes_published"] / n, 3),
        "peer": quix,
    }
    section.rows = [
        Row(
            f"floor: consume from {broker_name} + validate, {n:,} events, 4 partitions, "
            "batches of 2,000",
            per_s(fl["events_per_s"]),
        ),
        Row(
            f"worker: `rfm-worker run`, {n:,} placed orders over {len(customers):,} customers "
            f"({section.data['changes_per_event']:.2f} changes per event)",
            per_s(w["events_per_s"]),
            f"{ratio(section.data['worker_over_floor'])} of floor",
        ),
        Row(
            "worker CPU per event (the worker process's CPU seconds over the run / events)",
            f"{w['cpu_us_per_event']:.1f} µs",
        ),
        *peer.rows(quix, w, n),
        Row(
            "worker, `run --processes 2`: the same events into an empty state",
            per_s(w2["events_per_s"]),
            f"{ratio(section.data['two_over_one'])} of 1 process",
        ),
    ]
    return section


def history_cost(store: Store, profiles: Profiles, reps: int = 21) -> dict[int, float]:
    """Median ms of `causes.apply_batch` for one new order of a customer holding k orders
    (k in HISTORIES), alone in its batch; the customer is built in batches of BATCH."""
    now = wall_ms()
    first = days_ago(700)
    out: dict[int, float] = {}
    for k in HISTORIES:
        customer_id = f"history-{k}-{uuid.uuid4().hex[:6]}"

        def order(i: int, at: int, customer_id: str = customer_id) -> tuple[ValidEvent, int]:
            oid = f"{customer_id}-{i}"
            return (
                ValidEvent(
                    event_id=oid,
                    type="order_placed",
                    order_id=oid,
                    customer_id=customer_id,
                    tenant=DEFAULT_TENANT,
                    amount=1_234_500,
                    occurred_at=at,
                ),
                0,
            )

        step = (days_ago(2) - first) // k
        for start in range(0, k, BATCH):
            batch = [order(i, first + i * step) for i in range(start, min(k, start + BATCH))]
            causes.apply_batch(store, batch, profiles, as_of_ms=now, now_ms=now)
        times = []
        for i in range(k, k + reps):
            started = time.perf_counter()
            causes.apply_batch(store, [order(i, days_ago(1))], profiles, as_of_ms=now, now_ms=now)
            times.append(time.perf_counter() - started)
        out[k] = round(1000 * sorted(times)[reps // 2], 3)
    return out


def run_heavy(cfg: Config, worker_rate: float | None) -> Section:
    """N events over a handful of customers: their order maps grow to N/8 orders."""
    section = Section("heavy")
    n, count = cfg.n, cfg.heavy_customers
    customers = customer_ids("h", count)
    with Stack() as stack:
        topics = stack.topics("h")
        produce_all(
            stack.bootstrap,
            topics.orders,
            placed_orders(n, customers, prefix="h", first_ms=days_ago(300), last_ms=days_ago(1)),
        )
        trace = worker_run(stack, topics, n, cfg.heavy_timeout_s, "heavy")
        lone = history_cost(stack.store(), Profiles.builtin())
    s = trace.summary()
    s["timeout_s"] = cfg.heavy_timeout_s
    s["customers"] = count
    s["orders_per_customer_reached"] = s["processed"] // count
    s["events_per_s_first_10pct"] = round(trace.window_rate(0.0, 0.1), 1)
    s["events_per_s_last_10pct"] = round(trace.window_rate(0.9, 1.0), 1)
    if worker_rate:
        s["heavy_over_worker"] = round(s["events_per_s"] / worker_rate, 3)
    section.data = s
    trend = (
        f"first 10% of the run {s['events_per_s_first_10pct']:,.0f}/s, "
        f"last 10% {s['events_per_s_last_10pct']:,.0f}/s"
    )
    changes = s["changes_published"] / max(1, s["processed"])
    label = (
        f"heavy: {n:,} placed orders over {count} customers ({n // count:,} each; "
        f"{changes:.4f} changes per event; {trend})"
    )
    if not trace.finished:
        label = (
            f"heavy: {n:,} placed orders over {count} customers, STOPPED after "
            f"{cfg.heavy_timeout_s:.0f} s at {s['processed']:,} applied "
            f"({s['orders_per_customer_reached']:,} orders each; {trend})"
        )
    figure = per_s(s["events_per_s"])
    small, big = lone[HISTORIES[0]], lone[HISTORIES[-1]]
    s["lone_event_ms_by_orders_held"] = {str(k): ms for k, ms in lone.items()}
    s["lone_event_ms_largest_over_smallest"] = round(big / small, 2)
    section.rows = [
        Row(label, figure, f"{ratio(s['heavy_over_worker'])} of worker" if worker_rate else ""),
        Row(
            "history: one new order alone in its batch (`causes.apply_batch`, no Kafka) for a "
            f"customer holding {' / '.join(f'{k:,}' for k in HISTORIES)} orders (median of 21)",
            " / ".join(f"{lone[k]:.2f}" for k in HISTORIES) + " ms",
            f"{big / small:.1f}× for {HISTORIES[-1]:,} orders",
        ),
    ]
    return section


def run_scale(cfg: Config) -> Section:
    """The worker on N events over a small and a large pre-loaded population."""
    section = Section("scale")
    n = cfg.n
    rows: dict[int, dict[str, Any]] = {}
    profiles = Profiles.builtin()
    for population in (cfg.scale_small, cfg.scale_big):
        tag = f"s{population}"
        with Stack() as stack:  # a fresh broker and Redis for each population
            everyone = customer_ids(tag, population)
            say(f"  scale {population:,}: pre-loading one order per customer")
            load_s = preload(
                stack.store(),
                profiles,
                everyone,
                orders_each=1,
                first_ms=days_ago(200),
                last_ms=days_ago(190),
                prefix=f"{tag}-pre",
            )
            memory = int(stack.redis.info("memory")["used_memory"])
            # A random sample of n customers (one new order each) if there are enough,
            # else all of them round robin (n / population new orders each).
            hit = random.Random(SEED).sample(everyone, n) if n <= population else everyone
            topics = stack.topics(tag)
            produce_all(
                stack.bootstrap,
                topics.orders,
                placed_orders(n, hit, prefix=tag, first_ms=days_ago(20), last_ms=days_ago(1)),
            )
            del everyone, hit
            trace = worker_run(stack, topics, n, cfg.worker_timeout_s, f"scale {population:,}")
        if not trace.finished:
            raise SystemExit(f"scale {population:,}: did not finish")
        rows[population] = {
            **trace.summary(),
            "population": population,
            "customers_hit": min(n, population),
            "preload_seconds": round(load_s, 1),
            "redis_used_memory_after_preload": memory,
        }
    small, big = rows[cfg.scale_small], rows[cfg.scale_big]
    big_over_small = big["events_per_s"] / small["events_per_s"]
    section.data = {"small": small, "big": big, "big_over_small": round(big_over_small, 3)}
    section.rows = [
        Row(
            f"scale: {n:,} events over {cfg.scale_small:,} pre-loaded customers "
            f"({max(1, n // cfg.scale_small)} new orders each, "
            f"{small['changes_published'] / n:.2f} changes per event)",
            per_s(small["events_per_s"]),
        ),
        Row(
            f"scale: {n:,} events hitting {min(n, cfg.scale_big):,} of {cfg.scale_big:,} "
            f"pre-loaded customers ({big['changes_published'] / n:.2f} changes per event)",
            per_s(big["events_per_s"]),
            f"{ratio(big_over_small)} of {cfg.scale_small:,}",
        ),
    ]
    return section
