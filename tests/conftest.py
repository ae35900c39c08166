"""Shared fixtures: a real Redis and a real Kafka-protocol broker, one each per session.

Both are started by the suite on free loopback ports (worker.embedded); a suite that
cannot start them fails loudly instead of skipping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from worker.embedded import EmbeddedKafka, EmbeddedRedis
from worker.profiles import Profiles
from worker.store import Store


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the suite's own Redis, emptied before each test (never a shared one)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client)


@pytest.fixture(scope="session")
def kafka() -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture
def profiles() -> Profiles:
    return Profiles.builtin()
