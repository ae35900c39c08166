"""Per customer, from a fit: P(alive), its band, the day it falls below a bound, the
expected orders and the day the expected value falls below a bound. Pure; on the scoring
path (plain math, no numpy), through each fit's `Predictor` (model.py `Fit.predictor`)."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # model.py makes each fit's Predictor
    from worker.rules.churn.model import ChurnModel, Params
    from worker.rules.churn.summaries import Summary

MAX_DAYS = 3_000_000  # ~8,000 years: a P(alive) crossing later than this is never
MAX_TERMS = 4096  # values of x whose terms a Predictor keeps (~200 bytes each)
MAX_PREDICTIONS = 8192  # results a Predictor keeps of each kind (~300 bytes each)


def p_alive(model: ChurnModel, params: Params, s: Summary) -> float:
    """P(alive | x, t_x, T): the probability the customer has not dropped out."""
    return predictor(model, params).p_alive(s.x, s.t_x, s.T)


def expected_orders(model: ChurnModel, params: Params, t: float, s: Summary) -> float:
    """E[purchases in (T, T + t] | x, t_x, T] (Fader et al. 2005 eq. 10; Batislam et al.);
    NaN where double precision cannot represent it (extreme parameters): a scorer must
    never raise on a customer."""
    return predictor(model, params).expected_orders(t, s.x, s.t_x, s.T)


class Predictor:
    """The formulas of one fit, (model, params), per customer (x, t_x, T).

    A customer's figures are a few logarithms and one hypergeometric function, but in
    Python the terms that depend on the fit and x alone cost as much again: they are
    computed once per x here (`_terms`). Every float operation is the formula's, in its
    order, so that the results are the same bits whoever computes them.

    `predict` and `day_below`, on the commit path of every event, keep their results for
    customers scored on a day they ordered (t_x = T, as a live stream scores them), by
    (t, x, T) and (x, T, bound): a few thousand of those serve most events of a live
    stream, at a fraction of the cost of computing them. Other customers (a backfill
    scored at one instant) rarely share their (x, t_x, T): theirs are not kept.

    P(alive) = 1 / (1 + q ((α+T)/(α+t_x))^(r+x)), q = a/(b+x-1) (BG/NBD, x > 0; 1 at
    x = 0) or a/(b+x) (MBG/NBD), evaluated as expit(-log(...)) (no overflow). The expected
    orders in (T, T+t] are (c/(a-1)) (1 - ((α+T)/(α+T+t))^(r+x) 2F1(r+x, h; c; t/(α+T+t)))
    divided by 1 + q ((α+T)/(α+t_x))^(r+x) (1 at x = 0 for BG/NBD), with c = a+b+x-1 and
    h = b+x (BG/NBD), or c = a+b+x and h = b+x+1 (MBG/NBD).
    """

    __slots__ = ("_by_x", "_days_below", "_predicted", "alpha", "bgnbd", "model", "params")

    def __init__(self, model: ChurnModel, params: Params) -> None:
        self.model, self.params = model, params
        self.alpha, self.bgnbd = params.alpha, model == "bgnbd"
        # x -> (r+x, log q or None (P(alive) = 1), q, c, c/(a-1), h)
        self._by_x: dict[int, tuple[float, float | None, float, float, float, float]] = {}
        # Customers scored on a day they ordered (t_x = T): (t, x, T) -> `predict`'s figures,
        # (x, T, bound) -> `day_below`'s day (-1: None)
        self._predicted: dict[tuple[float, int, int], tuple[float, float]] = {}
        self._days_below: dict[tuple[int, int, float], int] = {}

    def _terms(self, x: int) -> tuple[float, float | None, float, float, float, float]:
        terms = self._by_x.get(x)
        if terms is None:
            r, a, b = self.params.r, self.params.a, self.params.b
            if self.bgnbd:
                q = 0.0 if x == 0 else a / (b + x - 1)
                c, h = a + b + x - 1, b + x
            else:
                q = a / (b + x)
                c, h = a + b + x, b + x + 1
            log_q = None if self.bgnbd and x == 0 else math.log(q) if q > 0 else -math.inf
            first = c / (a - 1) if a != 1 else math.nan
            if len(self._by_x) >= MAX_TERMS:  # a customer with ever more order days
                self._by_x.clear()
            terms = self._by_x[x] = (r + x, log_q, q, c, first, h)
        return terms

    def p_alive(self, x: int, t_x: int, T: int) -> float:
        n, log_q, _, _, _, _ = self._terms(x)
        if log_q is None:
            return 1.0  # BG/NBD: nobody drops out before a repeat purchase
        return _expit(-(n * math.log((self.alpha + T) / (self.alpha + t_x)) + log_q))

    def expected_orders(self, t: float, x: int, t_x: int, T: int) -> float:
        """NaN where double precision cannot represent it."""
        n, log_q, q, c, first, h = self._terms(x)
        alpha_T = self.alpha + T
        try:
            denominator = 1.0
            if log_q is not None:
                denominator = 1 + q * math.pow(alpha_T / (self.alpha + t_x), n)
            return self._expected(t, alpha_T, n, c, first, h, denominator)
        except (ValueError, OverflowError, ZeroDivisionError):
            return math.nan

    def predict(self, t: float, x: int, t_x: int, T: int) -> tuple[float, float]:
        """(p_alive, expected_orders): the ratio (α+T)/(α+t_x) computed once for both."""
        live = t_x == T  # scored on a day it ordered, as a live stream scores
        if live and (found := self._predicted.get((t, x, T))) is not None:
            return found
        # (the terms looked up here first: a call less on every event)
        n, log_q, q, c, first, h = self._by_x.get(x) or self._terms(x)
        alpha_T = self.alpha + T
        p, denominator = 1.0, 1.0
        ratio = alpha_T / (self.alpha + t_x)
        if log_q is not None:
            p = _expit(-(n * math.log(ratio) + log_q))
        try:
            if log_q is not None:
                denominator = 1 + q * math.pow(ratio, n)
            found = p, self._expected(t, alpha_T, n, c, first, h, denominator)
        except (ValueError, OverflowError, ZeroDivisionError):
            found = p, math.nan
        if live:
            if len(self._predicted) >= MAX_PREDICTIONS:
                self._predicted.clear()
            self._predicted[t, x, T] = found
        return found

    def day_below(self, s: Summary, bound: float, now: float) -> int | None:
        """`day_below` (below) of this fit, `now` P(alive) at s. For a customer scored on a
        day it ordered (t_x = T), `now` is P(alive) of (x, T, T): the day is kept by
        (x, T, bound), as `predict` keeps its figures."""
        if s.t_x != s.T:
            return day_below(self.model, self.params, s, bound, now=now)
        key = (s.x, s.T, bound)
        day = self._days_below.get(key)
        if day is None:
            found = day_below(self.model, self.params, s, bound, now=now)
            day = -1 if found is None else found
            if len(self._days_below) >= MAX_PREDICTIONS:
                self._days_below.clear()
            self._days_below[key] = day
        return None if day < 0 else day

    @staticmethod
    def _expected(
        t: float, alpha_T: float, n: float, c: float, first: float, h: float, denominator: float
    ) -> float:
        hyp2f1 = _HYP2F1[0] if _HYP2F1 else _load_hyp2f1()
        z = t / (alpha_T + t)
        value = hyp2f1(n, h, c, z)
        if math.isfinite(value) and value > 0:
            log_hyp = math.log(value)
        else:  # Euler's transformation where the series overflows
            log_hyp = math.log(hyp2f1(c - n, c - h, c, z)) + (c - n - h) * math.log1p(-z)
        shrink = n * math.log(alpha_T / (alpha_T + t))
        value = first * (1 - math.exp(log_hyp + shrink)) / denominator
        return value if math.isfinite(value) else math.nan


def predictor(model: ChurnModel, params: Params) -> Predictor:
    """The Predictor of (model, params), made once per Params object (which it keeps, so
    that its id is not reused while it is here), for the functions above; the scoring path
    takes its fit's own (`Fit.predictor`) without this lookup."""
    found = _PREDICTORS.get((model, id(params)))
    if found is None:
        if len(_PREDICTORS) >= 256:  # fits replaced over a long run
            _PREDICTORS.clear()
        found = _PREDICTORS[(model, id(params))] = Predictor(model, params)
    return found


