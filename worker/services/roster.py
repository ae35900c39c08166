"""The running workers, each saying what it scores with and what it reads (`rfm:members`).

A rolling upgrade: the state format the workers write is the newest that every running
worker reads (worker/state/formats.py); each tick tells it who runs now.

Workers that disagree on a profile, made visible.

Two workers on one Redis with different versions of a profile (a rollout in progress, or
one started with the wrong RFM_PROFILES) fight: each marks the other's customers for
rescoring and scores them its way. During a rollout that is expected and ends by itself;
otherwise nothing would say so. So every worker says which versions it scores with
(`rfm:members`, every ROSTER_EVERY_S) and reads what the others say: the number of profiles
whose versions differ among the running workers is `rfm_profile_versions_disagree`, and a
warning names them when that changes. Readiness is not affected: a rollout disagrees on
purpose until it completes, and not-ready workers would stall it (the alert
RfmProfilesDisagree waits 30 minutes instead; docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from collections.abc import Callable

from worker import metrics
from worker.pacing import Every
from worker.rules.profiles import Profiles
from worker.state.store import Store

logger = logging.getLogger(__name__)

ROSTER_EVERY_S = 30.0
STALE_MS = 3 * int(ROSTER_EVERY_S * 1000)  # a member silent this long has stopped


def member_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Roster:
    def __init__(
        self, store: Store, profiles: Profiles, now_ms: Callable[[], int], member: str = ""
    ) -> None:
        self._store, self._profiles, self._now_ms = store, profiles, now_ms
        self.member = member or member_id()
        self._every = Every(ROSTER_EVERY_S)
        self._said: dict[str, dict[str, list[str]]] = {}

    def tick(self) -> None:
        """Every ROSTER_EVERY_S: say this worker's versions, read the others'."""
        if not self._every.due():
            return
        now = self._now_ms()  # the wall clock: members age in real time
        members = self._store.members.announce(self.member, self._profiles.versions(), now)
        stale = [m for m, said in members.items() if now - said.at > STALE_MS]
        self._store.members.forget(*stale)
        live = {m: said for m, said in sorted(members.items()) if m not in stale}
        self._store.formats.agree([said.reads for said in live.values()])
        metrics.STATE_FORMAT.set(self._store.formats.writes)
        by_profile: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for member, said in live.items():
            for name, version in said.versions.items():
                by_profile[name][version].append(member)
        split = {name: dict(v) for name, v in by_profile.items() if len(v) > 1}
        metrics.PROFILE_DISAGREEMENTS.set(len(split))
        if split != self._said:
            if split:
                logger.warning(
                    "workers on this Redis disagree on profile(s): %s. Each rescores the "
                    "customers the other scored (expected during a rollout of new profiles; "
                    "otherwise check RFM_PROFILES)",
                    "; ".join(
                        f"{name}: "
                        + ", ".join(f"{version} ({', '.join(who)})" for version, who in v.items())
                        for name, v in sorted(split.items())
                    ),
                )
            elif self._said:
                logger.info("the workers on this Redis agree on their profiles again")
            self._said = split

    def leave(self) -> None:
        """Stopping: no longer a member."""
        self._store.members.forget(self.member)
