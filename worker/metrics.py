"""Prometheus metrics (docs/http-and-metrics.md). Names are part of the public surface."""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Container, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

logger = logging.getLogger(__name__)

EVENTS = Counter("rfm_events", "Order events by outcome.", ["outcome"])
DEAD_LETTERS = Counter("rfm_dead_letters", "Dead-lettered records by error class.", ["error_class"])
CHANGES = Counter("rfm_changes", "Published RFM changes by cause.", ["cause"])
TRANSITIONS = Counter(
    "rfm_segment_transitions", "Segment transitions.", ["from_segment", "to_segment"]
)
CONSUMER_LAG = Gauge("rfm_consumer_lag", "Records behind the high watermark.", ["partition"])
OFFSET_RESETS = Counter(
    "rfm_offset_resets",
    "Partitions started elsewhere than the state's applied offset, by reason "
    "(topic_recreated, beyond_end, before_start).",
    ["reason"],
)
SWEEP_DURATION = Histogram(
    "rfm_sweep_duration_seconds",
    "Duration of decay sweeps, from the first due customer read to the last committed.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SWEEP_DUE = Gauge(
    "rfm_sweep_due", "Customers past their due instant (owned partitions), at the last sweep."
)
OVERDUE = Counter("rfm_overdue", "Published overdue alerts (rfm.overdue).")
ERASED = Counter("rfm_erased", "Published erasures (rfm.erased).")
TRIGGERS = Counter(
    "rfm_triggers",
    "Automation triggers fired by published records, by tenant (bounded) and trigger name.",
    ["tenant", "trigger"],
)
RESCORED = Counter(
    "rfm_rescored",
    "Customers recomputed and committed, by what caused it (events, decay).",
    ["cause"],
)
RESCORE_RUNNING = Gauge(
    "rfm_rescore_running", "1 while a marking pass looks for customers to rescore."
)
RESCORE_EXAMINED = Counter(
    "rfm_rescore_examined", "Customers examined by marking passes (changed profiles)."
)
RESCORE_MARKED = Counter(
    "rfm_rescore_marked", "Customers marked due for rescoring (changed profile, legacy)."
)
PROFILE_DISAGREEMENTS = Gauge(
    "rfm_profile_versions_disagree",
    "Profiles whose version differs among the workers running on this Redis (0: they agree).",
)
STATE_FORMAT = Gauge(
    "rfm_state_format",
    "The state format this worker writes: the newest every running worker reads "
    "(docs/operations.md, Upgrading).",
)
QUANTILE_CUTS_VERSION = Gauge(
    "rfm_quantile_cuts_version",
    "Version of the quantile cut points a quantile-mode profile scores with (0: none yet).",
    ["profile"],
)
CHURN_FIT_VERSION = Gauge(
    "rfm_churn_fit_version",
    "Version of the churn-model fit a profile scores P(alive) with (0: none yet).",
    ["profile"],
)
CHURN_FIT_FAILURES = Counter(
    "rfm_churn_fit_failures_total",
    "Churn-model fits that failed or did not converge (the previous fit stays).",
    ["profile"],
)
BATCH_DURATION = Histogram(
    "rfm_batch_duration_seconds",
    "Time to validate, apply and commit one consumed batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "rfm_batch_size", "Records per consumed batch.", buckets=(1, 10, 50, 100, 250, 500, 1000)
)
STORE_CONFLICTS = Counter("rfm_store_conflicts", "Shard commits retried after a concurrent write.")
REDIS_ERRORS = Counter("rfm_redis_errors", "Redis calls that failed and were retried.")
ORDERS_FOLDED = Counter(
    "rfm_orders_folded",
    "Orders folded into their customer's aggregates (the per-customer bound).",
)
OUTBOX_IN_FLIGHT = Gauge("rfm_outbox_in_flight", "Changes produced but not yet acknowledged.")
OUTBOX_SIZE = Gauge(
    "rfm_outbox_size",
    "Changes committed to the outbox and not yet acknowledged by the broker (this worker).",
)
DELIVERY_ERRORS = Counter("rfm_delivery_errors", "Failed deliveries to Kafka, retried.", ["topic"])
READY = Gauge("rfm_ready", "1 when the worker is consuming and its Redis answers.")
DLQ_BLOCKED = Gauge(
    "rfm_dlq_blocked", "1 while dead-letter copies go unacknowledged: consumption stalls."
)


