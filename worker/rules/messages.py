"""Output records: the actions topic (section 5) and the customer view (section 7).

The pydantic models are the documented shape (JSON Schemas in schemas/ are generated from
them); the hot path builds plain dicts with the same shape and serialises them with orjson,
and the tests check the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from worker.rules.aggregates import Aggregates
from worker.rules.customer import Published
from worker.rules.instants import iso
from worker.rules.money import format_units
from worker.rules.scoring import Score

Cause = Literal["order", "cancel", "refund", "decay", "rescore"]
CAUSE_OF_EVENT: dict[str, Cause] = {
    "order_placed": "order",
    "order_cancelled": "cancel",
    "order_refunded": "refund",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreView(_Model):
    r: int
    f: int
    m: int
    rfm: str
    segment: str


class CustomerSummary(_Model):
    first_order_at: str | None
    last_order_at: str | None
    orders: int
    orders_lifetime: int
    monetary: str


class RfmChanged(_Model):
    """A change of a customer's (R, F, M) or segment."""

    model_config = ConfigDict(title="RfmChanged")
    type: Literal["rfm.changed"]
    change_id: str
    tenant: str
    customer_id: str
    cause: Cause
    cause_event_id: str | None
    as_of: str
    previous: ScoreView | None
    current: ScoreView | None
    segment_changed: bool
    triggers: list[str]
    customer: CustomerSummary
    emitted_at: str
    # docs/churn.md: null when the profile has no churn model, or before its first fit.
    p_alive: float | None
    p_alive_band: int | None
    expected_orders: float | None
    # null without a value model or its fit; value_band null without value_bands too.
    expected_order_value: float | None
    expected_value: float | None
    value_band: int | None


class RfmOverdue(_Model):
    """Once per silence: a regular customer is overdue against their own rhythm."""

    model_config = ConfigDict(title="RfmOverdue")
    type: Literal["rfm.overdue"]
    change_id: str
    tenant: str
    customer_id: str
    as_of: str
    last_order_at: str
    median_gap_days: float
    expected_next_order_at: str
    silent_days: int
    current: ScoreView
    triggers: list[str]
    emitted_at: str


class RfmErased(_Model):
    """Once per erasure: the customer is forgotten; consumers forget it too
    (docs/personal-data.md)."""

    model_config = ConfigDict(title="RfmErased")
    type: Literal["rfm.erased"]
    change_id: str
    tenant: str
    customer_id: str
    as_of: str
    emitted_at: str


class CustomerView(_Model):
    """A customer's aggregates and scores at `as_of` (CLI, export and read API)."""

    model_config = ConfigDict(title="CustomerView")
    tenant: str
    customer_id: str
    first_order_at: str
    last_order_at: str
    orders: int
    orders_lifetime: int
    monetary: str
    r: int
    f: int
    m: int
    rfm: str
    segment: str
    as_of: str
    # docs/churn.md: null when the profile has no churn model, or before its first fit.
    p_alive: float | None
    p_alive_band: int | None
    expected_orders: float | None
    # null without a value model or its fit; value_band null without value_bands too.
    expected_order_value: float | None
    expected_value: float | None
    value_band: int | None


def score_view(s: Score | Published | None) -> dict[str, object] | None:
    """The score as records show it. One dict per distinct score, shared: records are
    serialised, never changed, and a base has a few hundred distinct scores at most."""
    if s is None:
        return None
    key = (s.r, s.f, s.m, s.segment)
    view = _VIEWS.get(key)
    if view is None:
        if len(_VIEWS) >= 10_000:  # segment names come from profiles: bounded anyway
            _VIEWS.clear()
        view = _VIEWS[key] = {"r": s.r, "f": s.f, "m": s.m, "rfm": s.rfm, "segment": s.segment}
    return view


_VIEWS: dict[tuple[int, int, int, str], dict[str, object]] = {}


