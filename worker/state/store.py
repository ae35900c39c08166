"""The state in Redis and its one write path.

The key layout is described once, in worker/state/keys.py (and in worker/state/lua/commit.lua).
`Store` is the write path; the other jobs on the same connection are its parts, each in its
own module: applied offsets (applied.py), the due index and the marking record
(due_index.py), the event clock (clock.py), the outbox (outbox.py), the read side
(reads.py), quantile cut points (cut_points.py), churn-model fits (churn_fits.py) and
the server itself (admin.py).

Every write goes through `commit`, whatever its cause (worker/services/causes.py: order
events, a decay sweep, a changed profile's marking): read the touched customers, run the
cause's pure per-customer function, then commit them with compare-and-set script calls
that also move the customers in the due index, append their changes to the outbox and
adjust the segment counters. A call covers one shard on Redis Cluster (one hash slot) and
several on a single Redis. Shards whose customers changed meanwhile (a sweep and the
consumer at once, a second worker during a rebalance) are simply read and computed again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hiredis
import orjson
import redis

from worker import jsonbytes
from worker.errors import StateError, StateLostError
from worker.pacing import SLOTS_MOVING
from worker.rules.customer import LONG_HISTORY, Customer, Outcome, Published
from worker.rules.engine import Change, Result
from worker.rules.events import ValidEvent
from worker.state import flows, keys
from worker.state.admin import Server
from worker.state.applied import AppliedOffsets
from worker.state.churn_fits import ChurnFits
from worker.state.clock import EventClock
from worker.state.cut_points import CutPoints
from worker.state.due_index import DueIndex, MarkingRecord
from worker.state.members import Members
from worker.state.outbox import Outbox
from worker.state.reads import Reads
from worker.state.scripts import script

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
CALL_CUSTOMERS = 64  # customers per commit call (single Redis) and per write to Redis
# Decoded customers kept in memory between batches (see _Known): long histories only
# (below, decoding costs less than the memory and the cycle collector's passes over
# them), KNOWN_ORDERS orders in all (~500 bytes each with their blob: ~50 MB).
KNOWN_ORDERS = 100_000
T = TypeVar("T")
# What `commit` takes: per shard, per customer key, (tenant, customer_id, the cause's item).
Work = Mapping[int, Mapping[bytes, tuple[str, str, T]]]
Decide = Callable[[Customer, T], Result]


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Committed:
    """A change durably in an outbox stream, ready to publish."""

    outbox: bytes  # stream key
    entry_id: bytes
    key: bytes  # customer id, the Kafka key
    value: bytes  # the rfm.changed or rfm.overdue record
    change: Change


@dataclass(slots=True)
class BatchResult:
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    committed: list[Committed] = field(default_factory=list)
    conflicts: int = 0
    customers: int = 0  # customers committed (state or due index written)
    # Items whose decision raised (a bug, or a state the code cannot handle): left out of
    # the commit, so one bad customer never blocks the rest of the batch.
    failed: list[tuple[bytes, Any, Exception]] = field(default_factory=list)  # key, item
    rejected: list[tuple[ValidEvent, int, Exception]] = field(default_factory=list)
    folded: list[tuple[str, str, int]] = field(default_factory=list)  # tenant, id, orders

    def add(self, other: BatchResult) -> None:
        self.outcomes.update(other.outcomes)
        self.committed += other.committed
        self.conflicts += other.conflicts
        self.customers += other.customers
        self.rejected += other.rejected
        self.folded += other.folded


@dataclass(slots=True)
class SweepStep:
    result: BatchResult
    read: int  # due entries read
    exhausted: set[tuple[int, int]]  # (shard, partition) due zsets with nothing more due


@dataclass(slots=True)
class _Plan:
    """What the per-customer function decided for the shards of one commit call; `call`
    (KEYS, ARGV of commit.lua) when there is anything to write."""

    changes: list[tuple[bytes, bytes, bytes, Change]] = field(default_factory=list)  # (outbox,
    # the customer id as the Kafka key, the serialised record, the change)
    applied: int = 0
    duplicates: int = 0
    customers: int = 0
    failed: list[tuple[bytes, Any, Exception]] = field(default_factory=list)
    call: tuple[list[bytes], list[bytes]] | None = None
    vouched: set[int] = field(default_factory=set)  # partitions whose floors it checks
    folded: list[tuple[str, str, int]] = field(default_factory=list)


class _Known:
    """Customers with long histories this process last decided, each with the exact state
    blob it encodes to, least recently used first.

    A customer read back as the same bytes is taken from here instead of decoded: decoding
    costs O(orders), comparing the bytes is a memcmp. An entry never goes stale: the blob
    is the customer's own encoding, so any other writer's state differs from it and is
    decoded. An entry is taken out while its customer is decided (a decision that raises
    may leave it half-changed) and put back with its new blob."""

    def __init__(self, budget: int = KNOWN_ORDERS, min_orders: int = LONG_HISTORY) -> None:
        self._entries: OrderedDict[bytes, tuple[bytes, Customer]] = OrderedDict()
        self._orders = 0
        self._budget, self._min_orders = budget, min_orders

    def take(self, key: bytes, blob: bytes | None) -> Customer | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._orders -= len(entry[1].orders)
        return entry[1] if entry[0] == blob else None

    def put(self, key: bytes, blob: bytes, customer: Customer) -> None:
        size = len(customer.orders)
        if not self._min_orders <= size <= self._budget:
            return  # the common case, a short history: nothing else to do
        self.take(key, None)  # a customer is kept once
        self._entries[key] = (blob, customer)
        self._orders += size
        while self._orders > self._budget:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._orders -= len(evicted.orders)


class _Args:
    """KEYS and ARGV of one commit.lua call, referenced by 1-based index from its plan."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self._key_index: dict[bytes, int] = {}
        self.argv: list[bytes] = [b""]  # ARGV[1]: the plan itself, set last

    def key(self, key: bytes) -> int:
        index = self._key_index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._key_index[key] = len(self.keys)
        return index

    def arg(self, value: bytes) -> int:
        self.argv.append(value)
        return len(self.argv)


