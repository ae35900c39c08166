"""Shared pieces of the benchmarks: knobs, a fresh broker and Redis, order events, a fast
producer, the real worker as a child process read through its /metrics, result rows.

Everything runs on a broker and a Redis started here on free loopback ports and stopped
after each scenario: never a shared broker, never a Redis on 6379. The broker is the one
BENCH_BROKER names: `kafka` (Apache Kafka, worker/embedded/apache_kafka: its jars fetched with Maven
on first use) or `tansu` (worker.embedded.local.Tansu, in-memory); unset, Apache Kafka where java
and mvn are on PATH, else Tansu (said in one line). Redis is worker.embedded.EmbeddedRedis.
Timings on a small shared machine are noisy, so each scenario reports ratios against a
baseline measured in the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from worker.embedded import (
    BrokerKind,
    EmbeddedRedis,
    Tansu,
    create_topics,
    free_port,
    start_broker,
)
from worker.embedded.apache_kafka import ApacheKafka, missing_tools
from worker.kafka.clients import produce
from worker.rules.events import ValidEvent
from worker.rules.instants import DAY_MS, iso, wall_ms
from worker.rules.profile import DEFAULT_TENANT
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state import keys
from worker.state.store import Store

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4  # of every orders topic, as in the integration tests
# The consumer settings the integration tests give the worker (tests/conftest.py); the
# broker's own needs (its client_config) are added over them, see Stack.kafka_config.
KAFKA_CONFIG = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
POLL_S = 0.25  # /metrics polling period while a worker runs (a scrape costs the worker CPU)
SETTLE_S = 0.5  # more than a loop turn of the worker (its consume() waits 0.2 s at most)
SEED = 20_260_101


# -- knobs ------------------------------------------------------------------------------


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").replace("_", "").replace(",", "")
    return int(raw) if raw else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


@dataclass(frozen=True, slots=True)
class Config:
    """Every size a run uses; BENCH_* environment variables override the defaults."""

    n: int  # events of the throughput scenarios (floor, worker, heavy, scale)
    heavy_customers: int
    heavy_timeout_s: float  # the heavy run stops there if it has not finished
    latency_rate: int  # events/s
    latency_s: float
    latency_fetch_wait_ms: int  # > 0: the worker's consumer gets this fetch.wait.max.ms
    memory_customers: int
    memory_orders: int
    grow_customers: int  # of those, how many then grow to grow_orders
    grow_orders: int
    scale_small: int
    scale_big: int
    sweep_population: int
    sweep_due: int
    churn_customers: int
    index_customers: int  # the segment index's cost per event (segment_index.py)
    index_orders: int
    worker_timeout_s: float  # a worker run that has not finished by then is a failure
    backlog_n: int  # records waiting on the orders topic before the worker starts
    backlog_short_customers: int  # short histories: many customers, few orders each
    backlog_long_customers: int  # long histories: few customers, many orders each
    # The worker's queued.max.messages.kbytes in each run; "default": left to the worker.
    backlog_queue_kbytes: tuple[str, ...]
    backlog_timeout_s: float

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            n=env_int("BENCH_N", 200_000),
            heavy_customers=env_int("BENCH_HEAVY_CUSTOMERS", 8),
            heavy_timeout_s=env_float("BENCH_HEAVY_TIMEOUT_S", 60.0),
            latency_rate=env_int("BENCH_LATENCY_RATE", 5_000),
            latency_s=env_float("BENCH_LATENCY_S", 30.0),
            latency_fetch_wait_ms=env_int("BENCH_LATENCY_FETCH_WAIT_MS", 0),
            memory_customers=env_int("BENCH_MEMORY_CUSTOMERS", 100_000),
            memory_orders=env_int("BENCH_MEMORY_ORDERS", 5),
            grow_customers=env_int("BENCH_GROW_CUSTOMERS", 10_000),
            grow_orders=env_int("BENCH_GROW_ORDERS", 25),
            scale_small=env_int("BENCH_SCALE_SMALL", 10_000),
            scale_big=env_int("BENCH_SCALE_CUSTOMERS", 1_000_000),
            sweep_population=env_int("BENCH_SWEEP_POPULATION", 1_000_000),
            sweep_due=env_int("BENCH_SWEEP_DUE", 10_000),
            churn_customers=env_int("BENCH_CHURN_CUSTOMERS", 20_000),
            index_customers=env_int("BENCH_INDEX_CUSTOMERS", 20_000),
            index_orders=env_int("BENCH_INDEX_ORDERS", 5),
            worker_timeout_s=env_float("BENCH_WORKER_TIMEOUT_S", 600.0),
            backlog_n=env_int("BENCH_BACKLOG_N", 1_000_000),
            backlog_short_customers=env_int("BENCH_BACKLOG_SHORT_CUSTOMERS", 432_000),
            backlog_long_customers=env_int("BENCH_BACKLOG_LONG_CUSTOMERS", 5_000),
            backlog_queue_kbytes=tuple(
                v.strip()
                for v in os.environ.get("BENCH_BACKLOG_QUEUE_KBYTES", "65536,default,4096").split(
                    ","
                )
                if v.strip()
            ),
            backlog_timeout_s=env_float("BENCH_BACKLOG_TIMEOUT_S", 1200.0),
        )


# -- the broker -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerChoice:
    kind: BrokerKind
    name: str  # as the broker class names itself: "Apache Kafka", "Tansu"
    fallback: str | None = None  # why not Apache Kafka, when BENCH_BROKER was unset

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "fallback_reason": self.fallback}


@functools.cache
def broker() -> BrokerChoice:
    """The broker of every scenario of this run: BENCH_BROKER (kafka|tansu); unset, Apache
    Kafka where java and mvn are on PATH, else Tansu (saying why, once)."""
    raw = os.environ.get("BENCH_BROKER", "").strip().lower()
    if raw == "kafka":
        return BrokerChoice("kafka", ApacheKafka.name)
    if raw == "tansu":
        return BrokerChoice("tansu", Tansu.name)
    if raw:
        raise SystemExit(f"BENCH_BROKER={raw!r}: expected kafka or tansu")
    reason = missing_tools()
    if reason is None:
        return BrokerChoice("kafka", ApacheKafka.name)
    say(f"broker: Tansu, not Apache Kafka: {reason} (BENCH_BROKER=tansu|kafka chooses)")
    return BrokerChoice("tansu", Tansu.name, reason)


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the final table."""

    measure: str
    figure: str
    ratio: str = ""


