"""Python's cycle collector, tuned for the long-running commands (run, rebuild).

Every event allocates short-lived dicts, lists and objects that reference counting frees;
the cycle collector only matters for reference cycles, which the hot path does not make.
Its passes are triggered by the count of objects allocated and not yet freed, so during a
batch the batch's own objects (thousands of events, customers, decisions and records, all
alive until the batch ends) set them off, and each pass traverses them to find nothing
to free: measured on the worker (throughput benchmark), 147 passes over 100,000 events
took 13 µs per event, a sixth of its CPU. So a batch runs with the collector `paused`, as
a whole, and its objects are freed before the collector runs again: then the count is
back near where the batch found it, and most batches end without a pass at all.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_paused = False  # whether `paused` switched the collector off (not the operator, not gc)


def tune() -> None:
    """At start: objects built so far are frozen out of the passes, passes are rarer;
    reference cycles are still collected."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No pass during a batch; they run after it, once its objects are freed (so the
    batch is best a function's frame that has returned when this ends). Waits inside it
    (a retry's backoff) run `resumed`."""
    global _paused
    if not gc.isenabled():  # nested, or the collector is off anyway
        yield
        return
    gc.disable()
    _paused = True
    try:
        yield
    finally:
        _paused = False
        gc.enable()


@contextlib.contextmanager
def resumed() -> Iterator[None]:
    """A wait inside a paused batch (RedisRetry's backoff through an outage): the
    collector runs during the wait, starting with a pass over the young objects, so that
    cycles a failed attempt left (a traceback holds its frames, and they the batch) do not
    pile up however long the outage lasts. Elsewhere, nothing changes."""
    global _paused
    if not _paused:
        yield
        return
    _paused = False
    gc.enable()
    gc.collect(0)
    try:
        yield
    finally:
        gc.disable()
        _paused = True
