"""Upkeep: a value computed from a profile's customer base kept up to date — quantile cut points
(worker/services/quantile_upkeep.py, docs/profiles.md "Quantile mode") and churn-model fits
(worker/services/churn_upkeep.py, docs/churn.md), each a `Model` given to the same job.

A profile's value is stored versioned in Redis (one hash per model, worker/state/). Every
sweep interval a worker reads the values; a version it does not score with yet is applied
like a changed profile (the marking pass, worker/services/marking.py, cause `rescore`). When
a profile's value is missing, unusable (a fit of another model) or older than the model's
period (on the sweeper's clock), the worker that takes the profile's lock computes a new
one: a sampled SCAN of the profile's customers, 500 keys per loop turn like the marking
pass, then the computation, version + 1 stored and applied. A computation that fails keeps
the previous value, is reported by the model, and is tried again a period later (at the
next check when the profile had no customer yet); so is a value stored without a part that
failed (`Model.complete`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from worker.pacing import Every
from worker.rules.profiles import Profiles
from worker.services import sampling
from worker.state.reads import Reads
from worker.state.store import Store

UPKEEP_STEP = 500  # customer keys scanned per loop turn when computing a value
UPKEEP_LOCK_MS = 300_000  # renewed every step: a computing worker that died frees it

Row = tuple[int, ...]  # a customer's values, as the model's reader gives them


class Value(Protocol):
    """What a model stores per profile: a versioned value (Cuts, Fit)."""

    @property
    def version(self) -> int: ...


V = TypeVar("V", bound=Value)


class Stored(Protocol[V]):
    """A model's values as stored, with their per-profile locks (worker/state/)."""

    def read(self) -> dict[str, V]: ...
    def write(self, name: str, value: V, /) -> None: ...
    def try_lock(self, name: str, ttl_ms: int) -> bool: ...
    def renew_lock(self, name: str, ttl_ms: int) -> bool: ...
    def unlock(self, name: str) -> None: ...


class Reader(Protocol):
    """How a model reads a profile's sampled base (worker/services/sampling.py)."""

    def __call__(
        self, reads: Reads, name: str, profiles: Profiles, as_of_ms: int, *, sample: int, count: int
    ) -> Iterator[Sequence[Row]]: ...


