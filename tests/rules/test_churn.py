"""The churn model (worker/rules/churn.py) against an independent implementation, the
`lifetimes` package, and against the published estimates of Fader, Hardie & Lee (2005) on
the CDNOW sample, which the `lifetimes` wheel ships (nothing is downloaded).
"""

from __future__ import annotations

import itertools
import math
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from worker.rules import churn
from worker.rules.churn import Params, Summary

with warnings.catch_warnings():  # the reference's own imports warn on today's pandas
    warnings.simplefilter("ignore")
    import lifetimes
    import pandas as pd
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter
    from lifetimes.utils import summary_data_from_transaction_data

DATASETS = Path(lifetimes.__file__).parent / "datasets"
REFERENCE = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter}
MODELS = ("bgnbd", "mbgnbd")
REL = 1e-6


def cdnow() -> pd.DataFrame:
    """The CDNOW calibration period: 2,357 customers, 39 weeks (x, t_x, T in weeks)."""
    return pd.read_csv(DATASETS / "cdnow_customers_summary.csv", index_col=0)


def reference_fit(model: str, data: pd.DataFrame) -> object:
    fitter = REFERENCE[model]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitter.fit(data["frequency"], data["recency"], data["T"])
    return fitter


def as_array(p: Params) -> np.ndarray:
    return np.array([p.r, p.alpha, p.a, p.b])


def test_cdnow_reproduces_the_papers_estimates() -> None:
    data = cdnow()
    assert len(data) == 2357
    est = churn.fit("bgnbd", data["frequency"], data["recency"], data["T"])
    assert isinstance(est, churn.Estimate)
    p = est.params
    # Fader, Hardie & Lee (2005), section 4: r = 0.243, α = 4.414, a = 0.793, b = 2.426
    assert (round(p.r, 3), round(p.alpha, 3), round(p.a, 3), round(p.b, 3)) == (
        0.243,
        4.414,
        0.793,
        2.426,
    )
    # ... and the log-likelihood the paper prints, -9582.4
    assert round(est.log_likelihood, 1) == -9582.4