OTHER_TENANT = "other"


def tenant_label(tenant: str, profiled: Container[str | None]) -> str:
    """A bounded `tenant` label value: the tenant's name when it has its own profile
    (`profiled`: profile names), else OTHER_TENANT (tenants are free-form in events)."""
    return tenant if tenant in profiled else OTHER_TENANT


class CustomersCollector(Collector):
    """rfm_customers{tenant,segment}, read from the counters the commits maintain (and,
    as `family`, rfm_expected_value{tenant,segment} from the value sums beside them).

    Label values are bounded: a tenant with its own profile (`tenants`, Profiles.names())
    keeps its name; every other tenant (any name the order events carry) is summed under
    the one label value OTHER.

    `read(label)` returns the customers per (tenant, segment), each tenant counted under
    label(tenant) as it reads (Store.reads.segment_counts), so a scrape holds one entry per label
    value, not one per tenant: 100,000 tenants without a profile would otherwise cost
    every scrape ~40 MB (the worker's RSS keeps it).
    """

    OTHER = OTHER_TENANT

    def __init__(
        self,
        read: Callable[[Callable[[str], str]], Tally[tuple[str, str]]],
        tenants: list[str],
        ttl: float = 5.0,
        *,
        family: tuple[str, str] = ("rfm_customers", "Customers per tenant and segment."),
        per: int = 1,  # units read per unit shown (money units: 10,000 per currency unit)
    ) -> None:
        self._read, self._ttl = read, ttl
        self._family, self._per = family, per
        self._tenants = frozenset(tenants)
        self._cached: Tally[tuple[str, str]] = Tally()
        self._at = 0.0

    def collect(self) -> Iterator[Metric]:
        name, documentation = self._family
        family = GaugeMetricFamily(name, documentation, labels=["tenant", "segment"])
        if time.monotonic() - self._at > self._ttl:
            try:
                counts = self._read(self._label)
                self._cached, self._at = self._bounded(counts), time.monotonic()
            except Exception as exc:  # a scrape must not fail because Redis is down
                logger.debug("%s kept its last values: %s", name, exc)
        for (tenant, segment), count in sorted(self._cached.items()):
            family.add_metric([tenant, segment], count / self._per)
        yield family

    def _label(self, tenant: str) -> str:
        return tenant_label(tenant, self._tenants)

    def _bounded(self, counts: Tally[tuple[str, str]]) -> Tally[tuple[str, str]]:
        totals: Tally[tuple[str, str]] = Tally()
        for (tenant, segment), count in counts.items():
            totals[(self._label(tenant), segment)] += count
        return totals

    def describe(self) -> Iterator[Metric]:
        return iter(())


def register_customers(
    read: Callable[[Callable[[str], str]], Tally[tuple[str, str]]], tenants: list[str]
) -> CustomersCollector:
    """`tenants`: the profile names (Profiles.names()), the only tenant label values."""
    collector = CustomersCollector(read, tenants)
    REGISTRY.register(collector)
    return collector


def register_expected_value(
    read: Callable[[Callable[[str], str]], Tally[tuple[str, str]]],
    tenants: list[str],
    per: int,
) -> CustomersCollector:
    """rfm_expected_value{tenant,segment}: the customers' summed expected_value (in the
    profile's currency units) as of each one's last commit; `read` gives money units, `per`
    how many make a currency unit (worker/rules/money.py SCALE)."""
    collector = CustomersCollector(
        read,
        tenants,
        family=(
            "rfm_expected_value",
            "Summed expected value (profile currency units) of the customers per tenant and "
            "segment, as of each customer's last commit.",
        ),
        per=per,
    )
    REGISTRY.register(collector)
    return collector
