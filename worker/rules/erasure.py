"""Erasure: what a `customer_erased` event does to a customer, and what is kept of it. Pure.

What is kept of an erased customer is a tombstone: a keyed digest of tenant and customer
id (HMAC-SHA256 with the deployment's RFM_ERASURE_KEY: no personal data) and the erasure
instant. Every event of the customer that occurred at or before that instant is ignored
(outcome "erased"), whatever brought it (a redelivery, a replay, a rebuild); an order
after it starts a new customer (docs/personal-data.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from worker.rules.customer import Customer
from worker.rules.engine import Change, Result, apply_events, change_id
from worker.rules.events import ValidEvent
from worker.rules.messages import rfm_erased
from worker.rules.profile import Profile

ERASED = "customer_erased"


class NoErasureKeyError(ValueError):
    """An erasure arrived and the deployment has no RFM_ERASURE_KEY: it is refused."""


def tombstone_field(secret: bytes, tenant: str, customer_id: str) -> bytes:
    """The tombstone's name: 16 bytes of HMAC-SHA256 of tenant and customer id (a unit
    separator between them, which a tenant cannot contain)."""
    message = f"{tenant}\x1f{customer_id}".encode()
    return hmac.new(secret, message, hashlib.sha256).digest()[:16]


def erased_change(tenant: str, customer_id: str, at_ms: int, now_ms: int) -> Change:
    """The rfm.erased record of the erasure at `at_ms`: its id depends on nothing else, so
    an erasure computed again (a replay, a rebuild) carries the same id."""
    cid = change_id("rfm.erased", tenant, customer_id, at_ms)
    payload = rfm_erased(
        change_id=cid, tenant=tenant, customer_id=customer_id, as_of_ms=at_ms, emitted_at_ms=now_ms
    )
    return Change(tenant, customer_id, "erasure", None, None, payload, kind="rfm.erased")


def apply_with_erasures(
    customer: Customer,
    events: Sequence[ValidEvent],
    erased_at: int | None,
    *,
    profile: Profile,
    as_of_ms: int,
    now_ms: int,
    partition: int,
) -> tuple[Result, int | None]:
    """Apply a customer's events given its tombstone (`erased_at`, None: never erased).
    Returns the result and the new tombstone instant (None: unchanged).

    An erasure newer than the tombstone drops the stored customer (`result.removed` unless
    orders after it start a new one) and yields one rfm.erased; events at or before the
    newest erasure instant are counted `erased` and change nothing."""
    newest = max((e.occurred_at for e in events if e.type == ERASED), default=None)
    new_erasure = newest is not None and (erased_at is None or newest > erased_at)
    limit = newest if new_erasure else erased_at
    ignored = 0
    taken = not new_erasure  # the erasure event applied (the first at `newest`)
    kept: list[ValidEvent] = []
    for event in events:
        if not taken and event.type == ERASED and event.occurred_at == newest:
            taken = True
        elif event.type == ERASED or (limit is not None and event.occurred_at <= limit):
            ignored += 1
        else:
            kept.append(event)
    if not new_erasure:
        result = apply_events(
            customer, kept, profile=profile, as_of_ms=as_of_ms, now_ms=now_ms, partition=partition
        )
        result.erased = ignored
        return result, None
    assert newest is not None
    fresh = Customer(customer.tenant, customer.customer_id)
    result = apply_events(
        fresh, kept, profile=profile, as_of_ms=as_of_ms, now_ms=now_ms, partition=partition
    )
    fresh.partition = partition
    result.changes.insert(0, erased_change(customer.tenant, customer.customer_id, newest, now_ms))
    result.applied += 1
    result.erased = ignored
    result.touched = True
    result.removed = not result.dirty  # nothing after the erasure: no state at all
    return result, newest
