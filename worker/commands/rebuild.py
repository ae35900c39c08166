"""`rfm-worker rebuild [--yes] [--partitions P] [--processes N]`: replay the orders topic
from its start into a clean state (worker/services/rebuild.py), after Redis lost its data.
Every worker must be stopped. Spread over machines with --partitions, over cores with
--processes; a run killed is run again and resumes."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from worker import collector
from worker.commands import context
from worker.commands.arguments import count

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers
    from worker.services.rebuild import Rebuilt


def partition_list(text: str) -> frozenset[int]:
    """0-5, or 0,2,4-7."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            lo, hi = int(first), int(last if dash else first)
            if lo < 0 or hi < lo:
                raise ValueError(part)
            out.update(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected partitions such as 0-5 or 0,2,4-7"
        ) from None
    return frozenset(out)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, 0 or more")
    return value


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("rebuild", help="replay the orders topic from the start into a clean state")
    p.add_argument(
        "--yes", action="store_true", help="delete the rfm-worker state Redis still holds"
    )
    p.add_argument(
        "--partitions",
        type=partition_list,
        help="replay only these partitions (0-5, or 0,2,4-7); other runs, on other "
        "machines, replay the others (default: every partition)",
    )
    p.add_argument(
        "--processes",
        type=count(64),
        default=1,
        help="replay in N processes on this machine, each a share of the partitions",
    )
    p.add_argument(
        "--batch",
        type=count(100_000),
        default=2000,
        help="records per batch; the state's offsets are recorded after each (default 2000)",
    )
    p.add_argument(
        "--progress",
        type=seconds,
        default=10.0,
        help="a progress line on stderr every SECONDS (default 10; 0: none)",
    )
    p.add_argument("--share", type=partition_list, help=argparse.SUPPRESS)  # --processes' child
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from worker.services.rebuild import Options, rebuild
    from worker.services.rebuild_spread import figures
    from worker.state import connection

    settings, profiles = context.environment()
    collector.tune()
    options = Options(
        partitions=args.share if args.share is not None else args.partitions,
        processes=args.processes,
        batch=args.batch,
        progress_s=args.progress,
        may_wipe=args.yes,
        share=args.share is not None,
    )
    with context.reachable(settings), connection.opened_store(settings) as store:
        done = rebuild(store, settings, profiles, options)
    if options.share:
        sys.stdout.buffer.write(figures(done.replayed) + b"\n")
        return 0
    print(summary(done, settings.orders_topic, settings.kafka_group))
    return 0


def summary(done: Rebuilt, topic: str, group: str) -> str:
    """The command's one line on stdout."""
    from worker.services.rebuild_progress import span

    r = done.replayed
    rate = f", {r.records / r.seconds:,.0f} records/s" if r.seconds > 0 else ""
    replayed = (
        f"{r.events} event(s) replayed ({r.rejected} invalid, skipped) in {r.seconds:.1f} s"
        f"{rate}, {done.wiped} old key(s) deleted"
    )
    if done.ends is not None:
        return f"rebuilt from {topic}: {replayed}; group {group} resumes at " + ", ".join(
            f"[{p}]@{end}" for p, end in sorted(done.ends.items())
        )
    mine = f"[{span(r.ends)}]" if r.ends else " (none left to replay here)"
    then = (
        "another run finished the rebuild"
        if done.done >= done.partitions
        else "the rebuild finishes with the run that replays the last (workers refuse to "
        "start until then)"
    )
    return (
        f"replayed {topic}{mine}: {replayed}; {done.done} of {done.partitions} partitions "
        f"done: {then}"
    )
