"""The spend model's part of `rfm-worker model` (docs/value.md): the stored spend fit, a
holdout check of predicted against actual order value, and the correlation of frequency and
spend on the live base, which the model assumes to be none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.rules import churn
from worker.rules.aggregates import Aggregates
from worker.rules.churn import SpendFit

# |Pearson's r| of x and m_x from which the model's independence assumption is called into
# question: a moderate correlation by the usual reading (CDNOW, the paper's data: 0.11).
HIGH_CORRELATION = 0.3


def spend_fit_doc(spend: SpendFit | None) -> dict[str, Any] | None:
    """A stored spend fit as `rfm-worker model --json` shows it (under the fit's "spend")."""
    if spend is None:
        return None
    p = spend.params
    return {
        "p": p.p,
        "q": p.q,
        "v": p.v,
        "mean_order_value": churn.population_mean(p),
        "log_likelihood": spend.log_likelihood,
        "population": spend.population,
    }


def value_doc(aggregates: Sequence[Aggregates], as_of_ms: int, split_day: int) -> dict[str, Any]:
    """The check of the spend model on the customers read: fitted again on their order days
    before `split_day`, its predicted order value against the mean value of their order days
    from it on; and the correlation of x and m_x on the live base."""
    calibration: list[tuple[int, float]] = []
    holdout: list[float | None] = []
    for agg in aggregates:
        if agg.orders_lifetime > len(agg.order_times):
            continue  # folded orders: their days' values are gone
        before, after = churn.holdout_spend(agg.day_values(), split_day)
        if before is not None:
            calibration.append(before)
            holdout.append(after)
    estimate = churn.fit_spend(calibration)
    rows = (
        churn.spend_check(estimate.params, calibration, holdout)
        if isinstance(estimate, SpendFit)
        else []
    )
    live = [s for agg in aggregates if (s := churn.spend_summary(agg, as_of_ms)) is not None]
    return {
        "check": {
            "customers": len(calibration),
            "fit": spend_fit_doc(estimate) if isinstance(estimate, SpendFit) else None,
            "reason": None if isinstance(estimate, SpendFit) else estimate.reason,
            "rows": [
                {
                    "frequency": r.frequency,
                    "customers": r.customers,
                    "predicted": round(r.predicted, 4),
                    "actual": round(r.actual, 4),
                }
                for r in rows
            ],
        },
        "correlation": correlation_doc(live),
    }


def correlation_doc(summaries: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """Pearson's r of x and m_x over the customers a spend fit uses, and a warning when high."""
    r = churn.frequency_spend_correlation(summaries)
    warning = None
    if r is not None and abs(r) >= HIGH_CORRELATION:
        direction = "more" if r > 0 else "less"
        warning = (
            f"frequency and spend are correlated (r = {r:.2f}, |r| >= {HIGH_CORRELATION}): "
            f"customers who buy more often spend {direction} per order, which the spend "
            "model assumes they do not; its expected order values pull every customer toward "
            "the base's mean and miss that link. Read the holdout check before relying on "
            "expected_value."
        )
    return {
        "x_m_x": r,
        "customers": sum(1 for x, m in summaries if x >= 1 and m > 0),
        "high": HIGH_CORRELATION,
        "warning": warning,
    }


def render_value(fit: dict[str, Any] | None, value: dict[str, Any]) -> list[str]:
    """The spend part of the text: the stored fit, the correlation, the holdout table."""
    lines = [""]
    spend = None if fit is None else fit.get("spend")
    if fit is not None and spend is None:
        lines.append("spend model gamma_gamma: no spend fit stored (see the worker's log)")
    elif spend is not None:
        lines.append(
            f"spend model gamma_gamma: p={spend['p']:.4g} q={spend['q']:.4g} v={spend['v']:.4g}"
            f" (currency units), mean order value {spend['mean_order_value']:.2f}, "
            f"log-likelihood {spend['log_likelihood']:.1f}, population {spend['population']}"
        )
    corr = value["correlation"]
    r = corr["x_m_x"]
    lines.append(
        f"frequency-spend correlation on the live base: "
        f"{'n/a' if r is None else f'{r:.3f}'} ({corr['customers']} repeat customer(s))"
    )
    if corr["warning"] is not None:
        lines.append(f"WARNING: {corr['warning']}")
    check = value["check"]
    if check["fit"] is None:
        lines.append(f"no order value check: the calibration spend fit failed: {check['reason']}")
        return lines
    c = check["fit"]
    lines.append(
        f"order value check: spend fitted on the {c['population']} repeat customer(s) before "
        f"the split: p={c['p']:.4g} q={c['q']:.4g} v={c['v']:.4g}; predicted against actual "
        "mean order value of those who bought in the holdout, by repeat purchases before it:"
    )
    header = ("repeat purchases", "customers", "predicted", "actual")
    rows = [
        (r["frequency"], str(r["customers"]), f"{r['predicted']:.2f}", f"{r['actual']:.2f}")
        for r in check["rows"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))
    return lines
