"""The churn models' log-likelihood, per customer and in total, with its gradient. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from worker.rules.churn.model import ChurnModel, Params

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]


def terms(
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
    ll, *_ = terms(model, p, *(np.asarray(v, dtype=np.float64) for v in (x, t_x, T)))
    return float(ll.sum())
