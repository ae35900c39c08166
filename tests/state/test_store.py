"""Store against a real Redis: idempotency, order semantics, money, keys, outbox, conflicts."""

from __future__ import annotations

import tracemalloc
from collections import Counter
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from redis.crc import key_slot

from tests.factories import AS_OF, AS_OF_MS, DAY, valid_event
from worker.errors import StateError
from worker.rules.customer import LONG_HISTORY, Customer
from worker.rules.events import ValidEvent
from worker.rules.orders import Order
from worker.rules.profiles import Profiles
from worker.services import causes, sampling
from worker.state import keys
from worker.state.keys import SHARDS, shard_of
from worker.state.script_calls import mget
from worker.state.store import Store

UNIT = Decimal("0.0001")


def ev(
    profiles: Profiles,
    event_id: str,
    kind: str,
    order_id: str,
    amount: str | float | None = None,
    *,
    customer: str = "c1",
    tenant: str | None = None,
    days_ago: float = 1,
) -> ValidEvent:
    return valid_event(
        profiles,
        event_id=event_id,
        kind=kind,
        order_id=order_id,
        customer=customer,
        occurred_at=(AS_OF - days_ago * DAY).isoformat(),
        now_ms=AS_OF_MS,
        amount=amount,
        tenant=tenant,
    )


def apply(store: Store, profiles: Profiles, events: list[ValidEvent], partition: int = 0) -> Any:
    return causes.apply_batch(
        store, [(e, partition) for e in events], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS
    )


def money(store: Store, customer: str = "c1", tenant: str = "default") -> Decimal | None:
    c = store.reads.customer(tenant, customer)
    agg = c.aggregates() if c else None
    return None if agg is None else Decimal(agg.monetary) * UNIT


def orders(store: Store, customer: str = "c1", tenant: str = "default") -> int:
    c = store.reads.customer(tenant, customer)
    agg = c.aggregates() if c else None
    return 0 if agg is None else agg.orders_lifetime


def payloads(store: Store, partition: int = 0) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _, _, _, v in store.outbox.entries(partition)]


def rfm_of(p: dict[str, Any] | None) -> str | None:
    return None if p is None else p["rfm"]


# -- duplicates -----------------------------------------------------------------------------------


def test_same_event_twice_in_one_batch(store: Store, profiles: Profiles) -> None:
    e = ev(profiles, "e1", "placed", "o1", "120.00")
    result = apply(store, profiles, [e, e])
    assert result.outcomes == Counter({"applied": 1, "duplicate": 1})
    assert len(result.committed) == 1
    assert orders(store) == 1
    assert money(store) == Decimal("120")


def test_same_events_again_in_a_later_batch(store: Store, profiles: Profiles) -> None:
    batch = [
        ev(profiles, "e1", "placed", "o1", "80"),
        ev(profiles, "e2", "placed", "o2", "30"),
        ev(profiles, "e3", "refunded", "o1", "5"),
    ]
    first = apply(store, profiles, batch)
    assert first.outcomes == Counter({"applied": 3})
    blob = store.redis.get(keys.customer("default", "c1"))
    backlog = store.outbox.backlog()
    counts = store.reads.segment_counts()

    again = apply(store, profiles, list(reversed(batch)))
    assert again.outcomes == Counter({"duplicate": 3})
    assert again.committed == []
    assert again.conflicts == 0
    assert store.redis.get(keys.customer("default", "c1")) == blob  # not even rewritten
    assert store.outbox.backlog() == backlog
    assert store.reads.segment_counts() == counts
    assert money(store) == Decimal("105")


def test_second_placed_for_same_order_is_not_a_second_order(
    store: Store, profiles: Profiles
) -> None:
    apply(store, profiles, [ev(profiles, "p1", "placed", "o1", "50", days_ago=3)])
    later = apply(store, profiles, [ev(profiles, "p2", "placed", "o1", "70", days_ago=2)])
    assert later.outcomes == Counter({"duplicate": 1})
    assert later.committed == []
    assert orders(store) == 1
    assert money(store) == Decimal("50")


def test_segment_counters_move_once_per_customer_and_batch(
    store: Store, profiles: Profiles
) -> None:
    """Several changes of one customer in a batch move its counter cell once: from the
    score before the batch to the score after (none when it ends without counted orders)."""
    first = apply(store, profiles, [ev(profiles, "p1", "placed", "o1", "120")])
    assert len(first.committed) == 1
    assert store.reads.score_counts() == Counter({("default", "512", "new_customers"): 1})
    moves = [
        ev(profiles, "p2", "placed", "o2", "120"),
        ev(profiles, "p3", "placed", "o3", "900"),
        ev(profiles, "p4", "placed", "o4", "900", customer="c2"),
    ]
    second = apply(store, profiles, moves)
    assert len(second.committed) == 3
    after = store.reads.score_counts()
    assert sum(after.values()) == 2
    assert ("default", "512", "new_customers") not in after  # c1 left it (c2 entered 513)
    gone = apply(store, profiles, [ev(profiles, f"x{i}", "cancelled", f"o{i}") for i in (1, 2, 3)])
    assert len(gone.committed) == 3  # every move published, the last with no score left
    assert sum(store.reads.score_counts().values()) == 1  # c2 only


