"""Python's cycle collector, tuned for the long-running commands (run, rebuild).

Every event allocates short-lived dicts, lists and objects that reference counting frees;
the cycle collector only matters for reference cycles, which the hot path does not make.
Its passes are triggered by allocation counts, and during a batch the batch's own objects
(thousands of events, decisions and records, all alive until the batch ends) are what a
pass traverses, to find nothing to free: with the defaults that cost the worker 20-35% of
its throughput, with `tune` alone ~10% more than with `paused` batches too (in process,
validation and the commit path, 50,000 events: min of 3 rounds 44-46 against 48-52 µs
per event, docs/performance.md).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def tune() -> None:
    """At start: objects built so far are frozen out of the passes, passes are rarer;
    reference cycles are still collected."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No pass during a batch's CPU-bound work; the passes run between batches, once its
    objects are freed. Not around a wait (a retry's backoff): cycles made meanwhile (an
    exception's traceback) are collected as usual then."""
    if not gc.isenabled():  # nested, or the collector is off anyway
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
