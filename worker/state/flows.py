"""Segment flows: how many customers moved from which segment to which, per time bucket, and
each segment's size over time derived from them. What the commit path writes
(`flow_writes`, in the commit.lua call of the customer: worker/state/commit_plan.py) and the read
side of it.

The layout (NN = the customer's shard, as in every key of its commit call; the keys are
spelled in worker/state/keys.py):

    rfm:{NN}:flows:<tenant>:<span>:<start>   hash    "<from>\t<to>" -> customers
    rfm:flows:since                          string  epoch ms from which moves are recorded

`span` is `5m` or `1h`, `start` the bucket's first instant (epoch ms, a multiple of the
span) on the scoring clock: the `as_of` of the changes (the wall clock, or the event clock
with RFM_CLOCK=event). `from`/`to` are segment names, empty for none (a first order / no
counted order left); names cannot contain a tab.

What the writer does (`flow_writes` spells it):
- In the commit.lua call that commits a customer, for each of its `rfm.changed` changes
  whose segment differs (None counts as a segment here), for each span: HINCRBY key field 1
  and PEXPIRE key TTL_MS[span]. Being in the call that writes the state, the counts are
  exact and idempotent like the segment counters: a retried or replayed commit finds its
  events applied and emits no change, hence no flow; a Redis that lost writes lost the
  flows with the states, and the replay counts them again once.
- At start, before its first commit, the worker does SET rfm:flows:since <scoring now> NX
  (`start_recording`).

Why buckets of moves rather than snapshots of the sizes: the size of a segment at an instant
t is its size now (the counters, `rfm:{NN}:counts`) minus what flowed in since t plus what
flowed out, so no periodic writer is needed. It is exact for every t since `rfm:flows:since`;
before that the moves were not recorded, so no size is given for those instants.

Reading fans out over the 64 shards (a commit call writes one shard's keys, one hash slot on
Redis Cluster): per shard, the counters and the buckets of the windows below. On a single
Redis each group of shards is read in one MULTI, so the counters and the moves of a shard
are of the same instant and the derived sizes are exact; on Redis Cluster the reads are not
transactional and a commit between them may shift a size by its few customers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from worker.state import keys

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
SPANS: dict[str, int] = {"5m": 5 * MINUTE_MS, "1h": HOUR_MS}
# A bucket must outlive the widest window that reads it (an hour of 5m buckets, a day of
# 1h buckets, plus a bucket either side); the margins allow for a lagging event clock.
TTL_MS: dict[str, int] = {"5m": 3 * HOUR_MS, "1h": 48 * HOUR_MS}
RECORDED_SINCE = keys.FLOWS_SINCE
# The windows the API reports: (name, the span of the buckets it sums, its length).
WINDOWS: tuple[tuple[str, str, int], ...] = (("hour", "5m", HOUR_MS), ("day", "1h", DAY_MS))
SIZES_SPAN = "1h"  # sizes over time: one point per hour of the day window
SHARDS_PER_READ = 8  # shards read per round trip (and per MULTI on a single Redis)

Move = tuple[str | None, str | None]  # (from segment, to segment); None: no segment


def bucket(span: str, at_ms: int) -> int:
    """The first instant of the `span` bucket holding `at_ms`."""
    return at_ms - at_ms % SPANS[span]


def flow_key(shard: int, tenant: str, span: str, at_ms: int) -> bytes:
    """The hash counting one tenant's moves in the `span` bucket holding `at_ms`."""
    return keys.flows(shard, tenant, span, bucket(span, at_ms))


def flow_field(from_segment: str | None, to_segment: str | None) -> str:
    return f"{from_segment or ''}\t{to_segment or ''}"


def split_field(raw: bytes) -> Move:
    before, _, after = raw.decode().partition("\t")
    return before or None, after or None


class FlowWrite(NamedTuple):
    """One increment the commit path makes for a move: HINCRBY key field 1, PEXPIRE key ttl."""

    key: bytes
    field: str
    ttl_ms: int


def flow_writes(
    shard: int, tenant: str, at_ms: int, from_segment: str | None, to_segment: str | None
) -> list[FlowWrite]:
    """What one move costs the commit call that commits it: one counter per span. Nothing
    when the segment did not change (a score move within a segment is not a flow)."""
    if from_segment == to_segment:
        return []
    name = flow_field(from_segment, to_segment)
    return [FlowWrite(flow_key(shard, tenant, span, at_ms), name, TTL_MS[span]) for span in SPANS]


