"""Calibration and holdout check of a fit (`rfm-worker model`; the paper's Figure 2):
expected against actual repeat purchases per week. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from worker.rules.churn.model import ChurnModel, Params


def expected_repeat(model: ChurnModel, params: Params, t: float) -> float:
    """E[X(t)]: repeat purchases a new customer makes in their first t (unconditional;
    the calibration table of `rfm-worker model`, the paper's Figure 2)."""
    from scipy.special import hyp2f1

    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if t <= 0:
        return 0.0
    z = t / (alpha + t)
    if model == "bgnbd":
        hyp = float(hyp2f1(r, b, a + b - 1, z))
        return (a + b - 1) / (a - 1) * (1 - math.pow(alpha / (alpha + t), r) * hyp)
    hyp = float(hyp2f1(r, b + 1, a + b, z))
    return b / (a - 1) * (1 - hyp * math.pow(alpha / (alpha + t), r))


@dataclass(frozen=True, slots=True)
class Week:
    """One week of the check: repeat purchases (purchase days after each customer's first)
    the customers made, against what the model expects of them."""

    start_day: int  # UTC day number (days since the epoch) the week starts on
    holdout: bool  # after the split: the fit did not see it
    actual: int
    expected: float
    actual_cumulative: int
    expected_cumulative: float


def weekly_check(
    model: ChurnModel,
    params: Params,
    purchase_days: Sequence[Sequence[int]],
    *,
    split_day: int,
    end_day: int,
) -> list[Week]:
    """Expected vs actual repeat purchases per week of the customers whose first purchase
    day is before `split_day` (the calibration cohort), from the first of those days to
    `end_day` (exclusive). Each customer's purchase days are distinct UTC day numbers,
    ascending; E[X(t)] is the unconditional expectation of a customer t days after their
    first purchase, summed over the cohort (Fader et al. 2005, Figure 2)."""
    cohort = [days for days in purchase_days if days and days[0] < split_day]
    if not cohort:
        return []
    start = min(days[0] for days in cohort)
    firsts = [days[0] for days in cohort]
    repeats: dict[int, int] = {}
    for days in cohort:
        for day in days[1:]:
            if day < end_day:
                week = (day - start) // 7
                repeats[week] = repeats.get(week, 0) + 1
    weeks: list[Week] = []
    actual_total, expected_before = 0, 0.0
    cache: dict[int, float] = {}  # E[X(t)] by whole days: customers share ages
    for k in range(-(-(end_day - start) // 7)):
        week_end = min(start + 7 * (k + 1), end_day)
        expected_total = 0.0
        for first in firsts:
            age = week_end - first
            if age > 0:
                if age not in cache:
                    cache[age] = expected_repeat(model, params, age)
                expected_total += cache[age]
        actual_total += repeats.get(k, 0)
        weeks.append(
            Week(
                start_day=start + 7 * k,
                holdout=start + 7 * k >= split_day,
                actual=repeats.get(k, 0),
                expected=expected_total - expected_before,
                actual_cumulative=actual_total,
                expected_cumulative=expected_total,
            )
        )
        expected_before = expected_total
    return weeks
