"""`rfm-worker matrix [--tenant T] [--json] [--color WHEN]`: the R x F grid of customer
counts and segment counts."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

import orjson

from worker.commands import context
from worker.rules.profiles import DEFAULT_TENANT
from worker.state.store import Store
from worker.web import views

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("matrix", help="the R x F grid of customer counts and segment counts")
    p.add_argument("--tenant", default=DEFAULT_TENANT)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the cells by segment: auto (default) when standard output is a terminal "
        "and NO_COLOR is not set, always, or never",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    with context.reading(settings, profiles) as read:
        profile = profiles.for_tenant(args.tenant)
        doc = views.matrix(read.store, args.tenant, read.now(), at_risk=views.at_risk(profile))
        if not doc["customers"]:  # an empty grid would look like an answer: a typo is likelier
            hint = _tenants_hint(read.store, args.tenant)
            print(f"tenant {args.tenant!r} has no customers{hint}", file=sys.stderr)
            return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        profile = profiles.for_tenant(args.tenant)
        text = views.render_matrix(
            doc,
            r_levels=len(profile.recency_days) + 1,
            f_levels=len(profile.frequency_orders) + 1,
            color=use_color(args.color, sys.stdout, os.environ),
        )
        print(text)
    return 0


def _tenants_hint(store: Store, tenant: str) -> str:
    """The closest tenant that has customers, or the few there are, or nothing."""
    tenants = sorted({t for t, _rfm, _segment in store.reads.score_counts()})
    close = difflib.get_close_matches(tenant, tenants, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if 0 < len(tenants) <= 10:
        return f" (tenants with customers: {', '.join(tenants)})"
    return ""


def use_color(choice: str, stream: TextIO, environ: Mapping[str, str]) -> bool:
    """--color: `always`, `never`, or `auto`: only on a terminal, and not when NO_COLOR is set
    to anything non-empty (no-color.org) or TERM is dumb. An explicit choice wins."""
    if choice != "auto":
        return choice == "always"
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False
