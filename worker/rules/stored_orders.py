"""The orders as a customer's stored record holds them (worker/rules/customer.py `encode`):
per order [placed_at, amount], + refunds when any, + 1 when cancelled; placed_at as its age
at a base instant once the customer has been scored, amounts in the coarsest unit that
keeps them exact. Pure.

They are read back in Customer.decode itself, in the pass that also gathers the
aggregates: every event decodes a customer, and a call per customer shows there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from worker.rules.orders import Order

StoredOrders = dict[str, list[object]]


def stored_form(orders: Mapping[str, Order], base: int | None) -> tuple[StoredOrders, int]:
    """Every order's stored form, as ages at `base` in the coarsest exact unit; and the unit."""
    unit = common_unit(orders.values())
    stored: StoredOrders = {}
    for oid, order in orders.items():
        at, amount = order.placed_at, order.amount
        if order.refunds is None and not order.cancelled and amount is not None:
            # the common case, inline: a placed order without refunds
            stored[oid] = [at if base is None or at is None else base - at, amount // unit]
            continue
        entry = stored_entry(order, base, unit)
        assert entry is not None  # the unit divides every amount
        stored[oid] = entry
    return stored, unit


def stored_entry(order: Order, base: int | None, unit: int) -> list[object] | None:
    """The order as the blob stores it (ages at `base`, amounts in `unit`), or None if an
    amount is not a multiple of `unit`."""
    at, amount, refunds = order.placed_at, order.amount, order.refunds
    if base is not None and at is not None:
        at = base - at
    if unit != 1:
        if amount is not None:
            if amount % unit:
                return None
            amount //= unit
        if refunds:
            if any(value % unit for value in refunds.values()):
                return None
            refunds = {digest: value // unit for digest, value in refunds.items()}
    if order.cancelled:
        return [at, amount, refunds or {}, 1]
    if refunds:
        return [at, amount, refunds]
    return [at, amount]


def common_unit(orders: Iterable[Order]) -> int:
    """The coarsest of 10,000, 100 and 1 money units that divides every amount and
    refund of these orders."""
    u = 10_000
    for order in orders:
        if order.amount is not None:
            while order.amount % u:
                u //= 100
        if order.refunds:
            for value in order.refunds.values():
                while value % u:
                    u //= 100
        if u == 1:
            break
    return u
