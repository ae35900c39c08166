"""The replay of `rfm-worker rebuild` (worker/commands/rebuild.py): the orders topic from
its start into a clean state, spread over processes and machines, resumable.

For when Redis lost its data (the worker refuses to consume then, and says so). Every
worker must be stopped. The rebuild deletes what is left of the rfm-worker keys, consumes
every partition from its first offset up to its end, applies the valid events through the
same commit path as the worker (records the worker dead-lettered are skipped again,
silently: their dead letters exist), and commits the group's offsets where each partition
ended, so the workers resume exactly there. It publishes nothing: the history's changes
were published when it happened, and the next change of a customer starts from its
rebuilt score. Exact only if the topic still holds its whole history (`retention.ms=-1`,
no compaction).

Spread and resumed (docs/operations.md, "Rebuilding the state"):
- A record in Redis (rfm:rebuild, worker/state/rebuild_marker.py) names the rebuild: the
  topic and its incarnation (topic id), whether the wipe is done, and each partition done
  with the offset it ended at. The first run wipes; a run that finds the record joins it
  (worker/services/rebuild_start.py). `run` and `sweep --once` refuse to start while it
  exists.
- Each run replays the partitions it owns (`--partitions`, default all) that are not done
  yet, each from the offset the state vouches for (the applied offsets, recorded after
  every batch as the worker does: worker/services/rebuild_replay.py). A run killed at any
  point is simply run again: what it applied twice counts once, and the result is the
  state of an uninterrupted rebuild.
- `--processes N` runs N child processes (`python -m worker rebuild --share ...`, killed
  with their parent), each owning a share of this run's partitions; the parent joins or
  starts the rebuild before them and finishes it after them.
- The run that completes the last partition finishes the rebuild: the group's offsets are
  committed for every partition at once, then the record is deleted, so no worker
  consumes before the whole state is rebuilt.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from worker.config import Settings
from worker.errors import RfmError, UsageError
from worker.kafka import clients
from worker.rules.profiles import Profiles
from worker.services import rebuild_start
from worker.services.rebuild_progress import span
from worker.services.rebuild_replay import BATCH, Replayed, replay_partitions
from worker.services.rebuild_spread import spread
from worker.state import keys, permissions
from worker.state.store import Store


@dataclass(frozen=True, slots=True)
class Options:
    """What the command asks of this run."""

    partitions: frozenset[int] | None = None  # owned; None: every partition
    processes: int = 1
    batch: int = BATCH
    progress_s: float = 10.0  # 0: no progress lines
    may_wipe: bool = False  # --yes: Redis may hold state, which the wipe deletes
    share: bool = False  # a child of a --processes run: neither starts nor finishes


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild run did."""

    replayed: Replayed  # this run's partitions: their ends, events, records, time
    wiped: int  # old keys deleted (0: it joined a rebuild already wiped)
    partitions: int  # of the topic
    done: int  # partitions done, this run's included
    # this run finished it: partition -> where the group resumes; else None (not every
    # partition is done yet, or another run finished it)
    ends: dict[int, int] | None

    @property
    def finished(self) -> bool:
        return self.ends is not None


def rebuild(
    store: Store, settings: Settings, profiles: Profiles, options: Options | None = None
) -> Rebuilt:
    """Take part in the rebuild of the state (start it, join it or resume it), replay this
    run's partitions, and finish it if they were the last (every worker must be stopped:
    the command asks first)."""
    opts = options or Options()
    topic = settings.orders_topic
    admin = clients.admin(settings)
    every = topic_partitions(admin, topic)  # Kafka first: nothing is wiped without it
    incarnation = clients.topic_id(admin, topic)
    owned = _owned(opts.partitions, every, topic)
    permissions.self_test(store.redis)  # a refused command: named before the wipe
    store.formats.check()  # a state format a later release recorded: refused before it too
    if opts.share:
        marker = store.rebuild.read()
        if marker is None or not marker.wiped or not marker.same_topic(topic, incarnation):
            raise RfmError("no rebuild of this topic in progress to take a share of")
        wiped = 0
    else:
        marker, wiped = rebuild_start.join_or_start(
            store, topic, incarnation, len(every), may_wipe=opts.may_wipe
        )
    if incarnation is not None:  # the applied offsets recorded below are of this one
        store.applied.adopt(topic, incarnation)
    todo = sorted(owned - set(marker.done))
    replayed = _replay(store, settings, profiles, todo, opts)
    done = len(set(marker.done) | set(replayed.ends))
    if opts.share:
        return Rebuilt(replayed, wiped, len(every), done, None)
    ends = rebuild_start.finish(store, settings, profiles)
    if ends is not None:
        done = len(every)
    # {}: a run replaying the last partitions at the same time finished it first
    return Rebuilt(replayed, wiped, len(every), done, ends or None)


def _replay(
    store: Store, settings: Settings, profiles: Profiles, todo: list[int], opts: Options
) -> Replayed:
    """This run's partitions, each from where the state is, in this process or spread."""
    if not todo:
        return Replayed({})
    if opts.processes > 1 and len(todo) > 1:
        started = time.perf_counter()
        done = spread(todo, opts.processes, batch=opts.batch, progress_s=opts.progress_s)
        done.seconds = time.perf_counter() - started
        return done
    return replay_partitions(
        store,
        settings,
        profiles,
        resume_points(store, settings.orders_topic, todo),
        store.rebuild.done,
        batch=opts.batch,
        progress_s=opts.progress_s,
    )


def resume_points(store: Store, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """Where each partition resumes: the offset every shard's state vouches for; 0 (its
    start) when some shard holds no record of it."""
    fields = {p: keys.applied_field(topic, p) for p in partitions}
    vouched = store.applied.read(list(fields.values()))
    starts: dict[int, int] = {}
    for p, name in fields.items():
        offset, shards = vouched[name]
        starts[p] = offset if offset is not None and shards == keys.SHARDS else 0
    return starts


def topic_partitions(admin: clients.AdminClient, topic: str) -> list[int]:
    meta = admin.list_topics(topic, timeout=clients.METADATA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise RfmError(f"cannot read the partitions of {topic} (RFM_ORDERS_TOPIC)")
    return sorted(meta.partitions)


def _owned(asked: frozenset[int] | None, every: list[int], topic: str) -> set[int]:
    if asked is None:
        return set(every)
    unknown = asked - set(every)
    if unknown:
        raise UsageError(f"--partitions {span(unknown)}: {topic} has partitions {span(every)} only")
    return set(asked)
