"""Quantile profiles: cut points (worker/rules/quantiles.py), the profile option, scoring and decay
with tied cut points, and the sweeper keeping the cut points of a live base up to date
(real Redis).

The reference for every score is the rank definition, computed independently here: with L
customers strictly below a customer's value among n, F and M are 1 + min(4, 5L // n) and R
is 5 - min(4, 5L // n) (L counting strictly fewer days).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import placed_at, valid_event
from tests.reference import rank_score
from tests.strategies import first_change, histories, instants, key
from worker import metrics
from worker.errors import ProfileError
from worker.rules.aggregates import Aggregates
from worker.rules.decay import next_due
from worker.rules.instants import DAY_MS
from worker.rules.money import to_units
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles
from worker.rules.quantiles import Cuts, cut_points, quintile_cuts
from worker.rules.scoring import at_least_score, recency_score, score
from worker.services import causes, sampling
from worker.services.quantile_upkeep import load_cuts
from worker.services.sweeper import Sweeper
from worker.state import keys
from worker.state.store import Committed, Store

T0 = int(datetime(2026, 3, 1, 9, 15, tzinfo=UTC).timestamp()) * 1000
TENANT = "shop"
QUANTILE_TOML = f"""
[profiles.{TENANT}]
mode = "quantiles"
quantiles_every_minutes = 60
"""


# -- cut points -------------------------------------------------------------------------------


def test_cut_points_of_a_simple_population() -> None:
    assert quintile_cuts(list(range(1, 11))) == (2, 4, 6, 8)
    assert quintile_cuts([7]) == (7, 7, 7, 7)
    assert quintile_cuts([3, 1, 2]) == (1, 2, 2, 3)  # ceil(k*3/5) = 1, 2, 2, 3
    assert quintile_cuts([]) == ()
    assert cut_points([], [], []) is None
    with pytest.raises(ValueError, match="one value per customer"):
        cut_points([1], [1, 2], [1])


def test_cuts_json_roundtrip() -> None:
    cuts = cut_points([5, 1, 9], [1, 2, 3], [100, 0, 5], version=7, computed_at=T0)
    assert cuts is not None
    assert Cuts.from_json(cuts.to_json()) == cuts
    assert orjson.loads(cuts.to_json())["version"] == 7
    assert (cuts.population, cuts.sampled) == (3, 3)


VALUES = st.lists(st.integers(-2, 60), min_size=1, max_size=60)  # small range: many ties


@settings(max_examples=300, derandomize=True, deadline=None)
@given(data=st.data(), n=st.integers(1, 60))
def test_scores_from_cut_points_are_the_rank_quintiles(data: st.DataObject, n: int) -> None:
    days = data.draw(st.lists(st.integers(-1, 400), min_size=n, max_size=n), label="days")
    days = data.draw(st.sampled_from([days, [d % 7 for d in days]]), label="ties")
    orders = data.draw(st.lists(st.integers(0, 12), min_size=n, max_size=n), label="orders")
    money = data.draw(st.lists(st.integers(0, 3_000_000), min_size=n, max_size=n), label="m")
    cuts = cut_points(days, orders, money)
    assert cuts is not None
    for cut in (cuts.recency_days, cuts.frequency_orders, cuts.monetary):
        assert len(cut) == 4 and list(cut) == sorted(cut)
    profile = QUANTILE.scored_by(cuts)
    for d, o, m in zip(days, orders, money, strict=True):
        assert recency_score(d, profile.recency_days) == rank_score(d, days, recency=True)
        assert at_least_score(o, profile.frequency_orders) == rank_score(o, orders)
        assert at_least_score(m, profile.monetary_units) == rank_score(m, money)
    # Values outside the population score like the definition says too.
    for extra in (min(days) - 1, max(days) + 1):
        assert recency_score(extra, profile.recency_days) == rank_score(extra, days, recency=True)
    assert at_least_score(max(money) + 1, profile.monetary_units) == 5


# -- the profile option -------------------------------------------------------------------------

QUANTILE = Profiles.from_toml(QUANTILE_TOML).configured[TENANT]


def load(body: str) -> Profiles:
    return Profiles.from_toml(f"[profiles.p]\n{body}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'mode = "quantiles"\nrecency_days = [1, 2]',
            'mode = "quantiles" takes no recency_days: the thresholds are the quintiles',
        ),
        (
            'mode = "quantiles"\nfrequency_orders = [2]\nmonetary = [10]',
            "takes no frequency_orders, monetary",
        ),
        (
            "recency_days = [1]\nfrequency_orders = [2]\nmonetary = [3]\n"
            "quantiles_every_minutes = 5",
            'quantiles_every_minutes need(s) mode = "quantiles"',
        ),
        (
            "recency_days = [1]\nfrequency_orders = [2]\nmonetary = [3]\nquantiles_sample = 500",
            'quantiles_sample need(s) mode = "quantiles"',
        ),
        ('mode = "quantiles"\nquantiles_every_minutes = 0', "quantiles_every_minutes"),
        ('mode = "quantiles"\nquantiles_sample = 99', "quantiles_sample"),
        ('mode = "percentiles"', "mode"),
        (
            "frequency_orders = [2]\nmonetary = [3]",
            'recency_days is required (a list of 1 to 8 thresholds), unless mode = "quantiles"',
        ),
        (
            'mode = "quantiles"\n[[profiles.p.triggers]]\nname = "t"\nwhen = "f_reaches"\n'
            "value = 6",
            "value 6 is outside F's levels 1..5 (quintiles)",
        ),
        ("recency_days = [1, 1]\nfrequency_orders = [2]\nmonetary = [3]", "strictly increasing"),
    ],
)
def test_profile_validation(body: str, message: str) -> None:
    with pytest.raises(ProfileError) as exc:
        load(body)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_quantile_profile_and_the_profile_it_scores_with() -> None:
    profiles = Profiles.from_toml(
        QUANTILE_TOML
        + f"""currency = "EUR"
