"""Time as an input: when a customer's score next changes by itself, and the overdue rule.

Pure. With no new order, time can only lower R (a recency boundary passes) and, with a
frequency window, lower F (an order leaves the window); M never moves by itself. With a
churn model, P(alive) falls as the customer's silence grows: its band drops at a UTC
midnight computed from the fit (worker/rules/churn/prediction.py `day_below`); with a value
model, so do the expected orders and with them the expected value, whose band drops at a
midnight found from the fit too (prediction.py `day_value_below`). So the instant of a
customer's next visible change is known in advance: `next_due` computes it, the store
keeps every customer in a due index under that instant, and a sweep reads only the
customers whose instant has come.

Overdue: a customer with at least 3 counted orders whose silence exceeds
`overdue_factor` x the median gap between their orders gets one `rfm.overdue` per silence.
The state remembers the last order the alert was for (`Customer.alerted`): a later order
ends the silence, and the next silence may alert again.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import pairwise

from worker.rules import churn
from worker.rules.aggregates import Aggregates
from worker.rules.instants import DAY_MS
from worker.rules.profile import Profile
from worker.rules.scoring import Score

MIN_OVERDUE_ORDERS = 3
# Instants past 9999-12-31 are never reached (and would not survive a double in Redis).
MAX_DUE_MS = 253_402_300_799_999


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Rhythm:
    """A regular customer's buying rhythm and when their silence becomes overdue."""

    median_gap_ms: float
    overdue_at: int  # the first instant at which silence > factor x median gap

    @property
    def median_gap_days(self) -> float:
        return round(self.median_gap_ms / DAY_MS, 3)


def rhythm(agg: Aggregates, profile: Profile) -> Rhythm | None:
    """None when the rule does not apply (factor 0, fewer than 3 orders, no gap at all)."""
    median = _median_gap(agg, profile)
    if median is None:
        return None
    return Rhythm(median, _overdue_at(agg, profile, median))


def _median_gap(agg: Aggregates, profile: Profile) -> float | None:
    """The median gap between the customer's orders, if the overdue rule applies."""
    if profile.overdue_factor <= 0 or agg.orders_lifetime < MIN_OVERDUE_ORDERS:
        return None
    gaps = agg.gaps
    if gaps is None:
        gaps = sorted([b - a for a, b in pairwise(agg.order_times)])  # a list: no generator
    mid = len(gaps) // 2
    median = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
    if median <= 0:  # every order at the same instant: no rhythm to be late against
        return None
    return median


def _overdue_at(agg: Aggregates, profile: Profile, median: float) -> int:
    return agg.last_order_at + math.floor(profile.overdue_factor * median) + 1


def overdue_pending(rh: Rhythm | None, agg: Aggregates, alerted: int | None) -> bool:
    """Whether the customer has a rhythm and this silence has not been alerted yet."""
    return rh is not None and unalerted(agg, alerted)


def unalerted(agg: Aggregates, alerted: int | None) -> bool:
    """Whether this silence (since the last order) has not been alerted yet."""
    return alerted is None or agg.last_order_at > alerted


def next_due(
    agg: Aggregates | None,
    profile: Profile,
    as_of_ms: int,
    alerted: int | None,
    scored: Score | None = None,
) -> int | None:
    """The instant of the customer's next change by time alone, scored at as_of.

    Recency and frequency instants are always after as_of; a pending overdue alert's
    instant may be at or before it (due now). None: nothing will ever change by itself.
    `scored`: the customer's score of these aggregates at as_of, when the caller has it
    (the churn and value models' figures are then not computed again).
    """
    if agg is None:
        return None
    due = MAX_DUE_MS + 1  # never
    thresholds = profile.recency_days
    days = (as_of_ms - agg.last_order_at) // DAY_MS
    i = bisect_left(thresholds, days)  # the first threshold not yet passed
    if i < len(thresholds):
        due = agg.last_order_at + (thresholds[i] + 1) * DAY_MS
    window = profile.frequency_window_days
    if window is not None:
        times = agg.order_times
        first = bisect_right(times, as_of_ms - window * DAY_MS)  # oldest order still counted
        count = len(times) - first
        level = bisect_right(profile.frequency_orders, count)
        reached = profile.frequency_orders[level - 1] if level else 0
        if reached:  # F drops once count falls below the threshold it reached (never 0)
            due = min(due, times[first + count - reached] + window * DAY_MS)
    if unalerted(agg, alerted):  # the rhythm only matters then (and costs a sort)
        median = _median_gap(agg, profile)
        if median is not None:
            due = min(due, _overdue_at(agg, profile, median))
    if profile.churn_fit is not None:  # only profiles with a model and a fit pay for it
        at = p_alive_band_due(agg, profile, as_of_ms, scored, before=due)
        if at is not None:
            due = min(due, at)
        if profile.value_bands and profile.churn_fit.spend is not None:
            at = value_band_due(agg, profile, as_of_ms, scored, before=due)
            if at is not None:
                due = min(due, at)
    return due if due <= MAX_DUE_MS else None


