"""Quantile upkeep: the cut points of quantile profiles kept up to date (docs/profiles.md,
Quantile mode), a `Model` of the upkeep job (worker/services/upkeep.py).

A quantile profile's thresholds are cut points of the tenant's customer base
(worker/rules/quantiles.py), stored versioned in Redis (`rfm:quantiles`). When a profile's
cut points are missing or older than its `quantiles_every_minutes`, the worker that takes
the profile's lock (`rfm:quantiles:lock:<name>`) computes new ones from a sample of
`quantiles_sample` customers; until a profile has some, it scores with the 333 placeholder.
"""

from __future__ import annotations

import logging
import time

from worker import metrics
from worker.rules.instants import iso
from worker.rules.money import format_units
from worker.rules.profiles import Profiles
from worker.rules.quantiles import Cuts, cut_points
from worker.services import sampling, upkeep
from worker.services.upkeep import Failed, Run
from worker.state.store import Store

logger = logging.getLogger(__name__)


def _cuts(run: Run, profiles: Profiles, stored: Cuts | None) -> Cuts | None:
    """The cut points of the values read, as the version after `stored`."""
    columns = [list(c) for c in zip(*run.rows, strict=True)] or [[], [], []]
    days, orders, money = columns
    return cut_points(
        days,
        orders,
        money,
        version=run.next_version(stored),
        computed_at=run.as_of_ms,
        population=run.base,
    )


def _logged(run: Run, cuts: Cuts) -> None:
    logger.info(
        "quantile cut points of profile %s, version %d, as of %s: population %d, "
        "sampled %d; recency_days %s, orders %s, monetary %s; in %.3f s",
        run.name,
        cuts.version,
        iso(run.as_of_ms),
        cuts.population,
        cuts.sampled,
        list(cuts.recency_days),
        list(cuts.frequency_orders),
        [format_units(u) for u in cuts.monetary],
        time.perf_counter() - run.started,
    )


QUANTILES: upkeep.Model[Cuts] = upkeep.Model(
    what="quantile",
    names=Profiles.quantile_names,
    state=lambda store: store.cut_points,
    held=lambda profiles: profiles.cuts,
    use=Profiles.use_cuts,
    version_gauge=metrics.QUANTILE_CUTS_VERSION,
    sample=lambda profiles, name: profiles.configured[name].quantiles_sample,
    reader=sampling.ranked_values,
    compute=_cuts,
    computed_at=lambda cuts: cuts.computed_at,
    every_minutes=lambda profiles, name: profiles.configured[name].quantiles_every_minutes,
    logged=_logged,
)


def compute_cuts(store: Store, profiles: Profiles, name: str, as_of_ms: int) -> Cuts | None:
    """One whole computation at once (dry runs); None without customers."""
    cuts = upkeep.compute(QUANTILES, store, profiles, name, as_of_ms)
    assert not isinstance(cuts, Failed)  # cut points do not fail
    return cuts


def load_cuts(
    store: Store, profiles: Profiles, *, compute_missing_at: int | None = None
) -> dict[str, Cuts]:
    """Score every quantile profile with its stored cut points (`upkeep.load`)."""
    return upkeep.load(QUANTILES, store, profiles, compute_missing_at=compute_missing_at)
