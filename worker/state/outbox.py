"""The outbox: changes committed with the state, waiting for the broker's acknowledgement.

One Redis stream per (shard, orders-topic partition) (worker/state/keys.py), appended to by
the commit script in the same atomic call as the state; the relay (worker/kafka/relay.py)
publishes its entries in order and deletes them once acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from worker.state import keys
from worker.state.admin import unlink


class Outbox:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def entries(
        self, partition: int, count: int = 1000
    ) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
        """(stream, entry id, key, value) of every change waiting in a partition's outboxes."""
        for shard in range(keys.SHARDS):
            stream = keys.outbox(shard, partition)
            start = b"-"
            while True:
                entries = self.redis.xrange(stream, min=start, count=count)
                for entry_id, fields in entries:
                    yield stream, entry_id, fields[b"k"], fields[b"v"]
                if len(entries) < count:
                    break
                start = b"(" + entries[-1][0]

    def delete(self, done: dict[bytes, list[bytes]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in done.items():
            pipe.xdel(stream, *ids)
        pipe.execute()

    def backlog(self) -> int:
        total = 0
        for key in self.redis.scan_iter(match=keys.OUTBOX_PATTERN, count=1000):
            total += int(self.redis.xlen(key))
        return total

    def drop(self, partitions: Iterable[int]) -> None:
        """Delete the outboxes of these partitions (the rebuild's, as it goes: it publishes
        nothing)."""
        streams = [keys.outbox(s, p) for p in partitions for s in range(keys.SHARDS)]
        if streams:
            self.redis.unlink(*streams)

    def drop_all(self) -> int:
        """Delete every outbox (the end of `rebuild`); returns how many."""
        return unlink(self.redis, keys.OUTBOX_PATTERN)
