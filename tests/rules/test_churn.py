"""The churn model (worker/rules/churn/) against an independent implementation, the
`lifetimes` package, and against the published estimates of Fader, Hardie & Lee (2005) on
the CDNOW sample, which the `lifetimes` wheel ships (nothing is downloaded).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.rules import churn
from worker.rules.aggregates import Aggregates
from worker.rules.churn import Params, Summary, prediction
from worker.rules.customer import Customer
from worker.rules.decay import p_alive_band_due
from worker.rules.engine import apply_events, decay
from worker.rules.events import ValidEvent
from worker.rules.messages import RfmChanged
from worker.rules.money import to_units
from worker.rules.profiles import Profiles
from worker.rules.scoring import score

if TYPE_CHECKING:
    import pandas as pd

MODELS = ("bgnbd", "mbgnbd")
REL = 1e-6


@functools.cache
def reference() -> SimpleNamespace:
    """The reference (lifetimes, and its pandas): imported by the tests that use it, not
    when this module is collected, which every test process of the suite does (they take
    over a second to import)."""
    with warnings.catch_warnings():  # the reference's own imports warn on today's pandas
        warnings.simplefilter("ignore")
        import lifetimes
        import pandas as pd
        from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter
        from lifetimes.utils import summary_data_from_transaction_data
    return SimpleNamespace(
        pd=pd,
        datasets=Path(lifetimes.__file__).parent / "datasets",
        fitters={"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter},
        summary_data_from_transaction_data=summary_data_from_transaction_data,
    )


def cdnow() -> pd.DataFrame:
    """The CDNOW calibration period: 2,357 customers, 39 weeks (x, t_x, T in weeks)."""
    ref = reference()
    return ref.pd.read_csv(ref.datasets / "cdnow_customers_summary.csv", index_col=0)


# The reference's optimiser tolerance: tighter than its default (1e-7), so that its own
# stopping point is within 1e-7 of the optimum (tighter still, it reports no convergence).
REFERENCE_TOL = {"bgnbd": 1e-9, "mbgnbd": 1e-8}


def reference_fit(model: str, data: pd.DataFrame) -> object:
    fitter = reference().fitters[model]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitter.fit(data["frequency"], data["recency"], data["T"], tol=REFERENCE_TOL[model])
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
    ref = reference().fitters[model]()
    ref.params_ = reference().pd.Series(as_array(est.params), index=["r", "alpha", "a", "b"])
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
    ref = reference()
    tx = ref.pd.read_csv(ref.datasets / "example_transactions.csv", parse_dates=["date"])
    # orders at several times of day, two on some days: only UTC days count
    rng = np.random.default_rng(7)
    tx["date"] = tx["date"] + ref.pd.to_timedelta(rng.integers(0, 86_400_000, len(tx)), unit="ms")
    end = datetime(2015, 1, 1, 15, 30, tzinfo=UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ref.summary_data_from_transaction_data(
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


@settings(max_examples=500, deadline=None)
@given(
    days=st.lists(st.integers(19_990, 20_010), max_size=12),
    offsets=st.lists(st.sampled_from([0, 1, 3_600_000, 86_399_999]), min_size=12, max_size=12),
    folded=st.integers(0, 3),
    keeps_days=st.booleans(),
    as_of_day=st.integers(19_980, 20_020),
)
def test_summary_of_aggregates_is_the_summary_of_their_times(
    days: list[int], offsets: list[int], folded: int, keeps_days: bool, as_of_day: int
) -> None:
    """`summary_of` (the scoring path's) gives `summary`'s figures for the same orders:
    kept or folded, several on a day, the day count kept (a long history) or not."""
    day = 86_400_000
    times = sorted(d * day + o for d, o in zip(days, offsets, strict=False))
    first_at = 19_980 * day - 7 if folded else (times[0] if times else None)
    if first_at is None:
        return  # no counted order: no aggregates
    agg = Aggregates(
        first_at,
        times[-1] if times else first_at,
        len(times) + folded,
        100,
        times,
        days=len({at // day for at in times}) if keeps_days else None,
    )
    as_of = as_of_day * day + 5
    want = churn.summary(times, as_of, folded, first_at if folded else None)
    assert churn.summary_of(agg, as_of) == want


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


# -- per customer: scores, records, triggers and the due instant -------------------------------

DAY_MS = 86_400_000
T_START = 20_400 * DAY_MS  # a UTC midnight (2025-11-08)
FIT = churn.Fit("bgnbd", Params(0.243, 4.414 * 7, 0.793, 2.426), -1.0, 100, 100, 1, T_START)


def churn_profiles(model: str = "bgnbd", triggers: str = "") -> Profiles:
    return Profiles.from_toml(
        f"""
[profiles.default]
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
churn_model = "{model}"
p_alive_bands = [0.2, 0.5, 0.8]
{triggers}
"""
    )


def order(n: int, at: int) -> ValidEvent:
    return ValidEvent(
        event_id=f"e{n}",
        type="order_placed",
        order_id=f"o{n}",
        customer_id="c1",
        tenant="default",
        amount=to_units("30"),
        occurred_at=at,
    )


def test_score_carries_p_alive_band_and_expected_orders() -> None:
    profiles = churn_profiles()
    unfitted = profiles.for_tenant("default")
    c = Customer("default", "c1")
    for n, day in enumerate((0, 10, 30)):
        c.apply(order(n, T_START + day * DAY_MS + 3_600_000))
    agg = c.aggregates()
    assert agg is not None
    at = T_START + 60 * DAY_MS + 5
    s = score(agg, at, unfitted)
    assert (s.p_alive, s.band, s.expected_orders) == (None, None, None)  # no fit yet
    profile = profiles.use_fit("default", FIT)
    s = score(agg, at, profile)
    summ = Summary(2, 30, 60)
    assert s.p_alive == churn.p_alive("bgnbd", FIT.params, summ)
    assert s.band == churn.band(s.p_alive, [0.2, 0.5, 0.8])
    assert s.expected_orders == churn.expected_orders("bgnbd", FIT.params, 90, summ)
    # whole days: the same all day long
    assert score(agg, T_START + 61 * DAY_MS - 1, profile).p_alive == s.p_alive


def test_a_band_move_is_a_change_and_its_instant_is_due() -> None:
    profiles = churn_profiles(
        triggers='[[profiles.default.triggers]]\nname = "slipping"\n'
        'when = "p_alive_below"\nvalue = 0.5\n'
    )
    profile = profiles.use_fit("default", FIT)
    c = Customer("default", "c1")
    first = apply_events(
        c,
        [order(0, T_START + 1000), order(1, T_START + 7 * DAY_MS)],
        profile=profile,
        as_of_ms=T_START + 7 * DAY_MS,
        now_ms=T_START + 7 * DAY_MS,
    )
    record = first.changes[-1].payload
    RfmChanged.model_validate(record)
    summ = Summary(1, 7, 7)
    assert record["p_alive"] == churn.p_alive("bgnbd", FIT.params, summ)
    assert record["p_alive_band"] == 3  # 1 / (1 + a / b) = 0.754: between 0.5 and 0.8
    assert record["expected_orders"] == churn.expected_orders("bgnbd", FIT.params, 90, summ)
    assert c.published is not None and c.published.band == 3
    assert orjson.loads(c.encode())["s"][-1] == 3  # the band is part of the state
    # The due instant is the first midnight at which the band drops (unless R drops first).
    day = churn.day_below("bgnbd", FIT.params, summ, 0.5)
    assert day is not None
    band_due = T_START + day * DAY_MS
    r_due = T_START + 7 * DAY_MS + 16 * DAY_MS
    assert first.due == min(band_due, r_due)
    agg = c.aggregates()
    assert agg is not None
    assert p_alive_band_due(agg, profile, T_START + 7 * DAY_MS) == band_due
    # Decay walks the bands down, one change per band, at their midnights.
    at, bands, fired_names = T_START + 7 * DAY_MS, [], []
    for _ in range(20):
        result = decay(c, profile, as_of_ms=at, now_ms=at)
        for ch in result.changes:
            if ch.kind == "rfm.changed" and [ch.payload["p_alive_band"]] != (bands or [3])[-1:]:
                bands.append(ch.payload["p_alive_band"])
                fired_names += list(ch.triggers)
        if result.due is None:
            break
        at = result.due
    assert bands == [2, 1]
    assert fired_names == ["slipping"]  # once, when it fell below 0.5
    assert c.published is not None and c.published.band == 1


def test_p_alive_below_fires_on_the_crossing_only() -> None:
    from worker.rules.customer import Published
    from worker.rules.triggers import fired

    profile = churn_profiles(
        triggers='[[profiles.default.triggers]]\nname = "w"\nwhen = "p_alive_below"\nvalue = 0.5\n'
    ).for_tenant("default")
    bands = [0.2, 0.5, 0.8]

    def moved(was: int | None, now: int | None) -> tuple[str, ...]:
        return fired(
            profile.triggers,
            Published(5, 1, 1, "new_customers", was),
            Published(5, 1, 1, "new_customers", now),
            bands,
        )

    assert moved(3, 2) == ("w",)
    assert moved(4, 1) == ("w",)
    assert moved(2, 1) == ()  # already below
    assert moved(2, 3) == ()  # up
    assert moved(None, 1) == ()  # no P(alive) before (no fit yet): not a crossing
    assert moved(3, None) == ()


def test_profiles_without_a_model_say_null_and_store_as_before() -> None:
    from tests.factories import PIZZERIA

    c = Customer("default", "c1")
    result = apply_events(
        c,
        [order(0, T_START), order(1, T_START + DAY_MS)],
        profile=PIZZERIA,
        as_of_ms=T_START + DAY_MS,
        now_ms=T_START + DAY_MS,
    )
    record = result.changes[-1].payload
    assert (record["p_alive"], record["p_alive_band"], record["expected_orders"]) == (
        None,
        None,
        None,
    )
    assert len(orjson.loads(c.encode())["s"]) == 4  # the state blob as before the model
    # a model without a fit yet: null values, no band in the state
    unfitted = churn_profiles().for_tenant("default")
    c = Customer("default", "c2")
    result = apply_events(
        c, [order(0, T_START)], profile=unfitted, as_of_ms=T_START, now_ms=T_START
    )
    record = result.changes[-1].payload
    assert (record["p_alive"], record["p_alive_band"], record["expected_orders"]) == (
        None,
        None,
        None,
    )
    assert len(orjson.loads(c.encode())["s"]) == 4


def test_mbgnbd_one_time_buyers_fall_too() -> None:
    fit = churn.Fit("mbgnbd", Params(0.5, 40.0, 0.9, 1.6), -1.0, 10, 10, 1, T_START)
    profile = churn_profiles("mbgnbd").use_fit("default", fit)
    c = Customer("default", "c1")
    result = apply_events(
        c, [order(0, T_START + 5)], profile=profile, as_of_ms=T_START + 5, now_ms=T_START + 5
    )
    p = result.changes[-1].payload["p_alive"]
    assert isinstance(p, float) and p < 1
    agg = c.aggregates()
    assert agg is not None
    due = p_alive_band_due(agg, profile, T_START + 5)
    assert due is not None and due % DAY_MS == 0 and due > T_START


def test_the_documented_profile_loads() -> None:
    """docs/churn.md's example is a valid profile with the defaults it states."""
    doc = (Path(__file__).parents[2] / "docs" / "churn.md").read_text()
    toml = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    p = Profiles.from_toml(toml).for_tenant("pizzeria")
    assert (p.churn_model, p.churn_horizon_days, p.p_alive_bands, p.churn_refit_minutes) == (
        "bgnbd",
        90,
        [0.2, 0.5, 0.8],
        60,
    )
    assert [(t.when, t.value) for t in p.triggers] == [("p_alive_below", 0.5)]


@pytest.mark.parametrize("model", MODELS)
def test_per_customer_values_never_raise(model: str) -> None:
    """Scoring runs on every event: extreme (accepted) parameters and histories give a
    probability, a finite number or NaN (shown as null), never an exception."""
    extremes = [
        Params(1e-8, 1e-8, 1e-8, 1e-8),
        Params(1e8, 1e8, 1e8, 1e8),
        Params(1e8, 1e-8, 1e8, 1e-8),
        Params(5.0, 0.01, 50.0, 0.01),
    ]
    histories = [(0, 0, 0), (0, 0, 10_000), (5000, 9999, 10_000), (1, 0, 3_000_000), (3, 2, 3)]
    for params in extremes:
        for x, t_x, big_t in histories:
            s = Summary(x, t_x, big_t)
            p = churn.p_alive(model, params, s)  # type: ignore[arg-type]
            assert 0.0 <= p <= 1.0
            for t in (1, 90, 3650):
                e = churn.expected_orders(model, params, t, s)  # type: ignore[arg-type]
                assert math.isnan(e) or math.isfinite(e)
            for bound in (0.01, 0.5, 0.99):
                day = churn.day_below(model, params, s, bound)  # type: ignore[arg-type]
                assert day is None or day > big_t


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _reference(
    model: str, params: Params, t: float, x: int, t_x: int, T: int
) -> tuple[float, float]:
    """P(alive) and the expected orders written out term by term, as the papers have them
    (log space where they overflow), nothing computed ahead: what the predictor must equal
    bit for bit."""
    from scipy.special import hyp2f1

    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    bg = model == "bgnbd"
    if bg and x == 0:
        p = 1.0
    else:
        q = a / (b + x - 1) if bg else a / (b + x)
        log_div = (r + x) * math.log((alpha + T) / (alpha + t_x)) + math.log(q)
        p = (
            1 / (1 + math.exp(log_div))
            if log_div <= 0
            else math.exp(-log_div) / (1 + math.exp(-log_div))
        )
    try:
        c = a + b + x - 1 if bg else a + b + x
        h = b + x if bg else b + x + 1
        z = t / (alpha + T + t)
        value = float(hyp2f1(r + x, h, c, z))
        if math.isfinite(value) and value > 0:
            log_hyp = math.log(value)
        else:
            log_hyp = math.log(float(hyp2f1(c - (r + x), c - h, c, z))) + (
                c - (r + x) - h
            ) * math.log1p(-z)
        shrink = (r + x) * math.log((alpha + T) / (alpha + T + t))
        if bg and x == 0:
            denominator = 1.0
        else:
            ratio = math.pow((alpha + T) / (alpha + t_x), r + x)
            denominator = 1 + (a / (b + x - 1) if bg else a / (b + x)) * ratio
        e = c / (a - 1) * (1 - math.exp(log_hyp + shrink)) / denominator
    except (ValueError, OverflowError, ZeroDivisionError):
        e = math.nan
    return p, e if math.isfinite(e) else math.nan


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    params=st.builds(
        Params,
        st.floats(1e-6, 1e3),
        st.floats(1e-6, 1e4),
        st.floats(1e-6, 1e3) | st.just(1.0),
        st.floats(1e-6, 1e3),
    ),
    x=st.integers(0, 5000),
    t_x=st.integers(0, 20_000),
    silence=st.just(0) | st.integers(0, 3_000_000),  # 0: scored on a day it ordered
    t=st.sampled_from([1, 7, 90, 365, 3650]),
)
def test_predict_is_p_alive_and_expected_orders_bit_for_bit(
    model: str, params: Params, x: int, t_x: int, silence: int, t: int
) -> None:
    """Scoring's one call is the two figures' own functions and the formulas written out,
    the same bits (NaN as NaN): computed fresh, kept for a customer scored on a day it
    ordered, or computed again from the per-x terms of an earlier one."""
    s = Summary(x, 0 if x == 0 else t_x, (0 if x == 0 else t_x) + silence)
    expected = _reference(model, params, t, s.x, s.t_x, s.T)
    predictor = prediction.predictor(model, params)  # type: ignore[arg-type]
    for again in range(3):
        if again == 2:  # the figures forgotten, the terms of x kept
            predictor._predicted.clear()
        p, e = predictor.predict(t, s.x, s.t_x, s.T)
        assert _same(p, expected[0]) and _same(e, expected[1]), (p, e, expected)
        assert _same(p, churn.p_alive(model, params, s))  # type: ignore[arg-type]
        assert _same(e, churn.expected_orders(model, params, t, s))  # type: ignore[arg-type]
    assert 0.0 <= p <= 1.0
    assert math.isnan(e) or math.isfinite(e)


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(
    st.floats(0.001, 200),
    st.floats(0.001, 400),
    st.floats(0.001, 400),
    st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.5, 0.999999, 1.0]),
)
def test_the_scalar_hyp2f1_is_scipys_bit_for_bit(a: float, b: float, c: float, z: float) -> None:
    """The expected orders call scipy's hyp2f1 through its scalar entry point (cheaper per
    call): the same function, the same bits, inf and nan included."""
    from scipy.special import hyp2f1

    scalar = prediction._load_hyp2f1()
    ours, theirs = scalar(a, b, c, z), float(hyp2f1(a, b, c, z))
    assert type(ours) is float
    assert ours == theirs or (math.isnan(ours) and math.isnan(theirs)), (a, b, c, z)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    customers=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 700), st.sampled_from([0, 0, 1, 30])),
        min_size=1,
        max_size=8,
    ),
    bounds=st.lists(st.sampled_from([0.05, 0.2, 0.5, 0.8, 0.95]), min_size=1, max_size=3),
)
def test_a_predictors_day_below_is_day_below(
    model: str, customers: list[tuple[int, int, int]], bounds: list[float]
) -> None:
    """The predictor's day a customer falls below a bound, kept for customers scored on a
    day they ordered, is `day_below`'s, None included, whoever asked before."""
    params = Params(0.243, 4.414 / 7, 0.793, 2.426)  # CDNOW, per day
    kept = prediction.Predictor(model, params)  # type: ignore[arg-type]
    # each customer scored on an order day beside one of the same x and T silent for 5 days
    customers += [(x, t_x - 5, 5) for x, t_x, silence in customers if not silence and t_x >= 5]
    for _ in range(2):  # the second time from what the predictor kept
        for x, t_x, silence in customers:
            s = Summary(x, t_x, t_x + silence)
            now = churn.p_alive(model, params, s)  # type: ignore[arg-type]
            for bound in bounds:
                if now < bound:
                    continue  # the caller asks for the bound below P(alive) only
                want = churn.day_below(model, params, s, bound, now=now)  # type: ignore[arg-type]
                assert kept.day_below(s, bound, now) == want, (s, bound)
    assert len(kept._days_below) <= prediction.MAX_PREDICTIONS


