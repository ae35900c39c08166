"""The running workers (`rfm:members`): the profile versions each scores with, so that
workers that disagree on a profile are visible, and the newest state format each reads,
so that a rolling upgrade writes a new format only once every worker reads it
(worker/services/roster.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from worker import __version__
from worker.rules.state_format import FIRST, FORMAT
from worker.state import keys
from worker.state.admin import text


@dataclass(frozen=True, slots=True)
class Member:
    at: int  # when it last said so, epoch ms
    versions: dict[str, str]  # profile -> version it scores with
    reads: int  # the newest state format it reads (releases before the format: the first)


class Members:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def announce(self, member: str, versions: Mapping[str, str], now_ms: int) -> dict[str, Member]:
        """Say which versions `member` scores with, as of now, and what it reads; returns
        every member, this one included. One hash, one slot."""
        doc = {"at": now_ms, "versions": versions, "release": __version__, "reads": FORMAT}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.MEMBERS, member, orjson.dumps(doc))
        pipe.hgetall(keys.MEMBERS)
        _, raw = pipe.execute()
        out: dict[str, Member] = {}
        for name, value in raw.items():
            try:
                said = orjson.loads(value)
                out[text(name)] = Member(
                    int(said["at"]),
                    {str(k): str(v) for k, v in said["versions"].items()},
                    int(said.get("reads", FIRST)),
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue  # not ours to judge; it ages out like any other
        return out

    def forget(self, *members: str) -> None:
        """Members gone (stopped, or silent too long)."""
        if members:
            self.redis.hdel(keys.MEMBERS, *members)
