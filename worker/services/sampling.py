"""The customer base a quantile profile's cut points (docs/profiles.md, "Quantile mode") and a
churn model's fit, with its spend model's (docs/churn.md, docs/value.md), are computed from,
sampled as read."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

from worker.rules import churn
from worker.rules.aggregates import Aggregates
from worker.rules.profiles import DEFAULT_TENANT, Profiles
from worker.rules.scoring import days_between, windowed_orders
from worker.state import keys
from worker.state.reads import Reads

logger = logging.getLogger(__name__)


class Scan(Protocol):
    """A profile's sampled base being read, a chunk per loop turn (cut points, a fit)."""

    name: str
    chunks: Iterator[Sequence[tuple[int, ...]]]
    rows: list[tuple[int, ...]]


S = TypeVar("S", bound=Scan)


class Renews(Protocol):
    """The per-profile locks a scan reads under (worker/state/locks.py)."""

    def renew_lock(self, name: str, ttl_ms: int) -> bool: ...


def scan_step(runs: dict[str, S], locks: Renews, ttl_ms: int, what: str) -> S | None:
    """One step of the first scan in `runs`: its next chunk, read under its profile's lock,
    renewed. Returns the scan once it has read everything (taken out of `runs`, for the
    caller to finish). A scan that broke off (a Redis error, raised) or whose lock was lost
    is taken out: the next check starts again."""
    run = next(iter(runs.values()), None)
    if run is None:
        return None
    try:
        chunk = next(run.chunks, None)
    except Exception:
        del runs[run.name]
        raise
    if chunk is None:
        del runs[run.name]
        return run
    run.rows += chunk
    if not locks.renew_lock(run.name, ttl_ms):
        logger.warning("lost the %s lock of profile %s: another worker took over", what, run.name)
        del runs[run.name]
    return None


def population(reads: Reads, name: str, profiles: Profiles) -> int:
    """Customers with a published score among the tenants scored by profile `name` (the
    segment counters): the population a sample is drawn from."""
    counts = reads.score_counts(
        lambda tenant: name if profiles.for_tenant(tenant).name == name else None
    )
    return sum(counts.values())


def ranked_values(
    reads: Reads,
    name: str,
    profiles: Profiles,
    as_of_ms: int,
    *,
    sample: int,
    count: int = 500,
    rng: random.Random | None = None,
) -> Iterator[list[tuple[int, int, int]]]:
    """(days since the last order at as_of, orders as F counts them, net spend in money
    units) of the customers of the tenants scored by profile `name` that have a counted
    order, one list per SCAN chunk (`sampled_aggregates`)."""
    window = profiles.for_tenant(name).frequency_window_days
    for chunk in sampled_aggregates(reads, name, profiles, sample=sample, count=count, rng=rng):
        yield [
            (
                days_between(agg.last_order_at, as_of_ms),
                windowed_orders(agg, as_of_ms, window),
                agg.monetary,
            )
            for agg in chunk
        ]


def churn_summaries(
    reads: Reads,
    name: str,
    profiles: Profiles,
    as_of_ms: int,
    *,
    sample: int,
    count: int = 500,
    rng: random.Random | None = None,
) -> Iterator[list[tuple[int, ...]]]:
    """(x, t_x, T) at as_of (worker/rules/churn/summaries.py `summary`) of the customers of profile
    `name` with a counted order, sampled like `ranked_values`. A profile with a value model
    gets a fourth column, the net value of the repeat days in money units (`repeat_spend`)."""
    spend = profiles.configured[name].value_model is not None
    for chunk in sampled_aggregates(reads, name, profiles, sample=sample, count=count, rng=rng):
        rows: list[tuple[int, ...]] = []
        for agg in chunk:
            s = churn.summary_of(agg, as_of_ms)
            if s is None:
                continue
            rows.append((s.x, s.t_x, s.T, repeat_spend(agg)) if spend else (s.x, s.t_x, s.T))
        yield rows


def repeat_spend(agg: Aggregates) -> int:
    """The net value of a customer's repeat purchase days, money units: all days but the
    first (the numerator of the spend model's m_x, worker/rules/churn/spend.py
    `spend_summary`). An int, so that a sample's rows stay exact integers."""
    return agg.monetary - agg.first_day_value()


def sampled_aggregates(
    reads: Reads,
    name: str,
    profiles: Profiles,
    *,
    sample: int,
    count: int = 500,
    rng: random.Random | None = None,
) -> Iterator[list[Aggregates]]:
    """The aggregates of the customers of the tenants scored by profile `name` that have a
    counted order, one list per SCAN chunk of `count` keys (a list may be empty).

    Sampled: each key is kept with probability min(1, sample / population), the population
    being the profile's customers in the segment counters; every customer is read when that
    is <= sample or unknown (0), so small bases are exact."""
    base = population(reads, name, profiles)
    keep = 1.0 if base <= sample else sample / base
    draw = (rng or random.Random()).random
    # A tenant's own profile is named after it; `default` scores every other tenant.
    pattern = keys.CUSTOMER_PATTERN if name == DEFAULT_TENANT else keys.customer_pattern(name)

    def want(tenant: str) -> bool:
        return profiles.for_tenant(tenant).name == name and (keep >= 1.0 or draw() < keep)

    for found in reads.key_chunks(count, pattern):
        yield [
            agg
            for customer in reads.decoded(found, want)
            if (agg := customer.aggregates_to_keep()) is not None
        ]
