"""Per customer, from a fit: P(alive), its band, the day it falls below a bound, and the
expected orders. Pure; P(alive) and its day are on the scoring path (plain math, no
numpy)."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from worker.rules.churn.model import ChurnModel, Params
from worker.rules.churn.summaries import Summary

MAX_DAYS = 3_000_000  # ~8,000 years: a P(alive) crossing later than this is never


def p_alive(model: ChurnModel, params: Params, s: Summary) -> float:
    """P(alive | x, t_x, T): the probability the customer has not dropped out."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x = s.x
    if model == "bgnbd":
        if x == 0:
            return 1.0  # BG/NBD: nobody drops out before a repeat purchase
        log_div = (r + x) * math.log((alpha + s.T) / (alpha + s.t_x)) + math.log(a / (b + x - 1))
    else:
        log_div = (r + x) * math.log((alpha + s.T) / (alpha + s.t_x)) + math.log(a / (b + x))
    return _expit(-log_div)


def _expit(v: float) -> float:
    """1 / (1 + exp(-v)), without overflow."""
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def expected_orders(model: ChurnModel, params: Params, t: float, s: Summary) -> float:
    """E[purchases in (T, T + t] | x, t_x, T] (Fader et al. 2005 eq. 10; Batislam et al.);
    NaN where double precision cannot represent it (extreme parameters): a scorer must
    never raise on a customer."""
    try:
        value = _expected_orders(model, params, t, s)
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _expected_orders(model: ChurnModel, params: Params, t: float, s: Summary) -> float:
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, T = s.x, s.T
    z = t / (alpha + T + t)
    shrink = (r + x) * math.log((alpha + T) / (alpha + T + t))
    if model == "bgnbd":
        c = a + b + x - 1
        first = c / (a - 1)
        hyp = _log_hyp2f1(r + x, b + x, c, z)
        denominator = 1.0 if x == 0 else 1 + a / (b + x - 1) * _ratio(params, s)
    else:
        c = a + b + x
        first = c / (a - 1)
        hyp = _log_hyp2f1(r + x, b + x + 1, c, z)
        denominator = 1 + a / (b + x) * _ratio(params, s)
    return first * (1 - math.exp(hyp + shrink)) / denominator


def _ratio(params: Params, s: Summary) -> float:
    return math.pow((params.alpha + s.T) / (params.alpha + s.t_x), params.r + s.x)


def _log_hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """log 2F1(a, b; c; z); by Euler's transformation where the series overflows."""
    from scipy.special import hyp2f1

    value = float(hyp2f1(a, b, c, z))
    if math.isfinite(value) and value > 0:
        return math.log(value)
    alt = float(hyp2f1(c - a, c - b, c, z))
    return math.log(alt) + (c - a - b) * math.log1p(-z)


def band(p: float, bounds: Sequence[float]) -> int:
    """1 + the number of bounds at or below p (the bounds strictly increasing)."""
    return 1 + bisect_right(bounds, p)


def day_below(
    model: ChurnModel, params: Params, s: Summary, bound: float, *, now: float | None = None
) -> int | None:
    """The first whole day T' > T at which P(alive) < bound with no new order; None when
    that never happens (BG/NBD with x = 0 stays at 1) or it is below already.

    P(alive) = 1 / (1 + q ((α+T)/(α+t_x))^(r+x)), q = a/(b+x-1) (BG/NBD) or a/(b+x)
    (MBG/NBD), falls strictly as T grows, so P(alive) = bound has one root in T, in closed
    form: T* = (α+t_x) (((1-bound)/bound) / q)^(1/(r+x)) - α. The day is then the first
    whole T' past it, checked against P(alive) itself (float rounding at the edge).
    `now`: P(alive) at T when the caller has it already.
    """
    if model == "bgnbd" and s.x == 0:
        return None
    if (p_alive(model, params, s) if now is None else now) < bound:
        return None
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    q = a / (b + s.x - 1) if model == "bgnbd" else a / (b + s.x)
    log_root = math.log(alpha + s.t_x) + (math.log((1 - bound) / bound) - math.log(q)) / (r + s.x)
    if log_root > math.log(MAX_DAYS):
        return None
    day = max(s.T + 1, math.floor(math.exp(log_root) - alpha))

    def below(days: int) -> bool:
        return p_alive(model, params, Summary(s.x, s.t_x, days)) < bound

    # The closed form is exact up to rounding: a step or two at most (bounded regardless).
    for _ in range(64):
        if below(day):
            break
        day += 1
    for _ in range(64):
        if day - 1 <= s.T or not below(day - 1):
            break
        day -= 1
    return day