@pytest.mark.parametrize("first_wins", [True, False])
def test_conflicting_placed_events_are_order_independent(
    store: Store, profiles: Profiles, first_wins: bool
) -> None:
    """Two placed events claim one order: the smallest (occurred_at, amount) is kept."""
    early = ev(profiles, "p-early", "placed", "o1", "300", days_ago=100)
    late = ev(profiles, "p-late", "placed", "o1", "20", days_ago=2)
    for e in [early, late] if first_wins else [late, early]:
        apply(store, profiles, [e])
    c = store.reads.customer("default", "c1")
    assert c is not None
    agg = c.aggregates()
    assert agg is not None
    assert agg.orders_lifetime == 1
    assert agg.monetary == 300 * 10_000
    assert agg.last_order_at == int((AS_OF - 100 * DAY).timestamp() * 1000)
    assert c.published is not None
    # 100 days -> R=3 (<=180), one order F=1, 300 -> M=3 (>=250)
    assert c.published.rfm == "313"


def test_conflicting_placed_events_at_the_same_instant_keep_the_smaller_amount(
    store: Store, profiles: Profiles
) -> None:
    big = ev(profiles, "p-big", "placed", "o1", "80", days_ago=3)
    small = ev(profiles, "p-small", "placed", "o1", "20", days_ago=3)
    apply(store, profiles, [big])
    apply(store, profiles, [small])
    apply(store, profiles, [big])
    assert money(store) == Decimal("20")
    assert orders(store) == 1


# -- cancel and refund ----------------------------------------------------------------------------


def test_cancel_before_place(store: Store, profiles: Profiles) -> None:
    res = apply(store, profiles, [ev(profiles, "x1", "cancelled", "o1")])
    assert res.committed == []
    res = apply(store, profiles, [ev(profiles, "p1", "placed", "o1", "500")])
    assert res.committed == []  # never counted, so no score ever existed
    res = apply(store, profiles, [ev(profiles, "r1", "refunded", "o1", "100")])
    assert res.committed == []
    assert orders(store) == 0
    assert money(store) is None
    assert store.reads.segment_counts() == Counter()
    c = store.reads.customer("default", "c1")
    assert c is not None and c.published is None
    assert store.outbox.backlog() == 0


def test_cancel_after_place_removes_the_order(store: Store, profiles: Profiles) -> None:
    apply(
        store,
        profiles,
        [ev(profiles, "p1", "placed", "o1", "500"), ev(profiles, "p2", "placed", "o2", "50")],
    )
    assert store.reads.segment_counts() == Counter({("default", "potential_loyalist"): 1})  # 524
    res = apply(store, profiles, [ev(profiles, "x1", "cancelled", "o1")])
    assert [rfm_of(c.change.payload["current"]) for c in res.committed] == ["511"]
    assert orders(store) == 1
    assert money(store) == Decimal("50")
    res = apply(store, profiles, [ev(profiles, "x2", "cancelled", "o2")])
    assert len(res.committed) == 1
    assert res.committed[0].change.payload["current"] is None
    assert orders(store) == 0
    assert store.reads.segment_counts() == Counter()
    assert store.redis.hgetall(keys.counts(shard_of("default", "c1"))) == {}
    # Cancelling again is a duplicate.
    again = apply(store, profiles, [ev(profiles, "x3", "cancelled", "o2")])
    assert again.outcomes == Counter({"duplicate": 1})


def test_redelivery_to_a_cancelled_order_is_a_duplicate(store: Store, profiles: Profiles) -> None:
    cancel = ev(profiles, "x1", "cancelled", "o1")
    placed = ev(profiles, "p1", "placed", "o1", "10")
    refund = ev(profiles, "r1", "refunded", "o1", "1")
    apply(store, profiles, [cancel, placed, refund])
    blob = store.redis.get(keys.customer("default", "c1"))
    again = apply(store, profiles, [placed, refund, cancel])
    assert again.outcomes == Counter({"duplicate": 3})
    assert store.redis.get(keys.customer("default", "c1")) == blob


def test_refund_before_place(store: Store, profiles: Profiles) -> None:
    res = apply(store, profiles, [ev(profiles, "r1", "refunded", "o1", "30")])
    assert res.committed == []
    assert money(store) is None
    apply(store, profiles, [ev(profiles, "p1", "placed", "o1", "130")])
    assert money(store) == Decimal("100")
    assert orders(store) == 1


def test_partial_and_several_refunds(store: Store, profiles: Profiles) -> None:
    apply(store, profiles, [ev(profiles, "p1", "placed", "o1", "100.50")])
    apply(store, profiles, [ev(profiles, "r1", "refunded", "o1", "0.25")])
    apply(store, profiles, [ev(profiles, "r2", "refunded", "o1", "0.25")])  # same amount, new id
    assert money(store) == Decimal("100.00")
    dup = apply(store, profiles, [ev(profiles, "r2", "refunded", "o1", "0.25")])
    assert dup.outcomes == Counter({"duplicate": 1})
    assert money(store) == Decimal("100.00")
    apply(store, profiles, [ev(profiles, "r3", "refunded", "o1", "40")])
    assert money(store) == Decimal("60.00")
    apply(store, profiles, [ev(profiles, "r4", "refunded", "o1", "1000")])  # more than left
    assert money(store) == Decimal(0)  # never below zero
    assert orders(store) == 1  # a fully refunded order still counts for F and R
    apply(store, profiles, [ev(profiles, "p2", "placed", "o2", "10")])
    assert money(store) == Decimal("10")  # the over-refund does not leak onto other orders


