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

import hiredis
import redis


class ScriptCalls:
    """EVALSHA calls sent in rounds of at least `round_customers` customers; `replies`
    sends what is left and returns each call's reply, or the ResponseError it met (the
    replies after it still follow). A connection left with replies unread (an error, an
    interrupt) is closed, never reused."""

    def __init__(self, client: Any, sha: str, round_customers: int) -> None:
        self._pool = client.connection_pool
        self._sha, self._round = sha, round_customers
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
        # Packed by hiredis directly: redis-py's own packer looks at every argument in
        # Python first (for str commands and buffers), and a call carries a few hundred,
        # all bytes, ints or str already.
        call: tuple[Any, ...] = ("EVALSHA", self._sha, len(keys), *keys, *argv)
        self._unsent.append(hiredis.pack_command(call))
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
