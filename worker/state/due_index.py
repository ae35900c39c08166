"""The due index: each customer filed under the instant its score next changes by itself.

One sorted set per (shard, orders-topic partition) (worker/state/keys.py), written by the
commit script with the customer's state; sweeps read what is due (docs/time-and-sweeps.md).
Beside it, the record of the last completed marking pass: which profile versions every
customer was checked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from worker.state import keys
from worker.state.admin import text


class DueIndex:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def postpone(self, due: Iterable[tuple[bytes, int]], at_ms: int) -> None:
        """Move these (customer key, partition) entries of the due index to `at_ms`, if
        they are still there."""
        pipe = self.redis.pipeline(transaction=False)
        for key, partition in due:
            pipe.zadd(keys.due(keys.split_customer(key)[0], partition), {key: at_ms}, xx=True)
        pipe.execute()

    def members(self, zsets: list[tuple[int, int]], as_of_ms: int, limit: int) -> list[list[bytes]]:
        """Per (shard, partition) due zset, up to `limit` customer keys due at as_of."""
        pipe = self.redis.pipeline(transaction=False)
        for shard, partition in zsets:
            pipe.zrangebyscore(keys.due(shard, partition), b"-inf", as_of_ms, start=0, num=limit)
        return list(pipe.execute()) if zsets else []

    def backlog(self, zsets: Iterable[tuple[int, int]], as_of_ms: int) -> int:
        """Customers past their due instant in these (shard, partition) due zsets."""
        zsets = list(zsets)
        pipe = self.redis.pipeline(transaction=False)
        for shard, partition in zsets:
            pipe.zcount(keys.due(shard, partition), b"-inf", as_of_ms)
        return sum(pipe.execute()) if zsets else 0


class MarkingRecord:
    """Which profile versions (name -> version) the last completed marking pass checked
    every customer against (docs/profiles.md, "Changing a profile")."""

    def __init__(self, client: Any) -> None:
        self.redis = client

    def is_done(self, versions: Mapping[str, str]) -> bool:
        """Whether a completed pass checked every customer against exactly these versions."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.INDEXED)
        pipe.hgetall(keys.PROFILES)
        indexed, stored = pipe.execute()
        return bool(indexed) and stored == _encoded(versions)

    def record_done(self, versions: Mapping[str, str]) -> None:
        # Two keys in two hash slots (no transaction on a cluster): a crash in between
        # leaves is_done false, so the next start only runs the pass again.
        encoded = _encoded(versions)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.PROFILES, mapping=encoded)
        stale = set(self.redis.hkeys(keys.PROFILES)) - set(encoded)
        if stale:
            pipe.hdel(keys.PROFILES, *stale)
        pipe.set(keys.INDEXED, b"1")
        pipe.execute()

    def versions(self) -> dict[str, str]:
        """The profile versions the last completed pass applied (name -> version)."""
        return {text(k): text(v) for k, v in self.redis.hgetall(keys.PROFILES).items()}


def _encoded(versions: Mapping[str, str]) -> dict[bytes, bytes]:
    return {name.encode(): version.encode() for name, version in versions.items()}