def test_refund_changes_m_and_publishes(store: Store, profiles: Profiles) -> None:
    apply(store, profiles, [ev(profiles, "p1", "placed", "o1", "1000")])  # 515
    res = apply(store, profiles, [ev(profiles, "r1", "refunded", "o1", "0.0001")])
    [committed] = res.committed
    p = committed.change.payload
    assert (p["cause"], p["cause_event_id"]) == ("refund", "r1")
    assert (rfm_of(p["previous"]), rfm_of(p["current"])) == ("515", "514")
    assert p["customer"]["monetary"] == "999.9999"


# -- money ----------------------------------------------------------------------------------------


def test_money_is_exact(store: Store, profiles: Profiles) -> None:
    events = [ev(profiles, f"p{i}", "placed", f"o{i}", a) for i, a in enumerate([0.1, "0.2"])]
    events.append(ev(profiles, "p3", "placed", "o3", 0.7))
    res = apply(store, profiles, events)
    assert money(store) == Decimal("1.0")
    assert res.committed[-1].change.payload["customer"]["monetary"] == "1.00"
    apply(store, profiles, [ev(profiles, "r1", "refunded", "o3", "0.3")])
    assert money(store) == Decimal("0.7")  # 0.1 + 0.2 + 0.7 - 0.3, not 0.7000000000000001


def test_largest_amounts_summed_exactly(store: Store, profiles: Profiles) -> None:
    biggest = "999999999999.9999"
    n = 300
    for start in range(0, n, 100):
        apply(
            store,
            profiles,
            [
                ev(profiles, f"p{i}", "placed", f"o{i}", biggest, days_ago=1 + i % 50)
                for i in range(start, start + 100)
            ],
        )
    assert orders(store) == n
    assert money(store) == Decimal(biggest) * n  # 299999999999999.9700, far beyond 2**53
    apply(store, profiles, [ev(profiles, "r", "refunded", "o0", "0.0001")])
    assert money(store) == Decimal(biggest) * n - UNIT
    last = list(store.outbox.entries(0))
    assert last, "the score changes were published"
    c = store.reads.customer("default", "c1")
    assert c is not None and c.published is not None
    assert c.published.rfm == "555"


# -- tenants and keys -----------------------------------------------------------------------------


def test_tenants_are_isolated(store: Store, profiles: Profiles) -> None:
    apply(
        store,
        profiles,
        [
            ev(profiles, "a1", "placed", "o1", "10", customer="42"),
            ev(profiles, "b1", "placed", "o1", "2000", customer="42", tenant="acme"),
            ev(profiles, "b2", "placed", "o2", "1", customer="42", tenant="acme"),
        ],
    )
    # The same order_id in another tenant is another order; the same event_id too.
    res = apply(store, profiles, [ev(profiles, "a1", "cancelled", "o1", customer="42")])
    assert res.outcomes == Counter({"applied": 1})
    assert orders(store, "42", "default") == 0
    assert orders(store, "42", "acme") == 2
    assert money(store, "42", "acme") == Decimal("2001")
    assert keys.customer("default", "42") != keys.customer("acme", "42")
    assert store.reads.segment_counts() == Counter({("acme", "potential_loyalist"): 1})  # 525
    assert [c.tenant for c in store.reads.customers("acme")] == ["acme"]
    assert {(c.tenant, c.customer_id) for c in store.reads.customers()} == {
        ("default", "42"),
        ("acme", "42"),
    }


def test_tenant_with_its_own_profile(store: Store) -> None:
    profiles = Profiles.from_toml(
        """
        [profiles.default]
        recency_days = [30, 90, 180, 365]
        frequency_orders = [2, 3, 5, 10]
        monetary = [100, 250, 500, 1000]

        [profiles.sofa-shop]
        recency_days = [30, 365, 730, 1825]
        frequency_orders = [2, 3, 4, 6]
        monetary = [500, 1500, 3000, 6000]
        """
    )
    apply(
        store,
        profiles,
        [
            ev(profiles, "s1", "placed", "o1", "1600", tenant="sofa-shop", days_ago=200),
            ev(profiles, "d1", "placed", "o1", "1600", days_ago=200),
        ],
    )
    sofa = store.reads.customer("sofa-shop", "c1")
    dflt = store.reads.customer("default", "c1")
    assert sofa is not None and sofa.published is not None
    assert dflt is not None and dflt.published is not None
    assert sofa.published.rfm == "413"  # 200 days <= 365, 1 order, 1600 >= 1500
    assert dflt.published.rfm == "215"  # 200 days <= 365 only, 1 order, >= 1000


