"""Ten million customers on one box: what the base's size costs (docs/performance.md, "Ten
million customers").

    BENCH_TENMILLION_CUSTOMERS=10000000 .venv/bin/python tests/benchmarks/run.py --only tenmillion

Opt-in (not part of a plain `make bench`): at 10,000,000 customers it takes 20-35 minutes
on the 2-core machine of docs/performance.md and Redis needs ~8 GB, so it checks
MemAvailable first. BENCH_TENMILLION_CUSTOMERS (default 10,000,000)
sizes it down to try it.

On a fresh broker and Redis, all through the software as an operator runs it:

1. The base: one placed order per customer, its instant uniform over the last SPAN_DAYS
   days, produced onto the orders topic (the benchmarks' fast producer), then
   `rfm-worker rebuild --yes` replays the topic into the empty Redis: the state is what the
   worker writes. Reported: the rebuild's events/s (its whole run, start-up included) and
   peak RSS; Redis `used_memory` per customer, with the segment index's and the due
   index's share (MEMORY USAGE of their keys, named, not scanned).
2. The worker on that base: `rfm-worker run` (the rebuild's consumer group, so it resumes
   at its end), BENCH_TENMILLION_EVENTS new orders of random customers (1% of the base,
   at most 100,000: few enough not to move the day's sweep much); its
   time to /readyz, events/s, and RSS (peak and after). Then, the worker idle, ROUNDS
   rounds CACHE_S apart (the customers collector reads the counters again each time):
   GET /metrics and GET /v1/matrix, timed from this process.
3. `rfm-worker export` (JSON lines) and `rfm-worker members` of the largest segment, each
   streamed fully into this process (lines counted), the command's wall and CPU time and
   its peak RSS (VmHWM): constant memory means the same peak at any base.
4. A day's decay sweep: the customers due within a day of the end of the run (their R
   drops at 30, 90, 180 or 365 days of silence: ~1% of this base a day), swept at that
   instant through the worker's code (Sweeper.sweep_all, as tests/benchmarks/sweep.py),
   in this process, changes not published: wall time, this process's CPU, Redis's CPU.
5. A full SCAN of the keyspace (1,000 keys a call), for reference: what every path that
   SCANs pays at this base.
"""

from __future__ import annotations

import os
import random
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
from backlog_memory import MemorySampler
from common import (
    ROOT,
    SEED,
    Row,
    Section,
    Stack,
    Topics,
    env_int,
    event_json,
    per_s,
    produce_all,
    rng_cents,
    say,
)

from worker.rules.instants import DAY_MS, wall_ms
from worker.rules.profile import DEFAULT_TENANT
from worker.rules.profiles import Profiles
from worker.services.sweeper import Sweeper, zsets
from worker.state import keys
from worker.state.segment_index import ORDERINGS
from worker.state.store import Store

SPAN_DAYS = 400  # last orders spread over this many days: every R level is populated
ROUNDS = 5  # /metrics and /v1/matrix reads
CACHE_S = 5.2  # over CustomersCollector's ttl: each scrape reads the counters again
PARTITIONS = range(4)  # common.PARTITIONS
# Redis bytes per customer to expect at the peak (one order each, the index included) and the room
# left for the broker, the worker and the page cache: the run refuses to start below.
EXPECTED_BYTES = 1_000  # Redis per customer at the rebuild's peak (~810 B), and a margin
HEADROOM = 3 << 30
MB = 1 << 20


def customer_id(i: int) -> str:
    return f"t-c{i}"


def base_orders(count: int, now: int) -> Iterator[tuple[bytes, bytes]]:
    """One placed order per customer, its instant uniform over the last SPAN_DAYS days."""
    rng = random.Random(SEED)
    for i in range(count):
        cid = customer_id(i)
        at = now - 3_600_000 - rng.randrange(SPAN_DAYS * DAY_MS)
        yield cid.encode(), event_json(f"t-e{i}", f"t-o{i}", cid, rng_cents(rng), at)


