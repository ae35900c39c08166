"""The pure heart: what happens to one customer, as new state and records to publish.

No I/O. The store reads a customer, calls one of these per-customer functions and commits
the result atomically (worker/state/store.py), whatever the cause:

- `apply_events`: order events. Each applied event is scored at as_of; every event that
  moves the customer's (R, F, M) or segment yields one `rfm.changed`, in event order.
- `decay`: time alone (the sweeper). The customer is scored at the sweep's instant: one
  `rfm.changed` with cause `decay` if a boundary passed (`rescore` if the customer was last
  scored with another version of its profile), and the `rfm.overdue` alert once per
  silence.

A customer's time never moves back: it is scored at max(as_of, the instant of its last
commit), so a sweep and a consumer racing on it cannot undo each other's decay. Every
result carries the customer's next due instant (worker/rules/decay.py) for the due index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from typing import Any, Literal

import orjson

from worker.rules.aggregates import Aggregates
from worker.rules.customer import Customer, Published
from worker.rules.decay import Rhythm, next_due, overdue_pending, rhythm
from worker.rules.events import ValidEvent
from worker.rules.messages import CAUSE_OF_EVENT, Cause, rfm_changed, rfm_overdue, view_text
from worker.rules.money import SCALE
from worker.rules.profile import Profile
from worker.rules.scoring import Score, days_between, score
from worker.rules.triggers import fired, fired_overdue


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Change:
    """One record to publish: `record` is the rfm.changed (or rfm.overdue, rfm.erased)
    record, serialised (worker/rules/messages.py); `payload` reads it back as a dict."""

    tenant: str
    customer_id: str
    cause: Cause | Literal["erasure"]
    from_segment: str | None
    to_segment: str | None
    record: bytes
    kind: Literal["rfm.changed", "rfm.overdue", "rfm.erased"] = "rfm.changed"
    triggers: tuple[str, ...] = ()  # the names in the record's "triggers" (rules/triggers.py)
    profile: str | None = None  # the name of the profile that scored it (metric labels)

    @property
    def payload(self) -> dict[str, Any]:
        """The record as a dict, decoded on each call (tests and tools; the hot path
        publishes `record` as it is)."""
        doc: dict[str, Any] = orjson.loads(self.record)
        return doc


@dataclass(slots=True)
class Result:
    customer: Customer
    applied: int = 0  # events merged
    duplicates: int = 0  # events already part of the state
    changes: list[Change] = field(default_factory=list)
    dirty: bool = False  # whether the stored state must be rewritten
    touched: bool = False  # whether to commit at all (state and/or due index)
    due: int | None = None  # next due instant, see worker/rules/decay.py
    folded: int = 0  # orders folded into the aggregates (the per-customer bound)
    erased: int = 0  # events ignored: at or before the customer's erasure (rules/erasure.py)
    removed: bool = False  # the stored state is deleted (an erasure with nothing after it)
    tombstone: tuple[bytes, int] | None = None  # (digest, erasure instant) to keep


def change_id(*parts: object) -> str:
    """The id of a change: a digest of what the change is, formatted as a UUID (version 8,
    RFC 9562's custom layout). Any recomputation of the same change (a replay after Redis
    lost writes, a retried commit) carries the same id, so a consumer that deduplicates on
    it sees each change once; a different change differs in one of the parts."""
    return _digest_id("\x1f".join(map(str, parts)))


def _digest_id(text: str) -> str:
    """`change_id` of the parts `text` joins with unit separators."""
    h = blake2b(text.encode(), digest_size=16).hexdigest()
    # Version 8 in the 13th hex digit; the RFC 9562 variant (binary 10xx) in the 17th: the
    # same as setting the bits in the digest's bytes, with no bytes object in between.
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _state(at: Published | Score | None) -> tuple[str, str]:
    """A score as its change ids spell it, and as its records show it (JSON)."""
    if at is None:
        return _NO_STATE
    return _spelling(at.r, at.f, at.m, at.segment, at.band, at.value_band)


_NO_STATE = ("-", "null")


@lru_cache(maxsize=10_000)  # a base has a few hundred distinct scores: spelled once each
def _spelling(
    r: int, f: int, m: int, segment: str, band: int | None, value: int | None
) -> tuple[str, str]:
    text = f"{r}{f}{m}:{segment}"
    if band is not None:
        text = f"{text}:{band}"
    return (text if value is None else f"{text}:v{value}"), view_text(r, f, m, segment)


def apply_events(
    customer: Customer,
    events: Sequence[ValidEvent],
    *,
    profile: Profile,
    as_of_ms: int,
    now_ms: int,
    partition: int | None = None,
) -> Result:
    result = Result(customer)
    as_of_ms = max(as_of_ms, customer.scored_at or as_of_ms)
    scored: Score | None = None  # the last score computed: of the aggregates as they end
    for event in events:
        if customer.apply(event) == "duplicate":
            result.duplicates += 1
            continue
        result.applied += 1
        result.dirty = True
        change, scored = rescore(
            customer,
            profile,
            as_of_ms=as_of_ms,
            now_ms=now_ms,
            cause=CAUSE_OF_EVENT[event.type],
            cause_event_id=event.event_id,
        )
        if change is not None:
            result.changes.append(change)
    if result.dirty:
        result.touched = True
        if customer.over_bound:
            result.folded = customer.fold()
            scored = None  # the model's summary is of the orders kept: computed again
        customer.scored_at = as_of_ms
        customer.version = profile.version
        if partition is not None:
            customer.partition = partition
        result.due = next_due(customer.aggregates(), profile, as_of_ms, customer.alerted, scored)
    return result


def decay(
    customer: Customer,
    profile: Profile,
    *,
    as_of_ms: int,
    now_ms: int,
) -> Result:
    """Score the customer at the sweep's instant; alert once if its silence is overdue.

    A customer committed at a later instant since the due index was read is scored at
    that instant instead (time never moves back for a customer), so it is always
    rescheduled after the sweep's instant.
    """
    result = Result(customer, touched=True)
    as_of_ms = max(as_of_ms, customer.scored_at or as_of_ms)
    # Scored with another profile version: what moves now is the profile's doing.
    rescored = customer.version is not None and customer.version != profile.version
    change, scored = rescore(
        customer,
        profile,
        as_of_ms=as_of_ms,
        now_ms=now_ms,
        cause="rescore" if rescored else "decay",
        cause_event_id=None,
    )
    if change is not None:
        result.changes.append(change)
    agg = customer.aggregates()
    rh = None if agg is None else rhythm(agg, profile)
    if (
        agg is not None
        and rh is not None
        and as_of_ms >= rh.overdue_at
        and overdue_pending(rh, agg, customer.alerted)
    ):
        customer.alerted = agg.last_order_at
        result.changes.append(_overdue_alert(customer, agg, rh, profile, as_of_ms, now_ms))
    if result.changes:
        result.dirty = True
        customer.scored_at = as_of_ms
    if customer.version != profile.version and customer.orders:
        result.dirty = True
        customer.version = profile.version
    result.due = next_due(agg, profile, as_of_ms, customer.alerted, scored)
    return result


def _overdue_alert(
    customer: Customer,
    agg: Aggregates,
    rh: Rhythm,
    profile: Profile,
    as_of_ms: int,
    now_ms: int,
) -> Change:
    """The rfm.overdue alert of the customer's current silence."""
    current = score(agg, as_of_ms, profile)
    names = fired_overdue(profile.triggers, current)
    return Change(
        tenant=customer.tenant,
        customer_id=customer.customer_id,
        cause="decay",
        from_segment=None,
        to_segment=None,
        record=rfm_overdue(
            # one alert per silence: the silence is the last order's
            change_id=change_id(
                customer.tenant, customer.customer_id, "rfm.overdue", agg.last_order_at
            ),
            tenant=customer.tenant,
            customer_id=customer.customer_id,
            as_of_ms=as_of_ms,
            last_order_at_ms=agg.last_order_at,
            median_gap_ms=rh.median_gap_ms,
            median_gap_days=rh.median_gap_days,
            silent_days=days_between(agg.last_order_at, as_of_ms),
            current=current,
            emitted_at_ms=now_ms,
            triggers=names,
        ),
        kind="rfm.overdue",
        triggers=names,
        profile=profile.name,
    )


