"""Commands the Redis server refuses (an ACL rule without them): the commit writes all it
plans or nothing, and the start-up self-test names what is missing in one line
(worker/state/permissions.py, worker/state/lua/commit.lua)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.state.test_store import apply, ev
from worker.embedded import EmbeddedRedis
from worker.errors import RedisRefusedError
from worker.rules.profiles import Profiles
from worker.state import permissions
from worker.state.store import Store

Restricted = Callable[..., redis.Redis]


@pytest.fixture
def restricted(redis_client: redis.Redis, redis_server: EmbeddedRedis) -> Iterator[Restricted]:
    """`restricted(*commands)`: a client of an ACL user of the suite's Redis who may run
    every command on rfm:* keys but those named (`grant` gives them back)."""
    made: list[tuple[str, redis.Redis]] = []

    def make(*without: str) -> redis.Redis:
        name = f"worker-{uuid.uuid4().hex[:8]}"
        redis_client.acl_setuser(
            name,
            enabled=True,
            passwords=["+secret"],
            keys=["rfm:*"],
            commands=["+@all", *(f"-{command}" for command in without)],
        )
        client = redis.Redis.from_url(redis_server.url, username=name, password="secret")
        made.append((name, client))
        return client

    yield make
    for name, client in made:
        client.close()
        redis_client.acl_deluser(name)


def grant(admin: redis.Redis, client: redis.Redis, *commands: str) -> None:
    user = client.connection_pool.connection_kwargs["username"]
    admin.acl_setuser(user, enabled=True, commands=[f"+{command}" for command in commands])


def written(client: redis.Redis) -> list[bytes]:
    return sorted(k for k in client.scan_iter(match=b"rfm:*") if not k.startswith(b"rfm:{sel"))


@pytest.mark.parametrize("command", ["xadd", "zadd", "mset", "hincrby", "evalsha"])
def test_a_refused_command_leaves_nothing_written_then_the_grant_applies_it_all(
    restricted: Restricted, redis_client: redis.Redis, profiles: Profiles, command: str
) -> None:
    """New customers write a state, a due entry, a counter and a change: with any of those
    commands refused, none of them is written (a Lua script is never rolled back, so the
    script checks them all before its first write)."""
    client = restricted(command)
    store = Store(client)
    events = [ev(profiles, f"e{i}", "placed", f"o{i}", "50", customer=f"c{i}") for i in range(3)]
    with pytest.raises(redis.ResponseError) as refused:
        apply(store, profiles, events)
    assert permissions.is_refusal(refused.value), refused.value
    assert command.upper() in str(refused.value).upper()
    assert written(redis_client) == []

    grant(redis_client, client, command)
    result = apply(store, profiles, events)
    assert result.outcomes["applied"] == 3
    assert len(result.committed) == 3
    for i in range(3):
        assert store.reads.customer("default", f"c{i}") is not None


def test_the_self_test_passes_with_every_command_and_leaves_nothing(
    restricted: Restricted, redis_client: redis.Redis
) -> None:
    permissions.self_test(restricted())
    assert list(redis_client.scan_iter(match=b"rfm:*")) == []


@pytest.mark.parametrize("command", ["xadd", "evalsha", "zadd", "hgetall", "script|load"])
def test_the_self_test_names_a_refused_command_and_its_grant(
    restricted: Restricted, redis_client: redis.Redis, command: str
) -> None:
    with pytest.raises(RedisRefusedError) as refused:
        permissions.self_test(restricted(command))
    line = str(refused.value)
    assert "\n" not in line
    assert command.upper() in line and f"+{command}" in line, line
    assert "docs/operations.md" in line
    redis_client.flushall()  # (scratch keys, if any, are the test's own)


def test_the_acl_rule_of_the_docs_runs_the_self_test(
    redis_client: redis.Redis, redis_server: EmbeddedRedis
) -> None:
    """The rule docs/operations.md gives is enough for everything the worker runs."""
    name = f"worker-{uuid.uuid4().hex[:8]}"
    redis_client.execute_command("ACL", "SETUSER", name, "on", ">secret", "resetkeys",
                                 *permissions.ACL_RULE.split())  # fmt: skip
    client = redis.Redis.from_url(redis_server.url, username=name, password="secret")
    try:
        permissions.self_test(client)
        store = Store(client)
        assert store.reads.customer("default", "nobody") is None
    finally:
        client.close()
        redis_client.acl_deluser(name)


def test_a_commit_on_a_refused_key_pattern_writes_nothing(
    redis_client: redis.Redis, redis_server: EmbeddedRedis, profiles: Profiles
) -> None:
    """An ACL key pattern that leaves out the outbox streams: refused before any write (the
    server checks a script's declared keys before running it)."""
    name = f"worker-{uuid.uuid4().hex[:8]}"
    redis_client.acl_setuser(
        name,
        enabled=True,
        passwords=["+secret"],
        keys=["rfm:{*}:c:*", "rfm:{*}:due:*", "rfm:{*}:counts", "rfm:{*}:applied", "rfm:{*}:f*"],
        commands=["+@all"],
    )
    client = redis.Redis.from_url(redis_server.url, username=name, password="secret")
    try:
        with pytest.raises(redis.ResponseError) as refused:
            apply(Store(client), profiles, [ev(profiles, "e1", "placed", "o1", "50")])
        assert permissions.is_refusal(refused.value), refused.value
        assert written(redis_client) == []
    finally:
        client.close()
        redis_client.acl_deluser(name)
