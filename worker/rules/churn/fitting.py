"""Maximum likelihood estimates of a churn model's parameters. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.rules.churn.likelihood import log_likelihood, terms
from worker.rules.churn.model import ChurnModel, Params

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]

# BFGS stops on "precision loss" when the mean log-likelihood no longer changes in double
# precision: at an optimum that is where it ends, so a gradient this small (per customer,
# in log-parameters) is accepted as converged.
GRADIENT_OK = 1e-5


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
    if (unfit := _unfit(data)) is not None:
        return unfit
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
        ll, g_r, g_alpha, g_ab = terms(model, p, xs, txs, Ts)
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


def _unfit(data: Array) -> Failed | None:
    """Why the customers (rows of x, t_x, T) cannot be fitted, or None."""
    import numpy as np

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
    return None
