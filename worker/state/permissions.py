"""What the worker needs the Redis server to let it run, checked before the first event.

A command refused in the middle of the stream (an ACL rule without it, a command renamed
or disabled in the server's configuration, a proxy that forbids it) would stop the
worker at its first batch. `self_test` runs every command the worker uses, once, on
scratch keys under its own key prefix, and names what is refused in one line
(RedisRefusedError: exit code 2, "fix the configuration"). The commit script checks its
own writes before the first one as well (worker/state/lua/commit.lua), so a permission
taken away later never leaves a state without its changes. docs/operations.md, "Least
privilege", lists the commands and the ACL rule.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis

from worker.errors import RedisRefusedError
from worker.state.scripts import script

# Every command the worker runs (the scripts', redis-py's Script and Lock, the reads), in
# the order docs/operations.md gives them; the self-test runs each of them.
COMMANDS = (
    *("evalsha", "script|load"),
    *("get", "mget", "set", "mset", "del", "unlink", "exists", "scan", "pexpire", "pttl"),
    *("hget", "hmget", "hgetall", "hkeys", "hset", "hdel", "hincrby"),
    *("zadd", "zrem", "zrangebyscore", "zcount", "zrangebylex"),
    *("xadd", "xrange", "xdel"),
    *("multi", "exec", "ping"),
)
# The ACL rule docs/operations.md gives the worker's user ("user NAME on >PASSWORD " before
# it). Refused and tolerated: INFO and CONFIG GET (start-up checks), CLIENT SETINFO.
ACL_RULE = "resetchannels ~rfm:* -@all " + " ".join("+" + command for command in COMMANDS)


def is_refusal(exc: BaseException) -> bool:
    """Whether a Redis error says the server refuses a command: an ACL rule, or a command
    it does not know (renamed or disabled). Not a passing condition like out of memory."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return True
    text = str(exc).lower()
    return isinstance(exc, redis.ResponseError) and any(sign in text for sign in _REFUSALS)


# How a refusal reads where redis-py has no class for it (an error inside a script).
_REFUSALS = ("noperm", "no permissions", "acl failure", "unknown command", "unknown redis command")


def self_test(client: Any) -> None:
    """Run every command the worker uses on scratch keys (rfm:{selftest}:<nonce>:*, one
    slot, deleted after); RedisRefusedError names the refused ones and the fix. Out of
    memory is no refusal: the worker waits for memory as it would mid-stream."""
    base = f"rfm:{{selftest}}:{uuid.uuid4().hex}:"
    scratch = [(base + kind).encode() for kind in ("a", "b", "hash", "zset", "stream")]
    refused: dict[str, str] = {}

    def run(command: str, call: Any) -> Any:
        try:
            return call()
        except redis.exceptions.OutOfMemoryError:
            return None
        except redis.ResponseError as exc:
            refused[command] = str(exc)
            return None

    source = script("selftest.lua")
    sha = run("script|load", lambda: client.script_load(source))
    if sha is not None:
        reply = run("evalsha", lambda: client.evalsha(sha, len(scratch), *scratch))
        pairs = list(reply or [])
        for command, error in zip(pairs[::2], pairs[1::2], strict=True):
            if not _text(error).startswith("OOM"):
                refused[_text(command).lower()] = _text(error)
    a, _b, hashed, zset, stream = scratch
    run("exists", lambda: client.exists(a))
    run("scan", lambda: next(iter(client.scan_iter(match=base.encode() + b"*", count=10)), None))
    run("hmget", lambda: client.hmget(hashed, ["f"]))
    run("hgetall", lambda: client.hgetall(hashed))
    run("zrangebyscore", lambda: client.zrangebyscore(zset, b"-inf", 1, start=0, num=1))
    run("zcount", lambda: client.zcount(zset, b"-inf", 1))
    run("zrangebylex", lambda: client.zrangebylex(zset, b"-", b"+", start=0, num=1))
    entries = run("xrange", lambda: client.xrange(stream, count=1)) or []
    if entries:
        run("xdel", lambda: client.xdel(stream, entries[0][0]))
    run("pttl", lambda: client.pttl(a))
    run("ping", lambda: client.ping())
    transaction = client.pipeline(transaction=True)  # flows are read in one MULTI
    transaction.exists(a)
    if run("multi", transaction.execute) is None and "multi" in refused:
        refused["exec"] = refused["multi"]  # one of the two: the grant names both
    run("set", lambda: client.set(a, b"1", nx=True, px=60_000))  # a lock's SET NX PX
    run("unlink", lambda: client.unlink(*scratch[1:]))
    run("del", lambda: client.delete(a))
    if refused:
        raise RedisRefusedError(_sentence(refused, _user(client)))


def _sentence(refused: dict[str, str], user: str) -> str:
    names = sorted(refused)
    first = " ".join(refused[names[0]].split())
    grants = " ".join("+" + name for name in names)
    return (
        f"Redis refuses command(s) the worker needs: {', '.join(names).upper()} ({first}). Grant "
        f"them to the user {user!r} (ACL SETUSER {user} {grants} ~rfm:*) or undo their "
        "renaming in the server's configuration; docs/operations.md, Least privilege, "
        "lists every command"
    )


def _user(client: Any) -> str:
    owner = getattr(client, "connection_pool", None) or getattr(client, "nodes_manager", None)
    kwargs = getattr(owner, "connection_kwargs", {})
    return str(kwargs.get("username") or "default")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
