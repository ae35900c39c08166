"""The sweeper: time as an input. Scores decay as boundaries pass; silent regulars alert.

Every customer sits in a due index (worker/state/keys.py) under the instant its score next
changes by itself (worker/rules/decay.py), written in the same atomic commit as its state. A
sweep at instant T reads only the entries due at T, in bounded steps, and commits each
customer through the same compare-and-set path as order events (worker/state/store.py), which
reschedules it after T. So a sweep costs what is due, not the population; it cannot race
the consumer (a conflicting commit is recomputed); and a second sweep at T finds nothing.

Ownership: the due index is split by orders-topic partition, like the outbox. A worker
sweeps the partitions it consumes, so one producer publishes all of a customer's changes
(events and decay) in commit order, and no lease is needed. `rfm-worker sweep --once`
(cron, while no worker runs) sweeps every partition; running it beside workers is safe
(compare-and-set: nothing is published twice) but gives up that ordering guarantee.

The marking pass: when a worker starts with profiles whose versions differ from those the
last completed pass applied (`rfm:profiles`), or on customers stored before the due index
existed, one throttled pass (a SCAN step of 500 keys per loop turn) marks due now every
customer whose scores are out of date: no `scored_at` yet, or scored with another version
of its profile. The sweeps of their owners then rescore them: changes with cause
`rescore`, due instants from the new thresholds. The pass publishes nothing, so every
worker may run it; a pass cut short by a restart runs again, and customers already
rescored are skipped (their stored version matches), so it resumes in effect.

Quantile profiles (worker/rules/quantiles.py): their thresholds are cut points of the tenant's
customer base, stored versioned in Redis (`rfm:quantiles`). Every sweep interval a worker
reads them; a version it does not score with yet is applied like a changed profile (the
marking pass above, cause `rescore`). When a profile's cut points are missing or older than
its `quantiles_every_minutes` (on the sweeper's clock), the worker that takes the
profile's lock (`rfm:quantiles:lock:<name>`) computes new ones: a SCAN of the profile's
customers, 500 keys per loop turn like the marking pass, then stores version + 1 and
applies it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker import metrics
from worker.config import Settings
from worker.errors import RfmError, UsageError
from worker.rules.instants import MAX_FUTURE_MS, iso, wall_ms
from worker.rules.money import format_units
from worker.rules.profiles import Profiles
from worker.rules.quantiles import Cuts, cut_points
from worker.services import causes, sampling
from worker.state import keys
from worker.state.store import BatchResult, Committed, Store

logger = logging.getLogger(__name__)

STEP_BUDGET = 2000  # due customers read per step: one step stays a batch-sized pause
QUANTILE_STEP = 500  # customer keys scanned per loop turn when computing cut points
QUANTILE_LOCK_MS = 300_000  # renewed every step: a computing worker that died frees it


@dataclass(slots=True)
class Sweep:
    """One sweep in progress: every due zset of the partitions it covers, at one instant."""

    as_of_ms: int
    pending: set[tuple[int, int]]  # (shard, partition) zsets that may still hold due entries
    started: float = field(default_factory=time.perf_counter)
    customers: int = 0
    changes: int = 0
    overdue: int = 0

    def count(self, result: BatchResult) -> None:
        self.customers += result.customers
        for c in result.committed:
            if c.change.kind == "rfm.overdue":
                self.overdue += 1
            else:
                self.changes += 1


@dataclass(slots=True)
class QuantileRun:
    """One computation of a quantile profile's cut points, a scan step per loop turn."""

    name: str
    as_of_ms: int
    exact: bool  # every customer is read (the population is not above the sample size)
    population: int  # the estimate the sample was drawn against (0: unknown)
    chunks: Iterator[list[tuple[int, int, int]]]
    values: list[tuple[int, int, int]] = field(default_factory=list)
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
        columns = [list(c) for c in zip(*self.values, strict=True)] or [[], [], []]
        days, orders, money = columns
        return cut_points(
            days,
            orders,
            money,
            version=(0 if stored is None else stored.version) + 1,
            computed_at=self.as_of_ms,
            population=len(self.values) if self.exact else self.population,
        )


