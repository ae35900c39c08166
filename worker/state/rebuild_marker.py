"""The record of an unfinished `rfm-worker rebuild` (rfm:rebuild), and its lock.

A rebuild may be spread over processes and machines, each replaying some partitions, and
may be killed and run again. The record says which incarnation of which topic is being
rebuilt, whether the wipe is done, and which partitions are done (the offset each ended
at). It is written before the wipe (which keeps it) and deleted last, once every partition
is done and the group's offsets are committed: while it exists, `run` and `sweep --once`
refuse to start (`refuse_unfinished`), so no worker consumes a half-rebuilt state.

The lock (rfm:rebuild:lock, redis-py's Lock: SET NX PX with a token, renewed during the
wipe) serialises what only one rebuild may do at a time: start one and wipe, and finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.errors import StateError
from worker.state import keys
from worker.state.admin import text

LOCK_TTL_S = 30.0  # a rebuild killed while holding the lock frees it within this


@dataclass(frozen=True, slots=True)
class Marker:
    """An unfinished rebuild, as recorded."""

    topic: str
    incarnation: str  # the topic id; "" when the broker keeps none
    partitions: int  # of the topic when the rebuild started
    wiped: bool
    done: dict[int, int] = field(default_factory=dict)  # partition -> its next offset

    def finished(self) -> bool:
        return len(self.done) >= self.partitions

    def describe(self) -> str:
        return f"{len(self.done)} of {self.partitions} partitions of {self.topic} done"

    def same_topic(self, topic: str, incarnation: str | None) -> bool:
        return self.topic == topic and self.incarnation == (incarnation or "")


class RebuildMarker:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def read(self) -> Marker | None:
        """The unfinished rebuild, None when there is none (one HGETALL)."""
        raw = {text(k): text(v) for k, v in self.redis.hgetall(keys.REBUILD).items()}
        if "topic" not in raw:
            return None
        done = {
            int(name.removeprefix("done:")): int(value)
            for name, value in raw.items()
            if name.startswith("done:")
        }
        return Marker(
            topic=raw["topic"],
            incarnation=raw.get("id", ""),
            partitions=int(raw.get("partitions", "0")),
            wiped=raw.get("wiped") == "1",
            done=done,
        )

    def start(self, topic: str, incarnation: str | None, partitions: int) -> Marker:
        """Record a new rebuild (any older record replaced), not wiped yet."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.REBUILD)
        fields = {"topic": topic, "id": incarnation or "", "partitions": partitions, "wiped": 0}
        pipe.hset(keys.REBUILD, mapping=fields)
        pipe.execute()
        return Marker(topic, incarnation or "", partitions, wiped=False)

    def wiped(self) -> None:
        self.redis.hset(keys.REBUILD, "wiped", 1)

    def done(self, partition: int, end: int) -> None:
        """Partition `partition` is replayed up to `end` (its next offset)."""
        self.redis.hset(keys.REBUILD, f"done:{partition}", end)

    def clear(self) -> None:
        self.redis.delete(keys.REBUILD)

    def lock(self) -> Any:
        """The rebuild's lock (not taken yet): acquire(blocking_timeout=...), extend(),
        release()."""
        return self.redis.lock(keys.REBUILD_LOCK, timeout=LOCK_TTL_S, thread_local=False)


def refuse_unfinished(client: Any) -> None:
    """StateError (one line, exit 1) while a rebuild is unfinished: a worker must not consume
    a state that holds only part of the history."""
    marker = RebuildMarker(client).read()
    if marker is not None:
        raise StateError(
            f"a rebuild of the state is unfinished ({marker.describe()}): not starting; "
            "rerun `rfm-worker rebuild` to resume it"
        )
