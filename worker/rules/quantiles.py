"""Quantile scoring: the cut points of a customer base, and scores by quintile. Pure.

A profile with `mode = "quantiles"` (worker/rules/profile.py) has no threshold lists: R, F and M
are the quintile of the customer among its tenant's live customer base (every customer
with a counted order). For one dimension over a population of n values, the cut points are

    c_k = sorted(values)[ceil(k * n / 5) - 1]     for k = 1..4

the smallest value with at least k/5 of the population at or below it. They become the
thresholds of an ordinary thresholds-mode profile (`Profile.scored_by`), so scoring, decay
and rescoring work unchanged:

    recency_days     = c_k(days since the last order)
    frequency_orders = c_k(orders) + 1
    monetary         = c_k(net spend, money units) + 1 unit

which gives, with L the number of customers with a strictly smaller value,

    F, M = 1 + min(4, floor(5 * L / n))
    R    = 5 - min(4, floor(5 * L / n))      (L: customers with strictly fewer days)

Ties share the lower score (the higher R for recency): customers with equal values always
score the same, so a level may be empty and cut points may be equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

QUINTILES = 5


@dataclass(frozen=True, slots=True)
class Cuts:
    """One computation of a profile's cut points, stored versioned (worker/state/keys.py)."""

    version: int  # 1, 2, ... per profile: each computation stores the next
    computed_at: int  # epoch ms, on the worker's clock (the event clock under RFM_CLOCK=event)
    population: int  # customers with a counted order (estimated when sampled)
    sampled: int  # customers whose values were read; == population when exact
    recency_days: tuple[int, ...]  # 4 cut points each
    frequency_orders: tuple[int, ...]
    monetary: tuple[int, ...]  # money units (worker.rules.money)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version,
                "computed_at": self.computed_at,
                "population": self.population,
                "sampled": self.sampled,
                "recency_days": list(self.recency_days),
                "frequency_orders": list(self.frequency_orders),
                "monetary": list(self.monetary),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Cuts:
        doc = orjson.loads(raw)
        return cls(
            version=int(doc["version"]),
            computed_at=int(doc["computed_at"]),
            population=int(doc["population"]),
            sampled=int(doc["sampled"]),
            recency_days=tuple(int(v) for v in doc["recency_days"]),
            frequency_orders=tuple(int(v) for v in doc["frequency_orders"]),
            monetary=tuple(int(v) for v in doc["monetary"]),
        )


def quintile_cuts(values: Sequence[int]) -> tuple[int, ...]:
    """c_k = sorted[ceil(k*n/5) - 1], k = 1..4: non-decreasing; empty input has none."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return ()
    # ceil(k*n/5) in integers: -(-k*n // 5)
    return tuple(ordered[-(-k * n // QUINTILES) - 1] for k in range(1, QUINTILES))


def cut_points(
    days: Sequence[int],
    orders: Sequence[int],
    monetary: Sequence[int],
    *,
    version: int = 1,
    computed_at: int = 0,
    population: int | None = None,
) -> Cuts | None:
    """The cut points of one population (the three sequences are per customer, same
    length); None for an empty population (customers then score 333)."""
    if not (len(days) == len(orders) == len(monetary)):
        raise ValueError("days, orders and monetary must have one value per customer")
    if not days:
        return None
    return Cuts(
        version=version,
        computed_at=computed_at,
        population=len(days) if population is None else population,
        sampled=len(days),
        recency_days=quintile_cuts(days),
        frequency_orders=quintile_cuts(orders),
        monetary=quintile_cuts(monetary),
    )
