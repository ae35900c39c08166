"""An independent batch recomputation of the documented rules, for checking the worker.

Written from docs/profiles.md and docs/records-and-triggers.md only, deliberately
naively (no shared code with the worker apart from the segment map, which has its own
tests): distinct events by event_id; one order per order_id (conflicting placed events: the smallest
(occurred_at, amount) wins); a cancel removes the order; an order's value is
max(0, amount - distinct refunds); monetary sums the values of the counted orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from worker.segments import STANDARD_MAP

DAY_MS = 86_400_000


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
