"""Erasure (docs/personal-data.md) against a real Redis: a `customer_erased` event removes
the customer from the state, the due index, the counters, the value sums and the segment
index in its commit, publishes one rfm.erased with a stable id, and keeps a tombstone (no
personal data) that makes every event at or before it change nothing, also after a wipe;
an order after it starts a new customer."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from tests.factories import AS_OF, AS_OF_MS, DAY
from tests.state.test_store import ev, payloads
from tests.state.test_value_sums import stored_values, value_profiles
from worker.rules.erasure import erased_change
from worker.rules.events import ValidEvent, validate
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state import keys
from worker.state.store import Store

SECRET = b"0123456789abcdef-test-secret"


def erase(profiles: Profiles, customer: str, days_ago: float, event_id: str = "") -> ValidEvent:
    doc = {
        "event_id": event_id or f"erase-{customer}-{days_ago}",
        "type": "customer_erased",
        "customer_id": customer,
        "occurred_at": (AS_OF - days_ago * DAY).isoformat(),
    }
    out = validate(orjson.dumps(doc), profiles, AS_OF_MS)
    assert isinstance(out, ValidEvent), out
    return out


def run(
    store: Store, profiles: Profiles, events: list[ValidEvent], key: bytes | None = SECRET
) -> Any:
    return causes.apply_batch(
        store,
        [(e, 0) for e in events],
        profiles,
        as_of_ms=AS_OF_MS,
        now_ms=AS_OF_MS,
        erasure_key=key,
    )


def history(profiles: Profiles, customer: str) -> list[ValidEvent]:
    return [
        ev(
            profiles,
            f"{customer}-p{n}",
            "placed",
            f"{customer}-o{n}",
            "40",
            customer=customer,
            days_ago=30 - n * 5,
        )
        for n in range(4)
    ]


def traces(store: Store, customer: str) -> list[bytes]:
    """Every key, or member of a sorted set, that still names the customer (the outbox
    aside: changes committed before the erasure are published before its rfm.erased)."""
    found: list[bytes] = []
    client = store.redis
    for key in client.scan_iter(match=b"rfm:*", count=1000):
        if b":outbox:" in key:
            continue
        if customer.encode() in key:
            found.append(key)
        if client.type(key) == b"zset":
            found += [m for m in client.zrange(key, 0, -1) if m.endswith(customer.encode())]
    return found


def erased_records(store: Store) -> list[dict[str, Any]]:
    return [p for p in payloads(store) if p["type"] == "rfm.erased"]


def test_an_erasure_removes_the_customer_everywhere(store: Store) -> None:
    profiles = value_profiles()
    run(store, profiles, history(profiles, "gone") + history(profiles, "kept"))
    assert traces(store, "gone")
    result = run(store, profiles, [erase(profiles, "gone", days_ago=1)])
    assert result.outcomes["applied"] == 1
    assert store.reads.customer("default", "gone") is None
    assert traces(store, "gone") == []
    kept = store.reads.customer("default", "kept")
    assert kept is not None and kept.published is not None
    counts = store.reads.segment_counts()
    assert sum(counts.values()) == 1
    assert counts[("default", kept.published.segment)] == 1
    assert store.reads.segment_values() == by_segment(stored_values(store))
    (record,) = erased_records(store)
    assert set(record) == {"type", "change_id", "tenant", "customer_id", "as_of", "emitted_at"}
    assert record["customer_id"] == "gone" and record["tenant"] == "default"
    assert store.tombstones.count() == 1
    # What the tombstone holds: a digest and an instant, no id.
    stored = store.redis.hgetall(keys.erased(keys.shard_of("default", "gone")))
    assert all(b"gone" not in k for k in stored)
    print(
        "tombstone bytes:", store.redis.memory_usage(keys.erased(keys.shard_of("default", "gone")))
    )


def by_segment(values: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (tenant, _rfm, segment), value in values.items():
        out[(tenant, segment)] += value
    return out


def test_earlier_events_again_change_nothing_and_a_later_order_starts_anew(store: Store) -> None:
    profiles = value_profiles()
    events = history(profiles, "gone")
    run(store, profiles, events)
    erasure = erase(profiles, "gone", days_ago=2)
    run(store, profiles, [erasure])
    before = len(payloads(store))
    again = run(store, profiles, [*events, erasure])  # a redelivery, the erasure with them
    assert again.outcomes["erased"] == len(events) + 1
    assert again.outcomes["applied"] == 0
    assert store.reads.customer("default", "gone") is None
    assert traces(store, "gone") == []
    assert len(payloads(store)) == before  # nothing published
    # An event at the erasure's instant is covered; one after it starts a new customer.
    late = ev(profiles, "late", "placed", "o-late", "99", customer="gone", days_ago=2)
    assert run(store, profiles, [late]).outcomes["erased"] == 1
    new = ev(profiles, "new", "placed", "o-new", "10", customer="gone", days_ago=1)
    assert run(store, profiles, [new]).outcomes["applied"] == 1
    customer = store.reads.customer("default", "gone")
    assert customer is not None and customer.aggregates() is not None
    agg = customer.aggregates()
    assert agg is not None and agg.orders_lifetime == 1
    assert sum(store.reads.segment_counts().values()) == 1
    assert len(erased_records(store)) == 1


def test_one_batch_with_orders_around_the_erasure(store: Store) -> None:
    """Orders before it in the same batch are dropped, the one after starts the new
    customer; the rfm.erased comes first; the change id is stable across a wipe."""
    profiles = value_profiles()
    events = [
        *history(profiles, "x"),
        erase(profiles, "x", days_ago=3),
        ev(profiles, "x-after", "placed", "x-after", "15", customer="x", days_ago=1),
    ]
    result = run(store, profiles, events)
    assert result.outcomes["erased"] == 4
    customer = store.reads.customer("default", "x")
    agg = None if customer is None else customer.aggregates()
    assert agg is not None and agg.orders_lifetime == 1
    kinds = [p["type"] for p in payloads(store)]
    assert kinds[0] == "rfm.erased" and len(kinds) == 2
    first_id = erased_records(store)[0]["change_id"]
    # A rebuild: every key wiped but the tombstones, the topic replayed.
    store.server.wipe()
    assert store.tombstones.count() == 1
    run(store, profiles, events)
    customer = store.reads.customer("default", "x")
    agg = None if customer is None else customer.aggregates()
    assert agg is not None and agg.orders_lifetime == 1
    assert [p for p in payloads(store) if p["type"] == "rfm.erased"] == []
    assert first_id == erase_id(profiles)


def erase_id(profiles: Profiles) -> str:
    return str(
        erased_change("default", "x", erase(profiles, "x", 3).occurred_at, 0).payload["change_id"]
    )


def test_an_erasure_without_a_key_is_refused(store: Store, profiles: Profiles) -> None:
    run(store, profiles, history(profiles, "c"), key=None)
    result = run(store, profiles, [erase(profiles, "c", days_ago=1)], key=None)
    assert len(result.rejected) == 1
    assert "RFM_ERASURE_KEY" in str(result.rejected[0][2])
    assert store.reads.customer("default", "c") is not None


@pytest.mark.parametrize("customers", [1000, 20_000, 40_000])
def test_bytes_per_erased_customer(store: Store, profiles: Profiles, customers: int) -> None:
    """What the tombstones cost: MEMORY USAGE of the shards' hashes per erased customer."""
    events = [erase(profiles, f"c{n}", days_ago=1) for n in range(customers)]
    run(store, profiles, events)
    assert store.tombstones.count() == customers
    total = sum(
        int(store.redis.memory_usage(keys.erased(s), samples=0) or 0) for s in range(keys.SHARDS)
    )
    per = total / customers
    print(f"tombstones: {total} bytes for {customers} erased customers, {per:.1f} per customer")
    assert per < 120


