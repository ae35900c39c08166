"""A customer's (x, t_x, T) for the churn model, and its purchase days. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.rules.aggregates import Aggregates, purchase_day_count
from worker.rules.instants import DAY_MS


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Summary:
    """One customer's (x, t_x, T), whole days."""

    x: int
    t_x: int
    T: int


def summary(
    order_times: Sequence[int], as_of_ms: int, folded: int = 0, first_at: int | None = None
) -> Summary | None:
    """(x, t_x, T) of a customer's counted order times (epoch ms, ascending) at as_of: the
    definition, for order times at hand (tests, tools); the scoring path takes a customer's
    aggregates (`summary_of`).

    `folded` orders (beyond the per-customer bound, worker/rules/customer.py) are known only
    by count and the first one's instant `first_at`: each counts as a day of its own.
    None without a counted order.
    """
    if not order_times and first_at is None:
        return None
    days = purchase_day_count(order_times) + folded
    first_day = (order_times[0] if first_at is None else first_at) // DAY_MS
    last_day = order_times[-1] // DAY_MS if order_times else first_day
    as_of_day = max(as_of_ms // DAY_MS, last_day)  # an order slightly in the future: T = t_x
    return Summary(days - 1, last_day - first_day, as_of_day - first_day)


def summary_of(agg: Aggregates, as_of_ms: int) -> Summary | None:
    """`summary` of a customer's aggregates: its kept orders' times, and the folded ones
    (those beyond the per-customer bound) by count and first instant.

    The same figures as `summary`, without its arguments' detour, the count of days taken
    as the customer keeps it (`Aggregates.day_count`): it is on the scoring path of every
    event of a churn model. (`tests/rules/test_churn.py` checks the two agree.)"""
    times = agg.order_times
    kept = len(times)
    days = agg.days
    if days is None:  # not kept yet: the customer counts its days once, then keeps the count
        days = agg.day_count()
    folded = agg.orders_lifetime - kept
    if folded:  # each folded order is a day of its own, the first one's the first day
        first_day = agg.first_order_at // DAY_MS
        last_day = times[-1] // DAY_MS if kept else first_day
        days += folded
    elif kept:
        first_day, last_day = times[0] // DAY_MS, times[-1] // DAY_MS
    else:
        return None
    as_of_day = as_of_ms // DAY_MS
    if as_of_day < last_day:  # an order slightly in the future: T = t_x
        as_of_day = last_day
    return Summary(days - 1, last_day - first_day, as_of_day - first_day)


def purchase_days(order_times: Sequence[int]) -> list[int]:
    """The distinct UTC days (days since the epoch) of a customer's order times, ascending."""
    days: list[int] = []
    for at in order_times:
        day = at // DAY_MS
        if not days or day != days[-1]:
            days.append(day)
    return days
