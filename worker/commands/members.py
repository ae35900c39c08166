"""`rfm-worker members --tenant T --segment S [--order O] [--limit N] [-r R] [-f F]
[--format jsonl|csv]`: a segment's customers, ranked, streamed page by page from the
segment index (the rows of GET /v1/segments/{tenant}/{segment}/customers)."""

from __future__ import annotations

import argparse
import itertools
from typing import TYPE_CHECKING

from worker.commands import context
from worker.commands.export import write_views
from worker.errors import UsageError
from worker.rules.profiles import DEFAULT_TENANT
from worker.state.segment_index import DEFAULT_ORDERING, ORDERINGS
from worker.web import segment_lists

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "members", help="a segment's customers, ranked, as JSON lines or CSV (constant memory)"
    )
    p.add_argument("--tenant", default=DEFAULT_TENANT)
    p.add_argument("--segment", required=True)
    p.add_argument(
        "--order",
        choices=tuple(ORDERINGS),
        default=DEFAULT_ORDERING,
        help="spend (net spend, default), last_order, orders or expected_value (value "
        "model profiles), highest first; ties by customer id",
    )
    p.add_argument("--limit", type=_positive, help="at most this many customers (default: all)")
    p.add_argument("-r", type=_level, help="only the customers of this R score (a matrix cell)")
    p.add_argument("-f", type=_level, help="only the customers of this F score")
    p.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="jsonl: JSON lines (default); csv: a header and one row per customer, the "
        "customer view's fields (as `export --format csv`)",
    )
    p.set_defaults(handler=handle)


def _positive(text: str) -> int:
    if not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError("a positive integer")
    return int(text)


def _level(text: str) -> int:
    if not (text.isdigit() and 1 <= int(text) <= segment_lists.MAX_LEVEL):
        raise argparse.ArgumentTypeError(f"an integer from 1 to {segment_lists.MAX_LEVEL}")
    return int(text)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    listing = segment_lists.Listing(args.tenant, args.segment, args.order, args.r, args.f)
    with context.reading(settings, profiles) as read:
        try:
            segment_lists.check(profiles, listing)
        except segment_lists.ListingError as exc:
            raise UsageError(exc.detail) from None
        docs = segment_lists.every_member(read.store, profiles, listing, read.now())
        if args.limit is not None:
            docs = itertools.islice(docs, args.limit)
        write_views(docs, args.format)
    return 0
