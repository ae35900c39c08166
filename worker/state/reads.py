"""The read side: customers and segment counters as stored, for the HTTP API, `export`,
the matrix and the metrics. Nothing here writes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from worker.rules.customer import Customer
from worker.state import keys

# Segment counter hashes read per round trip: a read of the counters holds this many
# shards' cells at once (one per tenant, rfm and segment), not all of them.
COUNTS_PER_READ = 8


class Reads:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def customer(self, tenant: str, customer_id: str) -> Customer | None:
        blob = self.redis.get(keys.customer(tenant, customer_id))
        return Customer.decode(tenant, customer_id, blob) if blob else None

    def customers(self, tenant: str | None = None, chunk: int = 500) -> Iterator[Customer]:
        """Every stored customer (of one tenant), read in chunks: for export, not hot paths."""
        for found in self.key_chunks(chunk, keys.customer_pattern(tenant)):
            yield from self.decoded(found, lambda owner: tenant in (None, owner))

    def key_chunks(
        self, count: int = 500, pattern: bytes = keys.CUSTOMER_PATTERN
    ) -> Iterator[list[bytes]]:
        """Every customer key (matching `pattern`), in chunks (SCAN, every master of a
        cluster)."""
        chunk: list[bytes] = []
        for key in self.redis.scan_iter(match=pattern, count=count):
            chunk.append(key)
            if len(chunk) >= count:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def holds_customers(self) -> bool:
        """Whether Redis holds any customer at all (a rare check: it may SCAN)."""
        return next(self.key_chunks(count=1000), None) is not None

    def decoded(self, found: list[bytes], want: Callable[[str], bool]) -> list[Customer]:
        """The customers of `found` whose tenant `want` accepts (checked before reading).
        The tenant of a key is checked, not trusted to the glob: a pattern can also match
        an id that contains "}:c:<tenant>:"."""
        kept: list[tuple[bytes, str, str]] = []
        for key in found:
            _shard, tenant, customer_id = keys.split_customer(key)
            if want(tenant):
                kept.append((key, tenant, customer_id))
        pipe = self.redis.pipeline(transaction=False)  # GETs, not MGET: keys span slots
        for key, _tenant, _customer_id in kept:
            pipe.get(key)
        return [
            Customer.decode(tenant, customer_id, blob)
            for (_key, tenant, customer_id), blob in zip(
                kept, pipe.execute() if kept else [], strict=True
            )
            if blob
        ]

    def score_counts(
        self, label: Callable[[str], str | None] | None = None
    ) -> Counter[tuple[str, str, str]]:
        """Customers per (tenant, rfm, segment) of their published score, over all shards.

        With `label`, each tenant is counted under label(tenant) instead (None: left out)
        as the counters are read, COUNTS_PER_READ shards at a time: what the read holds
        then follows the label values, not the tenants (one cell per tenant)."""
        return self._cells(keys.counts, label)

    def value_sums(
        self, label: Callable[[str], str | None] | None = None
    ) -> Counter[tuple[str, str, str]]:
        """The customers' summed expected_value (money units) per (tenant, rfm, segment)
        of their published score; `label` as in score_counts."""
        return self._cells(keys.values, label)

    def _cells(
        self, hash_of: Callable[[int], bytes], label: Callable[[str], str | None] | None
    ) -> Counter[tuple[str, str, str]]:
        totals: Counter[tuple[str, str, str]] = Counter()
        for _shard, tenant, rfm, segment, count in self.shard_cells(hash_of):
            name = tenant if label is None else label(tenant)
            if name is not None:
                totals[(name, rfm, segment)] += count
        return totals

    def shard_cells(
        self, hash_of: Callable[[int], bytes] = keys.counts
    ) -> Iterator[tuple[int, str, str, str, int]]:
        """(shard, tenant, rfm, segment, value) of every cell of the shards' counters (or
        of the hashes `hash_of` names with the same fields), COUNTS_PER_READ shards a read."""
        for first in range(0, keys.SHARDS, COUNTS_PER_READ):
            shards = range(first, min(first + COUNTS_PER_READ, keys.SHARDS))
            pipe = self.redis.pipeline(transaction=False)
            for shard in shards:
                pipe.hgetall(hash_of(shard))
            for shard, cells in zip(shards, pipe.execute(), strict=True):
                for fld, count in cells.items():
                    tenant, rfm, segment = fld.decode().split("\t")
                    yield shard, tenant, rfm, segment, int(count)

    def segment_counts(
        self, label: Callable[[str], str | None] | None = None
    ) -> Counter[tuple[str, str]]:
        """Customers per (tenant, segment); `label` as in score_counts."""
        return _by_segment(self.score_counts(label))

    def segment_values(
        self, label: Callable[[str], str | None] | None = None
    ) -> Counter[tuple[str, str]]:
        """Summed expected_value (money units) per (tenant, segment); `label` as in
        score_counts."""
        return _by_segment(self.value_sums(label))


def _by_segment(cells: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str]]:
    totals: Counter[tuple[str, str]] = Counter()
    for (tenant, _rfm, segment), n in cells.items():
        totals[(tenant, segment)] += n
    return totals
