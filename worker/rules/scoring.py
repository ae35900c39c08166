"""R, F, M scores and the segment: a pure function of (aggregates, as_of, profile).

The same function serves the consumer, the read API, export and the sweeper, so a score
never depends on who computed it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from worker.rules import churn
from worker.rules.aggregates import Aggregates
from worker.rules.instants import DAY_MS
from worker.rules.profile import Profile


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Score:
    r: int
    f: int
    m: int
    segment: str
    orders: int  # counted orders inside the frequency window at as_of
    # With a churn model and its fit (docs/churn.md); None otherwise.
    p_alive: float | None = None
    band: int | None = None  # the P(alive) band, 1 + the bounds at or below p_alive
    expected_orders: float | None = None  # in the next churn_horizon_days
    # With a value model too and a spend fit: E[M | x, m_x] (currency units), times the
    # expected orders, and its band (1 + the value_bands at or below it; None: no bands).
    expected_order_value: float | None = None
    expected_value: float | None = None
    value_band: int | None = None
    # The churn model's summary of the customer at as_of (None: no fit, or no order), for
    # the next due instant (worker/rules/decay.py), which would otherwise compute it again.
    summary: churn.Summary | None = field(default=None, repr=False, compare=False)

    @property
    def rfm(self) -> str:
        return f"{self.r}{self.f}{self.m}"


def days_between(earlier_ms: int, later_ms: int) -> int:
    """Whole days, floored: days = floor((as_of - t) / 24h), negative for future t."""
    return (later_ms - earlier_ms) // DAY_MS


def recency_score(days: int, thresholds: list[int]) -> int:
    """5 if days <= t[0], 4 if <= t[1], ... 1 past the last threshold (for 4 thresholds)."""
    return len(thresholds) + 1 - bisect_left(thresholds, days)


def at_least_score(value: int | float, thresholds: list[int] | tuple[int, ...]) -> int:
    """1 + the number of thresholds that value reaches (F and M)."""
    return 1 + bisect_right(thresholds, value)


def windowed_orders(agg: Aggregates, as_of_ms: int, window_days: int | None) -> int:
    if window_days is None:
        return agg.orders_lifetime
    # An order stops counting when it is window_days days old: placed_at > as_of - window.
    oldest = as_of_ms - window_days * DAY_MS
    return len(agg.order_times) - bisect_right(agg.order_times, oldest)


def score(agg: Aggregates, as_of_ms: int, profile: Profile) -> Score:
    orders = windowed_orders(agg, as_of_ms, profile.frequency_window_days)
    r = recency_score(days_between(agg.last_order_at, as_of_ms), profile.recency_days)
    f = at_least_score(orders, profile.frequency_orders)
    m = at_least_score(agg.monetary, profile.monetary_units)
    s = Score(r, f, m, profile.segment_map.segment(r, f, m), orders)
    if profile.churn_fit is not None:  # only profiles with a model and a fit pay for it
        fit = profile.churn_fit
        s.summary = summary = churn.summary_of(agg, as_of_ms)
        if summary is not None:
            p, e = fit.predictor.predict(
                profile.churn_horizon_days, summary.x, summary.t_x, summary.T
            )
            s.p_alive, s.band = p, churn.band(p, profile.p_alive_bands)
            s.expected_orders = None if math.isnan(e) else e
            if profile.value_model is not None and fit.spend is not None:
                _value(s, agg, as_of_ms, profile, fit.spend)
    return s


def _value(
    s: Score, agg: Aggregates, as_of_ms: int, profile: Profile, spend: churn.SpendFit
) -> None:
    """The expected order value and value, and the value band, of a scored customer."""
    summary = churn.spend_summary(agg, as_of_ms, s.summary)
    if summary is None:
        return
    eov = churn.expected_order_value(spend.params, *summary)
    if not math.isfinite(eov):  # a scorer never raises, and records carry no NaN
        return
    s.expected_order_value = eov
    value = math.nan if s.expected_orders is None else eov * s.expected_orders
    if math.isfinite(value):
        s.expected_value = value
        if profile.value_bands:
            s.value_band = churn.value_band(value, profile.value_bands)