def rescore(
    customer: Customer,
    profile: Profile,
    *,
    as_of_ms: int,
    now_ms: int,
    cause: Cause,
    cause_event_id: str | None,
) -> tuple[Change | None, Score | None]:
    """Score the customer at as_of; if it moved from what was published, publish it.
    Returns the change, and the score (for the next due instant: `next_due`)."""
    agg = customer.aggregates()
    current = score(agg, as_of_ms, profile) if agg is not None else None
    previous = customer.published
    if current is None and previous is None:
        return None, current
    if (
        current is not None
        and previous is not None
        and current.segment == previous.segment
        and current.r == previous.r
        and current.f == previous.f
        and current.m == previous.m
        and current.band == previous.band  # a P(alive) band move is a change too
        and current.value_band == previous.value_band  # and so is a value band move
    ):
        if current.expected_value is not None or previous.value is not None:
            units = _units(current.expected_value)
            if units != previous.value:  # no change to publish; the value sums follow it
                p = previous  # a new one, not `replace` (which costs as much as a score)
                customer.published = Published(
                    p.r, p.f, p.m, p.segment, p.band, p.value_band, units
                )
        return None, current
    customer.published = (
        None
        if current is None
        else Published(
            current.r,
            current.f,
            current.m,
            current.segment,
            current.band,
            current.value_band,
            None
            if current.expected_value is None
            else max(0, round(current.expected_value * SCALE)),
        )
    )
    change = _changed(
        customer,
        profile,
        agg,
        previous,
        current,
        as_of_ms=as_of_ms,
        now_ms=now_ms,
        cause=cause,
        cause_event_id=cause_event_id,
    )
    return change, current


