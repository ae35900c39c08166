"""The segment index (worker/state/segment_index.py) against a real Redis: after any
batches (orders, refunds, cancels, duplicates, a decay sweep, a changed profile, the
per-customer bound) every set equals a recomputation from the stored customers; and the
ranked pages (GET /v1/segments/{tenant}/{segment}/customers) list every member exactly
once, in order, for each ordering, with and without cell filters."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import orjson
import pytest

from tests.factories import AS_OF_MS, DAY_MS
from tests.state.test_store import apply, ev
from tests.state.test_value_sums import value_profiles
from worker.config import Settings
from worker.rules import customer as customer_module
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state import keys, segment_index
from worker.state.store import Store
from worker.web.api import Api

INDEX_PATTERN = b"rfm:{*}:m:*"


def recomputed_index(store: Store) -> dict[bytes, set[bytes]]:
    """Every set the index should hold, from the stored customers alone."""
    sets: dict[bytes, set[bytes]] = defaultdict(set)
    for customer in store.reads.customers():
        entry = segment_index.entry_of(customer)
        if entry is None:
            continue
        shard = keys.shard_of(customer.tenant, customer.customer_id)
        ranks = {"s": entry.spend, "l": entry.last_order, "o": entry.orders, "v": entry.value}
        for code, rank in ranks.items():
            if rank is None:
                continue
            key = keys.segment_index(shard, customer.tenant, code, entry.r, entry.f, entry.segment)
            sets[key].add(segment_index.member(rank, customer.customer_id))
    return dict(sets)


def stored_index(store: Store) -> dict[bytes, set[bytes]]:
    """Every set the index holds (each member's score checked to be 0)."""
    sets: dict[bytes, set[bytes]] = {}
    for key in store.redis.scan_iter(match=INDEX_PATTERN, count=1000):
        members = store.redis.zrange(key, 0, -1, withscores=True)
        assert {score for _, score in members} == {0.0}, key
        sets[key] = {m for m, _ in members}
    return sets


def assert_index_exact(store: Store) -> None:
    recomputed, stored = recomputed_index(store), stored_index(store)
    assert stored.keys() == recomputed.keys()
    for key, members in recomputed.items():
        assert stored[key] == members, key


def random_batches(store: Store, profiles: Profiles, seed: int, batches: int = 10) -> None:
    """Orders, refunds, cancels (some before their order) and redeliveries over 60
    customers of two tenants; the index checked after every batch."""
    rng = random.Random(seed)
    placed: list[tuple[str, str, str]] = []
    sent: list[Any] = []
    for batch in range(batches):
        events = []
        for n in range(40):
            tenant = rng.choice(["default", "plain"])
            customer = f"c{rng.randrange(60)}"
            kind = rng.choice(["placed"] * 6 + ["refunded", "cancelled"])
            if kind == "placed" or not placed:
                order = f"o{batch}-{n}"
                placed.append((tenant, customer, order))
                amount = str(rng.choice([9, 25, 40, 80, 250]))
                events.append(
                    ev(profiles, f"e{batch}-{n}", "placed", order, amount, tenant=tenant,
                       customer=customer, days_ago=rng.uniform(1, 400))
                )  # fmt: skip
            else:
                tenant, customer, order = rng.choice(placed)
                amount = "5" if kind == "refunded" else None
                events.append(
                    ev(profiles, f"e{batch}-{n}", kind, order, amount, tenant=tenant,
                       customer=customer, days_ago=rng.uniform(0, 1))
                )  # fmt: skip
        events += rng.sample(sent, min(len(sent), 8))  # redelivered: duplicates
        sent += events
        apply(store, profiles, events)
        assert_index_exact(store)


def two_tenant_profiles() -> Profiles:
    """Tenant `default` with a value model (and its fit), `plain` without one."""
    return value_profiles()


def test_the_index_follows_every_commit(store: Store) -> None:
    profiles = two_tenant_profiles()
    random_batches(store, profiles, seed=3)
    assert stored_index(store)
    codes = {key.split(b":")[4] for key in stored_index(store)}
    assert codes == {b"s", b"l", b"o", b"v"}  # the value ranking: the value model's tenant
    assert not any(
        key.split(b":")[3] == b"plain" and key.split(b":")[4] == b"v" for key in stored_index(store)
    )
    # a decay sweep months later moves customers between segments and cells
    later = AS_OF_MS + 200 * DAY_MS
    zsets = [(shard, 0) for shard in range(keys.SHARDS)]
    step = causes.sweep_step(store, zsets, profiles, as_of_ms=later, now_ms=later, limit=1000)
    assert step.result.committed
    assert_index_exact(store)


def test_the_index_follows_a_changed_profile_and_the_per_customer_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles = Profiles.builtin()
    random_batches(store, profiles, seed=5, batches=4)
    # a changed profile: the marking pass, then the sweep that rescores
    changed = Profiles.from_toml(
        "[profiles.default]\nrecency_days = [3, 10, 30, 90]\nfrequency_orders = [2, 3, 5, 9]\n"
        "monetary = [10, 50, 100, 500]\n"
    )
    found = [k for chunk in store.reads.key_chunks() for k in chunk]
    causes.mark_due(store, found, changed, AS_OF_MS)
    zsets = [(shard, 0) for shard in range(keys.SHARDS)]
    causes.sweep_step(store, zsets, changed, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS, limit=1000)
    assert_index_exact(store)
    # the bound: a customer's oldest orders fold into its aggregates
    monkeypatch.setattr(customer_module, "MAX_ORDERS", 5)
    monkeypatch.setattr(customer_module, "FOLD_CHUNK", 2)
    events = [
        ev(changed, f"b{n}", "placed", f"ob{n}", "10", customer="bulk", days_ago=30 - n)
        for n in range(12)
    ]
    for n in range(0, 12, 3):
        apply(store, changed, events[n : n + 3])
        assert_index_exact(store)
    bulk = store.reads.customer("default", "bulk")
    assert bulk is not None and bulk.folded is not None


# -- pages -------------------------------------------------------------------------------------


def api_of(store: Store, profiles: Profiles) -> Api:
    store.clock.advance(AS_OF_MS)
    return Api(Settings(), profiles, store, healthy=lambda: True, not_ready=list)


def get(api: Api, target: str) -> tuple[int, Any]:
    response = api.handle(target)
    return response.status, orjson.loads(response.body)


def expected_order(store: Store, tenant: str, segment: str, code: str, cell: Any) -> list[str]:
    """The segment's customer ids in the order the listing must give them."""
    ranked = []
    for customer in store.reads.customers(tenant):
        entry = segment_index.entry_of(customer)
        if entry is None or entry.segment != segment:
            continue
        if (cell[0] is not None and entry.r != cell[0]) or (
            cell[1] is not None and entry.f != cell[1]
        ):
            continue
        rank = dict(zip("slov", entry[3:], strict=True))[code]
        if rank is not None:
            ranked.append(segment_index.member(rank, customer.customer_id))
    return [segment_index.customer_id_of(m) for m in sorted(ranked)]


def listed(api: Api, tenant: str, segment: str, query: str, limit: int) -> list[str]:
    """Every page of a listing, followed by its cursors; the ids in the order listed."""
    ids: list[str] = []
    cursor = ""
    for _ in range(1000):
        status, doc = get(
            api, f"/v1/segments/{tenant}/{segment}/customers?limit={limit}{query}{cursor}"
        )
        assert status == 200, doc
        assert len(doc["customers"]) <= limit
        assert doc["tenant"] == tenant and doc["segment"] == segment
        ids += [c["customer_id"] for c in doc["customers"]]
        if doc["next"] is None:
            return ids
        assert len(doc["customers"]) == limit
        cursor = f"&cursor={doc['next']}"
    raise AssertionError("no last page")


def test_pages_list_every_member_once_in_order(store: Store) -> None:
    profiles = two_tenant_profiles()
    random_batches(store, profiles, seed=11, batches=8)
    api = api_of(store, profiles)
    counts = store.reads.score_counts()
    segments = sorted({(t, s) for t, _rfm, s in counts})
    cells = sorted({(t, s, int(rfm[0]), int(rfm[1])) for t, rfm, s in counts})
    checked = 0
    for tenant, segment in segments:
        orders = ["spend", "last_order", "orders"] + (["expected_value"] * (tenant == "default"))
        for order in orders:
            code = segment_index.ORDERINGS[order]
            want = expected_order(store, tenant, segment, code, (None, None))
            for limit in (1, 3, 1000):
                assert listed(api, tenant, segment, f"&order={order}", limit) == want
            checked += len(want)
    assert checked > 100
    for tenant, segment, r, f in cells:
        for query, cell in (
            (f"&r={r}&f={f}", (r, f)),
            (f"&r={r}", (r, None)),
            (f"&f={f}", (None, f)),
        ):
            want = expected_order(store, tenant, segment, "s", cell)
            assert want and listed(api, tenant, segment, query, 2) == want
    # the rows are the customer views
    status, doc = get(api, "/v1/segments/default/" + segments[0][1] + "/customers?limit=1")
    assert status == 200 and doc["order"] == "spend"
    first = doc["customers"][0]
    status, alone = get(api, f"/v1/customers/default/{first['customer_id']}")
    assert {**alone, "as_of": None} == {**first, "as_of": None}  # the wall clock moved


def test_a_listing_refuses_what_it_cannot_answer(store: Store) -> None:
    profiles = two_tenant_profiles()
    random_batches(store, profiles, seed=2, batches=2)
    api = api_of(store, profiles)
    base = "/v1/segments/default/champions/customers"
    for query, code in [
        ("?limit=0", "invalid_limit"),
        ("?limit=1001", "invalid_limit"),
        ("?limit=x", "invalid_limit"),
        ("?order=price", "invalid_order"),
        ("?r=0", "invalid_cell"),
        ("?f=10", "invalid_cell"),
        ("?cursor=%%%", "invalid_cursor"),
        ("?cursor=bm90IGEgY3Vyc29y", "invalid_cursor"),
        ("?limit=1&limit=2", "bad_request"),
    ]:
        status, doc = get(api, base + query)
        assert (status, doc["error"]) == (400, code), query
    status, doc = get(api, "/v1/segments/plain/champions/customers?order=expected_value")
    assert (status, doc["error"]) == (400, "no_value_model")
    assert "value model" in doc["detail"]
    # a cursor of one ordering is refused by another
    tenant, segment = max(store.reads.segment_counts().items(), key=lambda kv: kv[1])[0]
    status, doc = get(api, f"/v1/segments/{tenant}/{segment}/customers?limit=1")
    assert status == 200 and doc["next"]
    other = f"/v1/segments/{tenant}/{segment}/customers?order=orders&cursor={doc['next']}"
    status, doc = get(api, other)
    assert (status, doc["error"]) == (400, "invalid_cursor")
    status, doc = get(api, "/v1/segments/default/no-such-segment/customers")
    assert status == 200 and doc["customers"] == [] and doc["next"] is None
    status, doc = get(api, "/v1/segments/bad:tenant/x/customers")
    assert (status, doc["error"]) == (400, "invalid_tenant")


def test_the_index_on_the_cluster(cluster_client: Any) -> None:
    """On Redis Cluster (one shard per call, the index in the shard's slot): the sets equal
    the recomputation after batches with duplicates, and pages list every member once."""
    from tests.state.test_cluster import apply as cluster_apply
    from tests.state.test_cluster import store_events

    store = Store(cluster_client)
    profiles = Profiles.builtin()
    events = store_events(seed=4)
    quarter = len(events) // 4 + 1
    for start in range(0, len(events), quarter):
        result = cluster_apply(store, profiles, events[start : start + quarter])
        assert not result.failed and not result.rejected
        assert_index_exact(store)
    api = api_of(store, profiles)
    for (tenant, segment), n in store.reads.segment_counts().items():
        for order in ("spend", "last_order"):
            want = expected_order(store, tenant, segment, order[0], (None, None))
            assert len(want) == n
            assert listed(api, tenant, segment, f"&order={order}", 7) == want
