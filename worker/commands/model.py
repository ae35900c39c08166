"""`rfm-worker model --profile NAME [--json]`: a profile's churn-model fit and how well it
predicts (docs/churn.md).

Prints the stored fit (parameters in days, log-likelihood, population, version, when) and a
calibration/holdout check like Figure 2 of Fader, Hardie & Lee (2005): the model is fitted
again here on the orders before a split instant (`--holdout-days`, default the profile's
churn_horizon_days, before now), and the repeat purchases it expects of that cohort, week
by week, are set against the ones they made, before the split (calibration) and after it
(holdout: what the fit never saw). A profile with a value model gets the spend model's part
too (worker/commands/model_spend.py). Read-only: nothing is stored.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from worker.commands import context
from worker.commands.arguments import positive
from worker.commands.model_spend import render_value, spend_fit_doc, value_doc
from worker.errors import RfmError, UsageError
from worker.rules import churn
from worker.rules.churn import ChurnModel
from worker.rules.instants import DAY_MS, iso
from worker.rules.profiles import Profiles
from worker.services import sampling
from worker.services.churn_upkeep import CHURN_SAMPLE
from worker.state.store import Store

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "model",
        help="a profile's churn-model fit (and spend fit) and a calibration/holdout check",
        description="Print the stored churn-model fit of a profile (parameters in days, "
        "log-likelihood, population, version, when) and a calibration/holdout check like the "
        "BG/NBD paper's Figure 2: the model fitted on the orders before a split, its expected "
        "repeat purchases per week against the actual ones (docs/churn.md). With a value model: "
        "the spend fit, its predicted against actual order value in the holdout, and the "
        "correlation of frequency and spend on the live base (docs/value.md). Read-only. "
        "Exit 1 when the profile has no fit yet.",
    )
    p.add_argument("--profile", required=True, help="the profile (tenant) name")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--holdout-days",
        type=positive,
        help="days before now held out of the check's fit (default: churn_horizon_days)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    with context.reading(settings, profiles) as read:
        return run_model(
            read.store,
            profiles,
            args.profile,
            read.now(),
            as_json=args.json,
            holdout_days=args.holdout_days,
        )


def model_doc(
    store: Store, profiles: Profiles, name: str, as_of_ms: int, holdout_days: int | None
) -> dict[str, Any]:
    """The command's document (what --json prints)."""
    if name not in profiles.configured:
        raise UsageError(f"no profile {name!r} (profiles: {', '.join(profiles.names())})")
    profile = profiles.configured[name]
    model = profile.churn_model
    if model is None:
        raise UsageError(f'profile {name!r} has no churn model (churn_model = "bgnbd" or "mbgnbd")')
    fit = store.churn_fits.read().get(name)
    if fit is not None and fit.model != model:
        fit = None  # of the model the profile had before
    holdout = profile.churn_horizon_days if holdout_days is None else holdout_days
    aggregates = [
        agg
        for chunk in sampling.sampled_aggregates(store.reads, name, profiles, sample=CHURN_SAMPLE)
        for agg in chunk
    ]
    histories = [churn.purchase_days(agg.order_times) for agg in aggregates]
    doc: dict[str, Any] = {
        "profile": name,
        "model": model,
        "as_of": iso(as_of_ms),
        "fit": None
        if fit is None
        else _fit_doc(fit.params, fit.log_likelihood)
        | {
            "population": fit.population,
            "sampled": fit.sampled,
            "version": fit.version,
            "fitted_at": iso(fit.fitted_at),
        },
        "check": _check_doc(model, histories, as_of_ms, holdout),
    }
    if profile.value_model is not None:
        doc["value_model"] = profile.value_model
        if fit is not None:
            spend = spend_fit_doc(fit.spend)
            # p, q, v beside r, alpha, a, b (null without a spend fit), and the fit whole
            doc["fit"] |= {k: None if spend is None else spend[k] for k in ("p", "q", "v")}
            doc["fit"]["spend"] = spend
        split_day = as_of_ms // DAY_MS + 1 - holdout  # the weekly check's split
        doc["value"] = value_doc(aggregates, as_of_ms, split_day)
    return doc


