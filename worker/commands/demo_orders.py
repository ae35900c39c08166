"""The demo's shop (worker/commands/demo.py): customers with a rhythm and a basket size,
a year of their order history, then live orders at a simulated instant, a few bad
messages among them; and the fast clock the live orders follow."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

BAD_MESSAGES = [
    b"not json at all",
    b'{"event_id": "bad-1", "type": "order_placed"}',
    b'{"event_id": "bad-2", "type": "order_shipped", "order_id": "o", "customer_id": "c",'
    b' "occurred_at": "2026-01-01T00:00:00Z"}',
    b'{"event_id": "bad-3", "type": "order_placed", "order_id": "o", "customer_id": "c",'
    b' "amount": "-5", "occurred_at": "2026-01-01T00:00:00Z"}',
    b"\xff\xfe invalid utf-8",
]
# The history ends this long before the wall clock: the room the fast clock runs through.
HISTORY_ENDS_AGO = timedelta(days=365)
# Personas: (weight, mean days between orders, mean basket). Silent regulars order on a
# steady rhythm, then stop; lapsed customers went quiet long before the history ends.
PERSONAS: dict[str, tuple[int, float, float]] = {
    "regular": (25, 25, 60),
    "silent_regular": (10, 20, 70),
    "one_timer": (40, 400, 40),
    "big_spender": (10, 60, 400),
    "lapsed": (15, 45, 80),
}
CHURN = 0.3  # share of live regulars and big spenders who stop ordering within the year


@dataclass(slots=True)
class Persona:
    id: str
    kind: str
    gap: float  # mean days between orders
    basket: float
    # Simulated days after the history's end during which live orders come (inf: always).
    live_days: float


class FastClock:
    """Simulated time: `days_per_second` days per real second from `start`, never past
    the wall clock (events ahead of it are rejected), then real time."""

    def __init__(self, start: datetime, days_per_second: float) -> None:
        self.start, self.days_per_second = start, days_per_second
        self.started = time.monotonic()
        self.real_time = False  # whether it has reached the wall clock

    def now(self) -> datetime:
        wall = datetime.now(UTC)
        days = (time.monotonic() - self.started) * self.days_per_second
        # compared before adding: a fast clock would overflow datetime long before year 10000
        if days >= (wall - self.start) / timedelta(days=1):
            self.real_time = True
            return wall
        return self.start + timedelta(days=days)


class OrderStream:
    """Realistic orders: each customer has a rhythm and a basket size."""

    def __init__(self, customers: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.customers = [self._persona(i) for i in range(customers)]
        # Live customers by when their next order is due (filled by `history`).
        self._due: list[tuple[datetime, int]] = []

    def _persona(self, i: int) -> Persona:
        kinds = list(PERSONAS)
        kind = self.rng.choices(kinds, weights=[PERSONAS[k][0] for k in kinds])[0]
        _, gap, basket = PERSONAS[kind]
        live_days = math.inf
        if kind == "silent_regular":
            gap, live_days = self.rng.uniform(10, 30), 0
        elif kind == "lapsed":
            live_days = 0
        elif kind != "one_timer" and self.rng.random() < CHURN:
            live_days = self.rng.uniform(0, HISTORY_ENDS_AGO.days)
        return Persona(f"c{i:05d}", kind, gap, basket, live_days)

    def _gap(self, cust: Persona) -> timedelta:
        """A steady rhythm (never twice the usual gap), so only real silences are overdue."""
        return timedelta(days=cust.gap * self.rng.uniform(0.7, 1.3))

    def _event(
        self,
        kind: str,
        cust: Persona,
        order_id: str,
        at: datetime,
        amount: float | None = None,
    ) -> tuple[bytes, bytes]:
        doc: dict[str, Any] = {
            "event_id": f"e{next(self.ids)}",
            "type": kind,
            "order_id": order_id,
            "customer_id": cust.id,
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
        }
        if amount is not None:
            doc["amount"] = f"{amount:.2f}"
        return cust.id.encode(), orjson.dumps(doc)

    def _order(
        self,
        cust: Persona,
        at: datetime,
        now: datetime,
        later: timedelta = timedelta(days=3),
    ) -> list[tuple[bytes, bytes]]:
        oid = f"o{next(self.ids)}"
        amount = max(5.0, self.rng.gauss(cust.basket, cust.basket / 3))
        out = [self._event("order_placed", cust, oid, at, amount)]
        # Never after the simulated now: it would move the worker's event clock ahead.
        follow_up = min(at + later, now)
        roll = self.rng.random()
        if roll < 0.04:
            out.append(self._event("order_cancelled", cust, oid, follow_up))
        elif roll < 0.10:
            out.append(
                self._event(
                    "order_refunded",
                    cust,
                    oid,
                    follow_up,
                    round(amount * self.rng.uniform(0.1, 1.0), 2),
                )
            )
        return out

    def _order_times(self, cust: Persona, end: datetime) -> list[datetime]:
        if cust.kind == "silent_regular":
            # Silent for 0.6 to 1.9 gaps at `end`: the overdue instant (2 gaps, the built-in
            # profile's overdue_factor) falls in the first weeks of the live stream.
            at = end - timedelta(days=self.rng.uniform(0.6, 1.9) * cust.gap)
            times = [at]
            for _ in range(self.rng.randint(4, 12)):
                at -= self._gap(cust)
                times.append(at)
            return times[::-1]
        quiet = 200 if cust.kind == "lapsed" else 0
        at = end - timedelta(days=self.rng.uniform(30, 400))
        times = []
        while at < end - timedelta(days=quiet + 1):
            times.append(at)
            if cust.kind == "one_timer" and self.rng.random() < 0.8:
                break
            at += self._gap(cust)
        return times

    def history(self, end: datetime) -> list[tuple[bytes, bytes]]:
        """About a year of past orders up to `end`, in time order."""
        events: list[tuple[datetime, tuple[bytes, bytes]]] = []
        self._due = []
        for i, cust in enumerate(self.customers):
            times = self._order_times(cust, end)
            for at in times:
                events.extend((at, ev) for ev in self._order(cust, at, end))
            if cust.live_days > 0:
                self._due.append(((times[-1] if times else end) + self._gap(cust), i))
        heapq.heapify(self._due)
        events.sort(key=lambda item: item[0])
        return [ev for _, ev in events]

    def live(self, now: datetime, days_in: float) -> list[tuple[bytes, bytes]]:
        """One live order at the simulated `now`, `days_in` days after the history's end.

        It goes to the customer whose next order is the most due. At any rate, every
        customer's gaps shrink or stretch alike and stay steady: the overdue alerts are
        for the customers who stop (silent regulars, churners), not for random gaps.
        """
        if self.rng.random() < 0.01:
            return [(b"junk", self.rng.choice(BAD_MESSAGES))]
        while self._due:
            due, i = heapq.heappop(self._due)
            cust = self.customers[i]
            if days_in < cust.live_days:  # else churned: out of the stream for good
                heapq.heappush(self._due, (due + self._gap(cust), i))
                return self._order(cust, now, now, later=timedelta(0))
        return []
