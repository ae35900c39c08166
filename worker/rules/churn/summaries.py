"""A customer's (x, t_x, T) for the churn model, and its purchase days. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.rules.instants import DAY_MS

if TYPE_CHECKING:  # customer.py imports the profiles, which import this package
    from worker.rules.aggregates import Aggregates


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Summary:
    """One customer's (x, t_x, T), whole days."""

    x: int
    t_x: int
    T: int


def summary(
    order_times: Sequence[int], as_of_ms: int, *, folded: int = 0, first_at: int | None = None
) -> Summary | None:
    """(x, t_x, T) of a customer's counted order times (epoch ms, ascending) at as_of.

    `folded` orders (beyond the per-customer bound, worker/rules/customer.py) are known only
    by count and the first one's instant `first_at`: each counts as a day of its own.
    None without a counted order.
    """
    if not order_times and first_at is None:
        return None
    days = 0
    last_day = None
    for at in order_times:  # ascending: distinct days are the day changes
        day = at // DAY_MS
        if day != last_day:
            days += 1
            last_day = day
    first_day = (order_times[0] if first_at is None else first_at) // DAY_MS
    if last_day is None:
        last_day = first_day
    days += folded
    as_of_day = max(as_of_ms // DAY_MS, last_day)  # an order slightly in the future: T = t_x
    return Summary(days - 1, last_day - first_day, as_of_day - first_day)


def summary_of(agg: Aggregates, as_of_ms: int) -> Summary | None:
    """`summary` of a customer's aggregates: its kept orders' times, and the folded ones
    (those beyond the per-customer bound) by count and first instant."""
    folded = agg.orders_lifetime - len(agg.order_times)
    if not folded:
        return summary(agg.order_times, as_of_ms)
    return summary(agg.order_times, as_of_ms, folded=folded, first_at=agg.first_order_at)


def purchase_days(order_times: Sequence[int]) -> list[int]:
    """The distinct UTC days (days since the epoch) of a customer's order times, ascending."""
    days: list[int] = []
    for at in order_times:
        day = at // DAY_MS
        if not days or day != days[-1]:
            days.append(day)
    return days
