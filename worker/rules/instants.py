"""Time, in the one unit every instant here has: epoch milliseconds (UTC).

Conversions only; "now" as scores see it (wall or event clock) is worker/state/clock.py.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

DAY_MS = 86_400_000
MAX_FUTURE_MS = 5 * 60 * 1000  # documented: more than 5 minutes ahead of the wall clock


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def wall_ms() -> int:
    """Now, by the wall clock, in epoch milliseconds (the unit of every instant here).
    The core takes `now` as an argument; the I/O around it reads it here."""
    return time.time_ns() // 1_000_000


def epoch_ms(ts: datetime) -> int:
    d = ts - _EPOCH  # exact, no float; faster than dividing by timedelta(milliseconds=1)
    return (d.days * (DAY_MS // 1000) + d.seconds) * 1000 + d.microseconds // 1000


def iso(ms: int) -> str:
    """RFC 3339 in UTC with a Z; milliseconds only when there are some. From tables rather
    than datetime: ~4x faster, and an rfm.changed carries four instants (as_of <= ms <
    year 10000, the range validation admits). Recent instants are remembered: a batch's
    records share their as_of and emitted_at, between their customers' order instants."""
    text = _RECENT.get(ms)
    if text is not None:
        return text
    days, ms_of_day = divmod(ms, DAY_MS)
    seconds, milli = divmod(ms_of_day, 1000)
    minutes, seconds = divmod(seconds, 60)
    day = _DATES.get(days)
    if day is None:
        if len(_DATES) >= 100_000:  # a few years of order dates; hostile input stays bounded
            _DATES.clear()
        day = _DATES[days] = f"{_EPOCH_DATE + timedelta(days=days):%Y-%m-%d}T"
    text = day + _HH_MM[minutes] + _SS[seconds] + _FRACTION[milli]
    if len(_RECENT) >= 4096:
        _RECENT.clear()
    _RECENT[ms] = text
    return text


_EPOCH_DATE = date(1970, 1, 1)
_DATES: dict[int, str] = {}  # days since the epoch -> "YYYY-MM-DDT"
_HH_MM = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
_SS = [f"{s:02d}" for s in range(60)]
_FRACTION = ["Z"] + [f".{ms:03d}Z" for ms in range(1, 1000)]
_RECENT: dict[int, str] = {}  # instants formatted lately, see `iso`
