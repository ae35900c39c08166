"""The Lua scripts against a real Redis, called directly (not through Store).

The argument layout is the one documented at the top of worker/state/lua/commit.lua.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

LUA = Path(__file__).resolve().parents[2] / "worker" / "state" / "lua"

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


DUE0 = b"rfm:{05}:due:0"
DUE1 = b"rfm:{05}:due:1"

# key, expected ("" = absent), new value (None = keep), and optionally the due index move:
# the zset it is in, the zset it belongs in, the due instant ("" = never).
Customer = tuple[bytes, bytes, bytes | None] | tuple[bytes, bytes, bytes | None, bytes, bytes, str]


def call_commit(
    script: Any,
    customers: list[Customer],
    deltas: list[tuple[str, int]],
    changes: list[tuple[bytes, str, bytes]],  # outbox stream, customer id, payload
    index: dict[bytes, list[bytes]] | None = None,  # segment index set -> members added
    unindex: dict[bytes, list[bytes]] | None = None,  # ... -> members removed
) -> list[Any]:
    """Build the plan document and its KEYS/ARGV as commit.lua's header describes."""
    keys: list[bytes] = []
    argv: list[Any] = [b""]

    def key(k: bytes) -> int:
        if k not in keys:
            keys.append(k)
        return keys.index(k) + 1

    def arg(v: Any) -> int:
        argv.append(v)
        return len(argv)

    plan_customers: list[Any] = []
    for c in customers:
        k, expected, new = c[0], c[1], c[2]
        due_from, due_to, due = (c[3], c[4], c[5]) if len(c) == 6 else (DUE0, DUE0, "")
        plan_customers += [
            key(k),
            arg(expected),
            0 if new is None else arg(new),
            key(due_from),
            key(due_to),
            due,
        ]
    plan_changes = [
        v for stream, cid, payload in changes for v in (key(stream), arg(cid), arg(payload))
    ]

    def runs(sets: dict[bytes, list[bytes]] | None) -> list[int]:
        out: list[int] = []
        for k, members in (sets or {}).items():
            out += [key(k), len(argv) + 1, len(members)]
            argv.extend(members)
        return out

    argv[0] = orjson.dumps(
        {
            "customers": plan_customers,
            "counts": [v for d in deltas for v in (key(COUNTS), *d)],
            "changes": plan_changes,
            "index": runs(index),
            "unindex": runs(unindex),
        }
    )
    return list(script(keys=keys, args=argv))


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
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
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
    redis_client.zadd(DUE0, {A: 1000})
    before = snapshot(redis_client)

    reply = call_commit(
        commit,
        [(A, expect_a, b"new-a", DUE0, DUE1, "2000"), (B, expect_b, b"new-b", DUE1, DUE1, "5")],
        [("default\t111\tlost", -1), ("default\t555\tchampions", 1), ("default\t511\tn", 1)],
        [(OUT0, "alice", b"pa"), (OUT1, "bob", b"pb")],
    )
    assert reply == [0, *conflicts]
    # No SET, no ZADD/ZREM, no XADD, no HINCRBY/HDEL: the keyspace is exactly as before.
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


def test_commit_due_index_add_move_and_remove(commit: Any, redis_client: redis.Redis) -> None:
    assert call_commit(commit, [(A, b"", b"a1", DUE0, DUE0, "1767225600123")], [], []) == [1]
    assert redis_client.zrange(DUE0, 0, -1, withscores=True) == [(A, 1767225600123.0)]
    # Rescheduled: the same zset, a new instant.
    call_commit(commit, [(A, b"a1", b"a2", DUE0, DUE0, "1767225700000")], [], [])
    assert redis_client.zscore(DUE0, A) == 1767225700000.0
    # The customer's latest event came on partition 1: its entry moves with it.
    call_commit(commit, [(A, b"a2", b"a3", DUE0, DUE1, "1767225800000")], [], [])
    assert redis_client.exists(DUE0) == 0
    assert redis_client.zscore(DUE1, A) == 1767225800000.0
    # Nothing will change by itself any more: removed.
    call_commit(commit, [(A, b"a3", b"a4", DUE1, DUE1, "")], [], [])
    assert redis_client.exists(DUE0, DUE1) == 0
    assert redis_client.get(A) == b"a4"


