"""Latency from producing an order event to reading its `rfm.changed` on the actions topic.

The real worker (`python -m worker run`) runs on a fresh broker (the run's choice,
BENCH_BROKER: Apache Kafka where it can run, else Tansu; see common.py) and Redis; once it
is ready, this script produces order events at a steady rate for BENCH_LATENCY_S (30 s),
in ticks of 10 ms, each event for a new customer, so every event moves a score and yields
exactly one change. The produce wall time (ns) is part of the event_id, which the change
carries back as `cause_event_id`; a consumer in a thread reads the actions topic and notes
the wall time each batch of records arrives. Latency is the difference: produce -> broker
-> worker (validate, commit, outbox) -> relay -> broker -> reader, the path an automation
engine downstream sees. p50, p90, p99 and max over every event, after a warm-up at the
same rate that is not counted (10 s on Apache Kafka, whose JVM compiles its hot paths
under the first load; 1 s on Tansu); the p99 of the events produced in the first and the
last third of the run; the cores the worker, the broker and Redis used at its start and
end. At two rates, each on its own fresh broker and Redis:

- BENCH_LATENCY_RATE (5,000 events/s), the same on every machine;
- half of the worker's capacity, the events/s of the throughput scenario's worker run in
  the same `run.py` run: the latency of a worker with room to spare. Measured only when
  that scenario ran and succeeded (not with `--only latency`); the report says why not.

The test producer lingers 1 ms (the upstream services' batching is not the worker's
latency); the reader fetches with fetch.wait.max.ms=10 and a 5 ms consume() timeout, on
either broker. The worker keeps the settings it gets on this broker (tests/conftest.py's,
plus the broker's client_config: fetch.wait.max.ms=20 on Tansu, which holds a fetch until
that wait is over even when records arrive meanwhile; librdkafka's default of 500 ms on
Apache Kafka, which answers a fetch as soon as fetch.min.bytes are there), unless
BENCH_LATENCY_FETCH_WAIT_MS gives its consumer another fetch.wait.max.ms.

    .venv/bin/python tests/benchmarks/run.py --only latency
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import orjson
from common import (
    Config,
    CpuSampler,
    Row,
    Section,
    Stack,
    days_ago,
    event_json,
    partition_of,
    rng_cents,
    say,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from worker.kafka.clients import produce

TICK_S = 0.01
# Not counted: the first seconds at the same rate. A freshly started JVM (Apache Kafka)
# compiles its hot paths over the first few seconds of load; Tansu needs none of that.
WARMUP_S = {"kafka": 10.0, "tansu": 1.0}
DRAIN_S = 30.0  # after the last event: how long to wait for the last changes


class Reader(threading.Thread):
    """Reads the actions topic from its start; records arrival wall time per cause event."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"latency-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self.arrived: dict[str, int] = {}  # cause_event_id -> wall ns when read
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                # consume() returns when it has 1,000 records or after its timeout: keep
                # the timeout short, it delays the arrival time of what it got first
                messages = self.consumer.consume(1000, 0.005)
                at = time.time_ns()  # before parsing: parsing is the reader's cost
                for msg in messages:
                    value = msg.value()
                    if msg.error() or not value:
                        continue
                    cause = orjson.loads(value).get("cause_event_id")
                    if cause:
                        self.arrived[cause] = at
        finally:
            self.consumer.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


