"""Helpers for the tests that run the worker against the suite's broker and Redis.

The pytest fixtures themselves (`deployment`, `worker_in_process`, `store`, ...) are in
tests/conftest.py; the events these tests produce are built with tests/factories.py and
their expected outcome computed with tests/reference.py. Here: turning events into
records, reading what the worker published, the checks every such test makes, its HTTP
endpoints, and one sweep in process.
"""

from __future__ import annotations

import itertools
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.factories import epoch_ms, generate
from tests.reference import Expected
from worker.commands.sweep_once import run_once
from worker.config import load_settings
from worker.rules.messages import RfmChanged, RfmOverdue
from worker.rules.profiles import Profiles
from worker.state.store import Store

if TYPE_CHECKING:
    from tests.conftest import Deployment


# Records the worker must dead-letter, each with its error class.
BAD_RECORDS: list[tuple[bytes, str]] = [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe\x00", "invalid_encoding"),
    (b"[1, 2]", "not_an_object"),
    (
        b'{"event_id": "x1", "type": "order_placed", "order_id": "o", "customer_id": "c",'
        b' "occurred_at": "2026-01-01T00:00:00Z"}',
        "missing_field",
    ),
    (
        b'{"event_id": "x2", "type": "order_shipped", "order_id": "o", "customer_id": "c",'
        b' "amount": "1", "occurred_at": "2026-01-01T00:00:00Z"}',
        "unknown_type",
    ),
    (
        b'{"event_id": "x3", "type": "order_placed", "order_id": "o", "customer_id": "c",'
        b' "amount": "-1", "occurred_at": "2026-01-01T00:00:00Z"}',
        "invalid_amount",
    ),
    (
        b'{"event_id": "x4", "type": "order_placed", "order_id": "o", "customer_id": "c",'
        b' "amount": "1", "occurred_at": "2026-01-01T00:00:00"}',
        "invalid_timestamp",
    ),
    (
        b'{"event_id": "x5", "type": "order_placed", "order_id": "o", "customer_id": "c",'
        b' "amount": "1", "occurred_at": "2999-01-01T00:00:00Z"}',
        "future_timestamp",
    ),
    (b"x" * 70_000, "oversized"),
]


def records_of(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    """Event documents as records of the orders topic, keyed by customer id."""
    return [(ev["customer_id"].encode(), orjson.dumps(ev)) for ev in events]


# -- what the worker published -------------------------------------------------------------------


def final_scores(messages: list[Any]) -> dict[tuple[str, str], dict[str, Any] | None]:
    """The last `current` per customer, after dropping republished copies."""
    seen: set[str] = set()
    last: dict[tuple[str, str], dict[str, Any] | None] = {}
    for msg in messages:
        change = orjson.loads(msg.value())
        if change["type"] != "rfm.changed" or change["change_id"] in seen:
            continue
        seen.add(change["change_id"])
        last[(change["tenant"], change["customer_id"])] = change["current"]
    return last


def converged(expected: dict[tuple[str, str], Expected | None]) -> Callable[[list[Any]], bool]:
    """For Deployment.read(until=...): every customer's last change has its expected rfm."""

    def done(messages: list[Any]) -> bool:
        final = final_scores(messages)
        return all(
            (final.get(c) or {}).get("rfm") == (e.rfm if e else None) for c, e in expected.items()
        )

    return done


def assert_changes_consistent(messages: list[Any]) -> None:
    """Per customer, in topic order: each change starts where the previous one ended.

    A lost change would break the chain; a republished change repeats its change_id with
    the same content and is skipped.
    """
    by_id: dict[str, bytes] = {}
    chains: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for msg in messages:
        change = orjson.loads(msg.value())
        assert msg.key() == change["customer_id"].encode()
        if change["type"] == "rfm.overdue":  # alerts are not links of the score chain
            RfmOverdue.model_validate(change)
            continue
        RfmChanged.model_validate(change)
        if change["change_id"] in by_id:
            assert orjson.loads(by_id[change["change_id"]]) == change
            continue
        by_id[change["change_id"]] = msg.value()
        chains[(change["tenant"], change["customer_id"])].append(change)
    for customer, chain in chains.items():
        assert chain[0]["previous"] is None, customer
        for before, after in itertools.pairwise(chain):
            assert after["previous"] == before["current"], customer
            assert after["previous"] != after["current"], customer


def assert_state_matches(store: Store, expected: dict[tuple[str, str], Expected | None]) -> None:
    """Each customer's aggregates and published score in Redis are the expected ones."""
    for (tenant, cid), exp in expected.items():
        customer = store.reads.customer(tenant, cid)
        assert customer is not None
        agg = customer.aggregates()
        if exp is None:
            assert agg is None and customer.published is None
            continue
        assert agg is not None
        assert (agg.first_order_at, agg.last_order_at, agg.orders_lifetime) == (
            exp.first_order_at,
            exp.last_order_at,
            exp.orders_lifetime,
        )
        assert Decimal(agg.monetary) / 10_000 == exp.monetary
        assert customer.published is not None
        assert (customer.published.rfm, customer.published.segment) == (exp.rfm, exp.segment)


def fetch(port: int, path: str) -> tuple[int, bytes]:
    """GET a worker's HTTP endpoint on loopback: (status, body), error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# -- ingesting, then sweeping -------------------------------------------------------------------


def ingest(dep: Deployment, events: list[dict[str, Any]], last_rfm: dict[str, str]) -> None:
    """Run a worker until each customer's latest change has the given rfm, then stop it."""
    dep.produce(records_of(events))
    worker = dep.worker()

    def done(messages: list[Any]) -> bool:
        final = final_scores(messages)
        return all((final.get(("default", c)) or {}).get("rfm") == r for c, r in last_rfm.items())

    dep.read(dep.actions, until=done, timeout=60)
    assert worker.stop() == 0


def sweep_once(monkeypatch: pytest.MonkeyPatch, dep: Deployment, at: datetime) -> str:
    """One `sweep --once --as-of` in process (same code as the CLI); its summary line."""
    for name, value in dep.env().items():
        if name.startswith("RFM_"):
            monkeypatch.setenv(name, value)
    settings = load_settings()
    out: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **_k: out.append(" ".join(map(str, a))))
    try:
        assert run_once(settings, Profiles.load(settings.profiles), epoch_ms(at)) == 0
    finally:
        monkeypatch.undo()
    return out[-1]


def around_a_bad_record(seeds: tuple[int, int]) -> tuple[list[Any], list[Any], list[Any]]:
    """Events before and after one unparseable record (the "after" customers and events
    renamed, so the two halves never meet): (before, after, the records in that order)."""
    before, after = generate(20, seed=seeds[0]), generate(20, seed=seeds[1])
    after = [
        {**e, "customer_id": f"late-{e['customer_id']}", "event_id": f"late-{e['event_id']}"}
        for e in after
    ]
    return before, after, [*records_of(before), (b"bad", b"{not json"), *records_of(after)]
