"""The churn model end to end: a real broker, a real Redis, `rfm-worker run` fits the
model of a live base and publishes every customer's P(alive) band, then `sweep --once` at
later midnights publishes the band drops and the p_alive_below trigger (RFM_CLOCK=event)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Deployment
from tests.factories import DAY, bgnbd_orders, epoch_ms, midnight, placed_doc
from tests.fixtures import fetch, records_of, sweep_once
from worker.rules import churn
from worker.rules.messages import RfmChanged
from worker.state.store import Store

BANDS = [0.2, 0.5, 0.8]
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
churn_refit_minutes = 1000000      # one fit for the whole test

[[profiles.default.triggers]]
name = "slipping"
when = "p_alive_below"
value = 0.5
"""


def changes(dep: Deployment, until: Any, timeout: float = 90) -> list[dict[str, Any]]:
    messages = dep.read(dep.actions, until=until, timeout=timeout)
    seen: set[str] = set()
    out = []
    for m in messages:
        doc = orjson.loads(m.value())
        if doc["type"] == "rfm.changed" and doc["change_id"] not in seen:
            seen.add(doc["change_id"])
            out.append(doc)
    return out


def applied(port: int) -> float:
    """Events the worker serving `port` applied (rfm_events_total), 0 before it answers."""
    try:
        body = fetch(port, "/metrics")[1].decode()
    except OSError:
        return 0.0
    found = re.search(r'^rfm_events_total\{outcome="applied"\} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def p_alive_at(fit: churn.Fit, history: list[int], as_of: str) -> float:
    at = epoch_ms(datetime.fromisoformat(as_of))
    s = churn.summary(sorted(h for h in history if h <= at), at)
    assert s is not None
    return churn.p_alive(fit.model, fit.params, s)


@pytest.mark.demo_path
def test_the_worker_fits_publishes_bands_and_sweeps_walk_them_down(
    deployment: Deployment, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES)
    deployment.extra_env.update(RFM_CLOCK="event", RFM_PROFILES=str(path), RFM_SWEEP_INTERVAL="0.5")
    end = midnight(60)
    orders = bgnbd_orders(3, 120, epoch_ms(end), days=300)
    docs = [
        placed_doc(cid, n, datetime.fromtimestamp(at / 1000, UTC))
        for cid, history in orders.items()
        for n, at in enumerate(history)
    ]
    deployment.produce(records_of(docs))
    # The base first, scored without a model (its records carry nulls); then the model:
    # its first fit, at the first assignment, sees the whole base, and rescores it.
    path.write_text(WITHOUT_MODEL)
    first = deployment.worker()

    deadline = time.monotonic() + 90
    while applied(deployment.http_port) < len(docs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert applied(deployment.http_port) == len(docs)
    assert first.stop() == 0
    path.write_text(PROFILES)
    worker = deployment.worker()

    def banded(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        last: dict[str, dict[str, Any]] = {}
        for r in records:
            last[r["customer_id"]] = r
        return {c: r for c, r in last.items() if r["p_alive_band"] is not None}

    def every_customer_banded(messages: list[Any]) -> bool:
        records = [orjson.loads(m.value()) for m in messages]
        return len(banded([r for r in records if r["type"] == "rfm.changed"])) == len(orders)

    records = changes(deployment, every_customer_banded)
    assert worker.stop() == 0
    fit = store.churn_fits.read()["default"]
    assert (fit.model, fit.version, fit.population) == ("bgnbd", 1, len(orders))
    # Before the fit the records carried nulls; the fit rescored every customer.
    assert any(r["p_alive"] is None for r in records)
    last = banded(records)
    assert {r["cause"] for r in last.values()} == {"rescore"}
    for cid, r in last.items():
        RfmChanged.model_validate(r)
        assert r["p_alive"] == p_alive_at(fit, orders[cid], r["as_of"])
        assert r["p_alive_band"] == churn.band(r["p_alive"], BANDS)

    # Sweeps at the next midnights: each band drop at its midnight, cause decay.
    bands = {cid: r["p_alive_band"] for cid, r in last.items()}
    before_sweeps = {r["change_id"] for r in records}
    for d in range(41):  # every midnight from the first after the fit (end: the clock's next)
        sweep_once(monkeypatch, deployment, end + d * DAY)
    swept = [
        r
        for r in changes(deployment, lambda m: False, timeout=5)
        if r["change_id"] not in before_sweeps
    ]
    swept.sort(key=lambda r: r["as_of"])  # partitions interleave; a customer's are in order
    drops = [r for r in swept if r["p_alive_band"] != bands.get(r["customer_id"])]
    for r in swept:
        assert r["cause"] == "decay"
        assert r["as_of"].endswith("T00:00:00Z")
        assert r["p_alive"] == p_alive_at(fit, orders[r["customer_id"]], r["as_of"])
        before = bands[r["customer_id"]]
        if r["p_alive_band"] != before:
            assert r["p_alive_band"] < before
            # the first midnight below: the day before it was still in the old band
            yesterday = epoch_ms(datetime.fromisoformat(r["as_of"])) - 1
            s = churn.summary(sorted(orders[r["customer_id"]]), yesterday)
            assert s is not None
            assert churn.band(churn.p_alive(fit.model, fit.params, s), BANDS) == before
            crossed = before > 2 >= r["p_alive_band"]
            assert ("slipping" in r["triggers"]) == crossed
            bands[r["customer_id"]] = r["p_alive_band"]
    assert drops, "no band dropped in 40 days"
    assert any("slipping" in r["triggers"] for r in drops)
    # Nobody missed: every stored band is the band at the last sweep.
    at = epoch_ms(end + 40 * DAY)
    for c in store.reads.customers("default"):
        s = churn.summary(sorted(orders[c.customer_id]), at)
        assert s is not None and c.published is not None
        assert c.published.band == churn.band(churn.p_alive(fit.model, fit.params, s), BANDS)
