"""Historical order files, as `rfm-worker produce` reads them: CSV with a header or JSON
lines, gzipped or not, each row made the worker's JSON order event and checked with the
worker's own `validate` (same rules, same profiles). Rows without an `event_id` get one
derived from their content, so reading the same file twice gives the same events.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson

from worker.errors import UsageError
from worker.rules.events import Rejection, ValidEvent, validate
from worker.rules.instants import wall_ms
from worker.rules.profiles import DEFAULT_TENANT, Profiles

CSV_REQUIRED = ("customer_id", "order_id", "occurred_at", "amount")
CSV_OPTIONAL = ("type", "currency", "tenant", "event_id")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_GZIP_MAGIC = b"\x1f\x8b"
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: its line number, the event it became (or why not), the raw row."""

    line: int
    result: ValidEvent | Rejection
    value: bytes  # the JSON event sent when result is a ValidEvent
    row: Any  # the row as read (CSV: column -> text; JSON lines: the object or the text)


def derived_event_id(event: dict[str, Any]) -> str:
    """A deterministic event id from the row's content (same row, same id)."""
    parts = [
        event.get("tenant") or DEFAULT_TENANT,
        event.get("customer_id"),
        event.get("order_id"),
        event.get("type"),
        event.get("occurred_at"),
        event.get("amount"),
    ]
    raw = orjson.dumps([None if p is None else str(p) for p in parts])
    return "bf-" + hashlib.sha256(raw).hexdigest()[:32]


def csv_instant(text: str) -> str:
    """A CSV `occurred_at`: a date (`2024-03-01`) is midnight UTC of that day."""
    text = text.strip()
    return f"{text}T00:00:00Z" if _DATE.fullmatch(text) else text


@dataclass
class Source:
    """An opened input: binary lines (gunzipped), the format, and progress in raw bytes."""

    lines: Iterator[bytes]
    fmt: str  # "csv" or "jsonl"
    raw: IO[bytes]
    size: int | None  # raw bytes in total, when known (a regular file)
    owned: bool = True  # a file we opened (not standard input): closed by close()

    def close(self) -> None:
        if self.owned:
            self.raw.close()

    def position(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0


def open_source(path: str, stdin: IO[bytes] | None = None) -> Source:
    """Open FILE (or `-`, standard input); gzip by magic bytes; format by extension or
    content (a first non-blank character `{` means JSON lines)."""
    size: int | None = None
    if path == "-":
        raw: IO[bytes] = stdin if stdin is not None else sys.stdin.buffer
        name = ""
    else:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"{path}: no such file")
        raw = p.open("rb")
        size = p.stat().st_size
        name = p.name.lower()
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(Any, raw))
    stream: IO[bytes] = buffered
    if buffered.peek(2)[:2] == _GZIP_MAGIC or name.endswith(".gz"):
        stream = io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"))
    name = name.removesuffix(".gz")
    lines = iter(stream)
    head: list[bytes] = []
    if name.endswith(".csv"):
        fmt = "csv"
    elif name.endswith(_JSON_SUFFIXES):
        fmt = "jsonl"
    else:  # stdin or an unknown extension: look at the first non-blank character
        fmt = "csv"
        try:
            for line in lines:
                head.append(line)
                if line.strip():
                    fmt = "jsonl" if line.lstrip().startswith(b"{") else "csv"
                    break
        except (OSError, EOFError) as exc:
            if path != "-":
                buffered.close()
            raise UsageError(f"{path}: cannot read: {exc}") from None

    def chained() -> Iterator[bytes]:
        yield from head
        try:
            yield from lines
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
            raise UsageError(f"{path}: cannot read: {exc}") from None

    return Source(chained(), fmt, buffered, size, owned=path != "-")


def rows(source: Source, profiles: Profiles) -> Iterator[Row]:
    """Every row of the source, validated by the worker's rules at the current wall clock."""
    events = _csv_events(source.lines) if source.fmt == "csv" else _jsonl_events(source.lines)
    for line, value, row in events:
        if isinstance(value, Rejection):
            yield Row(line, value, b"", row)
            continue
        yield Row(line, validate(value, profiles, wall_ms()), value, row)


def _jsonl_events(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes | Rejection, Any]]:
    for number, line in enumerate(lines, 1):
        value = line.strip()
        if not value:
            continue
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            # validate() says which: invalid_encoding or invalid_json
            yield number, value, value.decode("utf-8", "replace")
            continue
        if isinstance(obj, dict) and "event_id" not in obj:
            with_id = {"event_id": derived_event_id(obj), **obj}
            yield number, orjson.dumps(with_id), obj
        else:
            yield number, value, obj


class _Lines:
    """Decoded lines for csv.reader, counting physical lines; undecodable ones are set
    aside as rejections."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self.lines = iter(lines)
        self.count = 0
        self.rejected: list[tuple[int, Rejection, str]] = []

    def __iter__(self) -> Iterator[str]:
        for raw in self.lines:
            self.count += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"the line is not UTF-8 ({exc.reason} at byte {exc.start})"
                self.rejected.append(
                    (
                        self.count,
                        Rejection("invalid_encoding", reason),
                        raw.decode("utf-8", "replace"),
                    )
                )
                continue
            yield text.removeprefix("\ufeff") if self.count == 1 else text


def _csv_events(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes | Rejection, Any]]:
    source = _Lines(lines)
    reader = csv.reader(source)
    header: list[str] | None = None
    while True:
        start = source.count + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield start, Rejection("invalid_row", f"not a CSV row: {exc}"), None
            continue
        while source.rejected:
            yield source.rejected.pop(0)
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            missing = [c for c in CSV_REQUIRED if c not in header]
            if missing:
                raise UsageError(
                    f"the CSV header lacks column(s) {', '.join(missing)} "
                    f"(expected {', '.join(CSV_REQUIRED)}, optional {', '.join(CSV_OPTIONAL)})"
                    + _header_hint(header)
                )
            continue
        if len(cells) != len(header):
            row = dict(zip(header, cells, strict=False))
            reason = f"{len(cells)} fields where the header has {len(header)}"
            yield start, Rejection("invalid_row", reason), row or cells
            continue
        row = dict(zip(header, cells, strict=True))
        event: dict[str, Any] = {
            "type": row.get("type") or "order_placed",
            "order_id": row["order_id"],
            "customer_id": row["customer_id"],
            "occurred_at": csv_instant(row["occurred_at"]),
        }
        if row["amount"].strip():
            event["amount"] = row["amount"].strip()
        for name in ("currency", "tenant"):
            if row.get(name):
                event[name] = row[name]
        event["event_id"] = row.get("event_id") or derived_event_id(event)
        yield start, orjson.dumps(event), row
    while source.rejected:
        yield source.rejected.pop(0)


def _header_hint(header: list[str]) -> str:
    """Why a header may lack the columns: another delimiter (a spreadsheet's export in many
    locales uses ';'), or a JSON lines file named .csv. Empty when nothing stands out."""
    if len(header) == 1:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
            if delimiter in header[0]:
                return (
                    f"; its fields are separated by {name}: produce reads comma-separated "
                    "CSV (RFC 4180), save or convert the file with commas"
                )
    if header and header[0].startswith("{"):
        return "; it looks like JSON lines: name the file .jsonl (or .ndjson)"
    return ""
