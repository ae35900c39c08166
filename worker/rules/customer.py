"""A customer's state: its orders, what scoring derives from them, and its stored record,
a compact JSON blob (one Redis string per customer). Pure.

Each order merges its events order-independently (worker/rules/orders.py), so the state is
a function of the set of distinct events; how the record stores the orders:
worker/rules/stored_orders.py.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field, replace
from itertools import pairwise

import orjson

from worker import jsonbytes
from worker.rules.aggregates import Aggregates, day_totals, purchase_day_count
from worker.rules.events import ValidEvent
from worker.rules.instants import DAY_MS
from worker.rules.orders import Order, merge
from worker.rules.orders import Outcome as Outcome  # imported from here too
from worker.rules.state_format import FIRST, check_readable
from worker.rules.stored_orders import common_unit, stored_entry, stored_form

# A long history: from this many orders a customer keeps what it derives from them up to
# date (the sorted gaps, the stored form; an event costs O(log orders), not a pass over
# them), and the store keeps it decoded between batches. Below, rebuilding costs less.
LONG_HISTORY = 64
REBASE_MS = 30 * DAY_MS  # a long history's entries are ages at a commit this recent
# The per-customer bound (a shared guest id, a B2B account, a bot): beyond MAX_ORDERS orders
# kept one by one, the oldest FOLD_CHUNK at a time fold into the aggregates (`Folded`), so
# the state and the cost of an event stop growing. See docs/architecture.md "Guarantees".
MAX_ORDERS = 10_000
FOLD_CHUNK = 1_000


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Published:
    """The score last published for the customer (what `previous` of the next change is)."""

    r: int
    f: int
    m: int
    segment: str
    band: int | None = None  # the P(alive) band published (churn model with a fit only)
    value_band: int | None = None  # the value band published (value model, fit and bands)
    # expected_value published, money units, at least 0 (value model and fit): what the
    # customer adds to its segment's value sum (worker/state/keys.py rfm:{NN}:values)
    value: int | None = None

    @property
    def rfm(self) -> str:
        return f"{self.r}{self.f}{self.m}"


@dataclass(slots=True)
class Folded:
    """What a customer's folded orders still count for. Their ids are gone: an
    order_placed at or before `horizon` for an order not kept is taken for a redelivery of
    a folded one, and a refund or cancel of a folded order is not applied."""

    orders: int  # counted orders folded
    monetary: int  # their net spend, money units
    first_at: int | None  # the first counted order's placed_at (None: none counted)
    last_at: int | None  # the last counted one's
    horizon: int  # the latest placed_at folded, counted or not


@dataclass(slots=True, weakref_slot=True)  # its aggregates refer to it weakly
class Customer:
    tenant: str
    customer_id: str
    orders: dict[str, Order] = field(default_factory=dict)
    published: Published | None = None
    partition: int | None = None  # partition of the customer's latest event
    scored_at: int | None = None  # as_of of the last commit that scored it (epoch ms)
    alerted: int | None = None  # last_order_at of the silence last alerted as overdue
    version: str | None = None  # version of the profile that scored `published`
    folded: Folded | None = None  # the oldest orders beyond MAX_ORDERS, see `fold`
    # Counted orders' times (sorted) and net spend, built on first use and then kept up to
    # date by `apply`, so an event costs O(log orders), not a pass over every order.
    _times: list[int] | None = field(default=None, repr=False, compare=False)
    _monetary: int = field(default=0, repr=False, compare=False)
    _agg: Aggregates | None = field(default=None, repr=False, compare=False)  # until a move
    _gaps: list[int] | None = field(default=None, repr=False, compare=False)  # see Aggregates
    # The count of days with an order (`day_count`): kept with _gaps, or once counted
    _days: int | None = field(default=None, repr=False, compare=False)
    # The orders as the blob stores them (see `encode`), kept up to date by `apply`, so
    # that encoding is one orjson call rather than a pass in Python building every entry
    # (a short history's ages are moved to the commit's instant first). Valid for ages
    # from _base (None: instants) in amounts of _unit; None until built.
    _stored: dict[str, list[object]] | None = field(default=None, repr=False, compare=False)
    _base: int | None = field(default=None, repr=False, compare=False)
    _unit: int = field(default=1, repr=False, compare=False)
    # The stored form was read from a short history: its next encode writes the ages at
    # its own instant, as if built anew, even once the history has grown long.
    _read_short: bool = field(default=False, repr=False, compare=False)
    # (UTC day, net value) of the first order day of the kept orders, once asked for (see
    # `first_day_value`); dropped by `_move` when an order on or before that day changes.
    _first_day: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    def apply(self, event: ValidEvent) -> Outcome:
        """Merge one event. Returns 'duplicate' when the event was already part of the state."""
        order = self.orders.get(event.order_id)
        if order is None:
            folded = self.folded
            if (
                folded is not None
                and event.type == "order_placed"
                and event.occurred_at <= folded.horizon
            ):
                return "duplicate"  # not to be told from a redelivery of a folded order
            if event.type == "order_placed":  # the common case, a new order: nothing to merge
                assert event.amount is not None  # validated
                order = self.orders[event.order_id] = Order(event.occurred_at, event.amount)
                if self._times is not None:
                    self._move(None, (event.occurred_at, event.amount))
                if self._stored is not None:
                    self._store(event.order_id, order)
                return "applied"
            order = self.orders[event.order_id] = Order()
        before, amount = order.counted_as, order.amount
        outcome = merge(order, event)
        if outcome == "applied":
            if self._times is not None:
                self._move(before, order.counted_as)
            if amount is not None and order.amount != amount:
                self._stored = None  # an amount replaced: the unit may coarsen, rebuild
            elif self._stored is not None:
                self._store(event.order_id, order)
        return outcome

    @property
    def over_bound(self) -> bool:
        return len(self.orders) > MAX_ORDERS + FOLD_CHUNK

    def fold(self) -> int:
        """Fold the oldest orders (by placed_at) into `folded` until MAX_ORDERS are kept,
        and the orders never placed (a refund or cancel whose order is unknown: most likely
        a folded one). Returns how many orders left the map. The derived forms are rebuilt
        on next use: a fold happens once per FOLD_CHUNK orders."""
        placed = sorted(
            (o.placed_at, oid) for oid, o in self.orders.items() if o.placed_at is not None
        )
        gone = [oid for oid, o in self.orders.items() if o.placed_at is None]
        gone += [oid for _, oid in placed[: max(0, len(placed) - MAX_ORDERS)]]
        f = self.folded or Folded(0, 0, None, None, 0)
        for oid in gone:
            order = self.orders.pop(oid)
            if order.placed_at is None:
                continue
            f.horizon = max(f.horizon, order.placed_at)
            if (counted := order.counted_as) is not None:
                at, value = counted
                f.orders += 1
                f.monetary += value
                f.first_at = at if f.first_at is None else min(f.first_at, at)
                f.last_at = at if f.last_at is None else max(f.last_at, at)
        self.folded = f
        self._times = self._gaps = self._agg = self._stored = self._first_day = None
        self._days = None
        return len(gone)

    def _store(self, order_id: str, order: Order) -> None:
        """Keep the stored form of the orders in step with one changed order."""
        assert self._stored is not None
        entry = stored_entry(order, self._base, self._unit)
        if entry is None:  # an amount finer than the unit: rebuild in a finer one
            self._stored = None
        else:
            self._stored[order_id] = entry

    def _move(self, before: tuple[int, int] | None, after: tuple[int, int] | None) -> None:
        """Keep the aggregates in step with one order going from `before` to `after`
        (each (placed_at, value) while it counts, None when it does not)."""
        times, gaps = self._times, self._gaps
        assert times is not None
        self._agg = None
        if (first := self._first_day) is not None and (
            (before is not None and before[0] // DAY_MS <= first[0])
            or (after is not None and after[0] // DAY_MS <= first[0])
        ):
            self._first_day = None
        if before is not None:
            i = bisect_left(times, before[0])
            if gaps is not None:
                _regap(gaps, times, i, i + 1, before[0], entering=False)
            if self._days is not None and _alone_on_its_day(times, i, i + 1, before[0]):
                self._days -= 1
            del times[i]
            self._monetary -= before[1]
        if after is not None:
            i = bisect_right(times, after[0])
            if gaps is not None:
                _regap(gaps, times, i, i, after[0], entering=True)
            if self._days is not None and _alone_on_its_day(times, i, i, after[0]):
                self._days += 1
            times.insert(i, after[0])
            self._monetary += after[1]

    def aggregates_to_keep(self) -> Aggregates | None:
        """`aggregates()` for use after this customer is dropped (a sample of the base):
        they hold the customer, whose per-day values they read; the others refer to it
        weakly and, read once it is gone, raise (worker/rules/aggregates.py)."""
        agg = self.aggregates()
        return None if agg is None else replace(agg, _source=lambda: self)

    def aggregates(self) -> Aggregates | None:
        """First/last order, count and net spend over counted orders; None if there are none."""
        if self._times is None:
            counted = [c for o in self.orders.values() if (c := o.counted_as) is not None]
            self._times = sorted(at for at, _ in counted)
            self._monetary = sum(value for _, value in counted)
        elif self._agg is not None:
            return self._agg
        times = self._times
        if self._gaps is None and len(times) >= LONG_HISTORY:
            self._gaps = sorted(b - a for a, b in pairwise(times))
            self._days = purchase_day_count(times)
        f = self.folded
        if f is not None and f.first_at is not None and f.last_at is not None:
            # Folded orders are older than every kept one; order_times (the window, the
            # rhythm) are the kept orders'.
            self._agg = Aggregates(
                f.first_at,
                times[-1] if times else f.last_at,
                len(times) + f.orders,
                self._monetary + f.monetary,
                times,
                self._gaps,
                self._days,
                Aggregates.source(self),
            )
            return self._agg
        if not times:
            return None
        self._agg = Aggregates(
            times[0],
            times[-1],
            len(times),
            self._monetary,
            times,
            self._gaps,
            self._days,
            Aggregates.source(self),
        )
        return self._agg

    def day_count(self) -> int:
        """The number of distinct UTC days of the counted orders kept (the churn model's
        x + 1 without folded orders). Counted on first use and then kept up to date by
        `_move`, as a long history keeps it from the start: a customer's later events in
        the same batch cost a look at an order's neighbours, not a pass over its orders."""
        days = self._days
        if days is None:
            if self._times is None:
                self.aggregates()  # the counted orders' times, and a long history's count
            days = self._days
            if days is None:
                days = self._days = purchase_day_count(self._times or ())
        return days

    def first_day_value(self) -> int:
        """Net value (money units) of the counted orders on the first order day (UTC);
        0 without a counted order. With folded orders the first day is a folded one, whose
        value is gone: estimated as the folded orders' mean value, rounded (the churn model
        counts each folded order as a day of its own, worker/rules/churn/summaries.py)."""
        f = self.folded
        if f is not None and f.first_at is not None and f.orders:
            return round(f.monetary / f.orders)
        if self._first_day is None:
            if self._times is None:
                self.aggregates()  # builds _times, which `_move` then keeps up to date
            times = self._times
            if not times:
                return 0
            day = times[0] // DAY_MS
            start, end = day * DAY_MS, (day + 1) * DAY_MS
            left = bisect_left(times, end)  # the counted orders of that day
            value = 0
            # The orders as they came (mostly oldest first): most often the first is all.
            for o in self.orders.values():  # counted_as without its tuple per order
                at = o.placed_at
                if at is not None and start <= at < end and o.counted:
                    value += o.value
                    left -= 1
                    if not left:
                        break
            self._first_day = (day, value)
        return self._first_day[1]

    def day_values(self) -> list[tuple[int, int]]:
        """(UTC day number, net value in money units) of each day with a counted order
        kept, ascending; folded orders are not in it."""
        return day_totals([c for o in self.orders.values() if (c := o.counted_as) is not None])

    # -- codec: a compact JSON blob, one Redis string per customer ---------------------------

    def encode(self, fmt: int = FIRST) -> bytes:
        # `fmt`: the state format to write (worker/rules/state_format.py); from 2 on the
        # blob says it under "f", so that a release that cannot read it stops instead.
        #
        # Per order [placed_at, amount], + refunds when any, + 1 when cancelled. Once the
        # customer has been scored, placed_at is written as its age at a base instant:
        # 10-11 digits instead of 13 for orders of the last few years. The base is the
        # scored_at ("t") of the commit that last rebuilt the entries: this one, or for a
        # long history an earlier one up to REBASE_MS back ("b"), so that its commits
        # change only the entries of the orders they touched. Amounts are written in the
        # coarsest unit that keeps them exact ("u": 100 for whole cents, 10,000 for whole
        # currency units; absent: money units), 2-4 digits fewer per amount in most shops.
        #
        # The orders go under "q", except where releases before units and bases wrote the
        # same meaning: "o" (instants) and "r" (ages at "t"), in money units. A release
        # that predates "q" fails on it (its events dead-lettered as internal_error, see
        # docs/operations.md "Upgrading") instead of misreading scaled amounts.
        t = self.scored_at
        stored, base = self._stored, self._base
        if (
            stored is None
            or (base is None) != (t is None)
            or (t is not None and base is not None and t - base > REBASE_MS)
        ):
            stored, base = self._rebuild_stored(t)
        elif t is not None and base != t and (self._read_short or len(self.orders) < LONG_HISTORY):
            stored, base = self._rebase_stored(t)
        self._read_short = False
        pub = self.published
        doc: dict[str, object] = {}
        if self._unit != 1 or base != t:
            doc["q"] = stored
            if base != t:
                doc["b"] = base
        else:
            doc["o" if base is None else "r"] = stored
        if pub is not None:
            score = [pub.r, pub.f, pub.m, pub.segment, pub.band, pub.value_band, pub.value]
            while score[-1] is None:  # what is absent is left out: other blobs stay as they were
                score.pop()
            doc["s"] = score
        if self.partition is not None:
            doc["p"] = self.partition
        if t is not None:
            doc["t"] = t
        if self.alerted is not None:
            doc["a"] = self.alerted
        if self.version is not None:
            doc["v"] = self.version
        if self._unit != 1:
            doc["u"] = self._unit
        if self.folded is not None:
            f = self.folded
            doc["z"] = [f.orders, f.monetary, f.first_at, f.last_at, f.horizon]
        if fmt != FIRST:
            doc["f"] = fmt
        # Sorted keys: the bytes, not only the meaning, are independent of arrival order.
        return jsonbytes.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def _rebuild_stored(self, base: int | None) -> tuple[dict[str, list[object]], int | None]:
        """Every order's stored form, as ages at `base` in the coarsest exact unit."""
        stored, unit = stored_form(self.orders, base)
        self._stored, self._base, self._unit = stored, base, unit
        return stored, base

    def _rebase_stored(self, base: int) -> tuple[dict[str, list[object]], int]:
        """The stored form with its ages moved to `base` (a short history's ages are at
        the scored_at of its last commit): what `_rebuild_stored` gives, without building
        every entry and finding the unit again."""
        assert self._stored is not None and self._base is not None
        shift = base - self._base
        for entry in self._stored.values():
            if entry[0] is not None:  # an order not placed has no age
                entry[0] += shift  # type: ignore[operator]
        self._base = base
        return self._stored, base

    @classmethod
    def decode(cls, tenant: str, customer_id: str, blob: bytes | None) -> Customer:
        if not blob:
            return cls(tenant, customer_id)
        doc = orjson.loads(blob)
        if "f" in doc:  # written by a release that says its format (worker/rules/state_format.py)
            check_readable(doc["f"])
        # "q": ages at "b", else at "t", else instants; "r": ages at "t"; "o": instants
        # (never scored, or written before ages existed). See `encode`.
        if "q" in doc:
            base, raw_orders = doc.get("b", doc.get("t")), doc["q"]
        elif "r" in doc:
            base, raw_orders = doc["t"], doc["r"]
        else:
            base, raw_orders = None, doc["o"]
        u = doc.get("u", 1)  # the unit amounts are written in (see `encode`)
        orders: dict[str, Order] = {}
        times: list[int] = []  # the aggregates too, in the same pass (see `aggregates`)
        monetary = 0
        for oid, raw in raw_orders.items():
            at, amount = raw[0], raw[1]
            if at is not None and base is not None:
                at = base - at
            if len(raw) == 2 and amount is not None:  # the common case: placed, no refund
                amount *= u
                orders[oid] = Order(at, amount)
                if at is not None:
                    times.append(at)
                    monetary += amount
                continue
            refunds = raw[2] or None
            if refunds and u != 1:
                refunds = {digest: value * u for digest, value in refunds.items()}
            order = orders[oid] = Order(
                at, None if amount is None else amount * u, refunds, len(raw) > 3
            )
            if (counted := order.counted_as) is not None:
                times.append(counted[0])
                monetary += counted[1]
        s = doc.get("s")
        published = None if not s else Published(*s)  # the bands absent: None
        z = doc.get("z")
        customer = cls(
            tenant,
            customer_id,
            orders,
            published,
            doc.get("p"),
            doc.get("t"),
            doc.get("a"),
            doc.get("v"),
            None if z is None else Folded(z[0], z[1], z[2], z[3], z[4]),
        )
        times.sort()
        customer._times, customer._monetary = times, monetary
        # The entries are kept as read, which are as `encode` writes them unless the blob
        # predates "u" and its amounts have a coarser unit than money units (then rebuilt
        # on the next commit): a commit changes only the entries of the orders it touched,
        # and a short history's ages move to the commit's instant (`_rebase_stored`).
        if u != 1 or common_unit(orders.values()) == 1:
            customer._stored, customer._base, customer._unit = raw_orders, base, u
            customer._read_short = len(orders) < LONG_HISTORY
        return customer


def _alone_on_its_day(times: list[int], i: int, j: int, at: int) -> bool:
    """Whether the instant `at`, entering or leaving the sorted `times` between its
    neighbours times[i - 1] and times[j], is the only one of its UTC day there."""
    day = at // DAY_MS
    return not (
        (i > 0 and times[i - 1] // DAY_MS == day) or (j < len(times) and times[j] // DAY_MS == day)
    )


def _regap(gaps: list[int], times: list[int], i: int, j: int, at: int, entering: bool) -> None:
    """Update the sorted gaps for the instant `at` entering or leaving the sorted `times`,
    where its neighbours are times[i - 1] and times[j]: the gap between the neighbours
    becomes the two gaps around `at`, or the other way round."""
    before = times[i - 1] if i > 0 else None
    after = times[j] if j < len(times) else None
    around: list[int] = []
    if before is not None:
        around.append(at - before)
    if after is not None:
        around.append(after - at)
    between = [after - before] if before is not None and after is not None else []
    removed, added = (between, around) if entering else (around, between)
    for gap in removed:
        del gaps[bisect_left(gaps, gap)]
    for gap in added:
        insort(gaps, gap)