def new_orders(count: int, base: int, now: int) -> Iterator[tuple[bytes, bytes]]:
    """`count` new orders of random customers of the base, within the last hour."""
    rng = random.Random(SEED + 1)
    for j in range(count):
        cid = customer_id(rng.randrange(base))
        at = now - rng.randrange(3_600_000)
        yield cid.encode(), event_json(f"t-n{j}", f"t-n{j}", cid, rng_cents(rng), at)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def command_env(stack: Stack, topics: Topics, group: str) -> dict[str, str]:
    """The RFM_* environment of a command on this stack (as Stack.worker gives a worker)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RFM_")}
    return {
        **inherited,
        "RFM_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RFM_KAFKA_GROUP": group,
        "RFM_KAFKA_CONFIG": orjson.dumps(stack.kafka_config()).decode(),
        "RFM_ORDERS_TOPIC": topics.orders,
        "RFM_ACTIONS_TOPIC": topics.actions,
        "RFM_DLQ_TOPIC": topics.dlq,
        "RFM_REDIS_URL": stack.redis_server.url,
    }


def command(env: dict[str, str], *args: str) -> dict[str, Any]:
    """`python -m worker ARGS`, its standard output read and its lines counted here: wall
    and CPU seconds, peak RSS (VmHWM), lines and bytes written, the last line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sampler = MemorySampler(proc.pid)
    sampler.start()
    lines = size = 0
    tail = b""
    assert proc.stdout is not None and proc.stderr is not None
    while chunk := proc.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
        size += len(chunk)
        tail = (tail + chunk)[-4096:]
    errors = proc.stderr.read()
    code = proc.wait()
    wall = time.perf_counter() - started
    sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"{' '.join(args)} exited {code}: {errors.decode()[-2000:]}")
    peak = max((hwm for _at, _rss, hwm in sampler.samples), default=0)
    return {
        "seconds": round(wall, 1),
        "cpu_seconds": round(
            (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 1
        ),
        # ru_maxrss of the children is the largest of any child: VmHWM is this one's
        "peak_rss_mb": round(peak / 1024, 1),
        "lines": lines,
        "bytes": size,
        "last_line": tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode(errors="replace")[:300],
    }


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def memory_of(client: Any, names: list[bytes]) -> int:
    """MEMORY USAGE of every element of each key (SAMPLES 0), a key per call: a set of
    ~150,000 members takes a while, longer than the client's default 5 s for them all."""
    return sum(client.memory_usage(name, samples=0) or 0 for name in names)


def redis_memory(client: Any, url: str, empty: int, customers: int) -> dict[str, Any]:
    """used_memory per customer, and the shares of the segment index and the due index;
    and the peak, over the rebuild. After the objects UNLINK left to free (the rebuild's
    outboxes) are freed: used_memory counts them until then."""
    deadline = time.monotonic() + 300
    while int(client.info("memory")["lazyfree_pending_objects"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    info = client.info("memory")
    used = int(info["used_memory"])
    codes = ORDERINGS.values()
    slow = redis.Redis.from_url(url, socket_timeout=None)
    try:
        index = memory_of(
            slow,
            [keys.segment_index(s, DEFAULT_TENANT, c) for s in range(keys.SHARDS) for c in codes],
        )
        due = memory_of(slow, [keys.due(s, p) for s in range(keys.SHARDS) for p in PARTITIONS])
    finally:
        slow.close()
    return {
        "used_memory": used,
        "used_memory_empty": empty,
        "bytes_per_customer": round((used - empty) / customers, 1),
        "used_memory_peak": int(info["used_memory_peak"]),
        "peak_bytes_per_customer": round((int(info["used_memory_peak"]) - empty) / customers, 1),
        "used_memory_rss": int(info["used_memory_rss"]),
        "segment_index_bytes_per_customer": round(index / customers, 1),
        "due_index_bytes_per_customer": round(due / customers, 1),
        "keys": int(client.dbsize()),
    }


def timed_get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read()
    return time.perf_counter() - started, body


def worker_on_base(
    stack: Stack, topics: Topics, group: str, base: int, events: int, timeout: float
) -> dict[str, Any]:
    """The worker on the base: ready time, new orders, RSS; then /metrics and /v1/matrix."""
    worker = stack.worker(topics, extra_env={"RFM_KAFKA_GROUP": group})
    sampler = MemorySampler(worker.proc.pid)
    sampler.start()
    started = time.perf_counter()
    try:
        worker.wait_ready(timeout=300)
        ready_s = time.perf_counter() - started
        ready_rss = sampler.samples[-1][1] if sampler.samples else 0
        produce_all(stack.bootstrap, topics.orders, new_orders(events, base, wall_ms()))
        trace = worker.follow(events, timeout)
        if not trace.finished:
            raise SystemExit(f"the worker did not take the {events:,} new orders in {timeout} s")
        metrics_s, matrix_s = [], []
        matrix: dict[str, Any] = {}
        for _ in range(ROUNDS):
            time.sleep(CACHE_S)
            metrics_s.append(timed_get(worker.url("/metrics"))[0])
            took, body = timed_get(worker.url(f"/v1/matrix?tenant={DEFAULT_TENANT}"))
            matrix_s.append(took)
            matrix = orjson.loads(body)
        rss = sampler.samples[-1][1]
    finally:
        sampler.stop()
        worker.stop()
    peak = max(hwm for _at, _rss, hwm in sampler.samples)
    return {
        **trace.summary(),
        "ready_seconds": round(ready_s, 1),
        "rss_ready_mb": round(ready_rss / 1024, 1),
        "rss_after_mb": round(rss / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "metrics_ms": [round(1e3 * t, 1) for t in metrics_s],
        "metrics_ms_median": round(1e3 * statistics.median(metrics_s), 1),
        "matrix_ms": [round(1e3 * t, 1) for t in matrix_s],
        "matrix_ms_median": round(1e3 * statistics.median(matrix_s), 1),
        "matrix": matrix,
    }


def day_sweep(store: Store, profiles: Profiles) -> dict[str, Any]:
    """Every customer due within a day from now, swept at that instant (not published)."""
    at = wall_ms() + DAY_MS
    due_zsets = zsets(PARTITIONS)
    due = store.due.backlog(due_zsets, at)
    sweeper = Sweeper(store, profiles, interval=60, clock=lambda: at, now_ms=lambda: at)
    cpu, redis_before = time.process_time(), redis_cpu(store.redis)
    commands = store.redis.info("commandstats")
    started = time.perf_counter()
    sweep = sweeper.sweep_all(set(PARTITIONS), at, publish=lambda committed: None)
    wall = time.perf_counter() - started
    cpu, redis_used = time.process_time() - cpu, redis_cpu(store.redis) - redis_before
    # Where Redis's time went: microseconds per command over the sweep (the scripts'
    # commands are counted inside their EVALSHA and on their own).
    spent = {
        name: stats["usec"] - commands.get(name, {}).get("usec", 0)
        for name, stats in store.redis.info("commandstats").items()
    }
    left = store.due.backlog(due_zsets, at)
    if sweep.customers != due or left:
        raise SystemExit(f"day sweep: {due} due, {sweep.customers} rescored, {left} left")
    return {
        "due": due,
        "rescored": sweep.customers,
        "changes": sweep.changes,
        "overdue": sweep.overdue,
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "redis_cpu_seconds": round(redis_used, 2),
        "due_per_s": round(due / wall, 1) if wall else None,
        "redis_usec_by_command": dict(sorted(spent.items(), key=lambda kv: -kv[1])[:8]),
    }


def full_scan(client: Any) -> dict[str, Any]:
    started = time.perf_counter()
    seen = sum(1 for _ in client.scan_iter(count=1000))
    return {"keys": seen, "seconds": round(time.perf_counter() - started, 1)}


def run(_cfg: Any) -> Section:
    customers = env_int("BENCH_TENMILLION_CUSTOMERS", 10_000_000)
    events = env_int("BENCH_TENMILLION_EVENTS", max(1_000, min(100_000, customers // 100)))
    timeout = float(env_int("BENCH_TENMILLION_TIMEOUT_S", 3600))
    need, free = customers * EXPECTED_BYTES + HEADROOM, mem_available()
    if free < need:
        raise SystemExit(
            f"tenmillion: {customers:,} customers need ~{need / 2**30:.1f} GiB free, "
            f"{free / 2**30:.1f} GiB available (BENCH_TENMILLION_CUSTOMERS sizes it)"
        )
    profiles = Profiles.builtin()
    data: dict[str, Any] = {"customers": customers, "new_orders": events, "span_days": SPAN_DAYS}
    with Stack() as stack:
        client = stack.redis
        empty = int(client.info("memory")["used_memory"])
        topics = stack.topics("t")
        group = f"bench-{uuid.uuid4().hex[:8]}"
        env = command_env(stack, topics, group)
        started = time.perf_counter()
        produce_all(stack.bootstrap, topics.orders, base_orders(customers, wall_ms()))
        data["produce_seconds"] = round(time.perf_counter() - started, 1)
        say(f"  {customers:,} orders produced in {data['produce_seconds']:.0f} s; rebuild")
        rebuilt = command(env, "rebuild", "--yes")
        rebuilt["events_per_s"] = round(customers / rebuilt["seconds"], 1)
        data["rebuild"] = rebuilt
        note(data, "rebuild")
        data["redis"] = redis_memory(client, stack.redis_server.url, empty, customers)
        if data["redis"]["keys"] < customers:
            raise SystemExit(f"rebuild left {data['redis']['keys']:,} keys")
        note(data, "redis")
        data["worker"] = worker_on_base(stack, topics, group, customers, events, timeout)
        data["worker"].pop("matrix")
        note(data, "worker")
        # The counters once the worker stopped (its sweeper may have moved a few since
        # the matrix was read): what the members stream must match.
        counts = stack.store().reads.segment_counts()
        segments = {seg: n for (_tenant, seg), n in counts.items()}
        biggest = max(segments, key=lambda name: segments[name])
        data["segments"] = segments
        say(f"  export, then members of {biggest} ({segments[biggest]:,})")
        data["export"] = command(env, "export")
        data["members"] = {**command(env, "members", "--segment", biggest), "segment": biggest}
        data["members"]["segment_size"] = segments[biggest]
        if data["export"]["lines"] != customers or data["members"]["lines"] != segments[biggest]:
            raise SystemExit(
                f"export wrote {data['export']['lines']:,} lines for {customers:,} customers, "
                f"members {data['members']['lines']:,} for {segments[biggest]:,}"
            )
        note(data, "export", "members")
        data["sweep"] = day_sweep(stack.store(), profiles)
        data["scan"] = full_scan(client)
        note(data, "sweep", "scan")
    return Section("tenmillion", rows=rows(data), data=data)


def note(data: dict[str, Any], *names: str) -> None:
    """Figures on standard error as soon as measured: a later step that fails keeps them."""
    for name in names:
        say(f"    {name}: {orjson.dumps(data.get(name)).decode()}")


def rows(d: dict[str, Any]) -> list[Row]:
    n = d["customers"]
    r, w, e, m, s = d["redis"], d["worker"], d["export"], d["members"], d["sweep"]
    b = d["rebuild"]
    return [
        Row(
            f"{n:,} customers: `rfm-worker rebuild --yes` of {n:,} placed orders (one per "
            f"customer; {b['seconds']:,.0f} s, peak RSS {b['peak_rss_mb']:.0f} MB)",
            per_s(b["events_per_s"]),
        ),
        Row(
            f"{n:,} customers: Redis used_memory per customer (one order each; of it the "
            "segment index / the due index)",
            f"{r['bytes_per_customer']:,.0f} B",
            f"{r['segment_index_bytes_per_customer']:,.0f} / "
            f"{r['due_index_bytes_per_customer']:,.0f} B",
        ),
        Row(
            f"{n:,} customers: Redis used_memory_peak per customer (the rebuild's peak)",
            f"{r['peak_bytes_per_customer']:,.0f} B",
        ),
        Row(
            f"{n:,} customers: the worker, {d['new_orders']:,} new orders: ready after / "
            "RSS after / peak",
            f"{w['ready_seconds']:.1f} s / {w['rss_after_mb']:.0f} / {w['peak_rss_mb']:.0f} MB",
            per_s(w["events_per_s"]),
        ),
        Row(
            f"{n:,} customers: GET /metrics / GET /v1/matrix (median of {ROUNDS})",
            f"{w['metrics_ms_median']:.1f} / {w['matrix_ms_median']:.1f} ms",
        ),
        Row(
            f"{n:,} customers: `rfm-worker export`, every customer streamed: time / CPU / peak RSS",
            f"{e['seconds']:,.0f} s / {e['cpu_seconds']:,.0f} s / {e['peak_rss_mb']:.0f} MB",
            f"{n / e['seconds']:,.0f} customers/s",
        ),
        Row(
            f"{n:,} customers: `rfm-worker members --segment {m['segment']}`, "
            f"{m['lines']:,} members streamed: time / CPU / peak RSS",
            f"{m['seconds']:,.0f} s / {m['cpu_seconds']:,.0f} s / {m['peak_rss_mb']:.0f} MB",
            f"{m['lines'] / m['seconds']:,.0f} members/s",
        ),
        Row(
            f"{n:,} customers: a day's decay sweep, {s['due']:,} due: time / CPU / Redis CPU",
            f"{s['seconds']:.1f} s / {s['cpu_seconds']:.1f} s / {s['redis_cpu_seconds']:.1f} s",
            f"{s['due_per_s']:,.0f} due/s",
        ),
        Row(
            f"{n:,} customers: a full SCAN of the keyspace ({d['scan']['keys']:,} keys)",
            f"{d['scan']['seconds']:.1f} s",
        ),
    ]
