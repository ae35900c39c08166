"""The Redis client built from the settings (a single Redis or a Redis Cluster)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import redis

from worker.config import Settings

if TYPE_CHECKING:
    from worker.state.store import Store


def redis_client(settings: Settings, timeout: float = 5.0) -> Any:
    """A Redis (or Redis Cluster) client; bytes in, bytes out; hiredis parses replies."""
    url = settings.redis_url.get_secret_value()
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


@contextlib.contextmanager
def opened_store(settings: Settings) -> Iterator[Store]:
    """The state over a client of its own, closed however the block ends."""
    from worker.state.store import Store  # the store imports the rules: only when used

    store = Store(redis_client(settings), settings.state_format)
    try:
        yield store
    finally:
        store.redis.close()