class Source:
    """Order events for new customers at a steady rate, the produce wall time (ns) in
    each event_id."""

    def __init__(self, bootstrap: str, topic: str, rate: int) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self.topic = topic
        self.per_tick = max(1, round(rate * TICK_S))
        self.occurred = days_ago(1)
        self.rng = random.Random(7)
        self.seq = 0
        self.produced: dict[str, int] = {}  # measured event_id -> produce wall ns

    def burst(self, measured: bool) -> None:
        for _ in range(self.per_tick):
            self.seq += 1
            customer = f"lat-c{self.seq}"
            ns = time.time_ns()
            event_id = f"lat-{self.seq}-{ns}"
            value = event_json(
                event_id, f"lat-o{self.seq}", customer, rng_cents(self.rng), self.occurred
            )
            key = customer.encode()
            produce(self.producer, self.topic, key=key, value=value, partition=partition_of(key))
            if measured:
                self.produced[event_id] = ns
        self.producer.poll(0)

    def paced(self, seconds: float, measured: bool) -> float:
        """A burst every TICK_S for `seconds`; returns the achieved duration."""
        start = time.monotonic()
        for tick in range(round(seconds / TICK_S)):
            time.sleep(max(0.0, start + tick * TICK_S - time.monotonic()))
            self.burst(measured)
        return time.monotonic() - start

    def close(self) -> None:
        self.producer.flush(30)
        del self.producer  # before the broker stops (else librdkafka logs the disconnect)


