"""The day the expected value falls below a bound (worker/rules/churn/prediction.py
`day_value_below`, behind decay.py `value_band_due`): the same day as a plain doubling then
bisecting search (the reference below, the function as it was before the model-guided
search) on every case: a grid and random parameters for BG/NBD and MBG/NBD, and realistic
customers scored at each of their commits with fits of both models. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.benchmarks.churn_cost import amount_units, spend_row
from tests.factories import bgnbd_orders
from worker.rules import churn
from worker.rules.aggregates import Aggregates
from worker.rules.churn import ChurnModel, Params, Summary
from worker.rules.churn.prediction import MAX_DAYS
from worker.rules.customer import Customer
from worker.rules.decay import MAX_DUE_MS, p_alive_band_due, value_band_due
from worker.rules.events import ValidEvent
from worker.rules.instants import DAY_MS
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles
from worker.rules.scoring import score

NOW = 20_600 * DAY_MS  # a UTC midnight


def reference_day(value: Callable[[int], float], bound: float, T: int) -> int | None:
    """The first day after T with `not value >= bound`: double, then bisect."""

    def changed(days: int) -> bool:
        return not value(days) >= bound

    low, step = T, 1
    while not changed(low + step):
        low += step
        step *= 2
        if low > MAX_DAYS:
            return None
    high = low + step
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if changed(mid) else (mid, high)
    return high


def reference_due(agg: Aggregates, profile: Profile, as_of_ms: int) -> int | None:
    """value_band_due by the reference search."""
    fit, bounds = profile.churn_fit, profile.value_bands
    assert fit is not None and fit.spend is not None and bounds
    s = churn.summary_of(agg, as_of_ms)
    spend = churn.spend_summary(agg, as_of_ms)
    if s is None or spend is None:
        return None
    order_value = churn.expected_order_value(fit.spend.params, *spend)
    horizon = profile.churn_horizon_days

    def value(days: int) -> float:
        e = churn.expected_orders(fit.model, fit.params, horizon, Summary(s.x, s.t_x, days))
        return order_value * e

    now = value(s.T)
    if not math.isfinite(now) or churn.value_band(now, bounds) == 1:
        return None
    day = reference_day(value, bounds[churn.value_band(now, bounds) - 2], s.T)
    return None if day is None else (agg.first_order_at // DAY_MS + day) * DAY_MS


def same_day(model: ChurnModel, params: Params, t: float, s: Summary, fraction: float) -> None:
    """day_value_below and the reference agree for the bound `fraction` x the value now."""
    now = 1.7 * churn.expected_orders(model, params, t, s)
    if not 0 < now < math.inf:
        return

    def value(days: int) -> float:
        return 1.7 * churn.expected_orders(model, params, t, Summary(s.x, s.t_x, days))

    bound = now * fraction
    expected = reference_day(value, bound, s.T)
    assert churn.day_value_below(model, params, t, s, 1.7, bound, now=now) == expected, (
        model,
        params,
        t,
        s,
        fraction,
    )


GRID_PARAMS = [
    Params(0.243, 4.414 * 7, 0.793, 2.426),  # CDNOW's (weeks turned into days)
    Params(0.85, 22.9, 0.98, 2.85),  # the churn benchmark's fit
    Params(1.14, 29.9, 2.26, 11.2),  # its MBG/NBD fit
    Params(3.0, 5.0, 1.5, 0.5),
    Params(0.1, 300.0, 4.0, 20.0),
]


@pytest.mark.parametrize("model", ["bgnbd", "mbgnbd"])
@pytest.mark.parametrize("params", GRID_PARAMS)
def test_the_day_is_the_reference_search_s_on_a_grid(model: ChurnModel, params: Params) -> None:
    for x, t_x, silence, t in product(
        [0, 1, 2, 5, 20, 80], [0, 10, 200, 1500], [0, 1, 30, 400, 5000], [7, 90, 365, 2000]
    ):
        if x == 0 and t_x:
            continue
        s = Summary(x, t_x, t_x + silence)
        for fraction in [1.0, 0.999999, 0.99, 0.9, 0.5, 0.2, 0.05, 1e-3, 1e-6, 1e-12]:
            same_day(model, params, t, s, fraction)


@settings(max_examples=1500, derandomize=True, deadline=None)
@given(
    model=st.sampled_from(["bgnbd", "mbgnbd"]),
    r=st.floats(0.01, 20),
    alpha=st.floats(0.01, 2000),
    a=st.floats(0.02, 30),
    b=st.floats(0.02, 60),
    x=st.integers(0, 300),
    t_x=st.integers(0, 5000),
    silence=st.integers(0, 20_000),
    t=st.integers(1, 3650),
    fraction=st.floats(1e-15, 1.0),
)
def test_the_day_is_the_reference_search_s_for_any_parameters(
    model: ChurnModel,
    r: float,
    alpha: float,
    a: float,
    b: float,
    x: int,
    t_x: int,
    silence: int,
    t: int,
    fraction: float,
) -> None:
    t_x = t_x if x else 0
    same_day(model, Params(r, alpha, a, b), t, Summary(x, t_x, t_x + silence), fraction)


def value_profile(model: ChurnModel, horizon: int, bands: str, histories: Histories) -> Profile:
    """A profile with fits of both models on these customers, as of NOW."""
    rows, spends = [], []
    for placed in histories.values():
        s = churn.summary([at for at, _ in placed], NOW)
        assert s is not None
        rows.append((s.x, s.t_x, s.T))
        spends.append(spend_row(placed))
    est = churn.fit(model, *[list(col) for col in zip(*rows, strict=True)])
    spend = churn.fit_spend(spends)
    assert isinstance(est, churn.Estimate) and isinstance(spend, churn.SpendFit)
    profiles = Profiles.from_toml(
        "[profiles.default]\nrecency_days = [30, 90, 180, 365]\n"
        "frequency_orders = [2, 3, 5, 10]\nmonetary = [100, 250, 500, 1000]\n"
        f'churn_model = "{model}"\nchurn_horizon_days = {horizon}\n'
        f'value_model = "gamma_gamma"\nvalue_bands = {bands}\n'
    )
    fit = churn.Fit(model, est.params, est.log_likelihood, 1, 1, 1, NOW, spend=spend)
    return profiles.use_fit("default", fit)


Histories = dict[str, list[tuple[int, int]]]


@pytest.fixture(scope="module")
def histories() -> Histories:
    """(instant, money units) of the placed orders of customers with BG/NBD histories (the
    churn benchmark's)."""
    out: Histories = {}
    n = 0
    for cid, times in bgnbd_orders(11, 1500, NOW, days=700).items():
        out[cid] = [(at, amount_units(n + i)) for i, at in enumerate(times)]
        n += len(times)
    return out


@pytest.mark.parametrize("model", ["bgnbd", "mbgnbd"])
@pytest.mark.parametrize(("horizon", "bands"), [(90, "[20, 60, 150]"), (365, "[5, 50, 500]")])
def test_value_band_due_is_the_reference_s_at_every_commit(
    model: ChurnModel, horizon: int, bands: str, histories: Histories
) -> None:
    """Each customer scored at each of its commits (the orders so far, at the last one's
    instant), and at NOW; the due instants from its score's figures are the same."""
    profile = value_profile(model, horizon, bands, histories)
    dues = cases = shortcuts = alive_shortcuts = 0
    for cid, placed in histories.items():
        c = Customer("default", cid)
        for i, (at, units) in enumerate(placed):
            c.apply(
                ValidEvent(
                    event_id=f"e{i}",
                    type="order_placed",
                    order_id=f"o{i}",
                    customer_id=cid,
                    tenant="default",
                    amount=units,
                    occurred_at=at,
                )
            )
            agg = c.aggregates()
            assert agg is not None
            for as_of in [at, NOW] if i == len(placed) - 1 else [at]:
                due = value_band_due(agg, profile, as_of)
                assert due == reference_due(agg, profile, as_of), (cid, i, as_of)
                # from the figures scoring computed (the engine's way): the same instants
                scored = score(agg, as_of, profile)
                assert value_band_due(agg, profile, as_of, scored) == due
                alive_due = p_alive_band_due(agg, profile, as_of)
                assert p_alive_band_due(agg, profile, as_of, scored) == alive_due
                # only wanted before an instant the caller has (next_due's other dues)
                for before in befores(as_of, due):
                    earlier = due if due is not None and due < before else None
                    assert value_band_due(agg, profile, as_of, scored, before=before) == earlier
                    shortcuts += earlier is None and due is not None
                for before in befores(as_of, alive_due):
                    earlier = alive_due if alive_due is not None and alive_due < before else None
                    got = p_alive_band_due(agg, profile, as_of, scored, before=before)
                    assert got == earlier, (cid, i, as_of, before)
                    alive_shortcuts += earlier is None and alive_due is not None
                dues += due is not None
                cases += 1
    assert dues > cases // 2  # most customers are above the lowest band
    assert shortcuts > cases  # most befores are earlier than the band's day: one evaluation
    assert alive_shortcuts > cases  # P(alive)'s band alike


def befores(as_of: int, due: int | None) -> list[int]:
    """Instants a caller may have already: around the due instant (at, just before and
    after it, a day either side), and as next_due has them (now, within the recency
    thresholds, never)."""
    out = [as_of, as_of + 1, as_of + 30 * DAY_MS + 12_345, as_of + 400 * DAY_MS, MAX_DUE_MS + 1]
    if due is not None:
        out += [due - DAY_MS, due - 1, due, due + 1, due + DAY_MS - 1, due + DAY_MS]
    return out
