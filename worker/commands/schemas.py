"""`rfm-worker schemas [--check] [--dir DIR]`: the JSON Schemas of the public records,
generated from the pydantic models into schemas/ (or checked against them), and the
documents built from them (DOCUMENTS: the OpenAPI document of the read API)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from pydantic import BaseModel

from worker.rules.events import OrderEvent
from worker.rules.messages import CustomerView, RfmChanged, RfmOverdue
from worker.web import openapi

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers

SCHEMAS: dict[str, type[BaseModel]] = {
    "order-event.json": OrderEvent,
    "rfm-changed.json": RfmChanged,
    "rfm-overdue.json": RfmOverdue,
    "customer-view.json": CustomerView,
}
DOCUMENTS: dict[str, Callable[[], bytes]] = {
    "openapi.json": openapi.render,
}


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("schemas", help="write (or verify) schemas/*.json")
    p.add_argument("--check", action="store_true", help="fail if a file differs")
    p.add_argument("--dir", type=Path, default=Path("schemas"))
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if args.check:
        stale = check(directory)
        if stale:
            print(
                f"schemas out of date: {', '.join(stale)} (run: rfm-worker schemas)",
                file=sys.stderr,
            )
            return 1
        print(f"schemas up to date ({len(_files())} files)")
        return 0
    for path in write(directory):
        print(f"wrote {path}")
    return 0


def render(model: type[BaseModel]) -> bytes:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
    }
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _files() -> dict[str, Callable[[], bytes]]:
    """Every file of schemas/ by name: how to render it."""
    return {
        **{name: functools.partial(render, model) for name, model in SCHEMAS.items()},
        **DOCUMENTS,
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rendered in _files().items():
        path = directory / name
        path.write_bytes(rendered())
        written.append(path)
    return written


def check(directory: Path) -> list[str]:
    """Names of the schema files that are missing or differ from the models."""
    stale = []
    for name, rendered in _files().items():
        path = directory / name
        if not path.exists() or path.read_bytes() != rendered():
            stale.append(name)
    return stale
