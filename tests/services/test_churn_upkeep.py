"""Churn upkeep (worker/services/churn_upkeep.py): fits of a live base stored versioned in
Redis by one worker under a lock, applied by every worker, kept when a refit fails (real
Redis)."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.factories import bgnbd_orders, placed_at
from worker import metrics
from worker.rules import churn
from worker.rules.instants import DAY_MS
from worker.rules.profiles import Profiles
from worker.services import causes, sampling
from worker.services.churn_upkeep import load_fits
from worker.services.sweeper import Sweeper
from worker.state import keys
from worker.state.store import Committed, Store

T0 = int(datetime(2026, 3, 1, 9, 15, tzinfo=UTC).timestamp()) * 1000
TENANT = "shop"
CHURN_TOML = f"""
[profiles.{TENANT}]
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
churn_model = "bgnbd"
churn_refit_minutes = 60
"""


def population(seed: int, size: int) -> dict[str, list[int]]:
    return bgnbd_orders(seed, size, T0)


def apply(store: Store, profiles: Profiles, orders: dict[str, list[int]], at: int) -> Any:
    items = [
        (placed_at(profiles, n, cid, when, "20", tenant=TENANT), i % 4)
        for i, (cid, history) in enumerate(orders.items())
        for n, when in enumerate(history)
    ]
    return causes.apply_batch(store, items, profiles, as_of_ms=at, now_ms=at)


def run_sweep(sweeper: Sweeper, at: int) -> list[dict[str, Any]]:
    out: list[Committed] = []
    sweeper.sweep_all({0, 1, 2, 3}, at, out.extend)
    return [orjson.loads(c.value) for c in out if c.change.kind == "rfm.changed"]


def sweeper_at(store: Store, profiles: Profiles, clock: list[int]) -> Sweeper:
    return Sweeper(store, profiles, interval=0, clock=lambda: clock[0], now_ms=lambda: clock[0])


def expected_fit(orders: dict[str, list[int]], at: int) -> churn.Estimate:
    """The fit computed independently of the store: the summaries of the order lists."""
    rows = [churn.summary(sorted(h), at) for h in orders.values()]
    est = churn.fit("bgnbd", *zip(*[(s.x, s.t_x, s.T) for s in rows if s], strict=True))
    assert isinstance(est, churn.Estimate)
    return est


def test_the_fit_is_stored_versioned_and_followed(store: Store) -> None:
    profiles = Profiles.from_toml(CHURN_TOML)
    orders = population(1, 400)
    apply(store, profiles, orders, T0)
    clock = [T0]
    sweeper = sweeper_at(store, profiles, clock)
    run_sweep(sweeper, T0)
    fit = store.churn_fits.read()[TENANT]
    assert (fit.model, fit.version, fit.fitted_at, fit.population, fit.sampled) == (
        "bgnbd",
        1,
        T0,
        400,
        400,
    )
    want = expected_fit(orders, T0)
    got, exp = fit.params, want.params
    assert [got.r, got.alpha, got.a, got.b] == pytest.approx(
        [exp.r, exp.alpha, exp.a, exp.b], rel=1e-9
    )
    assert fit.log_likelihood == pytest.approx(want.log_likelihood)
    assert profiles.fits[TENANT] == fit
    assert profiles.for_tenant(TENANT).churn_fit == fit
    assert metrics.CHURN_FIT_VERSION.labels(TENANT)._value.get() == 1
    assert store.redis.exists(keys.churn_lock(TENANT)) == 0  # released
    run_sweep(sweeper, T0)
    assert store.churn_fits.read()[TENANT].version == 1  # not stale yet: no refit

    # Stale after churn_refit_minutes on the sweeper's clock: refitted as version 2.
    clock[0] = T0 + 60 * 60_000
    run_sweep(sweeper, clock[0])
    assert store.churn_fits.read()[TENANT].version == 2
    assert store.churn_fits.read()[TENANT].fitted_at == clock[0]

    # Another worker and the read-side commands pick the stored fit up, fitting nothing.
    other = Profiles.from_toml(CHURN_TOML)
    sweeper_at(store, other, clock).churn.step()
    assert other.fits[TENANT] == store.churn_fits.read()[TENANT]
    assert other.for_tenant(TENANT).version == profiles.for_tenant(TENANT).version
    reader = Profiles.from_toml(CHURN_TOML)
    assert load_fits(store, reader) == {TENANT: store.churn_fits.read()[TENANT]}


def test_one_worker_fits_under_the_lock(store: Store) -> None:
    first, second = Profiles.from_toml(CHURN_TOML), Profiles.from_toml(CHURN_TOML)
    apply(store, first, population(2, 120), T0)
    clock = [T0]
    a, b = sweeper_at(store, first, clock), sweeper_at(store, second, clock)
    assert a.churn.step()  # `a` holds the lock, one scan step per tick
    assert store.redis.exists(keys.churn_lock(TENANT)) == 1
    assert not b.churn.step()  # `b` may not fit meanwhile
    while a.churn.step():
        pass
    assert store.churn_fits.read()[TENANT].version == 1
    assert second.fits[TENANT] is None
    b.tick(set())
    assert second.fits[TENANT] == store.churn_fits.read()[TENANT]


def test_a_failed_fit_keeps_the_previous_one_and_says_why(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    profiles = Profiles.from_toml(CHURN_TOML)
    # Only one-time buyers: the dropout cannot be estimated.
    apply(store, profiles, {f"c{i}": [T0 - i * DAY_MS] for i in range(30)}, T0)
    clock = [T0]
    sweeper = sweeper_at(store, profiles, clock)
    before = metrics.CHURN_FIT_FAILURES.labels(TENANT)._value.get()
    run_sweep(sweeper, T0)
    assert store.churn_fits.read() == {}
    assert profiles.fits[TENANT] is None
    assert metrics.CHURN_FIT_FAILURES.labels(TENANT)._value.get() == before + 1
    assert "no customer with a repeat purchase" in caplog.text
    assert store.redis.exists(keys.churn_lock(TENANT)) == 0
    # Not tried again before churn_refit_minutes
    run_sweep(sweeper, T0)
    assert metrics.CHURN_FIT_FAILURES.labels(TENANT)._value.get() == before + 1

    # A previous fit stays when a refit fails.
    good = churn.Fit("bgnbd", churn.Params(0.3, 20.0, 0.9, 2.0), -1.0, 30, 30, 4, T0)
    store.churn_fits.write(TENANT, good)
    clock[0] = T0 + 61 * 60_000
    run_sweep(sweeper, clock[0])
    assert store.churn_fits.read()[TENANT] == good
    assert profiles.fits[TENANT] == good


def test_the_sample_reads_the_profiles_customers(store: Store) -> None:
    profiles = Profiles.from_toml(CHURN_TOML)
    orders = population(3, 300)
    apply(store, profiles, orders, T0)
    rows = [
        r
        for chunk in sampling.churn_summaries(store.reads, TENANT, profiles, T0, sample=100_000)
        for r in chunk
    ]
    want = [churn.summary(sorted(h), T0) for h in orders.values()]
    assert sorted(rows) == sorted((s.x, s.t_x, s.T) for s in want if s)
    sampled = [
        r
        for chunk in sampling.churn_summaries(
            store.reads, TENANT, profiles, T0, sample=100, rng=random.Random(1)
        )
        for r in chunk
    ]
    assert 50 <= len(sampled) <= 150


def test_profiles_without_a_model_fit_nothing(store: Store) -> None:
    profiles = Profiles.from_toml(
        CHURN_TOML.replace('churn_model = "bgnbd"\n', "").replace("churn_refit_minutes = 60\n", "")
    )
    apply(store, profiles, population(4, 50), T0)
    run_sweep(sweeper_at(store, profiles, [T0]), T0)
    assert store.churn_fits.read() == {}
    assert store.redis.exists(keys.CHURN) == 0


def test_a_new_fit_publishes_bands_and_the_sweeper_walks_them_down(store: Store) -> None:
    """Through the real commit path: the first fit rescores every customer (a band is
    published, cause rescore); then sweeps at the due instants publish each band drop
    (cause decay) at the UTC midnight P(alive) crosses, and p_alive_below fires."""
    # no refit during the test (a new fit rescores, cause rescore): 100 days between fits
    toml = CHURN_TOML.replace("churn_refit_minutes = 60", "churn_refit_minutes = 144000") + (
        f'[[profiles.{TENANT}.triggers]]\nname = "slipping"\nwhen = "p_alive_below"\nvalue = 0.5\n'
    )
    profiles = Profiles.from_toml(toml)
    orders = population(5, 300)
    apply(store, profiles, orders, T0)
    clock = [T0]
    sweeper = sweeper_at(store, profiles, clock)
    records = run_sweep(sweeper, T0)
    fit = store.churn_fits.read()[TENANT]
    profile = profiles.for_tenant(TENANT)
    assert profile.churn_fit == fit
    assert records and {r["cause"] for r in records} == {"rescore"}
    for r in records:
        history = sorted(orders[r["customer_id"]])
        s = churn.summary(history, T0)
        assert s is not None
        assert r["p_alive"] == churn.p_alive("bgnbd", fit.params, s)
        assert r["p_alive_band"] == churn.band(r["p_alive"], [0.2, 0.5, 0.8])
        assert r["expected_orders"] == churn.expected_orders("bgnbd", fit.params, 90, s)
    assert {r["customer_id"] for r in records} == set(orders)  # every band is new
    bands = {r["customer_id"]: r["p_alive_band"] for r in records}

    # The next midnights: each band drop is published at the midnight it happens.
    day0 = T0 // DAY_MS * DAY_MS
    drops = slipping = 0
    for d in range(1, 31):
        at = day0 + d * DAY_MS
        clock[0] = at
        for r in run_sweep(sweeper, at):
            assert r["cause"] == "decay"
            if r["p_alive_band"] != bands[r["customer_id"]]:
                s = churn.summary(sorted(orders[r["customer_id"]]), at)
                assert s is not None
                assert r["p_alive_band"] == churn.band(
                    churn.p_alive("bgnbd", fit.params, s), [0.2, 0.5, 0.8]
                )
                yesterday = churn.summary(sorted(orders[r["customer_id"]]), at - 1)
                assert yesterday is not None  # it had not dropped the day before
                assert (
                    churn.band(churn.p_alive("bgnbd", fit.params, yesterday), [0.2, 0.5, 0.8])
                    == bands[r["customer_id"]]
                )
                drops += 1
                slipping += "slipping" in r["triggers"]
                bands[r["customer_id"]] = r["p_alive_band"]
    assert drops > 0 and slipping > 0
    # Nobody was missed: every customer's published band is its band now.
    at = clock[0]
    for c in store.reads.customers(TENANT):
        s = churn.summary(sorted(orders[c.customer_id]), at)
        assert s is not None and c.published is not None
        assert c.published.band == churn.band(
            churn.p_alive("bgnbd", fit.params, s), [0.2, 0.5, 0.8]
        )


def test_an_empty_base_is_tried_again_at_the_next_check(store: Store) -> None:
    profiles = Profiles.from_toml(CHURN_TOML)
    clock = [T0]
    sweeper = sweeper_at(store, profiles, clock)
    run_sweep(sweeper, T0)  # no customer: nothing fitted
    assert store.churn_fits.read() == {}
    apply(store, profiles, population(6, 100), T0)
    run_sweep(sweeper, T0)  # the same instant: tried again, fitted
    assert store.churn_fits.read()[TENANT].version == 1


def test_the_customer_view_and_export_carry_p_alive(store: Store) -> None:
    from worker.rules.messages import CustomerView
    from worker.web import views

    profiles = Profiles.from_toml(CHURN_TOML)
    orders = population(7, 50)
    apply(store, profiles, orders, T0)
    cid = next(iter(orders))
    unfitted = views.lookup(store, profiles, TENANT, cid, T0)
    assert unfitted is not None
    assert (unfitted["p_alive"], unfitted["p_alive_band"], unfitted["expected_orders"]) == (
        None,
        None,
        None,
    )
    load_fits(store, profiles, compute_missing_at=T0)
    fit = profiles.fits[TENANT]
    assert fit is not None
    at = T0 + 3 * DAY_MS
    for doc in views.export(store, profiles, at, TENANT):
        CustomerView.model_validate(doc)
        s = churn.summary(sorted(orders[str(doc["customer_id"])]), at)
        assert s is not None
        assert doc["p_alive"] == churn.p_alive("bgnbd", fit.params, s)
        assert doc["p_alive_band"] == churn.band(
            churn.p_alive("bgnbd", fit.params, s), [0.2, 0.5, 0.8]
        )
        assert doc["expected_orders"] == churn.expected_orders("bgnbd", fit.params, 90, s)
    # a profile without a model: the P(alive) keys, null
    plain = Profiles.from_toml(
        CHURN_TOML.replace('churn_model = "bgnbd"\n', "").replace("churn_refit_minutes = 60\n", "")
    )
    doc = views.lookup(store, plain, TENANT, cid, T0)
    assert doc is not None
    assert (doc["p_alive"], doc["p_alive_band"], doc["expected_orders"]) == (None, None, None)


# -- the spend model, fitted with the churn model (docs/value.md) ---------------------------------

VALUE_TOML = CHURN_TOML + 'value_model = "gamma_gamma"\n'


def amounts(seed: int, orders: dict[str, list[int]]) -> dict[str, list[str]]:
    """Order values from the Gamma-Gamma story: per customer ν ~ Gamma(q=4, v=60), each
    order ~ Gamma(p=3, ν) (mean 3·60/3 = 60 currency units), two decimals."""
    rng = random.Random(seed)
    out = {}
    for cid, history in orders.items():
        nu = rng.gammavariate(4.0, 1 / 60)
        out[cid] = [f"{max(rng.gammavariate(3.0, 1 / nu), 0.01):.2f}" for _ in history]
    return out


def apply_valued(
    store: Store,
    profiles: Profiles,
    orders: dict[str, list[int]],
    values: dict[str, list[str]],
    at: int,
) -> None:
    items = [
        (placed_at(profiles, n, cid, when, values[cid][n], tenant=TENANT), i % 4)
        for i, (cid, history) in enumerate(orders.items())
        for n, when in enumerate(history)
    ]
    causes.apply_batch(store, items, profiles, as_of_ms=at, now_ms=at)


def spend_summaries(
    orders: dict[str, list[int]], values: dict[str, list[str]]
) -> list[tuple[int, float]]:
    """(x, m_x) from the order lists: the repeat days' total value / x (currency units)."""
    out = []
    for cid, history in orders.items():
        days: dict[int, float] = {}
        for when, amount in zip(history, values[cid], strict=True):
            days[when // DAY_MS] = days.get(when // DAY_MS, 0.0) + float(amount)
        totals = [days[d] for d in sorted(days)]
        x = len(totals) - 1
        out.append((x, sum(totals[1:]) / x if x else 0.0))
    return out


def test_the_spend_model_is_fitted_with_the_churn_model(store: Store) -> None:
    profiles = Profiles.from_toml(VALUE_TOML)
    orders = population(8, 400)
    values = amounts(8, orders)
    apply_valued(store, profiles, orders, values, T0)
    clock = [T0]
    sweeper = sweeper_at(store, profiles, clock)
    run_sweep(sweeper, T0)
    fit = store.churn_fits.read()[TENANT]
    assert fit.version == 1 and fit.spend is not None
    # The churn fit is the one a profile without a value model gets.
    assert fit.params == pytest.approx(expected_fit(orders, T0).params)
    want = churn.fit_spend(spend_summaries(orders, values))
    assert isinstance(want, churn.SpendFit)
    got, exp = fit.spend.params, want.params
    # The same customers in another order sum in another order: the optimum agrees to the
    # optimiser's tolerance, not to the last bit (2.2e-9 relative seen).
    assert [got.p, got.q, got.v] == pytest.approx([exp.p, exp.q, exp.v], rel=1e-6)
    assert fit.spend.population == want.population
    assert fit.spend.log_likelihood == pytest.approx(want.log_likelihood)
    assert 40 < churn.population_mean(got) < 80  # the story's mean order value, 60
    assert profiles.for_tenant(TENANT).churn_fit == fit

    # Refitted with the churn model, under the same version.
    clock[0] = T0 + 60 * 60_000
    run_sweep(sweeper, clock[0])
    refit = store.churn_fits.read()[TENANT]
    assert refit.version == 2 and refit.spend is not None
    assert refit.spend.params == pytest.approx(fit.spend.params)


def test_the_sample_carries_the_repeat_spend_for_value_profiles(store: Store) -> None:
    profiles = Profiles.from_toml(VALUE_TOML)
    orders = population(9, 200)
    values = amounts(9, orders)
    apply_valued(store, profiles, orders, values, T0)
    rows = [
        r
        for chunk in sampling.churn_summaries(store.reads, TENANT, profiles, T0, sample=100_000)
        for r in chunk
    ]
    assert all(len(r) == 4 for r in rows)
    by_x_and_spend = sorted((r[0], r[3] / (r[0] * 10_000) if r[0] else 0.0) for r in rows)
    want = sorted(spend_summaries(orders, values))
    assert [x for x, _ in by_x_and_spend] == [x for x, _ in want]
    assert [m for _, m in by_x_and_spend] == pytest.approx([m for _, m in want], rel=1e-12)
    # the m_x the scores use (worker/rules/churn/spend.py), to the last bit
    live = sorted(
        s
        for c in store.reads.customers(TENANT)
        if (agg := c.aggregates()) is not None and (s := churn.spend_summary(agg, T0))
    )
    assert by_x_and_spend == live
    # without a value model: (x, t_x, T) as before
    plain = Profiles.from_toml(CHURN_TOML)
    assert all(
        len(r) == 3
        for chunk in sampling.churn_summaries(store.reads, TENANT, plain, T0, sample=100_000)
        for r in chunk
    )


def test_a_failed_spend_fit_keeps_the_previous_spend_and_says_why(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    profiles = Profiles.from_toml(VALUE_TOML)
    # Every order worth 20: the same m_x for everyone, which identifies no spread.
    orders = population(10, 300)
    apply(store, profiles, orders, T0)
    clock = [T0]
    sweeper = sweeper_at(store, profiles, clock)
    run_sweep(sweeper, T0)
    fit = store.churn_fits.read()[TENANT]
    assert fit.version == 1 and fit.spend is None  # the churn fit is stored all the same
    assert "spend model of profile shop not fitted" in caplog.text
    assert "no spend fit yet" in caplog.text
    assert profiles.fits[TENANT] == fit
    # Not tried again at every check: a period later, like a failed fit.
    caplog.clear()
    run_sweep(sweeper, T0 + 30 * 60_000)
    assert store.churn_fits.read()[TENANT].version == 1
    assert "spend model" not in caplog.text

    # A previous spend fit stays when the spend refit fails.
    spend = churn.SpendFit(churn.SpendParams(3.0, 4.0, 60.0), -100.0, 42)
    store.churn_fits.write(TENANT, dataclasses.replace(fit, spend=spend, version=3))
    clock[0] = T0 + 200 * 60_000
    run_sweep(sweeper, clock[0])
    refit = store.churn_fits.read()[TENANT]
    assert refit.version == 4 and refit.fitted_at == clock[0]
    assert refit.spend == spend
    assert "the previous spend fit stays" in caplog.text
    assert profiles.fits[TENANT] == refit


def test_a_value_model_turned_on_is_fitted_at_the_next_check(store: Store) -> None:
    plain = Profiles.from_toml(CHURN_TOML)
    orders = population(11, 200)
    values = amounts(11, orders)
    apply_valued(store, plain, orders, values, T0)
    load_fits(store, plain, compute_missing_at=T0)
    assert store.churn_fits.read()[TENANT].spend is None
    # The same base, the profile given a value model: its fit has no spend, so the next
    # check refits at once (not churn_refit_minutes later), at a worker's start too.
    valued = Profiles.from_toml(VALUE_TOML)
    fits = load_fits(store, valued, compute_missing_at=T0 + 60_000)
    assert fits[TENANT].version == 2 and fits[TENANT].spend is not None
    assert valued.fits[TENANT] == fits[TENANT]
    # A reader (no compute_missing_at) takes what is stored.
    store.churn_fits.write(TENANT, dataclasses.replace(fits[TENANT], spend=None, version=3))
    reader = Profiles.from_toml(VALUE_TOML)
    assert load_fits(store, reader)[TENANT].version == 3
    sweeper = sweeper_at(store, reader, [T0 + 120_000])
    run_sweep(sweeper, T0 + 120_000)
    assert store.churn_fits.read()[TENANT].version == 4
    assert store.churn_fits.read()[TENANT].spend is not None
