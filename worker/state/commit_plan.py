"""Planning one commit.lua call: decide every customer of some shards with the cause's
pure function, then describe what to write as the script's KEYS, ARGV and plan.

The plan's format is documented in worker/state/lua/commit.lua: its entries refer to
KEYS and ARGV by 1-based index, which `ScriptArgs` hands out as values are added. This
runs for every customer of every batch, so the lists are appended to in place and each
shard's keys (due zsets, counters, outboxes, flows) are indexed once per call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from worker.errors import StateTooNewError
from worker.rules.customer import Customer, Published
from worker.rules.engine import Change, Result
from worker.rules.state_format import FIRST
from worker.state import flows, keys, segment_index
from worker.state.known import KnownCustomers

T = TypeVar("T")
# What a commit takes: per shard, per customer key, (tenant, customer_id, the cause's item).
Work = Mapping[int, Mapping[bytes, tuple[str, str, T]]]
Decide = Callable[[Customer, T], Result]
# Per orders-topic partition: ("<topic>:<partition>", the offset every shard vouched for).
Floors = Mapping[int, tuple[str, int]]
# A shard's blobs as read: one per customer of the shard, in the order of its work.
ShardRead = tuple[int, list[bytes | None]]
Cell = tuple[int, str]  # (KEYS index of a hash, field)


@dataclass(slots=True)
class CallPlan:
    """What the per-customer function decided for the shards of one commit call; `call`
    (KEYS, ARGV of commit.lua) when there is anything to write."""

    # (outbox stream, the customer id as the Kafka key, the serialised record, the change),
    # in the order the script appends them (its reply lists their entry ids in that order).
    changes: list[tuple[bytes, bytes, bytes, Change]] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    erased: int = 0  # events ignored: at or before their customer's erasure
    customers: int = 0
    failed: list[tuple[bytes, Any, Exception]] = field(default_factory=list)
    call: tuple[list[bytes], list[bytes]] | None = None
    vouched: set[int] = field(default_factory=set)  # partitions whose floors it checks
    folded: list[tuple[str, str, int]] = field(default_factory=list)


class ScriptArgs:
    """KEYS and ARGV of one commit.lua call, and the entries of the plan (ARGV[1]) that
    refer to them by 1-based index, each list flat (the script's header)."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self._key_index: dict[bytes, int] = {}
        self.argv: list[bytes] = [b""]  # ARGV[1]: the plan itself, set by `finish`
        self.customers: list[int | str] = []  # six values per customer
        self.changes: list[int] = []  # outbox, k, v
        self.vouched: list[int] = []  # applied hash, field, floor
        # Segment index set -> the members it loses (ZREM, after the ZADDs) / gains (ZADD
        # 0): each set's members go into ARGV together at `finish`, one run per set.
        self.unindex: defaultdict[int, list[bytes]] = defaultdict(list)
        self.index: defaultdict[int, list[bytes]] = defaultdict(list)
        self.erase: list[int] = []  # tombstones hash, digest, instant: kept the latest
        self.deltas: dict[Cell, int] = {}  # counts and flows cells -> delta
        self.expire: dict[int, int] = {}  # KEYS index of a flows hash -> its TTL (ms)
        self.count = 0  # customers

    def key(self, key: bytes) -> int:
        index = self._key_index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._key_index[key] = len(self.keys)
        return index

    def arg(self, value: bytes) -> int:
        self.argv.append(value)
        return len(self.argv)

    def customer(
        self, key: bytes, expected: bytes, new: bytes | None, due_from: int, due_to: int, due: str
    ) -> None:
        """A customer's entry: compare its key with `expected`, write `new` (None: leave
        the state as it is; b"": delete it), move it from the due zset `due_from` to
        `due_to` at `due`."""
        self.keys.append(key)  # a customer's own key: no other entry refers to it
        argv = self.argv
        argv.append(expected)
        at = len(argv)
        if new is not None:
            argv.append(new)
        self.customers += (len(self.keys), at, 0 if new is None else at + 1, due_from, due_to, due)
        self.count += 1

    def changes_of(self, outbox: int, kafka_key: bytes, payloads: list[bytes]) -> None:
        """A customer's changes, appended to the outbox stream `outbox` under its key."""
        argv = self.argv
        argv.append(kafka_key)
        key_arg = len(argv)
        for payload in payloads:
            argv.append(payload)
            self.changes += (outbox, key_arg, len(argv))

    def finish(self) -> tuple[list[bytes], list[bytes]]:
        """KEYS and ARGV, the plan serialised into ARGV[1]."""
        counts: list[int | str] = []
        for (index, f), delta in self.deltas.items():
            if delta:
                counts += (index, f, delta)
        expire: list[int] = []
        for index, ttl in self.expire.items():
            expire += (index, ttl)
        self.argv[0] = orjson.dumps(
            {
                "customers": self.customers,
                "counts": counts,
                "changes": self.changes,
                "vouched": self.vouched,
                "expire": expire,
                "unindex": self._runs(self.unindex),
                "index": self._runs(self.index),
                "erase": self.erase,
            }
        )
        return self.keys, self.argv

    def _runs(self, members: dict[int, list[bytes]]) -> list[int]:
        """Each set's members appended to ARGV: (set, first, count) per set."""
        argv = self.argv
        runs: list[int] = []
        for index, run in members.items():
            runs += (index, len(argv) + 1, len(run))
            argv += run
        return runs


class ShardKeys:
    """The KEYS indexes of one shard's shared keys in a call, each added when first needed.
    The first customer filed under a partition also makes the call check the shard's
    applied offset against that partition's floor (commit.lua, "vouched")."""

    __slots__ = (
        "_args",
        "_counts",
        "_dues",
        "_floors",
        "_indexes",
        "_moves",
        "_outboxes",
        "_shard",
        "_tombstones",
        "_values",
        "vouched",
    )

    def __init__(self, shard: int, args: ScriptArgs, floors: Floors) -> None:
        self._shard, self._args, self._floors = shard, args, floors
        self._counts = 0
        self._values = 0
        self._tombstones = 0
        self._dues: dict[int, int] = {}
        self._outboxes: dict[int, tuple[bytes, int]] = {}
        self._moves: dict[tuple[str, int, str | None, str | None], list[Cell]] = {}
        self._indexes: dict[tuple[str, str], int] = {}
        self.vouched: list[int] = []  # partitions whose floor the call checks on this shard

    def due(self, partition: int) -> int:
        """The due zset customers are filed in now (vouching for the partition once)."""
        index = self._dues.get(partition)
        if index is None:
            index = self._dues[partition] = self._args.key(keys.due(self._shard, partition))
            floor = self._floors.get(partition)
            if floor is not None and floor[1] >= 0:
                field_ = self._args.arg(floor[0].encode())
                applied = self._args.key(keys.applied(self._shard))
                self._args.vouched += (applied, field_, floor[1])
                self.vouched.append(partition)
        return index

    def due_left(self, partition: int) -> int:
        """The due zset of a partition a customer leaves (nothing vouched for it)."""
        return self._args.key(keys.due(self._shard, partition))

    def counts(self) -> int:
        if not self._counts:
            self._counts = self._args.key(keys.counts(self._shard))
        return self._counts

    def values(self) -> int:
        if not self._values:
            self._values = self._args.key(keys.values(self._shard))
        return self._values

    def tombstones(self) -> int:
        if not self._tombstones:
            self._tombstones = self._args.key(keys.erased(self._shard))
        return self._tombstones

    def outbox(self, partition: int) -> tuple[bytes, int]:
        """The partition's outbox stream and its KEYS index."""
        outbox = self._outboxes.get(partition)
        if outbox is None:
            stream = keys.outbox(self._shard, partition)
            outbox = self._outboxes[partition] = (stream, self._args.key(stream))
        return outbox

    def segment_index(self, tenant: str, ordering: str) -> int:
        """The KEYS index of a segment index set (worker/state/segment_index.py)."""
        at = (tenant, ordering)
        index = self._indexes.get(at)
        if index is None:
            key = keys.segment_index(self._shard, tenant, ordering)
            index = self._indexes[at] = self._args.key(key)
        return index

    def flow_cells(self, move: tuple[str, int, str | None, str | None]) -> list[Cell]:
        """The flows cells (worker/state/flows.py) a move (tenant, instant, from, to)
        counts in; their hashes are set to expire."""
        cells = self._moves.get(move)
        if cells is None:
            cells = self._moves[move] = []
            for write in flows.flow_writes(self._shard, *move):
                index = self._args.key(write.key)
                self._args.expire[index] = write.ttl_ms
                cells.append((index, write.field))
        return cells


@dataclass(slots=True)
class Decision:
    """One customer decided: everything that could raise for it is done."""

    result: Result
    was_in: int | None  # the partition it was filed under before
    before: Published | None  # its published score before
    indexed: segment_index.Entry | None  # its segment index entry before
    state: bytes | None  # its new state blob, None when unchanged, b"" when erased
    payloads: list[bytes]  # the serialised records of result.changes


def decide_one(
    tenant: str,
    customer_id: str,
    blob: bytes | None,
    item: T,
    decide: Decide[T],
    known: Customer | None = None,
    fmt: int = FIRST,
) -> Decision:
    """Decode (unless `known` is the customer `blob` encodes), decide and serialise one
    customer (in state format `fmt`)."""
    customer = known if known is not None else Customer.decode(tenant, customer_id, blob)
    was_in, before = customer.partition, customer.published
    indexed = segment_index.entry_of(customer)  # from the record as stored, never a read
    res = decide(customer, item)
    # (an erasure decides a fresh customer: res.customer is not always `customer`)
    state = b"" if res.removed else res.customer.encode(fmt) if res.dirty else None
    payloads = [c.record for c in res.changes]  # serialised as they were built
    return Decision(res, was_in, before, indexed, state, payloads)


def plan_call(
    group: list[ShardRead],
    work: Work[T],
    decide: Decide[T],
    known: KnownCustomers,
    floors: Floors,
    fmt: int = FIRST,
) -> CallPlan:
    """Decide every customer of the shards in `group`; `plan.call` is their commit call,
    if there is anything to write, their states in format `fmt`. A customer whose
    decision raises is left out (in `plan.failed`): a bug costs its item, never the batch;
    but a state written by a later release stops the process (StateTooNewError)."""
    plan = CallPlan()
    args = ScriptArgs()
    for shard, blobs in group:
        shard_keys = ShardKeys(shard, args, floors)
        slot = work[shard]
        for (key, (tenant, customer_id, item)), blob in zip(slot.items(), blobs, strict=True):
            try:
                decision = decide_one(
                    tenant, customer_id, blob, item, decide, known.take(key, blob), fmt
                )
            except StateTooNewError:
                raise
            except Exception as exc:
                plan.failed.append((key, item, exc))
                continue
            res = decision.result
            encoded = blob if decision.state is None else decision.state
            if encoded:
                known.put(key, encoded, res.customer)
            plan.applied += res.applied
            plan.duplicates += res.duplicates
            plan.erased += res.erased
            if res.folded:
                plan.folded.append((tenant, customer_id, res.folded))
            if res.touched:
                _write_customer(args, shard_keys, plan, key, blob, decision)
        plan.vouched.update(shard_keys.vouched)
    if args.count:
        plan.customers = args.count
        plan.call = args.finish()
    return plan


def _write_customer(
    args: ScriptArgs,
    shard_keys: ShardKeys,
    plan: CallPlan,
    key: bytes,
    blob: bytes | None,
    decision: Decision,
) -> None:
    """A touched customer's entry (compare-and-set, due index), then its changes."""
    res = decision.result
    customer = res.customer
    partition = customer.partition or 0
    due_to = shard_keys.due(partition)
    was_in = decision.was_in
    due_from = due_to if was_in is None or was_in == partition else shard_keys.due_left(was_in)
    due = "" if res.due is None else str(res.due)
    args.customer(key, blob or b"", decision.state, due_from, due_to, due)
    if res.tombstone is not None:
        digest, instant = res.tombstone
        erased = shard_keys.tombstones()
        args.erase += (erased, args.arg(digest), args.arg(str(instant).encode()))
    tenant = customer.tenant
    # (without a change, only a value model's expected value may have moved)
    _count_scores(args, shard_keys, tenant, decision.before, customer.published)
    _index(args, shard_keys, customer, decision.indexed)
    if not res.changes:
        return
    _count_flows(args, shard_keys, tenant, customer.scored_at or 0, res.changes)
    stream, outbox = shard_keys.outbox(partition)
    kafka_key = customer.customer_id.encode()
    args.changes_of(outbox, kafka_key, decision.payloads)
    for change, payload in zip(res.changes, decision.payloads, strict=True):
        plan.changes.append((stream, kafka_key, payload, change))


def _count_scores(
    args: ScriptArgs,
    shard_keys: ShardKeys,
    tenant: str,
    before: Published | None,
    after: Published | None,
) -> None:
    """The segment counters move once per customer: from its score before the batch to
    its score after, whatever changes it went through in between; with a value model, the
    value sums beside them move from its expected value before to after (updated at every
    commit of the customer, a change published or not)."""
    if before is after:
        return
    counts, deltas = shard_keys.counts(), args.deltas
    if before is not None:
        name = keys.count_cell(tenant, before.rfm, before.segment)
        deltas[(counts, name)] = deltas.get((counts, name), 0) - 1
        if before.value:
            cell = (shard_keys.values(), name)
            deltas[cell] = deltas.get(cell, 0) - before.value
    if after is not None:
        name = keys.count_cell(tenant, after.rfm, after.segment)
        deltas[(counts, name)] = deltas.get((counts, name), 0) + 1
        if after.value:
            cell = (shard_keys.values(), name)
            deltas[cell] = deltas.get(cell, 0) + after.value


def _index(
    args: ScriptArgs, shard_keys: ShardKeys, customer: Customer, before: segment_index.Entry | None
) -> None:
    """The segment index moves once per customer, like the counters: from its entry before
    the batch to its entry after (rank values move with its orders, not only its score)."""
    after = segment_index.entry_of(customer)
    if before == after:
        return
    tenant, unindex, index = customer.tenant, args.unindex, args.index
    for code, left, entered in segment_index.moves(before, after, customer.customer_id.encode()):
        at = shard_keys.segment_index(tenant, code)
        if left is not None:
            unindex[at].append(left)
        if entered is not None:
            index[at].append(entered)


def _count_flows(
    args: ScriptArgs, shard_keys: ShardKeys, tenant: str, at: int, changes: list[Change]
) -> None:
    """The moves between segments (worker/state/flows.py), counted like the counters."""
    for change in changes:
        if change.kind != "rfm.changed" or change.from_segment == change.to_segment:
            continue
        move = (tenant, at, change.from_segment, change.to_segment)
        for cell in shard_keys.flow_cells(move):
            args.deltas[cell] = args.deltas.get(cell, 0) + 1