def p_alive_band_due(
    agg: Aggregates,
    profile: Profile,
    as_of_ms: int,
    scored: Score | None = None,
    *,
    before: int | None = None,
) -> int | None:
    """The UTC midnight at which P(alive) falls below the current band's lower bound with
    no new order (T counts whole days, so P(alive) only moves at midnights); None: never.
    `scored`: as in `next_due`; `before`: as in `value_band_due` (one evaluation of
    P(alive) tells most often, where the day takes a root and two or three)."""
    fit = profile.churn_fit
    assert fit is not None
    bounds = profile.p_alive_bands
    if scored is not None:  # scored by this profile: its band is P(alive)'s in `bounds`
        s, p, level = scored.summary, scored.p_alive, scored.band
        if s is None or p is None or level is None:
            return None
    else:
        s = churn.summary_of(agg, as_of_ms)
        if s is None:
            return None
        p = churn.p_alive(fit.model, fit.params, s)
        level = churn.band(p, bounds)
    if level == 1:
        return None  # the lowest band: nothing below to cross into
    bound, first = bounds[level - 2], agg.first_order_at // DAY_MS
    last = _last_day_before(before, first)
    if last is not None and (
        last <= s.T or fit.predictor.p_alive(s.x, s.t_x, last) >= bound  # falls with T
    ):
        return None  # not below before `last` + 1: at `before` or later
    day = fit.predictor.day_below(s, bound, p)
    if day is None:
        return None
    return (first + day) * DAY_MS  # day: days after the first


def value_band_due(
    agg: Aggregates,
    profile: Profile,
    as_of_ms: int,
    scored: Score | None = None,
    *,
    before: int | None = None,
) -> int | None:
    """The UTC midnight at which the value band changes with no new order; None: never.

    The expected order value depends on the orders only; the expected orders fall as the
    silence grows (whole days of T, so at midnights), and the expected value with them:
    the first day it is below the current band's lower bound (or no longer known),
    `churn.day_value_below`. `scored`: as in `next_due`.

    `before` (epoch ms): the caller has that instant of a change already, and only wants
    this one if it is earlier; None when it is not. Most often one evaluation of the value
    tells (on the last day whose midnight is before `before`), where the day itself costs
    several evaluations and root solves.
    """
    fit = profile.churn_fit
    bounds = profile.value_bands
    assert fit is not None and fit.spend is not None and bounds
    horizon = profile.churn_horizon_days
    if scored is not None:  # scoring left out what is not finite: None here
        s, order_value, now = scored.summary, scored.expected_order_value, scored.expected_value
        if s is None or order_value is None or now is None:
            return None
    else:
        s = churn.summary_of(agg, as_of_ms)
        spend = churn.spend_summary(agg, as_of_ms, s)
        if s is None or spend is None:
            return None
        order_value = churn.expected_order_value(fit.spend.params, *spend)
        now = order_value * churn.expected_orders(fit.model, fit.params, horizon, s)  # NaN: unknown
    if not math.isfinite(now) or (level := churn.value_band(now, bounds)) == 1:
        return None  # no band, or the lowest: nothing below to cross into
    bound = bounds[level - 2]
    first = agg.first_order_at // DAY_MS
    last = _last_day_before(before, first)
    if last is not None and (
        last <= s.T
        or churn.value_holds(fit.model, fit.params, horizon, s, order_value, bound, last)
    ):
        return None  # not below before `last` + 1: at `before` or later
    day = churn.day_value_below(fit.model, fit.params, horizon, s, order_value, bound, now=now)
    if day is None:
        return None
    return (first + day) * DAY_MS  # days after the first


def _last_day_before(before: int | None, first: int) -> int | None:
    """The last day (counted from the first order's, as T is) whose midnight is before the
    instant `before`; None when there is no such bound (None, or never)."""
    if before is None or before > MAX_DUE_MS:
        return None
    return -(-before // DAY_MS) - first - 1