def test_score_boundaries_to_the_millisecond(store: Store) -> None:
    profiles = Profiles.from_toml(
        """
        [profiles.default]
        recency_days = [30, 90, 180, 365]
        frequency_orders = [2, 3, 5, 10]
        frequency_window_days = 30
        monetary = [100, 250, 500, 1000]
        """
    )
    ms = 1 / 86_400_000  # of a day
    apply(
        store,
        profiles,
        [
            # exactly 30 days old: out of the 30-day window; 1 ms younger: inside
            ev(profiles, "w1", "placed", "o1", "1", customer="win", days_ago=30),
            ev(profiles, "w2", "placed", "o2", "1", customer="win", days_ago=30 - ms),
            ev(profiles, "w3", "placed", "o3", "1", customer="win", days_ago=2),
            # last order 31 days ago: days = 31 -> R=4; 1 ms less: days = 30 -> R=5
            ev(profiles, "a", "placed", "o1", "100", customer="r4", days_ago=31),
            ev(profiles, "b", "placed", "o1", "99.9999", customer="r5", days_ago=31 - ms),
        ],
    )
    win = store.reads.customer("default", "win")
    assert win is not None and win.published is not None
    assert win.published.rfm == "521"  # 2 orders in the window, 3 in a lifetime
    [last] = [d for d in payloads(store) if d["customer_id"] == "win"][-1:]
    assert (last["customer"]["orders"], last["customer"]["orders_lifetime"]) == (2, 3)
    r4 = store.reads.customer("default", "r4")
    r5 = store.reads.customer("default", "r5")
    assert r4 is not None and r4.published is not None and r4.published.rfm == "412"
    assert r5 is not None and r5.published is not None and r5.published.rfm == "511"


WEIRD_IDS = [
    "{}",
    "{07}",
    "a}{b",
    "x:y:z",
    ":",
    "*",
    "[a-z]?*",
    "line\nbreak\r\n",
    "tab\tsep",
    "🎉 émoji ✓",
    "back\\slash",
    "\x00nul",
    "c" * 200,
]


def test_customer_ids_round_trip_through_keys(store: Store, profiles: Profiles) -> None:
    events = [
        ev(profiles, f"e{i}", "placed", "o", f"{i + 1}", customer=cid)
        for i, cid in enumerate(WEIRD_IDS)
    ]
    events.append(ev(profiles, "t", "placed", "o", "7", customer="x:y:z", tenant="t.2"))
    apply(store, profiles, events)
    for i, cid in enumerate(WEIRD_IDS):
        key = keys.customer("default", cid)
        shard = shard_of("default", cid)
        assert keys.split_customer(key) == (shard, "default", cid)
        # One hash slot for everything a commit touches (Redis Cluster).
        assert (
            key_slot(key)
            == key_slot(keys.counts(shard))
            == key_slot(keys.outbox(shard, 0))
            == key_slot(keys.due(shard, 0))
        )
        c = store.reads.customer("default", cid)
        assert c is not None and c.customer_id == cid
        assert money(store, cid) == Decimal(i + 1)
    assert keys.split_customer(keys.customer("t.2", "x:y:z"))[1:] == ("t.2", "x:y:z")
    scanned = {(c.tenant, c.customer_id): c for c in store.reads.customers()}
    assert set(scanned) == {("default", cid) for cid in WEIRD_IDS} | {("t.2", "x:y:z")}
    assert {c.customer_id for c in store.reads.customers("t.2")} == {"x:y:z"}
    assert {c.customer_id for c in store.reads.customers("default")} == set(WEIRD_IDS)
    for (tenant, cid), c in scanned.items():
        fetched = store.reads.customer(tenant, cid)
        assert fetched is not None
        assert c.aggregates() == fetched.aggregates()
    # The outbox carries the exact id as the Kafka key.
    assert {k.decode() for _, _, k, _ in store.outbox.entries(0)} == {*WEIRD_IDS}


def test_shards_spread_customers() -> None:
    shards = {shard_of("default", str(i)) for i in range(2000)}
    assert shards == set(range(SHARDS))


# -- outbox ---------------------------------------------------------------------------------------


