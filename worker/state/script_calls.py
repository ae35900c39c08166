"""Calls of one Lua script streamed on one Redis connection while the caller plans the
next ones (the commit path, worker/state/commit.py).

Why not redis-py's pipeline with its `Script` object (which loads missing scripts first):
a pipeline sends nothing before `execute()`, so Redis would sit idle while Python plans the
whole batch instead of running the first calls meanwhile (a slower commit path), and its
`execute()` asks SCRIPT EXISTS first, a round trip more per node and attempt. It also
sends the whole pipeline again after a connection error (the client's default retry):
calls that did run then come back as conflicts and the caller never learns a reply was
lost, which the consumer must know to publish those changes at once
(worker/services/consumer.py, `_publish`). So this sends EVALSHA itself with redis-py's
connection API (get_connection, send_packed_command, read_response) and leaves NOSCRIPT
to the caller: such a call did not run, so it loads the script and commits again.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import redis

# "\r\n$<length>\r\n": what ends one argument of a command and starts the next, for the
# lengths most arguments have (ids, keys, members, records); longer ones are formatted.
_HEADS = [b"\r\n$%d\r\n" % length for length in range(4096)]


def pack_command(head: bytes, args: list[bytes]) -> bytes:
    """A command as one RESP bytes object: `head`, the command's name and its first
    arguments already in RESP (`*<count>\r\n$<len>\r\nNAME` ... without the last CRLF),
    then `args`. What hiredis.pack_command makes of it, byte for byte, in about half its
    time for the commit path's commands (hundreds to thousands of arguments: this looks
    each up once in _HEADS and joins everything at once)."""
    heads = _HEADS
    parts: list[bytes] = [b""] * (2 * len(args) + 2)
    parts[0] = head
    parts[1:-1:2] = [heads[n] if n < 4096 else b"\r\n$%d\r\n" % n for n in map(len, args)]
    parts[2:-1:2] = args
    parts[-1] = b"\r\n"
    return b"".join(parts)


def pack_evalsha(sha: bytes, keys: list[bytes], argv: list[bytes]) -> bytes:
    """EVALSHA sha len(keys) *keys *argv (see `pack_command`)."""
    count = b"%d" % len(keys)
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$%d\r\n%s" % (
        len(keys) + len(argv) + 3,
        len(sha),
        sha,
        len(count),
        count,
    )
    return pack_command(head, keys + argv)


def mget(client: Any, keys: list[bytes]) -> list[bytes | None]:
    """MGET keys on a connection of `client`'s pool, packed here (redis-py's packer looks at
    every argument in Python first: a batch reads a few thousand keys). A connection error
    is the caller's to retry (as for the commit calls), not retried here."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([pack_command(b"*%d\r\n$4\r\nMGET" % (len(keys) + 1), keys)])
        reply: list[bytes | None] = conn.read_response()
    except BaseException:
        conn.disconnect()  # its reply may be unread: never reused
        raise
    finally:
        pool.release(conn)
    return reply


class ScriptCalls:
    """EVALSHA calls sent in rounds of at least `round_customers` customers; `replies`
    sends what is left and returns each call's reply, or the ResponseError it met (the
    replies after it still follow). A connection left with replies unread (an error, an
    interrupt) is closed, never reused."""

    def __init__(self, client: Any, sha: str, round_customers: int) -> None:
        self._pool = client.connection_pool
        self._sha, self._round = sha.encode(), round_customers
        self._conn: Any = None
        self._unsent: list[bytes] = []
        self._customers = 0  # in the calls not sent yet
        self._calls = 0

    def __enter__(self) -> ScriptCalls:
        self._conn = self._pool.get_connection()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._conn.disconnect()
        self._pool.release(self._conn)

    def send(self, keys: list[bytes], argv: list[bytes], *, customers: int) -> None:
        # Packed here, not by redis-py (its packer looks at every argument in Python first,
        # for str commands and buffers): a call carries a few hundred, all bytes.
        self._unsent.append(pack_evalsha(self._sha, keys, argv))
        self._calls += 1
        self._customers += customers
        if self._customers >= self._round:
            self._flush()

    def replies(self) -> list[Any]:
        self._flush()
        replies: list[Any] = []
        for _ in range(self._calls):
            try:
                replies.append(self._conn.read_response())
            except redis.ResponseError as exc:  # this call's error; the next replies follow
                replies.append(exc)
        self._calls = 0
        return replies

    def _flush(self) -> None:
        if self._unsent:
            self._conn.send_packed_command(self._unsent)  # one bytes object per call
            self._unsent, self._customers = [], 0
