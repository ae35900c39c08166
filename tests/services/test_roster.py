"""Workers that disagree on a profile are visible: a metric and a warning, not readiness."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from tests.factories import CHANGED_PROFILES
from worker.rules.profiles import Profiles
from worker.services.roster import STALE_MS, Roster
from worker.state import keys
from worker.state.store import Store

T0 = 1_800_000_000_000


def disagreements() -> float | None:
    return REGISTRY.get_sample_value("rfm_profile_versions_disagree")


def test_workers_disagreeing_on_a_profile_are_counted_and_named(
    store: Store, profiles: Profiles, caplog: pytest.LogCaptureFixture
) -> None:
    now = [T0]
    right = Roster(store, profiles, lambda: now[0], member="host-a:1")
    wrong = Roster(store, CHANGED_PROFILES, lambda: now[0], member="host-b:2")
    right.tick()
    assert disagreements() == 0  # alone
    with caplog.at_level(logging.WARNING, logger="worker.services.roster"):
        wrong.tick()
    assert disagreements() == 1
    [line] = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert f"default: {profiles.default.version} (host-a:1)" in line
    assert f"{CHANGED_PROFILES.default.version} (host-b:2)" in line

    # The wrong one stops (or is fixed): agreement once its record is gone.
    wrong.leave()
    right._every.now()
    right.tick()
    assert disagreements() == 0
    assert set(store.redis.hkeys(keys.MEMBERS)) == {b"host-a:1"}


def test_a_member_silent_too_long_is_forgotten(store: Store, profiles: Profiles) -> None:
    now = [T0]
    Roster(store, CHANGED_PROFILES, lambda: now[0], member="gone:9").tick()  # then killed
    now[0] += STALE_MS + 1
    alive = Roster(store, profiles, lambda: now[0], member="alive:1")
    alive.tick()
    assert disagreements() == 0  # a dead worker's versions do not count
    assert set(store.redis.hkeys(keys.MEMBERS)) == {b"alive:1"}
