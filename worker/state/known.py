"""Customers with long histories kept decoded between batches, so a commit reading one
back unchanged skips decoding it (worker/state/commit_plan.py)."""

from __future__ import annotations

from collections import OrderedDict

from worker.rules.customer import LONG_HISTORY, Customer

# Below LONG_HISTORY orders, decoding costs less than the memory and the cycle collector's
# passes over the kept customers; KNOWN_ORDERS orders in all (~500 bytes each with their
# blob: ~50 MB).
KNOWN_ORDERS = 100_000


class KnownCustomers:
    """Customers with long histories this process last decided, each with the exact state
    blob it encodes to, least recently used first.

    A customer read back as the same bytes is taken from here instead of decoded: decoding
    costs O(orders), comparing the bytes is a memcmp. An entry never goes stale: the blob
    is the customer's own encoding, so any other writer's state differs from it and is
    decoded. An entry is taken out while its customer is decided (a decision that raises
    may leave it half-changed) and put back with its new blob."""

    def __init__(self, budget: int = KNOWN_ORDERS, min_orders: int = LONG_HISTORY) -> None:
        self._entries: OrderedDict[bytes, tuple[bytes, Customer]] = OrderedDict()
        self._orders = 0
        self._budget, self._min_orders = budget, min_orders

    def take(self, key: bytes, blob: bytes | None) -> Customer | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._orders -= len(entry[1].orders)
        return entry[1] if entry[0] == blob else None

    def put(self, key: bytes, blob: bytes, customer: Customer) -> None:
        size = len(customer.orders)
        if not self._min_orders <= size <= self._budget:
            return  # the common case, a short history: nothing else to do
        self.take(key, None)  # a customer is kept once
        self._entries[key] = (blob, customer)
        self._orders += size
        while self._orders > self._budget:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._orders -= len(evicted.orders)
