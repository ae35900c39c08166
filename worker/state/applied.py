"""Applied offsets: what the state in Redis vouches it holds, per orders-topic partition.

Kafka's committed offsets say what was consumed; these records say what the state holds,
written next to it in every shard (worker/state/lua/applied.lua). A worker starts each
partition where the state is, and a shard holding less than it once vouched for means
Redis lost writes (docs/architecture.md, "Nothing lost").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from worker.errors import StateLostError
from worker.state import keys
from worker.state.scripts import script


class AppliedOffsets:
    def __init__(self, client: Any) -> None:
        self.redis = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self._applied = client.register_script(script("applied.lua"))
        self._topic = client.register_script(script("topic.lua"))
        # Per orders-topic partition: ("<topic>:<partition>", the offset every shard's state
        # vouched for). A commit or a record of applied offsets on a shard holding less is
        # refused (StateLostError): Redis lost writes, the worker replays first.
        self.floors: dict[int, tuple[str, int]] = {}

    def mark(self, offsets: Mapping[int, tuple[str, int]]) -> None:
        """Record, in every shard, that the state holds each partition (partition ->
        ("<topic>:<partition>", next offset)) up to the given offset. Called once a batch is
        fully done (state committed, dead letters acknowledged). Each shard's record lives
        in the shard's hash slot, on the node of the state it vouches for, and is written
        after it: Redis replicates and persists each node's writes in order, so a record
        that survived a failover or a restart implies the state written before it did too.

        Compare-and-set (worker/state/lua/applied.lua): a shard holding less than it vouched
        for before (`floors`) is never written over; StateLostError says so instead."""
        if not offsets:
            return
        argv: list[str | int] = []
        for partition, (name, offset) in offsets.items():
            argv += [name, self.floors.get(partition, (name, -1))[1], offset]
        hashes = [keys.applied(shard) for shard in range(keys.SHARDS)]
        if self.cluster:  # a script's keys share one slot there: one call per shard
            lost = [h for h in hashes if self._applied(keys=[h], args=argv)]
        else:
            lost = [hashes[i - 1] for i in self._applied(keys=hashes, args=argv)]
        if lost:
            raise StateLostError(
                f"{len(lost)} shard(s) hold less than they vouched for (e.g. {lost[0]!r}): "
                "Redis lost writes"
            )
        for partition, (name, offset) in offsets.items():
            self.floors[partition] = (name, offset)

    def vouched(self, partition: int) -> int | None:
        """The offset every shard's state vouched for, of a partition this worker owns."""
        floor = self.floors.get(partition)
        return None if floor is None else floor[1]

    def vouch(self, partition: int, field: str, offset: int) -> None:
        """The state holds `partition` up to `offset` (read at its assignment)."""
        self.floors[partition] = (field, offset)

    def forget(self, partition: int | None = None) -> None:
        """A partition no longer ours (None: every one, e.g. of a recreated topic)."""
        if partition is None:
            self.floors.clear()
        else:
            self.floors.pop(partition, None)

    def adopt(self, topic: str, topic_id: str) -> str | None:
        """Record in every shard that its offsets of `topic` belong to the incarnation
        `topic_id`; a shard holding offsets of another incarnation drops them
        (worker/state/lua/topic.lua). Returns that other incarnation's id, or None."""
        hashes = [keys.applied(shard) for shard in range(keys.SHARDS)]
        if self.cluster:  # one slot per call there
            replies = [self._topic(keys=[h], args=[topic, topic_id]) for h in hashes]
        else:
            replies = [self._topic(keys=hashes, args=[topic, topic_id])]
        previous = next((r for r in replies if r), None)
        if previous is None:
            return None
        return previous.decode() if isinstance(previous, bytes) else str(previous)

    def read(self, fields: Sequence[str]) -> dict[str, tuple[int | None, int]]:
        """Per field: (the lowest offset recorded over the shards, how many shards hold a
        record). Fewer than all shards means some shard lost its data."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(keys.SHARDS):
            pipe.hmget(keys.applied(shard), list(fields))
        rows = pipe.execute() if fields else []
        out: dict[str, tuple[int | None, int]] = {}
        for i, name in enumerate(fields):
            seen = [int(row[i]) for row in rows if row[i] is not None]
            out[name] = (min(seen) if seen else None, len(seen))
        return out
