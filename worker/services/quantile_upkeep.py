"""Quantile upkeep: the cut points of quantile profiles kept up to date (docs/profiles.md,
Quantile mode).

A quantile profile's thresholds are cut points of the tenant's customer base
(worker/rules/quantiles.py), stored versioned in Redis (`rfm:quantiles`). Every sweep
interval a worker reads them; a version it does not score with yet is applied like a
changed profile (the marking pass, worker/services/marking.py, cause `rescore`). When a
profile's cut points are missing or older than its `quantiles_every_minutes` (on the
sweeper's clock), the worker that takes the profile's lock (`rfm:quantiles:lock:<name>`)
computes new ones: a SCAN of the profile's customers, 500 keys per loop turn like the
marking pass, then stores version + 1 and applies it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from worker import metrics
from worker.pacing import Every
from worker.rules.instants import iso
from worker.rules.money import format_units
from worker.rules.profiles import Profiles
from worker.rules.quantiles import Cuts, cut_points
from worker.services import sampling
from worker.state.store import Store

logger = logging.getLogger(__name__)

QUANTILE_STEP = 500  # customer keys scanned per loop turn when computing cut points
QUANTILE_LOCK_MS = 300_000  # renewed every step: a computing worker that died frees it


@dataclass(slots=True)
class QuantileRun:
    """One computation of a quantile profile's cut points, a scan step per loop turn."""

    name: str
    as_of_ms: int
    exact: bool  # every customer is read (the population is not above the sample size)
    population: int  # the estimate the sample was drawn against (0: unknown)
    chunks: Iterator[list[tuple[int, int, int]]]
    rows: list[tuple[int, int, int]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, store: Store, profiles: Profiles, name: str, as_of_ms: int) -> QuantileRun:
        sample = profiles.configured[name].quantiles_sample
        population = sampling.population(store.reads, name, profiles)
        chunks = sampling.ranked_values(
            store.reads, name, profiles, as_of_ms, sample=sample, count=QUANTILE_STEP
        )
        return cls(name, as_of_ms, population <= sample, population, chunks)

    def cuts(self, stored: Cuts | None) -> Cuts | None:
        """The cut points of the values read, as the version after `stored`."""
        columns = [list(c) for c in zip(*self.rows, strict=True)] or [[], [], []]
        days, orders, money = columns
        return cut_points(
            days,
            orders,
            money,
            version=(0 if stored is None else stored.version) + 1,
            computed_at=self.as_of_ms,
            population=len(self.rows) if self.exact else self.population,
        )


def compute_cuts(store: Store, profiles: Profiles, name: str, as_of_ms: int) -> Cuts | None:
    """One whole computation at once (a worker's start, dry runs); None without customers."""
    run = QuantileRun.start(store, profiles, name, as_of_ms)
    for chunk in run.chunks:
        run.rows += chunk
    return run.cuts(store.cut_points.read().get(name))


def load_cuts(
    store: Store, profiles: Profiles, *, compute_missing_at: int | None = None
) -> dict[str, Cuts]:
    """Score every quantile profile with its stored cut points. With `compute_missing_at`
    (a worker joining its group), a quantile profile with none yet and customers to rank
    gets its first ones computed and stored now, before anything is scored: a base switched
    to quantile mode moves once, to its quintiles, never through the 333 placeholder."""
    stored = store.cut_points.read() if profiles.quantile_names() else {}
    for name in profiles.quantile_names():
        missing = name not in stored and compute_missing_at is not None
        if missing and store.cut_points.try_lock(name, QUANTILE_LOCK_MS):
            assert compute_missing_at is not None
            try:
                cuts = compute_cuts(store, profiles, name, compute_missing_at)
                if cuts is not None:
                    store.cut_points.write(name, cuts)
                    stored[name] = cuts
            finally:
                store.cut_points.unlock(name)
        if name in stored:
            profiles.use_cuts(name, stored[name])
            metrics.QUANTILE_CUTS_VERSION.labels(name).set(stored[name].version)
    return stored


class QuantileUpkeep:
    """Cut points kept up to date while the worker runs, a bounded step per loop turn."""

    def __init__(
        self,
        store: Store,
        profiles: Profiles,
        *,
        interval: float,
        clock: Callable[[], int],
        on_new_cuts: Callable[[], None],
    ) -> None:
        """`on_new_cuts` is called whenever the profiles start scoring with other cut
        points: customers checked against the old ones must be checked again."""
        self.store, self.profiles, self.clock = store, profiles, clock
        self._on_new_cuts = on_new_cuts
        self._checks = Every(interval)
        self._runs: dict[str, QuantileRun] = {}  # cut points being computed, by profile
        for name in profiles.quantile_names():
            cuts = profiles.cuts.get(name)
            metrics.QUANTILE_CUTS_VERSION.labels(name).set(0 if cuts is None else cuts.version)

    @property
    def computing(self) -> bool:
        """Whether new cut points are being computed here."""
        return bool(self._runs)

    def step(self) -> bool:
        """Every `interval` seconds, apply newer stored cut points and start computing
        missing or stale ones (lock permitting); then one scan step of a computation in
        progress. True while one is in progress."""
        names = self.profiles.quantile_names()
        if not names:
            return False
        if self._checks.due():
            self._check(names)
        done = sampling.scan_step(self._runs, self.store.cut_points, QUANTILE_LOCK_MS, "quantile")
        if done is not None:
            self._finish(done)
        return bool(self._runs)

    def _check(self, names: list[str]) -> None:
        stored = self.store.cut_points.read()
        changed = False
        for name in names:
            cuts = stored.get(name)
            current = self.profiles.cuts.get(name)
            if cuts is not None and (current is None or current.version != cuts.version):
                self._use(name, cuts)
                changed = True
            if (
                name not in self._runs
                and self._stale(name, cuts)
                and self.store.cut_points.try_lock(name, QUANTILE_LOCK_MS)
            ):
                self._runs[name] = QuantileRun.start(self.store, self.profiles, name, self.clock())
        if changed:
            self._on_new_cuts()

    def _stale(self, name: str, cuts: Cuts | None) -> bool:
        if cuts is None:
            return True
        every_ms = self.profiles.configured[name].quantiles_every_minutes * 60_000
        return self.clock() - cuts.computed_at >= every_ms

    def _finish(self, run: QuantileRun) -> None:
        try:
            cuts = run.cuts(self.store.cut_points.read().get(run.name))
            if cuts is None:  # no customer yet: 333 for now, tried again next interval
                return
            self.store.cut_points.write(run.name, cuts)
        finally:
            self.store.cut_points.unlock(run.name)
        self._use(run.name, cuts)
        self._on_new_cuts()
        logger.info(
            "quantile cut points of profile %s, version %d, as of %s: population %d, "
            "sampled %d; recency_days %s, orders %s, monetary %s; in %.3f s",
            run.name,
            cuts.version,
            iso(run.as_of_ms),
            cuts.population,
            cuts.sampled,
            list(cuts.recency_days),
            list(cuts.frequency_orders),
            [format_units(u) for u in cuts.monetary],
            time.perf_counter() - run.started,
        )

    def _use(self, name: str, cuts: Cuts) -> None:
        self.profiles.use_cuts(name, cuts)
        metrics.QUANTILE_CUTS_VERSION.labels(name).set(cuts.version)