@dataclass(slots=True)
class Snapshot:
    """One tenant's counters and recorded moves around `as_of_ms`."""

    as_of_ms: int
    recorded_since: int | None  # None: this deployment records no flows
    sizes: Counter[str] = field(default_factory=Counter)  # customers per segment now
    # span -> bucket start -> moves in that bucket
    moves: dict[str, dict[int, Counter[Move]]] = field(default_factory=dict)

    def window(self, name: str) -> tuple[int, Counter[Move]]:
        """(since, moves) of a window of WINDOWS: the moves of the buckets from the one
        holding as_of - length on (a window is its length to a bucket longer)."""
        span, length = _window(name)
        since = bucket(span, self.as_of_ms - length)
        total: Counter[Move] = Counter()
        for start, moves in self.moves.get(span, {}).items():
            if start >= since:
                total.update(moves)
        return since, total

    def sizes_over_time(self) -> tuple[list[int], dict[str, list[int]]]:
        """Each segment's size at every hour of the day window at or after recorded_since,
        then now: (instants, segment -> sizes). The size at t is the size now minus the net
        moves of the buckets from t on (those are the moves with as_of >= t)."""
        span, length = _window("day")
        first = bucket(span, self.as_of_ms - length)
        instants = [
            t
            for t in range(first, bucket(span, self.as_of_ms) + 1, SPANS[span])
            if self.recorded_since is not None and t >= self.recorded_since
        ]
        net: dict[int, Counter[str]] = {}
        for start, moves in self.moves.get(span, {}).items():
            delta = net.setdefault(start, Counter())
            for (before, after), n in moves.items():
                if before is not None:
                    delta[before] -= n
                if after is not None:
                    delta[after] += n
        names = set(self.sizes) | {s for d in net.values() for s in d}
        series: dict[str, list[int]] = {name: [] for name in sorted(names)}
        for t in instants:
            since_t: Counter[str] = Counter()
            for start, delta in net.items():
                if start >= t:
                    since_t.update(delta)
            for name in series:
                series[name].append(self.sizes[name] - since_t[name])
        for name in series:
            series[name].append(self.sizes[name])
        return [*instants, self.as_of_ms], series


def _window(name: str) -> tuple[str, int]:
    for window, span, length in WINDOWS:
        if window == name:
            return span, length
    raise KeyError(name)


def _buckets(as_of_ms: int) -> Iterator[tuple[str, int]]:
    """(span, start) of every bucket a Snapshot needs: each window's, and the bucket after
    as_of's (a worker whose clock is slightly ahead may have committed moves there)."""
    for _name, span, length in WINDOWS:
        step = SPANS[span]
        last = bucket(span, as_of_ms) + step
        for start in range(bucket(span, as_of_ms - length), last + 1, step):
            yield span, start


class Flows:
    """The flows as stored: written by the commits (commit_plan.py), read here."""

    def __init__(self, client: Any, *, cluster: bool) -> None:
        self._client, self._cluster = client, cluster

    def start_recording(self, now_ms: int) -> None:
        """At a worker's start, before its first commit: flows are recorded from now on,
        unless an earlier worker said so already (sizes before that instant are not
        derivable)."""
        self._client.set(RECORDED_SINCE, now_ms, nx=True)

    def read(self, tenant: str, as_of_ms: int) -> Snapshot:
        return read(self._client, tenant, as_of_ms, cluster=self._cluster)


def read(client: Any, tenant: str, as_of_ms: int, *, cluster: bool) -> Snapshot:
    """The tenant's counters and recorded moves around as_of, over every shard. Read only."""
    raw = client.get(RECORDED_SINCE)
    snapshot = Snapshot(as_of_ms, int(raw) if raw else None)
    wanted = list(_buckets(as_of_ms))
    prefix = f"{tenant}\t"
    for first in range(0, keys.SHARDS, SHARDS_PER_READ):
        shards = range(first, min(first + SHARDS_PER_READ, keys.SHARDS))
        # One MULTI per group on a single Redis: a shard's counters and moves of one instant.
        pipe = client.pipeline(transaction=not cluster)
        for shard in shards:
            pipe.hgetall(keys.counts(shard))
            for span, start in wanted:
                pipe.hgetall(flow_key(shard, tenant, span, start))
        replies = iter(pipe.execute())
        for _shard in shards:
            for raw_field, count in next(replies).items():
                text = raw_field.decode()
                if text.startswith(prefix):  # "<tenant>\t<rfm>\t<segment>"
                    snapshot.sizes[text.rsplit("\t", 1)[1]] += int(count)
            for span, start in wanted:
                cells = next(replies)
                if cells:
                    moves = snapshot.moves.setdefault(span, {}).setdefault(start, Counter())
                    for raw_field, count in cells.items():
                        moves[split_field(raw_field)] += int(count)
    return snapshot
