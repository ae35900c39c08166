"""Churn upkeep: the fits of profiles with a churn model kept up to date (docs/churn.md).

The same machinery as quantile cut points (worker/services/quantile_upkeep.py): a profile's
fit (worker/rules/churn.py) is stored versioned in Redis (`rfm:churn`). Every sweep interval
a worker reads the fits; a version it does not score with yet is applied like a changed
profile (the marking pass, cause `rescore`). When a profile's fit is missing, of another
model, or older than its `churn_refit_minutes` (on the sweeper's clock), the worker that
takes the profile's lock (`rfm:churn:lock:<name>`) fits it: a SCAN of the profile's
customers (sampled, 500 keys per loop turn), then maximum likelihood on their (x, t_x, T),
version + 1 stored and applied. A fit that fails keeps the previous one, says why in the
log, and is tried again `churn_refit_minutes` later (at the next check when the profile had
no customer yet).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from worker import metrics
from worker.pacing import Every
from worker.rules import churn
from worker.rules.churn import Fit
from worker.rules.instants import iso
from worker.rules.profiles import Profiles
from worker.services import sampling
from worker.state.store import Store

logger = logging.getLogger(__name__)

CHURN_STEP = 500  # customer keys scanned per loop turn when fitting
CHURN_LOCK_MS = 300_000  # renewed every step: a fitting worker that died frees it
CHURN_SAMPLE = 100_000  # customers fitted at most (sampled beyond: the estimates barely move)


@dataclass(slots=True)
class ChurnRun:
    """One fit of a profile's model, a scan step per loop turn, then the fit itself."""

    name: str
    as_of_ms: int
    exact: bool  # every customer is read (the population is not above the sample size)
    population: int  # the estimate the sample was drawn against (0: unknown)
    chunks: Iterator[list[tuple[int, int, int]]]
    rows: list[tuple[int, int, int]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, store: Store, profiles: Profiles, name: str, as_of_ms: int) -> ChurnRun:
        population = sampling.population(store.reads, name, profiles)
        chunks = sampling.churn_summaries(
            store.reads, name, profiles, as_of_ms, sample=CHURN_SAMPLE, count=CHURN_STEP
        )
        return cls(name, as_of_ms, population <= CHURN_SAMPLE, population, chunks)

    def fit(self, profiles: Profiles, stored: Fit | None) -> Fit | churn.Failed:
        """The fit of the customers read, as the version after `stored`."""
        model = profiles.configured[self.name].churn_model
        assert model is not None
        columns = [list(c) for c in zip(*self.rows, strict=True)] or [[], [], []]
        estimate = churn.fit(model, *columns)
        if isinstance(estimate, churn.Failed):
            return estimate
        return Fit(
            model=model,
            params=estimate.params,
            log_likelihood=estimate.log_likelihood,
            population=len(self.rows) if self.exact else self.population,
            sampled=len(self.rows),
            version=(0 if stored is None else stored.version) + 1,
            fitted_at=self.as_of_ms,
        )


def compute_fit(store: Store, profiles: Profiles, name: str, as_of_ms: int) -> Fit | churn.Failed:
    """One whole fit at once (a worker's start, `sweep --once`)."""
    run = ChurnRun.start(store, profiles, name, as_of_ms)
    for chunk in run.chunks:
        run.rows += chunk
    return run.fit(profiles, store.churn_fits.read().get(name))


def load_fits(
    store: Store, profiles: Profiles, *, compute_missing_at: int | None = None
) -> dict[str, Fit]:
    """Score every churn-model profile with its stored fit. With `compute_missing_at` (a
    worker's start), a profile with none yet (or one of another model) is fitted now,
    before anything is scored, when its customers allow."""
    names = profiles.churn_names()
    stored = store.churn_fits.read() if names else {}
    for name in names:
        model = profiles.configured[name].churn_model
        current = stored.get(name)
        missing = current is None or current.model != model
        if (
            missing
            and compute_missing_at is not None
            and store.churn_fits.try_lock(name, CHURN_LOCK_MS)
        ):
            try:
                fit = compute_fit(store, profiles, name, compute_missing_at)
                if isinstance(fit, Fit):
                    store.churn_fits.write(name, fit)
                    stored[name] = fit
                else:
                    logger.warning("churn model of profile %s not fitted: %s", name, fit.reason)
            finally:
                store.churn_fits.unlock(name)
        if name in stored:
            profiles.use_fit(name, stored[name])
            metrics.CHURN_FIT_VERSION.labels(name).set(stored[name].version)
    return stored


