"""`rfm-worker export [--tenant T] [--as-of TS] [--format json|csv]`: every customer with a
counted order, as JSON lines or CSV."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

import orjson

from worker.commands import context
from worker.commands.arguments import instant
from worker.rules.messages import CustomerView
from worker.web import views

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="every customer with a counted order, as JSON lines")
    p.add_argument("--tenant")
    p.add_argument(
        "--as-of",
        type=instant,
        help="score at this RFC 3339 instant or date (midnight UTC) (read-only)",
    )
    p.add_argument(
        "--format",
        choices=("json", "csv"),
        default="json",
        help="json: JSON lines (default); csv: a header and one row per customer, the same fields",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    with context.reading(settings, profiles) as read:
        as_of = args.as_of if args.as_of is not None else read.now()
        write_views(views.export(read.store, profiles, as_of, args.tenant), args.format)
    return 0


def write_views(docs: Iterable[dict[str, object]], fmt: str) -> None:
    """Customer views on standard output as they come: JSON lines, or CSV (`export_csv`)."""
    out = sys.stdout.buffer
    if fmt == "csv":
        export_csv(docs, out)
    else:
        for doc in docs:
            out.write(orjson.dumps(doc) + b"\n")
    out.flush()


class _Utf8Lines:
    """What csv.writer writes to: text, encoded onto a binary stream as it comes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def write(self, text: str) -> int:
        return self.out.write(text.encode())


def export_csv(docs: Iterable[dict[str, object]], out: BinaryIO) -> None:
    """A header of the customer view's fields, then a row per customer (RFC 4180: CRLF,
    fields with a comma, a quote or a line break quoted); numbers as in the JSON lines
    (the P(alive) and value columns empty where the profile has no such model or no fit
    yet)."""
    fields = list(CustomerView.model_fields)
    writer = csv.writer(_Utf8Lines(out))
    writer.writerow(fields)
    for doc in docs:
        writer.writerow([doc.get(name) for name in fields])
