"""`rfm-worker customer ID [--tenant T]`: one customer's aggregates and scores, as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import orjson

from worker.commands import context
from worker.rules.profiles import DEFAULT_TENANT
from worker.web import views

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("customer", help="one customer's aggregates and scores, as JSON")
    p.add_argument("customer_id")
    p.add_argument("--tenant", default=DEFAULT_TENANT)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    with context.reading(settings, profiles) as read:
        doc = views.lookup(read.store, profiles, args.tenant, args.customer_id, read.now())
    if doc is None:
        print(f"no customer {args.customer_id!r} in tenant {args.tenant!r}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return 0
