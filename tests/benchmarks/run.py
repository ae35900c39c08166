"""`make bench`: every benchmark in one run, a README-ready table and a JSON file.

Scenarios, in this order (each on its own fresh broker and Redis, one at a time: the
machine has 2 cores and the broker, Redis, the worker and this script share them). The
broker is the one BENCH_BROKER names, `kafka` (Apache Kafka, its jars fetched with Maven on
first use) or `tansu`; unset, Apache Kafka where java and mvn are on PATH, else Tansu (the
run says why). The report names it (start, table title, last line, JSON "broker").

    throughput  floor (consume + validate) and the real worker on the same N events,
                and its peer, a Quix Streams app doing its job (peer.py, quix_app.py:
                quixstreams from .venv-peer or BENCH_PEER_PYTHON, else skipped)
    heavy       the same N events over 8 customers, and one event alone   (throughput.py)
                in its batch for customers holding 1 / 1,000 / 5,000 orders
    latency     produce -> rfm.changed at a steady rate, and the cores    (latency.py)
                the worker, the broker and Redis use at its start and end:
                at BENCH_LATENCY_RATE, and at half the worker's events/s
                measured by `throughput` (absent when it did not run)
    memory      Redis bytes per customer and per further order            (memory.py)
    scale       the worker among 10,000 and 1,000,000 customers           (throughput.py)
    sweep       a decay sweep costs what is due, not the population       (sweep.py)
    churn       what a churn model costs per event, and a fit         (churn_cost.py)
    members     the segment index: cost per event with / without it, Redis bytes per
                customer with / without it, a page of 100 from a segment of
                10,000 and of 1,000,000 members                     (segment_index.py)
    rebuild     `rfm-worker rebuild` events/s with 1 process and     (rebuild_rate.py)
                with --processes 2, and their ratio

Only when --only names them (backlog ~13 minutes, tenmillion 20-35):

    backlog     the worker's peak memory draining a backlog of       (backlog_memory.py)
                1,000,000 orders, short and long histories, per
                queued.max.messages.kbytes
    restore     events replayed per second by a running worker after     (restore.py)
                Redis is restored from a backup (BENCH_RESTORE_N=200000
                events before the backup, BENCH_RESTORE_M=100000 after)
    tenmillion  BENCH_TENMILLION_CUSTOMERS (10,000,000) customers on     (ten_million.py)
                one box: rebuild rate, Redis bytes per customer, the
                worker's RSS, /metrics and /v1/matrix, export and members
                streamed, a day's decay sweep (~8 GB of Redis)

Ratios compare figures measured in the same run (worker / floor, heavy / worker,
1,000,000 / 10,000 customers, sweep B / A), so they travel better than the absolute rates.

Sizes (environment, defaults): BENCH_N=200000 events; BENCH_HEAVY_CUSTOMERS=8,
BENCH_HEAVY_TIMEOUT_S=60; BENCH_LATENCY_RATE=5000 events/s for BENCH_LATENCY_S=30;
BENCH_MEMORY_CUSTOMERS=100000 x BENCH_MEMORY_ORDERS=5, then BENCH_GROW_CUSTOMERS=10000
grow to BENCH_GROW_ORDERS=25; BENCH_SCALE_SMALL=10000, BENCH_SCALE_CUSTOMERS=1000000;
BENCH_SWEEP_POPULATION=1000000, BENCH_SWEEP_DUE=10000; BENCH_CHURN_CUSTOMERS=20000;
BENCH_INDEX_CUSTOMERS=20000 x BENCH_INDEX_ORDERS=5;
BENCH_REBUILD_N=100000 events over BENCH_REBUILD_CUSTOMERS=20000;
BENCH_WORKER_TIMEOUT_S=600 (a worker run that takes longer fails);
BENCH_BACKLOG_N=1000000 records over BENCH_BACKLOG_SHORT_CUSTOMERS=432000 and
BENCH_BACKLOG_LONG_CUSTOMERS=5000, BENCH_BACKLOG_QUEUE_KBYTES=65536,default,4096,
BENCH_BACKLOG_TIMEOUT_S=1200;
BENCH_LATENCY_FETCH_WAIT_MS unset (set it to give the worker's consumer that
fetch.wait.max.ms, see latency.py). The JSON (every figure, the
sizes, the commit measured) goes to BENCH_OUT, default bench-results.json in the current
directory.

    .venv/bin/python tests/benchmarks/run.py [--only throughput,latency,...]

Exit status 1 when a check fails (the sweep ratio above its limit, a scenario that could
not complete), else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import backlog_memory
import churn_cost
import latency
import memory
import orjson
import rebuild_rate
import restore
import segment_index
import sweep
import ten_million
import throughput
from common import ROOT, Config, Row, Section, broker, ratio, say

from worker.embedded.apache_kafka import KafkaUnavailableError, ensure_jars

SCENARIOS = (
    *("throughput", "heavy", "latency", "memory", "scale", "sweep", "churn", "members"),
    "rebuild",
)
OPT_IN = ("backlog", "restore", "tenmillion")  # minutes each: run only when --only names them


def run_sweep(cfg: Config) -> Section:
    """tests/benchmarks/sweep.py's measurement, in process, with its own Redis servers."""
    args = sweep.parse_args(
        ["--population", str(cfg.sweep_population), "--due", str(cfg.sweep_due)]
    )
    with contextlib.redirect_stdout(sys.stderr):  # its own report: progress, not the table
        figures = sweep.run(args)
    section = Section("sweep", data=figures)
    a, b = figures["scenarios"]
    section.rows = [
        Row(
            f"sweep A: {cfg.sweep_due:,} due customers alone (median of {args.repeat})",
            f"{a['median_s']:.3f} s ({a['due_per_s']:,.0f} due/s)",
        ),
        Row(
            f"sweep B: the same {cfg.sweep_due:,} due among {cfg.sweep_population:,} customers",
            f"{b['median_s']:.3f} s ({b['due_per_s']:,.0f} due/s)",
            f"{ratio(figures['ratio'])} of A (limit {figures['limit']:.1f})",
        ),
    ]
    return section


