"""JSON Schemas of the public records, generated from the pydantic models into schemas/."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from worker.rules.events import OrderEvent
from worker.rules.messages import CustomerView, RfmChanged, RfmOverdue

SCHEMAS: dict[str, type[BaseModel]] = {
    "order-event.json": OrderEvent,
    "rfm-changed.json": RfmChanged,
    "rfm-overdue.json": RfmOverdue,
    "customer-view.json": CustomerView,
}


def render(model: type[BaseModel]) -> bytes:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
    }
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMAS.items():
        path = directory / name
        path.write_bytes(render(model))
        written.append(path)
    return written


def check(directory: Path) -> list[str]:
    """Names of the schema files that are missing or differ from the models."""
    stale = []
    for name, model in SCHEMAS.items():
        path = directory / name
        if not path.exists() or path.read_bytes() != render(model):
            stale.append(name)
    return stale
