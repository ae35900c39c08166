"""The pure heart: a customer's events in, new state and the changes to publish out.

No I/O: the store reads the customer, calls `apply_events`, and commits the result
atomically. Each applied event is scored at `as_of`; every event that moves the customer's
(R, F, M) or segment yields one `rfm.changed` payload, so changes come out in event order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from worker.customer import Customer, Outcome, Published
from worker.events import ValidEvent
from worker.messages import CAUSE_OF_EVENT, Cause, rfm_changed
from worker.profiles import Profile
from worker.scoring import Score, score


@dataclass(frozen=True, slots=True)
class Change:
    """One change to publish; `payload` is the rfm.changed record as a dict."""

    tenant: str
    customer_id: str
    cause: Cause
    from_segment: str | None
    to_segment: str | None
    count_key_from: str | None  # "tenant\trfm\tsegment" of the segment-count cell left
    count_key_to: str | None
    payload: dict[str, object]


@dataclass(slots=True)
class Result:
    customer: Customer
    outcomes: list[Outcome] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    dirty: bool = False  # whether the stored state must be rewritten


def new_change_id() -> str:
    """A random (version 4) UUID. `random` is reseeded on fork and, unlike uuid.uuid4,
    does not make a getrandom() system call per id: a change id needs uniqueness, not
    secrecy."""
    h = f"{random.getrandbits(128) & _V4_MASK | _V4_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_V4_MASK = ~(0xF000 << 64) & ~(0xC000 << 48) & (1 << 128) - 1
_V4_BITS = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def count_key(tenant: str, pub: Published | Score | None) -> str | None:
    return None if pub is None else f"{tenant}\t{pub.rfm}\t{pub.segment}"


def apply_events(
    customer: Customer,
    events: Sequence[ValidEvent],
    *,
    profile: Profile,
    as_of_ms: int,
    now_ms: int,
    partition: int | None = None,
    new_id: Callable[[], str] = new_change_id,
) -> Result:
    result = Result(customer)
    for event in events:
        outcome = customer.apply(event)
        result.outcomes.append(outcome)
        if outcome == "duplicate":
            continue
        result.dirty = True
        change = rescore(
            customer,
            profile,
            as_of_ms=as_of_ms,
            now_ms=now_ms,
            cause=CAUSE_OF_EVENT[event.type],
            cause_event_id=event.event_id,
            new_id=new_id,
        )
        if change is not None:
            result.changes.append(change)
    if partition is not None and customer.partition != partition and result.dirty:
        customer.partition = partition
    return result


def rescore(
    customer: Customer,
    profile: Profile,
    *,
    as_of_ms: int,
    now_ms: int,
    cause: Cause,
    cause_event_id: str | None,
    new_id: Callable[[], str] = new_change_id,
) -> Change | None:
    """Score the customer at as_of; if it moved from what was published, publish it."""
    agg = customer.aggregates()
    current = score(agg, as_of_ms, profile) if agg is not None else None
    previous = customer.published
    if current is None and previous is None:
        return None
    if (
        current is not None
        and previous is not None
        and (current.r, current.f, current.m, current.segment)
        == (previous.r, previous.f, previous.m, previous.segment)
    ):
        return None
    customer.published = (
        None if current is None else Published(current.r, current.f, current.m, current.segment)
    )
    payload = rfm_changed(
        change_id=new_id(),
        tenant=customer.tenant,
        customer_id=customer.customer_id,
        cause=cause,
        cause_event_id=cause_event_id,
        as_of_ms=as_of_ms,
        previous=previous,
        current=current,
        agg=agg,
        emitted_at_ms=now_ms,
    )
    return Change(
        tenant=customer.tenant,
        customer_id=customer.customer_id,
        cause=cause,
        from_segment=previous.segment if previous else None,
        to_segment=current.segment if current else None,
        count_key_from=count_key(customer.tenant, previous),
        count_key_to=count_key(customer.tenant, current),
        payload=payload,
    )