def run_churn(cfg: Config) -> Section:
    """tests/benchmarks/churn_cost.py's measurement, in process, with its own Redis."""
    doc = churn_cost.measure(cfg.churn_customers, 3)
    section = Section("churn", data=doc)
    per = doc["per_event"]
    base = per["no model"]["cpu_us"]
    valued = per["model and value model, fitted"]["cpu_us"]
    fits = doc["fit_seconds"]
    section.rows = [
        Row(
            f"churn model: worker CPU per event, {doc['events']:,} placed orders over "
            f"{doc['customers']:,} customers (`causes.apply_batch`, no broker): no model / "
            "model not fitted / fitted",
            " / ".join(
                f"{per[k]['cpu_us']:.1f}"
                for k in ("no model", "model, no fit yet", "model, fitted")
            )
            + " µs",
            f"{ratio(per['model, fitted']['cpu_us'] / base)} of no model",
        ),
        Row(
            "value model: worker CPU per event, the same orders, churn and Gamma-Gamma value "
            "model fitted, value bands (docs/value.md)",
            f"{valued:.1f} µs",
            f"{ratio(valued / base)} of no model, "
            f"{ratio(valued / per['model, fitted']['cpu_us'])} of the churn model alone",
        ),
        Row(
            "churn model: one BG/NBD fit of 2,357 / 100,000 customers",
            f"{fits['2,357 customers (CDNOW-sized)']:.2f} / "
            f"{fits['100,000 customers (the sample size)']:.2f} s",
        ),
    ]
    return section