def measure(cfg: Config, rate: int, why: str, key: str) -> tuple[dict[str, Any], list[Row]]:
    """One run at `rate` events/s for cfg.latency_s on a fresh broker and Redis: its
    figures, and its table rows (`why` says where the rate comes from)."""
    with Stack() as stack:
        topics = stack.topics(f"lat-{key}")
        override = (
            {"fetch.wait.max.ms": str(cfg.latency_fetch_wait_ms)}
            if cfg.latency_fetch_wait_ms > 0
            else {}
        )
        fetch_wait = stack.kafka_config(override).get(
            "fetch.wait.max.ms", "librdkafka default (500)"
        )
        broker_name = stack.kafka.name
        worker = stack.worker(topics, kafka=override)
        worker.wait_ready()
        reader = Reader(stack.bootstrap, topics.actions, 4)
        reader.start()
        source = Source(stack.bootstrap, topics.orders, rate)
        say(f"  producing {rate:,} events/s ({why}) for {cfg.latency_s:.0f} s")
        source.paced(WARMUP_S[stack.kafka.kind], measured=False)
        cpu = CpuSampler(
            {
                "worker": worker.proc.pid,
                "broker": stack.kafka.pid,
                "redis": stack.redis_server.pid,
            }
        )
        cpu.start()
        produce_s = source.paced(cfg.latency_s, measured=True)
        cpu.stopping.set()
        source.close()
        produced = source.produced
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not all(e in reader.arrived for e in produced):
            time.sleep(0.2)
        reader.stopping.set()
        reader.join(10)
        final = worker.scrape()
        worker.stop()
    # (produce ns, latency ms) in produce order: the tail of the run against its start
    timed = sorted(
        (ns, (reader.arrived[e] - ns) / 1e6) for e, ns in produced.items() if e in reader.arrived
    )
    latencies = sorted(ms for _, ms in timed)
    missing = len(produced) - len(latencies)
    if not latencies:
        raise SystemExit(f"latency at {rate:,} events/s: no change arrived")
    third = max(1, len(timed) // 3)
    first_p99 = percentile(sorted(ms for _, ms in timed[:third]), 0.99)
    last_p99 = percentile(sorted(ms for _, ms in timed[-third:]), 0.99)
    # cores used over the first and the last 5 s (fewer in a short run): on Tansu the
    # broker's CPU climbs through the run (its in-memory storage costs more per fetch as a
    # topic grows) while the worker's does not
    edge = max(1, min(5, len(cpu.samples) // 3))
    cores = {
        name: {"first_5s": cpu.mean(name, 0, edge), "last_5s": cpu.mean(name, -edge, None)}
        for name in ("worker", "broker", "redis")
    }
    data: dict[str, Any] = {
        "rate_target": rate,
        "rate_from": why,
        "worker_fetch_wait_max_ms": fetch_wait,
        "duration_s": cfg.latency_s,
        "events": len(produced),
        "rate_achieved": round(len(produced) / produce_s, 1),
        "changes_received": len(latencies),
        "missing": missing,
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1], 2),
        "p99_first_third_ms": round(first_p99, 2),
        "p99_last_third_ms": round(last_p99, 2),
        "cores_used": cores,
        "cores_window_s": edge,
        "worker_dead_lettered": final.dead_lettered if final else None,
        # what the worker's process spent per event at this rate, in its (smaller) batches
        "worker_cpu_us_per_event": round(
            (cpu.mean("worker", 0, None) or 0.0) * 1e6 / (len(produced) / produce_s), 1
        ),
        # consume() returns 2,000 records or what came within its timeout: the batch sizes
        # say which, and the batch time is what processing adds
        "worker_mean_batch_records": round(final.batch_records / final.batches, 1)
        if final and final.batches
        else None,
        "worker_mean_batch_ms": round(1000 * final.batch_seconds / final.batches, 2)
        if final and final.batches
        else None,
    }
    say(f"  p50 {data['p50_ms']} ms, p99 {data['p99_ms']} ms, max {data['max_ms']} ms")
    what = (
        f"latency at {data['rate_achieved']:,.0f} events/s ({why}) for {cfg.latency_s:.0f} s, "
        "produce -> rfm.changed read"
    )
    if cfg.latency_fetch_wait_ms > 0:
        what += f" (worker fetch.wait.max.ms={cfg.latency_fetch_wait_ms})"
    if missing:
        what += f" ({missing:,} changes not seen within {DRAIN_S:.0f} s)"
    rows = [
        Row(f"{what}: p50", f"{data['p50_ms']:,.1f} ms"),
        Row(f"{what}: p99", f"{data['p99_ms']:,.1f} ms"),
        Row(f"{what}: max", f"{data['max_ms']:,.1f} ms"),
        Row(
            f"{what}: p99 of the events produced in the first / the last third of the run",
            f"{first_p99:,.1f} / {last_p99:,.1f} ms",
        ),
        Row(
            f"worker CPU per event in that run (batches of {data['worker_mean_batch_records']} "
            "records on average)",
            f"{data['worker_cpu_us_per_event']:.1f} µs",
        ),
        Row(
            f"cores used in the first / the last {edge} s of that run: worker; "
            f"broker ({broker_name}); Redis",
            "; ".join(
                f"{cores[n]['first_5s']} / {cores[n]['last_5s']}"
                for n in ("worker", "broker", "redis")
            ),
        ),
    ]
    return data, rows


def run(
    cfg: Config,
    capacity: float | None,
    absent: str = "",
    *,
    full_batch_cpu_us: float | None = None,
) -> Section:
    """Latency at BENCH_LATENCY_RATE, then at half the worker's `capacity` (events/s of the
    throughput scenario in the same run); `absent` says why when there is no capacity.
    With `full_batch_cpu_us` (the worker's CPU per event in batches of 2,000, same run),
    what small batches cost per event against it."""
    section = Section("latency")
    data, rows = measure(cfg, cfg.latency_rate, "BENCH_LATENCY_RATE", "fixed")
    section.data["fixed_rate"] = data
    section.rows += rows
    if full_batch_cpu_us:
        small = data["worker_cpu_us_per_event"] / full_batch_cpu_us
        data["small_over_full_batch_cpu"] = round(small, 2)
        section.rows.append(
            Row(
                "worker CPU per event: batches at BENCH_LATENCY_RATE / batches of 2,000",
                f"{data['worker_cpu_us_per_event']:.1f} / {full_batch_cpu_us:.1f} µs",
                f"{small:.2f}x",
            )
        )
    if capacity and capacity > 0:
        half = max(1, round(capacity / 2))
        data, rows = measure(
            cfg, half, f"half the worker's {capacity:,.0f} events/s measured above", "half"
        )
        data["worker_capacity_events_per_s"] = capacity
        section.data["half_capacity"] = data
        section.rows += rows
    else:
        say(f"  no latency at half the worker's capacity: {absent}")
        section.data["half_capacity"] = {"absent": absent}
        section.rows.append(Row("latency at half the worker's capacity", "not measured", absent))
    return section