def _check_doc(
    model: ChurnModel, histories: list[list[int]], as_of_ms: int, holdout: int
) -> dict[str, Any]:
    """The calibration/holdout check: the model fitted on each customer as of the split
    (orders before it only), its expected weekly repeat purchases against the actual."""
    end_day = as_of_ms // DAY_MS + 1  # today included
    split_day = end_day - holdout
    rows = []
    for days in histories:
        before = [d for d in days if d < split_day]
        if before:
            rows.append((len(before) - 1, before[-1] - before[0], split_day - before[0]))
    columns = [list(c) for c in zip(*rows, strict=True)] or [[], [], []]
    calibration = churn.fit(model, *columns)
    weeks = (
        churn.weekly_check(
            model, calibration.params, histories, split_day=split_day, end_day=end_day
        )
        if isinstance(calibration, churn.Estimate)
        else []
    )
    return {
        "split_at": iso(split_day * DAY_MS),
        "holdout_days": holdout,
        "customers": len(rows),
        "fit": _fit_doc(calibration.params, calibration.log_likelihood)
        if isinstance(calibration, churn.Estimate)
        else None,
        "reason": calibration.reason if isinstance(calibration, churn.Failed) else None,
        "weeks": [
            {
                "week": k + 1,
                "starts": iso(w.start_day * DAY_MS)[:10],
                "period": "holdout" if w.holdout else "calibration",
                "actual": w.actual,
                "expected": round(w.expected, 3),
                "actual_cumulative": w.actual_cumulative,
                "expected_cumulative": round(w.expected_cumulative, 3),
            }
            for k, w in enumerate(weeks)
        ],
    }


def _fit_doc(p: churn.Params, log_likelihood: float) -> dict[str, Any]:
    return {
        "r": p.r,
        "alpha": p.alpha,
        "a": p.a,
        "b": p.b,
        "time_unit": "days",
        "log_likelihood": log_likelihood,
    }


def render(doc: dict[str, Any]) -> str:
    """The document as text: the fit, then the weekly table."""
    lines = [f"profile {doc['profile']}: {doc['model']} as of {doc['as_of']}"]
    fit = doc["fit"]
    if fit is None:
        lines.append("no fit stored yet (workers fit every churn_refit_minutes; sweep --once too)")
    else:
        lines.append(
            f"fit version {fit['version']} at {fit['fitted_at']}: r={fit['r']:.4g} "
            f"alpha={fit['alpha']:.4g} days a={fit['a']:.4g} b={fit['b']:.4g}, "
            f"log-likelihood {fit['log_likelihood']:.1f}, population {fit['population']} "
            f"(sampled {fit['sampled']})"
        )
    check = doc["check"]
    lines.append(
        f"check: fitted on the {check['customers']} customer(s) who bought before "
        f"{check['split_at']}, the last {check['holdout_days']} day(s) held out"
    )
    if check["fit"] is None:
        lines.append(f"no check: the calibration fit failed: {check['reason']}")
    else:
        lines += _weeks(check)
    if "value" in doc:
        lines += render_value(fit, doc["value"])
    return "\n".join(lines)


def _weeks(check: dict[str, Any]) -> list[str]:
    """The calibration fit and the weekly table."""
    lines = []
    c = check["fit"]
    lines.append(
        f"calibration fit: r={c['r']:.4g} alpha={c['alpha']:.4g} days a={c['a']:.4g} "
        f"b={c['b']:.4g}, log-likelihood {c['log_likelihood']:.1f}"
    )
    lines.append("")
    header = ("week", "starts", "period", "actual", "expected", "cum. actual", "cum. expected")
    rows = [
        (
            str(w["week"]),
            w["starts"],
            w["period"],
            str(w["actual"]),
            f"{w['expected']:.1f}",
            str(w["actual_cumulative"]),
            f"{w['expected_cumulative']:.1f}",
        )
        for w in check["weeks"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))
    return lines


def run_model(
    store: Store,
    profiles: Profiles,
    name: str,
    as_of_ms: int,
    *,
    as_json: bool,
    holdout_days: int | None,
) -> int:
    doc = model_doc(store, profiles, name, as_of_ms, holdout_days)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render(doc))
    if doc["fit"] is None:
        raise RfmError(f"profile {name!r} has no fit yet")
    return 0
