"""The read side: customer view, export and matrix, scored at any instant. Read-only."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from worker.config import Settings
from worker.customer import Customer
from worker.events import wall_ms
from worker.messages import customer_view, iso
from worker.profiles import Profiles
from worker.scoring import score
from worker.store import Store


def now_ms(settings: Settings, store: Store) -> int:
    """`now` as the worker sees it: the wall clock, or the event clock (RFM_CLOCK=event)."""
    if settings.clock == "event":
        clock = store.read_clock()
        if clock is not None:
            return clock
    return wall_ms()


def view(customer: Customer, profiles: Profiles, as_of_ms: int) -> dict[str, object] | None:
    """The customer's aggregates and scores at as_of; None without a counted order."""
    agg = customer.aggregates()
    if agg is None:
        return None
    sc = score(agg, as_of_ms, profiles.for_tenant(customer.tenant))
    return customer_view(customer.tenant, customer.customer_id, agg, sc, as_of_ms)


def lookup(
    store: Store, profiles: Profiles, tenant: str, customer_id: str, as_of_ms: int
) -> dict[str, object] | None:
    customer = store.get_customer(tenant, customer_id)
    return None if customer is None else view(customer, profiles, as_of_ms)


def export(
    store: Store, profiles: Profiles, as_of_ms: int, tenant: str | None = None
) -> Iterator[dict[str, object]]:
    """Every customer with at least one counted order, scored at as_of (changes nothing)."""
    for customer in store.scan_customers(tenant):
        doc = view(customer, profiles, as_of_ms)
        if doc is not None:
            yield doc


def matrix(store: Store, tenant: str, as_of_ms: int) -> dict[str, object]:
    """The R x F grid and segment counts, from the counters commits maintain (no scan).

    Counts reflect each customer's last published score.
    """
    cells: Counter[tuple[int, int]] = Counter()
    cell_segments: dict[tuple[int, int], Counter[str]] = defaultdict(Counter)
    segments: Counter[str] = Counter()
    for (t, rfm, segment), count in store.score_counts().items():
        if t != tenant:
            continue
        r, f = int(rfm[0]), int(rfm[1])
        cells[(r, f)] += count
        cell_segments[(r, f)][segment] += count
        segments[segment] += count
    return {
        "tenant": tenant,
        "as_of": iso(as_of_ms),
        "customers": sum(cells.values()),
        "cells": [
            {
                "r": r,
                "f": f,
                "customers": cells[(r, f)],
                "segment": cell_segments[(r, f)].most_common(1)[0][0],
            }
            for r, f in sorted(cells)
        ],
        "segments": dict(sorted(segments.items())),
    }


def render_matrix(doc: dict[str, Any]) -> str:
    """The grid as text: R across (1..5), F down (5 at the top), counts and segments."""
    by_cell = {(c["r"], c["f"]): c for c in doc["cells"]}
    rs = range(1, 6)
    lines = [f"tenant {doc['tenant']}, {doc['customers']} customers, as of {doc['as_of']}", ""]
    lines.append("F\\R " + "".join(f"{r:>20}" for r in rs))
    for f in range(5, 0, -1):
        counts = "".join(
            f"{by_cell[(r, f)]['customers'] if (r, f) in by_cell else '.':>20}" for r in rs
        )
        names = "".join(
            f"{by_cell[(r, f)]['segment'] if (r, f) in by_cell else '':>20}" for r in rs
        )
        lines += [f"{f:>4} {counts}", f"     {names}"]
    lines.append("")
    width = max((len(s) for s in doc["segments"]), default=0)
    lines += [f"{name:<{width}}  {count}" for name, count in doc["segments"].items()]
    return "\n".join(lines)
