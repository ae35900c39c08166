"""Benchmark: the rate of `rfm-worker rebuild`, in one process and in two.

BENCH_REBUILD_N order_placed events (default 100,000) over BENCH_REBUILD_CUSTOMERS
customers (default 20,000) on the 4 partitions of a fresh orders topic, then the real
command, `python -m worker rebuild --yes --processes P`, twice for each P in 1, 2,
alternating (1, 2, 1, 2: the machine is shared and noisy), each on the state the previous
one left (so every run wipes about the same keys). The figure of a run is the rate its
summary line reports: records replayed per second from the start of the replay to its
end (the wipe and the process start excluded; the command's wall time is in the JSON).
The better of each P's two runs is kept; the ratio is 2 processes / 1.

On a machine whose cores are shared with the broker and Redis, the second process buys
what is left of the cores: the report says how many there are (os.cpu_count()).

    .venv/bin/python tests/benchmarks/run.py --only rebuild
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
from common import (
    Config,
    Row,
    Section,
    Stack,
    customer_ids,
    days_ago,
    env_int,
    per_s,
    placed_orders,
    produce_all,
    ratio,
    say,
)

_RATE = re.compile(r"in ([0-9.]+) s, ([0-9,]+) records/s")


def _rebuild(stack: Stack, orders: str, group: str, processes: int) -> dict[str, Any]:
    """One `rfm-worker rebuild --yes --processes P`: its replay rate and wall time."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RFM_")}
    env = {
        **inherited,
        "RFM_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RFM_KAFKA_GROUP": group,
        "RFM_KAFKA_CONFIG": orjson.dumps(stack.kafka_config()).decode(),
        "RFM_ORDERS_TOPIC": orders,
        "RFM_REDIS_URL": stack.redis_server.url,
    }
    command = [sys.executable, "-m", "worker", "rebuild", "--yes", "--processes", str(processes)]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--progress", "0"], env=env, capture_output=True, text=True, timeout=1800
    )
    wall = time.perf_counter() - started
    found = _RATE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"rebuild --processes {processes} failed: {done.stderr[-2000:]}")
    say(f"   {done.stdout.strip()}")
    return {
        "processes": processes,
        "replay_s": float(found.group(1)),
        "records_per_s": float(found.group(2).replace(",", "")),
        "wall_s": round(wall, 2),
    }


def run(_cfg: Config) -> Section:
    n = env_int("BENCH_REBUILD_N", 100_000)
    customers = env_int("BENCH_REBUILD_CUSTOMERS", 20_000)
    with Stack() as stack:
        topics = stack.topics("rebuild")
        records = placed_orders(
            n,
            customer_ids("rb", customers),
            prefix="rb",
            first_ms=days_ago(700),
            last_ms=days_ago(1),
        )
        produce_all(stack.bootstrap, topics.orders, records)
        group = f"bench-{uuid.uuid4().hex[:8]}"
        runs = [_rebuild(stack, topics.orders, group, p) for p in (1, 2, 1, 2)]
    best = {p: max(r["records_per_s"] for r in runs if r["processes"] == p) for p in (1, 2)}
    cores = os.cpu_count()
    section = Section(
        "rebuild",
        data={
            "events": n,
            "customers": customers,
            "cores": cores,
            "runs": runs,
            "best_records_per_s": {str(p): rate for p, rate in best.items()},
        },
    )
    section.rows = [
        Row(
            f"rebuild: {n:,} events over {customers:,} customers, 4 partitions, 1 process",
            per_s(best[1]),
        ),
        Row(
            f"rebuild: the same, --processes 2 ({cores} cores shared with the broker and Redis)",
            per_s(best[2]),
            f"{ratio(best[2] / best[1])} of 1 process ({per_s(best[2] / 2)} per process)",
        ),
    ]
    return section
