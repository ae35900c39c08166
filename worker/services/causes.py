"""The causes of a commit: where the rules meet the state.

Every write goes through `Store.commit` (worker/state/store.py): read the customers, decide
each with a pure function of worker/rules/engine.py, commit compare-and-set. This module
names the three reasons to do so, each a function:

- `apply_batch`: order events (the consumer, rebuild);
- `sweep_step`: time alone, the customers the due index says are due (the sweeper);
- `mark_due`: a changed profile, the customers it would move, marked due now (the marking
  pass); publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from worker.rules import erasure, rescore
from worker.rules.customer import Customer
from worker.rules.decay import next_due
from worker.rules.engine import Result, apply_events, decay
from worker.rules.events import ValidEvent
from worker.rules.instants import DAY_MS
from worker.rules.profiles import Profiles
from worker.state import keys
from worker.state.store import BatchResult, Store, SweepStep

logger = logging.getLogger(__name__)


def apply_batch(
    store: Store,
    items: Sequence[tuple[ValidEvent, int]],
    profiles: Profiles,
    *,
    as_of_ms: int,
    now_ms: int,
    erasure_key: bytes | None = None,
) -> BatchResult:
    """Apply validated events (with their partitions) atomically per shard.

    Idempotent: calling it again with the same events (after a timeout, a crash, a
    redelivery) finds them already merged, counts them as duplicates and emits nothing.
    With an `erasure_key` (RFM_ERASURE_KEY), the customers' tombstones are read first and
    erasures applied (worker/rules/erasure.py); without one, an erasure is refused
    (dead-lettered, `erasure.NoErasureKeyError`).
    """
    work: dict[int, dict[bytes, tuple[str, str, list[tuple[ValidEvent, int]]]]] = {}
    for event, partition in items:
        shard = keys.shard_of(event.tenant, event.customer_id)
        key = keys.customer(event.tenant, event.customer_id, shard)
        slot = work.setdefault(shard, {})
        if key in slot:
            slot[key][2].append((event, partition))
        else:
            slot[key] = (event.tenant, event.customer_id, [(event, partition)])

    tombstones = _tombstones(store, work, erasure_key)
    decide = _decider(profiles, tombstones, erasure_key, as_of_ms=as_of_ms, now_ms=now_ms)

    def reread(shards: list[int]) -> None:
        """A shard decided again (its commit met a change made meanwhile: maybe another
        worker's erasure) is decided with its tombstones as they are now."""
        tombstones.update(_tombstones(store, {s: work[s] for s in shards}, erasure_key))

    before_retry = None if erasure_key is None else reread
    result = store.commit(work, decide, before_retry)
    # A customer whose events raised: apply them one at a time, so only the events
    # that raise are rejected (dead-lettered by the consumer) and the others count.
    failed, result.failed = result.failed, []
    for key, events, _exc in failed:
        shard, tenant, customer_id = keys.split_customer(key)
        for event, partition in events:
            one = store.commit(
                {shard: {key: (tenant, customer_id, [(event, partition)])}}, decide, before_retry
            )
            result.add(one)
            result.rejected += [(event, partition, exc) for _, _, exc in one.failed]
    return result


Events = list[tuple[ValidEvent, int]]


def _decider(
    profiles: Profiles,
    tombstones: dict[tuple[str, str], int],
    erasure_key: bytes | None,
    *,
    as_of_ms: int,
    now_ms: int,
) -> Callable[[Customer, Events], Result]:
    """The per-customer function of `apply_batch`: its events, around its erasures."""

    def decide(customer: Customer, events: Events) -> Result:
        evs = [ev for ev, _ in events]
        profile = profiles.for_tenant(customer.tenant)
        if erasure_key is None:
            if any(ev.type == erasure.ERASED for ev in evs):
                raise erasure.NoErasureKeyError(
                    "customer_erased refused: RFM_ERASURE_KEY is not set (docs/personal-data.md)"
                )
            return apply_events(
                customer,
                evs,
                profile=profile,
                as_of_ms=as_of_ms,
                now_ms=now_ms,
                partition=events[-1][1],
            )
        res, erased_at = erasure.apply_with_erasures(
            customer,
            evs,
            tombstones.get((customer.tenant, customer.customer_id)),
            profile=profile,
            as_of_ms=as_of_ms,
            now_ms=now_ms,
            partition=events[-1][1],
        )
        if erased_at is not None:  # (rare: the digest is computed again only here)
            digest = erasure.tombstone_field(erasure_key, customer.tenant, customer.customer_id)
            res.tombstone = (digest, erased_at)
        return res

    return decide


def _tombstones(
    store: Store,
    work: dict[int, dict[bytes, tuple[str, str, list[tuple[ValidEvent, int]]]]],
    erasure_key: bytes | None,
) -> dict[tuple[str, str], int]:
    """The erasure instants of the batch's erased customers, by (tenant, customer id)
    (none without a key): one keyed digest per customer, one HMGET per shard."""
    if erasure_key is None:
        return {}
    named = {
        shard: {erasure.tombstone_field(erasure_key, t, c): (t, c) for t, c, _ in slot.values()}
        for shard, slot in work.items()
    }
    found = store.tombstones.read({shard: list(fields) for shard, fields in named.items()})
    return {named[shard][field]: at for (shard, field), at in found.items()}


def sweep_step(
    store: Store,
    zsets: Iterable[tuple[int, int]],
    profiles: Profiles,
    *,
    as_of_ms: int,
    now_ms: int,
    limit: int,
) -> SweepStep:
    """Decay up to `limit` due customers of each (shard, partition) due zset.

    Each swept customer is rescheduled to its next due instant (after as_of) in the
    same commit, so a zset that returned fewer than `limit` entries has nothing more
    due at as_of: it is reported exhausted.
    """
    zsets = list(zsets)
    work: dict[int, dict[bytes, tuple[str, str, int]]] = {}
    exhausted: set[tuple[int, int]] = set()
    read = 0
    for zset, members in zip(zsets, store.due.members(zsets, as_of_ms, limit), strict=True):
        read += len(members)
        if len(members) < limit:
            exhausted.add(zset)
        for key in members:
            shard, tenant, customer_id = keys.split_customer(key)
            work.setdefault(shard, {})[key] = (tenant, customer_id, zset[1])

    def decide(customer: Customer, partition: int) -> Result:
        if customer.partition is None:  # a stale entry, its customer gone: drop it
            customer.partition = partition
        profile = profiles.for_tenant(customer.tenant)
        return decay(customer, profile, as_of_ms=as_of_ms, now_ms=now_ms)

    result = store.commit(work, decide)
    if result.failed:  # never decided: retry tomorrow rather than block every sweep
        for key, _partition, exc in result.failed:
            logger.error("decay of %r failed, retried in a day: %r", key, exc)
        store.due.postpone(
            [(key, partition) for key, partition, _ in result.failed], as_of_ms + DAY_MS
        )
    return SweepStep(result, read, exhausted)


def mark_due(store: Store, found: list[bytes], profiles: Profiles, as_of_ms: int) -> int:
    """Put in the due index, as due now, the customers among `found` whose scores are
    out of date: stored before the due index existed (no `scored_at`), or scored with
    another version of their profile whose score the new one moves at as_of (see
    worker/rules/rescore.py). Their owner's next sweep rescores them (cause `rescore` for
    the second kind) and reschedules them. A customer the new version does not move
    only takes the version and the due instant of its thresholds here. Publishes
    nothing, so any worker may run it. Returns how many were marked due now."""
    work: dict[int, dict[bytes, tuple[str, str, None]]] = {}
    for key in found:
        shard, tenant, customer_id = keys.split_customer(key)
        work.setdefault(shard, {})[key] = (tenant, customer_id, None)
    marked: set[tuple[str, str]] = set()  # a set: a conflicting shard is decided again

    def decide(customer: Customer, _: None) -> Result:
        profile = profiles.for_tenant(customer.tenant)
        if not customer.orders or customer.version == profile.version:
            return Result(customer)
        if customer.scored_at is not None and customer.version is None:
            return Result(customer)  # scored before versions existed: nothing to compare
        move = None if customer.scored_at is None else rescore.decide(customer, profile, as_of_ms)
        if move is None or move.changes:
            marked.add((customer.tenant, customer.customer_id))
            return Result(customer, touched=True, due=0)
        customer.version = profile.version
        due = next_due(customer.aggregates(), profile, move.as_of_ms, customer.alerted)
        return Result(customer, dirty=True, touched=True, due=due)

    store.commit(work, decide)
    return len(marked)
