"""The records' bytes (worker/rules/messages.py builds them around cached fragments) are
exactly orjson's serialisation of the documented dict, and valid against the models; the
change ids the engine spells in one text are `change_id`'s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.rules.aggregates import Aggregates
from worker.rules.customer import Customer, Published
from worker.rules.engine import Change, _changed, change_id
from worker.rules.instants import iso
from worker.rules.messages import (
    Cause,
    RfmChanged,
    RfmErased,
    RfmOverdue,
    customer_summary,
    rfm_changed,
    rfm_erased,
    rfm_overdue,
    score_view,
)
from worker.rules.profile import BUILTIN_DEFAULT
from worker.rules.scoring import Score

# -- the documented shape, as dicts (what orjson serialised before) -------------------------


def view_doc(s: Score | Published | None) -> dict[str, object] | None:
    if s is None:
        return None
    return {"r": s.r, "f": s.f, "m": s.m, "rfm": s.rfm, "segment": s.segment}


def changed_doc(
    cid: str,
    tenant: str,
    customer_id: str,
    cause: str,
    cause_event_id: str | None,
    as_of_ms: int,
    previous: Published | None,
    current: Score | None,
    agg: Aggregates | None,
    emitted_at_ms: int,
    triggers: Sequence[str],
) -> dict[str, object]:
    return {
        "type": "rfm.changed",
        "change_id": cid,
        "tenant": tenant,
        "customer_id": customer_id,
        "cause": cause,
        "cause_event_id": cause_event_id,
        "as_of": iso(as_of_ms),
        "previous": view_doc(previous),
        "current": view_doc(current),
        "segment_changed": (previous.segment if previous else None)
        != (current.segment if current else None),
        "triggers": list(triggers),
        "customer": customer_summary(agg, current),  # the customer view's own dict
        "emitted_at": iso(emitted_at_ms),
        "p_alive": current.p_alive if current else None,
        "p_alive_band": current.band if current else None,
        "expected_orders": current.expected_orders if current else None,
        "expected_order_value": current.expected_order_value if current else None,
        "expected_value": current.expected_value if current else None,
        "value_band": current.value_band if current else None,
    }


# -- strategies -----------------------------------------------------------------------------

EDGE_FLOATS = [0.0, -0.0, 0.1, 1e-7, 5e-324, 123456.789, 1e16, 1.7976931348623157e308, -2.5]
floats = st.none() | st.sampled_from(EDGE_FLOATS) | st.floats(allow_nan=False)
bands = st.none() | st.integers(1, 9)
# ids and names with quotes, backslashes, control characters and non-ASCII
texts = st.text(max_size=12) | st.sampled_from(['"', "\\", "\n\t\x00\x1f\x7f", "🍕é", "\u2028"])
instants = st.integers(0, 253_402_300_799_999)  # up to the last ms of year 9999
segments = st.sampled_from(["champions", "at_risk", 'we"ird\\', "né\n"]) | texts
triggers = st.lists(texts, max_size=3).map(tuple)


@st.composite
def scores(draw: st.DrawFn) -> Score:
    return Score(
        draw(st.integers(1, 9)),
        draw(st.integers(1, 9)),
        draw(st.integers(1, 9)),
        draw(segments),
        draw(st.integers(0, 10**6)),
        draw(floats),
        draw(bands),
        draw(floats),
        draw(floats),
        draw(floats),
        draw(bands),
    )


@st.composite
def publisheds(draw: st.DrawFn) -> Published:
    s = draw(scores())
    return Published(s.r, s.f, s.m, s.segment, s.band, s.value_band, draw(st.none() | bands))


@st.composite
def aggregates(draw: st.DrawFn) -> Aggregates:
    first = draw(instants)
    last = draw(st.just(first) | st.integers(first, 253_402_300_799_999))
    n = draw(st.integers(1, 10**6))
    return Aggregates(first, last, n, draw(st.integers(-(10**15), 10**15)), ())


# -- the properties -------------------------------------------------------------------------


@settings(max_examples=600, derandomize=True, deadline=None)
@given(
    tenant=texts,
    customer_id=texts,
    cause=st.sampled_from(get_args(Cause)),
    cause_event_id=st.none() | texts,
    as_of=instants,
    emitted=st.none() | instants,  # None: emitted at as_of
    previous=st.none() | publisheds(),
    current=st.none() | scores(),
    agg=st.none() | aggregates(),
    names=triggers,
    with_views=st.booleans(),
)
def test_rfm_changed_is_orjson_of_the_documented_dict(
    tenant: str,
    customer_id: str,
    cause: Cause,
    cause_event_id: str | None,
    as_of: int,
    emitted: int | None,
    previous: Published | None,
    current: Score | None,
    agg: Aggregates | None,
    names: tuple[str, ...],
    with_views: bool,
) -> None:
    cid = change_id(tenant, customer_id, as_of)
    emitted_at = as_of if emitted is None else emitted
    record = rfm_changed(
        change_id=cid,
        tenant=tenant,
        customer_id=customer_id,
        cause=cause,
        cause_event_id=cause_event_id,
        as_of_ms=as_of,
        previous=previous,
        current=current,
        agg=agg,
        emitted_at_ms=emitted_at,
        triggers=names,
        views=(score_view(previous), score_view(current)) if with_views else None,
    )
    doc = changed_doc(
        cid,
        tenant,
        customer_id,
        cause,
        cause_event_id,
        as_of,
        previous,
        current,
        agg,
        emitted_at,
        names,
    )
    assert record == orjson.dumps(doc)
    RfmChanged.model_validate_json(record)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    tenant=texts,
    customer_id=texts,
    instants=st.tuples(instants, instants, instants),
    gap=st.floats(0, 1e12) | st.sampled_from(EDGE_FLOATS[:7]),
    silent=st.integers(-(10**6), 10**6),
    current=scores(),
    names=triggers,
)
def test_rfm_overdue_and_erased_are_orjson_of_the_documented_dicts(
    tenant: str,
    customer_id: str,
    instants: tuple[int, int, int],
    gap: float,
    silent: int,
    current: Score,
    names: tuple[str, ...],
) -> None:
    as_of, last, emitted = instants
    gap_ms = abs(gap) * 1000 % 10**12
    cid = change_id(tenant, customer_id, last)
    record = rfm_overdue(
        change_id=cid,
        tenant=tenant,
        customer_id=customer_id,
        as_of_ms=as_of,
        last_order_at_ms=last % 10**14,
        median_gap_ms=gap_ms,
        median_gap_days=gap,
        silent_days=silent,
        current=current,
        emitted_at_ms=emitted,
        triggers=names,
    )
    assert record == orjson.dumps(
        {
            "type": "rfm.overdue",
            "change_id": cid,
            "tenant": tenant,
            "customer_id": customer_id,
            "as_of": iso(as_of),
            "last_order_at": iso(last % 10**14),
            "median_gap_days": gap,
            "expected_next_order_at": iso(last % 10**14 + round(gap_ms)),
            "silent_days": silent,
            "current": view_doc(current),
            "triggers": list(names),
            "emitted_at": iso(emitted),
        }
    )
    RfmOverdue.model_validate_json(record)
    erased = rfm_erased(
        change_id=cid, tenant=tenant, customer_id=customer_id, as_of_ms=as_of, emitted_at_ms=emitted
    )
    assert erased == orjson.dumps(
        {
            "type": "rfm.erased",
            "change_id": cid,
            "tenant": tenant,
            "customer_id": customer_id,
            "as_of": iso(as_of),
            "emitted_at": iso(emitted),
        }
    )
    RfmErased.model_validate_json(erased)


def spelled(s: Published | Score | None) -> str:
    """A score as change ids spell it (the documented parts of `change_id`)."""
    if s is None:
        return "-"
    text = f"{s.r}{s.f}{s.m}:{s.segment}"
    if s.band is not None:
        text = f"{text}:{s.band}"
    return text if s.value_band is None else f"{text}:v{s.value_band}"


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    tenant=texts,
    customer_id=texts,
    cause=st.sampled_from(get_args(Cause)),
    cause_event_id=st.none() | texts,
    previous=st.none() | publisheds(),
    current=st.none() | scores(),
    agg=st.none() | aggregates(),
)
def test_the_engine_records_carry_change_ids_of_their_parts(
    tenant: str,
    customer_id: str,
    cause: Cause,
    cause_event_id: str | None,
    previous: Published | None,
    current: Score | None,
    agg: Aggregates | None,
) -> None:
    profile = BUILTIN_DEFAULT
    change = _changed(
        Customer(tenant, customer_id),
        profile,
        agg,
        previous,
        current,
        as_of_ms=1_764_000_000_000,
        now_ms=1_764_000_001_234,
        cause=cause,
        cause_event_id=cause_event_id,
    )
    if cause_event_id is not None:
        origin = cause_event_id
    elif agg is None:
        origin = "-"
    else:
        origin = f"{agg.last_order_at}:{agg.orders_lifetime}:{agg.monetary}"
    parts = (tenant, customer_id, cause, origin, profile.version)
    assert change.payload["change_id"] == change_id(*parts, spelled(previous), spelled(current))
    assert change.payload == orjson.loads(change.record)


def test_a_change_reads_its_record_back_as_a_dict() -> None:
    change = Change("t", "c", "decay", None, None, b'{"type":"rfm.erased","a":[1,null]}')
    assert change.payload == {"type": "rfm.erased", "a": [1, None]}
