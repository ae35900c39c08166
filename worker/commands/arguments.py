"""What several commands' arguments share: the argument types and the --broker option."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from worker.rules.instants import epoch_ms

if TYPE_CHECKING:
    # What `add_parser(subparsers)` of every command module receives.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def positive(text: str) -> float:
    """A number > 0 and finite: a rate of 0 divides by zero, a negative one never advances."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def count(limit: int) -> Callable[[str], int]:
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


def instant(text: str) -> int:
    """An RFC 3339 instant, or a date: midnight UTC of that day, as `produce` reads it."""
    from worker.commands.order_files import csv_instant

    try:
        ts = datetime.fromisoformat(csv_instant(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 instant or a date: {text!r}") from None
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs an offset, e.g. Z or +02:00")
    return epoch_ms(ts)


def add_broker(parser: argparse.ArgumentParser) -> None:
    """--broker: which broker `demo` and `local` start."""
    parser.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="tansu: the embedded broker, starts at once (default); kafka: Apache Kafka, "
        "fetched with Maven on first use (needs java and mvn)",
    )
