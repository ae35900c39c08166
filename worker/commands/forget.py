"""`rfm-worker forget --tenant T ID`: produce a customer's erasure request (a
`customer_erased` event) to the orders topic, keyed by the customer id like its orders, so
the worker applies it in order with them (docs/personal-data.md)."""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from worker.commands import context
from worker.config import Settings
from worker.errors import UsageError
from worker.rules.events import Rejection, validate
from worker.rules.instants import iso
from worker.rules.profile import DEFAULT_TENANT
from worker.rules.profiles import Profiles

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "forget",
        help="erase a customer: produce its customer_erased event to RFM_ORDERS_TOPIC",
        description="Produce a customer_erased event for ID to RFM_ORDERS_TOPIC (keyed by "
        "the customer id). Once the worker applied it, the customer is absent from the "
        "state, the reads and the counts, one rfm.erased is published, and its events that "
        "occurred at or before the erasure change nothing, in a replay or a rebuild too. "
        "The event id is derived from tenant, id and instant: the same request produced "
        "again (the same --at) is one erasure. Needs RFM_ERASURE_KEY on the workers. "
        "Exit 0: acknowledged by the broker; 2: usage error or the broker refused.",
    )
    p.add_argument("customer_id", metavar="ID", help="the customer id, as in its orders")
    p.add_argument("--tenant", default=DEFAULT_TENANT, help="the tenant (default: default)")
    p.add_argument(
        "--at",
        metavar="INSTANT",
        help="the erasure instant, RFC 3339 with an offset (default: now); events that "
        "occurred at or before it are forgotten",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    doc = erasure_event(args.tenant, args.customer_id, args.at, profiles)
    with context.reachable(settings):
        _send(settings, args.customer_id, doc)
    print(orjson.dumps(doc).decode())
    return 0


def erasure_event(
    tenant: str, customer_id: str, at: str | None, profiles: Profiles, now_ms: int | None = None
) -> dict[str, Any]:
    """The customer_erased event, checked with the worker's own rules."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    occurred_at = at or iso(now_ms)
    digest = hashlib.sha256(f"{tenant}\x1f{customer_id}\x1f{occurred_at}".encode()).hexdigest()
    doc: dict[str, Any] = {
        "event_id": f"erase-{digest[:32]}",
        "type": "customer_erased",
        "customer_id": customer_id,
        "tenant": tenant,
        "occurred_at": occurred_at,
    }
    checked = validate(orjson.dumps(doc), profiles, now_ms)
    if isinstance(checked, Rejection):
        raise UsageError(f"the erasure event would be rejected: {checked.reason}")
    return doc


def _send(settings: Settings, customer_id: str, doc: dict[str, Any]) -> None:
    from worker.kafka import clients

    producer = clients.producer(settings, **{"client.id": "rfm-worker-forget"})
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.str())

    try:
        clients.produce(
            producer,
            settings.orders_topic,
            key=customer_id.encode(),
            value=orjson.dumps(doc),
            on_delivery=delivered,
        )
        if producer.flush(30.0) > 0:
            failed.append("not acknowledged within 30 s")
    finally:
        producer.close()
    if failed:
        raise UsageError(f"topic {settings.orders_topic} (RFM_ORDERS_TOPIC): {failed[0]}")
