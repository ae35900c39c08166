"""The measuring scripts of docs/development.md (tests/benchmarks/instructions.py and
bytecodes.py) still run the workload they describe: not part of `make bench`, so nothing
else would notice them break."""

from __future__ import annotations

import sys
from pathlib import Path

import redis

from worker.embedded import EmbeddedRedis
from worker.rules.instants import DAY_MS

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))

import instructions


def test_a_live_batch_is_a_day_scored_at_its_last_order() -> None:
    events, _, now = instructions.workload("none", 40)
    at_once = instructions.batches(events, now, live=False)
    assert [len(b) for b, _ in at_once[:-1]] == [instructions.BATCH] * (len(at_once) - 1)
    assert {as_of for _, as_of in at_once} == {now}
    live = instructions.batches(events, now, live=True)
    assert [e for b, _ in live for e in b] == events  # every event once, in order
    for batch, as_of in live:
        days = {e.occurred_at // DAY_MS for e, _ in batch}
        assert len(days) == 1 and as_of == max(e.occurred_at for e, _ in batch)


def test_the_counted_run_starts_with_fresh_predictors(redis_server: EmbeddedRedis) -> None:
    """A second run of the same events would otherwise find every figure kept."""
    events, profiles, now = instructions.workload("churn", 40)
    instructions.apply_all(redis_server.url, events, profiles, now, live=True)
    used = profiles.fits["default"].predictor
    assert used._predicted  # the live run kept figures
    instructions.forget_figures(profiles)
    fresh = profiles.for_tenant("default").churn_fit
    assert fresh is not None and fresh == profiles.fits["default"]
    assert fresh.predictor is not used and not fresh.predictor._predicted
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.dbsize() > 0  # the workload went through the commit path
    finally:
        client.flushall()
        client.close()