def test_outbox_per_partition(store: Store, profiles: Profiles) -> None:
    r1 = apply(
        store,
        profiles,
        [
            ev(profiles, "a1", "placed", "o1", "50", customer="alice"),
            ev(profiles, "a2", "placed", "o2", "300", customer="alice"),
        ],
        partition=3,
    )
    r2 = apply(store, profiles, [ev(profiles, "b1", "placed", "o1", "5", customer="bob")], 7)
    assert list(store.outbox.entries(0)) == []
    on3 = list(store.outbox.entries(3))
    on7 = list(store.outbox.entries(7))
    assert [k for _, _, k, _ in on3] == [b"alice", b"alice"]
    assert [k for _, _, k, _ in on7] == [b"bob"]
    assert {s for s, _, _, _ in on3} == {keys.outbox(shard_of("default", "alice"), 3)}
    assert {s for s, _, _, _ in on7} == {keys.outbox(shard_of("default", "bob"), 7)}
    # What apply_batch reports committed is exactly what sits in the streams.
    assert [(c.outbox, c.entry_id, c.key, c.value) for c in r1.committed] == on3
    assert [(c.outbox, c.entry_id, c.key, c.value) for c in r2.committed] == on7
    # Changes of one customer come out in order, each previous the last current.
    docs = [orjson.loads(v) for _, _, _, v in on3]
    assert [d["type"] for d in docs] == ["rfm.changed"] * 2
    assert docs[0]["previous"] is None
    assert docs[1]["previous"] == docs[0]["current"]
    assert (rfm_of(docs[0]["current"]), rfm_of(docs[1]["current"])) == ("511", "523")
    assert [d["cause_event_id"] for d in docs] == ["a1", "a2"]
    assert docs[1]["customer"]["monetary"] == "350.00"
    assert docs[1]["customer"]["orders"] == 2
    assert len({d["change_id"] for d in docs}) == 2
    assert store.outbox.backlog() == 3

    store.outbox.delete({on3[0][0]: [on3[0][1]]})
    assert [e[1] for e in store.outbox.entries(3)] == [on3[1][1]]
    store.outbox.delete({on3[0][0]: [on3[1][1]], on7[0][0]: [on7[0][1]]})
    assert list(store.outbox.entries(3)) == list(store.outbox.entries(7)) == []
    assert store.outbox.backlog() == 0


def test_outbox_entries_pages_through_long_streams(store: Store, profiles: Profiles) -> None:
    # Alternating cancel/place of new orders makes every event a change.
    events = []
    for i in range(25):
        events.append(ev(profiles, f"p{i}", "placed", f"o{i}", "1"))
        events.append(ev(profiles, f"x{i}", "cancelled", f"o{i}"))
    res = apply(store, profiles, events, partition=2)
    assert len(res.committed) == 50
    paged = list(store.outbox.entries(2, count=7))
    assert [e[1] for e in paged] == [c.entry_id for c in res.committed]


def test_segment_counts(store: Store, profiles: Profiles) -> None:
    apply(
        store,
        profiles,
        [
            ev(profiles, "1", "placed", "o", "2000", customer="big"),  # 515 new_customers
            ev(profiles, "2", "placed", "o", "1", customer="new1"),  # 511 new_customers
            ev(profiles, "3", "placed", "o", "1", customer="new2", days_ago=2),  # 511
            ev(profiles, "4", "placed", "o", "1", customer="old", days_ago=400),  # 111 lost
            ev(profiles, "5", "placed", "o", "1", customer="t", tenant="acme"),  # 511
        ],
    )
    assert store.reads.segment_counts() == Counter(
        {
            ("default", "new_customers"): 3,
            ("default", "lost"): 1,
            ("acme", "new_customers"): 1,
        }
    )
    # "old" orders again: leaves lost for new_customers (512 with two orders).
    apply(store, profiles, [ev(profiles, "6", "placed", "o2", "1", customer="old")])
    assert store.reads.segment_counts() == Counter(
        {
            ("default", "new_customers"): 3,
            ("default", "potential_loyalist"): 1,
            ("acme", "new_customers"): 1,
        }
    )
    fields = Counter[str]()
    for shard in range(SHARDS):
        for fld, n in store.redis.hgetall(keys.counts(shard)).items():
            fields[fld.decode()] += int(n)
    assert fields == Counter(
        {
            "default\t515\tnew_customers": 1,
            "default\t511\tnew_customers": 2,
            "default\t521\tpotential_loyalist": 1,
            "acme\t511\tnew_customers": 1,
        }
    )


def test_score_counts_sum_tenants_under_their_label_as_they_read(
    store: Store, profiles: Profiles
) -> None:
    """With `label`, tenants are summed under it (None: left out) while the counters are
    read: a read of 20,000 one-customer tenants (a cell each) holds about what one tenant's
    does, for the matrix, the population of a quantile profile and rfm_customers."""
    apply(
        store,
        profiles,
        [
            ev(profiles, "1", "placed", "o", "1", customer="a", tenant="acme"),  # 511
            ev(profiles, "2", "placed", "o", "1", customer="b", tenant="beta"),  # 511
            ev(profiles, "3", "placed", "o", "1", customer="c", days_ago=400),  # 111 lost
        ],
    )
    assert store.reads.score_counts(lambda t: None if t == "beta" else "x") == Counter(
        {("x", "511", "new_customers"): 1, ("x", "111", "lost"): 1}
    )
    assert store.reads.segment_counts(lambda t: t[0]) == Counter(
        {("a", "new_customers"): 1, ("b", "new_customers"): 1, ("d", "lost"): 1}
    )
    assert sampling.population(store.reads, "default", profiles) == 3

    def peak(tenants: list[str]) -> int:
        store.redis.flushall()
        pipe = store.redis.pipeline(transaction=False)
        for i, tenant in enumerate(tenants):
            shard = shard_of(tenant, f"c{i}")
            pipe.hincrby(keys.counts(shard), keys.count_cell(tenant, "111", "lost"), 1)
        pipe.execute()
        tracemalloc.start()
        try:
            assert sampling.population(store.reads, "default", profiles) == len(tenants)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    one = peak(["shop"] * 20_000)
    many = peak([f"t{i}" for i in range(20_000)])
    assert many < one + 1_000_000, (many, one)  # ~7 MB when every tenant was gathered


