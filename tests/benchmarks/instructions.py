"""Instructions per event of the commit path, counted by valgrind's callgrind: a measure of
what the worker's code costs that does not move with the machine's speed (CPU time on a
shared virtual machine moves by a third within an hour, docs/performance.md).

    .venv/bin/python tests/benchmarks/instructions.py [--cases none,churn,value]
                                                      [--customers 2000] [--live]

The workload is the `churn` scenario's (churn_cost.py), smaller: the placed orders of the
BG/NBD histories of --customers customers (2,000: ~10,000 orders), at a fixed instant, go
through `causes.apply_batch` (engine, commit.lua, outbox; no broker) in batches of 2,000
into a fresh embedded Redis, once per case: no model, a fitted BG/NBD churn model, and
that model with a fitted Gamma-Gamma value model and value bands. Each case runs in a
Python under callgrind with its instrumentation off; the workload is built and run once
(imports, caches, the script loaded), then counted over a second run alone, switched on
and off with `callgrind_control`, its fits' predictors fresh (`forget_figures`). Redis is
another process, not counted. About 2 minutes a case. Needs valgrind (the Debian
package); without it, says so and exits 2.

--live: the same orders scored as a live stream scores them, each UTC day's orders in a
batch of their own at that day's last instant (~15 orders a batch with 2,000 customers:
a batch's own cost weighs more per event, and the ratio with it; the instructions a
model adds per event do not depend on it).

Prints a markdown table: instructions per event, the ratio to the first case and what
each case adds per event over it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = ("none", "churn", "value")
BATCH = 2000


def workload(case: str, customers: int) -> tuple[list[Any], Any, int]:
    """(events with their partitions, profiles, the instant) of one case: the placed orders
    of `customers` BG/NBD histories and the case's profile, its models fitted on them."""
    import churn_cost as cc

    from worker.rules import churn
    from worker.rules.instants import DAY_MS
    from worker.rules.profiles import Profiles

    now = 20_600 * DAY_MS + 37_000_000  # fixed: the same workload every run
    orders = cc.histories(customers, now)
    placed: dict[str, list[tuple[int, int]]] = {}
    for n, (cid, at) in enumerate(orders):
        placed.setdefault(cid, []).append((at, cc.amount_units(n)))
    rows = []
    for history in placed.values():
        s = churn.summary(sorted(at for at, _ in history), now)
        assert s is not None
        rows.append((s.x, s.t_x, s.T))
    profiles = Profiles.from_toml({"none": cc.BASE, "churn": cc.MODEL, "value": cc.VALUE}[case])
    if case != "none":
        est = churn.fit("bgnbd", *[list(c) for c in zip(*rows, strict=True)])
        assert isinstance(est, churn.Estimate), est
        spend = churn.fit_spend([cc.spend_row(h) for h in placed.values()])
        assert isinstance(spend, churn.SpendFit), spend
        fit = churn.Fit("bgnbd", est.params, est.log_likelihood, 1, 1, 1, now, spend=spend)
        profiles.use_fit("default", fit)
    events = cc.placed_events(orders)
    return events, profiles, now


def forget_figures(profiles: Any) -> None:
    """Each fit replaced by an equal one, whose predictor keeps no figures yet: a counted
    run replays the warm-up's events, whose figures would otherwise all be kept."""
    import dataclasses

    for name, fit in list(profiles.fits.items()):
        if fit is not None:
            profiles.use_fit(name, dataclasses.replace(fit))


def batches(events: list[Any], now: int, live: bool) -> list[tuple[list[Any], int]]:
    """(events, as_of) of each batch: BATCH events scored at `now` (a backfill), or `live`,
    each UTC day's events scored at that day's last one, as a live stream scores them on
    the day they happen (t_x = T)."""
    if not live:
        return [(events[i : i + BATCH], now) for i in range(0, len(events), BATCH)]
    days: dict[int, list[Any]] = {}
    for item in events:  # in time order
        days.setdefault(item[0].occurred_at // 86_400_000, []).append(item)
    return [(day, day[-1][0].occurred_at) for day in days.values()]


def apply_all(url: str, events: list[Any], profiles: Any, now: int, live: bool = False) -> None:
    """The events through the commit path (`batches`), into the Redis at `url` emptied
    first."""
    import redis

    from worker.services import causes
    from worker.state.store import Store

    client = redis.Redis.from_url(url)
    client.flushall()
    store = Store(client)
    for batch, as_of in batches(events, now, live):
        causes.apply_batch(store, batch, profiles, as_of_ms=as_of, now_ms=as_of)
    client.close()


def child(case: str, customers: int, live: bool) -> None:
    """Under callgrind: build the workload, run it, wait; run it again between the parent's
    switches of the instrumentation."""
    from worker.embedded import EmbeddedRedis

    events, profiles, now = workload(case, customers)
    with EmbeddedRedis() as server:
        apply_all(server.url, events, profiles, now, live)
        forget_figures(profiles)
        print("READY", len(events), flush=True)
        sys.stdin.readline()
        apply_all(server.url, events, profiles, now, live)
        print("DONE", flush=True)
        sys.stdin.readline()


def count(case: str, customers: int, live: bool) -> tuple[int, int]:
    """(instructions, events) of one case's counted run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                case,
                "--customers",
                str(customers),
                *(["--live"] if live else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        ready = proc.stdout.readline().split()
        if ready[:1] != ["READY"]:
            proc.kill()
            raise SystemExit(f"{case}: the workload did not start under valgrind ({ready})")
        control = ["callgrind_control", "--instr"]
        subprocess.run([*control, "on", str(proc.pid)], check=True, capture_output=True)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("DONE")
        subprocess.run([*control, "off", str(proc.pid)], check=True, capture_output=True)
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait()
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        assert totals is not None, "no totals in callgrind's output"
        return int(totals.group(1)), int(ready[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--live", action="store_true", help="score each day's events that day")
    parser.add_argument("--child", choices=CASES)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.customers, args.live)
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind): nothing counted")
        return 2
    cases = [c for c in args.cases.split(",") if c]
    if not cases or not set(cases) <= set(CASES):
        parser.error(f"--cases: a comma-separated list of {', '.join(CASES)}")
    per_event: dict[str, float] = {}
    for case in cases:
        instructions, events = count(case, args.customers, args.live)
        per_event[case] = instructions / events
        print(f"{case}: {per_event[case]:,.0f} instructions per event", file=sys.stderr)
    base = per_event[cases[0]]
    shape = "a batch per day, scored that day" if args.live else "batches of 2,000, one instant"
    print(f"commit path, {events:,} placed orders, {shape} (callgrind, {os.uname()[4]})")
    print(f"| case | instructions per event | vs {cases[0]} | added per event |")
    print("|---|---:|---:|---:|")
    for case, value in per_event.items():
        print(f"| {case} | {value:,.0f} | {value / base:.3f}× | {value - base:+,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
