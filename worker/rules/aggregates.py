"""What a customer's counted orders add up to: the input of every score. Pure.

A module of its own so that what reads aggregates (scoring, decay, the churn model,
records) does not depend on how a customer's orders are kept (worker/rules/customer.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


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