@pytest.mark.parametrize("model", MODELS)
def test_fit_equals_lifetimes(model: str) -> None:
    data = cdnow()
    est = churn.fit(model, data["frequency"], data["recency"], data["T"])
    assert isinstance(est, churn.Estimate)
    ref = reference_fit(model, data)
    expected = ref.params_[["r", "alpha", "a", "b"]].to_numpy()  # type: ignore[attr-defined]
    np.testing.assert_allclose(as_array(est.params), expected, rtol=REL)
    # the log-likelihood: the reference's own formula at our parameters
    nll = ref._negative_log_likelihood(  # type: ignore[attr-defined]
        np.log(as_array(est.params)),
        data["frequency"].to_numpy(),
        data["recency"].to_numpy(),
        data["T"].to_numpy(),
        np.ones(len(data)),
        0.0,
    )
    assert est.log_likelihood == pytest.approx(-nll * len(data), rel=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_per_customer_values_equal_lifetimes(model: str) -> None:
    data = cdnow()
    est = churn.fit(model, data["frequency"], data["recency"], data["T"])
    assert isinstance(est, churn.Estimate)
    ref = REFERENCE[model]()
    ref.params_ = pd.Series(as_array(est.params), index=["r", "alpha", "a", "b"])
    f, rec, t = (data[c].to_numpy() for c in ("frequency", "recency", "T"))
    want_alive = ref.conditional_probability_alive(f, rec, t)
    want_orders = ref.conditional_expected_number_of_purchases_up_to_time(13.0, f, rec, t)
    got_alive, got_orders = [], []
    for x, tx, big_t in zip(f, rec, t, strict=True):
        s = Summary(int(x), tx, big_t)  # type: ignore[arg-type]  # weeks, with decimals
        got_alive.append(churn.p_alive(model, est.params, s))
        got_orders.append(churn.expected_orders(model, est.params, 13.0, s))
    np.testing.assert_allclose(got_alive, want_alive, rtol=REL)
    np.testing.assert_allclose(got_orders, want_orders, rtol=REL)
    for t_ in (1.0, 13.0, 39.0, 78.0):
        assert churn.expected_repeat(model, est.params, t_) == pytest.approx(
            ref.expected_number_of_purchases_up_to_time(t_), rel=REL
        )


def test_summary_equals_lifetimes_daily_summary() -> None:
    """x, t_x, T from order instants (epoch ms) as lifetimes summarises daily periods."""
    tx = pd.read_csv(DATASETS / "example_transactions.csv", parse_dates=["date"])
    # orders at several times of day, two on some days: only UTC days count
    rng = np.random.default_rng(7)
    tx["date"] = tx["date"] + pd.to_timedelta(rng.integers(0, 86_400_000, len(tx)), unit="ms")
    end = datetime(2015, 1, 1, 15, 30, tzinfo=UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = summary_data_from_transaction_data(
            tx, "id", "date", freq="D", observation_period_end=end.replace(tzinfo=None)
        )
    as_of_ms = int(end.timestamp() * 1000)
    for cid, group in list(tx.groupby("id"))[:2000]:
        times = sorted(int(ts.value // 1_000_000) for ts in group["date"])
        s = churn.summary(times, as_of_ms)
        assert s is not None
        row = want.loc[cid]
        assert (s.x, s.t_x, s.T) == (row["frequency"], row["recency"], row["T"]), cid


def test_summary_days() -> None:
    day = 86_400_000
    t0 = 20_000 * day
    assert churn.summary([], t0) is None
    assert churn.summary([t0 + 5], t0 + 3 * day - 1) == Summary(0, 0, 2)
    # two orders on one UTC day are one purchase day; the instant of scoring counts by day
    assert churn.summary([t0 + 1, t0 + 2, t0 + day + 9], t0 + 10 * day) == Summary(1, 1, 10)
    # folded orders: each its own day, from the first one's instant
    assert churn.summary([t0 + 5 * day], t0 + 9 * day, folded=3, first_at=t0) == Summary(3, 5, 9)


def test_failures_say_why() -> None:
    assert churn.fit("bgnbd", [], [], []) == churn.Failed("no customer to fit")
    failed = churn.fit("bgnbd", [0, 0], [0, 0], [5, 9])
    assert isinstance(failed, churn.Failed)
    assert "repeat purchase" in failed.reason
    assert isinstance(churn.fit("mbgnbd", [1], [3], [2]), churn.Failed)  # t_x > T


@pytest.mark.parametrize("model", MODELS)
def test_fit_in_days_matches_weeks(model: str) -> None:
    """The unit is the data's: the same customers in days give α x 7 and the rest equal."""
    data = cdnow()
    weeks = churn.fit(model, data["frequency"], data["recency"], data["T"])
    days = churn.fit(model, data["frequency"], data["recency"] * 7, data["T"] * 7)
    assert isinstance(weeks, churn.Estimate)
    assert isinstance(days, churn.Estimate)
    w, d = weeks.params, days.params
    np.testing.assert_allclose([d.r, d.alpha / 7, d.a, d.b], [w.r, w.alpha, w.a, w.b], rtol=REL)


@pytest.mark.parametrize("model", MODELS)
def test_fit_round_trips_through_json(model: str) -> None:
    fit = churn.Fit(model, Params(0.25, 30.5, 0.8, 2.5), -123.5, 1000, 900, 3, 1_700_000_000_000)  # type: ignore[arg-type]
    assert churn.Fit.from_json(fit.to_json()) == fit


def test_band() -> None:
    bounds = [0.2, 0.5, 0.8]
    assert [churn.band(p, bounds) for p in (0.0, 0.19, 0.2, 0.5, 0.79, 0.8, 1.0)] == [
        1,
        1,
        2,
        3,
        3,
        4,
        4,
    ]


@pytest.mark.parametrize("model", MODELS)
def test_day_below_is_the_first_whole_day_below(model: str) -> None:
    params = Params(0.243, 4.414 / 7, 0.793, 2.426)  # CDNOW, per day
    for x, t_x, big_t in [(1, 3, 10), (5, 100, 120), (20, 300, 300), (0, 0, 4), (2, 0, 1)]:
        s = Summary(x, t_x, big_t)
        for bound in (0.2, 0.5, 0.8, 0.95):
            day = churn.day_below(model, params, s, bound)  # type: ignore[arg-type]
            now = churn.p_alive(model, params, s)  # type: ignore[arg-type]
            if model == "bgnbd" and x == 0:
                assert day is None  # stays alive until a repeat purchase
                continue
            if now < bound:
                assert day is None
                continue
            assert day is not None and day > big_t
            at = churn.p_alive(model, params, Summary(x, t_x, day))  # type: ignore[arg-type]
            before = churn.p_alive(model, params, Summary(x, t_x, day - 1))  # type: ignore[arg-type]
            assert at < bound <= before


def test_p_alive_falls_with_age() -> None:
    params = Params(0.243, 0.63, 0.793, 2.426)
    values = [churn.p_alive("bgnbd", params, Summary(3, 30, t)) for t in range(30, 400, 7)]
    assert all(b < a for a, b in itertools.pairwise(values))
    assert math.isclose(churn.p_alive("bgnbd", params, Summary(0, 0, 50)), 1.0)