class Gauge(Protocol):
    def labels(self, *values: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Failed:
    """A computation that failed: why. The previous value stays."""

    reason: str


@dataclass(frozen=True, slots=True)
class Model(Generic[V]):
    """What differs between kept-up values; the rest is `Upkeep`, `load` and `compute`."""

    what: str  # the lock's name in the log ("lost the <what> lock of profile …")
    names: Callable[[Profiles], list[str]]  # the profiles it serves
    state: Callable[[Store], Stored[V]]  # where its values are stored and locked
    held: Callable[[Profiles], Mapping[str, V | None]]  # the values the profiles score with
    use: Callable[[Profiles, str, V], object]  # score a profile with a value
    version_gauge: Gauge  # the version each profile scores with (0: none yet)
    sample: Callable[[Profiles, str], int]  # customers read at most
    reader: Reader  # the sampled base, a chunk of rows per scan step
    compute: Callable[[Run, Profiles, V | None], V | Failed | None]  # None: no customer
    computed_at: Callable[[V], int]  # the instant a value is as of (clock ms)
    every_minutes: Callable[[Profiles, str], int]  # how old a value may get
    logged: Callable[[Run, V], None]  # says in the log that a new value is used
    failed: Callable[[Run, Failed], None] = lambda run, failure: None  # ... that one failed
    start_failed: Callable[[str, Failed], None] = lambda name, failure: None  # at start
    usable: Callable[[Profiles, str, V], bool] = lambda profiles, name, value: True
    # A usable value that lacks a part the profile asks for (a churn fit without the spend
    # fit of a profile given a value model): computed again at the next check, or a period
    # after this worker computed it so (the part failed, `failed` said why).
    complete: Callable[[Profiles, str, V], bool] = lambda profiles, name, value: True


@dataclass(slots=True)
class Run:
    """One computation of a profile's value: a scan step per loop turn, then `Model.compute`."""

    name: str
    as_of_ms: int
    exact: bool  # every customer is read (the population is not above the sample size)
    population: int  # the estimate the sample was drawn against (0: unknown)
    chunks: Iterator[Sequence[Row]]
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(
        cls, model: Model[Any], store: Store, profiles: Profiles, name: str, as_of_ms: int
    ) -> Run:
        sample = model.sample(profiles, name)
        population = sampling.population(store.reads, name, profiles)
        chunks = model.reader(
            store.reads, name, profiles, as_of_ms, sample=sample, count=UPKEEP_STEP
        )
        return cls(name, as_of_ms, population <= sample, population, chunks)

    @property
    def base(self) -> int:
        """The population the value stands for: the customers read, or the estimate."""
        return len(self.rows) if self.exact else self.population

    def next_version(self, stored: Value | None) -> int:
        return (0 if stored is None else stored.version) + 1


def compute(
    model: Model[V], store: Store, profiles: Profiles, name: str, as_of_ms: int
) -> V | Failed | None:
    """One whole computation at once (a worker's start, dry runs); None without customers."""
    run = Run.start(model, store, profiles, name, as_of_ms)
    for chunk in run.chunks:
        run.rows += chunk
    return model.compute(run, profiles, model.state(store).read().get(name))


def load(
    model: Model[V], store: Store, profiles: Profiles, *, compute_missing_at: int | None = None
) -> dict[str, V]:
    """Score every profile the model serves with its stored value. With `compute_missing_at`
    (a worker joining its group), a profile with none yet (or an unusable one) and customers
    to read gets its first one computed and stored now, before anything is scored: a base
    switched to quantile mode moves once, to its quintiles, never through the placeholder."""
    names = model.names(profiles)
    state = model.state(store)
    stored = state.read() if names else {}
    for name in names:
        value = stored.get(name)
        missing = (
            value is None
            or not model.usable(profiles, name, value)
            or not model.complete(profiles, name, value)
        )
        if missing and compute_missing_at is not None and state.try_lock(name, UPKEEP_LOCK_MS):
            try:
                result = compute(model, store, profiles, name, compute_missing_at)
                if isinstance(result, Failed):
                    model.start_failed(name, result)
                elif result is not None:
                    state.write(name, result)
                    stored[name] = result
            finally:
                state.unlock(name)
        if name in stored:
            model.use(profiles, name, stored[name])
            model.version_gauge.labels(name).set(stored[name].version)
    return stored


class Upkeep(Generic[V]):
    """A model's values kept up to date while the worker runs, a bounded step per loop turn."""

    def __init__(
        self,
        model: Model[V],
        store: Store,
        profiles: Profiles,
        *,
        interval: float,
        clock: Callable[[], int],
        on_new: Callable[[], None],
    ) -> None:
        """`on_new` is called whenever the profiles start scoring with another value:
        customers checked against the old one must be checked again."""
        self.model, self.store, self.profiles, self.clock = model, store, profiles, clock
        self.state = model.state(store)
        self._on_new = on_new
        self._checks = Every(interval)
        self._runs: dict[str, Run] = {}  # values being computed, by profile
        self._failed_at: dict[str, int] = {}  # the last failed computation per profile (ms)
        held = model.held(profiles)
        for name in model.names(profiles):
            value = held.get(name)
            model.version_gauge.labels(name).set(0 if value is None else value.version)

    @property
    def computing(self) -> bool:
        """Whether a value is being computed here."""
        return bool(self._runs)

    def step(self) -> bool:
        """Every `interval` seconds, apply newer stored values and start computing missing
        or stale ones (lock permitting); then one scan step of a computation in progress.
        True while one is in progress."""
        names = self.model.names(self.profiles)
        if not names:
            return False
        if self._checks.due():
            self._check(names)
        done = sampling.scan_step(self._runs, self.state, UPKEEP_LOCK_MS, self.model.what)
        if done is not None:
            self._finish(done)
        return bool(self._runs)

    def _check(self, names: list[str]) -> None:
        stored, held = self.state.read(), self.model.held(self.profiles)
        changed = False
        for name in names:
            value = stored.get(name)
            current = held.get(name)
            if (
                value is not None
                and self.model.usable(self.profiles, name, value)
                and (current is None or current.version != value.version)
            ):
                self._use(name, value)
                changed = True
            if (
                name not in self._runs
                and self._stale(name, value)
                and self.state.try_lock(name, UPKEEP_LOCK_MS)
            ):
                self._runs[name] = Run.start(
                    self.model, self.store, self.profiles, name, self.clock()
                )
        if changed:
            self._on_new()

    def _stale(self, name: str, value: V | None) -> bool:
        every_ms = self.model.every_minutes(self.profiles, name) * 60_000
        failed = self._failed_at.get(name)
        if failed is not None and self.clock() - failed < every_ms:
            return False  # a failed one is tried again a period later, not every check
        if (
            value is None
            or not self.model.usable(self.profiles, name, value)
            or not self.model.complete(self.profiles, name, value)
        ):
            return True
        return self.clock() - self.model.computed_at(value) >= every_ms

    def _finish(self, run: Run) -> None:
        try:
            result = self.model.compute(run, self.profiles, self.state.read().get(run.name))
            if result is None:  # no customer yet: tried again next interval
                return
            if isinstance(result, Failed):
                # Not tried again before a period (a scan of a large base each check would
                # be wasted), unless the base was empty: that scan was free.
                if run.rows:
                    self._failed_at[run.name] = run.as_of_ms
                self.model.failed(run, result)
                return
            self.state.write(run.name, result)
        finally:
            self.state.unlock(run.name)
        if self.model.complete(self.profiles, run.name, result):
            self._failed_at.pop(run.name, None)
        else:  # a part failed: computed again a period later, like a failure
            self._failed_at[run.name] = run.as_of_ms
        self._use(run.name, result)
        self._on_new()
        self.model.logged(run, result)

    def _use(self, name: str, value: V) -> None:
        self.model.use(self.profiles, name, value)
        self.model.version_gauge.labels(name).set(value.version)