def _units(expected_value: float | None) -> int | None:
    """An expected value as the segment sums count it: money units, at least 0 (a customer
    whose refunds outweigh its repeat orders adds nothing rather than a negative)."""
    return None if expected_value is None else max(0, round(expected_value * SCALE))


def _changed(
    customer: Customer,
    profile: Profile,
    agg: Aggregates | None,
    previous: Published | None,
    current: Score | None,
    *,
    as_of_ms: int,
    now_ms: int,
    cause: Cause,
    cause_event_id: str | None,
) -> Change:
    """The rfm.changed record of the customer's move from `previous` to `current`."""
    names = fired(
        profile.triggers, previous, current, profile.p_alive_bands, profile.value_bands or ()
    )
    # What the change is: whose, why (the event, or for time and profile changes the
    # aggregates that were rescored), under which profile version, from what to what.
    # (the parts `change_id` joins, spelled in one text: the same id, for less work)
    was, was_view = _state(previous)
    now, now_view = _state(current)
    if cause_event_id is not None:
        origin = cause_event_id
    elif agg is None:
        origin = "-"
    else:
        origin = f"{agg.last_order_at}:{agg.orders_lifetime}:{agg.monetary}"
    record = rfm_changed(
        change_id=_digest_id(
            f"{customer.tenant}\x1f{customer.customer_id}\x1f{cause}\x1f{origin}\x1f"
            f"{profile.version}\x1f{was}\x1f{now}"
        ),
        tenant=customer.tenant,
        customer_id=customer.customer_id,
        cause=cause,
        cause_event_id=cause_event_id,
        as_of_ms=as_of_ms,
        previous=previous,
        current=current,
        agg=agg,
        emitted_at_ms=now_ms,
        triggers=names,
        views=(was_view, now_view),
    )
    return Change(
        tenant=customer.tenant,
        customer_id=customer.customer_id,
        cause=cause,
        from_segment=previous.segment if previous else None,
        to_segment=current.segment if current else None,
        record=record,
        triggers=names,
        profile=profile.name,
    )
