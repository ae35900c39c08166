"""The `rfm-worker` command line (docs/commands.md)."""

from __future__ import annotations

import argparse
import csv
import difflib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TextIO

import orjson
import redis
from confluent_kafka import KafkaException

from worker import __version__, logs
from worker.app import run, tune_gc
from worker.commands import schemas
from worker.config import Settings, load_settings, mask_url
from worker.errors import ConfigError, RfmError, UsageError
from worker.rules import rescore
from worker.rules.instants import epoch_ms
from worker.rules.messages import CustomerView
from worker.rules.profiles import DEFAULT_TENANT, Profiles
from worker.state.clock import scoring_now
from worker.state.store import Store
from worker.web import views

logger = logging.getLogger(__name__)

# The demo builds its order history in memory: ~2 GB at this many customers.
DEMO_MAX_CUSTOMERS = 100_000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rfm-worker",
        description="Real-time RFM segmentation. Every command reads the RFM_* environment.",
    )
    p.add_argument("--version", action="version", version=f"rfm-worker {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="consume, score, publish and serve HTTP until SIGTERM/SIGINT")
    r.add_argument(
        "--processes",
        type=_count(64),
        help="consuming processes sharing the partitions (default RFM_PROCESSES, 1); "
        "process i serves HTTP on RFM_HTTP_PORT + i",
    )
    c = sub.add_parser("customer", help="one customer's aggregates and scores, as JSON")
    c.add_argument("customer_id")
    c.add_argument("--tenant", default=DEFAULT_TENANT)
    e = sub.add_parser("export", help="every customer with a counted order, as JSON lines")
    e.add_argument("--tenant")
    e.add_argument(
        "--as-of",
        type=_instant,
        help="score at this RFC 3339 instant or date (midnight UTC) (read-only)",
    )
    e.add_argument(
        "--format",
        choices=("json", "csv"),
        default="json",
        help="json: JSON lines (default); csv: a header and one row per customer, the same fields",
    )
    m = sub.add_parser("matrix", help="the R x F grid of customer counts and segment counts")
    m.add_argument("--tenant", default=DEFAULT_TENANT)
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    m.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the cells by segment: auto (default) when standard output is a terminal "
        "and NO_COLOR is not set, always, or never",
    )
    q = sub.add_parser(
        "rescore",
        help="with --dry-run: which segment moves applying a profiles file now would cause",
        description="With --dry-run, score every stored customer with the profiles of FILE "
        "(default: RFM_PROFILES) at now (the wall clock, or the event clock with "
        "RFM_CLOCK=event) and count how many would move from which segment to which, "
        "against the score the worker last published. Changes nothing, publishes nothing. "
        "A changed profile is applied by `rfm-worker run` itself, in the background, when "
        "it starts with it.",
    )
    q.add_argument(
        "--dry-run", action="store_true", help="required: count the moves, change nothing"
    )
    q.add_argument("--tenant", help="only this tenant's customers (default: every tenant)")
    q.add_argument(
        "--profiles",
        metavar="FILE",
        help="the profiles to try (TOML, as RFM_PROFILES); default: the RFM_PROFILES in effect",
    )
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d = sub.add_parser("demo", help="embedded broker and Redis, the worker, a live order stream")
    d.add_argument(
        "--customers",
        type=_count(DEMO_MAX_CUSTOMERS),
        default=3000,
        help=f"customers in the order history (1 to {DEMO_MAX_CUSTOMERS}; default 3000)",
    )
    d.add_argument("--rate", type=_positive, default=200, help="orders per second (default 200)")
    d.add_argument("--duration", type=_positive, default=None, help="stop after N seconds")
    d.add_argument(
        "--days-per-second",
        type=_positive,
        default=2.0,
        help="how fast the live stream's clock runs, in simulated days per second (default 2)",
    )
    d.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="tansu: the embedded broker, starts at once (default); kafka: Apache Kafka, "
        "fetched with Maven on first use (needs java and mvn)",
    )
    lo = sub.add_parser(
        "local",
        help="the demo's broker and Redis with the three topics, until Ctrl-C: prints the "
        "RFM_* settings for run, produce, sweep --once",
        description="Start the embedded broker and Redis (as `rfm-worker demo` does, without "
        "its worker and order stream), create the topics orders, rfm.actions and orders.dlq, "
        "print the `export RFM_...` lines that point the other commands at them, and keep "
        "them running until Ctrl-C or SIGTERM, which stops both. Everything is in memory.",
    )
    lo.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="tansu: the embedded broker, starts at once (default); kafka: Apache Kafka, "
        "fetched with Maven on first use (needs java and mvn)",
    )
    w = sub.add_parser("sweep", help="one decay sweep; publishes its changes before exiting")
    w.add_argument("--once", action="store_true", required=True, help="one sweep, then exit")
    w.add_argument(
        "--as-of",
        type=_instant,
        help="sweep at this RFC 3339 instant, or date (2026-03-01: midnight UTC) (never ahead "
        "of now; with RFM_CLOCK=event, never before the event clock, which it moves forward)",
    )
    r = sub.add_parser("rebuild", help="replay the orders topic from the start into a clean state")
    r.add_argument(
        "--yes", action="store_true", help="delete the rfm-worker state Redis still holds"
    )
    o = sub.add_parser(
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
    o.add_argument("file", help="the input file, or - for standard input")
    o.add_argument("--errors", metavar="FILE", help="write every rejected row here as a JSON line")
    k = sub.add_parser(
        "model",
        help="a profile's churn-model fit and a calibration/holdout check",
        description="Print the stored churn-model fit of a profile (parameters in days, "
        "log-likelihood, population, version, when) and a calibration/holdout check like the "
        "BG/NBD paper's Figure 2: the model fitted on the orders before a split, its expected "
        "repeat purchases per week against the actual ones (docs/churn.md). Read-only. "
        "Exit 1 when the profile has no fit yet.",
    )
    k.add_argument("--profile", required=True, help="the profile (tenant) name")
    k.add_argument("--json", action="store_true", help="print JSON instead of text")
    k.add_argument(
        "--holdout-days",
        type=_positive,
        help="days before now held out of the check's fit (default: churn_horizon_days)",
    )
    s = sub.add_parser("schemas", help="write (or verify) schemas/*.json")
    s.add_argument("--check", action="store_true", help="fail if a file differs")
    s.add_argument("--dir", type=Path, default=Path("schemas"))
    return p


def _positive(text: str) -> float:
    """A number > 0 and finite: a rate of 0 divides by zero, a negative one never advances."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def _count(limit: int) -> Callable[[str], int]:
    """An integer from 1 to `limit`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be from 1 to {limit}, not {text!r}")
        return value

    return parse


def _instant(text: str) -> int:
    """An RFC 3339 instant, or a date: midnight UTC of that day, as `produce` reads it."""
    from worker.commands.produce import csv_instant

    try:
        ts = datetime.fromisoformat(csv_instant(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 instant or a date: {text!r}") from None
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs an offset, e.g. Z or +02:00")
    return epoch_ms(ts)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup()
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"rfm-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"rfm-worker: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `rfm-worker export | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RfmError as exc:
        print(f"rfm-worker: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "schemas":
        return _schemas(args.dir, args.check)
    if args.command == "demo":
        from worker.commands.demo import run_demo

        return run_demo(
            customers=args.customers,
            rate=args.rate,
            duration=args.duration,
            days_per_second=args.days_per_second,
            broker=args.broker,
        )
    if args.command == "local":
        from worker.commands.local import run_local

        return run_local(broker=args.broker)
    if args.command == "rescore" and not args.dry_run:
        raise UsageError(
            "rescore needs --dry-run: a changed profile is applied by the worker itself when "
            "it starts with it (`rfm-worker run` rescores in the background)"
        )
    settings = load_settings()
    logging.getLogger().setLevel(settings.log_level.upper())
    profiles = Profiles.load(settings.profiles)
    if args.command == "rescore" and args.profiles is not None:
        profiles = Profiles.load(args.profiles)  # the candidate profiles, checked before Redis
    if args.command == "run":
        processes = args.processes or settings.processes
        if processes > 1:
            from worker.services.supervisor import supervise

            return supervise(settings, processes)
        return _redis_down(settings, lambda: run(settings, profiles))
    if args.command == "rebuild":
        from worker.services.rebuild import rebuild

        tune_gc()
        return _redis_down(settings, lambda: rebuild(settings, profiles, confirmed=args.yes))
    if args.command == "sweep":
        from worker.commands.sweep_once import run_once

        return _redis_down(settings, lambda: run_once(settings, profiles, args.as_of))
    if args.command == "produce":
        from worker.commands.produce import produce

        return _redis_down(settings, lambda: produce(settings, profiles, args.file, args.errors))
    from worker.state.connection import opened_store

    with opened_store(settings) as store:
        return _redis_down(settings, lambda: _read(args, settings, profiles, store))


def _redis_down(settings: Settings, command: Callable[[], int]) -> int:
    """Run a command; an unreachable Redis or Kafka is one clear line and exit 2."""
    try:
        return command()
    except KafkaException as exc:
        print(
            f"rfm-worker: Kafka at {settings.kafka_bootstrap} (RFM_KAFKA_BOOTSTRAP) is "
            f"unavailable: {exc.args[0].str() if exc.args else exc}",
            file=sys.stderr,
        )
        return 2
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        url = mask_url(settings.redis_url.get_secret_value())
        reason = " ".join(str(exc).split())
        print(
            f"rfm-worker: Redis at {url} (RFM_REDIS_URL) is unavailable: {reason}", file=sys.stderr
        )
        return 2


def _read(args: argparse.Namespace, settings: Settings, profiles: Profiles, store: Store) -> int:
    """The read-only commands: customer, export, matrix, rescore --dry-run, model."""
    from worker.services.churn_upkeep import load_fits
    from worker.services.quantile_upkeep import load_cuts

    load_cuts(store, profiles)  # quantile profiles score with their stored cut points
    load_fits(store, profiles)  # and churn models with their stored fits
    if args.command == "customer":
        as_of = scoring_now(settings, store.clock)
        doc = views.lookup(store, profiles, args.tenant, args.customer_id, as_of)
        if doc is None:
            print(f"no customer {args.customer_id!r} in tenant {args.tenant!r}", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if args.command == "export":
        as_of = args.as_of if args.as_of is not None else scoring_now(settings, store.clock)
        out = sys.stdout.buffer
        docs = views.export(store, profiles, as_of, args.tenant)
        if args.format == "csv":
            _export_csv(docs, out)
        else:
            for doc in docs:
                out.write(orjson.dumps(doc) + b"\n")
        out.flush()
        return 0
    if args.command == "matrix":
        doc = views.matrix(store, args.tenant, scoring_now(settings, store.clock))
        if not doc["customers"]:  # an empty grid would look like an answer: a typo is likelier
            print(
                f"tenant {args.tenant!r} has no customers{_tenants_hint(store, args.tenant)}",
                file=sys.stderr,
            )
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
    if args.command == "rescore":
        as_of = scoring_now(settings, store.clock)
        # Quantile profiles are tried with the cut points of the base as it is now (what
        # the worker's next computation gives), computed here and not stored.
        from worker.services.quantile_upkeep import compute_cuts

        for name in profiles.quantile_names():
            profiles.use_cuts(name, compute_cuts(store, profiles, name, as_of))
        customers = store.reads.customers(args.tenant)
        tally = rescore.transitions(customers, profiles, as_of, args.tenant)
        if args.json:
            doc = rescore.dry_run_doc(tally, args.tenant, as_of)
            sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            source = args.profiles or settings.profiles
            print(rescore.render(tally, args.tenant, as_of, source))
        return 0
    if args.command == "model":
        from worker.commands.model import run_model

        return run_model(
            store,
            profiles,
            args.profile,
            scoring_now(settings, store.clock),
            as_json=args.json,
            holdout_days=args.holdout_days,
        )
    raise AssertionError(args.command)


def _tenants_hint(store: Store, tenant: str) -> str:
    """The closest tenant that has customers, or the few there are, or nothing."""
    tenants = sorted({t for t, _rfm, _segment in store.reads.score_counts()})
    close = difflib.get_close_matches(tenant, tenants, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if 0 < len(tenants) <= 10:
        return f" (tenants with customers: {', '.join(tenants)})"
    return ""


class _Utf8Lines:
    """What csv.writer writes to: text, encoded onto a binary stream as it comes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def write(self, text: str) -> int:
        return self.out.write(text.encode())


def _export_csv(docs: Iterable[dict[str, object]], out: BinaryIO) -> None:
    """A header of the customer view's fields, then a row per customer (RFC 4180: CRLF,
    fields with a comma, a quote or a line break quoted); numbers as in the JSON lines
    (the P(alive) columns empty where the profile has no churn model or no fit yet)."""
    fields = list(CustomerView.model_fields)
    writer = csv.writer(_Utf8Lines(out))
    writer.writerow(fields)
    for doc in docs:
        writer.writerow([doc.get(name) for name in fields])


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


def _schemas(directory: Path, check: bool) -> int:
    if check:
        stale = schemas.check(directory)
        if stale:
            print(
                f"schemas out of date: {', '.join(stale)} (run: rfm-worker schemas)",
                file=sys.stderr,
            )
            return 1
        print(f"schemas up to date ({len(schemas.SCHEMAS)} files)")
        return 0
    for path in schemas.write(directory):
        print(f"wrote {path}")
    return 0
