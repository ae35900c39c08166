"""The state in Redis and its one write path.

The key layout is described once, in worker/state/keys.py (and in
worker/state/lua/commit.lua). `Store` is the write path; the other jobs on the same
connection are its parts, each in its own module: applied offsets (applied.py), the due
index and the marking record (due_index.py), the event clock (clock.py), the outbox
(outbox.py), the read side (reads.py), the segment index's pages (segment_pages.py),
quantile cut points (cut_points.py), churn-model fits (churn_fits.py), the flows between
segments (flows.py), the record of an unfinished rebuild (rebuild_marker.py) and the
server itself (admin.py).

Every write goes through `commit`, whatever its cause (worker/services/causes.py: order
events, a decay sweep, a changed profile's marking): read the touched customers, run the
cause's pure per-customer function, then commit them with compare-and-set script calls
that also move the customers in the due index and the segment index, append their
changes to the outbox and adjust the segment counters (worker/state/commit.py, planned
by commit_plan.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis

from worker.state.admin import Server
from worker.state.applied import AppliedOffsets
from worker.state.churn_fits import ChurnFits
from worker.state.clock import EventClock
from worker.state.commit import Committer
from worker.state.commit_plan import Decide, T, Work
from worker.state.cut_points import CutPoints
from worker.state.due_index import DueIndex, MarkingRecord
from worker.state.flows import Flows
from worker.state.formats import StateFormats
from worker.state.known import KnownCustomers
from worker.state.members import Members
from worker.state.outbox import Outbox
from worker.state.reads import Reads
from worker.state.rebuild_marker import RebuildMarker
from worker.state.results import BatchResult, Committed, SweepStep
from worker.state.segment_pages import SegmentPages
from worker.state.tombstones import Tombstones

__all__ = ["BatchResult", "Committed", "Decide", "Store", "SweepStep", "Work"]


class Store:
    def __init__(
        self, client: redis.Redis | redis.RedisCluster, state_format: int | None = None
    ) -> None:
        # redis-py's annotations are a union of sync/async/str/bytes results: too loose to
        # help here, so the client is used untyped behind this small, tested surface.
        self.redis: Any = client
        self.cluster = isinstance(client, redis.RedisCluster)
        # The other jobs on the same connection, each in its own module.
        self.applied = AppliedOffsets(client)  # its floors guard every commit too
        self.due = DueIndex(client)
        self.marking = MarkingRecord(client)
        self.clock = EventClock(client)
        self.outbox = Outbox(client)
        self.reads = Reads(client)
        self.segment_pages = SegmentPages(client)
        self.cut_points = CutPoints(client)
        self.churn_fits = ChurnFits(client)
        self.server = Server(client)
        self.members = Members(client)
        self.tombstones = Tombstones(client)
        self.rebuild = RebuildMarker(client)  # an unfinished `rfm-worker rebuild`
        self.flows = Flows(client, cluster=self.cluster)
        self.formats = StateFormats(client, state_format)  # what its commits write
        self._committer = Committer(client, self.applied.floors, KnownCustomers(), self.formats)

    def commit(
        self,
        work: Work[T],
        decide: Decide[T],
        before_retry: Callable[[list[int]], None] | None = None,
    ) -> BatchResult:
        """Read the customers of `work`, decide each with a pure function, commit them
        (compare-and-set, due index, outbox, counters); the shards of a call that met a
        change made meanwhile are read and decided again.

        On Redis Cluster the shards are grouped by the node that owns their slot, one
        connection per node (a cluster pipeline refuses MGET and scripts); a shard whose slot
        moved (MOVED, ASK, TRYAGAIN during a resharding or failover) is retried once the
        slot map is refreshed. Its commit did not run, so nothing is applied twice.
        `before_retry` is called with the shards about to be read and decided again, to read
        again what `decide` knows besides the customers (the erasure tombstones:
        worker/services/causes.py).
        """
        try:
            return self._committer.commit(work, decide, before_retry)
        except (redis.ConnectionError, redis.TimeoutError):
            # A master down (failover): the worker retries the call (idempotent); the slot
            # map must show the promoted replica by then.
            if self.cluster:
                with contextlib.suppress(redis.RedisError):
                    self.redis.nodes_manager.initialize()
            raise
