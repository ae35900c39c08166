"""`rfm-worker rebuild [--yes]`: replay the orders topic from its start into a clean state
(worker/services/rebuild.py), after Redis lost its data. Every worker must be stopped."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from worker.app import tune_gc
from worker.commands import context
from worker.errors import UsageError

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("rebuild", help="replay the orders topic from the start into a clean state")
    p.add_argument(
        "--yes", action="store_true", help="delete the rfm-worker state Redis still holds"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from worker.services.rebuild import rebuild
    from worker.state import connection

    settings, profiles = context.environment()
    tune_gc()
    with context.reachable(settings), connection.opened_store(settings) as store:
        if store.reads.holds_customers() and not args.yes:
            raise UsageError(
                "Redis still holds rfm-worker state; a rebuild deletes all of it first. "
                "Stop every worker, then run `rfm-worker rebuild --yes`"
            )
        done = rebuild(store, settings, profiles)
    print(
        f"rebuilt from {settings.orders_topic}: {done.events} event(s) replayed "
        f"({done.rejected} invalid, skipped), {done.wiped} old key(s) deleted; group "
        f"{settings.kafka_group} resumes at "
        + ", ".join(f"[{p}]@{end}" for p, end in sorted(done.ends.items()))
    )
    return 0