def test_a_predictor_keeps_at_most_max_terms_and_the_same_figures() -> None:
    """A customer whose x grows for ever (a bot, a shared account) does not grow the
    predictor's terms without bound, nor a backfill's ever new customers its figures, and
    terms or figures computed again give the same bits."""
    params = Params(0.243, 30.9, 0.793, 2.426)
    kept = prediction.Predictor("bgnbd", params)
    for x in range(prediction.MAX_TERMS + 10):
        first = kept.predict(90, x, x, x + 30)
        assert len(kept._by_x) <= prediction.MAX_TERMS
        assert prediction.Predictor("bgnbd", params).predict(90, x, x, x + 30) == first
    assert kept.predict(90, 0, 0, 30) == prediction.Predictor("bgnbd", params).predict(90, 0, 0, 30)
    for T in range(prediction.MAX_PREDICTIONS + 10):  # scored on a day they ordered
        first = kept.predict(90, 3, T, T)
        assert len(kept._predicted) <= prediction.MAX_PREDICTIONS
        assert kept.predict(90, 3, T, T) == first
    assert kept._predicted
    for t in (90, 365):  # the horizon is part of what the figures are kept by
        assert kept.predict(t, 3, 2, 2) == prediction.Predictor("bgnbd", params).predict(t, 3, 2, 2)
    for x in (0, 1, 5):  # and so are x, t_x and T
        for t_x, T in ((7, 7), (6, 7), (7, 8)):
            want = prediction.Predictor("bgnbd", params).predict(90, x, t_x, T)
            assert kept.predict(90, x, t_x, T) == want, (x, t_x, T)
