"""What the commands ask of the Redis server itself: its settings, its mode, a wipe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from worker.state import keys


class Server:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def config(self, *names: str) -> dict[str, str | None]:
        """CONFIG GET of some server settings; None where the server does not tell (managed
        services often disable CONFIG)."""
        out: dict[str, str | None] = dict.fromkeys(names)
        try:
            for name in names:
                for key, value in self.redis.config_get(name).items():
                    out[text(key)] = text(value)
        except redis.ResponseError:
            pass
        return out

    def in_cluster_mode(self) -> bool:
        """Whether the server says it is a Redis Cluster node (False if it does not say)."""
        try:
            return bool(self.redis.info("cluster").get("cluster_enabled"))
        except redis.ResponseError:  # INFO disabled (some managed services)
            return False

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def wipe(self, beat: Callable[[], None] | None = None) -> int:
        """Delete every rfm-worker key but the erasure tombstones (`rebuild` only: the replay
        must not bring an erased customer back), the state format's record (nor let a
        release that cannot read it back in) and the rebuild's own record; returns how
        many. `beat` is called after each thousand (the rebuild renews its lock there)."""
        return unlink(self.redis, keys.ALL_PATTERN, keep=keys.kept_by_wipe, beat=beat)


def unlink(
    client: Any,
    pattern: bytes,
    keep: Callable[[bytes], bool] | None = None,
    beat: Callable[[], None] | None = None,
) -> int:
    """Delete every key matching `pattern` (but those `keep` says), a thousand per UNLINK
    (then `beat`); returns how many."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        if keep is not None and keep(key):
            continue
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(client.unlink(*batch))
            batch = []
            if beat is not None:
                beat()
    return deleted + (int(client.unlink(*batch)) if batch else 0)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
