"""Output records: the actions topic (section 5) and the customer view (section 7).

The pydantic models are the documented shape (JSON Schemas in schemas/ are generated from
them). The records to publish are built for nearly every event, so they are built as their
JSON bytes directly: one text around fragments that repeat (score views, tenants, trigger
lists, instants) serialised once, and every string or number that varies serialised by
orjson itself, so the bytes are exactly orjson's of the documented dict (the tests compare
them, and check them against the models). The customer view is a plain dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, get_args

import orjson
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
    views: tuple[str, str] | None = None,
) -> bytes:
    """The record of a change, serialised (`change_id` as the engine's `change_id` spells
    it: hex digits and dashes; `views`: previous and current as `score_view` spells them,
    when the caller has them). P(alive) and its band are null without a churn model (or
    before its first fit), the values without a value model. Built for nearly every event:
    one text around fragments serialised once (scores, tenants, triggers, instants)."""
    was, now = views or (score_view(previous), score_view(current))
    as_of = iso(as_of_ms)
    segment_changed = (previous.segment if previous else None) != (
        current.segment if current else None
    )
    if agg is None:
        customer = _NO_SUMMARY
    else:  # customer_summary's members: instants, counts and an amount need no escaping
        first = iso(agg.first_order_at)
        last = first if agg.last_order_at == agg.first_order_at else iso(agg.last_order_at)
        customer = (
            f'{{"first_order_at":"{first}","last_order_at":"{last}",'
            f'"orders":{current.orders if current else agg.orders_lifetime},'
            f'"orders_lifetime":{agg.orders_lifetime},'
            f'"monetary":"{format_units(agg.monetary)}"}}'
        )
    return (
        f'{{"type":"rfm.changed","change_id":"{change_id}","tenant":{_tenant(tenant)},'
        f'"customer_id":{_string(customer_id)},"cause":{_cause(cause)},"cause_event_id":'
        f"{'null' if cause_event_id is None else _string(cause_event_id)},"
        f'"as_of":"{as_of}","previous":{was},"current":{now},'
        f'"segment_changed":{"true" if segment_changed else "false"},'
        f'"triggers":{_names(triggers)},"customer":{customer},'
        f'"emitted_at":"{as_of if emitted_at_ms == as_of_ms else iso(emitted_at_ms)}",'
        f"{_churn_tail(current)}"
    ).encode()


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
) -> bytes:
    """The overdue alert, serialised like `rfm_changed`."""
    return (
        f'{{"type":"rfm.overdue","change_id":"{change_id}","tenant":{_tenant(tenant)},'
        f'"customer_id":{_string(customer_id)},"as_of":"{iso(as_of_ms)}",'
        f'"last_order_at":"{iso(last_order_at_ms)}",'
        f'"median_gap_days":{orjson.dumps(median_gap_days).decode()},'
        f'"expected_next_order_at":"{iso(last_order_at_ms + round(median_gap_ms))}",'
        f'"silent_days":{orjson.dumps(silent_days).decode()},"current":{score_view(current)},'
        f'"triggers":{_names(triggers)},"emitted_at":"{iso(emitted_at_ms)}"}}'
    ).encode()


def rfm_erased(
    *, change_id: str, tenant: str, customer_id: str, as_of_ms: int, emitted_at_ms: int
) -> bytes:
    """The erasure record, serialised like `rfm_changed`."""
    return (
        f'{{"type":"rfm.erased","change_id":"{change_id}","tenant":{_tenant(tenant)},'
        f'"customer_id":{_string(customer_id)},"as_of":"{iso(as_of_ms)}",'
        f'"emitted_at":"{iso(emitted_at_ms)}"}}'
    ).encode()


# -- fragments: JSON text exactly as orjson writes it, computed once where values repeat ----


def score_view(s: Score | Published | None) -> str:
    """The score as records show it, as JSON."""
    return "null" if s is None else view_text(s.r, s.f, s.m, s.segment)


@lru_cache(maxsize=10_000)  # a base has a few hundred distinct scores: serialised once each
def view_text(r: int, f: int, m: int, segment: str) -> str:
    """A score view as JSON (the engine keeps it with its own spelling of the score)."""
    return orjson.dumps({"r": r, "f": f, "m": m, "rfm": f"{r}{f}{m}", "segment": segment}).decode()


def _string(text: str) -> str:
    """A JSON string exactly as orjson escapes it (cheaper than checking it needs none)."""
    return orjson.dumps(text).decode()


@lru_cache(maxsize=10_000)
def _tenant(tenant: str) -> str:
    """A tenant as JSON: a deployment has few, each serialised once."""
    return _string(tenant)


def _names(triggers: Sequence[str]) -> str:
    """Trigger names as a JSON array: names come from profiles, each list serialised once."""
    return _names_of(tuple(triggers)) if triggers else "[]"


@lru_cache(maxsize=10_000)
def _names_of(names: tuple[str, ...]) -> str:
    return orjson.dumps(names).decode()


_NO_SUMMARY = orjson.dumps(customer_summary(None, None)).decode()


def _churn_tail(current: Score | None) -> str:
    """`churn_values` as JSON members, the record's last, and its closing brace: serialised
    by orjson in one call, all null without a churn model."""
    if current is None or (
        current.p_alive is None  # no model or no fit: the others are None too, but a Score
        and current.band is None  # may say otherwise
        and current.expected_orders is None
        and current.expected_order_value is None
        and current.expected_value is None
        and current.value_band is None
    ):
        return _NO_CHURN_TAIL
    return orjson.dumps(churn_values(current)).decode()[1:]


_NO_CHURN_TAIL = orjson.dumps(_NO_CHURN_VALUES).decode()[1:]


def _cause(cause: str) -> str:
    return _CAUSES.get(cause) or _string(cause)


_CAUSES = {cause: _string(cause) for cause in get_args(Cause)}
