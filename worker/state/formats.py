"""Which state format this process writes (worker/rules/state_format.py), and the record
of it in Redis (`rfm:format`).

A worker writes the format recorded, or the first format while none is: during a rolling
upgrade the workers of the previous release keep reading every customer. Once every
running worker says (in the roster, worker/services/roster.py) that it reads a newer
format, the first worker to see it records that format and all write it from then on.
RFM_STATE_FORMAT holds a process at an earlier format (to keep a rollback possible past
the upgrade). A record naming a format this release cannot read stops the process.
"""

from __future__ import annotations

import logging
from typing import Any

from worker import __version__
from worker.rules.state_format import FIRST, FORMAT, check_readable
from worker.state import keys
from worker.state.admin import text

logger = logging.getLogger(__name__)


class StateFormats:
    def __init__(self, client: Any, most: int | None = None) -> None:
        self.redis = client
        # RFM_STATE_FORMAT: never write newer than this
        self.most = FORMAT if most is None else min(most, FORMAT)
        self._writes: int | None = None  # until `check` has read the record

    @property
    def writes(self) -> int:
        """The format a commit writes now (the record is read at the first commit)."""
        return self.check() if self._writes is None else self._writes

    def recorded(self) -> tuple[int, str | None]:
        """(the format recorded in Redis, the release that recorded it); the first format
        and None when nothing is recorded (a fresh Redis, or written by 0.1.0 only)."""
        raw = self.redis.hmget(keys.FORMAT, ["format", "release"])
        if raw[0] is None:
            return FIRST, None
        return int(raw[0]), None if raw[1] is None else text(raw[1])

    def check(self) -> int:
        """Read the record: raise StateTooNewError when it names a format this release
        cannot read; else write what it names (at most `most`). Returns that format."""
        found, release = self.recorded()
        check_readable(found, release)
        self._writes = min(found, self.most)
        return self._writes

    def agree(self, readers: list[int]) -> bool:
        """`readers`: the newest format each running worker reads (this one included). When
        every one reads a format newer than the one recorded, record it (at most `most`)
        and write it. Returns True when this call switched."""
        current = self.check()
        target = min(min(readers, default=FIRST), self.most)
        if target <= current:
            return False
        # Only a format every running worker reads is recorded, so two workers that both
        # see this at once record the same one: no need for compare-and-set.
        self.redis.hset(keys.FORMAT, mapping={"format": target, "release": __version__})
        logger.info(
            "every running worker reads state format %d: writing it from now on (a release "
            "that reads only format %d can no longer run on this Redis; docs/operations.md "
            '"Upgrading")',
            target,
            current,
        )
        self._writes = target
        return True