frequency_window_days = 365
overdue_factor = 1.5
[[profiles.{TENANT}.triggers]]
name = "top"
when = "r_becomes"
value = 5
[profiles.other]
recency_days = [1, 2]
frequency_orders = [2]
monetary = [3]
"""
    )
    assert profiles.quantile_names() == [TENANT]
    configured = profiles.configured[TENANT]
    assert (configured.quantiles_every_minutes, configured.quantiles_sample) == (60, 100_000)
    # Before any cut points: 333 for everyone, and never due by recency.
    before = profiles.for_tenant(TENANT)
    assert before.mode == "thresholds" and before.name == TENANT
    assert (before.currency, before.frequency_window_days, before.overdue_factor) == (
        "EUR",
        365,
        1.5,
    )
    assert [t.name for t in before.triggers] == ["top"]
    agg = Aggregates(T0 - 900 * DAY_MS, T0, 3, to_units("999999999.99"), (T0 - 900 * DAY_MS,) * 3)
    for as_of in (T0, T0 + 3000 * DAY_MS):
        assert score(agg, as_of, before).rfm == "333"
    fresh = Aggregates(T0, T0, 1, 0, (T0,))
    assert score(fresh, T0, before).rfm == "333"
    assert next_due(fresh, before, T0, None) is None
    # With cut points: their thresholds; another version for other cut points only.
    cuts = cut_points([1, 5, 9, 20, 40], [1, 1, 2, 3, 9], [10, 20, 30, 40, 50], version=1)
    assert cuts is not None
    used = profiles.use_cuts(TENANT, cuts)
    assert profiles.for_tenant(TENANT) is used and profiles.cuts[TENANT] == cuts
    assert used.recency_days == [1, 5, 9, 20]
    assert used.frequency_orders == [2, 2, 3, 4]
    assert used.monetary_units == (11, 21, 31, 41)
    assert used.version != before.version
    again = Cuts(2, T0, 5, 5, cuts.recency_days, cuts.frequency_orders, cuts.monetary)
    assert profiles.use_cuts(TENANT, again).version == used.version  # same thresholds
    other = cut_points([1, 5, 9, 21, 40], [1, 1, 2, 3, 9], [10, 20, 30, 40, 50])
    assert profiles.use_cuts(TENANT, other).version != used.version
    with pytest.raises(ValueError, match="not in quantiles mode"):
        profiles.use_cuts("other", cuts)
    # Thresholds profiles keep their version from before quantile mode existed.
    assert Profiles.builtin().default.version == "871c3f4b"


def test_the_default_profile_may_be_a_quantile_profile() -> None:
    profiles = Profiles.from_toml('[profiles.default]\nmode = "quantiles"\n')
    assert profiles.for_tenant("anyone").recency_days == profiles.default.recency_days
    cuts = cut_points([3, 4], [1, 2], [5, 6])
    profiles.use_cuts("default", cuts)
    assert profiles.for_tenant("anyone").recency_days == [3, 3, 4, 4]


# -- equal thresholds: scoring and decay ----------------------------------------------------------


def test_scoring_with_equal_thresholds_skips_the_empty_levels() -> None:
    assert [recency_score(d, [10, 10, 20, 30]) for d in (9, 10, 11, 20, 21, 31)] == [
        5,
        5,
        3,
        3,
        2,
        1,
    ]
    assert [at_least_score(v, [2, 2, 2, 5]) for v in (0, 1, 2, 4, 5)] == [1, 1, 4, 4, 5]


def test_decay_with_equal_recency_thresholds_jumps_levels() -> None:
    profile = QUANTILE.scored_by(Cuts(1, T0, 9, 9, (10, 10, 20, 30), (1, 1, 1, 1), (0, 0, 0, 0)))
    agg = Aggregates(T0, T0, 1, 100, (T0,))
    at = T0 + 5 * DAY_MS
    assert score(agg, at, profile).r == 5
    due = next_due(agg, profile, at, None)
    assert due == T0 + 11 * DAY_MS
    assert score(agg, due - 1, profile).r == 5 and score(agg, due, profile).r == 3
    assert next_due(agg, profile, due, None) == T0 + 21 * DAY_MS


def test_decay_with_equal_frequency_thresholds() -> None:
    # F thresholds [2, 2, 2, 5] (cut points 1, 1, 1, 4), a 30-day window.
    profile = Profiles.from_toml(
        QUANTILE_TOML + "frequency_window_days = 30\noverdue_factor = 0\n"
    ).use_cuts(TENANT, Cuts(1, T0, 9, 9, (400, 500, 600, 700), (1, 1, 1, 4), (0, 0, 0, 0)))
    times = (T0, T0 + 10 * DAY_MS)
    agg = Aggregates(times[0], times[1], 2, 100, times)
    at = T0 + 12 * DAY_MS
    assert score(agg, at, profile).f == 4
    due = next_due(agg, profile, at, None)
    assert due == T0 + 30 * DAY_MS  # the first order leaves the window: 1 order, F 1
    assert score(agg, due - 1, profile).f == 4 and score(agg, due, profile).f == 1


@st.composite
def derived_profiles(draw: st.DrawFn) -> Profile:
    """Profiles from the cut points of random populations: equal thresholds are common."""
    n = draw(st.integers(1, 12))
    column = st.lists(st.integers(-1, 60), min_size=n, max_size=n)
    cuts = cut_points(draw(column), draw(column), [v * 50_000 for v in draw(column)])
    window = draw(st.none() | st.integers(1, 400))
    factor = draw(st.sampled_from([0.0, 2.0]))
    body = f"{QUANTILE_TOML}overdue_factor = {factor}\n"
    if window is not None:
        body += f"frequency_window_days = {window}\n"
    return Profiles.from_toml(body).use_cuts(TENANT, cuts)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(data=st.data(), agg=histories(), p=derived_profiles())
def test_next_due_with_tied_cut_points_is_the_first_change(
    data: st.DataObject, agg: Aggregates, p: Profile
) -> None:
    as_of = data.draw(instants(agg, p), label="as_of")
    by_time = next_due(agg, p, as_of, agg.last_order_at)  # overdue already alerted
    assert by_time == first_change(agg, p, as_of)
    now = key(score(agg, as_of, p))
    if by_time is not None:
        assert key(score(agg, by_time - 1, p)) == now != key(score(agg, by_time, p))


# -- the sweeper keeps a live base's cut points (real Redis) --------------------------------------


def population(seed: int, size: int) -> dict[str, list[tuple[int, str]]]:
    """Orders (at, amount) per customer: varied recency, counts and spend, many ties."""
    rng = random.Random(seed)
    out: dict[str, list[tuple[int, str]]] = {}
    for i in range(size):
        count = rng.choice([1, 1, 1, 2, 2, 3, 4, 6, 9])
        out[f"c{i}"] = [
            (
                T0 - rng.randrange(0, 400) * DAY_MS - rng.randrange(DAY_MS),
                rng.choice(["10", "25.50", "49.99", "120", f"{rng.randrange(1, 900)}.{i % 100}"]),
            )
            for _ in range(count)
        ]
    return out


def apply(store: Store, profiles: Profiles, orders: dict[str, list[tuple[int, str]]], at: int):
    items = [
        (placed_at(profiles, n, cid, when, amount, tenant=TENANT), i % 4)
        for i, (cid, history) in enumerate(orders.items())
        for n, (when, amount) in enumerate(history)
    ]
    return causes.apply_batch(store, items, profiles, as_of_ms=at, now_ms=at)


def batch_scores(orders: dict[str, list[tuple[int, str]]], at: int) -> dict[str, tuple[int, ...]]:
    """The independent batch computation: quintile ranks over the whole base at `at`."""
    days = {c: (at - max(t for t, _ in h)) // DAY_MS for c, h in orders.items()}
    counts = {c: len(h) for c, h in orders.items()}
    spend = {c: sum(to_units(a) for _, a in h) for c, h in orders.items()}
    return {
        c: (
            rank_score(days[c], list(days.values()), recency=True),
            rank_score(counts[c], list(counts.values())),
            rank_score(spend[c], list(spend.values())),
        )
        for c in orders
    }


def published(store: Store) -> dict[str, tuple[int, ...]]:
    out = {}
    for c in store.reads.customers(TENANT):
        assert c.published is not None
        out[c.customer_id] = (c.published.r, c.published.f, c.published.m)
    return out


def run_sweep(sweeper: Sweeper, at: int) -> list[dict[str, Any]]:
    out: list[Committed] = []
    sweeper.sweep_all({0, 1, 2, 3}, at, out.extend)
    return [orjson.loads(c.value) for c in out if c.change.kind == "rfm.changed"]


def sweeper_at(store: Store, profiles: Profiles, clock: list[int]) -> Sweeper:
    return Sweeper(store, profiles, interval=0, clock=lambda: clock[0], now_ms=lambda: clock[0])


def test_a_live_base_is_scored_by_quintiles_and_recomputed(store: Store) -> None:
    profiles = Profiles.from_toml(QUANTILE_TOML)
    orders = population(11, 500)
    apply(store, profiles, orders, T0)
    assert set(published(store).values()) == {(3, 3, 3)}  # no cut points yet
    clock = [T0]
    sweeper = sweeper_at(store, profiles, clock)

    # First computation, then the marking pass and a sweep: every score is the quintile.
    records = run_sweep(sweeper, T0)
    stored = store.cut_points.read()[TENANT]
    assert (stored.version, stored.computed_at, stored.population, stored.sampled) == (
        1,
        T0,
        500,
        500,
    )
    assert profiles.cuts[TENANT] == stored
    expected = batch_scores(orders, T0)
    assert published(store) == expected
    moved = {c for c, s in expected.items() if s != (3, 3, 3)}
    assert {r["customer_id"] for r in records} == moved
    assert {r["cause"] for r in records} == {"rescore"}
    assert metrics.QUANTILE_CUTS_VERSION.labels(TENANT)._value.get() == 1
    assert run_sweep(sweeper, T0) == []  # applied: nothing more, no recomputation
    assert store.cut_points.read()[TENANT].version == 1

    # Ten days later, 60 customers ordered again (scored with the version-1 cut points).
    t1 = T0 + 10 * DAY_MS
    clock[0] = t1
    rng = random.Random(5)
    new = {c: [(t1 - rng.randrange(DAY_MS), "75")] for c in rng.sample(sorted(orders), 60)}
    result = apply(store, profiles, _renumbered(orders, new), t1)
    assert {c.change.cause for c in result.committed} <= {"order"}
    for c, h in new.items():
        orders[c] = orders[c] + h
    before = published(store)
    expected = batch_scores(orders, t1)
    moves = {c for c in expected if expected[c] != before[c]}
    assert 0 < len(moves) < len(expected)

    records = run_sweep(sweeper, t1)
    stored = store.cut_points.read()[TENANT]
    assert (stored.version, stored.computed_at) == (2, t1)
    assert {r["customer_id"] for r in records} == moves
    assert {r["cause"] for r in records} == {"rescore"}
    assert len(records) == len(moves)
    assert published(store) == expected
    assert store.marking.versions() == {
        "default": profiles.default.version,
        TENANT: profiles.for_tenant(TENANT).version,
    }

    # A second worker picks the stored cut points up: no recomputation, nothing to publish.
    other = Profiles.from_toml(QUANTILE_TOML)
    assert run_sweep(sweeper_at(store, other, clock), t1) == []
    assert other.cuts[TENANT] == stored and store.cut_points.read()[TENANT] == stored
    assert other.for_tenant(TENANT).version == profiles.for_tenant(TENANT).version
    # Read-side commands load them too.
    reader = Profiles.from_toml(QUANTILE_TOML)
    assert load_cuts(store, reader) == {TENANT: stored}
    assert reader.for_tenant(TENANT).version == profiles.for_tenant(TENANT).version


def _renumbered(
    orders: dict[str, list[tuple[int, str]]], new: dict[str, list[tuple[int, str]]]
) -> dict[str, list[tuple[int, str]]]:
    """The whole history of the customers in `new`, new orders last (same ids as before)."""
    return {c: orders[c] + h for c, h in new.items()}


def test_one_worker_computes_and_the_others_follow(store: Store) -> None:
    first, second = Profiles.from_toml(QUANTILE_TOML), Profiles.from_toml(QUANTILE_TOML)
    orders = population(3, 120)
    apply(store, first, orders, T0)
    clock = [T0]
    a, b = sweeper_at(store, first, clock), sweeper_at(store, second, clock)
    # `a` takes the lock and computes one scan step per tick; `b` may not compute meanwhile.
    assert a.quantiles.step()
    assert not b.quantiles.step()
    while a.quantiles.step():
        pass
    assert store.cut_points.read()[TENANT].version == 1
    assert store.redis.exists(keys.quantiles_lock(TENANT)) == 0  # released
    assert second.cuts[TENANT] is None
    b.tick(set())  # the next check reads the stored version and applies it
    assert second.cuts[TENANT] == store.cut_points.read()[TENANT]
    assert b.marking._chunks is not None or b.marking._done  # the marking pass runs again
    # Stale once quantiles_every_minutes have passed on the sweeper's clock: recomputed.
    clock[0] = T0 + 59 * 60_000
    b.tick(set())
    assert store.cut_points.read()[TENANT].version == 1
    clock[0] = T0 + 60 * 60_000
    while b.quantiles.step():
        pass
    assert store.cut_points.read()[TENANT].version == 2
    assert store.cut_points.read()[TENANT].computed_at == T0 + 60 * 60_000
    a.tick(set())
    assert first.cuts[TENANT] == second.cuts[TENANT] == store.cut_points.read()[TENANT]


def test_a_held_lock_is_not_taken(store: Store) -> None:
    profiles = Profiles.from_toml(QUANTILE_TOML)
    apply(store, profiles, population(4, 20), T0)
    assert store.cut_points.try_lock(TENANT, 60_000)
    other = Store(store.redis)
    assert not other.cut_points.try_lock(TENANT, 60_000)
    assert not other.cut_points.renew_lock(TENANT, 60_000)
    other.cut_points.unlock(TENANT)  # not its lock: kept
    assert store.redis.exists(keys.quantiles_lock(TENANT)) == 1
    sweeper = Sweeper(other, profiles, interval=0, clock=lambda: T0, now_ms=lambda: T0)
    assert run_sweep(sweeper, T0) == []
    assert store.cut_points.read() == {}
    store.cut_points.unlock(TENANT)
    assert len(run_sweep(sweeper, T0)) > 0 and store.cut_points.read()[TENANT].version == 1


def test_large_bases_are_sampled_small_ones_read_whole(store: Store) -> None:
    profiles = Profiles.from_toml(QUANTILE_TOML.replace("= 60", "= 60\nquantiles_sample = 100"))
    orders = population(8, 500)
    apply(store, profiles, orders, T0)
    assert sampling.population(store.reads, TENANT, profiles) == 500
    values = [
        v
        for chunk in sampling.ranked_values(
            store.reads, TENANT, profiles, T0, sample=100, rng=random.Random(1)
        )
        for v in chunk
    ]
    assert 60 <= len(values) <= 140
    exact = [
        v
        for chunk in sampling.ranked_values(store.reads, TENANT, profiles, T0, sample=500)
        for v in chunk
    ]
    assert len(exact) == 500
    run_sweep(sweeper_at(store, profiles, [T0]), T0)
    cuts = store.cut_points.read()[TENANT]
    assert cuts.population == 500 and 60 <= cuts.sampled <= 140
    # Another tenant's customers are not part of the base.
    other = Profiles.from_toml(QUANTILE_TOML)
    causes.apply_batch(
        store,
        [
            (
                valid_event(
                    other,
                    event_id="x",
                    kind="placed",
                    order_id="x",
                    customer="x",
                    occurred_at="2026-02-01T00:00:00Z",
                    now_ms=T0,
                    amount="5",
                ),
                0,
            )
        ],
        other,
        as_of_ms=T0,
        now_ms=T0,
    )
    assert sampling.population(store.reads, TENANT, other) == 500
    assert (
        len(
            [
                v
                for ch in sampling.ranked_values(store.reads, TENANT, other, T0, sample=10**6)
                for v in ch
            ]
        )
        == 500
    )
    assert (
        len(
            [
                v
                for ch in sampling.ranked_values(store.reads, "default", other, T0, sample=10**6)
                for v in ch
            ]
        )
        == 1
    )


def test_no_customer_yet_means_no_cut_points(store: Store) -> None:
    profiles = Profiles.from_toml(QUANTILE_TOML)
    assert run_sweep(sweeper_at(store, profiles, [T0]), T0) == []
    assert store.cut_points.read() == {} and store.redis.exists(keys.quantiles_lock(TENANT)) == 0
    assert profiles.cuts[TENANT] is None