def test_an_erasure_committed_meanwhile_is_seen_when_the_batch_is_decided_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker (a zombie past its session, during a rebalance) commits the erasure
    after this batch read its tombstones and customers: this batch's commit meets the
    change, and the shard is decided again with the tombstone as it is now, so its older
    events do not bring the customer back."""
    profiles = value_profiles()
    run(store, profiles, history(profiles, "gone")[:2])
    late = history(profiles, "gone")[2:]  # occurred before the erasure below
    committer = store._committer
    read = committer._read_shards
    raced: list[int] = []

    def read_then_erase(*args: Any) -> Any:
        blobs = read(*args)
        if not raced:  # the other worker's erasure lands between the read and the commit
            raced.append(1)
            monkeypatch.setattr(committer, "_read_shards", read)
            run(store, profiles, [erase(profiles, "gone", days_ago=1)])
            monkeypatch.setattr(committer, "_read_shards", read_then_erase)
        return blobs

    monkeypatch.setattr(committer, "_read_shards", read_then_erase)
    result = run(store, profiles, late)
    assert raced and result.conflicts >= 1
    assert result.outcomes["erased"] == len(late)
    assert store.reads.customer("default", "gone") is None
    assert traces(store, "gone") == []
    assert len(erased_records(store)) == 1
