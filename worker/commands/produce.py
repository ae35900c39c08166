"""`rfm-worker produce FILE`: publish historical orders (CSV or JSON lines) to the orders topic.

Every row becomes the worker's JSON order event and is checked with the worker's own
`validate` (same rules, same profiles; worker/commands/order_files.py); bad rows are
reported with their line numbers and never sent. Rows without an `event_id` get one derived
from their content, so producing the same file twice produces the same events (the worker
deduplicates them).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from worker.commands import context
from worker.commands.order_files import Row, Source, open_source, rows
from worker.config import Settings
from worker.errors import UsageError
from worker.rules.events import Rejection
from worker.rules.profiles import Profiles

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers

PLAIN_PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
SHOWN_ERRORS = 10


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "produce",
        help="publish historical orders (CSV or JSON lines) to RFM_ORDERS_TOPIC",
        description="Publish historical orders to RFM_ORDERS_TOPIC, keyed by customer id. "
        "FILE is CSV with a header (customer_id, order_id, occurred_at, amount; optional "
        "type (default order_placed), currency, tenant, event_id) or JSON lines (one order "
        "event per line), by extension (.csv, .jsonl, .ndjson, .json, each optionally .gz) or, "
        "for - (standard input), by the first non-blank character ({ means JSON lines); gzip "
        "is recognised by its magic bytes. A CSV occurred_at may be a date (2024-03-01: "
        "midnight UTC of that day) or an RFC 3339 instant. Rows are checked with the worker's "
        "rules; bad rows are reported and not sent. A missing event_id is derived from the "
        "row's content, so producing a file twice changes nothing. Exit 0: everything "
        "acknowledged; 1: some rows rejected (the valid ones were sent); 2: usage error.",
    )
    p.add_argument("file", help="the input file, or - for standard input")
    p.add_argument("--errors", metavar="FILE", help="write every rejected row here as a JSON line")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    with context.reachable(settings):
        return produce(settings, profiles, args.file, args.errors)


class _Progress:
    """Rows read, sent and rejected (and how much of the file is read, when its size is
    known): tqdm on a terminal; otherwise a plain line on stderr every few seconds. Rows,
    not bytes: the number of rows a file holds is not known before it is read."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.started = time.monotonic()
        self.last_line = self.started
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(unit=" rows", unit_scale=True, desc="produce", file=sys.stderr)

    def _file_done(self) -> float | None:
        """The share of the file read (compressed bytes for gzip), when its size is known."""
        if not self.source.size:
            return None
        return min(1.0, self.source.position() / self.source.size)

    def update(self, read: int, sent: int, rejected: int) -> None:
        if self.bar is not None:
            self.bar.update(read - self.bar.n)
            postfix: dict[str, object] = {"sent": sent, "rejected": rejected}
            if (share := self._file_done()) is not None:
                postfix["file"] = f"{100 * share:.0f}%"
            self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= PLAIN_PROGRESS_EVERY:
            self.last_line = now
            rate = read / max(now - self.started, 1e-9)
            done = ""
            if (part := self._file_done()) is not None:
                done = f" ({100 * part:.0f}% of the file)"
            print(
                f"produce: {read} rows read{done}, {sent} acknowledged, {rejected} rejected, "
                f"{rate:.0f} rows/s",
                file=sys.stderr,
                flush=True,
            )

    def close(self, read: int, sent: int, rejected: int) -> None:
        if self.bar is not None:
            self.update(read, sent, rejected)
            self.bar.close()


def produce(
    settings: Settings, profiles: Profiles, path: str, errors_path: str | None = None
) -> int:
    """Publish FILE's valid rows to RFM_ORDERS_TOPIC keyed by customer id; exit code.

    The file is opened and its header and first row read before Kafka is contacted: a
    wrong file is said at once, whether a broker answers or not."""
    source = open_source(path)
    try:
        items = rows(source, profiles)
        first = next(items, None)  # raises UsageError on a CSV header that will not do
        if first is not None:
            items = itertools.chain([first], items)
        return _produce(settings, source, items, errors_path)
    finally:
        source.close()


