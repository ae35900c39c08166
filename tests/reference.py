"""An independent batch recomputation of the documented rules, for checking the worker.

Written from docs/profiles.md and docs/records-and-triggers.md only, deliberately
naively (no shared code with the worker apart from the segment map, which has its own
tests): distinct events by event_id; one order per order_id (conflicting placed events: the smallest
(occurred_at, amount) wins); a cancel removes the order; an order's value is
max(0, amount - distinct refunds); monetary sums the values of the counted orders.

Also here: `expected_now` (the recomputation with the built-in thresholds, as of now) and
`rank_score` (the quintile a value ranks in, by definition).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tests.factories import DAY_MS
from worker.rules.segments import STANDARD_MAP

# The built-in default profile's thresholds (docs/profiles.md), as recompute() takes them.
DEFAULT = {
    "recency": [30, 90, 180, 365],
    "frequency": [2, 3, 5, 10],
    "monetary": [100, 250, 500, 1000],
}


@dataclass(frozen=True)
class Expected:
    first_order_at: int
    last_order_at: int
    orders: int
    orders_lifetime: int
    monetary: Decimal
    r: int
    f: int
    m: int
    segment: str

    @property
    def rfm(self) -> str:
        return f"{self.r}{self.f}{self.m}"


def ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def recompute(
    events: list[dict[str, Any]],
    as_of_ms: int,
    recency: list[int],
    frequency: list[int],
    monetary: list[int],
    window_days: int | None = None,
) -> dict[tuple[str, str], Expected | None]:
    distinct: dict[str, dict[str, Any]] = {}
    for ev in events:
        distinct.setdefault(ev["event_id"], ev)
    orders: dict[tuple[str, str, str], dict[str, Any]] = {}
    customers: set[tuple[str, str]] = set()
    for ev in distinct.values():
        tenant = ev.get("tenant", "default")
        cust = (tenant, ev["customer_id"])
        customers.add(cust)
        o = orders.setdefault(
            (*cust, ev["order_id"]), {"placed": None, "cancelled": False, "refunds": Decimal(0)}
        )
        if ev["type"] == "order_cancelled":
            o["cancelled"] = True
        elif ev["type"] == "order_refunded":
            o["refunds"] += Decimal(str(ev["amount"]))
        else:
            cand = (ms(ev["occurred_at"]), Decimal(str(ev["amount"])))
            if o["placed"] is None or cand < o["placed"]:
                o["placed"] = cand
    result: dict[tuple[str, str], Expected | None] = dict.fromkeys(customers)
    per_customer: dict[tuple[str, str], list[tuple[int, Decimal]]] = {}
    for (tenant, cid, _oid), o in orders.items():
        if o["placed"] is not None and not o["cancelled"]:
            at, amount = o["placed"]
            value = max(Decimal(0), amount - o["refunds"])
            per_customer.setdefault((tenant, cid), []).append((at, value))
    for cust, placed in per_customer.items():
        times = [at for at, _ in placed]
        total = sum((v for _, v in placed), Decimal(0))
        days = (as_of_ms - max(times)) // DAY_MS
        counted = (
            len(times)
            if window_days is None
            else sum(1 for t in times if (as_of_ms - t) // DAY_MS < window_days)
        )
        r = 1
        for score, limit in zip(range(len(recency) + 1, 1, -1), recency, strict=True):
            if days <= limit:
                r = score
                break
        f = 1 + sum(1 for limit in frequency if counted >= limit)
        m = 1 + sum(1 for limit in monetary if total >= limit)
        result[cust] = Expected(
            min(times),
            max(times),
            counted,
            len(times),
            total,
            r,
            f,
            m,
            STANDARD_MAP.segment(r, f, m),
        )
    return result


def expected_now(events: list[dict[str, Any]]) -> dict[tuple[str, str], Expected | None]:
    """The recomputation with the built-in thresholds, as of the wall clock now."""
    now = int(time.time() * 1000)
    return recompute(events, now, DEFAULT["recency"], DEFAULT["frequency"], DEFAULT["monetary"])


def rank_score(value: int, population: Sequence[int], *, recency: bool = False) -> int:
    """The definition, not the implementation: ties share the lower quintile."""
    below = sum(1 for v in population if v < value)
    level = min(4, 5 * below // len(population))
    return 5 - level if recency else 1 + level
