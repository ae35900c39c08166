"""How a `rfm-worker rebuild` joins or starts the rebuild of the state, and how the last one
finishes it (worker/services/rebuild.py runs them; the record: worker/state/rebuild_marker.py).

Start: under the rebuild's lock, a run that finds no unfinished rebuild of this incarnation
of the orders topic records one, wipes (every rfm:* key but the tombstones and the record)
and marks the wipe done; a run that finds one joins it, without wiping: concurrent runs
(several machines, each with its --partitions) wait for the wipe, then replay their own
partitions. A wipe cut short (a kill) is done again by the next run.

Finish: under the lock, once every partition is done, the run that sees it records the
marking pass done, drops the outboxes, commits the group's offsets where each partition
ended, and deletes the record, last: until then no worker starts.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import redis

from worker.config import Settings
from worker.errors import RfmError, UsageError
from worker.kafka import KafkaException, clients, replay
from worker.rules.profiles import Profiles
from worker.state.rebuild_marker import LOCK_TTL_S, Marker
from worker.state.store import Store


@contextlib.contextmanager
def locked(store: Store) -> Iterator[Any]:
    """The rebuild's lock, held (waited for: its holder renews it while it wipes, and a
    holder killed frees it within LOCK_TTL_S)."""
    lock = store.rebuild.lock()
    lock.acquire(blocking=True)
    try:
        yield lock
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile
            lock.release()


def join_or_start(
    store: Store, topic: str, incarnation: str | None, partitions: int, *, may_wipe: bool
) -> tuple[Marker, int]:
    """The rebuild this run takes part in, and how many keys it wiped (0 when it joined)."""
    marker = store.rebuild.read()
    if marker is not None and marker.wiped and marker.same_topic(topic, incarnation):
        return marker, 0  # the usual resume, and no lock needed
    with locked(store) as lock:
        marker = store.rebuild.read()  # another run may have started it meanwhile
        if marker is None or not marker.same_topic(topic, incarnation):
            if marker is not None:
                print(
                    f"an unfinished rebuild of {marker.topic} (another topic, or another "
                    f"incarnation of it) is dropped: this rebuild of {topic} starts over",
                    file=sys.stderr,
                )
            if not may_wipe and store.reads.holds_customers():
                raise UsageError(
                    "Redis still holds rfm-worker state; a rebuild deletes all of it first. "
                    "Stop every worker, then run `rfm-worker rebuild --yes`"
                )
            marker = store.rebuild.start(topic, incarnation, partitions)
        elif marker.wiped:
            return marker, 0
        wiped = store.server.wipe(beat=lambda: lock.extend(LOCK_TTL_S, replace_ttl=True))
        store.rebuild.wiped()
    return store.rebuild.read() or marker, wiped


def finish(store: Store, settings: Settings, profiles: Profiles) -> dict[int, int] | None:
    """Finish the rebuild if every partition is done: the offsets the group resumes at;
    None while some partition is not done."""
    with locked(store):
        marker = store.rebuild.read()
        if marker is None:
            return {}  # another run finished it meanwhile
        if not marker.finished():
            return None
        store.marking.record_done(profiles.versions())
        store.outbox.drop_all()
        _commit_group_offsets(settings, marker.done)
        store.rebuild.clear()
    return marker.done


def _commit_group_offsets(settings: Settings, ends: dict[int, int]) -> None:
    consumer = clients.consumer(settings)
    try:
        replay.commit_offsets(consumer, settings.orders_topic, ends)
    except KafkaException as exc:
        raise RfmError(
            f"the state is rebuilt, but the offsets of group {settings.kafka_group} could "
            f"not be committed ({exc}); is a worker still running? Stop it and rerun "
            "`rfm-worker rebuild` to finish"
        ) from None
    finally:
        consumer.close()