class Store:
    def __init__(self, client: redis.Redis | redis.RedisCluster) -> None:
        # redis-py's annotations are a union of sync/async/str/bytes results: too loose to
        # help here, so the client is used untyped behind this small, tested surface.
        self.redis: Any = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self._commit = client.register_script(script("commit.lua"))
        self._known = _Known()
        # The other jobs on the same connection, each in its own module.
        self.applied = AppliedOffsets(client)  # its floors guard every commit too
        self.due = DueIndex(client)
        self.marking = MarkingRecord(client)
        self.clock = EventClock(client)
        self.outbox = Outbox(client)
        self.reads = Reads(client)
        self.cut_points = CutPoints(client)
        self.churn_fits = ChurnFits(client)
        self.server = Server(client)
        self.members = Members(client)

    # -- the one write path -----------------------------------------------------------------

    def commit(self, work: Work[T], decide: Decide[T]) -> BatchResult:
        """Read the customers of `work`, decide each with a pure function, commit them
        (compare-and-set, due index, outbox, counters); the shards of a call that met a
        change made meanwhile are read and decided again.

        On Redis Cluster the shards are grouped by the node that owns their slot, one
        connection per node (a cluster pipeline refuses MGET and scripts); a shard whose slot
        moved (MOVED, ASK, TRYAGAIN during a resharding or failover) is retried once the
        slot map is refreshed. Its commit did not run, so nothing is applied twice.
        """
        try:
            return self._commit_all(work, decide)
        except (redis.ConnectionError, redis.TimeoutError):
            # A master down (failover): the worker retries the call (idempotent); the slot
            # map must show the promoted replica by then.
            if self.cluster:
                with contextlib.suppress(redis.RedisError):
                    self.redis.nodes_manager.initialize()
            raise

    def _commit_all(self, work: Work[T], decide: Decide[T]) -> BatchResult:
        result = BatchResult()
        pending = sorted(shard for shard, slot in work.items() if slot)
        pauses = SLOTS_MOVING.pauses()
        for _attempt in range(MAX_ATTEMPTS):
            if not pending:
                return result
            retry: list[int] = []
            moved = 0
            for shards, client in self._by_node(pending):
                read = []
                for shard, blobs in zip(
                    shards, self._read_shards(client, shards, work), strict=True
                ):
                    if _redirected(blobs):
                        moved += 1
                        retry.append(shard)
                    else:
                        read.append((shard, blobs))
                loaded = False
                for shards_of_call, plan, reply in self._plan_and_send(client, read, work, decide):
                    if isinstance(reply, redis.exceptions.NoScriptError):
                        if not loaded:  # a new or restarted node: the call did not run
                            client.script_load(self._commit.script)
                            loaded = True
                        retry += shards_of_call
                    elif _redirected(reply):
                        moved += 1
                        retry += shards_of_call
                    elif reply[0] == 0:
                        result.conflicts += 1
                        retry += shards_of_call
                    elif reply[0] == 2:
                        raise StateLostError(
                            f"shards {shards_of_call} hold less than they vouched for "
                            f"(partitions {sorted(plan.vouched)}): Redis lost writes"
                        )
                    else:
                        self._accept(result, plan, reply[1:])
            if moved:
                self._refresh_slots(next(pauses))
            pending = sorted(retry)
        if pending and moved:  # slots still moving: transient, the worker waits and retries
            raise redis.exceptions.TryAgainError(f"shards {pending}: their slots kept moving")
        raise StateError(f"shards {pending} kept changing under us for {MAX_ATTEMPTS} attempts")

    def _read_shards(self, client: Any, shards: list[int], work: Work[T]) -> list[Any]:
        """The stored blobs of each shard's customers (or the error its read met): one MGET
        per shard on Redis Cluster (one slot per command), one for them all otherwise."""
        if not self.cluster:
            wanted = [list(work[shard]) for shard in shards]
            blobs = iter(client.mget([key for keys_ in wanted for key in keys_]))
            return [[next(blobs) for _ in keys_] for keys_ in wanted]
        pipe = client.pipeline(transaction=False)
        for shard in shards:
            pipe.mget(list(work[shard]))
        return list(pipe.execute(raise_on_error=False))

    def _plan_and_send(
        self,
        client: Any,
        read: list[tuple[int, list[bytes | None]]],
        work: Work[T],
        decide: Decide[T],
    ) -> list[tuple[list[int], _Plan, Any]]:
        """Plan the shards into commit calls and send them on one connection as soon as
        they cover CALL_CUSTOMERS customers, so Redis runs the first scripts while Python
        plans the next ones; then read the replies in order. Returns (the shards of the
        call, its plan, its reply or the error it was) per call.

        A call commits one shard on Redis Cluster (a script's keys must share a slot); on a
        single Redis it commits as many shards as make CALL_CUSTOMERS customers, so a small
        batch, which touches most of the 64 shards, costs one script call, not 64."""
        out: list[tuple[list[int], _Plan, Any]] = []
        sent: list[tuple[list[int], _Plan]] = []
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            calls: list[tuple[Any, ...]] = []
            group: list[tuple[int, list[bytes | None]]] = []
            size = unsent = 0
            for i, (shard, blobs) in enumerate(read):
                group.append((shard, blobs))
                size += len(blobs)
                if not (self.cluster or size >= CALL_CUSTOMERS or i == len(read) - 1):
                    continue
                shards = [shard for shard, _ in group]
                plan = self._plan(group, work, decide)
                group, size = [], 0
                if plan.call is None:
                    out.append((shards, plan, [1]))  # nothing to write
                    continue
                call_keys, argv = plan.call
                calls.append(("EVALSHA", self._commit.sha, len(call_keys), *call_keys, *argv))
                sent.append((shards, plan))
                unsent += plan.customers
                if unsent >= CALL_CUSTOMERS:
                    conn.send_packed_command(_packed(calls))
                    calls, unsent = [], 0
            if calls:
                conn.send_packed_command(_packed(calls))
            for shards, plan in sent:
                try:
                    reply: Any = conn.read_response()
                except redis.ResponseError as exc:  # this call's error; the next replies follow
                    reply = exc
                out.append((shards, plan, reply))
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            pool.release(conn)
        return out

    @staticmethod
    def _accept(result: BatchResult, plan: _Plan, ids: list[bytes]) -> None:
        if plan.applied:
            result.outcomes["applied"] += plan.applied
        if plan.duplicates:
            result.outcomes["duplicate"] += plan.duplicates
        result.customers += plan.customers
        result.failed += plan.failed
        result.folded += plan.folded
        result.committed += [
            Committed(outbox, entry_id, key, value, change)
            for (outbox, key, value, change), entry_id in zip(plan.changes, ids, strict=True)
        ]

    def _by_node(self, shards: list[int]) -> list[tuple[list[int], Any]]:
        """The shards with the client to pipeline them on: one per node on a cluster."""
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

    def _plan(
        self,
        group: list[tuple[int, list[bytes | None]]],
        work: Work[T],
        decide: Decide[T],
    ) -> _Plan:
        """Decide every customer of the shards in `group` (shard, the blobs read for its
        customers); `plan.call` is their commit call, if there is anything to write.

        Built for every customer of every batch, so the KEYS and ARGV lists are appended to
        in place: a customer's own key is unique in the call and skips the index."""
        plan = _Plan()
        args = _Args()
        call_keys, argv, key_of = args.keys, args.argv, args.key
        customers: list[list[int | str]] = []
        changes: list[list[int]] = []
        deltas: dict[tuple[int, str], int] = {}  # (counts hash index, cell) -> delta
        vouched: list[list[int]] = []  # [applied hash, field, floor] per shard and partition
        expire: dict[int, int] = {}  # KEYS index of a flows hash -> its TTL (ms)
        known, floors = self._known, self.applied.floors
        for shard, blobs in group:
            counts = 0  # KEYS index of the shard's counts hash, once needed
            due_index: dict[int, int] = {}  # partition -> KEYS index of its due zset
            outbox_index: dict[int, tuple[bytes, int]] = {}  # partition -> (outbox, index)
            # (tenant, instant, from, to) -> the flows cells of that move (state/flows.py)
            moves: dict[tuple[str, int, str | None, str | None], list[tuple[int, str]]] = {}
            slot = work[shard]
            for (key, (tenant, customer_id, item)), blob in zip(slot.items(), blobs, strict=True):
                try:
                    res, was_in, before, state, values = _decide(
                        tenant, customer_id, blob, item, decide, known.take(key, blob)
                    )
                except Exception as exc:  # a bug costs this customer's item, never the batch
                    plan.failed.append((key, item, exc))
                    continue
                customer = res.customer
                encoded = blob if state is None else state
                if encoded:
                    known.put(key, encoded, customer)
                plan.applied += res.applied
                plan.duplicates += res.duplicates
                if res.folded:
                    plan.folded.append((tenant, customer_id, res.folded))
                if not res.touched:
                    continue
                partition = customer.partition or 0
                due_to = due_index.get(partition)
                if due_to is None:
                    due_to = due_index[partition] = key_of(keys.due(shard, partition))
                    floor = floors.get(partition)
                    if floor is not None and floor[1] >= 0:
                        applied = key_of(keys.applied(shard))
                        vouched.append([applied, args.arg(floor[0].encode()), floor[1]])
                        plan.vouched.add(partition)
                if was_in is None or was_in == partition:
                    due_from = due_to
                else:
                    due_from = key_of(keys.due(shard, was_in))
                call_keys.append(key)
                argv.append(blob or b"")
                if state is not None:
                    argv.append(state)
                customers.append(
                    [
                        len(call_keys),
                        len(argv) - (state is not None),
                        0 if state is None else len(argv),
                        due_from,
                        due_to,
                        "" if res.due is None else str(res.due),
                    ]
                )
                if not res.changes:
                    continue
                # The segment counters move once per customer: from its score before the
                # batch to its score after, whatever changes it went through in between.
                after = customer.published
                if before is not after:
                    counts = counts or key_of(keys.counts(shard))
                    if before is not None:
                        cell = (counts, keys.count_cell(tenant, before.rfm, before.segment))
                        deltas[cell] = deltas.get(cell, 0) - 1
                    if after is not None:
                        cell = (counts, keys.count_cell(tenant, after.rfm, after.segment))
                        deltas[cell] = deltas.get(cell, 0) + 1
                # The flows between segments (state/flows.py), counted like the counters.
                at = customer.scored_at or 0
                for change in res.changes:
                    if change.kind != "rfm.changed" or change.from_segment == change.to_segment:
                        continue
                    move = (tenant, at, change.from_segment, change.to_segment)
                    cells = moves.get(move)
                    if cells is None:
                        cells = moves[move] = []
                        for write in flows.flow_writes(shard, *move):
                            cells.append((key_of(write.key), write.field))
                            expire[cells[-1][0]] = write.ttl_ms
                    for cell in cells:
                        deltas[cell] = deltas.get(cell, 0) + 1
                outbox = outbox_index.get(partition)
                if outbox is None:
                    stream = keys.outbox(shard, partition)
                    outbox = outbox_index[partition] = (stream, key_of(stream))
                kafka_key = customer_id.encode()
                argv.append(kafka_key)
                k = len(argv)
                for change, payload in zip(res.changes, values, strict=True):
                    plan.changes.append((outbox[0], kafka_key, payload, change))
                    argv.append(payload)
                    changes.append([outbox[1], k, len(argv)])
        if not customers:
            return plan
        plan.customers = len(customers)
        counted = [[index, cell, delta] for (index, cell), delta in deltas.items() if delta]
        expiring = [[index, ttl] for index, ttl in expire.items()]
        argv[0] = orjson.dumps(
            {
                "customers": customers,
                "counts": counted,
                "changes": changes,
                "vouched": vouched,
                "expire": expiring,
            }
        )
        plan.call = (call_keys, argv)
        return plan


