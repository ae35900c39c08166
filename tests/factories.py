"""Building valid events for tests through the real validation path (JSON in, ValidEvent out)."""

from __future__ import annotations

from typing import Any

import orjson

from worker.events import ValidEvent, validate
from worker.profiles import Profiles


def valid_event(
    profiles: Profiles,
    *,
    event_id: str,
    kind: str,
    order_id: str,
    customer: str,
    occurred_at: str,
    now_ms: int,
    amount: str | float | None = None,
    tenant: str | None = None,
) -> ValidEvent:
    """`kind` is placed, refunded or cancelled; absent tenant and amount are left out."""
    doc: dict[str, Any] = {
        "event_id": event_id,
        "type": f"order_{kind}",
        "order_id": order_id,
        "customer_id": customer,
        "occurred_at": occurred_at,
    }
    if amount is not None:
        doc["amount"] = amount
    if tenant is not None:
        doc["tenant"] = tenant
    out = validate(orjson.dumps(doc), profiles, now_ms)
    assert isinstance(out, ValidEvent), out
    return out
