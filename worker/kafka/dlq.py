"""Dead letters: rejected records keep their key, value and headers, plus the reason."""

from __future__ import annotations

from typing import Any

from worker.kafka.delivery import Headers, Record
from worker.rules.events import Rejection

OWN = ("rfm.error.", "rfm.source.")  # the header names this worker writes on a dead letter
MAX_KEPT_KEY = 4096


def dlq_headers(message: Any, rejection: Rejection) -> Headers:
    """Original headers, then rfm.error.* and rfm.source.* (docs/records-and-triggers.md).

    Original headers are kept as they are (a null header stays null: Kafka tells a null
    value from an empty one), except any that use this worker's own names: a reader of
    `rfm.error.class` must get the worker's, not one the producer made up.
    """
    headers: Headers = [(k, v) for k, v in message.headers() or [] if not k.startswith(OWN)]
    headers += [
        ("rfm.error.class", rejection.error_class.encode()),
        ("rfm.error.reason", rejection.reason.encode()),
        ("rfm.source.topic", str(message.topic()).encode()),
        ("rfm.source.partition", str(message.partition()).encode()),
        ("rfm.source.offset", str(message.offset()).encode()),
    ]
    return headers


def without_value(record: Record) -> Record:
    """A dead-letter copy too large for the DLQ topic: sent without its value (and without
    the original headers, or a huge key), saying so; the rfm.* headers locate the source."""
    key, value, headers = record
    kept = [(k, v) for k, v in headers or [] if k.startswith(OWN)]
    kept.append(
        (
            "rfm.error.value_dropped",
            f"the original value ({len(value or b'')} bytes) made this copy too large for "
            "the dead-letter topic; read it at the source offset".encode(),
        )
    )
    return (key if key is not None and len(key) <= MAX_KEPT_KEY else None), None, kept
