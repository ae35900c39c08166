"""The state in Redis: key layout, atomic batch commits, reads for the read side.

Layout (every key of one customer shard shares the hash tag {NN}, so one script call per
shard is valid on Redis Cluster; see worker/lua/commit.lua for the full description):

    rfm:{NN}:c:<tenant>:<customer_id>   the customer's state blob
    rfm:{NN}:outbox:<partition>         changes waiting for the relay
    rfm:{NN}:counts                     customers per (tenant, rfm, segment)
    rfm:clock                           the event clock (RFM_CLOCK=event)

A batch is applied optimistically: read the customers (one MGET per shard, pipelined),
run the pure engine, then commit each shard with one compare-and-set script call
(pipelined). A shard whose customers changed meanwhile (a second worker during a
rebalance, later the sweeper) is simply read and computed again.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import orjson
import redis

from worker.customer import Customer, Outcome
from worker.engine import Change, apply_events
from worker.errors import StateError
from worker.events import ValidEvent
from worker.profiles import Profiles

logger = logging.getLogger(__name__)

SHARDS = 64  # hash-tag groups; fixed for the life of a deployment (it is in every key)
MAX_ATTEMPTS = 20
_PREFIX_LEN = len("rfm:{00}:c:")
CLOCK_KEY = b"rfm:clock"


def shard_of(tenant: str, customer_id: str) -> int:
    return zlib.crc32(f"{tenant}\x00{customer_id}".encode()) % SHARDS


def customer_key(tenant: str, customer_id: str, shard: int | None = None) -> bytes:
    if shard is None:
        shard = shard_of(tenant, customer_id)
    return f"rfm:{{{shard:02d}}}:c:{tenant}:{customer_id}".encode()


def split_customer_key(key: bytes) -> tuple[str, str]:
    tenant, _, customer_id = key[_PREFIX_LEN:].decode().partition(":")
    return tenant, customer_id


def outbox_key(shard: int, partition: int) -> bytes:
    return f"rfm:{{{shard:02d}}}:outbox:{partition}".encode()


def counts_key(shard: int) -> bytes:
    return f"rfm:{{{shard:02d}}}:counts".encode()


def _script(name: str) -> str:
    return files("worker").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Committed:
    """A change durably in an outbox stream, ready to publish."""

    outbox: bytes  # stream key
    entry_id: bytes
    key: bytes  # customer id, the Kafka key
    value: bytes  # the rfm.changed record
    change: Change


@dataclass(slots=True)
class BatchResult:
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    committed: list[Committed] = field(default_factory=list)
    conflicts: int = 0


@dataclass(slots=True)
class _Slice:
    """The customers of one shard touched by a batch, with their events in order."""

    events: dict[bytes, list[tuple[ValidEvent, int]]] = field(default_factory=dict)


@dataclass(slots=True)
class _Plan:
    """What the engine decided for one shard; `queued` when a commit call was queued."""

    changes: list[Change] = field(default_factory=list)
    outboxes: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    queued: bool = False


class Store:
    def __init__(self, client: redis.Redis | redis.RedisCluster) -> None:
        # redis-py's annotations are a union of sync/async/str/bytes results: too loose to
        # help here, so the client is used untyped behind this small, tested surface.
        self.redis: Any = client
        self._commit = client.register_script(_script("commit.lua"))
        self._clock = client.register_script(_script("clock.lua"))

    # -- write path ---------------------------------------------------------------------

    def apply_batch(
        self,
        items: Sequence[tuple[ValidEvent, int]],
        profiles: Profiles,
        *,
        as_of_ms: int,
        now_ms: int,
    ) -> BatchResult:
        """Apply validated events (with their partitions) atomically per shard.

        Idempotent: calling it again with the same events (after a timeout, a crash, a
        redelivery) finds them already merged, counts them as duplicates and emits nothing.
        """
        slices: dict[int, _Slice] = {}
        for event, partition in items:
            shard = shard_of(event.tenant, event.customer_id)
            key = customer_key(event.tenant, event.customer_id, shard)
            slices.setdefault(shard, _Slice()).events.setdefault(key, []).append((event, partition))
        result = BatchResult()
        pending = sorted(slices)
        for _attempt in range(MAX_ATTEMPTS):
            pipe = self.redis.pipeline(transaction=False)
            for shard in pending:
                pipe.mget(list(slices[shard].events))
            blobs_per_shard = pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            plans = [
                self._plan(shard, slices[shard], blobs, profiles, as_of_ms, now_ms, pipe)
                for shard, blobs in zip(pending, blobs_per_shard, strict=True)
            ]
            replies = iter(pipe.execute() if len(pipe) else [])
            retry: list[int] = []
            for shard, plan in zip(pending, plans, strict=True):
                reply = next(replies) if plan.queued else [1]
                if reply[0] == 0:
                    retry.append(shard)
                    continue
                result.outcomes.update(plan.outcomes)
                for change, outbox, entry_id, value in zip(
                    plan.changes, plan.outboxes, reply[1:], plan.payloads, strict=True
                ):
                    result.committed.append(
                        Committed(outbox, entry_id, change.customer_id.encode(), value, change)
                    )
            if not retry:
                return result
            result.conflicts += len(retry)
            pending = retry
        raise StateError(f"shards {pending} kept changing under us for {MAX_ATTEMPTS} attempts")

    def _plan(
        self,
        shard: int,
        slice_: _Slice,
        blobs: list[bytes | None],
        profiles: Profiles,
        as_of_ms: int,
        now_ms: int,
        pipe: Any,
    ) -> _Plan:
        """Run the engine over one shard's customers and queue its commit on `pipe`."""
        plan = _Plan()
        keys: list[bytes] = [counts_key(shard)]
        expected: list[bytes] = []
        new: list[bytes] = []
        deltas: Counter[str] = Counter()
        for (key, events), blob in zip(slice_.events.items(), blobs, strict=True):
            tenant, customer_id = events[0][0].tenant, events[0][0].customer_id
            customer = Customer.decode(tenant, customer_id, blob)
            res = apply_events(
                customer,
                [ev for ev, _ in events],
                profile=profiles.for_tenant(tenant),
                as_of_ms=as_of_ms,
                now_ms=now_ms,
                partition=events[-1][1],
            )
            plan.outcomes.update(res.outcomes)
            if not res.dirty:
                continue
            keys.append(key)
            expected.append(blob or b"")
            new.append(res.customer.encode())
            outbox = outbox_key(shard, events[-1][1])
            for change in res.changes:
                plan.changes.append(change)
                plan.outboxes.append(outbox)
                plan.payloads.append(orjson.dumps(change.payload))
                if change.count_key_from:
                    deltas[change.count_key_from] -= 1
                if change.count_key_to:
                    deltas[change.count_key_to] += 1
        if not new:
            return plan
        live = [(k, v) for k, v in deltas.items() if v]
        args: list[bytes | str | int] = [len(new), *expected, *new, len(live)]
        for fld, delta in live:
            args += [fld, delta]
        for change, payload in zip(plan.changes, plan.payloads, strict=True):
            args += [change.customer_id, payload]
        self._commit(keys=keys + plan.outboxes, args=args, client=pipe)
        plan.queued = True
        return plan

    # -- event clock ----------------------------------------------------------------------

    def advance_clock(self, candidate_ms: int) -> int:
        return int(self._clock(keys=[CLOCK_KEY], args=[candidate_ms]))

    def read_clock(self) -> int | None:
        raw = self.redis.get(CLOCK_KEY)
        return int(raw) if raw else None

    # -- outbox ---------------------------------------------------------------------------

    def outbox_entries(
        self, partition: int, count: int = 1000
    ) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
        """(stream, entry id, key, value) of every change waiting in a partition's outboxes."""
        for shard in range(SHARDS):
            stream = outbox_key(shard, partition)
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
        for key in self.redis.scan_iter(match=b"rfm:{*}:outbox:*", count=1000):
            total += int(self.redis.xlen(key))
        return total

    # -- read side ------------------------------------------------------------------------

    def get_customer(self, tenant: str, customer_id: str) -> Customer | None:
        blob = self.redis.get(customer_key(tenant, customer_id))
        return Customer.decode(tenant, customer_id, blob) if blob else None

    def scan_customers(self, tenant: str | None = None, chunk: int = 500) -> Iterator[Customer]:
        """Every stored customer (of one tenant), read in chunks: for export, not hot paths."""
        pattern = f"rfm:{{*}}:c:{_glob_escape(tenant) if tenant else '*'}:*".encode()
        batch: list[bytes] = []
        for key in self.redis.scan_iter(match=pattern, count=chunk):
            batch.append(key)
            if len(batch) >= chunk:
                yield from self._decode_keys(batch, tenant)
                batch = []
        yield from self._decode_keys(batch, tenant)

    def _decode_keys(self, keys: list[bytes], tenant: str | None) -> Iterator[Customer]:
        pipe = self.redis.pipeline(transaction=False)  # GETs, not MGET: keys span slots
        for key in keys:
            pipe.get(key)
        for key, blob in zip(keys, pipe.execute() if keys else [], strict=True):
            owner, customer_id = split_customer_key(key)
            # The glob can also match an id that contains "}:c:<tenant>:": check the owner.
            if blob and (tenant is None or owner == tenant):
                yield Customer.decode(owner, customer_id, blob)

    def score_counts(self) -> Counter[tuple[str, str, str]]:
        """Customers per (tenant, rfm, segment) of their published score, over all shards."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.hgetall(counts_key(shard))
        totals: Counter[tuple[str, str, str]] = Counter()
        for cells in pipe.execute():
            for fld, count in cells.items():
                tenant, rfm, segment = fld.decode().split("\t")
                totals[(tenant, rfm, segment)] += int(count)
        return totals

    def segment_counts(self) -> Counter[tuple[str, str]]:
        """Customers per (tenant, segment)."""
        totals: Counter[tuple[str, str]] = Counter()
        for (tenant, _rfm, segment), count in self.score_counts().items():
            totals[(tenant, segment)] += count
        return totals

    def ping(self) -> bool:
        return bool(self.redis.ping())


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
