"""What the churn model costs (docs/churn.md, docs/performance.md): per event on the commit
path, and per fit.

    .venv/bin/python tests/benchmarks/churn_cost.py      (or run.py --only churn)

The same placed orders (the BG/NBD histories of BENCH_CHURN_CUSTOMERS customers, default
20,000: ~100,000 orders) go through `causes.apply_batch` (the
commit path: engine, commit.lua, outbox; no broker) in batches of 2,000 into a fresh
embedded Redis, once per profile: without a model, with a model not fitted yet, with a
fitted BG/NBD model, and with that model and a fitted Gamma-Gamma value model (value
bands too: docs/value.md). Order amounts vary (lognormal around 60 currency units), the
same in every case. Reported: this process's CPU per event (the worker's share; Redis is
another process) and the wall time per event, best of BENCH_CHURN_REPEATS (default 3), and
the time to fit the model on the resulting customer base (x, t_x, T) and on CDNOW-sized and
100,000-customer samples. Prints a markdown table, and JSON with --json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.factories import bgnbd_orders
from worker.embedded import EmbeddedRedis
from worker.rules import churn
from worker.rules.events import ValidEvent
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state.store import Store

BATCH = 2000
BASE = """
[profiles.default]
recency_days = [30, 90, 180, 365]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""
MODEL = BASE + 'churn_model = "bgnbd"\n'
VALUE = MODEL + 'value_model = "gamma_gamma"\nvalue_bands = [20, 60, 150]\n'


def amount_units(n: int) -> int:
    """Order n's amount in money units: lognormal around 60 currency units, to the cent."""
    return round(random.Random(n).lognormvariate(4.1, 0.6) * 100) * 100


def histories(customers: int, end_ms: int) -> list[tuple[str, int]]:
    """(customer id, instant) of the placed orders of `customers` with BG/NBD histories
    over the last 700 days (tests/factories.py), in time order."""
    orders = [
        (cid, at)
        for cid, times in bgnbd_orders(7, customers, end_ms, days=700).items()
        for at in times
    ]
    orders.sort(key=lambda e: e[1])
    return orders


def placed_events(orders: list[tuple[str, int]]) -> list[tuple[ValidEvent, int]]:
    """The placed orders (customer id, instant) as validated events, with their partitions."""
    return [
        (
            ValidEvent(
                event_id=f"e{n}",
                type="order_placed",
                order_id=f"o{n}",
                customer_id=cid,
                tenant="default",
                amount=amount_units(n),
                occurred_at=at,
            ),
            n % 4,
        )
        for n, (cid, at) in enumerate(orders)
    ]


def run(profiles: Profiles, orders: list[tuple[str, int]], now: int, url: str) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushall()
    store = Store(client)
    events = placed_events(orders)
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(events), BATCH):
        causes.apply_batch(store, events[start : start + BATCH], profiles, as_of_ms=now, now_ms=now)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    client.close()
    return {"cpu_us": 1e6 * cpu / len(events), "wall_us": 1e6 * wall / len(events)}


def fit_seconds(rows: list[tuple[int, int, int]], repeats: int = 3) -> float:
    columns = [list(c) for c in zip(*rows, strict=True)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        est = churn.fit("bgnbd", *columns)
        best = min(best, time.perf_counter() - started)
        assert isinstance(est, churn.Estimate), est
    return best


def measure(n_customers: int, repeats: int) -> dict[str, Any]:
    """The figures (see the module docstring), as one JSON-able document."""
    now = wall_ms()
    orders = histories(n_customers, now)
    by_customer: dict[str, list[tuple[int, int]]] = {}
    for n, (cid, at) in enumerate(orders):
        by_customer.setdefault(cid, []).append((at, amount_units(n)))
    rows, spends = [], []
    for placed in by_customer.values():
        s = churn.summary(sorted(at for at, _ in placed), now)
        assert s is not None
        rows.append((s.x, s.t_x, s.T))
        spends.append(spend_row(placed))
    est = churn.fit("bgnbd", *[list(c) for c in zip(*rows, strict=True)])
    assert isinstance(est, churn.Estimate), est
    fitted = Profiles.from_toml(MODEL)
    fitted.use_fit("default", churn.Fit("bgnbd", est.params, est.log_likelihood, 1, 1, 1, now))
    spend = churn.fit_spend(spends)
    assert isinstance(spend, churn.SpendFit), spend
    valued = Profiles.from_toml(VALUE)
    valued.use_fit(
        "default", churn.Fit("bgnbd", est.params, est.log_likelihood, 1, 1, 1, now, spend=spend)
    )
    cases: dict[str, Callable[[], Profiles]] = {
        "no model": lambda: Profiles.from_toml(BASE),
        "model, no fit yet": lambda: Profiles.from_toml(MODEL),
        "model, fitted": lambda: fitted,
        "model and value model, fitted": lambda: valued,
    }
    results: dict[str, Any] = {}
    with EmbeddedRedis() as server:
        for _ in range(repeats):  # interleaved: drift hits every case alike
            for name, make in cases.items():
                r = run(make(), orders, now, server.url)
                best = results.get(name)
                if best is None or r["cpu_us"] < best["cpu_us"]:
                    results[name] = r
    rng = random.Random(3)
    big = [rows[rng.randrange(len(rows))] for _ in range(100_000)]
    fits = {
        f"{len(rows):,} customers (this base)": fit_seconds(rows),
        "2,357 customers (CDNOW-sized)": fit_seconds(rng.sample(rows, 2357)),
        "100,000 customers (the sample size)": fit_seconds(big),
    }
    return {
        "events": len(orders),
        "customers": len(by_customer),
        "per_event": results,
        "fit_seconds": fits,
        "spend_fit_seconds": spend_fit_seconds(spends),
    }


def spend_row(placed: list[tuple[int, int]]) -> tuple[int, float]:
    """(x, m_x) of one customer's (instant, money units) orders, by the definition."""
    days: dict[int, int] = {}
    for at, units in placed:
        days[at // 86_400_000] = days.get(at // 86_400_000, 0) + units
    values = [days[d] / 10_000 for d in sorted(days)]
    x = len(values) - 1
    return x, (sum(values[1:]) / x if x else 0.0)


def spend_fit_seconds(rows: list[tuple[int, float]], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fit = churn.fit_spend(rows)
        best = min(best, time.perf_counter() - started)
        assert isinstance(fit, churn.SpendFit), fit
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    doc = measure(
        int(os.environ.get("BENCH_CHURN_CUSTOMERS", "20000")),
        int(os.environ.get("BENCH_CHURN_REPEATS", "3")),
    )
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    results, fits = doc["per_event"], doc["fit_seconds"]
    base = results["no model"]["cpu_us"]
    print(
        f"{doc['events']:,} placed orders over {doc['customers']:,} customers, batches of {BATCH}"
    )
    print("| profile | worker CPU per event | wall per event | CPU vs no model |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['cpu_us']:.1f} µs | {r['wall_us']:.1f} µs | {r['cpu_us'] / base:.2f}× |"
        )
    print("\n| fit (BG/NBD, scipy BFGS) | seconds |\n|---|---:|")
    for name, sec in fits.items():
        print(f"| {name} | {sec:.3f} |")
    print(f"| Gamma-Gamma spend fit, this base | {doc['spend_fit_seconds']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
