"""Churn upkeep: the fits of profiles with a churn model kept up to date (docs/churn.md), a
`Model` of the upkeep job (worker/services/upkeep.py).

A profile's fit (worker/rules/churn/) is stored versioned in Redis (`rfm:churn`). When it
is missing, of another model, or older than the profile's `churn_refit_minutes`, the worker
that takes the profile's lock (`rfm:churn:lock:<name>`) fits it: maximum likelihood on the
(x, t_x, T) of a sample of customers. A fit that fails keeps the previous one, says why in
the log, and is tried again `churn_refit_minutes` later (at the next check when the profile
had no customer yet).

A profile with a value model (docs/value.md) gets its spend model fitted with it, on the same
sample's (x, m_x), stored in the same fit (`Fit.spend`) under the same version. A spend fit
that fails keeps the previous fit's spend (none before the first) and says why in the log;
the churn fit is stored all the same.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from worker import metrics
from worker.rules import churn
from worker.rules.churn import Fit, SpendFit
from worker.rules.instants import iso
from worker.rules.money import SCALE
from worker.rules.profiles import Profiles
from worker.services import sampling, upkeep
from worker.services.upkeep import Failed, Run
from worker.state.store import Store

logger = logging.getLogger(__name__)

CHURN_SAMPLE = 100_000  # customers fitted at most (sampled beyond: the estimates barely move)


def _fit(run: Run, profiles: Profiles, stored: Fit | None) -> Fit | Failed:
    """The fit of the customers read, as the version after `stored`."""
    profile = profiles.configured[run.name]
    model = profile.churn_model
    assert model is not None
    columns = [list(c) for c in zip(*run.rows, strict=True)] or [[], [], []]
    estimate = churn.fit(model, *columns[:3])
    if isinstance(estimate, churn.Failed):
        return Failed(estimate.reason)
    fit = Fit(
        model=model,
        params=estimate.params,
        log_likelihood=estimate.log_likelihood,
        population=run.base,
        sampled=len(run.rows),
        version=run.next_version(stored),
        fitted_at=run.as_of_ms,
    )
    if profile.value_model is None:
        return fit
    return dataclasses.replace(fit, spend=_spend(run, columns, stored))


def _spend(run: Run, columns: list[list[int]], stored: Fit | None) -> SpendFit | None:
    """The spend model fitted on the sample's (x, m_x), or the previous fit's spend when
    that fails (None before a first one)."""
    x, repeat = columns[0], columns[3] if len(columns) > 3 else []
    # m_x as spend_summary computes it: the repeat days' net value / x, currency units
    summaries = [(n, units / (n * SCALE) if n else 0.0) for n, units in zip(x, repeat, strict=True)]
    spend = churn.fit_spend(summaries)
    if isinstance(spend, SpendFit):
        return spend
    previous = None if stored is None else stored.spend
    logger.warning(
        "spend model of profile %s not fitted (%d customer(s) read), %s: %s",
        run.name,
        len(run.rows),
        "the previous spend fit stays" if previous is not None else "no spend fit yet",
        spend.reason,
    )
    return previous


def _logged(run: Run, fit: Fit) -> None:
    p = fit.params
    logger.info(
        "churn model %s of profile %s, version %d, as of %s: r=%.4g alpha=%.4g days "
        "a=%.4g b=%.4g, log-likelihood %.1f, population %d, sampled %d; in %.3f s",
        fit.model,
        run.name,
        fit.version,
        iso(run.as_of_ms),
        p.r,
        p.alpha,
        p.a,
        p.b,
        fit.log_likelihood,
        fit.population,
        fit.sampled,
        time.perf_counter() - run.started,
    )
    _spend_logged(run, fit)


def _spend_logged(run: Run, fit: Fit) -> None:
    if fit.spend is None:
        return
    p = fit.spend.params
    logger.info(
        "spend model gamma_gamma of profile %s, version %d: p=%.4g q=%.4g v=%.4g, "
        "log-likelihood %.1f, population %d (mean order value %.4g)",
        run.name,
        fit.version,
        p.p,
        p.q,
        p.v,
        fit.spend.log_likelihood,
        fit.spend.population,
        churn.population_mean(p),
    )


def _failed(run: Run, failure: Failed) -> None:
    metrics.CHURN_FIT_FAILURES.labels(run.name).inc()
    logger.warning(
        "churn model of profile %s not fitted (%d customer(s) read), the previous fit stays: %s",
        run.name,
        len(run.rows),
        failure.reason,
    )


def _start_failed(name: str, failure: Failed) -> None:
    logger.warning("churn model of profile %s not fitted: %s", name, failure.reason)


CHURN: upkeep.Model[Fit] = upkeep.Model(
    what="churn",
    names=Profiles.churn_names,
    state=lambda store: store.churn_fits,
    held=lambda profiles: profiles.fits,
    use=Profiles.use_fit,
    version_gauge=metrics.CHURN_FIT_VERSION,
    sample=lambda profiles, name: CHURN_SAMPLE,
    reader=sampling.churn_summaries,
    compute=_fit,
    computed_at=lambda fit: fit.fitted_at,
    every_minutes=lambda profiles, name: profiles.configured[name].churn_refit_minutes,
    logged=_logged,
    failed=_failed,
    start_failed=_start_failed,
    usable=lambda profiles, name, fit: fit.model == profiles.configured[name].churn_model,
    complete=lambda profiles, name, fit: (
        fit.spend is not None or profiles.configured[name].value_model is None
    ),
)


def load_fits(
    store: Store, profiles: Profiles, *, compute_missing_at: int | None = None
) -> dict[str, Fit]:
    """Score every churn-model profile with its stored fit (`upkeep.load`)."""
    return upkeep.load(CHURN, store, profiles, compute_missing_at=compute_missing_at)
