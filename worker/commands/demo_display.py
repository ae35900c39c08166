"""What the demo (worker/commands/demo.py) prints while it runs: a line per segment move
or overdue alert from the actions topic, within a budget of lines per second, and a status
line with the worker's own metrics."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

LINES_PER_SECOND = 8  # readable, still live
LINES_PER_KIND = 4  # so the flood of order moves cannot crowd out decay and overdue lines


@dataclass(slots=True)
class Tally:
    """Every record read from the actions topic, shown or not."""

    changes: int = 0
    decay: int = 0
    overdue: int = 0
    shown: Counter[str] = field(default_factory=Counter)  # lines shown this second, by kind

    def count(self, record: dict[str, Any]) -> str:
        """Count the record; its kind for the line budget: overdue, decay or events."""
        if record.get("type") == "rfm.overdue":
            self.overdue += 1
            return "overdue"
        if record.get("type") == "rfm.changed":
            self.changes += 1
            if record.get("cause") == "decay":
                self.decay += 1
                return "decay"
        return "events"

    def may_show(self, kind: str) -> bool:
        if self.shown.total() >= LINES_PER_SECOND or self.shown[kind] >= LINES_PER_KIND:
            return False
        self.shown[kind] += 1
        return True


def say(line: str) -> None:
    print(line, flush=True)


def status(metrics_url: str, tally: Tally, sim_now: datetime, elapsed: float) -> str:
    """One line: the simulated date, the worker's own metrics (what it applied and
    rejected), and what arrived on the actions topic."""
    received = (
        f"{tally.changes} changes received ({tally.decay} by decay), {tally.overdue} overdue alerts"
    )
    head = f"-- {elapsed:.0f}s, simulated {sim_now:%Y-%m-%d}"
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as resp:  # noqa: S310 - our URL
            text = resp.read().decode()
    except OSError:
        return f"{head}: {received} (worker metrics unavailable)"
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^rfm_events_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }
    return (
        f"{head}: events applied {counts.get('applied', 0):.0f}, "
        f"duplicate {counts.get('duplicate', 0):.0f}, "
        f"dead-lettered {counts.get('dead_lettered', 0):.0f}; {received}"
    )


def caught_up(sim_now: datetime, step: timedelta) -> str:
    every = step.total_seconds()
    if every >= 3600:
        pace = f"{every / 3600:.1f} hours"
    elif every >= 60:
        pace = f"{every / 60:.0f} minutes"
    else:
        pace = f"{every:.1f} s"
    return (
        f"-- the simulated clock has reached today ({sim_now:%Y-%m-%d}): it runs in real "
        f"time from now on, and live orders keep their pace per simulated day (one every "
        f"{pace}); the sweeper and the page go on. Ctrl-C stops the demo."
    )


def describe(record: dict[str, Any]) -> str | None:
    """A line for an overdue alert or a segment move, with the triggers that fired;
    None for other records."""
    customer = record.get("customer_id", "?")
    fired = record.get("triggers") or []
    tail = f"  => {', '.join(fired)}" if fired else ""
    if record.get("type") == "rfm.overdue":
        return (
            f"{customer:>8}  {'OVERDUE':<7} silent {record['silent_days']} days "
            f"(usual gap {record['median_gap_days']:.0f} days){tail}"
        )
    if record.get("type") != "rfm.changed" or not record.get("segment_changed"):
        return None
    prev, cur = record["previous"], record["current"]
    before = f"{prev['segment']} ({prev['rfm']})" if prev else "new"
    after = f"{cur['segment']} ({cur['rfm']})" if cur else "no orders left"
    return f"{customer:>8}  {record['cause']:<7} {before:>26} -> {after}{tail}"