def _decide(
    tenant: str,
    customer_id: str,
    blob: bytes | None,
    item: T,
    decide: Decide[T],
    known: Customer | None = None,
) -> tuple[Result, int | None, Published | None, bytes | None, list[bytes]]:
    """Decode (unless `known` is the customer `blob` encodes), decide and serialise one
    customer: everything that can raise for it. Returns (result, the partition it was in,
    its published score before, the new state or None, change payloads)."""
    customer = known if known is not None else Customer.decode(tenant, customer_id, blob)
    was_in, before = customer.partition, customer.published
    res = decide(customer, item)
    state = customer.encode() if res.dirty else None
    return res, was_in, before, state, [jsonbytes.dumps(c.payload) for c in res.changes]


def _packed(calls: list[tuple[Any, ...]]) -> list[bytes]:
    """The calls in the Redis protocol, packed by hiredis directly: redis-py's own packer
    looks at every argument in Python first (for str commands and buffers), and a commit
    call carries a few hundred, all bytes, ints or str already."""
    return [hiredis.pack_command(call) for call in calls]


_MOVING = (
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def _redirected(reply: Any) -> bool:
    """Whether a pipelined reply says the slot is elsewhere now; other errors are raised."""
    if isinstance(reply, _MOVING):
        return True
    if isinstance(reply, Exception):
        raise reply
    return False
