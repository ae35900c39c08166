"""The read side: customer view, export and matrix, scored at any instant. Read-only."""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any, NamedTuple

from worker.rules.customer import Customer
from worker.rules.instants import iso
from worker.rules.messages import customer_view
from worker.rules.money import SCALE
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles
from worker.rules.scoring import score
from worker.state import flows
from worker.state.store import Store


def view(customer: Customer, profiles: Profiles, as_of_ms: int) -> dict[str, object] | None:
    """The customer's aggregates and scores at as_of; None without a counted order."""
    agg = customer.aggregates()
    if agg is None:
        return None
    profile = profiles.for_tenant(customer.tenant)
    sc = score(agg, as_of_ms, profile)
    return customer_view(
        customer.tenant,
        customer.customer_id,
        agg,
        sc,
        as_of_ms,
    )


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


def at_risk(profile: Profile) -> list[str] | None:
    """The segments of a profile's value at risk; None: no value model (no value sums)."""
    return None if profile.value_model is None else profile.at_risk_segments


def matrix(
    store: Store, tenant: str, as_of_ms: int, *, at_risk: list[str] | None = None
) -> dict[str, object]:
    """The R x F grid and segment counts, from the counters commits maintain (no scan).

    Counts reflect each customer's last published score. With `at_risk` (a profile with a
    value model: its at-risk segments), each cell, each segment and the whole grid also
    carry their customers' summed expected_value as of each one's last commit, and
    `value_at_risk` is that of the `at_risk` segments.
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
    doc: dict[str, object] = {
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
    if at_risk is not None:
        sums = store.reads.value_sums(lambda t: t if t == tenant else None)
        _add_values(doc, sums, at_risk)
    return doc


def _add_values(
    doc: dict[str, Any], sums: Counter[tuple[str, str, str]], at_risk: list[str]
) -> None:
    """The expected_value sums of the grid's cells and segments (money units read, currency
    units written)."""
    by_cell: Counter[tuple[int, int]] = Counter()
    by_segment: Counter[str] = Counter()
    for (_t, rfm, segment), units in sums.items():
        by_cell[(int(rfm[0]), int(rfm[1]))] += units
        by_segment[segment] += units
    for cell in doc["cells"]:
        cell["expected_value"] = _amount(by_cell[(cell["r"], cell["f"])])
    doc["expected_value"] = _amount(sum(by_segment.values()))
    doc["segment_expected_value"] = {
        name: _amount(by_segment[name]) for name in sorted(set(doc["segments"]) | set(by_segment))
    }
    doc["value_at_risk"] = {
        "segments": at_risk,
        "expected_value": _amount(sum(by_segment[name] for name in at_risk)),
    }


def _amount(units: int) -> float:
    return units / SCALE


def segments(store: Store, profiles: Profiles, tenant: str, as_of_ms: int) -> dict[str, object]:
    """The tenant's segments for the page (GET /v1/segments): each with its label and
    colours, in its profile's order, then any other name its customers or moves carry (a
    segment of an earlier profile); its size now and hourly over the last day; and the
    moves between segments over the last hour and day (worker/state/flows.py)."""
    profile = profiles.for_tenant(tenant)
    snap = store.flows.read(tenant, as_of_ms)
    instants, sizes = snap.sizes_over_time()
    windows = {name: snap.window(name) for name, _span, _length in flows.WINDOWS}
    mentioned = set(sizes) | {
        s for _since, moves in windows.values() for move in moves for s in move if s is not None
    }
    names = list(profile.segment_map.names)
    names += sorted(mentioned - set(names))
    r_levels, f_levels, m_levels = profile.segment_map.levels
    recorded = snap.recorded_since
    return {
        "tenant": tenant,
        "profile": profile.name,
        "as_of": iso(as_of_ms),
        "levels": {"r": r_levels, "f": f_levels, "m": m_levels},
        "segments": [
            {
                "name": name,
                **segment_style(name)._asdict(),
                "in_profile": name in profile.segment_map.names,
                "customers": snap.sizes[name],
            }
            for name in names
        ],
        "flows": {
            "recorded_since": None if recorded is None else iso(recorded),
            **{
                name: {
                    "since": iso(since),
                    "until": iso(as_of_ms),
                    "complete": recorded is not None and recorded <= since,
                    "moves": [
                        {"from": before, "to": after, "customers": n}
                        for (before, after), n in sorted(
                            moves.items(), key=lambda item: (-item[1], _order(item[0]))
                        )
                        if n
                    ],
                }
                for name, (since, moves) in windows.items()
            },
        },
        "sizes": {
            "at": [iso(t) for t in instants],
            "segments": {name: sizes.get(name, [0] * len(instants)) for name in names},
        },
    }


def _order(move: flows.Move) -> tuple[str, str]:
    return move[0] or "", move[1] or ""


# -- segment names and colours: the one definition the page (GET /v1/segments) and the
# terminal grid share ------------------------------------------------------------------------


class SegmentStyle(NamedTuple):
    label: str  # the name people read: "Can't lose them", not cant_lose_them
    colour: str  # "#rrggbb", the page's; the terminal's is the nearest of xterm's 256
    text: str  # "#000000" or "#ffffff", whichever reads better on `colour`


# The standard segments, in Paul Tol's "muted" scheme plus two greys: colours that stay
# apart for the common colour-vision deficiencies (tests/test_matrix_page.py checks every
# pair, simulated). Greens for the best customers, blues for the new, sand and purple for
# those slipping, rose and wine for the valuable ones going quiet, greys for the gone: lost
# (near black) never looks like at risk (rose), in any vision. The page prints each cell's
# segment too, so colour is never the only cue.
STANDARD_COLOURS: dict[str, tuple[str, str]] = {
    "champions": ("Champions", "#117733"),
    "loyal": ("Loyal", "#44AA99"),
    "potential_loyalist": ("Potential loyalists", "#999933"),
    "new_customers": ("New customers", "#88CCEE"),
    "promising": ("Promising", "#332288"),
    "need_attention": ("Need attention", "#DDCC77"),
    "about_to_sleep": ("About to sleep", "#AA4499"),
    "at_risk": ("At risk", "#CC6677"),
    "cant_lose_them": ("Can't lose them", "#882255"),
    "hibernating": ("Hibernating", "#DDDDDD"),
    "lost": ("Lost", "#222222"),
}
# Custom segment names (a profile's own map): a colour from Paul Tol's "bright" and "light"
# schemes, chosen by a stable hash of the name (crc32, not hash(), which changes from one
# process to the next), so the page and the terminal agree.
CUSTOM_PALETTE: tuple[str, ...] = (
    "#4477AA",
    "#66CCEE",
    "#228833",
    "#CCBB44",
    "#EE6677",
    "#AA3377",
    "#77AADD",
    "#EE8866",
    "#EEDD88",
    "#FFAABB",
    "#44BB99",
    "#BBCC33",
)


def segment_style(segment: str) -> SegmentStyle:
    """The label and colours of a segment: fixed for the 11 standard segments, for any other
    name its words capitalised and a deterministic pick from CUSTOM_PALETTE."""
    known = STANDARD_COLOURS.get(segment)
    if known is not None:
        label, colour = known
    else:
        words = segment.replace("_", " ").strip() or segment
        label = words[0].upper() + words[1:]
        colour = CUSTOM_PALETTE[zlib.crc32(segment.encode()) % len(CUSTOM_PALETTE)]
    return SegmentStyle(label, colour, _text_on(colour))


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _luminance(colour: str) -> float:
    """WCAG 2 relative luminance."""

    def linear(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = _rgb(colour)
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)


def _text_on(colour: str) -> str:
    """Black or white text, whichever has the higher WCAG contrast on `colour`."""
    lum = _luminance(colour)
    return "#ffffff" if 1.05 / (lum + 0.05) > (lum + 0.05) / 0.05 else "#000000"


_CUBE = (0, 95, 135, 175, 215, 255)  # xterm's 6x6x6 colour cube levels


def xterm_256(colour: str) -> int:
    """The nearest of xterm's 256 colours (its colour cube or grey ramp) to `colour`."""
    rgb = _rgb(colour)
    steps = [min(range(6), key=lambda i: abs(_CUBE[i] - v)) for v in rgb]
    cube = 16 + 36 * steps[0] + 6 * steps[1] + steps[2]
    grey = min(range(24), key=lambda i: abs(8 + 10 * i - sum(rgb) / 3))

    def distance(other: tuple[int, ...]) -> int:
        return sum((a - b) ** 2 for a, b in zip(other, rgb, strict=True))

    if distance(tuple(_CUBE[s] for s in steps)) <= distance((8 + 10 * grey,) * 3):
        return cube
    return 232 + grey


def _terminal(colour: str) -> tuple[int, int]:
    return xterm_256(colour), 231 if _text_on(colour) == "#ffffff" else 16


# (background, foreground) 256-colour codes, from the colours above. A terminal without 256
# colours maps them to the nearest.
SEGMENT_COLORS: dict[str, tuple[int, int]] = {
    name: _terminal(colour) for name, (_label, colour) in STANDARD_COLOURS.items()
}
CUSTOM_COLORS: tuple[tuple[int, int], ...] = tuple(_terminal(c) for c in CUSTOM_PALETTE)


# -- the matrix as text ---------------------------------------------------------------------

_RESET = "\x1b[0m"


def segment_color(segment: str) -> tuple[int, int]:
    """(background, foreground) 256-colour codes of a segment: its colour's (segment_style)
    nearest in xterm's palette."""
    return _terminal(segment_style(segment).colour)


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
