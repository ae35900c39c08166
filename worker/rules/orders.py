"""One order's events, merged order-independently. Pure.

The state is a function of the *set* of distinct events: applying the same events in any
order, any number of times, gives the same order. That is what makes redelivery, retries
after timeouts and replays harmless without any offset bookkeeping.

- order_placed: one order per order_id. If two different placed events claim the same
  order, the smallest (occurred_at, amount) wins, so the winner does not depend on arrival.
- order_cancelled: the order is flagged cancelled and stops counting for F, M and R; its
  placed and refund events are still merged (so their redeliveries are recognised as
  duplicates) but, whenever they arrive, they change nothing a score can see.
- order_refunded: refunds are kept per refund event (by a digest of its event_id) so the
  same refund counts once; an order's value is max(0, amount - refunds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.rules.events import ValidEvent

Outcome = Literal["applied", "duplicate", "erased"]  # erased: worker/rules/erasure.py


@dataclass(slots=True)
class Order:
    placed_at: int | None = None  # epoch ms of the kept order_placed
    amount: int | None = None  # money units (worker.rules.money)
    refunds: dict[str, int] | None = None  # refund digest -> units; None until one arrives
    cancelled: bool = False

    @property
    def counted(self) -> bool:
        return self.placed_at is not None and not self.cancelled

    @property
    def counted_as(self) -> tuple[int, int] | None:
        """(placed_at, value) while the order counts; None when it does not."""
        if self.placed_at is None or self.cancelled:
            return None
        return self.placed_at, self.value

    @property
    def value(self) -> int:
        if self.refunds is None:
            return self.amount or 0
        return max(0, (self.amount or 0) - sum(self.refunds.values()))


def merge(order: Order, event: ValidEvent) -> Outcome:
    """Merge one event into its order (the rules in the module docstring)."""
    kind = event.type
    if kind == "order_cancelled":
        if order.cancelled:
            return "duplicate"
        order.cancelled = True
        return "applied"
    assert event.amount is not None  # validated for placed and refunded
    if kind == "order_placed":
        if order.placed_at is not None:
            assert order.amount is not None
            if (event.occurred_at, event.amount) >= (order.placed_at, order.amount):
                return "duplicate"
        order.placed_at, order.amount = event.occurred_at, event.amount
        return "applied"
    # order_refunded
    digest = event.digest
    if order.refunds is None:
        order.refunds = {}
    elif digest in order.refunds:
        return "duplicate"
    order.refunds[digest] = event.amount
    return "applied"
