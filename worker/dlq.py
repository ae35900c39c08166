"""Dead letters: rejected records keep their key, value and headers, plus the reason."""

from __future__ import annotations

from typing import Any

from worker.delivery import Headers
from worker.events import Rejection


def dlq_headers(message: Any, rejection: Rejection) -> Headers:
    """Original headers, then rfm.error.* and rfm.source.* (contract section 6).

    Original headers are kept as they are: a null header stays null (Kafka tells a null
    value from an empty one).
    """
    headers: Headers = list(message.headers() or [])
    headers += [
        ("rfm.error.class", rejection.error_class.encode()),
        ("rfm.error.reason", rejection.reason.encode()),
        ("rfm.source.topic", str(message.topic()).encode()),
        ("rfm.source.partition", str(message.partition()).encode()),
        ("rfm.source.offset", str(message.offset()).encode()),
    ]
    return headers
