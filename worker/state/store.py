"""The state in Redis: one atomic commit path, the due index, reads for the read side.

The key layout is described once, in worker/state/keys.py (and in worker/state/lua/commit.lua).

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
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, TypeVar

import orjson
import redis

from worker.errors import StateError, StateLostError
from worker.rules.customer import LONG_HISTORY, Customer, Outcome, Published
from worker.rules.engine import Change, Result
from worker.rules.events import ValidEvent
from worker.rules.profiles import DEFAULT_TENANT, Profiles
from worker.rules.quantiles import Cuts
from worker.rules.scoring import days_between, windowed_orders
from worker.state import keys

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
CALL_CUSTOMERS = 64  # customers per commit call (single Redis) and per write to Redis
# Decoded customers kept in memory between batches (see _Known): long histories only
# (below, decoding costs less than the memory and the cycle collector's passes over
# them), KNOWN_ORDERS orders in all (~500 bytes each with their blob: ~50 MB).
KNOWN_ORDERS = 100_000
# Segment counter hashes read per round trip: a read of the counters holds this many
# shards' cells at once (one per tenant, rfm and segment), not all of them.
COUNTS_PER_READ = 8
T = TypeVar("T")
# What `commit` takes: per shard, per customer key, (tenant, customer_id, the cause's item).
Work = Mapping[int, Mapping[bytes, tuple[str, str, T]]]
Decide = Callable[[Customer, T], Result]


def _script(name: str) -> str:
    return files("worker.state").joinpath("lua", name).read_text(encoding="utf-8")


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
        self._commit = client.register_script(_script("commit.lua"))
        self._clock = client.register_script(_script("clock.lua"))
        self._applied = client.register_script(_script("applied.lua"))
        self._known = _Known()
        # Per orders-topic partition: ("<topic>:<partition>", the offset every shard's state
        # vouched for). A commit or a record of applied offsets on a shard holding less is
        # refused (StateLostError): Redis lost writes, the worker replays first.
        self.floors: dict[int, tuple[str, int]] = {}
        self._locks: dict[str, Any] = {}  # profile name -> the cut-point lock this store holds

    def customer_key_chunks(
        self, count: int = 500, pattern: bytes = keys.CUSTOMER_PATTERN
    ) -> Iterator[list[bytes]]:
        """Every customer key (matching `pattern`), in chunks (SCAN, every master of a
        cluster)."""
        chunk: list[bytes] = []
        for key in self.redis.scan_iter(match=pattern, count=count):
            chunk.append(key)
            if len(chunk) >= count:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def is_indexed(self, profiles: Profiles) -> bool:
        """Whether every customer was checked by `mark_due` with these profiles."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.INDEXED)
        pipe.hgetall(keys.PROFILES)
        indexed, stored = pipe.execute()
        return bool(indexed) and stored == _versions(profiles)

    def mark_indexed(self, profiles: Profiles) -> None:
        # Two keys in two hash slots (no transaction on a cluster): a crash in between
        # leaves is_indexed false, so the next start only runs the pass again.
        versions = _versions(profiles)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.PROFILES, mapping=versions)
        stale = set(self.redis.hkeys(keys.PROFILES)) - set(versions)
        if stale:
            pipe.hdel(keys.PROFILES, *stale)
        pipe.set(keys.INDEXED, b"1")
        pipe.execute()

    def profile_versions(self) -> dict[str, str]:
        """The profile versions the last completed pass applied (name -> version)."""
        return {_text(k): _text(v) for k, v in self.redis.hgetall(keys.PROFILES).items()}

    def postpone(self, due: Iterable[tuple[bytes, int]], at_ms: int) -> None:
        """Move these (customer key, partition) entries of the due index to `at_ms`, if
        they are still there."""
        pipe = self.redis.pipeline(transaction=False)
        for key, partition in due:
            pipe.zadd(keys.due(keys.split_customer(key)[0], partition), {key: at_ms}, xx=True)
        pipe.execute()

    def due_members(
        self, zsets: list[tuple[int, int]], as_of_ms: int, limit: int
    ) -> list[list[bytes]]:
        """Per (shard, partition) due zset, up to `limit` customer keys due at as_of."""
        pipe = self.redis.pipeline(transaction=False)
        for shard, partition in zsets:
            pipe.zrangebyscore(keys.due(shard, partition), b"-inf", as_of_ms, start=0, num=limit)
        return list(pipe.execute()) if zsets else []

    def due_backlog(self, zsets: Iterable[tuple[int, int]], as_of_ms: int) -> int:
        """Customers past their due instant in these (shard, partition) due zsets."""
        zsets = list(zsets)
        pipe = self.redis.pipeline(transaction=False)
        for shard, partition in zsets:
            pipe.zcount(keys.due(shard, partition), b"-inf", as_of_ms)
        return sum(pipe.execute()) if zsets else 0

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
        for attempt in range(MAX_ATTEMPTS):
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
                self._refresh_slots(attempt)
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
                    conn.send_packed_command(conn.pack_commands(calls))
                    calls, unsent = [], 0
            if calls:
                conn.send_packed_command(conn.pack_commands(calls))
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

    def _refresh_slots(self, attempt: int) -> None:
        if self.cluster:
            self.redis.nodes_manager.initialize()
        time.sleep(min(0.05 * (attempt + 1), 0.5))  # a migration moves keys in batches

    def _plan(
        self,
        group: list[tuple[int, list[bytes | None]]],
        work: Work[T],
        decide: Decide[T],
    ) -> _Plan:
        """Decide every customer of the shards in `group` (shard, the blobs read for its
        customers); `plan.call` is their commit call, if there is anything to write."""
        plan = _Plan()
        args = _Args()
        customers: list[list[int | str]] = []
        changes: list[list[int]] = []
        deltas: dict[tuple[int, str], int] = {}  # (counts hash index, cell) -> delta
        vouched: list[list[int]] = []  # [applied hash, field, floor] per shard and partition
        for shard, blobs in group:
            counts = 0  # KEYS index of the shard's counts hash, once needed
            due_index: dict[int, int] = {}  # partition -> KEYS index of its due zset
            outbox_index: dict[int, tuple[bytes, int]] = {}  # partition -> (outbox, index)
            slot = work[shard]
            for (key, (tenant, customer_id, item)), blob in zip(slot.items(), blobs, strict=True):
                try:
                    res, was_in, before, state, values = _decide(
                        tenant, customer_id, blob, item, decide, self._known.take(key, blob)
                    )
                except Exception as exc:  # a bug costs this customer's item, never the batch
                    plan.failed.append((key, item, exc))
                    continue
                encoded = blob if state is None else state
                if encoded:
                    self._known.put(key, encoded, res.customer)
                plan.applied += res.applied
                plan.duplicates += res.duplicates
                if res.folded:
                    plan.folded.append((tenant, customer_id, res.folded))
                if not res.touched:
                    continue
                partition = res.customer.partition or 0
                due_to = due_index.get(partition)
                if due_to is None:
                    due_to = due_index[partition] = args.key(keys.due(shard, partition))
                    floor = self.floors.get(partition)
                    if floor is not None and floor[1] >= 0:
                        applied = args.key(keys.applied(shard))
                        vouched.append([applied, args.arg(floor[0].encode()), floor[1]])
                        plan.vouched.add(partition)
                if was_in is None or was_in == partition:
                    due_from = due_to
                else:
                    due_from = args.key(keys.due(shard, was_in))
                customers.append(
                    [
                        args.key(key),
                        args.arg(blob or b""),
                        0 if state is None else args.arg(state),
                        due_from,
                        due_to,
                        "" if res.due is None else str(res.due),
                    ]
                )
                if not res.changes:
                    continue
                # The segment counters move once per customer: from its score before the
                # batch to its score after, whatever changes it went through in between.
                after = res.customer.published
                if before is not after:
                    counts = counts or args.key(keys.counts(shard))
                    if before is not None:
                        cell = (counts, keys.count_cell(tenant, before.rfm, before.segment))
                        deltas[cell] = deltas.get(cell, 0) - 1
                    if after is not None:
                        cell = (counts, keys.count_cell(tenant, after.rfm, after.segment))
                        deltas[cell] = deltas.get(cell, 0) + 1
                outbox = outbox_index.get(partition)
                if outbox is None:
                    stream = keys.outbox(shard, partition)
                    outbox = outbox_index[partition] = (stream, args.key(stream))
                kafka_key = customer_id.encode()
                k = args.arg(kafka_key)
                for change, payload in zip(res.changes, values, strict=True):
                    plan.changes.append((outbox[0], kafka_key, payload, change))
                    changes.append([outbox[1], k, args.arg(payload)])
        if not customers:
            return plan
        plan.customers = len(customers)
        counted = [[index, cell, delta] for (index, cell), delta in deltas.items() if delta]
        args.argv[0] = orjson.dumps(
            {"customers": customers, "counts": counted, "changes": changes, "vouched": vouched}
        )
        plan.call = (args.keys, args.argv)
        return plan

    # -- applied offsets: detecting a Redis that lost writes ---------------------------------

    def mark_applied(self, offsets: Mapping[int, tuple[str, int]]) -> None:
        """Record, in every shard, that the state holds each partition (partition ->
        ("<topic>:<partition>", next offset)) up to the given offset. Called once a batch is
        fully done (state committed, dead letters acknowledged). Each shard's record lives
        in the shard's hash slot, on the node of the state it vouches for, and is written
        after it: Redis replicates and persists each node's writes in order, so a record
        that survived a failover or a restart implies the state written before it did too.

        Compare-and-set (worker/state/lua/applied.lua): a shard holding less than it vouched for
        before (`floors`) is never written over; StateLostError says so instead."""
        if not offsets:
            return
        argv: list[str | int] = []
        for partition, (name, offset) in offsets.items():
            argv += [name, self.floors.get(partition, (name, -1))[1], offset]
        hashes = [keys.applied(shard) for shard in range(keys.SHARDS)]
        if self.cluster:  # a script's keys share one slot there: one call per shard
            lost = [h for h in hashes if self._applied(keys=[h], args=argv)]
        else:
            lost = [hashes[i - 1] for i in self._applied(keys=hashes, args=argv)]
        if lost:
            raise StateLostError(
                f"{len(lost)} shard(s) hold less than they vouched for (e.g. {lost[0]!r}): "
                "Redis lost writes"
            )
        for partition, (name, offset) in offsets.items():
            self.floors[partition] = (name, offset)

    def applied_offsets(self, fields: Sequence[str]) -> dict[str, tuple[int | None, int]]:
        """Per field: (the lowest offset recorded over the shards, how many shards hold a
        record). Fewer than all shards means some shard lost its data."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(keys.SHARDS):
            pipe.hmget(keys.applied(shard), list(fields))
        rows = pipe.execute() if fields else []
        out: dict[str, tuple[int | None, int]] = {}
        for i, name in enumerate(fields):
            seen = [int(row[i]) for row in rows if row[i] is not None]
            out[name] = (min(seen) if seen else None, len(seen))
        return out

    def holds_customers(self) -> bool:
        """Whether Redis holds any customer at all (a rare check: it may SCAN)."""
        return next(self.customer_key_chunks(count=1000), None) is not None

    def wipe(self) -> int:
        """Delete every rfm-worker key (`rebuild` only); returns how many."""
        return self._unlink(keys.ALL_PATTERN)

    def drop_outboxes(self) -> int:
        return self._unlink(keys.OUTBOX_PATTERN)

    def _unlink(self, pattern: bytes) -> int:
        deleted = 0
        batch: list[bytes] = []
        for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(self.redis.unlink(*batch))
                batch = []
        return deleted + (int(self.redis.unlink(*batch)) if batch else 0)

    # -- event clock ----------------------------------------------------------------------

    def advance_clock(self, candidate_ms: int) -> int:
        return int(self._clock(keys=[keys.CLOCK], args=[candidate_ms]))

    def read_clock(self) -> int | None:
        raw = self.redis.get(keys.CLOCK)
        return int(raw) if raw else None

    # -- outbox ---------------------------------------------------------------------------

    def outbox_entries(
        self, partition: int, count: int = 1000
    ) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
        """(stream, entry id, key, value) of every change waiting in a partition's outboxes."""
        for shard in range(keys.SHARDS):
            stream = keys.outbox(shard, partition)
            start = b"-"
            while True:
                entries = self.redis.xrange(stream, min=start, count=count)
                for entry_id, fields in entries:
                    yield stream, entry_id, fields[b"k"], fields[b"v"]
                if len(entries) < count:
                    break
                start = b"(" + entries[-1][0]

    def delete_outbox(self, done: dict[bytes, list[bytes]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in done.items():
            pipe.xdel(stream, *ids)
        pipe.execute()

    def outbox_backlog(self) -> int:
        total = 0
        for key in self.redis.scan_iter(match=keys.OUTBOX_PATTERN, count=1000):
            total += int(self.redis.xlen(key))
        return total

    # -- read side ------------------------------------------------------------------------

    def get_customer(self, tenant: str, customer_id: str) -> Customer | None:
        blob = self.redis.get(keys.customer(tenant, customer_id))
        return Customer.decode(tenant, customer_id, blob) if blob else None

    def scan_customers(self, tenant: str | None = None, chunk: int = 500) -> Iterator[Customer]:
        """Every stored customer (of one tenant), read in chunks: for export, not hot paths."""
        for found in self.customer_key_chunks(chunk, keys.customer_pattern(tenant)):
            yield from self._read_customers(found, lambda owner: tenant in (None, owner))

    def _read_customers(self, found: list[bytes], want: Callable[[str], bool]) -> list[Customer]:
        """The customers of `found` whose tenant `want` accepts (checked before reading).
        The tenant of a key is checked, not trusted to the glob: a pattern can also match
        an id that contains "}:c:<tenant>:"."""
        kept: list[tuple[bytes, str, str]] = []
        for key in found:
            _shard, tenant, customer_id = keys.split_customer(key)
            if want(tenant):
                kept.append((key, tenant, customer_id))
        pipe = self.redis.pipeline(transaction=False)  # GETs, not MGET: keys span slots
        for key, _tenant, _customer_id in kept:
            pipe.get(key)
        return [
            Customer.decode(tenant, customer_id, blob)
            for (_key, tenant, customer_id), blob in zip(
                kept, pipe.execute() if kept else [], strict=True
            )
            if blob
        ]

    def score_counts(
        self, label: Callable[[str], str | None] | None = None
    ) -> Counter[tuple[str, str, str]]:
        """Customers per (tenant, rfm, segment) of their published score, over all shards.

        With `label`, each tenant is counted under label(tenant) instead (None: left out)
        as the counters are read, COUNTS_PER_READ shards at a time: what the read holds
        then follows the label values, not the tenants (one cell per tenant)."""
        totals: Counter[tuple[str, str, str]] = Counter()
        for first in range(0, keys.SHARDS, COUNTS_PER_READ):
            pipe = self.redis.pipeline(transaction=False)
            for shard in range(first, min(first + COUNTS_PER_READ, keys.SHARDS)):
                pipe.hgetall(keys.counts(shard))
            for cells in pipe.execute():
                for fld, count in cells.items():
                    tenant, rfm, segment = fld.decode().split("\t")
                    name = tenant if label is None else label(tenant)
                    if name is not None:
                        totals[(name, rfm, segment)] += int(count)
        return totals

    def segment_counts(
        self, label: Callable[[str], str | None] | None = None
    ) -> Counter[tuple[str, str]]:
        """Customers per (tenant, segment); `label` as in score_counts."""
        totals: Counter[tuple[str, str]] = Counter()
        for (tenant, _rfm, segment), count in self.score_counts(label).items():
            totals[(tenant, segment)] += count
        return totals

    def server_config(self, *names: str) -> dict[str, str | None]:
        """CONFIG GET of some server settings; None where the server does not tell (managed
        services often disable CONFIG)."""
        out: dict[str, str | None] = dict.fromkeys(names)
        try:
            for name in names:
                for key, value in self.redis.config_get(name).items():
                    out[_text(key)] = _text(value)
        except redis.ResponseError:
            pass
        return out

    def in_cluster_mode(self) -> bool:
        """Whether the server says it is a Redis Cluster node (False if it does not say)."""
        try:
            return bool(self.redis.info("cluster").get("cluster_enabled"))
        except redis.ResponseError:  # INFO disabled (some managed services)
            return False

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # -- quantile cut points (worker/rules/quantiles.py) ------------------------------------

    def read_cuts(self) -> dict[str, Cuts]:
        """The current cut points of every quantile profile that has some (name -> Cuts)."""
        return {
            _text(name): Cuts.from_json(raw)
            for name, raw in self.redis.hgetall(keys.QUANTILES).items()
        }

    def write_cuts(self, name: str, cuts: Cuts) -> None:
        self.redis.hset(keys.QUANTILES, name, cuts.to_json())

    def try_lock(self, name: str, ttl_ms: int) -> bool:
        """Take the lock for computing profile `name`'s cut points (redis-py's Lock: SET NX
        PX with this store's own token), for `ttl_ms` unless renewed."""
        lock = self.redis.lock(keys.quantiles_lock(name), timeout=ttl_ms / 1000, thread_local=False)
        if not lock.acquire(blocking=False):
            return False
        self._locks[name] = lock
        return True

    def renew_lock(self, name: str, ttl_ms: int) -> bool:
        """Extend the lock to `ttl_ms` from now if this store still holds it; False if it
        was lost (expired, taken by another worker)."""
        lock = self._locks.get(name)
        if lock is None:
            return False
        try:
            lock.extend(ttl_ms / 1000, replace_ttl=True)
        except redis.exceptions.LockError:
            del self._locks[name]
            return False
        return True

    def unlock(self, name: str) -> None:
        """Release the lock if this store still holds it."""
        lock = self._locks.pop(name, None)
        if lock is not None:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def profile_population(self, name: str, profiles: Profiles) -> int:
        """Customers with a published score among the tenants scored by profile `name`
        (the segment counters): the population a sample is drawn from."""
        counts = self.score_counts(
            lambda tenant: name if profiles.for_tenant(tenant).name == name else None
        )
        return sum(counts.values())

    def quantile_values(
        self,
        name: str,
        profiles: Profiles,
        as_of_ms: int,
        *,
        sample: int,
        count: int = 500,
        rng: random.Random | None = None,
    ) -> Iterator[list[tuple[int, int, int]]]:
        """(days since the last order at as_of, orders as F counts them, net spend in money
        units) of the customers of the tenants scored by profile `name` that have a
        counted order, one list per SCAN chunk of `count` keys (a list may be empty).

        Sampled: each key is kept with probability min(1, sample / population), the
        population being the profile's customers in the segment counters; every customer
        is read when that is <= sample or unknown (0), so small bases are exact."""
        population = self.profile_population(name, profiles)
        keep = 1.0 if population <= sample else sample / population
        draw = (rng or random.Random()).random
        # A tenant's own profile is named after it; `default` scores every other tenant.
        pattern = keys.CUSTOMER_PATTERN if name == DEFAULT_TENANT else keys.customer_pattern(name)
        window = profiles.for_tenant(name).frequency_window_days

        def want(tenant: str) -> bool:
            return profiles.for_tenant(tenant).name == name and (keep >= 1.0 or draw() < keep)

        for found in self.customer_key_chunks(count, pattern):
            yield [
                (
                    days_between(agg.last_order_at, as_of_ms),
                    windowed_orders(agg, as_of_ms, window),
                    agg.monetary,
                )
                for customer in self._read_customers(found, want)
                if (agg := customer.aggregates()) is not None
            ]


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
    return res, was_in, before, state, [orjson.dumps(c.payload) for c in res.changes]


def _versions(profiles: Profiles) -> dict[bytes, bytes]:
    return {n.encode(): profiles.for_tenant(n).version.encode() for n in profiles.names()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
