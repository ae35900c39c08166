"""CPU per event of input validation: the former `validate` against the lean path.

The same 20,000 benchmark-like events (common.placed_orders: order_placed, a plain decimal
amount, currency EUR, occurred_at with milliseconds and Z, as the worker benchmark sends
them) go through:

- frozen: `validate` before the lean path, the frozen copy the differential test keeps
  (tests/frozen_validation.py, `frozen_validate`);
- validate: today's `worker.rules.events.validate`, one call per record, as the worker
  calls it.

Each round runs every variant over all the events REPS times, the variants taking turns
(frozen, validate, frozen, ...), timed with time.process_time (CPU of this
process: other processes matter less than for wall time, but on a shared machine they still
slow it down). Reported: the median over ROUNDS rounds of the CPU µs per event, its ratio to
frozen, and the median of the per-round ratios (steadier when the machine's load moves).
Outcomes are checked equal before timing.

    .venv/bin/python tests/benchmarks/validation.py [--events 20000] [--reps 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import ROOT, customer_ids, days_ago, placed_orders

sys.path.insert(0, str(ROOT))  # the frozen reference lives in tests/

from tests.frozen_validation import frozen_validate
from worker.rules.events import validate
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles


def one_round(variants: dict[str, Callable[[], Any]], events: int, reps: int) -> dict[str, float]:
    """CPU µs per event of each variant, the variants taking turns rep by rep."""
    spent = dict.fromkeys(variants, 0.0)
    for _ in range(reps):
        for name, run in variants.items():
            started = time.process_time()
            run()
            spent[name] += time.process_time() - started
    return {name: seconds / (events * reps) * 1e6 for name, seconds in spent.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    values = [
        value
        for _key, value in placed_orders(
            args.events,
            customer_ids("v", max(1, args.events // 4)),
            prefix="v",
            first_ms=days_ago(400),
            last_ms=days_ago(1),
        )
    ]
    profiles = Profiles.builtin()
    now = wall_ms()

    expected = [frozen_validate(v, profiles, now) for v in values]
    assert [validate(v, profiles, now) for v in values] == expected

    variants: dict[str, Callable[[], Any]] = {
        "frozen": lambda: [frozen_validate(v, profiles, now) for v in values],
        "validate": lambda: [validate(v, profiles, now) for v in values],
    }
    rounds = [one_round(variants, len(values), args.reps) for _ in range(args.rounds)]

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"{len(values):,} events x {args.reps} reps, median of {args.rounds} rounds; "
        f"Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} (a busy machine inflates every figure alike)"
    )
    base = statistics.median(r["frozen"] for r in rounds)
    print(f"{'variant':<16}{'CPU µs/event':>14}{'vs frozen':>11}{'per round':>11}   rounds")
    for name in variants:
        median = statistics.median(r[name] for r in rounds)
        paired = statistics.median(r[name] / r["frozen"] for r in rounds)
        spread = " ".join(f"{r[name]:.2f}" for r in rounds)
        print(f"{name:<16}{median:>14.2f}{median / base:>11.2f}{paired:>11.2f}   {spread}")


if __name__ == "__main__":
    main()
