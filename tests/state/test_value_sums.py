"""Value per segment (docs/value.md): the expected-value sums the commits keep beside the
segment counters, against a real Redis. Whatever the events, each (tenant, rfm, segment)
sum equals the sum of the stored customers' expected values (as last committed) in that
cell; a profile without a value model keeps none; the matrix reads them."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime

import orjson

from tests.factories import AS_OF_MS
from tests.rules.test_profiles import VALID_BODY
from tests.rules.test_value import FIT, VALUE_BODY
from tests.state.test_store import apply, ev
from worker import metrics
from worker.config import Settings
from worker.rules.instants import epoch_ms
from worker.rules.money import SCALE
from worker.rules.profiles import Profiles
from worker.rules.scoring import score
from worker.state.store import Store
from worker.web import views
from worker.web.api import Api

VALUE_PROFILES = f"""
[profiles.default]
{VALUE_BODY}
value_bands = [20, 60, 150]

[profiles.plain]
{VALID_BODY}
"""


def value_profiles() -> Profiles:
    profiles = Profiles.from_toml(VALUE_PROFILES)
    profiles.use_fit("default", FIT)
    return profiles


def stored_values(store: Store) -> Counter[tuple[str, str, str]]:
    """Each stored customer's committed expected value, summed per (tenant, rfm, segment)."""
    sums: Counter[tuple[str, str, str]] = Counter()
    for customer in store.reads.customers():
        pub = customer.published
        if pub is not None and pub.value:
            sums[(customer.tenant, pub.rfm, pub.segment)] += pub.value
    return sums


def assert_fresh(store: Store, profiles: Profiles) -> None:
    """Every customer's committed value is its expected value at the commit's instant (all
    commits here are at AS_OF_MS), a change published or not."""
    profile = profiles.for_tenant("default")
    for customer in store.reads.customers():
        agg = customer.aggregates()
        if agg is None:  # every order cancelled: out of the counts and the sums
            assert customer.published is None
            continue
        assert customer.published is not None
        expected = score(agg, AS_OF_MS, profile).expected_value
        units = None if expected is None else max(0, round(expected * SCALE))
        assert customer.published.value == units, (customer.customer_id, agg)


def test_the_sums_follow_every_commit(store: Store) -> None:
    """Random batches of orders, refunds and cancels over 40 customers: after each batch,
    the sums equal what the stored customers say, cell by cell, and each customer's value
    is the one of its last commit."""
    profiles = value_profiles()
    rng = random.Random(7)
    placed: list[tuple[str, str]] = []
    for batch in range(12):
        events = []
        for n in range(30):
            customer = f"c{rng.randrange(40)}"
            kind = rng.choice(["placed"] * 6 + ["refunded", "cancelled"])
            if kind == "placed" or not placed:
                order = f"o{batch}-{n}"
                placed.append((customer, order))
                amount = str(rng.choice([9, 25, 40, 80, 250]))
                events.append(
                    ev(profiles, f"e{batch}-{n}", "placed", order, amount,
                       customer=customer, days_ago=rng.uniform(1, 400))
                )  # fmt: skip
            else:
                customer, order = rng.choice(placed)
                amount = "5" if kind == "refunded" else None
                events.append(
                    ev(profiles, f"e{batch}-{n}", kind, order, amount,
                       customer=customer, days_ago=rng.uniform(0, 1))
                )  # fmt: skip
        apply(store, profiles, events)
        sums = store.reads.value_sums()
        assert sums == stored_values(store)
        assert_fresh(store, profiles)
    assert sum(sums.values()) > 0
    # and the matrix reads them: per cell, per segment, in total, and the value at risk
    at_risk = views.at_risk(profiles.for_tenant("default"))
    assert at_risk == ["at_risk", "cant_lose_them", "about_to_sleep"]  # the default
    doc = views.matrix(store, "default", AS_OF_MS, at_risk=at_risk)
    total = sum(sums.values()) / SCALE
    assert abs(doc["expected_value"] - total) < 1e-6
    assert abs(sum(c["expected_value"] for c in doc["cells"]) - total) < 1e-6
    per_segment = Counter[str]()
    for (_t, _rfm, segment), units in sums.items():
        per_segment[segment] += units
    assert doc["segment_expected_value"] == {
        name: per_segment[name] / SCALE for name in doc["segment_expected_value"]
    }
    risk = sum(per_segment[s] for s in at_risk) / SCALE
    assert doc["value_at_risk"] == {"segments": at_risk, "expected_value": risk}


def test_a_profile_without_a_value_model_keeps_no_sums(store: Store) -> None:
    profiles = Profiles.builtin()
    apply(store, profiles, [ev(profiles, "e1", "placed", "o1", "30")])
    assert store.reads.value_sums() == Counter()
    assert "expected_value" not in views.matrix(store, "default", AS_OF_MS)


def test_the_api_and_the_gauge_carry_the_sums(store: Store) -> None:
    """/v1/matrix of a value model profile carries the sums, of another none; the
    rfm_expected_value gauge reads them per segment, in currency units."""
    profiles = value_profiles()
    apply(store, profiles, [ev(profiles, f"e{n}", "placed", f"o{n}", "40", customer=f"c{n % 5}",
                               days_ago=30 * n + 1) for n in range(20)])  # fmt: skip
    api = Api(Settings(), profiles, store, healthy=lambda: True, not_ready=list)
    status, _ctype, body, _headers = api.handle("/v1/matrix?tenant=default")
    doc = orjson.loads(body)
    assert status == 200 and doc["expected_value"] > 0
    at_risk = views.at_risk(profiles.for_tenant("default"))
    assert doc == views.matrix(store, "default", doc_instant(doc), at_risk=at_risk)
    status, _ctype, body, _headers = api.handle("/v1/matrix?tenant=plain")
    assert "expected_value" not in orjson.loads(body)  # a profile without a value model

    collector = metrics.CustomersCollector(
        store.reads.segment_values,
        profiles.names(),
        ttl=0,
        family=("rfm_expected_value", "test"),
        per=SCALE,
    )
    [family] = list(collector.collect())
    gauge = {s.labels["segment"]: s.value for s in family.samples}
    assert gauge == doc["segment_expected_value"]


def doc_instant(doc: dict[str, object]) -> int:
    return epoch_ms(datetime.fromisoformat(str(doc["as_of"])))
