"""`rfm-worker rescore --dry-run [--tenant T] [--profiles FILE] [--json]`: which segment
moves applying a profiles file now would cause. Changes nothing, publishes nothing."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import orjson

from worker.commands import context
from worker.errors import UsageError
from worker.rules import rescore
from worker.rules.profiles import Profiles

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "rescore",
        help="with --dry-run: which segment moves applying a profiles file now would cause",
        description="With --dry-run, score every stored customer with the profiles of FILE "
        "(default: RFM_PROFILES) at now (the wall clock, or the event clock with "
        "RFM_CLOCK=event) and count how many would move from which segment to which, "
        "against the score the worker last published. Changes nothing, publishes nothing. "
        "A changed profile is applied by `rfm-worker run` itself, in the background, when "
        "it starts with it.",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="required: count the moves, change nothing"
    )
    p.add_argument("--tenant", help="only this tenant's customers (default: every tenant)")
    p.add_argument(
        "--profiles",
        metavar="FILE",
        help="the profiles to try (TOML, as RFM_PROFILES); default: the RFM_PROFILES in effect",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if not args.dry_run:
        raise UsageError(
            "rescore needs --dry-run: a changed profile is applied by the worker itself when "
            "it starts with it (`rfm-worker run` rescores in the background)"
        )
    settings, profiles = context.environment()
    if args.profiles is not None:
        profiles = Profiles.load(args.profiles)  # the candidate profiles, checked before Redis
    with context.reading(settings, profiles) as read:
        as_of = read.now()
        # Quantile profiles are tried with the cut points of the base as it is now (what
        # the worker's next computation gives), computed here and not stored.
        from worker.services.quantile_upkeep import compute_cuts

        for name in profiles.quantile_names():
            profiles.use_cuts(name, compute_cuts(read.store, profiles, name, as_of))
        customers = read.store.reads.customers(args.tenant)
        tally = rescore.transitions(customers, profiles, as_of, args.tenant)
    if args.json:
        doc = rescore.dry_run_doc(tally, args.tenant, as_of)
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(rescore.render(tally, args.tenant, as_of, args.profiles or settings.profiles))
    return 0
