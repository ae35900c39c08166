"""Holdout check of a spend fit (`rfm-worker model`): the order value it predicts against
the one customers then spent, and the correlation of frequency and spend that the model
assumes to be none (Fader, Hardie & Lee 2005, section 3). Pure."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from worker.rules.churn.spend import SpendParams, expected_order_value
from worker.rules.money import SCALE

# The check's x buckets, (lowest, highest) repeat purchases; None: no upper end.
X_BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 0), (1, 1), (2, 2), (3, 4), (5, 9), (10, None))


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Customers of the calibration period who bought in the holdout: the mean of the
    order values predicted for them against the mean of the ones they spent."""

    frequency: str  # their calibration x: "all", "0", "1", "3-4", "10+", ...
    customers: int
    predicted: float  # mean E[M | x, m_x], currency units
    actual: float  # mean of their holdout order-day values, currency units


def holdout_spend(
    day_values: Sequence[tuple[int, int]], split_day: int
) -> tuple[tuple[int, float] | None, float | None]:
    """A customer's calibration (x, m_x) from their order days before `split_day`, and the
    mean value of their order days from it on (currency units); None for a period without
    one. `day_values`: (UTC day, net value in money units) per order day, ascending, as
    Aggregates.day_values() gives them (a customer with folded orders has no complete one:
    leave them out)."""
    before = [value for day, value in day_values if day < split_day]
    after = [value for day, value in day_values if day >= split_day]
    calibration = None
    if before:
        x = len(before) - 1
        calibration = (x, sum(before[1:]) / (x * SCALE) if x else 0.0)
    return calibration, (sum(after) / (len(after) * SCALE) if after else None)


def spend_check(
    params: SpendParams,
    calibration: Sequence[tuple[int, float]],
    holdout: Sequence[float | None],
) -> list[SpendRow]:
    """Predicted against actual order value of the customers (x, m_x) of `calibration`
    whose holdout mean (same position in `holdout`) is not None: "all" of them first, then
    per x bucket (X_BUCKETS) that has some."""
    pairs = [
        (x, expected_order_value(params, x, m_x), actual)
        for (x, m_x), actual in zip(calibration, holdout, strict=True)
        if actual is not None
    ]
    if not pairs:
        return []
    rows = [_row("all", [(p, a) for _, p, a in pairs])]
    for low, high in X_BUCKETS:
        chosen = [(p, a) for x, p, a in pairs if x >= low and (high is None or x <= high)]
        if chosen:
            label = f"{low}+" if high is None else str(low) if low == high else f"{low}-{high}"
            rows.append(_row(label, chosen))
    return rows


def _row(label: str, pairs: Sequence[tuple[float, float]]) -> SpendRow:
    n = len(pairs)
    return SpendRow(label, n, sum(p for p, _ in pairs) / n, sum(a for _, a in pairs) / n)


def frequency_spend_correlation(summaries: Sequence[tuple[int, float]]) -> float | None:
    """Pearson's correlation of x and m_x over the customers a spend fit uses (x >= 1,
    m_x > 0); None with fewer than two or when either is constant. Near 0 is what the
    model assumes (CDNOW: 0.11)."""
    fitted = [(float(x), m) for x, m in summaries if x >= 1 and m > 0]
    if len(fitted) < 2:
        return None
    try:
        return statistics.correlation([x for x, _ in fitted], [m for _, m in fitted])
    except statistics.StatisticsError:  # a constant x or m_x
        return None