# -- concurrent writers ---------------------------------------------------------------------------


class RacingStore(Store):
    """Lets a second writer commit to the same customers between our read and our commit."""

    def __init__(self, client: redis.Redis, race: Any, times: int = 1) -> None:
        super().__init__(client)
        self.race = race
        self.times = times
        self.raced = 0
        plan = self._committer.plan

        def racing_plan(*args: Any, **kwargs: Any) -> Any:  # planned once read: race then
            if self.raced < self.times:
                self.raced += 1
                self.race()
            return plan(*args, **kwargs)

        self._committer.plan = racing_plan  # type: ignore[method-assign]


def test_conflict_is_retried(redis_client: redis.Redis, profiles: Profiles) -> None:
    other = Store(redis_client)
    theirs = ev(profiles, "theirs", "placed", "o1", "100", days_ago=10)
    ours = ev(profiles, "ours", "placed", "o2", "200", days_ago=1)
    store = RacingStore(redis_client, lambda: apply(other, profiles, [theirs]))
    result = apply(store, profiles, [ours])
    assert result.conflicts >= 1
    assert result.outcomes == Counter({"applied": 1})
    c = store.reads.customer("default", "c1")
    assert c is not None
    agg = c.aggregates()
    assert agg is not None
    assert (agg.orders_lifetime, agg.monetary) == (2, 300 * 10_000)
    docs = payloads(store)
    # Their change first (new customer), then ours on top of it: no lost update.
    assert [d["cause_event_id"] for d in docs] == ["theirs", "ours"]
    assert docs[1]["previous"] == docs[0]["current"]
    assert [c.change.payload["cause_event_id"] for c in result.committed] == ["ours"]
    assert rfm_of(docs[1]["current"]) == "523"
    assert store.reads.segment_counts() == Counter({("default", "potential_loyalist"): 1})


def test_conflict_with_the_same_event_ends_as_duplicate(
    redis_client: redis.Redis, profiles: Profiles
) -> None:
    other = Store(redis_client)
    e = ev(profiles, "e1", "placed", "o1", "100")
    store = RacingStore(redis_client, lambda: apply(other, profiles, [e]))
    result = apply(store, profiles, [e, ev(profiles, "x", "placed", "o", "1", customer="else")])
    assert result.conflicts >= 1
    assert result.outcomes == Counter({"duplicate": 1, "applied": 1})
    assert [c.key for c in result.committed] == [b"else"]
    assert len(payloads(store)) == 2  # one each, not two for c1
    assert orders(store) == 1


def test_raw_overwrite_between_read_and_commit(
    redis_client: redis.Redis, profiles: Profiles
) -> None:
    """A plain SET of the customer key (not through Store) is caught by compare-and-set."""
    key = keys.customer("default", "c1")
    cancelled = Order(cancelled=True)  # order "ext" cancelled elsewhere
    blob = Customer("default", "c1", {"ext": cancelled}).encode()
    store = RacingStore(redis_client, lambda: redis_client.set(key, blob))
    result = apply(store, profiles, [ev(profiles, "p", "placed", "ext", "10")])
    assert result.conflicts == 1
    assert result.committed == []  # the order was cancelled: nothing to count
    c = store.reads.customer("default", "c1")
    assert c is not None and c.aggregates() is None


def test_endless_conflicts_give_up_without_writing(
    redis_client: redis.Redis, profiles: Profiles
) -> None:
    key = keys.customer("default", "c1")
    tick = iter(range(10**6))
    store = RacingStore(
        redis_client,
        lambda: redis_client.set(key, Customer("default", "c1", partition=next(tick)).encode()),
        times=10**6,
    )
    with pytest.raises(StateError):
        apply(store, profiles, [ev(profiles, "p", "placed", "o", "10")])
    assert store.outbox.backlog() == 0
    assert store.reads.segment_counts() == Counter()


def test_a_flushed_script_cache_is_loaded_again(
    store: Store, profiles: Profiles, redis_client: redis.Redis
) -> None:
    """A server without the commit script (SCRIPT FLUSH, as after a restart): the calls
    meet NOSCRIPT and did not run; the script is loaded and the shards committed again."""
    apply(store, profiles, [ev(profiles, "e1", "placed", "o1", "10")])
    redis_client.script_flush()
    result = apply(
        store,
        profiles,
        [
            ev(profiles, "e2", "placed", "o2", "10"),
            ev(profiles, "x", "placed", "o", "5", customer="c2"),
        ],
    )
    assert result.outcomes == Counter({"applied": 2}) and result.conflicts == 0
    assert {c.key for c in result.committed} == {b"c1", b"c2"}
    assert (orders(store), orders(store, "c2")) == (2, 1)


def test_empty_batch(store: Store, profiles: Profiles) -> None:
    result = apply(store, profiles, [])
    assert (result.outcomes, result.committed, result.conflicts) == (Counter(), [], 0)
    assert store.redis.dbsize() == 0


# -- event clock ----------------------------------------------------------------------------------