def _produce(
    settings: Settings, source: Source, items: Iterator[Row], errors_path: str | None
) -> int:
    from worker.kafka import clients

    try:
        errors_out = Path(errors_path).open("wb") if errors_path else None  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"--errors {errors_path}: {exc.strerror}") from None
    producer = clients.producer(settings, **{"linger.ms": "20", "client.id": "rfm-worker-produce"})
    meta = producer.list_topics(settings.orders_topic, timeout=10).topics.get(settings.orders_topic)
    if meta is None or meta.error is not None:
        producer.close()
        reason = meta.error.str() if meta is not None and meta.error is not None else "unknown"
        raise UsageError(f"topic {settings.orders_topic} (RFM_ORDERS_TOPIC): {reason}")
    started = time.monotonic()
    progress = _Progress(source)
    tally = _Tally()
    try:
        for item in items:
            tally.read += 1
            if isinstance(item.result, Rejection):
                tally.reject(item, item.result, errors_out)
            else:
                clients.produce(
                    producer,
                    settings.orders_topic,
                    key=item.result.customer_id.encode(),
                    value=item.value,
                    on_delivery=tally.on_delivery,
                )
            if tally.read % 1000 == 0:
                producer.poll(0)
                progress.update(tally.read, tally.acked, tally.rejected)
        while producer.flush(1.0) > 0:
            progress.update(tally.read, tally.acked, tally.rejected)
            if tally.failed:  # the broker refuses: wait out the rest, no point pretending
                continue
    finally:
        progress.close(tally.read, tally.acked, tally.rejected)
        producer.close()
        if errors_out is not None:
            errors_out.close()
    return tally.report(errors_path, time.monotonic() - started)


@dataclass
class _Tally:
    """Rows read, acknowledged, refused by the broker and rejected (by error class)."""

    read: int = 0
    acked: int = 0
    failed: list[str] = field(default_factory=list)  # the broker's reasons
    per_class: Counter[str] = field(default_factory=Counter)
    shown: list[str] = field(default_factory=list)  # the first rejections, as printed

    @property
    def rejected(self) -> int:
        return sum(self.per_class.values())

    def on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed.append(err.str())

    def reject(self, item: Row, rejection: Rejection, errors_out: IO[bytes] | None) -> None:
        self.per_class[rejection.error_class] += 1
        if len(self.shown) < SHOWN_ERRORS:
            self.shown.append(f"  line {item.line}: {rejection.error_class}: {rejection.reason}")
        if errors_out is not None:
            doc = {
                "line": item.line,
                "error_class": rejection.error_class,
                "reason": rejection.reason,
                "row": item.row,
            }
            errors_out.write(orjson.dumps(doc, default=str) + b"\n")

    def report(self, errors_path: str | None, seconds: float) -> int:
        """Print the rejections, the refusals and a summary; the exit code."""
        rejected = self.rejected
        if rejected:
            classes = ", ".join(f"{name} {n}" for name, n in self.per_class.most_common())
            print(f"rfm-worker produce: {rejected} row(s) rejected: {classes}", file=sys.stderr)
            for line in self.shown:
                print(line, file=sys.stderr)
            if rejected > len(self.shown):
                more = " (all of them in " + errors_path + ")" if errors_path else ""
                print(f"  ... {rejected - len(self.shown)} more{more}", file=sys.stderr)
        if self.failed:
            print(
                f"rfm-worker produce: {len(self.failed)} event(s) not acknowledged by the "
                f"broker: {self.failed[0]}",
                file=sys.stderr,
            )
        print(
            f"sent {self.acked}, rejected {rejected}, {seconds:.1f} s, "
            f"{self.acked / max(seconds, 1e-9):.0f} events/s"
        )
        return 1 if rejected or self.failed else 0
