"""Churn model: BG/NBD and MBG/NBD, fitted per profile, P(alive) per customer. Pure.

BG/NBD (Fader, Hardie & Lee, "Counting Your Customers the Easy Way", Marketing Science
2005): while alive, a customer buys at a Poisson rate λ ~ Gamma(r, α); after every
purchase they drop out with probability p ~ Beta(a, b). MBG/NBD (Batislam, Denizel &
Filiztekin 2007) lets the customer drop out at time 0 too, so a one-time buyer is not
surely alive. Both need per customer only

    x    repeat purchases:  distinct UTC days with a counted order, minus 1
    t_x  days from the first such day to the last
    T    days from the first such day to the UTC day of the instant of scoring

(the `lifetimes` package's summary with daily periods: whole days, so P(alive) moves only
at UTC midnights). Time unit: days. The formulas are the papers' (and `lifetimes`'):
tests/rules/test_churn.py checks them against that package to 1e-6 relative.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from worker.rules.instants import DAY_MS

if TYPE_CHECKING:  # customer.py imports the profiles, which import this module
    import numpy as np
    from numpy.typing import NDArray

    from worker.rules.aggregates import Aggregates

    Array = NDArray[np.float64]

# numpy and scipy are imported where used: every process loads the profiles (this module),
# only those with a churn model need them (scipy.special alone takes ~0.4 s to import).

ChurnModel = Literal["bgnbd", "mbgnbd"]
CHURN_MODELS: tuple[ChurnModel, ...] = ("bgnbd", "mbgnbd")
# BFGS stops on "precision loss" when the mean log-likelihood no longer changes in double
# precision: at an optimum that is where it ends, so a gradient this small (per customer,
# in log-parameters) is accepted as converged.
GRADIENT_OK = 1e-5
MAX_DAYS = 3_000_000  # ~8,000 years: a P(alive) crossing later than this is never


@dataclass(frozen=True, slots=True)
class Params:
    """The four population parameters; α in the time unit of the data fitted (days here)."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True, slots=True)