def compute_cuts(store: Store, profiles: Profiles, name: str, as_of_ms: int) -> Cuts | None:
    """One whole computation at once (a worker's start, dry runs); None without customers."""
    run = QuantileRun.start(store, profiles, name, as_of_ms)
    for chunk in run.chunks:
        run.values += chunk
    return run.cuts(store.cut_points.read().get(name))


def load_cuts(
    store: Store, profiles: Profiles, *, compute_missing_at: int | None = None
) -> dict[str, Cuts]:
    """Score every quantile profile with its stored cut points. With `compute_missing_at`
    (a worker's start), a quantile profile with none yet and customers to rank gets its
    first ones computed and stored now, before anything is scored: a base switched to
    quantile mode moves once, to its quintiles, never through the 333 placeholder."""
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


def zsets(partitions: Iterable[int]) -> set[tuple[int, int]]:
    return {(shard, p) for p in partitions for shard in range(keys.SHARDS)}


class Sweeper:
    """Decay sweeps, a bounded step at a time, interleaved with the consumer loop."""

    def __init__(
        self,
        store: Store,
        profiles: Profiles,
        *,
        interval: float,
        clock: Callable[[], int],
        now_ms: Callable[[], int],
        budget: int = STEP_BUDGET,
    ) -> None:
        self.store, self.profiles = store, profiles
        self.interval, self.clock, self.now_ms, self.budget = interval, clock, now_ms, budget
        self.current: Sweep | None = None
        self._next_start = time.monotonic()
        self._index_chunks: Iterator[list[bytes]] | None = None  # the marking pass
        self._pass: MarkingPass
        self._indexed = False
        self._runs: dict[str, QuantileRun] = {}  # cut points being computed, by profile
        self._next_cuts_check = time.monotonic()
        for name in profiles.quantile_names():
            cuts = profiles.cuts.get(name)
            metrics.QUANTILE_CUTS_VERSION.labels(name).set(0 if cuts is None else cuts.version)

    def tick(self, partitions: set[int]) -> list[Committed]:
        """One step of the loop: a step of quantile upkeep and a chunk of the marking pass
        if either runs, then one step of the sweep in progress, starting one every
        `interval` seconds."""
        self.quantile_step()
        self.index_step()
        if self.current is None:
            if time.monotonic() < self._next_start or not partitions:
                return []
            self._next_start = time.monotonic() + self.interval
            self.current = self.start(partitions, self.clock())
        return self.step(self.current, partitions)

    def start(self, partitions: Iterable[int], as_of_ms: int) -> Sweep:
        sweep = Sweep(as_of_ms, zsets(partitions))
        metrics.SWEEP_DUE.set(self.store.due.backlog(sweep.pending, as_of_ms))
        return sweep

    def step(self, sweep: Sweep, partitions: set[int]) -> list[Committed]:
        """Sweep up to `budget` due customers; finish the sweep when nothing is left."""
        owned = [z for z in sweep.pending if z[1] in partitions]  # revoked ones are dropped
        if not owned:
            self._finish(sweep, partitions)
            return []
        step = causes.sweep_step(
            self.store,
            owned,
            self.profiles,
            as_of_ms=sweep.as_of_ms,
            now_ms=self.now_ms(),
            limit=max(1, self.budget // len(owned)),
        )
        sweep.pending -= step.exhausted
        sweep.pending.intersection_update(owned)
        sweep.count(step.result)
        metrics.RESCORED.labels("decay").inc(step.result.customers)
        metrics.STORE_CONFLICTS.inc(step.result.conflicts)
        return step.result.committed

    def _finish(self, sweep: Sweep, partitions: set[int]) -> None:
        elapsed = time.perf_counter() - sweep.started
        metrics.SWEEP_DURATION.observe(elapsed)
        metrics.SWEEP_DUE.set(self.store.due.backlog(zsets(partitions), self.clock()))
        if sweep is self.current:
            self.current = None
        if sweep.customers:
            logger.info(
                "sweep as of %d: %d customer(s) rescored, %d change(s), %d overdue alert(s) "
                "in %.3f s",
                sweep.as_of_ms,
                sweep.customers,
                sweep.changes,
                sweep.overdue,
                elapsed,
            )

    def sweep_all(
        self, partitions: set[int], as_of_ms: int, publish: Callable[[list[Committed]], None]
    ) -> Sweep:
        """A whole sweep at once (`rfm-worker sweep --once`), publishing as it goes."""
        while self.quantile_step():
            pass
        while self.index_step():
            pass
        sweep = self.start(partitions, as_of_ms)
        while sweep.pending:
            publish(self.step(sweep, partitions))
        self._finish(sweep, partitions)
        return sweep

    def index_step(self) -> bool:
        """One step of the marking pass (module docstring); False once it is done."""
        if self._indexed:
            return False
        if self._index_chunks is None:
            if self._runs:  # new cut points coming: mark against them, not the old ones
                return False
            if self.store.marking.is_done(self.profiles.versions()):
                self._indexed = True
                return False
            self._index_chunks = self.store.reads.key_chunks()
            self._pass = MarkingPass(self.store.marking.versions(), self.profiles)
        try:
            chunk = next(self._index_chunks, None)
        except Exception:  # the scan broke off (Redis error): start the pass again later
            self._index_chunks = None
            raise
        if chunk is None:
            self.store.marking.record_done(self.profiles.versions())
            self._indexed = True
            self._pass.finish()
            return False
        self._pass.progress(
            len(chunk), causes.mark_due(self.store, chunk, self.profiles, self.clock())
        )
        return True

    def recheck(self) -> None:
        """Run the marking pass again (the profiles changed while running)."""
        self._indexed, self._index_chunks = False, None

    # -- quantile profiles: cut points kept up to date (module docstring) ----------------

    def quantile_step(self) -> bool:
        """Every `interval` seconds, apply newer stored cut points and start computing
        missing or stale ones (lock permitting); then one scan step of a computation in
        progress. True while one is in progress."""
        names = self.profiles.quantile_names()
        if not names:
            return False
        if time.monotonic() >= self._next_cuts_check:
            self._next_cuts_check = time.monotonic() + self.interval
            self._check_cuts(names)
        run = next(iter(self._runs.values()), None)
        if run is None:
            return False
        try:
            chunk = next(run.chunks, None)
        except Exception:  # the scan broke off (Redis error): the next check starts again
            del self._runs[run.name]
            raise
        if chunk is None:
            del self._runs[run.name]
            self._finish_cuts(run)
        else:
            run.values += chunk
            if not self.store.cut_points.renew_lock(run.name, QUANTILE_LOCK_MS):
                logger.warning(
                    "lost the quantile lock of profile %s: another worker took over", run.name
                )
                del self._runs[run.name]
        return bool(self._runs)

    def _check_cuts(self, names: list[str]) -> None:
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
                self._runs[name] = self._start_cuts(name)
        if changed:
            self.recheck()

    def _stale(self, name: str, cuts: Cuts | None) -> bool:
        if cuts is None:
            return True
        every_ms = self.profiles.configured[name].quantiles_every_minutes * 60_000
        return self.clock() - cuts.computed_at >= every_ms

    def _start_cuts(self, name: str) -> QuantileRun:
        return QuantileRun.start(self.store, self.profiles, name, self.clock())

    def _finish_cuts(self, run: QuantileRun) -> None:
        try:
            cuts = run.cuts(self.store.cut_points.read().get(run.name))
            if cuts is None:  # no customer yet: 333 for now, tried again next interval
                return
            self.store.cut_points.write(run.name, cuts)
        finally:
            self.store.cut_points.unlock(run.name)
        self._use(run.name, cuts)
        self.recheck()
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


class MarkingPass:
    """Progress of one marking pass, in the log and in metrics."""

    LOG_EVERY = 10.0  # seconds between progress lines

    def __init__(self, stored: dict[str, str], profiles: Profiles) -> None:
        self.examined = self.marked = 0
        self.started = self._logged = time.monotonic()
        changed = [
            f"{name} {stored.get(name, 'new')} -> {profiles.for_tenant(name).version}"
            for name in profiles.names()
            if stored.get(name) != profiles.for_tenant(name).version
        ]
        changed += [f"{name} removed" for name in sorted(set(stored) - set(profiles.names()))]
        if stored and changed:
            logger.info(
                "profile(s) changed (%s): rescoring their customers in the background",
                ", ".join(changed),
            )
        metrics.RESCORE_RUNNING.set(1)

    def progress(self, examined: int, marked: int) -> None:
        self.examined += examined
        self.marked += marked
        metrics.RESCORE_EXAMINED.inc(examined)
        metrics.RESCORE_MARKED.inc(marked)
        if time.monotonic() - self._logged >= self.LOG_EVERY:
            self._logged = time.monotonic()
            logger.info(
                "rescore pass: %d customer(s) examined, %d marked for rescoring",
                self.examined,
                self.marked,
            )

    def finish(self) -> None:
        metrics.RESCORE_RUNNING.set(0)
        if self.marked:
            logger.info(
                "rescore pass done in %.1f s: %d customer(s) examined, %d marked; sweeps "
                "rescore them",
                time.monotonic() - self.started,
                self.examined,
                self.marked,
            )


def run_once(settings: Settings, profiles: Profiles, as_of_ms: int | None) -> int:
    """`rfm-worker sweep --once [--as-of TS]`: one whole sweep of every partition, its
    changes published (and acknowledged) before returning. Usable from cron."""
    from worker.kafka import clients
    from worker.kafka.relay import DRAIN_TIMEOUT, Relay
    from worker.state import connection

    store = Store(connection.redis_client(settings))
    try:
        as_of_ms = _sweep_instant(settings, store, as_of_ms)
        producer = clients.producer(settings)
        partitions = _partitions(producer, settings.orders_topic)
        relay = Relay(store, producer, settings.actions_topic)
        relay.recover(partitions)  # a stopped worker's unpublished changes go out first

        def publish(committed: list[Committed]) -> None:
            relay.publish(committed)
            relay.settle(trim_now=True)

        sweeper = Sweeper(
            store,
            profiles,
            interval=settings.sweep_interval,
            clock=lambda: as_of_ms,
            now_ms=wall_ms,
        )
        sweep = sweeper.sweep_all(partitions, as_of_ms, publish)
        if not relay.drain(DRAIN_TIMEOUT):
            raise RfmError(
                f"{relay.in_flight} change(s) not acknowledged by the broker within "
                f"{DRAIN_TIMEOUT:.0f} s; they stay in the outbox and are published by the "
                "next sweep or worker"
            )
    finally:
        store.redis.close()
    print(
        f"swept as of {iso(as_of_ms)}: {sweep.customers} due customer(s) rescored, "
        f"{sweep.changes} change(s) and {sweep.overdue} overdue alert(s) published"
    )
    return 0


def _sweep_instant(settings: Settings, store: Store, as_of_ms: int | None) -> int:
    """The sweep's instant: --as-of, else now; time is never moved back, nor ahead of now."""
    wall = wall_ms()
    if as_of_ms is not None and as_of_ms - wall > MAX_FUTURE_MS:
        raise UsageError(
            f"refusing --as-of {iso(as_of_ms)}: it is ahead of the wall clock ({iso(wall)}), "
            "and decay that has not happened yet is never published"
        )
    if settings.clock != "event":
        return wall if as_of_ms is None else as_of_ms
    clock = store.clock.read()
    if as_of_ms is None:
        return wall if clock is None else clock
    if clock is not None and as_of_ms < clock:
        raise UsageError(
            f"refusing --as-of {iso(as_of_ms)}: the event clock is already at {iso(clock)} "
            "and time never moves back (RFM_CLOCK=event); use a later instant or omit --as-of"
        )
    return store.clock.advance(as_of_ms)


def _partitions(producer: Any, topic: str) -> set[int]:
    meta = producer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        reason = meta.error if meta is not None and meta.error else "no partitions"
        raise RfmError(f"cannot read the partitions of {topic} (RFM_ORDERS_TOPIC): {reason}")
    return set(meta.partitions)