class ChurnUpkeep:
    """Fits kept up to date while the worker runs, a bounded scan step per loop turn."""

    def __init__(
        self,
        store: Store,
        profiles: Profiles,
        *,
        interval: float,
        clock: Callable[[], int],
        on_new_fit: Callable[[], None],
    ) -> None:
        """`on_new_fit` is called whenever the profiles start scoring with another fit:
        customers checked against the old one must be checked again."""
        self.store, self.profiles, self.clock = store, profiles, clock
        self._on_new_fit = on_new_fit
        self._checks = Every(interval)
        self._runs: dict[str, ChurnRun] = {}  # fits in progress, by profile
        self._failed_at: dict[str, int] = {}  # the last failed fit per profile (clock ms)
        for name in profiles.churn_names():
            fit = profiles.fits.get(name)
            metrics.CHURN_FIT_VERSION.labels(name).set(0 if fit is None else fit.version)

    @property
    def computing(self) -> bool:
        """Whether a fit is in progress here."""
        return bool(self._runs)

    def step(self) -> bool:
        """Every `interval` seconds, apply newer stored fits and start missing or stale ones
        (lock permitting); then one scan step of a fit in progress. True while one is in
        progress."""
        names = self.profiles.churn_names()
        if not names:
            return False
        if self._checks.due():
            self._check(names)
        done = sampling.scan_step(self._runs, self.store.churn_fits, CHURN_LOCK_MS, "churn")
        if done is not None:
            self._finish(done)
        return bool(self._runs)

    def _check(self, names: list[str]) -> None:
        stored = self.store.churn_fits.read()
        changed = False
        for name in names:
            fit = stored.get(name)
            current = self.profiles.fits.get(name)
            model = self.profiles.configured[name].churn_model
            if (
                fit is not None
                and fit.model == model
                and (current is None or current.version != fit.version)
            ):
                self._use(name, fit)
                changed = True
            if (
                name not in self._runs
                and self._stale(name, fit)
                and self.store.churn_fits.try_lock(name, CHURN_LOCK_MS)
            ):
                self._runs[name] = ChurnRun.start(self.store, self.profiles, name, self.clock())
        if changed:
            self._on_new_fit()

    def _stale(self, name: str, fit: Fit | None) -> bool:
        profile = self.profiles.configured[name]
        every_ms = profile.churn_refit_minutes * 60_000
        failed = self._failed_at.get(name)
        if failed is not None and self.clock() - failed < every_ms:
            return False  # a failed fit is tried again a refit period later, not every check
        if fit is None or fit.model != profile.churn_model:
            return True
        return self.clock() - fit.fitted_at >= every_ms

    def _finish(self, run: ChurnRun) -> None:
        try:
            fit = run.fit(self.profiles, self.store.churn_fits.read().get(run.name))
            if isinstance(fit, churn.Failed):
                # Not tried again before churn_refit_minutes (a scan of a large base each
                # check would be wasted), unless the base was empty: that scan was free.
                if run.rows:
                    self._failed_at[run.name] = run.as_of_ms
                metrics.CHURN_FIT_FAILURES.labels(run.name).inc()
                logger.warning(
                    "churn model of profile %s not fitted (%d customer(s) read), the previous "
                    "fit stays: %s",
                    run.name,
                    len(run.rows),
                    fit.reason,
                )
                return
            self.store.churn_fits.write(run.name, fit)
        finally:
            self.store.churn_fits.unlock(run.name)
        self._failed_at.pop(run.name, None)
        self._use(run.name, fit)
        self._on_new_fit()
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

    def _use(self, name: str, fit: Fit) -> None:
        self.profiles.use_fit(name, fit)
        metrics.CHURN_FIT_VERSION.labels(name).set(fit.version)
