"""`rfm-worker schemas [--check] [--dir DIR]`: the JSON Schemas of the public records,
generated from the pydantic models into schemas/ (or checked against them), and the
AsyncAPI document of the topics that carry them (worker/commands/asyncapi.py) and the
OpenAPI document of the read API (worker/web/openapi.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from pydantic import BaseModel

from worker.commands import asyncapi
from worker.rules.events import ErasureEvent, OrderEvent
from worker.rules.messages import CustomerView, RfmChanged, RfmErased, RfmOverdue
from worker.web import openapi

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers

SCHEMAS: dict[str, type[BaseModel]] = {
    "order-event.json": OrderEvent,
    "customer-erased.json": ErasureEvent,
    "rfm-changed.json": RfmChanged,
    "rfm-overdue.json": RfmOverdue,
    "rfm-erased.json": RfmErased,
    "customer-view.json": CustomerView,
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
        print(f"schemas up to date ({len(documents())} files)")
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


def documents() -> dict[str, bytes]:
    """Every file of schemas/, by name, as generated."""
    files = {name: render(model) for name, model in SCHEMAS.items()}
    files[asyncapi.FILE] = asyncapi.render()  # references the schemas above by file name
    files["openapi.json"] = openapi.render()
    return files


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in documents().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


def check(directory: Path) -> list[str]:
    """Names of the schema files that are missing or differ from the models."""
    stale = []
    for name, content in documents().items():
        path = directory / name
        if not path.exists() or path.read_bytes() != content:
            stale.append(name)
    return stale
