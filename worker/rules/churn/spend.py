"""The Gamma-Gamma spend model: what a customer's next order is worth. Pure.

Fader, Hardie & Lee, "RFM and CLV: Using Iso-Value Curves for Customer Base Analysis"
(Journal of Marketing Research 2005), and Hardie's note "The Gamma-Gamma Model of Monetary
Value" (2013): a customer's order values are Gamma(p, ν) around their own mean p/ν, and ν
varies across customers as Gamma(q, v). Per customer it needs only

    x    repeat purchases, as the churn model counts them (purchase days - 1)
    m_x  the mean net value of those repeat days (the first day is left out, as the
         paper does: it is often unlike the rest)

and predicts E[M | x, m_x], a weighted mean of m_x and the population mean p·v/(q - 1).
The model assumes a customer's spend independent of how often they buy: `rfm-worker model`
prints the correlation of x and m_x (spend_check.py). Money in the profile's currency
units (floats), not money units. tests/rules/test_spend.py checks it against `lifetimes`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from worker.rules.churn.summaries import Summary, summary_of
from worker.rules.money import SCALE

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from worker.rules.aggregates import Aggregates
    from worker.rules.churn.fitting import Failed

    Array = NDArray[np.float64]

ValueModel = Literal["gamma_gamma"]
VALUE_MODELS: tuple[ValueModel, ...] = ("gamma_gamma",)

# Fewer customers with a repeat purchase than this do not identify three parameters.
MIN_FITTED = 10


@dataclass(frozen=True, slots=True)
class SpendParams:
    """Gamma-Gamma population parameters; v in the profile's currency units."""

    p: float
    q: float
    v: float


