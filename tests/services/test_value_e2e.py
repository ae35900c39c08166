"""The spend model end to end on CDNOW: a real broker, a real Redis, the sample's calibration
period (orders up to 1997-09-30, the transaction log the `lifetimes` wheel ships) through
`rfm-worker run`, which fits the churn and spend models; `sweep --once` at 1997-10-01 refits
both; then every customer, read through `rfm-worker export` as of 1997-10-01, against the
`lifetimes` package (an independent implementation, a test dependency only): its
`GammaGammaFitter` on the same (x, m_x), and its `conditional_expected_average_profit` at the
worker's parameters."""

from __future__ import annotations

import functools
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Deployment
from tests.factories import placed_doc
from tests.fixtures import records_of, sweep_once
from tests.services.test_churn_e2e import applied, changes
from worker.rules.churn import SpendParams, spend_log_likelihood
from worker.state.store import Store

CALIBRATION_END = "19970930"  # the calibration period of Fader, Hardie & Lee (2005)
SCORED = datetime(1997, 10, 1, tzinfo=UTC)
WITHOUT_MODEL = """
[profiles.default]
recency_days = [30, 90, 180, 365]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""
PROFILES = """
[profiles.default]
recency_days = [30, 90, 180, 365]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
churn_model = "bgnbd"
churn_refit_minutes = 60
value_model = "gamma_gamma"
"""
PARAMS_REL = 1e-3  # the worker's p, q, v against lifetimes' (its optimiser stops earlier)
VALUE_REL = 1e-6  # per customer, at the same parameters


@functools.cache
def cdnow() -> Any:
    """The CDNOW sample's transactions (customer, date, amount), the calibration period."""
    with warnings.catch_warnings():  # the reference's own imports warn on today's pandas
        warnings.simplefilter("ignore")
        import lifetimes
        import pandas as pd
    path = Path(lifetimes.__file__).parent / "datasets" / "CDNOW_sample.txt"
    log = pd.read_csv(
        path, sep=r"\s+", header=None, names=["customer", "id", "date", "quantity", "amount"]
    )
    log = log[log["date"] <= int(CALIBRATION_END)].copy()
    log["customer"] = log["customer"].astype(str)
    log["day"] = pd.to_datetime(log["date"].astype(str), format="%Y%m%d")
    return log


def reference_summary() -> Any:
    """lifetimes' daily (frequency, monetary_value) per customer: x and m_x."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes.utils import summary_data_from_transaction_data

        return summary_data_from_transaction_data(
            cdnow(),
            "customer",
            "day",
            monetary_value_col="amount",
            observation_period_end=CALIBRATION_END,
            freq="D",
        )


def orders() -> list[dict[str, Any]]:
    """One order per line of the log, at noon UTC of its day (several a day: one purchase)."""
    docs = []
    for n, row in enumerate(cdnow().itertuples()):
        at = datetime(row.day.year, row.day.month, row.day.day, 12, tzinfo=UTC)
        docs.append(placed_doc(row.customer, n, at, f"{row.amount:.2f}"))
    return docs


@pytest.mark.timeout(300)
def test_cdnow_spend_model_equals_lifetimes(
    deployment: Deployment, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(WITHOUT_MODEL)
    deployment.extra_env.update(RFM_CLOCK="event", RFM_PROFILES=str(path), RFM_SWEEP_INTERVAL="0.5")
    docs = orders()
    customers = {d["customer_id"] for d in docs}
    assert len(customers) == 2357
    deployment.produce(records_of(docs))
    # The base first, without the models; then the models: the first fit, at the first
    # assignment, sees the whole base and rescores it.
    first = deployment.worker()
    deadline = time.monotonic() + 120
    while applied(deployment.http_port) < len(docs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert applied(deployment.http_port) == len(docs)
    assert first.stop() == 0
    path.write_text(PROFILES)
    worker = deployment.worker()

    def valued(messages: list[Any]) -> bool:
        records = [orjson.loads(m.value()) for m in messages]
        done = {r["customer_id"] for r in records if r.get("expected_order_value") is not None}
        return done == customers

    records = changes(deployment, valued, timeout=120)
    assert worker.stop() == 0
    fitted = store.churn_fits.read()["default"]
    assert fitted.version == 1 and fitted.spend is not None
    assert {r["cause"] for r in records if r.get("expected_order_value") is not None} == {"rescore"}

    # sweep --once at the scoring instant: the fit is older than churn_refit_minutes on the
    # event clock (the last order, 12 hours before), so the sweep refits both models.
    sweep_once(monkeypatch, deployment, SCORED)
    fit = store.churn_fits.read()["default"]
    assert (fit.version, fit.fitted_at) == (2, int(SCORED.timestamp() * 1000))
    spend = fit.spend
    assert spend is not None

    ref = reference_summary()
    repeat = ref[(ref["frequency"] > 0) & (ref["monetary_value"] > 0)]
    assert spend.population == len(repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import GammaGammaFitter

        gg = GammaGammaFitter()
        gg.fit(repeat["frequency"], repeat["monetary_value"])
    want = (gg.params_["p"], gg.params_["q"], gg.params_["v"])
    got = (spend.params.p, spend.params.q, spend.params.v)
    assert got == pytest.approx(want, rel=PARAMS_REL)
    # The worker's optimum is at least as good as the reference's (the same likelihood).
    at_reference = spend_log_likelihood(
        SpendParams(*want), repeat["frequency"], repeat["monetary_value"]
    )
    assert spend.log_likelihood >= at_reference - 1e-9 * abs(at_reference)

    # Every customer, through `rfm-worker export` as of the scoring instant.
    done = deployment.command("export", "--tenant", "default", "--as-of", "1997-10-01")
    assert done.returncode == 0, done.stderr
    exported = {d["customer_id"]: d for d in map(orjson.loads, done.stdout.splitlines())}
    assert set(exported) == customers
    gg.params_ = gg.params_.copy()
    gg.params_[["p", "q", "v"]] = list(got)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profit = gg.conditional_expected_average_profit(ref["frequency"], ref["monetary_value"])
    for cid, doc in exported.items():
        assert doc["expected_order_value"] == pytest.approx(profit[cid], rel=VALUE_REL), cid
        assert doc["expected_value"] == pytest.approx(
            doc["expected_order_value"] * doc["expected_orders"], rel=1e-12
        )

    # `rfm-worker model` on the same base: the stored spend fit beside the churn parameters,
    # and the correlation of frequency and spend, the paper's 0.11 on CDNOW (low: no warning).
    done = deployment.command("model", "--profile", "default", "--json")
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert (doc["fit"]["version"], doc["fit"]["r"]) == (2, fit.params.r)
    assert (doc["fit"]["spend"]["p"], doc["fit"]["spend"]["population"]) == (got[0], len(repeat))
    corr = doc["value"]["correlation"]
    assert corr["x_m_x"] == pytest.approx(repeat[["frequency", "monetary_value"]].corr().iloc[0, 1])
    assert corr["x_m_x"] == pytest.approx(0.11, abs=0.01) and corr["warning"] is None
    assert doc["value"]["check"]["rows"][0]["frequency"] == "all"