_PREDICTORS: dict[tuple[str, int], Predictor] = {}


def _expit(v: float) -> float:
    """1 / (1 + exp(-v)), without overflow."""
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


_HYP2F1: list[Callable[[float, float, float, float], Any]] = []


def _load_hyp2f1() -> Callable[[float, float, float, float], Any]:
    """scipy's hyp2f1, imported at the first use (the import takes ~0.4 s; an import
    statement per call ~0.3 µs, a tenth of the expected orders). Its scalar entry point
    (scipy.special.cython_special): the same C function as the ufunc, with the same
    results bit for bit (tests/rules/test_churn.py), called for 0.3 µs instead of 1.0
    (no array dispatch), 2 to 4 times per event of a value model with bands."""
    from scipy.special.cython_special import hyp2f1

    _HYP2F1.append(hyp2f1)
    return _HYP2F1[0]


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
    alive = predictor(model, params).p_alive

    def below(days: int) -> bool:
        return alive(s.x, s.t_x, days) < bound

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


def day_value_below(
    model: ChurnModel,
    params: Params,
    t: float,
    s: Summary,
    order_value: float,
    bound: float,
    *,
    now: float,
) -> int | None:
    """The first whole day T' > T at which the value order_value × expected_orders(t) is
    below `bound` or no longer a number, with no new order; `now`, the value at T, is at
    least `bound`. None: not within ~MAX_DAYS (a doubling search's reach).

    The value falls as T grows (`_value_day_by_model`), so that day is the one crossing.
    Found by a model of the curve, each guess checked exactly: ~2-3 evaluations; the
    doubling-then-bisecting search (~10-20) where the model cannot be used.
    """
    expected = predictor(model, params).expected_orders

    def value(days: int) -> float:
        return order_value * expected(t, s.x, s.t_x, days)

    day = _value_day_by_model(model, params, s, value, bound, now)
    return _value_day_by_search(value, bound, s.T) if day is None else day


