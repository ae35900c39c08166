"""The marking pass: customers a changed profile moves, marked due now (docs/profiles.md,
Changing thresholds; docs/time-and-sweeps.md, Customers stored before the due index
existed).

When a worker starts with profiles whose versions differ from those the last completed
pass applied (`rfm:profiles`), or on customers stored before the due index existed, one
throttled pass (a SCAN step of 500 keys per loop turn) marks due now every customer whose
scores are out of date: no `scored_at` yet, or scored with another version of its
profile. The sweeps of their owners then rescore them (worker/services/sweeper.py):
changes with cause `rescore`, due instants from the new thresholds. The pass publishes
nothing, so every worker may run it; a pass cut short by a restart runs again, and
customers already rescored are skipped (their stored version matches), so it resumes in
effect. New cut points of a quantile profile change its version: the pass runs again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from worker import metrics
from worker.pacing import Every
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state.store import Store

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 10.0  # seconds between progress lines


class MarkingPass:
    """The marking pass (module docstring), a chunk of customer keys per step."""

    def __init__(self, store: Store, profiles: Profiles, *, clock: Callable[[], int]) -> None:
        self.store, self.profiles, self.clock = store, profiles, clock
        self._chunks: Iterator[list[bytes]] | None = None  # the scan in progress
        self._progress: _Progress
        self._done = False

    def step(self, *, cuts_pending: bool = False) -> bool:
        """Mark one chunk of customers; False once the pass is done. `cuts_pending`: new
        cut points are being computed, so a pass not yet begun waits to mark against them,
        not the old ones."""
        if self._done:
            return False
        if self._chunks is None:
            if cuts_pending:
                return False
            if self.store.marking.is_done(self.profiles.versions()):
                self._done = True
                return False
            self._chunks = self.store.reads.key_chunks()
            self._progress = _Progress(self.store.marking.versions(), self.profiles)
        try:
            chunk = next(self._chunks, None)
        except Exception:  # the scan broke off (Redis error): start the pass again later
            self._chunks = None
            raise
        if chunk is None:
            self.store.marking.record_done(self.profiles.versions())
            self._done = True
            self._progress.finish()
            return False
        self._progress.add(
            len(chunk), causes.mark_due(self.store, chunk, self.profiles, self.clock())
        )
        return True

    def restart(self) -> None:
        """Run the pass again: the profiles changed (new cut points) while running."""
        self._done, self._chunks = False, None


class _Progress:
    """Progress of one marking pass, in the log and in metrics."""

    def __init__(self, stored: dict[str, str], profiles: Profiles) -> None:
        self.examined = self.marked = 0
        self.started = time.monotonic()
        self._log = Every(PROGRESS_EVERY, first_after=PROGRESS_EVERY)
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

    def add(self, examined: int, marked: int) -> None:
        self.examined += examined
        self.marked += marked
        metrics.RESCORE_EXAMINED.inc(examined)
        metrics.RESCORE_MARKED.inc(marked)
        if self._log.due():
            logger.info(
                "marking pass: %d customer(s) examined, %d marked for rescoring",
                self.examined,
                self.marked,
            )

    def finish(self) -> None:
        metrics.RESCORE_RUNNING.set(0)
        if self.marked:
            # Worded as before the pass had one name: tests and docs/profiles.md quote it.
            logger.info(
                "rescore pass done in %.1f s: %d customer(s) examined, %d marked; sweeps "
                "rescore them",
                time.monotonic() - self.started,
                self.examined,
                self.marked,
            )
