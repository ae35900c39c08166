"""The Lua scripts against a real Redis, called directly (not through Store).

The argument layout is the one documented at the top of worker/lua/commit.lua.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

LUA = Path(__file__).resolve().parents[1] / "worker" / "lua"

COUNTS = b"rfm:{05}:counts"
A = b"rfm:{05}:c:default:alice"
B = b"rfm:{05}:c:default:bob"
OUT0 = b"rfm:{05}:outbox:0"
OUT1 = b"rfm:{05}:outbox:1"


@pytest.fixture
def commit(redis_client: redis.Redis) -> Any:
    return redis_client.register_script((LUA / "commit.lua").read_text(encoding="utf-8"))


@pytest.fixture
def clock(redis_client: redis.Redis) -> Any:
    return redis_client.register_script((LUA / "clock.lua").read_text(encoding="utf-8"))


def call_commit(
    script: Any,
    customers: list[tuple[bytes, bytes, bytes]],  # key, expected ("" = absent), new value
    deltas: list[tuple[str, int]],
    changes: list[tuple[bytes, str, bytes]],  # outbox stream, customer id, payload
) -> list[Any]:
    keys: list[bytes] = [COUNTS, *(k for k, _, _ in customers), *(s for s, _, _ in changes)]
    args: list[Any] = [len(customers)]
    args += [exp for _, exp, _ in customers]
    args += [new for _, _, new in customers]
    args.append(len(deltas))
    for fld, delta in deltas:
        args += [fld, delta]
    for _, cid, payload in changes:
        args += [cid, payload]
    return list(script(keys=keys, args=args))


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type and content, to prove a call wrote nothing."""
    out: dict[bytes, Any] = {}
    for key in client.keys(b"*"):
        kind = client.type(key)
        if kind == b"string":
            out[key] = client.get(key)
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"stream":
            out[key] = client.xrange(key)
        else:  # pragma: no cover - the scripts create nothing else
            out[key] = kind
    return out


# -- commit.lua -------------------------------------------------------------------------------


def test_commit_writes_states_outbox_and_counters(commit: Any, redis_client: redis.Redis) -> None:
    reply = call_commit(
        commit,
        [(A, b"", b"state-a1"), (B, b"", b"state-b1")],
        [("default\t511\tnew_customers", 2)],
        [(OUT0, "alice", b"pa1"), (OUT1, "bob", b"pb1"), (OUT0, "alice", b"pa2")],
    )
    assert reply[0] == 1
    ids = reply[1:]
    assert len(ids) == 3
    assert redis_client.get(A) == b"state-a1"
    assert redis_client.get(B) == b"state-b1"
    out0 = redis_client.xrange(OUT0)
    out1 = redis_client.xrange(OUT1)
    # Entries are in call order within a stream, with exactly the fields k and v, and the
    # returned ids are those of the entries, in the order of the changes.
    assert [fields for _, fields in out0] == [
        {b"k": b"alice", b"v": b"pa1"},
        {b"k": b"alice", b"v": b"pa2"},
    ]
    assert [fields for _, fields in out1] == [{b"k": b"bob", b"v": b"pb1"}]
    assert ids == [out0[0][0], out1[0][0], out0[1][0]]
    assert redis_client.hgetall(COUNTS) == {b"default\t511\tnew_customers": b"2"}


def test_commit_compare_and_set_against_current_values(
    commit: Any, redis_client: redis.Redis
) -> None:
    redis_client.set(A, b"old-a")
    reply = call_commit(commit, [(A, b"old-a", b"new-a"), (B, b"", b"new-b")], [], [])
    assert reply == [1]
    assert redis_client.get(A) == b"new-a"
    assert redis_client.get(B) == b"new-b"
    # The value just written is now what must be expected.
    reply = call_commit(commit, [(A, b"old-a", b"newer-a")], [], [])
    assert reply == [0, 1]
    assert redis_client.get(A) == b"new-a"