class Fit:
    """One fit of a profile's model, stored versioned like quantile cut points."""

    model: ChurnModel
    params: Params
    log_likelihood: float  # total over the customers fitted (not the mean)
    population: int  # customers with a counted order (estimated when sampled)
    sampled: int  # customers fitted
    version: int  # 1, 2, ... per profile: each fit stores the next
    fitted_at: int  # epoch ms, on the worker's clock; the customers' T are as of then

    def to_json(self) -> bytes:
        p = self.params
        return orjson.dumps(
            {
                "model": self.model,
                "r": p.r,
                "alpha": p.alpha,
                "a": p.a,
                "b": p.b,
                "time_unit": "days",
                "log_likelihood": self.log_likelihood,
                "population": self.population,
                "sampled": self.sampled,
                "version": self.version,
                "fitted_at": self.fitted_at,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Fit:
        doc = orjson.loads(raw)
        model = doc["model"]
        if model not in CHURN_MODELS:
            raise ValueError(f"unknown churn model {model!r}")
        return cls(
            model=model,
            params=Params(float(doc["r"]), float(doc["alpha"]), float(doc["a"]), float(doc["b"])),
            log_likelihood=float(doc["log_likelihood"]),
            population=int(doc["population"]),
            sampled=int(doc["sampled"]),
            version=int(doc["version"]),
            fitted_at=int(doc["fitted_at"]),
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """What maximum likelihood found: the parameters and the total log-likelihood."""

    params: Params
    log_likelihood: float
    iterations: int


@dataclass(frozen=True, slots=True)
class Failed:
    """A fit that failed or did not converge: why. The caller keeps its previous fit."""

    reason: str


@dataclass(frozen=True, slots=True)
class Summary:
    """One customer's (x, t_x, T), whole days."""

    x: int
    t_x: int
    T: int


def summary(
    order_times: Sequence[int], as_of_ms: int, *, folded: int = 0, first_at: int | None = None
) -> Summary | None:
    """(x, t_x, T) of a customer's counted order times (epoch ms, ascending) at as_of.

    `folded` orders (beyond the per-customer bound, worker/rules/customer.py) are known only
    by count and the first one's instant `first_at`: each counts as a day of its own.
    None without a counted order.
    """
    if not order_times and first_at is None:
        return None
    days = 0
    last_day = None
    for at in order_times:  # ascending: distinct days are the day changes
        day = at // DAY_MS
        if day != last_day:
            days += 1
            last_day = day
    first_day = (order_times[0] if first_at is None else first_at) // DAY_MS
    if last_day is None:
        last_day = first_day
    days += folded
    as_of_day = max(as_of_ms // DAY_MS, last_day)  # an order slightly in the future: T = t_x
    return Summary(days - 1, last_day - first_day, as_of_day - first_day)


def summary_of(agg: Aggregates, as_of_ms: int) -> Summary | None:
    """`summary` of a customer's aggregates: its kept orders' times, and the folded ones
    (those beyond the per-customer bound) by count and first instant."""
    folded = agg.orders_lifetime - len(agg.order_times)
    if not folded:
        return summary(agg.order_times, as_of_ms)
    return summary(agg.order_times, as_of_ms, folded=folded, first_at=agg.first_order_at)


# -- likelihood and fit ---------------------------------------------------------------------


def _terms(
    model: ChurnModel, p: Array, x: Array, t_x: Array, T: Array
) -> tuple[Array, Array, Array, Array]:
    """Per customer: the log-likelihood and its gradient w.r.t. log r, log α, log a, log b
    (the optimiser works on logs, so the parameters stay positive)."""
    import numpy as np
    from scipy.special import digamma, expit, gammaln

    r, alpha, a, b = p
    rx = r + x
    la_T, la_tx = np.log(alpha + T), np.log(alpha + t_x)
    a1 = gammaln(rx) - gammaln(r) + r * np.log(alpha)
    d1_r = digamma(rx) - digamma(r) + np.log(alpha)
    d1_alpha = r / alpha
    if model == "bgnbd":
        a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
        d2_a = digamma(a + b) - digamma(a + b + x)
        d2_b = digamma(a + b) + digamma(b + x) - digamma(b) - digamma(a + b + x)
        # log(exp(A3) + [x > 0] exp(A4)), A3 = -(r+x) log(α+T), A4 = log a - log(b+x-1)
        # - (r+x) log(α+t_x): w is the weight of A4 in that sum (0 when x = 0)
        a3 = -rx * la_T
        a4 = np.log(a) - np.log(b + np.maximum(x, 1) - 1) - rx * la_tx
        w = np.where(x > 0, expit(a4 - a3), 0.0)
        ll = a1 + a2 + np.where(x > 0, np.logaddexp(a3, a4), a3)
        d_r = d1_r + (1 - w) * -la_T + w * -la_tx
        d_alpha = d1_alpha + (1 - w) * (-rx / (alpha + T)) + w * (-rx / (alpha + t_x))
        d_a = d2_a + w / a
        d_b = d2_b - w / (b + np.maximum(x, 1) - 1)
    else:
        a2 = gammaln(a + b) + gammaln(b + x + 1) - gammaln(b) - gammaln(a + b + x + 1)
        d2_a = digamma(a + b) - digamma(a + b + x + 1)
        d2_b = digamma(a + b) + digamma(b + x + 1) - digamma(b) - digamma(a + b + x + 1)
        # A3 + log(1 + exp(A4)), A4 = log a - log(b+x) + (r+x) (log(α+T) - log(α+t_x))
        a3 = -rx * la_T
        a4 = np.log(a) - np.log(b + x) + rx * (la_T - la_tx)
        w = expit(a4)
        ll = a1 + a2 + a3 + np.logaddexp(a4, 0.0)
        d_r = d1_r - la_T + w * (la_T - la_tx)
        d_alpha = d1_alpha - rx / (alpha + T) + w * rx * (1 / (alpha + T) - 1 / (alpha + t_x))
        d_a = d2_a + w / a
        d_b = d2_b - w / (b + x)
    return ll, d_r * r, d_alpha * alpha, np.vstack([d_a * a, d_b * b])


def log_likelihood(
    model: ChurnModel,
    params: Params,
    x: Sequence[float] | Array,
    t_x: Sequence[float] | Array,
    T: Sequence[float] | Array,
) -> float:
    """The total log-likelihood of the customers (x, t_x, T) under `params`."""
    import numpy as np

    p = np.array([params.r, params.alpha, params.a, params.b], dtype=np.float64)
    ll, *_ = _terms(model, p, *(np.asarray(v, dtype=np.float64) for v in (x, t_x, T)))
    return float(ll.sum())


def fit(
    model: ChurnModel,
    x: Sequence[float] | Array,
    t_x: Sequence[float] | Array,
    T: Sequence[float] | Array,
) -> Estimate | Failed:
    """Maximum likelihood estimates of (r, α, a, b) for the customers (x, t_x, T), in the
    time unit of t_x and T: scipy's BFGS on the log-parameters with the exact gradient.
    Identical customers are fitted once with their count as weight."""
    import numpy as np

    data = np.column_stack([np.asarray(v, dtype=np.float64) for v in (x, t_x, T)])
    if data.shape[0] == 0:
        return Failed("no customer to fit")
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        return Failed("x, t_x and T must be finite and not negative")
    if np.any(data[:, 1] > data[:, 2]):
        return Failed("t_x must not exceed T")
    if not np.any(data[:, 0] > 0):
        return Failed("no customer with a repeat purchase: the dropout cannot be estimated")
    if float(data[:, 2].max()) <= 0:
        return Failed("every customer is 0 days old: no time observed yet")
    rows, counts = np.unique(data, axis=0, return_counts=True)
    weights = counts.astype(np.float64)
    n = float(weights.sum())
    # Times scaled to a maximum age of 10, so that the start (all parameters 1) is of the
    # optimum's order whatever the unit. Rescaling time changes the likelihood by a
    # constant (x·log(scale) per customer), not its argmax; α scales back below.
    scale = 10.0 / float(rows[:, 2].max())
    xs, txs, Ts = rows[:, 0], rows[:, 1] * scale, rows[:, 2] * scale

    def objective(log_p: Array) -> tuple[float, Array]:
        p = np.exp(log_p)
        ll, g_r, g_alpha, g_ab = _terms(model, p, xs, txs, Ts)
        grad = np.array([weights @ g_r, weights @ g_alpha, weights @ g_ab[0], weights @ g_ab[1]])
        return -float(weights @ ll) / n, -grad / n

    from scipy.optimize import minimize  # here: the scorers need only scipy.special

    with np.errstate(all="ignore"):  # trial steps may overflow; BFGS backs off from them
        result = minimize(
            objective,
            x0=np.zeros(4),
            jac=True,
            method="BFGS",
            options={"gtol": 1e-10, "maxiter": 2000},
        )
    log_p = result.x
    if not np.all(np.isfinite(log_p)) or not math.isfinite(float(result.fun)):
        return Failed(f"the likelihood did not stay finite ({result.message})")
    grad_norm = float(np.max(np.abs(result.jac)))
    if not result.success and grad_norm > GRADIENT_OK:
        return Failed(f"did not converge: {result.message} (gradient {grad_norm:.2e})")
    r, alpha, a, b = (float(v) for v in np.exp(log_p))
    if max(r, alpha, a, b) > 1e8 or min(r, alpha, a, b) < 1e-8:
        return Failed(
            f"degenerate estimates r={r:.3g} alpha={alpha:.3g} a={a:.3g} b={b:.3g}: "
            "the data do not identify the model"
        )
    params = Params(r, alpha / scale, a, b)
    total = log_likelihood(model, params, data[:, 0], data[:, 1], data[:, 2])
    return Estimate(params, total, int(result.nit))


# -- per customer ---------------------------------------------------------------------------


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


# -- calibration and holdout (rfm-worker model; the paper's Figure 2) -------------------------


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


def purchase_days(order_times: Sequence[int]) -> list[int]:
    """The distinct UTC days (days since the epoch) of a customer's order times, ascending."""
    days: list[int] = []
    for at in order_times:
        day = at // DAY_MS
        if not days or day != days[-1]:
            days.append(day)
    return days
