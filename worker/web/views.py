"""The read side: customer view, export and matrix, scored at any instant. Read-only."""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from worker.rules.customer import Customer
from worker.rules.instants import iso
from worker.rules.messages import customer_view
from worker.rules.profiles import Profiles
from worker.rules.scoring import score
from worker.state.store import Store


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
    customer = store.reads.customer(tenant, customer_id)
    return None if customer is None else view(customer, profiles, as_of_ms)


def export(
    store: Store, profiles: Profiles, as_of_ms: int, tenant: str | None = None
) -> Iterator[dict[str, object]]:
    """Every customer with at least one counted order, scored at as_of (changes nothing)."""
    for customer in store.reads.customers(tenant):
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
    # Only the tenant's cells are kept as the counters are read: not one per tenant.
    counts = store.reads.score_counts(lambda t: t if t == tenant else None)
    for (_t, rfm, segment), count in counts.items():
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


# -- the matrix as text ---------------------------------------------------------------------

# 256-colour (background, foreground) per standard segment: greens for the best customers,
# blues for the new, yellows and oranges for those slipping away, reds for the valuable ones
# going quiet, greys for the gone. A terminal without 256 colours maps them to the nearest.
SEGMENT_COLORS: dict[str, tuple[int, int]] = {
    "champions": (22, 231),
    "loyal": (34, 16),
    "potential_loyalist": (114, 16),
    "new_customers": (39, 16),
    "promising": (117, 16),
    "need_attention": (221, 16),
    "about_to_sleep": (180, 16),
    "at_risk": (208, 16),
    "cant_lose_them": (160, 231),
    "hibernating": (103, 16),
    "lost": (240, 231),
}
# Custom segment names: a colour from this palette, chosen by a stable hash of the name
# (crc32, not hash(), which changes from one process to the next).
CUSTOM_COLORS: tuple[tuple[int, int], ...] = (
    (25, 231),
    (30, 231),
    (61, 231),
    (96, 231),
    (130, 231),
    (137, 16),
    (142, 16),
    (169, 16),
    (173, 16),
    (79, 16),
    (147, 16),
    (186, 16),
)
_RESET = "\x1b[0m"


def segment_color(segment: str) -> tuple[int, int]:
    """(background, foreground) 256-colour codes of a segment: fixed for the 11 standard
    segments, a deterministic pick from CUSTOM_COLORS for any other name."""
    known = SEGMENT_COLORS.get(segment)
    if known is not None:
        return known
    return CUSTOM_COLORS[zlib.crc32(segment.encode()) % len(CUSTOM_COLORS)]


def _paint(text: str, segment: str) -> str:
    bg, fg = segment_color(segment)
    return f"\x1b[38;5;{fg};48;5;{bg}m{text}{_RESET}"


def render_matrix(doc: dict[str, Any], *, r_levels: int, f_levels: int, color: bool) -> str:
    """The matrix document (see `matrix`) as text, for a profile with r_levels R scores and
    f_levels F scores: R across (1 on the left), F down (the highest at the top), each cell
    its customer count over its dominant segment, then the customers per segment.

    With `color`, each cell and each segment of the list carries its segment's colour (ANSI
    256-colour escapes); without, the text has no escape code at all. Cells beyond the
    profile's levels (scores published under a profile with more levels) widen the grid,
    and a note says so.
    """
    by_cell = {(c["r"], c["f"]): c for c in doc["cells"]}
    rows = max([f_levels, *(f for _, f in by_cell)])
    cols = max([r_levels, *(r for r, _ in by_cell)])
    names = [c["segment"] for c in doc["cells"]]
    width = max(
        [
            3,
            len(str(cols)),
            *(len(n) for n in names),
            *(len(str(c["customers"])) for c in doc["cells"]),
        ]
    )
    cell_width = width + 2  # a space either side: a coloured block reads as a tile

    def tile(text: str, segment: str | None) -> str:
        body = f" {text:^{width}} "
        return _paint(body, segment) if color and segment is not None else body

    lines = [
        f"tenant {doc['tenant']}, {doc['customers']} customers, as of {doc['as_of']}",
        f"R (recency) across, 1 to {cols}; F (frequency) down, {rows} to 1; "
        "each cell: customers, dominant segment",
        "",
        "F\\R " + " ".join(f"{r:^{cell_width}}" for r in range(1, cols + 1)),
    ]
    for f in range(rows, 0, -1):
        counts, segments = [], []
        for r in range(1, cols + 1):
            cell = by_cell.get((r, f))
            if cell is None:
                counts.append(tile(".", None))
                segments.append(tile("", None))
            else:
                counts.append(tile(str(cell["customers"]), cell["segment"]))
                segments.append(tile(cell["segment"], cell["segment"]))
        lines.append(f"{f:>3} " + " ".join(counts))
        lines.append("    " + " ".join(segments))
    if (rows, cols) != (f_levels, r_levels):
        lines.append(
            f"(the profile has {r_levels} R and {f_levels} F levels; some customers were "
            "last published with more, under another profile)"
        )
    lines.append("")
    segments_by_count = sorted(doc["segments"].items(), key=lambda item: (-item[1], item[0]))
    name_width = max((len(s) for s in doc["segments"]), default=0)
    count_width = max((len(str(n)) for n in doc["segments"].values()), default=0)
    for name, count in segments_by_count:
        line = f"{name:<{name_width}}  {count:>{count_width}}"
        lines.append(f"{_paint('  ', name)} {line}" if color else line)
    return "\n".join(line.rstrip() for line in lines)