def value_holds(
    model: ChurnModel,
    params: Params,
    t: float,
    s: Summary,
    order_value: float,
    bound: float,
    day: int,
) -> bool:
    """Whether the value order_value × expected_orders(t) is still a number at least
    `bound` on `day` (with no new order): then, the value falling as the silence grows
    (`_value_day_by_model`), `day_value_below` is after `day`. One evaluation, where the
    day itself takes two or three and two root solves."""
    v = order_value * predictor(model, params).expected_orders(t, s.x, s.t_x, day)
    return 0 < v < math.inf and v >= bound


def _value_day_by_search(value: Callable[[int], float], bound: float, T: int) -> int | None:
    """Double then bisect on `not value >= bound`: the reference, and the fallback."""

    def changed(days: int) -> bool:
        return not value(days) >= bound  # below, or no longer a number

    low, step = T, 1  # changed(low) is False; find a high with changed(high)
    while not changed(low + step):
        low += step
        step *= 2
        if low > MAX_DAYS:
            return None
    high = low + step
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if changed(mid) else (mid, high)
    return high


def _value_day_by_model(
    model: ChurnModel,
    params: Params,
    s: Summary,
    value: Callable[[int], float],
    bound: float,
    now: float,
) -> int | None:
    """`day_value_below` from a model of log value(d); None where the model cannot decide.

    E[purchases] = P(alive) × E[purchases | alive] (a customer who dropped out buys
    nothing). In y = log(α + d): log P(alive) = -softplus(c0 + (r+x) y) exactly (see
    `day_below`; P(alive) = 1, no term, for BG/NBD with x = 0), and log E[· | alive] is
    smooth and slowly falling (≈ -y for a short horizon, the posterior mean rate given
    alive being (r+x)/(α+d)): modelled as the line through the last two evaluated days
    (slope -1 from T alone). The model's root gives a day; its exact value narrows the
    bracket lo < answer <= hi (lo: last day known not below, hi: first known below) until
    hi = lo + 1.

    Why that is the answer: the value decreases in d. P(alive) does (its formula);
    E[· | alive] does too: given alive at d, λ ~ Gamma(r+x, α+d), stochastically smaller
    as d grows, p's posterior does not depend on d, and the expected purchases given
    (λ, p) grow with λ. So the predicate is monotone, its only crossing is the bisection's
    answer, and an exact check at hi and hi - 1 is enough. A value that is NaN, infinite
    or 0 (rounding may break monotony there), a guess past MAX_DAYS (where the search
    answers None) or no convergence: None, and the search decides.
    """
    if s.T >= MAX_DAYS:
        return None
    n = params.r + s.x
    c0: float | None = None  # P(alive) = 1 / (1 + exp(c0 + n y)); None: P(alive) = 1
    if model == "mbgnbd" or s.x > 0:
        q = params.a / (params.b + s.x) if model == "mbgnbd" else params.a / (params.b + s.x - 1)
        c0 = math.log(q) - n * math.log(params.alpha + s.t_x)
    target, y_max = math.log(bound), math.log(params.alpha + MAX_DAYS)
    lo, hi = s.T, MAX_DAYS + 1
    y_a = y = math.log(params.alpha + lo)  # (y_a, l_a): the last point, log E[· | alive]
    l_a = math.log(now) + _softplus(c0, n, y_a)
    slope = -1.0
    for _ in range(8):
        root = _model_root(c0, n, y_a, l_a, min(slope, 0.0), target, y)
        if root is None or root > y_max:
            return None
        y = root
        day = min(max(math.floor(math.exp(y) - params.alpha) + 1, lo + 1), hi - 1)
        v = value(day)
        if not 0 < v < math.inf:
            return None
        lo, hi = (day, hi) if v >= bound else (lo, day)
        if hi - lo == 1:
            return hi if hi <= MAX_DAYS else None
        y_d = math.log(params.alpha + day)
        l_d = math.log(v) + _softplus(c0, n, y_d)
        slope, y_a, l_a = (l_d - l_a) / (y_d - y_a), y_d, l_d
    return None


def _softplus(c0: float | None, n: float, y: float) -> float:
    """-log P(alive) at y = log(α + d): log(1 + exp(c0 + n y)), without overflow."""
    if c0 is None:
        return 0.0
    w = c0 + n * y
    return max(w, 0.0) + math.log1p(math.exp(-abs(w)))


def _model_root(
    c0: float | None, n: float, y_a: float, l_a: float, slope: float, target: float, y: float
) -> float | None:
    """The y at which l_a + slope (y - y_a) - softplus(c0 + n y) = target, by Newton from
    y. The left side is concave and decreasing (slope <= 0), so Newton converges from
    anywhere (past the root at most once, then monotonically)."""
    if c0 is None:
        return None if slope >= 0 else y_a + (target - l_a) / slope
    for _ in range(60):
        w = c0 + n * y
        e = math.exp(-abs(w))
        derivative = slope - n * (1 / (1 + e) if w >= 0 else e / (1 + e))
        if derivative >= 0:
            return None  # P(alive) flat to double precision, the line too
        step = (l_a + slope * (y - y_a) - max(w, 0.0) - math.log1p(e) - target) / derivative
        y -= step
        if abs(step) < 1e-9:
            return y
    return None
