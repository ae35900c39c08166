"""One process's share of `rfm-worker rebuild`: some partitions of the orders topic, each
from where the state is up to its end, applied through the worker's commit path.

After every batch the applied offsets of its partitions are recorded in every shard
(store.applied.mark, as the worker does), so a replay killed anywhere resumes from what
the state vouches for; applying a batch twice is harmless (content idempotence). A
partition is done when the consumer reports its end (EOF, not a watermark asked for up
front: some Kafka-protocol brokers report those loosely); `on_done` records it, and its
later records are left to the workers. Nothing is published: the outboxes the commits
fill are dropped as the replay goes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker import collector
from worker.config import Settings
from worker.kafka import clients, replay
from worker.rules.events import ValidEvent, validate
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.rebuild_progress import Progress, span
from worker.state import keys
from worker.state.store import Store

BATCH = 2000  # records per consume() and commit, as the worker's batches


@dataclass(slots=True)
class Replayed:
    """What one process replayed."""

    ends: dict[int, int]  # partition -> its next offset
    events: int = 0  # applied
    rejected: int = 0  # invalid, skipped
    records: int = 0  # read
    seconds: float = 0.0
    remaining: set[int] = field(default_factory=set)


def replay_partitions(
    store: Store,
    settings: Settings,
    profiles: Profiles,
    starts: Mapping[int, int],
    on_done: Callable[[int, int], None],
    *,
    batch: int = BATCH,
    progress_s: float = 10.0,
) -> Replayed:
    """Replay each partition of `starts` from its offset (0: its first) to its end."""
    topic = settings.orders_topic
    consumer = clients.consumer(settings, {"enable.partition.eof": "true"})
    started = time.perf_counter()
    try:
        bounds = replay.watermarks(consumer, topic, starts)
        bounds = {p: (max(lo, 0), max(hi, lo, 0)) for p, (lo, hi) in bounds.items()}
        progress = Progress(f"{topic}[{span(starts)}]", bounds, progress_s)
        run = _Run(store, settings, profiles, Replayed(dict(starts), remaining=set(starts)))
        replay.assign_at(consumer, topic, starts)
        while run.done.remaining:
            read = run.batch(consumer.consume(batch, 1.0), on_done)
            progress.tick(run.done.ends, read)
        store.outbox.drop(starts)
        progress.finish(run.done.events)
    finally:
        consumer.close()
    run.done.seconds = time.perf_counter() - started
    return run.done


class _Run:
    def __init__(
        self, store: Store, settings: Settings, profiles: Profiles, done: Replayed
    ) -> None:
        self.store, self.settings, self.profiles, self.done = store, settings, profiles, done
        self.from_start = {p for p, at in done.ends.items() if at == 0}

    def batch(self, messages: list[Any], on_done: Callable[[int, int], None]) -> int:
        """Apply one consumed batch, record its offsets, and the partitions it ended;
        returns how many records it read."""
        with collector.paused():  # no retries here: a Redis error ends the run
            return self._batch(messages, on_done)

    def _batch(self, messages: list[Any], on_done: Callable[[int, int], None]) -> int:
        done = self.done
        valid: list[tuple[ValidEvent, int]] = []
        touched: set[int] = set()
        ended: list[int] = []
        read = 0
        now = wall_ms()
        for msg in messages:
            p = msg.partition()
            if p not in done.remaining or p in ended:  # done: the rest is the workers'
                continue
            if error := msg.error():
                if replay.at_partition_end(error):
                    ended.append(p)
                continue
            self._check_start(p, msg.offset())
            done.ends[p] = msg.offset() + 1
            touched.add(p)
            read += 1
            outcome = validate(msg.value(), self.profiles, now)
            if isinstance(outcome, ValidEvent):
                valid.append((outcome, p))
            else:
                done.rejected += 1
        self._apply(valid, now)
        marked = touched | set(ended)
        if marked:
            topic = self.settings.orders_topic
            self.store.applied.mark(
                {p: (keys.applied_field(topic, p), done.ends[p]) for p in marked}
            )
        if touched:
            self.store.outbox.drop(touched)
        for p in ended:
            on_done(p, done.ends[p])
            done.remaining.discard(p)
        done.records += read
        return read

    def _check_start(self, p: int, offset: int) -> None:
        """A partition replayed from its start whose first record is not offset 0 lost
        its first events to retention: said once."""
        if p in self.from_start:
            self.from_start.discard(p)
            if offset > 0:
                print(
                    f"warning: {self.settings.orders_topic}[{p}] starts at offset {offset}: "
                    "its first events are gone (retention), so the rebuilt state misses them",
                    file=sys.stderr,
                )

    def _apply(self, valid: list[tuple[ValidEvent, int]], now: int) -> None:
        if not valid:
            return
        as_of = now
        if self.settings.clock == "event":
            as_of = self.store.clock.advance(max(ev.occurred_at for ev, _ in valid))
        result = causes.apply_batch(
            self.store,
            valid,
            self.profiles,
            as_of_ms=as_of,
            now_ms=now,
            erasure_key=self.settings.erasure_secret,
        )
        self.done.events += len(valid) - len(result.rejected)
        self.done.rejected += len(result.rejected)
