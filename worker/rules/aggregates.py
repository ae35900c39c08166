"""What a customer's counted orders add up to: the input of every score. Pure.

A module of its own so that what reads aggregates (scoring, decay, the churn model,
records) does not depend on how a customer's orders are kept (worker/rules/customer.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.rules.instants import DAY_MS


class DayValues(Protocol):
    """Where aggregates read their per-day values and day count on demand (the Customer
    that built them)."""

    def first_day_value(self) -> int: ...

    def day_values(self) -> list[tuple[int, int]]: ...

    def day_count(self) -> int: ...


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Aggregates:
    first_order_at: int  # epoch ms
    last_order_at: int
    orders_lifetime: int
    monetary: int  # money units
    # placed_at of the counted orders, ascending; a read-only view of the customer's own
    # list (copying it would cost O(orders) per event)
    order_times: Sequence[int]
    # The gaps between consecutive order_times, ascending (the rhythm's median), kept by
    # customers with long histories; None: derive them from order_times when needed.
    gaps: Sequence[int] | None = field(default=None, compare=False)
    # The number of distinct UTC days of order_times (the churn model's x), kept by the
    # same customers; None: ask `day_count`.
    days: int | None = field(default=None, compare=False)
    # The customer that built them (a weak reference: the customer keeps its aggregates,
    # and a cycle would leave every customer of a batch to the cycle collector), read only
    # when a per-day value is asked for (the spend model's profiles): a reference costs
    # the hot path nothing, a pass over orders would.
    _source: Callable[[], DayValues | None] | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def source(customer: DayValues) -> Callable[[], DayValues | None]:
        """What `_source` holds for `customer`."""
        return weakref.ref(customer)

    def _customer(self) -> DayValues | None:
        if self._source is None:
            return None
        source = self._source()
        if source is None:  # a bug: estimates would pass for the customer's values
            raise RuntimeError(
                "aggregates read after their customer was dropped: "
                "take them with Customer.aggregates_to_keep"
            )
        return source

    def first_day_value(self) -> int:
        """Net value (money units) of the counted orders on the first order day (UTC).

        When orders were folded (beyond the per-customer bound, worker/rules/customer.py),
        the first day is a folded order's, whose value is gone: it is estimated as the
        folded orders' mean value, rounded. Aggregates built without a customer (as tests
        do) estimate it as the first day's orders at the mean order value, rounded."""
        if (source := self._customer()) is not None:
            return source.first_day_value()
        times = self.order_times
        if self.orders_lifetime > len(times) or not times:
            first = 1  # a folded order: a day of its own
        else:
            day = times[0] // DAY_MS
            first = sum(1 for at in times if at // DAY_MS == day)
        return round(self.monetary * first / self.orders_lifetime)

    def day_count(self) -> int:
        """The number of distinct UTC days of order_times: `days`, or the customer's count
        (which it keeps for its later events), or counted here. A customer dropped
        meanwhile is no error here, unlike for the per-day values: counting order_times
        is exact."""
        if self.days is not None:
            return self.days
        if self._source is not None and (source := self._source()) is not None:
            return source.day_count()
        return purchase_day_count(self.order_times)

    def day_values(self) -> list[tuple[int, int]]:
        """(UTC day number, net value in money units) of each day with a counted order kept,
        ascending. Folded orders are not in it (orders_lifetime > len(order_times) says
        there are some). Aggregates built without a customer spread `monetary` evenly over
        the orders."""
        if (source := self._customer()) is not None:
            return source.day_values()
        return day_totals([(at, self.monetary / self.orders_lifetime) for at in self.order_times])


def day_totals(counted: Sequence[tuple[int, float]]) -> list[tuple[int, int]]:
    """(day, rounded total value) per UTC day of (placed_at, value) pairs in any order."""
    totals: dict[int, float] = {}
    for at, value in counted:
        day = at // DAY_MS
        totals[day] = totals.get(day, 0) + value
    return [(day, round(totals[day])) for day in sorted(totals)]


def purchase_day_count(order_times: Sequence[int]) -> int:
    """The number of distinct UTC days of order times (epoch ms, ascending)."""
    days = 0
    last_day = None
    for at in order_times:  # ascending: distinct days are the day changes
        day = at // DAY_MS
        if day != last_day:
            days += 1
            last_day = day
    return days
