"""The progress lines of `rfm-worker rebuild` on stderr: records done of the total for the
partitions one process replays, the rate, and an estimate of the time left; one line every
`every_s` seconds (10 by default: quiet enough for a log), and one at the end.

The total comes from the broker's watermarks when the replay starts, so it is an estimate
(records produced meanwhile, a broker that reports its watermarks loosely): the line says
"about".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO


def span(partitions: Iterable[int]) -> str:
    """Partitions as a short list: 0-5, or 0,2,4-7."""
    runs: list[list[int]] = []
    for p in sorted(partitions):
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def duration(seconds: float) -> str:
    """12 s, 3 min 20 s, 2 h 05 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """What one replaying process says of its partitions."""

    def __init__(
        self,
        label: str,
        bounds: Mapping[int, tuple[int, int]],
        every_s: float,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label  # "orders[0-5]"
        self.bounds = dict(bounds)  # partition -> (first offset, end offset) at the start
        self.every_s = every_s  # 0: no periodic line
        self.out = out
        self.clock = clock
        self.started = self.last = clock()
        self.read = 0  # records read by this process

    def tick(self, ends: Mapping[int, int], read: int) -> None:
        """`read` records more; a line if `every_s` went by since the last."""
        self.read += read
        now = self.clock()
        if self.every_s > 0 and now - self.last >= self.every_s:
            self.last = now
            self._say(self.line(ends, now))

    def line(self, ends: Mapping[int, int], now: float) -> str:
        done = sum(max(0, ends.get(p, lo) - lo) for p, (lo, _hi) in self.bounds.items())
        total = sum(max(0, hi - lo) for lo, hi in self.bounds.values())
        left = sum(max(0, hi - ends.get(p, lo)) for p, (lo, hi) in self.bounds.items())
        rate = self.rate(now)
        share = f" ({100 * done / total:.0f}%)" if total else ""
        eta = f", about {duration(left / rate)} left" if rate > 0 and left else ""
        return (
            f"rebuild {self.label}: {done:,} of about {total:,} records{share}, "
            f"{rate:,.0f} records/s{eta}"
        )

    def rate(self, now: float | None = None) -> float:
        elapsed = (self.clock() if now is None else now) - self.started
        return self.read / elapsed if elapsed > 0 else 0.0

    def finish(self, events: int) -> None:
        seconds = self.clock() - self.started
        self._say(
            f"rebuild {self.label}: done, {self.read:,} records ({events:,} events applied) "
            f"in {duration(seconds)}, {self.rate():,.0f} records/s"
        )

    def _say(self, line: str) -> None:
        print(line, file=self.out or sys.stderr, flush=True)