def customer_summary(agg: Aggregates | None, score: Score | None) -> dict[str, object]:
    if agg is None:
        return {
            "first_order_at": None,
            "last_order_at": None,
            "orders": 0,
            "orders_lifetime": 0,
            "monetary": "0.00",
        }
    first = iso(agg.first_order_at)
    last = first if agg.last_order_at == agg.first_order_at else iso(agg.last_order_at)
    return {
        "first_order_at": first,
        "last_order_at": last,
        "orders": score.orders if score else agg.orders_lifetime,
        "orders_lifetime": agg.orders_lifetime,
        "monetary": format_units(agg.monetary),
    }


def rfm_changed(
    *,
    change_id: str,
    tenant: str,
    customer_id: str,
    cause: Cause,
    cause_event_id: str | None,
    as_of_ms: int,
    previous: Published | None,
    current: Score | None,
    agg: Aggregates | None,
    emitted_at_ms: int,
    triggers: Sequence[str] = (),
) -> dict[str, object]:
    """The record of a change; P(alive) and its band are null without a churn model (or
    before its first fit), the values without a value model. One dict literal: built for
    nearly every event."""
    as_of = iso(as_of_ms)
    return {
        "type": "rfm.changed",
        "change_id": change_id,
        "tenant": tenant,
        "customer_id": customer_id,
        "cause": cause,
        "cause_event_id": cause_event_id,
        "as_of": as_of,
        "previous": score_view(previous),
        "current": score_view(current),
        "segment_changed": (previous.segment if previous else None)
        != (current.segment if current else None),
        "triggers": list(triggers),
        "customer": customer_summary(agg, current),
        "emitted_at": as_of if emitted_at_ms == as_of_ms else iso(emitted_at_ms),
        **churn_values(current),
    }


def churn_values(current: Score | None) -> dict[str, object]:
    """P(alive), its band, the expected orders, and the expected order value, value and
    value band, as records show them (null: no churn or value model, or no fit yet)."""
    if current is None:
        return _NO_CHURN_VALUES
    return {
        "p_alive": current.p_alive,
        "p_alive_band": current.band,
        "expected_orders": current.expected_orders,
        "expected_order_value": current.expected_order_value,
        "expected_value": current.expected_value,
        "value_band": current.value_band,
    }


_NO_CHURN_VALUES: dict[str, object] = dict.fromkeys(
    (
        "p_alive",
        "p_alive_band",
        "expected_orders",
        "expected_order_value",
        "expected_value",
        "value_band",
    )
)


def customer_view(
    tenant: str,
    customer_id: str,
    agg: Aggregates,
    score: Score,
    as_of_ms: int,
) -> dict[str, object]:
    doc: dict[str, object] = {
        "tenant": tenant,
        "customer_id": customer_id,
        **customer_summary(agg, score),
        "r": score.r,
        "f": score.f,
        "m": score.m,
        "rfm": score.rfm,
        "segment": score.segment,
        "as_of": iso(as_of_ms),
    }
    doc.update(churn_values(score))
    return doc


def rfm_overdue(
    *,
    change_id: str,
    tenant: str,
    customer_id: str,
    as_of_ms: int,
    last_order_at_ms: int,
    median_gap_ms: float,
    median_gap_days: float,
    silent_days: int,
    current: Score,
    emitted_at_ms: int,
    triggers: Sequence[str] = (),
) -> dict[str, object]:
    return {
        "type": "rfm.overdue",
        "change_id": change_id,
        "tenant": tenant,
        "customer_id": customer_id,
        "as_of": iso(as_of_ms),
        "last_order_at": iso(last_order_at_ms),
        "median_gap_days": median_gap_days,
        "expected_next_order_at": iso(last_order_at_ms + round(median_gap_ms)),
        "silent_days": silent_days,
        "current": score_view(current),
        "triggers": list(triggers),
        "emitted_at": iso(emitted_at_ms),
    }


def rfm_erased(
    *, change_id: str, tenant: str, customer_id: str, as_of_ms: int, emitted_at_ms: int
) -> dict[str, object]:
    return {
        "type": "rfm.erased",
        "change_id": change_id,
        "tenant": tenant,
        "customer_id": customer_id,
        "as_of": iso(as_of_ms),
        "emitted_at": iso(emitted_at_ms),
    }
