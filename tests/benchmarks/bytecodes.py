"""Bytecodes executed per event on the commit path, function by function: a profile that
does not move with the machine's speed, nor with a sampler's luck (instructions.py counts
the totals; py-spy samples time).

    .venv/bin/python tests/benchmarks/bytecodes.py [--case none] [--against churn]
                                                   [--customers 300] [--top 40] [--live]

The workload is instructions.py's (churn_cost.py's histories, a fixed instant, batches of
2,000 through `causes.apply_batch` into an embedded Redis; --live, a batch per day scored
that day), smaller by default: it runs
once, then again under `sys.settrace` with opcode events, ~100 times slower. Prints the
functions that executed the most bytecodes per event (file:function; a dataclass's
generated `__init__` by class), or with --against, the functions whose count differs most
between the two cases (what a churn or value model adds, say).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from instructions import CASES, apply_all, forget_figures, workload


def census(case: str, customers: int, live: bool) -> tuple[Counter[str], int]:
    """(bytecodes executed per function, events) over one counted run of `case`."""
    from worker.embedded import EmbeddedRedis

    events, profiles, now = workload(case, customers)
    counts: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            name = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"
            if code.co_filename == "<string>" and code.co_name == "__init__":
                name += ":" + type(frame.f_locals.get("self")).__name__
            counts[name] += 1
        return tracer

    with EmbeddedRedis() as server:
        apply_all(server.url, events, profiles, now, live)  # imports, caches, the script
        forget_figures(profiles)
        sys.settrace(tracer)
        try:
            apply_all(server.url, events, profiles, now, live)
        finally:
            sys.settrace(None)
    return counts, len(events)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=CASES, default="none")
    parser.add_argument("--against", choices=CASES)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--live", action="store_true", help="score each day's events that day")
    args = parser.parse_args()
    counts, events = census(args.case, args.customers, args.live)
    per_event = {name: n / events for name, n in counts.items()}
    total = sum(per_event.values())
    if args.against is None:
        print(f"{args.case}: {total:,.0f} bytecodes per event ({events:,} events)")
        rows = sorted(per_event.items(), key=lambda item: -item[1])[: args.top]
    else:
        other, other_events = census(args.against, args.customers, args.live)
        theirs = {name: n / other_events for name, n in other.items()}
        print(
            f"{args.against} against {args.case}: {sum(theirs.values()) - total:+,.0f} "
            f"bytecodes per event ({sum(theirs.values()):,.0f} against {total:,.0f})"
        )
        names = set(per_event) | set(theirs)
        diff = {name: theirs.get(name, 0.0) - per_event.get(name, 0.0) for name in names}
        rows = sorted(diff.items(), key=lambda item: -abs(item[1]))[: args.top]
    for name, value in rows:
        print(f"{value:10.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
