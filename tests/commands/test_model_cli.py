"""`rfm-worker model --profile NAME [--json]`: the stored fit and the calibration/holdout
check (the paper's Figure 2), through the pure weekly check and the command on the suite's
Redis."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tests.factories import bgnbd_orders, placed_at
from worker.cli import main
from worker.embedded import EmbeddedRedis
from worker.rules import churn
from worker.rules.churn import Params
from worker.rules.instants import DAY_MS
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.churn_upkeep import load_fits
from worker.state.store import Store

T0 = int(datetime(2026, 3, 1, 9, 15, tzinfo=UTC).timestamp()) * 1000
TOML = """
[profiles.shop]
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
churn_model = "bgnbd"
churn_horizon_days = 91
"""


def test_weekly_check_sums_the_cohorts_expectations() -> None:
    params = Params(0.5, 20.0, 0.8, 2.5)
    # two customers: first days 0 and 3; repeats on days 5, 9 and (after the split) 15
    histories = [[0, 5, 15], [3, 9], []]
    weeks = churn.weekly_check("bgnbd", params, histories, split_day=14, end_day=21)
    assert [(w.start_day, w.holdout, w.actual, w.actual_cumulative) for w in weeks] == [
        (0, False, 1, 1),
        (7, False, 1, 2),
        (14, True, 1, 3),
    ]
    for w, end in zip(weeks, (7, 14, 21), strict=True):
        want = churn.expected_repeat("bgnbd", params, end) + churn.expected_repeat(
            "bgnbd", params, end - 3
        )
        assert w.expected_cumulative == pytest.approx(want)
    assert sum(w.expected for w in weeks) == pytest.approx(weeks[-1].expected_cumulative)
    # a customer who first bought after the split is not in the cohort
    late = churn.weekly_check("bgnbd", params, [[20, 21]], split_day=14, end_day=28)
    assert late == []


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("RFM_CLOCK", "event")
    yield


def seed(store: Store, profiles: Profiles, orders: dict[str, list[int]]) -> None:
    items = [
        (placed_at(profiles, n, cid, when, "20", tenant="shop"), 0)
        for cid, history in orders.items()
        for n, when in enumerate(history)
    ]
    causes.apply_batch(store, items, profiles, as_of_ms=T0, now_ms=T0)
    store.clock.advance(T0)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["model", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_model_prints_the_fit_and_a_holdout_check_that_holds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Store,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(TOML)
    monkeypatch.setenv("RFM_PROFILES", str(path))
    profiles = Profiles.load(path)
    orders = bgnbd_orders(11, 1500, T0, days=400)
    seed(store, profiles, orders)

    code, out, err = run(capsys, "--profile", "shop")
    assert code == 1 and "no fit stored yet" in out and "has no fit yet" in err

    load_fits(store, profiles, compute_missing_at=T0)
    fit = store.churn_fits.read()["shop"]
    code, out, err = run(capsys, "--profile", "shop", "--json")
    assert code == 0, err
    doc = orjson.loads(out)
    assert doc["fit"] == {
        "r": fit.params.r,
        "alpha": fit.params.alpha,
        "a": fit.params.a,
        "b": fit.params.b,
        "time_unit": "days",
        "log_likelihood": fit.log_likelihood,
        "population": 1500,
        "sampled": 1500,
        "version": 1,
        "fitted_at": "2026-03-01T09:15:00Z",
    }
    check = doc["check"]
    assert check["holdout_days"] == 91  # the profile's horizon
    split = (T0 // DAY_MS + 1 - 91) * DAY_MS
    assert check["split_at"] == datetime.fromtimestamp(split / 1000, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    # actual repeat purchases: brute force over the order lists
    cohort = [churn.purchase_days(h) for h in orders.values()]
    cohort = [d for d in cohort if d[0] < split // DAY_MS]
    assert check["customers"] == len(cohort)
    weeks = check["weeks"]
    assert weeks[-1]["actual_cumulative"] == sum(len(d) - 1 for d in cohort)
    holdout = [w for w in weeks if w["period"] == "holdout"]
    assert 12 <= len(holdout) <= 14
    # The data follow BG/NBD: what the calibration fit expects of the holdout weeks is
    # close to what the cohort bought (the point of the paper's Figure 2).
    actual = sum(w["actual"] for w in holdout)
    expected = sum(w["expected"] for w in holdout)
    assert actual > 100
    assert expected == pytest.approx(actual, rel=0.15)

    code, text, err = run(capsys, "--profile", "shop")
    assert code == 0, err
    assert "fit version 1 at 2026-03-01T09:15:00Z" in text
    assert "population 1500" in text
    assert "holdout" in text and "calibration" in text
    assert any(line.split()[:2] == ["week", "starts"] for line in text.splitlines() if line)


def test_model_refuses_profiles_without_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(TOML.replace('churn_model = "bgnbd"\nchurn_horizon_days = 91\n', ""))
    monkeypatch.setenv("RFM_PROFILES", str(path))
    code, _, err = run(capsys, "--profile", "shop")
    assert code == 2 and "profile 'shop' has no churn model" in err
    code, _, err = run(capsys, "--profile", "nope")
    assert code == 2 and "no profile 'nope'" in err


def test_export_csv_has_the_p_alive_columns_empty_without_a_value() -> None:
    import csv
    import io

    from worker.commands.export import export_csv
    from worker.rules.messages import CustomerView

    base = dict.fromkeys(CustomerView.model_fields)
    plain = {**base, "customer_id": "a"}  # no churn model, or no fit yet: null
    modelled = {**base, "customer_id": "b", "p_alive": 0.25, "p_alive_band": 2}
    modelled["expected_orders"] = 1.5
    out = io.BytesIO()
    export_csv([plain, modelled], out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode(), newline="")))
    assert list(rows[0]) == list(CustomerView.model_fields)
    assert list(rows[0])[-6:-3] == ["p_alive", "p_alive_band", "expected_orders"]
    assert list(rows[0])[-3:] == ["expected_order_value", "expected_value", "value_band"]
    assert [(r["p_alive"], r["p_alive_band"], r["expected_orders"]) for r in rows] == [
        ("", "", ""),
        ("0.25", "2", "1.5"),
    ]


# -- the spend model's part (docs/value.md) ------------------------------------------------------

VALUE_TOML = TOML + 'value_model = "gamma_gamma"\n'


def seed_valued(
    store: Store, profiles: Profiles, orders: dict[str, list[int]], mean: Callable[[int], float]
) -> None:
    """Orders valued from the Gamma-Gamma story: per customer ν ~ Gamma(4, 1/v), each order
    ~ Gamma(3, ν), v = mean(order count) (a constant: spend independent of frequency)."""
    rng = random.Random(5)
    items = []
    for cid, history in orders.items():
        nu = rng.gammavariate(4.0, 1 / mean(len(history)))
        for n, when in enumerate(history):
            amount = f"{max(rng.gammavariate(3.0, 1 / nu), 0.01):.2f}"
            items.append((placed_at(profiles, n, cid, when, amount, tenant="shop"), 0))
    causes.apply_batch(store, items, profiles, as_of_ms=T0, now_ms=T0)
    store.clock.advance(T0)


def test_model_shows_the_spend_fit_its_holdout_check_and_the_correlation(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Store,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(VALUE_TOML)
    monkeypatch.setenv("RFM_PROFILES", str(path))
    profiles = Profiles.load(path)
    seed_valued(store, profiles, bgnbd_orders(11, 1500, T0, days=400), lambda n: 60.0)
    load_fits(store, profiles, compute_missing_at=T0)
    fit = store.churn_fits.read()["shop"]
    assert fit.spend is not None

    code, out, err = run(capsys, "--profile", "shop", "--json")
    assert code == 0, err
    doc = orjson.loads(out)
    assert doc["value_model"] == "gamma_gamma"
    p = fit.spend.params
    assert doc["fit"]["spend"] == {
        "p": p.p,
        "q": p.q,
        "v": p.v,
        "mean_order_value": churn.population_mean(p),
        "log_likelihood": fit.spend.log_likelihood,
        "population": fit.spend.population,
    }
    assert doc["fit"]["r"] == fit.params.r  # beside the churn parameters
    assert (doc["fit"]["p"], doc["fit"]["q"], doc["fit"]["v"]) == (p.p, p.q, p.v)
    value = doc["value"]
    corr = value["correlation"]
    assert corr["customers"] == fit.spend.population
    assert abs(corr["x_m_x"]) < 0.2 and corr["warning"] is None and corr["high"] == 0.3
    check = value["check"]
    assert check["fit"] is not None and check["reason"] is None
    everyone = check["rows"][0]
    assert everyone["frequency"] == "all"
    assert everyone["customers"] == sum(r["customers"] for r in check["rows"][1:]) > 100
    # The data follow Gamma-Gamma: the order value predicted for the holdout is close to
    # what the customers then spent.
    assert everyone["predicted"] == pytest.approx(everyone["actual"], rel=0.1)

    code, text, err = run(capsys, "--profile", "shop")
    assert code == 0, err
    assert f"spend model gamma_gamma: p={p.p:.4g} q={p.q:.4g} v={p.v:.4g}" in text
    assert "frequency-spend correlation on the live base" in text and "WARNING" not in text
    assert any(line.split()[:2] == ["repeat", "purchases"] for line in text.splitlines())


def test_model_warns_when_spend_follows_frequency(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Store,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(VALUE_TOML)
    monkeypatch.setenv("RFM_PROFILES", str(path))
    profiles = Profiles.load(path)
    # the more orders, the more per order
    seed_valued(store, profiles, bgnbd_orders(12, 800, T0, days=400), lambda n: 20.0 * n)
    load_fits(store, profiles, compute_missing_at=T0)
    code, out, err = run(capsys, "--profile", "shop", "--json")
    assert code == 0, err
    corr = orjson.loads(out)["value"]["correlation"]
    assert corr["x_m_x"] >= 0.3
    assert corr["warning"].startswith(
        f"frequency and spend are correlated (r = {corr['x_m_x']:.2f}"
    )
    code, text, err = run(capsys, "--profile", "shop")
    assert "WARNING: frequency and spend are correlated" in text


def test_model_says_when_no_spend_fit_is_stored(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Store,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(VALUE_TOML)
    monkeypatch.setenv("RFM_PROFILES", str(path))
    profiles = Profiles.load(path)
    seed(store, profiles, bgnbd_orders(13, 300, T0, days=400))  # every order 20: no spread
    load_fits(store, profiles, compute_missing_at=T0)
    code, out, err = run(capsys, "--profile", "shop", "--json")
    assert code == 0, err
    doc = orjson.loads(out)
    assert doc["fit"]["spend"] is None
    assert (doc["fit"]["p"], doc["fit"]["q"], doc["fit"]["v"]) == (None, None, None)
    code, text, err = run(capsys, "--profile", "shop")
    assert "spend model gamma_gamma: no spend fit stored" in text
