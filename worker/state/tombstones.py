"""The erasure tombstones as stored: rfm:{NN}:erased, one hash per shard, keyed digest ->
erasure instant (worker/rules/erasure.py). Written by commit.lua with the erasure; read
before a batch is decided."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.state import keys


class Tombstones:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def read(self, wanted: Mapping[int, list[bytes]]) -> dict[tuple[int, bytes], int]:
        """The erasure instants of the `wanted` digests, per shard (one HMGET per shard,
        pipelined); digests never erased are left out."""
        shards = [(shard, fields) for shard, fields in wanted.items() if fields]
        if not shards:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for shard, fields in shards:
            pipe.hmget(keys.erased(shard), fields)
        found: dict[tuple[int, bytes], int] = {}
        for (shard, fields), values in zip(shards, pipe.execute(), strict=True):
            for field, value in zip(fields, values, strict=True):
                if value is not None:
                    found[(shard, field)] = int(value)
        return found

    def count(self) -> int:
        """How many customers are erased (every shard's tombstones)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(keys.SHARDS):
            pipe.hlen(keys.erased(shard))
        return sum(int(n) for n in pipe.execute())
