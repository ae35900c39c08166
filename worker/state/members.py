"""The running workers and the profile versions each scores with (`rfm:members`), so that
workers that disagree on a profile are visible (worker/services/roster.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from worker.state import keys
from worker.state.admin import text


class Members:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def announce(
        self, member: str, versions: Mapping[str, str], now_ms: int
    ) -> dict[str, tuple[int, dict[str, str]]]:
        """Say which versions `member` scores with, as of now; returns every member's
        (when it last said so, its versions), this one included. One hash, one slot."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.MEMBERS, member, orjson.dumps({"at": now_ms, "versions": versions}))
        pipe.hgetall(keys.MEMBERS)
        _, raw = pipe.execute()
        out: dict[str, tuple[int, dict[str, str]]] = {}
        for name, value in raw.items():
            try:
                doc = orjson.loads(value)
                out[text(name)] = (
                    int(doc["at"]),
                    {str(k): str(v) for k, v in doc["versions"].items()},
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue  # not ours to judge; it ages out like any other
        return out

    def forget(self, *members: str) -> None:
        """Members gone (stopped, or silent too long)."""
        if members:
            self.redis.hdel(keys.MEMBERS, *members)
