"""`rfm-worker sweep --once [--as-of TS]`: one whole decay sweep of every partition, for cron
while no worker runs (docs/time-and-sweeps.md, When sweeps run).

Its changes are published (and acknowledged) before it returns. Beside running workers it is
safe (compare-and-set: nothing is published twice) but gives up the per-customer order of
their changes (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any

from worker.commands import context
from worker.commands.arguments import instant
from worker.config import Settings
from worker.errors import RfmError, UsageError
from worker.kafka import clients
from worker.kafka.relay import DRAIN_TIMEOUT, Relay
from worker.rules.instants import MAX_FUTURE_MS, iso, wall_ms
from worker.rules.profiles import Profiles
from worker.services.sweeper import Sweeper
from worker.state import connection, permissions
from worker.state.rebuild_marker import refuse_unfinished
from worker.state.store import Committed, Store

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("sweep", help="one decay sweep; publishes its changes before exiting")
    p.add_argument("--once", action="store_true", required=True, help="one sweep, then exit")
    p.add_argument(
        "--as-of",
        type=instant,
        help="sweep at this RFC 3339 instant, or date (2026-03-01: midnight UTC) (never ahead "
        "of now; with RFM_CLOCK=event, never before the event clock, which it moves forward)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    with context.reachable(settings):
        return run_once(settings, profiles, args.as_of)


def run_once(settings: Settings, profiles: Profiles, as_of_ms: int | None) -> int:
    """The command: sweep, publish, wait for the broker's acknowledgements, print a summary."""
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(connection.opened_store(settings))
        permissions.self_test(store.redis)
        refuse_unfinished(store.redis)  # no sweep of a half-rebuilt state
        as_of_ms = _sweep_instant(settings, store, as_of_ms)
        producer = clients.producer(settings)
        stack.callback(producer.close)
        partitions = _partitions(producer, settings.orders_topic)
        relay = Relay(store.outbox, producer, settings.actions_topic)
        relay.recover(partitions)  # a stopped worker's unpublished changes go out first

        def publish(committed: list[Committed]) -> None:
            relay.publish(committed)
            relay.settle(trim_now=True)

        sweeper = Sweeper(
            store,
            profiles,
            interval=settings.sweep_interval,
            clock=lambda: as_of_ms,
            now_ms=wall_ms,
        )
        sweep = sweeper.sweep_all(partitions, as_of_ms, publish)
        if not relay.drain(DRAIN_TIMEOUT):
            raise RfmError(
                f"{relay.in_flight} change(s) not acknowledged by the broker within "
                f"{DRAIN_TIMEOUT:.0f} s; they stay in the outbox and are published by the "
                "next sweep or worker"
            )
    print(
        f"swept as of {iso(as_of_ms)}: {sweep.customers} due customer(s) rescored, "
        f"{sweep.changes} change(s) and {sweep.overdue} overdue alert(s) published"
    )
    return 0


def _sweep_instant(settings: Settings, store: Store, as_of_ms: int | None) -> int:
    """The sweep's instant: --as-of, else now; time is never moved back, nor ahead of now."""
    wall = wall_ms()
    if as_of_ms is not None and as_of_ms - wall > MAX_FUTURE_MS:
        raise UsageError(
            f"refusing --as-of {iso(as_of_ms)}: it is ahead of the wall clock ({iso(wall)}), "
            "and decay that has not happened yet is never published"
        )
    if settings.clock != "event":
        return wall if as_of_ms is None else as_of_ms
    clock = store.clock.read()
    if as_of_ms is None:
        return wall if clock is None else clock
    if clock is not None and as_of_ms < clock:
        raise UsageError(
            f"refusing --as-of {iso(as_of_ms)}: the event clock is already at {iso(clock)} "
            "and time never moves back (RFM_CLOCK=event); use a later instant or omit --as-of"
        )
    return store.clock.advance(as_of_ms)


def _partitions(producer: Any, topic: str) -> set[int]:
    meta = producer.list_topics(topic, timeout=clients.METADATA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        reason = meta.error if meta is not None and meta.error else "no partitions"
        raise RfmError(f"cannot read the partitions of {topic} (RFM_ORDERS_TOPIC): {reason}")
    return set(meta.partitions)