@dataclass(slots=True)
class Section:
    """What one scenario reports: table rows and the raw figures for the JSON file."""

    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def per_s(value: float) -> str:
    return f"{value:,.0f} events/s"


def ratio(value: float) -> str:
    return f"{value:.2f}"


# -- order events -------------------------------------------------------------------------


def event_json(
    event_id: str, order_id: str, customer_id: str, cents: int, occurred_ms: int
) -> bytes:
    """An order_placed record value, as upstream services publish it."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": "order_placed",
            "order_id": order_id,
            "customer_id": customer_id,
            "amount": f"{cents // 100}.{cents % 100:02d}",
            "currency": "EUR",
            "occurred_at": iso(occurred_ms),
        }
    )


def placed_orders(
    n: int,
    customer_ids: Sequence[str],
    *,
    prefix: str,
    first_ms: int,
    last_ms: int,
    seed: int = SEED,
) -> list[tuple[bytes, bytes]]:
    """n order_placed (key, value) records, round robin over `customer_ids`: event j is
    order j // len(customer_ids) of customer j % len(customer_ids), so a customer's orders
    are spread over the stream and their `occurred_at` increase (from first_ms to last_ms)."""
    return list(
        iter_placed_orders(
            n, customer_ids, prefix=prefix, first_ms=first_ms, last_ms=last_ms, seed=seed
        )
    )


def iter_placed_orders(
    n: int,
    customer_ids: Sequence[str],
    *,
    prefix: str,
    first_ms: int,
    last_ms: int,
    seed: int = SEED,
) -> Iterator[tuple[bytes, bytes]]:
    """placed_orders one at a time: a backlog of millions without a list of them."""
    rng = random.Random(seed)
    count = len(customer_ids)
    rounds = max(1, -(-n // count))
    step = (last_ms - first_ms) // rounds
    for j in range(n):
        customer_id = customer_ids[j % count]
        at = first_ms + (j // count) * step + rng.randrange(max(1, step))
        value = event_json(f"{prefix}-e{j}", f"{prefix}-o{j}", customer_id, rng_cents(rng), at)
        yield customer_id.encode(), value


def rng_cents(rng: random.Random) -> int:
    return rng.randrange(500, 40_000)  # 5.00 to 400.00


def customer_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-c{i}" for i in range(count)]


def partition_of(key: bytes) -> int:
    """The orders-topic partition of a key; set explicitly when producing, so a customer
    pre-loaded into Redis is filed under the partition its events will come from."""
    return zlib.crc32(key) % PARTITIONS


def produce_all(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Produce records (lingering, large batches) and wait for every ack. Returns the count."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "batch.size": 4_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "acks": "1",
        }
    )
    sent = 0
    for key, value in records:
        produce(producer, topic, key=key, value=value, partition=partition_of(key))
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise SystemExit(f"{left} records to {topic} were not acknowledged")
    return sent


def count_records(
    bootstrap: str,
    topic: str,
    expected: int,
    idle_s: float = 5.0,
    config: Mapping[str, str] | None = None,
) -> int:
    """Read a topic from its start until `expected` records were read or none came for
    `idle_s`; returns how many. `config`: the consumer properties the broker needs (its
    client_config). (Tansu's high watermark, what ListOffsets answers, is the base offset
    of the partition's last record batch, not the offset after its last record: its
    watermarks undercount, so the records are read, on either broker.)"""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"count-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            **(config or {}),
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    seen = 0
    last = time.monotonic()
    try:
        while seen < expected and time.monotonic() - last < idle_s:
            messages = [m for m in consumer.consume(5_000, 0.2) if not m.error()]
            if messages:
                seen += len(messages)
                last = time.monotonic()
    finally:
        consumer.close()
    return seen


# -- pre-loading Redis through the real commit path -------------------------------------------


def preload(
    store: Store,
    profiles: Profiles,
    customers: Sequence[str],
    *,
    orders_each: int,
    first_ms: int,
    last_ms: int,
    prefix: str,
    chunk: int = 20_000,
    seed: int = SEED,
) -> float:
    """Give every customer `orders_each` order_placed events through causes.apply_batch (the
    worker's own commit path, without Kafka), one order per customer per round, in chunks.
    The outbox entries the commits write are deleted as they come (no relay runs), and the
    legacy indexing pass is marked done. Returns seconds."""
    rng = random.Random(seed)
    started = time.perf_counter()
    step = (last_ms - first_ms) // max(1, orders_each)
    outboxes = [keys.outbox(s, p) for s in range(keys.SHARDS) for p in range(PARTITIONS)]
    now = wall_ms()
    for k in range(orders_each):
        for start in range(0, len(customers), chunk):
            items: list[tuple[ValidEvent, int]] = []
            for customer_id in customers[start : start + chunk]:
                event = ValidEvent(
                    event_id=f"{prefix}-{customer_id}-{k}",
                    type="order_placed",
                    order_id=f"{prefix}-{customer_id}-{k}",
                    customer_id=customer_id,
                    tenant=DEFAULT_TENANT,
                    amount=rng_cents(rng) * 100,  # money units are 1/10,000
                    occurred_at=first_ms + k * step + rng.randrange(max(1, step)),
                )
                items.append((event, partition_of(customer_id.encode())))
            result = causes.apply_batch(store, items, profiles, as_of_ms=now, now_ms=now)
            if result.failed or result.rejected:
                raise SystemExit(f"preload: {len(result.rejected)} event(s) raised")
            store.redis.unlink(*outboxes)
    store.marking.record_done(profiles.versions())
    return time.perf_counter() - started


# -- a fresh broker and Redis ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    orders: str
    actions: str
    dlq: str


class Stack:
    """A fresh broker (the run's choice, `broker()`) and Redis for one scenario, and the
    workers started on them."""

    def __init__(self) -> None:
        self._exit = ExitStack()
        self.workers: list[WorkerProcess] = []
        try:
            self.kafka: Any = self._exit.enter_context(start_broker(broker().kind))
            self.redis_server = self._exit.enter_context(EmbeddedRedis())
            self.redis: Any = redis.Redis.from_url(self.redis_server.url)
            self._exit.callback(self.redis.close)
            tmp = self._exit.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))
            self.logs = Path(tmp)
            self._exit.callback(self._kill_workers)
        except BaseException:
            self._exit.close()
            raise

    @property
    def bootstrap(self) -> str:
        return str(self.kafka.bootstrap)

    def topics(self, prefix: str) -> Topics:
        suffix = uuid.uuid4().hex[:8]
        t = Topics(
            f"{prefix}-orders-{suffix}", f"{prefix}-actions-{suffix}", f"{prefix}-dlq-{suffix}"
        )
        create_topics(self.bootstrap, {t.orders: PARTITIONS, t.actions: PARTITIONS, t.dlq: 1})
        return t

    def store(self) -> Store:
        return Store(self.redis)

    def kafka_config(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """The worker's RFM_KAFKA_CONFIG on this broker: KAFKA_CONFIG, then what the broker
        needs (Tansu: fetch.wait.max.ms=20; Apache Kafka: nothing), then `overrides`."""
        return {**KAFKA_CONFIG, **self.kafka.client_config, **(overrides or {})}

    def worker(
        self,
        topics: Topics,
        *,
        kafka: Mapping[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        processes: int = 1,
    ) -> WorkerProcess:
        """Start `python -m worker run` on fresh topics with a fresh consumer group;
        `kafka`: consumer properties over `kafka_config()`'s; `processes`: `--processes`,
        serving HTTP on consecutive ports."""
        port = free_port_run(processes)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RFM_")}
        env = {
            **inherited,
            "RFM_KAFKA_BOOTSTRAP": self.bootstrap,
            "RFM_KAFKA_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
            "RFM_KAFKA_CONFIG": orjson.dumps(self.kafka_config(kafka)).decode(),
            "RFM_ORDERS_TOPIC": topics.orders,
            "RFM_ACTIONS_TOPIC": topics.actions,
            "RFM_DLQ_TOPIC": topics.dlq,
            "RFM_REDIS_URL": self.redis_server.url,
            "RFM_HTTP_HOST": "127.0.0.1",
            "RFM_HTTP_PORT": str(port),
            **(extra_env or {}),
        }
        log = self.logs / f"worker-{len(self.workers)}.log"
        proc = WorkerProcess(env, port, log, processes)
        self.workers.append(proc)
        return proc

    def _kill_workers(self) -> None:
        for proc in self.workers:
            proc.kill()

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            for proc in self.workers:
                say(f"--- {proc.log_path.name} (last lines) ---\n{proc.tail()}")
        self.close()


# -- the worker and its /metrics --------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


@dataclass(frozen=True, slots=True)
class Metrics:
    """The samples of one /metrics scrape that the benchmarks read."""

    at: float  # time.monotonic() of the scrape
    applied: int
    duplicate: int
    dead_lettered: int
    outbox: int
    changes: int  # rfm_changes_total over every cause
    batches: int  # consumed batches (rfm_batch_size_count)
    batch_records: int  # records in them (rfm_batch_size_sum)
    batch_seconds: float  # time spent on them (rfm_batch_duration_seconds_sum)
    cpu_seconds: float = 0.0  # the worker process's CPU (process_cpu_seconds_total)

    @property
    def processed(self) -> int:
        return self.applied + self.duplicate

    @classmethod
    def parse(cls, at: float, text: str) -> Metrics:
        samples: dict[str, float] = {}
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                samples[match.group(1)] = float(match.group(2))
        return cls(
            at=at,
            applied=int(samples.get('rfm_events_total{outcome="applied"}', 0)),
            duplicate=int(samples.get('rfm_events_total{outcome="duplicate"}', 0)),
            dead_lettered=int(samples.get('rfm_events_total{outcome="dead_lettered"}', 0)),
            outbox=int(samples.get("rfm_outbox_size", 0)),
            changes=int(sum(v for k, v in samples.items() if k.startswith("rfm_changes_total{"))),
            batches=int(samples.get("rfm_batch_size_count", 0)),
            batch_records=int(samples.get("rfm_batch_size_sum", 0)),
            batch_seconds=samples.get("rfm_batch_duration_seconds_sum", 0.0),
            cpu_seconds=samples.get("process_cpu_seconds_total", 0.0),
        )

    def __add__(self, other: Metrics) -> Metrics:
        """Two processes' scrapes as one (`run --processes N`)."""
        return Metrics(
            at=max(self.at, other.at),
            **{
                f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(self)
                if f.name != "at"
            },
        )


@dataclass(slots=True)
class Trace:
    """A worker run seen through /metrics polled every POLL_S: events/s from the first
    scrape that shows an applied event to the first that shows all of them."""

    expected: int
    samples: list[Metrics] = field(default_factory=list)
    finished: bool = False  # every event processed and the outbox empty
    published: int = 0  # records read back from the actions topic afterwards

    @property
    def first(self) -> Metrics | None:
        return next((m for m in self.samples if m.processed > 0), None)

    @property
    def last(self) -> Metrics | None:
        done = next((m for m in self.samples if m.processed >= self.expected), None)
        return done or (self.samples[-1] if self.samples else None)

    @property
    def seconds(self) -> float:
        first, last = self.first, self.last
        return last.at - first.at if first and last else 0.0

    @property
    def events_per_s(self) -> float:
        first, last = self.first, self.last
        if first is None or last is None:
            return float("nan")
        return rate(last.processed - first.processed, last.at - first.at)

    @property
    def cpu_us_per_event(self) -> float:
        """The worker's CPU per event from the first to the last scrape of the run (its
        start-up before the first event is left out)."""
        first, last = self.first, self.last
        if first is None or last is None or last.processed <= first.processed:
            return float("nan")
        return (last.cpu_seconds - first.cpu_seconds) * 1e6 / (last.processed - first.processed)

    def window_rate(self, start: float, end: float) -> float:
        """events/s between two fractions (0..1) of the run's duration: how it evolves."""
        first, last = self.first, self.last
        if first is None or last is None:
            return float("nan")
        span = [m for m in self.samples if first.at <= m.at <= last.at]
        t0 = first.at + start * (last.at - first.at)
        t1 = first.at + end * (last.at - first.at)
        a = min(span, key=lambda m: abs(m.at - t0))
        b = min(span, key=lambda m: abs(m.at - t1))
        return rate(b.processed - a.processed, b.at - a.at)

    def summary(self) -> dict[str, Any]:
        last = self.samples[-1] if self.samples else None
        return {
            "events": self.expected,
            "processed": last.processed if last else 0,
            "applied": last.applied if last else 0,
            "duplicate": last.duplicate if last else 0,
            "dead_lettered": last.dead_lettered if last else 0,
            "changes_published": last.changes if last else 0,
            "actions_topic_records": self.published,
            "finished": self.finished,
            "seconds_first_to_last_applied": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "cpu_us_per_event": round(self.cpu_us_per_event, 1),
        }


class WorkerProcess:
    """`python -m worker run` as a child process, as an operator would run it."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path, processes: int = 1) -> None:
        self.env, self.port, self.log_path, self.processes = env, port, log_path, processes
        log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--processes", str(processes)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        log.close()

    def url(self, path: str, process: int = 0) -> str:
        return f"http://127.0.0.1:{self.port + process}{path}"

    def scrape(self) -> Metrics | None:
        """Every process's /metrics, added up (process i serves on port + i)."""
        total: Metrics | None = None
        for i in range(self.processes):
            at = time.monotonic()
            try:
                with urllib.request.urlopen(self.url("/metrics", i), timeout=5) as resp:
                    one = Metrics.parse(at, resp.read().decode())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None
            total = one if total is None else total + one
        return total

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /readyz answers 200: partitions assigned, Redis answering."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                statuses = []
                for i in range(self.processes):
                    with urllib.request.urlopen(self.url("/readyz", i), timeout=2) as resp:
                        statuses.append(resp.status)
                if all(s == 200 for s in statuses):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"the worker was not ready within {timeout:.0f}s:\n{self.tail()}")

    def follow(self, expected: int, timeout: float) -> Trace:
        """Poll /metrics every POLL_S until `expected` events are processed (applied or
        duplicate) and the outbox is empty, or until `timeout` seconds have passed.

        rfm_outbox_size is set once per loop turn, after the turn's events are counted, so
        a scrape may show the last events applied next to the previous turn's size: the
        empty outbox counts only in a scrape SETTLE_S after the last event was applied."""
        trace = Trace(expected)
        deadline = time.monotonic() + timeout
        next_poll = time.monotonic()
        done_at: float | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            sample = self.scrape()
            if sample is not None:
                trace.samples.append(sample)
                if sample.dead_lettered:
                    raise SystemExit(
                        f"{sample.dead_lettered} event(s) dead-lettered:\n{self.tail()}"
                    )
                if sample.processed >= expected and done_at is None:
                    done_at = sample.at
                if done_at is not None and sample.at - done_at >= SETTLE_S and not sample.outbox:
                    trace.finished = True
                    return trace
            next_poll += POLL_S
            time.sleep(max(0.0, next_poll - time.monotonic()))
        return trace

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (finish the batch in hand, relay, exit), SIGKILL if it takes too long."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"the worker exited with code {self.proc.returncode}:\n{self.tail()}")


class CpuSampler(threading.Thread):
    """CPU use (cores) of named processes, sampled every `period` seconds from /proc: which
    process takes the machine's cores as a run goes on. Samples nothing off Linux."""

    def __init__(self, pids: dict[str, int], period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pids, self.period = pids, period
        self.samples: list[dict[str, float]] = []  # per period: name -> cores used
        self.stopping = threading.Event()

    @staticmethod
    def cpu_seconds(pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime+stime

    def run(self) -> None:
        before = {name: self.cpu_seconds(pid) for name, pid in self.pids.items()}
        at = time.monotonic()
        while not self.stopping.wait(self.period):
            now = {name: self.cpu_seconds(pid) for name, pid in self.pids.items()}
            t = time.monotonic()
            self.samples.append(
                {
                    name: round((cur - was) / (t - at), 2)
                    for name, was in before.items()
                    if was is not None and (cur := now[name]) is not None
                }
            )
            before, at = now, t

    def mean(self, name: str, first: int, last: int | None) -> float | None:
        """Mean cores of `name` over samples[first:last]."""
        values = [s[name] for s in self.samples[first:last] if name in s]
        return round(sum(values) / len(values), 2) if values else None


def free_port_run(count: int) -> int:
    """A free loopback port followed by count - 1 free ones."""
    while True:
        port = free_port()
        taken = False
        for successor in range(port + 1, port + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", successor))
                except OSError:
                    taken = True
        if not taken:
            return port


def days_ago(days: float) -> int:
    return wall_ms() - int(days * DAY_MS)
