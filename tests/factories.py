"""Test data: the shared instants and profiles, and builders of order events.

- `valid_event` and the `placed_*` builders go through the real validation path (JSON in,
  ValidEvent out), for tests that call the store or the engine;
- `placed_doc`, `generate` and `iso_days_ago` build event documents (dicts), for tests that
  produce them to the orders topic (tests/fixtures.py turns them into records).

Instants and builders used by one test file only stay in that file.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from worker.rules.events import ValidEvent, validate
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles

# The instant the store, CLI and HTTP tests score at (a midnight, UTC).
AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
AS_OF_MS = int(AS_OF.timestamp()) * 1000
DAY = timedelta(days=1)
DAY_MS = 86_400_000

# The example profile of the pure scoring, engine and decay tests.
PIZZERIA = Profile(
    name="pizzeria",
    recency_days=[15, 30, 45, 60],
    frequency_orders=[2, 3, 5, 10],
    monetary=[Decimal(100), Decimal(250), Decimal(500), Decimal(1000)],
)

# The built-in default with other recency thresholds: a changed profile, for rescoring.
CHANGED_PROFILES = Profiles.from_toml(
    """
[profiles.default]
recency_days = [10, 20, 60, 120]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""
)


# -- validated events ---------------------------------------------------------------------------


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


def placed_at(
    profiles: Profiles,
    n: int,
    customer: str,
    at_ms: int,
    amount: str = "50",
    tenant: str | None = None,
) -> ValidEvent:
    """The customer's order `n` (event `{customer}-e{n}`, order `{customer}-o{n}`), placed
    at `at_ms`."""
    return valid_event(
        profiles,
        event_id=f"{customer}-e{n}",
        kind="placed",
        order_id=f"{customer}-o{n}",
        customer=customer,
        occurred_at=datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(),
        now_ms=at_ms,
        amount=amount,
        tenant=tenant,
    )


def placed_days_ago(
    profiles: Profiles,
    customer: str,
    order: str,
    amount: str,
    days_ago: float,
    tenant: str | None = None,
) -> ValidEvent:
    """An order placed `days_ago` days before AS_OF (event `{tenant}/{customer}/{order}`)."""
    return valid_event(
        profiles,
        event_id=f"{tenant}/{customer}/{order}",
        kind="placed",
        order_id=order,
        customer=customer,
        occurred_at=(AS_OF - days_ago * DAY).isoformat(),
        now_ms=AS_OF_MS,
        amount=amount,
        tenant=tenant,
    )


# -- event documents, relative to the wall clock ------------------------------------------------


def midnight(days_ago: int) -> datetime:
    """Today's midnight (UTC), `days_ago` days back."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - days_ago * DAY


def epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def iso_days_ago(days_ago: float) -> str:
    """`days_ago` days before now, as occurred_at."""
    # Half a day off the boundaries, so scores cannot move while a test runs.
    at = datetime.now(UTC) - timedelta(days=days_ago, hours=12)
    return at.isoformat().replace("+00:00", "Z")


def placed_doc(cid: str, n: int, at: datetime, amount: str = "40.00") -> dict[str, Any]:
    """The customer's order `n` (event `{cid}-p{n}`, order `{cid}-o{n}`), placed at `at`."""
    return {
        "event_id": f"{cid}-p{n}",
        "type": "order_placed",
        "order_id": f"{cid}-o{n}",
        "customer_id": cid,
        "amount": amount,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
    }


def generate(customers: int, seed: int) -> list[dict[str, Any]]:
    """Orders, refunds and cancels with duplicates and a few conflicting events."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    n = 0
    for c in range(customers):
        cid = f"cust-{c}" if c % 7 else f"weird {{{c}}}:*\n😀"
        for o in range(rng.randint(1, 6)):
            n += 1
            oid = f"o-{c}-{o}"
            amount = f"{rng.randint(1, 40000) / 100:.2f}"
            placed = {
                "event_id": f"p{n}",
                "type": "order_placed",
                "order_id": oid,
                "customer_id": cid,
                "amount": amount,
                "occurred_at": iso_days_ago(rng.randint(0, 400)),
            }
            events.append(placed)
            roll = rng.random()
            if roll < 0.1:
                events.append(
                    {
                        "event_id": f"c{n}",
                        "type": "order_cancelled",
                        "order_id": oid,
                        "customer_id": cid,
                        "occurred_at": iso_days_ago(0),
                    }
                )
            elif roll < 0.25:
                for k in range(rng.randint(1, 2)):
                    events.append(
                        {
                            "event_id": f"r{n}-{k}",
                            "type": "order_refunded",
                            "order_id": oid,
                            "customer_id": cid,
                            "amount": f"{rng.randint(1, 20000) / 100:.2f}",
                            "occurred_at": iso_days_ago(0),
                        }
                    )
            elif roll < 0.3:  # the same order placed again under another event id
                events.append({**placed, "event_id": f"p{n}-again"})
    dups = [dict(ev) for ev in rng.sample(events, len(events) // 10)]
    events += dups
    rng.shuffle(events)  # cancels and refunds may arrive before their order
    return events


def bgnbd_orders(seed: int, size: int, end_ms: int, days: int = 300) -> dict[str, list[int]]:
    """Order instants (epoch ms) per customer drawn from BG/NBD's story (the churn model,
    docs/churn.md): a Poisson buying rate λ ~ Gamma(0.8, 1/20 per day), a dropout chance
    p ~ Beta(1, 3) after each purchase; first orders over the `days` before `end_ms`."""
    rng = random.Random(seed)
    out: dict[str, list[int]] = {}
    for i in range(size):
        rate = rng.gammavariate(0.8, 1 / 20)  # purchases per day
        p = rng.betavariate(1.0, 3.0)
        t = end_ms - rng.randrange(10, days) * DAY_MS - rng.randrange(DAY_MS)
        times = [t]
        while rate > 0:
            t += int(rng.expovariate(rate) * DAY_MS)
            if t >= end_ms:
                break
            times.append(t)
            if rng.random() < p:
                break
        out[f"c{i}"] = times
    return out