def test_commit_due_only_update_keeps_the_state(commit: Any, redis_client: redis.Redis) -> None:
    redis_client.set(A, b"state")
    assert call_commit(commit, [(A, b"state", None, DUE0, DUE0, "0")], [], []) == [1]
    assert redis_client.get(A) == b"state"
    assert redis_client.zscore(DUE0, A) == 0.0
    # Still compare-and-set: a state that changed since it was read is a conflict.
    redis_client.set(A, b"other")
    assert call_commit(commit, [(A, b"state", None, DUE0, DUE0, "")], [], []) == [0, 1]
    assert redis_client.zscore(DUE0, A) == 0.0
    # A stale entry of a customer that no longer exists is removed, expecting it absent.
    redis_client.zadd(DUE0, {B: 5})
    assert call_commit(commit, [(B, b"", None, DUE0, DUE0, "")], [], []) == [1]
    assert redis_client.zscore(DUE0, B) is None
    assert redis_client.exists(B) == 0


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


def test_thousands_of_customers_in_one_call(redis_client: redis.Redis, commit: Any) -> None:
    """Writes are grouped into one command per kind and chunked under Lua's stack limit:
    2,500 customers (some moving partition, some never due) in one call, then a
    conflicting one among them refuses the whole call."""
    keys = [f"rfm:{{05}}:c:default:c{i}".encode() for i in range(2_500)]
    first = [(k, b"", b"v1", DUE0, DUE0, str(1_000 + i)) for i, k in enumerate(keys)]
    assert call_commit(commit, first, [], []) == [1]
    assert redis_client.zcard(DUE0) == 2_500
    moved: list[Customer] = [
        (k, b"v1", b"v2", DUE0, DUE1, "" if i % 3 == 0 else str(5_000 + i))
        for i, k in enumerate(keys)
    ]
    assert call_commit(commit, moved, [], []) == [1]
    assert redis_client.mget(keys) == [b"v2"] * 2_500
    assert redis_client.zcard(DUE0) == 0
    due = dict(redis_client.zrange(DUE1, 0, -1, withscores=True))
    assert due == {k: 5_000 + i for i, k in enumerate(keys) if i % 3}
    stale = [(k, b"v2", b"v3") for k in keys[:1_999]] + [(keys[2_200], b"v1", b"v3")]
    before = snapshot(redis_client)
    assert call_commit(commit, stale, [], []) == [0, 2_000]
    assert snapshot(redis_client) == before


def test_segment_index_runs_longer_than_a_chunk(redis_client: redis.Redis, commit: Any) -> None:
    """A set's members come as one run of ARGV, added and removed in chunks under Lua's
    stack limit: 2,500 added to one set and 3 to another in one call, then 1,200 of them
    moved to a second set (added there first, then removed here)."""
    here, there = b"rfm:{05}:m:default:s", b"rfm:{05}:m:default:l"
    members = [b"0004lost11%016x" % i + b"c%d" % i for i in range(2_500)]
    key = b"rfm:{05}:c:default:c1"
    added = {here: members, there: [b"a", b"b", b"c"]}
    assert call_commit(commit, [(key, b"", b"v1")], [], [], index=added) == [1]
    assert redis_client.zrange(here, 0, -1) == sorted(members)
    assert redis_client.zrange(there, 0, -1) == [b"a", b"b", b"c"]
    moved = members[:1_200]
    result = call_commit(
        commit, [(key, b"v1", b"v2")], [], [], index={there: moved}, unindex={here: moved}
    )
    assert result == [1]
    assert redis_client.zrange(here, 0, -1) == sorted(members[1_200:])
    assert redis_client.zrange(there, 0, -1) == sorted([b"a", b"b", b"c", *moved])
    assert {score for _, score in redis_client.zrange(there, 0, -1, withscores=True)} == {0.0}