@dataclass(frozen=True, slots=True)
class SpendFit:
    """One fit of the spend model, stored with the churn fit (churn.Fit.spend)."""

    params: SpendParams
    log_likelihood: float  # total over the customers fitted
    population: int  # customers fitted (x >= 1 and m_x > 0)

    def to_doc(self) -> dict[str, Any]:
        """The JSON object stored under "spend" in the churn fit."""
        p = self.params
        return {
            "p": p.p,
            "q": p.q,
            "v": p.v,
            "log_likelihood": self.log_likelihood,
            "population": self.population,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SpendFit:
        return cls(
            SpendParams(float(doc["p"]), float(doc["q"]), float(doc["v"])),
            float(doc["log_likelihood"]),
            int(doc["population"]),
        )


def spend_summary(
    agg: Aggregates, as_of_ms: int, s: Summary | None = None
) -> tuple[int, float] | None:
    """(x, m_x) of a customer: x as the churn model counts it (folded orders one day each),
    m_x the mean net value of the repeat days in currency units, (monetary - the first
    day's value) / x; 0.0 when x == 0. None without a counted order. `s`: the customer's
    `summary_of` at as_of, when the caller has it (scoring does)."""
    if s is None:
        s = summary_of(agg, as_of_ms)
    if s is None:
        return None
    if s.x == 0:
        return 0, 0.0
    return s.x, (agg.monetary - agg.first_day_value()) / (s.x * SCALE)


def population_mean(params: SpendParams) -> float:
    """E[M] of a new customer, p·v/(q - 1) (finite for q > 1, which fit_spend ensures)."""
    return params.p * params.v / (params.q - 1)


def expected_order_value(params: SpendParams, x: int, m_x: float) -> float:
    """E[M | x, m_x]: the customer's mean m_x weighted by p·x against the population mean
    (lifetimes' conditional_expected_average_profit); x == 0: the population mean."""
    mean = population_mean(params)
    if x <= 0:
        return mean
    weight = params.p * x / (params.p * x + params.q - 1)
    return (1 - weight) * mean + weight * m_x


def value_band(expected_value: float, bounds: Sequence[float]) -> int:
    """1 + the number of bounds at or below the value (the bounds strictly increasing)."""
    return 1 + bisect_right(bounds, expected_value)


def fit_spend(summaries: Sequence[tuple[int, float]]) -> SpendFit | Failed:
    """Maximum likelihood estimates of (p, q, v) from customers' (x, m_x): scipy's BFGS on
    the log-parameters with the exact gradient. Only customers with x >= 1 and m_x > 0 are
    fitted; identical ones once, with their count as weight."""
    import numpy as np

    # here: fitting.py imports model.py, which imports this module (Fit.spend)
    from worker.rules.churn.fitting import GRADIENT_OK, Failed

    data = np.array([(x, m) for x, m in summaries if x >= 1 and m > 0], dtype=np.float64)
    if len(data) < MIN_FITTED:
        return Failed(
            f"{len(data)} customers with a repeat purchase of positive value: "
            f"at least {MIN_FITTED} are needed"
        )
    if not np.all(np.isfinite(data)):
        return Failed("x and m_x must be finite")
    rows, counts = np.unique(data, axis=0, return_counts=True)
    weights = counts.astype(np.float64)
    n = float(weights.sum())
    # Money scaled to a mean m_x of 1, so that the start (all parameters 1) is of the
    # optimum's order whatever the currency. Rescaling money changes the likelihood by a
    # constant (-log(scale) per customer), not its argmax; v scales back below.
    scale = 1.0 / float(data[:, 1].mean())
    xs, ms = rows[:, 0], rows[:, 1] * scale

    def objective(log_p: Array) -> tuple[float, Array]:
        ll, grad = _terms(np.exp(log_p), xs, ms)
        return -float(weights @ ll) / n, -(grad @ weights) / n

    from scipy.optimize import minimize

    with np.errstate(all="ignore"):  # trial steps may overflow; BFGS backs off from them
        result = minimize(
            objective, x0=np.zeros(3), jac=True, method="BFGS", options={"gtol": 1e-10}
        )
    if not np.all(np.isfinite(result.x)) or not math.isfinite(float(result.fun)):
        return Failed(f"the likelihood did not stay finite ({result.message})")
    grad_norm = float(np.max(np.abs(result.jac)))
    if not result.success and grad_norm > GRADIENT_OK:
        return Failed(f"did not converge: {result.message} (gradient {grad_norm:.2e})")
    p, q, v = (float(e) for e in np.exp(result.x))
    if max(p, q, v) > 1e8 or min(p, q, v) < 1e-8:
        return Failed(
            f"degenerate estimates p={p:.3g} q={q:.3g} v={v:.3g}: "
            "the data do not identify the model"
        )
    if q <= 1:
        return Failed(f"q={q:.3g} <= 1: the population's mean spend is not finite")
    params = SpendParams(p, q, v / scale)
    return SpendFit(params, spend_log_likelihood(params, data[:, 0], data[:, 1]), len(data))


def spend_log_likelihood(
    params: SpendParams, x: Sequence[float] | Array, m_x: Sequence[float] | Array
) -> float:
    """The total log-likelihood of customers (x >= 1, m_x > 0) under the parameters."""
    import numpy as np

    p = np.array([params.p, params.q, params.v])
    ll, _ = _terms(p, np.asarray(x, dtype=np.float64), np.asarray(m_x, dtype=np.float64))
    return float(ll.sum())


def _terms(params: Array, x: Array, m: Array) -> tuple[Array, Array]:
    """Per customer: the log-likelihood (Hardie's note, eq. 1a; lifetimes'
    GammaGammaFitter) and its gradient in the log-parameters, rows (p, q, v)."""
    import numpy as np
    from scipy.special import digamma, gammaln

    p, q, v = params
    px = p * x
    log_xmv = np.log(x * m + v)
    log_m, log_x, log_v = np.log(m), np.log(x), np.log(v)
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * log_v
        + (px - 1) * log_m
        + px * log_x
        - (px + q) * log_xmv
    )
    psi = digamma(px + q)
    d_p = x * (psi - digamma(px) + log_m + log_x - log_xmv)
    d_q = psi - digamma(q) + log_v - log_xmv
    d_v = q / v - (px + q) / (x * m + v)
    return ll, np.vstack([p * d_p, q * d_q, v * d_v])
