"""The decay sweep: time as an input. Scores decay as boundaries pass; silent regulars alert
(docs/time-and-sweeps.md).

Every customer sits in a due index (worker/state/keys.py) under the instant its score next
changes by itself (worker/rules/decay.py), written in the same atomic commit as its state. A
sweep at instant T reads only the entries due at T, in bounded steps, and commits each
customer through the same compare-and-set path as order events (worker/state/store.py), which
reschedules it after T. So a sweep costs what is due, not the population; it cannot race
the consumer (a conflicting commit is recomputed); and a second sweep at T finds nothing.

Ownership: the due index is split by orders-topic partition, like the outbox. A worker
sweeps the partitions it consumes, so one producer publishes all of a customer's changes
(events and decay) in commit order, and no lease is needed. `rfm-worker sweep --once`
(worker/commands/sweep_once.py; cron, while no worker runs) sweeps every partition; running
it beside workers is safe (compare-and-set: nothing is published twice) but gives up that
ordering guarantee.

A loop turn (`Sweeper.tick`) also gives a step to the chores that decide what is due
besides time: the upkeep of quantile cut points and churn fits (worker/services/upkeep.py,
quantile_upkeep.py, churn_upkeep.py) and the marking pass (worker/services/marking.py), which
new cut points and new fits restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from worker import metrics
from worker.pacing import Every
from worker.rules.instants import iso
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.churn_upkeep import CHURN
from worker.services.marking import MarkingPass
from worker.services.quantile_upkeep import QUANTILES
from worker.services.upkeep import Upkeep
from worker.state import keys
from worker.state.store import BatchResult, Committed, Store

logger = logging.getLogger(__name__)

STEP_BUDGET = 2000  # due customers read per step: one step stays a batch-sized pause


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
        self.clock, self.now_ms, self.budget = clock, now_ms, budget
        self.current: Sweep | None = None
        self._starts = Every(interval)  # a sweep begins at most once per interval
        self.marking = MarkingPass(store, profiles, clock=clock)
        restart = self.marking.restart
        self.quantiles = Upkeep(
            QUANTILES, store, profiles, interval=interval, clock=clock, on_new=restart
        )
        self.churn = Upkeep(CHURN, store, profiles, interval=interval, clock=clock, on_new=restart)
        self.upkeeps: tuple[Upkeep[Any], ...] = (self.quantiles, self.churn)  # in this order

    def tick(self, partitions: set[int]) -> list[Committed]:
        """One step of the loop: a step of quantile and churn upkeep and a chunk of the
        marking pass if any runs, then one step of the sweep in progress, starting one every
        `interval` seconds."""
        for upkeep in self.upkeeps:
            upkeep.step()
        self.marking.step(cuts_pending=self._computing())
        if self.current is None:
            if not partitions or not self._starts.due():
                return []
            self.current = self.start(partitions, self.clock())
        return self.step(self.current, partitions)

    def _computing(self) -> bool:
        """Whether new cut points or a new fit are being computed here."""
        return any(upkeep.computing for upkeep in self.upkeeps)

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
                "sweep as of %s: %d customer(s) rescored, %d change(s), %d overdue alert(s) "
                "in %.3f s",
                iso(sweep.as_of_ms),
                sweep.customers,
                sweep.changes,
                sweep.overdue,
                elapsed,
            )

    def sweep_all(
        self, partitions: set[int], as_of_ms: int, publish: Callable[[list[Committed]], None]
    ) -> Sweep:
        """A whole sweep at once (`rfm-worker sweep --once`), publishing as it goes."""
        # Cut points and fits first, then the whole marking pass: the sweep rescores what
        # it marked.
        for upkeep in self.upkeeps:
            while upkeep.step():
                pass
        while self.marking.step(cuts_pending=self._computing()):
            pass
        sweep = self.start(partitions, as_of_ms)
        while sweep.pending:
            publish(self.step(sweep, partitions))
        self._finish(sweep, partitions)
        return sweep