def code_version() -> dict[str, Any]:
    """The commit measured, and whether worker/ differs from it (read-only git calls)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "worker_modified": bool(git("status", "--porcelain", "--", "worker")),
    }


def table(sections: list[Section]) -> str:
    rows = [row for s in sections for row in s.rows]
    header = Row("measure", "figure", "ratio")
    widths = [
        max(len(r.measure) for r in [header, *rows]),
        max(len(r.figure) for r in [header, *rows]),
        max(len(r.ratio) for r in [header, *rows]),
    ]

    def line(r: Row) -> str:
        return (
            f"| {r.measure.ljust(widths[0])} | {r.figure.rjust(widths[1])} "
            f"| {r.ratio.ljust(widths[2])} |"
        )

    rule = f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 1)}:|{'-' * (widths[2] + 2)}|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {SCENARIOS + OPT_IN} ({OPT_IN}: only when named)",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS) - set(OPT_IN))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {SCENARIOS + OPT_IN}")
    cfg = Config.from_env()
    out = Path(os.environ.get("BENCH_OUT", "bench-results.json"))
    worker_rate: list[float] = []  # the worker figure, for heavy / worker
    worker_cpu: list[float] = []  # its CPU per event in batches of 2,000, for latency

    def heavy(c: Config) -> Section:
        return throughput.run_heavy(c, worker_rate[0] if worker_rate else None)

    def latency_at_two_rates(c: Config) -> Section:
        if worker_rate:
            return latency.run(c, worker_rate[0], full_batch_cpu_us=worker_cpu[0])
        if "throughput" in chosen:
            return latency.run(c, None, "the throughput scenario failed")
        return latency.run(c, None, "the throughput scenario was not run (--only)")

    steps: dict[str, Callable[[Config], Section]] = {
        "throughput": throughput.run_throughput,
        "heavy": heavy,
        "latency": latency_at_two_rates,
        "memory": memory.run,
        "scale": throughput.run_scale,
        "sweep": run_sweep,
        "churn": run_churn,
        "members": segment_index.run,
        "rebuild": rebuild_rate.run,
        "backlog": backlog_memory.run,
        "restore": restore.run,
        "tenmillion": ten_million.run,
    }
    chosen_broker = broker()
    on_broker = f"{chosen_broker.name} (BENCH_BROKER={chosen_broker.kind})"
    say(f"broker: {on_broker}")
    if chosen_broker.kind == "kafka":
        try:
            say(f"  its jars: {ensure_jars()}")  # fetched with Maven the first time
        except KafkaUnavailableError as exc:
            raise SystemExit(f"broker: {exc} (BENCH_BROKER=tansu runs on Tansu)") from exc
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    sections: list[Section] = []
    failed: list[str] = []
    for name in [s for s in SCENARIOS + OPT_IN if s in chosen]:
        say(f"== {name}")
        t0 = time.perf_counter()
        try:
            section = steps[name](cfg)
        except (SystemExit, Exception) as exc:  # could not complete: say so, go on
            say(f"!! {name} failed:\n{traceback.format_exc()}")
            failed.append(name)
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
            section = Section(name, [Row(f"{name}: FAILED", reason)], {"error": str(exc)})
        section.seconds = round(time.perf_counter() - t0, 1)
        say(f"   {name} took {section.seconds:.0f} s")
        if name == "throughput" and "worker" in section.data:
            worker_rate.append(section.data["worker"]["events_per_s"])
            worker_cpu.append(section.data["worker"]["cpu_us_per_event"])
        sections.append(section)
    total = time.perf_counter() - started
    if any(s.name == "sweep" and s.data.get("ratio", 0) > s.data.get("limit", 2) for s in sections):
        failed.append("sweep ratio")

    report: dict[str, Any] = {
        "started_at": started_at,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "code": code_version(),
        "broker": chosen_broker.summary(),
        "config": dataclasses.asdict(cfg),
        "total_seconds": round(total, 1),
        "failed": failed,
        "results": {s.name: {**s.data, "scenario_seconds": s.seconds} for s in sections},
        "table": [
            {"measure": r.measure, "figure": r.figure, "ratio": r.ratio}
            for s in sections
            for r in s.rows
        ],
    }
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print()
    print(f"Benchmarks on {on_broker}")
    print()
    print(table(sections))
    print()
    print(f"total {total:.0f} s on {on_broker}; JSON written to {out}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