def test_event_clock(store: Store) -> None:
    assert store.clock.read() is None
    assert store.clock.advance(AS_OF_MS) == AS_OF_MS
    assert store.clock.advance(AS_OF_MS - 1) == AS_OF_MS
    assert store.clock.read() == AS_OF_MS
    assert store.clock.advance(AS_OF_MS + 86_400_000) == AS_OF_MS + 86_400_000
    assert store.server.ping()


def test_scan_of_one_tenant_ignores_ids_that_look_like_its_keys(
    store: Store, profiles: Profiles
) -> None:
    """An id of tenant "u" containing "}:c:t:" matches the key glob of tenant "t"."""
    sneaky = ev(profiles, "e1", "placed", "o", "5", customer="x}:c:t:y", tenant="u")
    apply(store, profiles, [sneaky])
    assert [c.customer_id for c in store.reads.customers("t")] == []
    assert [(c.tenant, c.customer_id) for c in store.reads.customers("u")] == [("u", "x}:c:t:y")]


# -- a bug costs one event, never the batch ---------------------------------------------------


def test_an_event_that_raises_is_rejected_alone(
    store: Store, profiles: Profiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug triggered by one event (injected into the pure engine): the customer's other
    events and every other customer of the batch are still applied."""
    import worker.rules.engine

    real = worker.rules.engine.rescore

    def buggy(customer: Customer, *args: Any, **kw: Any) -> Any:
        if kw.get("cause_event_id") == "poison":
            raise ValueError("year 0 is out of range")
        return real(customer, *args, **kw)

    monkeypatch.setattr(worker.rules.engine, "rescore", buggy)
    events = [
        ev(profiles, "a1", "placed", "o1", "100", customer="alice"),
        ev(profiles, "poison", "placed", "o2", "5", customer="alice"),
        ev(profiles, "a3", "placed", "o3", "20", customer="alice"),
        ev(profiles, "b1", "placed", "o1", "30", customer="bob"),
    ]
    result = apply(store, profiles, events)
    assert [(e.event_id, str(exc)) for e, _, exc in result.rejected] == [
        ("poison", "year 0 is out of range")
    ]
    assert result.outcomes == Counter({"applied": 3})
    assert orders(store, "alice") == 2 and money(store, "alice") == Decimal(120)
    assert orders(store, "bob") == 1
    # The rejected event left no trace: applying it again (fixed) is not a duplicate.
    monkeypatch.setattr(worker.rules.engine, "rescore", real)
    assert apply(store, profiles, [events[1]]).outcomes == Counter({"applied": 1})


def test_a_state_that_cannot_be_read_rejects_its_events_only(
    store: Store, profiles: Profiles
) -> None:
    store.redis.set(keys.customer("default", "broken"), b'{"o": {"x": [1]}, "s": "???"')
    events = [
        ev(profiles, "x1", "placed", "o1", "10", customer="broken"),
        ev(profiles, "x2", "placed", "o2", "10", customer="broken"),
        ev(profiles, "ok", "placed", "o1", "10", customer="fine"),
    ]
    result = apply(store, profiles, events)
    assert sorted(e.event_id for e, _, _ in result.rejected) == ["x1", "x2"]
    assert orders(store, "fine") == 1
    assert store.redis.get(keys.customer("default", "broken")) == b'{"o": {"x": [1]}, "s": "???"'


# -- customers remembered between batches ---------------------------------------------------


def test_a_state_written_elsewhere_is_read_not_remembered(
    redis_client: redis.Redis, profiles: Profiles
) -> None:
    """A store remembers the long customers it decided (no decoding when the same bytes
    come back); another worker's write in between is read, never overwritten from memory."""
    ours, theirs = Store(redis_client), Store(redis_client)
    many = LONG_HISTORY
    history = [ev(profiles, f"e{i}", "placed", f"o{i}", "1", days_ago=30) for i in range(many)]
    apply(ours, profiles, history)
    apply(theirs, profiles, [ev(profiles, "theirs", "placed", "theirs", "200", days_ago=20)])
    apply(ours, profiles, [ev(profiles, "ours", "placed", "ours", "300", days_ago=10)])
    c = ours.reads.customer("default", "c1")
    assert c is not None and {"theirs", "ours"} <= set(c.orders) and len(c.orders) == many + 2
    assert money(ours) == Decimal(many + 500)


def test_a_remembered_customer_is_not_decoded_again(
    store: Store, profiles: Profiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = LONG_HISTORY  # fewer are decoded each time: it costs less than keeping them
    apply(store, profiles, [ev(profiles, f"e{i}", "placed", f"o{i}", "10") for i in range(many)])
    decoded: list[bytes | None] = []
    real = Customer.decode

    def counting(tenant: str, customer_id: str, blob: bytes | None) -> Customer:
        decoded.append(blob)
        return real(tenant, customer_id, blob)

    monkeypatch.setattr(Customer, "decode", staticmethod(counting))
    apply(store, profiles, [ev(profiles, "last", "placed", "last", "10")])
    assert decoded == []
    assert orders(store) == many + 1  # get_customer decodes what Redis holds
    assert decoded and decoded[-1] == store.redis.get(keys.customer("default", "c1"))


def test_a_decision_that_raises_forgets_the_customer(
    store: Store, profiles: Profiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poison event is merged into the customer before the engine raises: that
    half-changed customer must not be reused for the next batch."""
    import worker.rules.engine

    real = worker.rules.engine.rescore

    def buggy(customer: Customer, *args: Any, **kw: Any) -> Any:
        if kw.get("cause_event_id") == "poison":
            raise ValueError("boom")
        return real(customer, *args, **kw)

    many = LONG_HISTORY  # long enough to be remembered
    apply(store, profiles, [ev(profiles, f"e{i}", "placed", f"o{i}", "1") for i in range(many)])
    monkeypatch.setattr(worker.rules.engine, "rescore", buggy)
    poison = ev(profiles, "poison", "placed", "poison", "5")
    assert len(apply(store, profiles, [poison]).rejected) == 1
    apply(store, profiles, [ev(profiles, "next", "placed", "next", "20")])
    c = store.reads.customer("default", "c1")
    assert c is not None and "poison" not in c.orders and len(c.orders) == many + 1
    assert money(store) == Decimal(many + 20)


def test_remembered_customers_stay_within_their_order_budget() -> None:
    from worker.state.known import KnownCustomers

    def customer(name: str, orders: int) -> Customer:
        return Customer("default", name, {f"o{i}": Order(i, 1) for i in range(orders)})

    known = KnownCustomers(budget=10, min_orders=2)
    known.put(b"small", b"S", customer("small", 1))  # decoding it costs less than keeping it
    assert known.take(b"small", b"S") is None
    known.put(b"a", b"A", customer("a", 4))
    known.put(b"b", b"B", customer("b", 4))
    known.put(b"huge", b"H", customer("huge", 11))  # more than the whole budget: not kept
    assert known.take(b"huge", b"H") is None
    known.put(b"c", b"C", customer("c", 4))  # 12 > 10: the least recently used goes
    assert known.take(b"a", b"A") is None
    assert known.take(b"c", b"other bytes") is None  # and it is forgotten
    assert known.take(b"c", b"C") is None
    b = known.take(b"b", b"B")
    assert b is not None and b.customer_id == "b"


# -- Redis losing writes under a running worker: vouched offsets ------------------------------


def _vouch(store: Store, offset: int, partition: int = 0) -> None:
    store.applied.mark({partition: (f"orders:{partition}", offset)})


def test_a_flushed_redis_refuses_the_next_commit_and_records_nothing(
    store: Store, profiles: Profiles, redis_client: redis.Redis
) -> None:
    """Once the shards vouched for offset 10, a FLUSHALL is seen by the next commit call:
    nothing of it is written (no customer, no outbox entry, no applied record)."""
    from worker.errors import StateLostError

    apply(store, profiles, [ev(profiles, "e1", "placed", "o1", "10")])
    _vouch(store, 10)
    assert store.applied.floors == {0: ("orders:0", 10)}
    redis_client.flushall()
    with pytest.raises(StateLostError, match="lost writes"):
        apply(store, profiles, [ev(profiles, "e2", "placed", "o2", "10", customer="c2")])
    assert redis_client.keys(b"*") == []
    with pytest.raises(StateLostError, match="64 shard"):
        _vouch(store, 11)
    assert redis_client.keys(b"*") == []


def test_a_shard_rolled_back_below_its_vouched_offset_is_refused(
    store: Store, profiles: Profiles, redis_client: redis.Redis
) -> None:
    """A failover to a replica that missed writes: one shard's record went back from 20
    to 10. The commit on that shard and the next record are refused; a shard that holds
    more than vouched (another owner went further) is never lowered."""
    from worker.errors import StateLostError

    event = ev(profiles, "e1", "placed", "o1", "10")
    shard = shard_of("default", "c1")
    _vouch(store, 20)
    redis_client.hset(keys.applied(shard), "orders:0", 10)
    with pytest.raises(StateLostError):
        apply(store, profiles, [event])
    assert store.reads.customer("default", "c1") is None
    with pytest.raises(StateLostError):
        _vouch(store, 30)
    redis_client.hset(keys.applied(shard), "orders:0", 50)  # another owner is further
    apply(store, profiles, [event])
    _vouch(store, 30)
    assert int(redis_client.hget(keys.applied(shard), "orders:0")) == 50
    assert int(redis_client.hget(keys.applied((shard + 1) % SHARDS), "orders:0")) == 30


def test_without_vouched_offsets_nothing_is_checked(
    store: Store, profiles: Profiles, redis_client: redis.Redis
) -> None:
    """A partition never recorded (floor absent or -1) commits as before."""
    store.applied.floors[0] = ("orders:0", -1)
    apply(store, profiles, [ev(profiles, "e1", "placed", "o1", "10")])
    assert store.reads.customer("default", "c1") is not None


def test_the_commit_paths_mget_reads_what_redis_holds(redis_client: redis.Redis) -> None:
    redis_client.set(b"k1", b"v1")
    redis_client.set("ключ", b"\x00binary\r\n")
    assert mget(redis_client, [b"k1", b"absent", "ключ".encode()]) == [
        b"v1",
        None,
        b"\x00binary\r\n",
    ]