@pytest.mark.parametrize(
    ("stored", "expect_a", "expect_b", "conflicts"),
    [
        ({A: b"old-a", B: b"someone"}, b"old-a", b"", [2]),  # B exists, expected absent
        ({A: b"old-a"}, b"old-a", b"old-b", [2]),  # B absent, a value expected
        ({A: b"changed", B: b"old-b"}, b"old-a", b"old-b", [1]),
        ({A: b"changed", B: b"x"}, b"old-a", b"old-b", [1, 2]),
        ({}, b"old-a", b"old-b", [1, 2]),
        ({A: b"old-a", B: b"old-b"}, b"old-a", b"old-b!", [2]),  # differs by one byte
    ],
    ids=["b-exists", "b-absent", "a-differs", "both-differ", "both-absent", "one-byte"],
)
def test_commit_conflict_writes_nothing(
    commit: Any,
    redis_client: redis.Redis,
    stored: dict[bytes, bytes],
    expect_a: bytes,
    expect_b: bytes,
    conflicts: list[int],
) -> None:
    for key, value in stored.items():
        redis_client.set(key, value)
    redis_client.hset(COUNTS, mapping={"default\t111\tlost": 1, "default\t555\tchampions": 3})
    redis_client.xadd(OUT0, {"k": "zed", "v": "earlier"})
    before = snapshot(redis_client)

    reply = call_commit(
        commit,
        [(A, expect_a, b"new-a"), (B, expect_b, b"new-b")],
        [("default\t111\tlost", -1), ("default\t555\tchampions", 1), ("default\t511\tn", 1)],
        [(OUT0, "alice", b"pa"), (OUT1, "bob", b"pb")],
    )
    assert reply == [0, *conflicts]
    # No SET, no XADD, no HINCRBY/HDEL: the whole keyspace is exactly as before.
    assert snapshot(redis_client) == before


def test_commit_counters_up_down_and_zero_deleted(commit: Any, redis_client: redis.Redis) -> None:
    redis_client.hset(COUNTS, mapping={"t\t111\tlost": 1, "t\t555\tchampions": 2, "t\t311\ta": 5})
    reply = call_commit(
        commit,
        [(A, b"", b"a")],
        [("t\t111\tlost", -1), ("t\t555\tchampions", -1), ("t\t311\ta", 3), ("t\t511\tn", 1)],
        [],
    )
    assert reply == [1]
    assert redis_client.hgetall(COUNTS) == {
        b"t\t555\tchampions": b"1",
        b"t\t311\ta": b"8",
        b"t\t511\tn": b"1",
    }
    call_commit(commit, [(A, b"a", b"b")], [("t\t555\tchampions", -1), ("t\t511\tn", -1)], [])
    assert redis_client.hgetall(COUNTS) == {b"t\t311\ta": b"8"}
    call_commit(commit, [(A, b"b", b"c")], [("t\t311\ta", -8)], [])
    assert redis_client.exists(COUNTS) == 0  # the last field gone, the hash is gone


def test_commit_without_deltas_or_changes(commit: Any, redis_client: redis.Redis) -> None:
    reply = call_commit(commit, [(A, b"", b"only-state")], [], [])
    assert reply == [1]
    assert redis_client.get(A) == b"only-state"
    assert redis_client.exists(COUNTS, OUT0, OUT1) == 0


def test_commit_binary_safe_values(commit: Any, redis_client: redis.Redis) -> None:
    state = '{"o":{"a\\u0000":[1,2]},"x":"é🎉\n\t"}'.encode() + b"\x00\xff"
    payload = '{"customer_id":"{}:*\\n🎉"}'.encode()
    reply = call_commit(
        commit, [(A, b"", state)], [("t\t1\tx", 1)], [(OUT0, "{}:*\n🎉 ü", payload)]
    )
    assert reply[0] == 1
    assert redis_client.get(A) == state
    [(_, fields)] = redis_client.xrange(OUT0)
    assert fields == {b"k": "{}:*\n🎉 ü".encode(), b"v": payload}


# -- clock.lua --------------------------------------------------------------------------------

CLOCK = b"rfm:clock"


def test_clock_starts_at_first_candidate(clock: Any, redis_client: redis.Redis) -> None:
    assert redis_client.get(CLOCK) is None
    assert clock(keys=[CLOCK], args=[1_767_225_600_123]) == 1_767_225_600_123
    assert int(redis_client.get(CLOCK) or 0) == 1_767_225_600_123


def test_clock_never_moves_back(clock: Any, redis_client: redis.Redis) -> None:
    seq = [1_700_000_000_000, 1_700_000_000_500, 1_699_999_999_999, 1_700_000_000_500, 5]
    seen = []
    for candidate in seq:
        seen.append(clock(keys=[CLOCK], args=[candidate]))
    assert (
        seen == [1_700_000_000_000, 1_700_000_000_500, 1_700_000_000_500] + [1_700_000_000_500] * 2
    )
    assert int(redis_client.get(CLOCK) or 0) == 1_700_000_000_500
    # Forward again, by a single millisecond.
    assert clock(keys=[CLOCK], args=[1_700_000_000_501]) == 1_700_000_000_501
    assert int(redis_client.get(CLOCK) or 0) == 1_700_000_000_501
