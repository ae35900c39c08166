"""The commit path: read the customers of a batch, plan their commit.lua calls
(worker/state/commit_plan.py), send them, and read and decide again the shards a call
could not commit.

A call commits one shard on Redis Cluster (a script's keys must share a slot); on a single
Redis it commits as many shards as make CALL_CUSTOMERS customers, so a small batch, which
touches most of the 64 shards, costs one script call, not 64. Shards whose customers
changed meanwhile (a sweep and the consumer at once, a second worker during a rebalance)
are simply read and decided again, as are those whose slot moved on a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.errors import StateError, StateLostError
from worker.pacing import SLOTS_MOVING
from worker.state import keys
from worker.state.commit_plan import CallPlan, Decide, Floors, ShardRead, T, Work, plan_call
from worker.state.formats import StateFormats
from worker.state.known import KnownCustomers
from worker.state.results import BatchResult, Committed
from worker.state.script_calls import ScriptCalls, mget
from worker.state.scripts import script

MAX_ATTEMPTS = 20
CALL_CUSTOMERS = 64  # customers per commit call (single Redis) and per write to Redis
CONFLICT, COMMITTED, LOST = 0, 1, 2  # what a commit.lua reply starts with (see the script)

_MOVING = (
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


@dataclass(slots=True)
class _Attempt:
    """One pass over the pending shards: those to read and decide again, and how many
    met a slot that moved."""

    retry: list[int] = field(default_factory=list)
    moved: int = 0


class Committer:
    """Commits work for `Store.commit`; its floors and known customers are the store's."""

    def __init__(
        self, client: Any, floors: Floors, known: KnownCustomers, formats: StateFormats
    ) -> None:
        self.redis = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self._script = client.register_script(script("commit.lua"))
        self._floors, self._known, self._formats = floors, known, formats

    def commit(
        self,
        work: Work[T],
        decide: Decide[T],
        before_retry: Callable[[list[int]], None] | None = None,
    ) -> BatchResult:
        result = BatchResult()
        pending = sorted(shard for shard, slot in work.items() if slot)
        pauses = SLOTS_MOVING.pauses()
        attempts = moved = 0
        while pending and attempts < MAX_ATTEMPTS:
            if attempts and before_retry is not None:
                before_retry(pending)  # what `decide` reads besides the customers, again
            attempts += 1
            attempt = _Attempt()
            for shards, client in self._by_node(pending):
                self._commit_on(client, shards, work, decide, result, attempt)
            if attempt.moved:
                self._refresh_slots(next(pauses))
            pending, moved = sorted(attempt.retry), attempt.moved
        if not pending:
            return result
        if moved:  # slots still moving: transient, the worker waits and retries
            raise redis.exceptions.TryAgainError(f"shards {pending}: their slots kept moving")
        raise StateError(f"shards {pending} kept changing under us for {MAX_ATTEMPTS} attempts")

    def plan(self, group: list[ShardRead], work: Work[T], decide: Decide[T]) -> CallPlan:
        return plan_call(group, work, decide, self._known, self._floors, self._formats.writes)

    def _commit_on(
        self,
        client: Any,
        shards: list[int],
        work: Work[T],
        decide: Decide[T],
        result: BatchResult,
        attempt: _Attempt,
    ) -> None:
        """Read, decide and commit `shards` on one connection (one node on a cluster)."""
        read = self._read_shards(client, shards, work, attempt)
        loaded = False
        for shards_of_call, plan, reply in self._plan_and_send(client, read, work, decide):
            if isinstance(reply, redis.exceptions.NoScriptError):
                # A new or restarted node: the call did not run. The script is loaded (once
                # per node and attempt) and the shards committed again (see script_calls.py
                # for why redis-py's Script does not do this here).
                if not loaded:
                    client.script_load(self._script.script)
                    loaded = True
                attempt.retry += shards_of_call
            elif _redirected(reply):
                attempt.moved += 1
                attempt.retry += shards_of_call
            elif reply[0] == CONFLICT:
                result.conflicts += 1
                attempt.retry += shards_of_call
            elif reply[0] == LOST:
                raise StateLostError(
                    f"shards {shards_of_call} hold less than they vouched for "
                    f"(partitions {sorted(plan.vouched)}): Redis lost writes"
                )
            else:
                _accept(result, plan, reply[1:])

    def _read_shards(
        self, client: Any, shards: list[int], work: Work[T], attempt: _Attempt
    ) -> list[ShardRead]:
        """The stored blobs of each shard's customers: one MGET per shard on Redis Cluster
        (one slot per command), one for them all otherwise. A shard whose slot moved is
        left for the next attempt."""
        if not self.cluster:
            wanted = {shard: list(work[shard]) for shard in shards}
            blobs = iter(mget(client, [key for keys_ in wanted.values() for key in keys_]))
            return [(shard, [next(blobs) for _ in keys_]) for shard, keys_ in wanted.items()]
        pipe = client.pipeline(transaction=False)
        for shard in shards:
            pipe.mget(list(work[shard]))
        read: list[ShardRead] = []
        for shard, blobs in zip(shards, pipe.execute(raise_on_error=False), strict=True):
            if _redirected(blobs):
                attempt.moved += 1
                attempt.retry.append(shard)
            else:
                read.append((shard, blobs))
        return read

    def _plan_and_send(
        self, client: Any, read: list[ShardRead], work: Work[T], decide: Decide[T]
    ) -> list[tuple[list[int], CallPlan, Any]]:
        """Plan the shards into commit calls, sending each as soon as it is planned (see
        ScriptCalls), then read the replies in order. Returns (the shards of the call, its
        plan, its reply or the error it was) per call."""
        done: list[tuple[list[int], CallPlan, Any]] = []
        sent: list[tuple[list[int], CallPlan]] = []
        with ScriptCalls(client, self._script.sha, CALL_CUSTOMERS) as calls:
            for group in self._calls(read):
                shards = [shard for shard, _ in group]
                plan = self.plan(group, work, decide)
                if plan.call is None:
                    done.append((shards, plan, [1]))  # nothing to write
                else:
                    calls.send(*plan.call, customers=plan.customers)
                    sent.append((shards, plan))
            replies = calls.replies()
        return done + [(*call, reply) for call, reply in zip(sent, replies, strict=True)]

    def _calls(self, read: list[ShardRead]) -> list[list[ShardRead]]:
        """The shards read, grouped into commit calls: one shard per call on a cluster,
        else as many whole shards as make CALL_CUSTOMERS customers."""
        if self.cluster:
            return [[shard] for shard in read]
        calls: list[list[ShardRead]] = []
        group: list[ShardRead] = []
        size = 0
        for shard in read:
            group.append(shard)
            size += len(shard[1])
            if size >= CALL_CUSTOMERS:
                calls.append(group)
                group, size = [], 0
        if group:
            calls.append(group)
        return calls

    def _by_node(self, shards: list[int]) -> list[tuple[list[int], Any]]:
        """The shards with the client to send them on: one per node on a cluster."""
        if not self.cluster:
            return [(shards, self.redis)]
        groups: dict[str, tuple[list[int], Any]] = {}
        for shard in shards:
            node = self.redis.get_node_from_key(keys.counts(shard))
            group = groups.setdefault(node.name, ([], self.redis.get_redis_connection(node)))
            group[0].append(shard)
        return list(groups.values())

    def _refresh_slots(self, pause: float) -> None:
        if self.cluster:
            self.redis.nodes_manager.initialize()
        time.sleep(pause)


def _accept(result: BatchResult, plan: CallPlan, ids: list[bytes]) -> None:
    """A committed call's outcomes and changes (`ids`: their outbox entry ids)."""
    if plan.applied:
        result.outcomes["applied"] += plan.applied
    if plan.duplicates:
        result.outcomes["duplicate"] += plan.duplicates
    if plan.erased:
        result.outcomes["erased"] += plan.erased
    result.customers += plan.customers
    result.failed += plan.failed
    result.folded += plan.folded
    result.committed += [
        Committed(outbox, entry_id, key, value, change)
        for (outbox, key, value, change), entry_id in zip(plan.changes, ids, strict=True)
    ]


def _redirected(reply: Any) -> bool:
    """Whether a pipelined reply says the slot is elsewhere now; other errors are raised."""
    if isinstance(reply, _MOVING):
        return True
    if isinstance(reply, Exception):
        raise reply
    return False
