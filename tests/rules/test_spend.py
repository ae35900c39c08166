"""The Gamma-Gamma spend model (worker/rules/churn/spend.py, spend_check.py) against an
independent implementation, the `lifetimes` package, and the estimates it gives on the
CDNOW sample with monetary values, which the `lifetimes` wheel ships (nothing is
downloaded); a customer's (x, m_x) from its orders, and the stored fit.
"""

from __future__ import annotations

import functools
import math
import warnings
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.rules import churn
from worker.rules.aggregates import Aggregates
from worker.rules.churn import Params, SpendFit, SpendParams
from worker.rules.customer import Customer, Folded
from worker.rules.events import ValidEvent
from worker.rules.money import to_units

if TYPE_CHECKING:
    import pandas as pd

REL = 1e-6
CDNOW = SpendParams(6.2488, 3.7446, 15.4477)  # GammaGammaFitter on the sample, 4 decimals


@functools.cache
def reference() -> SimpleNamespace:
    """lifetimes and its dataset, imported by the tests that use them (see test_churn.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandas as pd
        from lifetimes import GammaGammaFitter
        from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value
    return SimpleNamespace(
        pd=pd, fitter=GammaGammaFitter, load=load_cdnow_summary_data_with_monetary_value
    )


def cdnow() -> pd.DataFrame:
    """2,357 customers: frequency (x), monetary_value (m_x, dollars; 0 when x == 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data: pd.DataFrame = reference().load()
    return data


def summaries(data: pd.DataFrame) -> list[tuple[int, float]]:
    return [
        (int(x), float(m)) for x, m in zip(data["frequency"], data["monetary_value"], strict=True)
    ]


@functools.cache
def cdnow_fit() -> SpendFit:
    fit = churn.fit_spend(summaries(cdnow()))
    assert isinstance(fit, SpendFit), fit
    return fit


def as_array(p: SpendParams) -> np.ndarray:
    return np.array([p.p, p.q, p.v])


# -- the fit against lifetimes ------------------------------------------------------------------


def test_cdnow_reproduces_the_reference_estimates() -> None:
    data = cdnow()
    assert len(data) == 2357
    fit = cdnow_fit()
    assert fit.population == 946  # the repeat customers: x >= 1 (all with m_x > 0)
    p = fit.params
    assert (round(p.p, 4), round(p.q, 4), round(p.v, 4)) == (CDNOW.p, CDNOW.q, CDNOW.v)
    assert churn.population_mean(p) == pytest.approx(p.p * p.v / (p.q - 1))


def test_fit_equals_lifetimes() -> None:
    data = cdnow()
    repeat = data[data["frequency"] > 0]
    ref = reference().fitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(repeat["frequency"], repeat["monetary_value"])
    fit = cdnow_fit()
    # its default tolerance stops it within ~5e-9 of ours
    np.testing.assert_allclose(as_array(fit.params), ref.params_[["p", "q", "v"]], rtol=REL)
    # the log-likelihood: the reference's own formula at our parameters
    nll = ref._negative_log_likelihood(
        np.log(as_array(fit.params)),
        repeat["frequency"].to_numpy(dtype=float),
        repeat["monetary_value"].to_numpy(),
        np.ones(len(repeat)),
        0.0,
    )
    assert fit.log_likelihood == pytest.approx(-nll * len(repeat), rel=1e-12)


def test_expected_order_value_equals_lifetimes_for_every_customer() -> None:
    data = cdnow()
    fit = cdnow_fit()
    ref = reference().fitter()
    ref.params_ = reference().pd.Series(as_array(fit.params), index=["p", "q", "v"])
    want = ref.conditional_expected_average_profit(data["frequency"], data["monetary_value"])
    got = [churn.expected_order_value(fit.params, x, m) for x, m in summaries(data)]
    np.testing.assert_allclose(got, want.to_numpy(), rtol=REL)
    one_timers = [g for g, x in zip(got, data["frequency"], strict=True) if x == 0]
    assert len(one_timers) == 2357 - 946
    assert all(g == churn.population_mean(fit.params) for g in one_timers)


def test_the_currency_scales_v_only() -> None:
    """Money in cents instead of dollars: v x 100, p and q as they were."""
    data = summaries(cdnow())
    cents = churn.fit_spend([(x, m * 100) for x, m in data])
    assert isinstance(cents, SpendFit)
    d, c = cdnow_fit().params, cents.params
    np.testing.assert_allclose([c.p, c.q, c.v / 100], [d.p, d.q, d.v], rtol=REL)


def test_a_simulated_population_is_recovered() -> None:
    rng = np.random.default_rng(11)
    true = SpendParams(4.0, 3.0, 60.0)
    n = 20_000
    x = rng.integers(1, 15, n)
    nu = rng.gamma(true.q, 1 / true.v, n)  # the customers' scale, Gamma(q, v)
    m_x = rng.gamma(true.p * x, 1 / (nu * x))  # the mean of x Gamma(p, nu) values
    fit = churn.fit_spend(list(zip(x.tolist(), m_x.tolist(), strict=True)))
    assert isinstance(fit, SpendFit)
    np.testing.assert_allclose(as_array(fit.params), as_array(true), rtol=0.1)
    assert fit.population == n


def test_failures_say_why() -> None:
    failed = churn.fit_spend([(0, 0.0)] * 50 + [(3, 20.0)] * 9 + [(2, 0.0)] * 9)
    assert isinstance(failed, churn.Failed)
    assert "9 customers" in failed.reason
    assert churn.fit_spend([]) == churn.Failed(failed.reason.replace("9 ", "0 ", 1))
    failed = churn.fit_spend([(x, math.inf) for x in range(1, 20)])
    assert isinstance(failed, churn.Failed) and "finite" in failed.reason
    # every customer spends the same: nothing varies, the likelihood has no maximum
    failed = churn.fit_spend([(x, 25.0) for x in range(1, 20)])
    assert isinstance(failed, churn.Failed)
    # a population whose spend has no finite mean: q <= 1
    rng = np.random.default_rng(3)
    x = rng.integers(1, 10, 5000)
    m_x = rng.gamma(5.0 * x, 1 / (rng.gamma(0.6, 1 / 40.0, 5000) * x))
    failed = churn.fit_spend(list(zip(x.tolist(), m_x.tolist(), strict=True)))
    assert isinstance(failed, churn.Failed) and "q=" in failed.reason, failed


@settings(max_examples=200, deadline=None)
@given(
    p=st.floats(0.1, 50),
    q=st.floats(1.01, 50),
    v=st.floats(0.1, 1e4),
    x=st.integers(0, 10_000),
    m_x=st.floats(0, 1e6),
)
def test_expected_order_value_lies_between_m_x_and_the_population_mean(
    p: float, q: float, v: float, x: int, m_x: float
) -> None:
    params = SpendParams(p, q, v)
    mean = churn.population_mean(params)
    value = churn.expected_order_value(params, x, m_x)
    if x == 0:
        assert value == mean
        return
    low, high = min(m_x, mean), max(m_x, mean)
    assert low * (1 - 1e-12) <= value <= high * (1 + 1e-12)


def test_value_band() -> None:
    bounds = [20.0, 50.0, 100.0]
    values = (0.0, 19.99, 20.0, 49.0, 50.0, 99.9, 100.0, 1e9)
    assert [churn.value_band(v, bounds) for v in values] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert churn.value_band(5.0, []) == 1


# -- a customer's (x, m_x) ----------------------------------------------------------------------

DAY = 86_400_000
T0 = 20_400 * DAY  # a UTC midnight


def event(kind: str, n: int, amount: str | None, at: int, event_id: str = "") -> ValidEvent:
    return ValidEvent(
        event_id=event_id or f"{kind}-{n}",
        type=kind,  # type: ignore[arg-type]
        order_id=f"o{n}",
        customer_id="c1",
        tenant="default",
        amount=None if amount is None else to_units(amount),
        occurred_at=at,
    )


def placed(n: int, amount: str, at: int) -> ValidEvent:
    return event("order_placed", n, amount, at)


def customer(*events: ValidEvent) -> Customer:
    c = Customer("default", "c1")
    for e in events:
        c.apply(e)
    return c


def spend_of(c: Customer, as_of: int = T0 + 100 * DAY) -> tuple[int, float] | None:
    agg = c.aggregates()
    return None if agg is None else churn.spend_summary(agg, as_of)


def test_spend_summary_is_per_order_day() -> None:
    c = customer(
        placed(1, "10.00", T0 + 3_600_000),  # first day: 10 + 5, left out of m_x
        placed(2, "5.00", T0 + 20 * 3_600_000),
        placed(3, "30.00", T0 + 7 * DAY),  # a repeat day of two orders, 30 + 12.50
        placed(4, "12.50", T0 + 7 * DAY + 60_000),
        placed(5, "40.00", T0 + 9 * DAY),  # refunded 15: a day of 25
        event("order_refunded", 5, "15.00", T0 + 10 * DAY),
        placed(6, "99.00", T0 + 11 * DAY),  # cancelled: no day
        event("order_cancelled", 6, None, T0 + 12 * DAY),
        placed(7, "8.00", T0 + 20 * DAY),  # fully refunded: a day of 0, still a purchase day
        event("order_refunded", 7, "8.00", T0 + 21 * DAY),
    )
    agg = c.aggregates()
    assert agg is not None
    assert agg.first_day_value() == to_units("15.00")
    assert spend_of(c) == (3, (42.5 + 25 + 0) / 3)
    assert agg.day_values() == [
        (T0 // DAY, to_units("15")),
        (T0 // DAY + 7, to_units("42.5")),
        (T0 // DAY + 9, to_units("25")),
        (T0 // DAY + 20, 0),
    ]
    # x as the churn model counts it
    s = churn.summary_of(agg, T0 + 100 * DAY)
    assert s is not None and s.x == 3


def test_one_day_customers_have_x_0_and_no_spend() -> None:
    assert spend_of(Customer("default", "c1")) is None
    c = customer(placed(1, "10.00", T0), placed(2, "20.00", T0 + DAY - 1))
    assert spend_of(c) == (0, 0.0)
    c.apply(event("order_cancelled", 1, None, T0 + DAY))
    c.apply(event("order_cancelled", 2, None, T0 + DAY))
    assert spend_of(c) is None


def test_the_first_day_follows_every_change() -> None:
    """The first day's value is kept between calls; each change on or before that day
    drops it, so it always equals a customer rebuilt from scratch."""
    c = customer(placed(1, "10.00", T0 + 5), placed(2, "20.00", T0 + 2 * DAY))
    steps = [
        placed(3, "7.00", T0 + 9),  # a second order on the first day
        placed(4, "1.00", T0 + 5 * DAY),  # a later day: the first stays
        event("order_refunded", 1, "4.00", T0 + 6 * DAY),  # a refund on the first day
        event("order_cancelled", 1, None, T0 + 6 * DAY),
        event("order_cancelled", 3, None, T0 + 6 * DAY),  # the first day moves on
        placed(5, "3.00", T0 - DAY),  # an earlier day becomes the first
    ]
    want = [17, 17, 13, 7, 20, 3]
    for step, value in zip(steps, want, strict=True):
        agg = c.aggregates()
        assert agg is not None
        agg.first_day_value()  # kept
        c.apply(step)
        agg = c.aggregates()
        assert agg is not None
        assert agg.first_day_value() == to_units(str(value))
        fresh = Customer.decode("default", "c1", c.encode())
        assert fresh.first_day_value() == agg.first_day_value()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["order_placed", "order_refunded", "order_cancelled"]),
            st.integers(0, 8),  # the order
            st.integers(1, 5000),  # cents
            st.integers(0, 6 * 24),  # hours from T0
        ),
        max_size=30,
    )
)
def test_the_kept_first_day_equals_a_fresh_one(steps: list[tuple[str, int, int, int]]) -> None:
    c = Customer("default", "c1")
    for k, (kind, n, cents, hours) in enumerate(steps):
        amount = None if kind == "order_cancelled" else f"{cents / 100:.2f}"
        c.apply(event(kind, n, amount, T0 + hours * 3_600_000, event_id=f"e{k}"))
        agg = c.aggregates()
        fresh = Customer.decode("default", "c1", c.encode())
        fresh_agg = fresh.aggregates()
        if agg is None:
            assert fresh_agg is None
            continue
        assert fresh_agg is not None
        assert agg.first_day_value() == fresh_agg.first_day_value()
        assert agg.day_values() == fresh.day_values()
        if (days := agg.day_values()) and len(agg.order_times) == agg.orders_lifetime:
            assert agg.first_day_value() == days[0][1]


def test_folded_orders_count_a_day_each_at_their_mean_value() -> None:
    c = customer(placed(1, "50.00", T0 + 40 * DAY), placed(2, "20.00", T0 + 41 * DAY))
    # 3 folded orders of 30 in all (their days are gone), the first on T0
    c.folded = Folded(3, to_units("30"), T0, T0 + 30 * DAY, T0 + 30 * DAY)
    c._agg = None  # as after a fold (which resets what the customer derived)
    agg = c.aggregates()
    assert agg is not None and agg.orders_lifetime == 5
    assert agg.first_day_value() == to_units("10")  # the folded orders' mean
    # x = 3 folded days + 2 kept - 1; the repeat days are worth 100 - 10 in all
    assert spend_of(c) == (4, 90 / 4)
    assert agg.day_values() == [(T0 // DAY + 40, to_units("50")), (T0 // DAY + 41, to_units("20"))]


def test_folding_keeps_the_first_day_right(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.rules.customer as module

    monkeypatch.setattr(module, "MAX_ORDERS", 5)
    monkeypatch.setattr(module, "FOLD_CHUNK", 2)
    c = Customer("default", "c1")
    for n in range(8):
        c.apply(placed(n, f"{n + 1}.00", T0 + n * DAY))
    assert c.first_day_value() == to_units("1")
    assert c.over_bound
    c.fold()  # orders 0-2 (1 + 2 + 3) fold
    agg = c.aggregates()
    assert agg is not None
    assert agg.first_day_value() == to_units("2")
    assert Customer.decode("default", "c1", c.encode()).first_day_value() == to_units("2")


def test_aggregates_without_a_customer_estimate_the_first_day() -> None:
    times = (T0, T0 + 5, T0 + 3 * DAY)
    agg = Aggregates(times[0], times[-1], 3, to_units("90"), times)
    assert agg.first_day_value() == to_units("60")  # 2 orders at the mean of 30
    assert agg.day_values() == [(T0 // DAY, to_units("60")), (T0 // DAY + 3, to_units("30"))]
    folded = Aggregates(T0 - DAY, times[-1], 4, to_units("90"), times)
    assert folded.first_day_value() == to_units("22.5")
    assert churn.spend_summary(agg, T0 + 9 * DAY) == (1, 30.0)


# -- the stored fit -----------------------------------------------------------------------------

FIT = churn.Fit("bgnbd", Params(0.25, 30.5, 0.8, 2.5), -123.5, 1000, 900, 3, 1_700_000_000_000)
SPEND = SpendFit(SpendParams(6.25, 3.74, 15.45), -4055.9, 946)


def test_fit_round_trips_through_json_with_and_without_spend() -> None:
    from dataclasses import replace

    import orjson

    assert churn.Fit.from_json(FIT.to_json()) == FIT
    assert "spend" not in orjson.loads(FIT.to_json())  # stored as before
    with_spend = replace(FIT, spend=SPEND)
    assert churn.Fit.from_json(with_spend.to_json()) == with_spend
    assert orjson.loads(with_spend.to_json())["spend"] == {
        "p": 6.25,
        "q": 3.74,
        "v": 15.45,
        "log_likelihood": -4055.9,
        "population": 946,
    }
    doc = orjson.loads(FIT.to_json()) | {"spend": None}
    assert churn.Fit.from_json(orjson.dumps(doc)).spend is None


def test_a_fit_stored_before_spend_loads() -> None:
    old = (
        b'{"model":"mbgnbd","r":0.25,"alpha":30.5,"a":0.8,"b":2.5,"time_unit":"days",'
        b'"log_likelihood":-1.5,"population":10,"sampled":10,"version":1,"fitted_at":5}'
    )
    fit = churn.Fit.from_json(old)
    assert fit.spend is None and fit.model == "mbgnbd"


# -- the holdout check --------------------------------------------------------------------------


def test_holdout_spend_splits_the_order_days() -> None:
    days = [(100, 10_0000), (103, 20_0000), (104, 40_0000), (110, 5_0000), (111, 15_0000)]
    assert churn.holdout_spend(days, 110) == ((2, 30.0), 10.0)
    assert churn.holdout_spend(days, 101) == ((0, 0.0), 20.0)
    assert churn.holdout_spend(days, 100) == (None, 18.0)
    assert churn.holdout_spend(days, 200) == ((4, 20.0), None)
    assert churn.holdout_spend([], 5) == (None, None)


def test_spend_check_by_frequency() -> None:
    params = SpendParams(6.0, 3.0, 10.0)  # population mean 30
    calibration = [(0, 0.0), (1, 20.0), (1, 40.0), (3, 30.0), (12, 50.0), (2, 9.0)]
    holdout = [25.0, 21.0, 41.0, 29.0, 48.0, None]
    rows = churn.spend_check(params, calibration, holdout)
    assert [(r.frequency, r.customers) for r in rows] == [
        ("all", 5),
        ("0", 1),
        ("1", 2),
        ("3-4", 1),
        ("10+", 1),
    ]
    e = churn.expected_order_value
    assert rows[0].predicted == pytest.approx(
        (30 + e(params, 1, 20.0) + e(params, 1, 40.0) + e(params, 3, 30.0) + e(params, 12, 50.0))
        / 5
    )
    assert rows[0].actual == pytest.approx((25 + 21 + 41 + 29 + 48) / 5)
    assert rows[2].predicted == pytest.approx(30.0)  # 20 and 40 shrink alike towards 30
    assert rows[2].actual == pytest.approx(31.0)
    assert churn.spend_check(params, [(1, 3.0)], [None]) == []


def test_frequency_spend_correlation() -> None:
    data = cdnow()
    repeat = data[data["frequency"] > 0]
    r = churn.frequency_spend_correlation(summaries(data))
    assert r == pytest.approx(np.corrcoef(repeat["frequency"], repeat["monetary_value"])[0, 1])
    assert r == pytest.approx(0.1139, abs=1e-4)  # the paper's "virtually no" correlation
    assert churn.frequency_spend_correlation([(1, 5.0)]) is None
    assert churn.frequency_spend_correlation([(1, 5.0), (2, 5.0), (0, 9.0)]) is None
