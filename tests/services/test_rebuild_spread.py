"""`rfm-worker rebuild` spread and resumed, end to end: a real broker, a real Redis.

Spread over processes (--processes 2) and over runs that own disjoint partitions (as on
two machines), and killed (SIGKILL) in the middle then run again: each time the state is
exactly the recomputation of every event, no worker starts while the rebuild is
unfinished, and the workers resume after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import assert_state_matches, converged, records_of
from tests.reference import expected_now
from worker.commands.rebuild import summary
from worker.services.rebuild import Rebuilt
from worker.services.rebuild_replay import Replayed
from worker.state import keys
from worker.state.store import Store

UNFINISHED = "a rebuild of the state is unfinished"


def _later(seed: int) -> list[dict[str, object]]:
    return [{**e, "event_id": f"L{seed}-{e['event_id']}"} for e in generate(30, seed=seed)]


def _resumes_after(deployment: Deployment, store: Store, events: list[dict[str, object]]) -> None:
    """A worker started now consumes from where the rebuild stopped."""
    later = _later(99)
    worker = deployment.worker()
    deployment.produce(records_of(later))
    both = expected_now(events + later)
    deployment.read(deployment.actions, until=converged(both))
    assert_state_matches(store, both)
    assert UNFINISHED not in worker.log() and "Redis holds no" not in worker.log()
    assert worker.stop() == 0


def test_two_processes_rebuild_what_one_does(deployment: Deployment, store: Store) -> None:
    events = generate(120, seed=61)
    expected = expected_now(events)
    deployment.produce(records_of(events))

    one = deployment.command("rebuild", "--progress", "0")
    assert one.returncode == 0, one.stderr
    assert_state_matches(store, expected)
    two = deployment.command("rebuild", "--yes", "--processes", "2", "--progress", "0.05")
    assert two.returncode == 0, two.stderr
    assert "rebuilt from" in two.stdout, two.stdout
    assert_state_matches(store, expected)
    # Each child says where its share stands, on stderr, and when it is done.
    progress = [line for line in two.stderr.splitlines() if line.startswith("rebuild ")]
    assert any(": done," in line and "records/s" in line for line in progress), two.stderr
    assert store.redis.exists(keys.REBUILD) == 0
    _resumes_after(deployment, store, events)


def test_rebuilds_of_disjoint_partitions_make_the_whole_state(
    deployment: Deployment, store: Store
) -> None:
    events = generate(100, seed=62)
    expected = expected_now(events)
    deployment.produce(records_of(events))

    first = deployment.command("rebuild", "--partitions", "0-1", "--progress", "0")
    assert first.returncode == 0, first.stderr
    assert "2 of 4 partitions done" in first.stdout, first.stdout
    # Half a state: nothing may consume or sweep it; one line says why.
    refused = deployment.worker()
    assert refused.proc is not None and refused.proc.wait(60) == 1
    lines = [line for line in refused.log().splitlines() if UNFINISHED in line]
    assert len(lines) == 1 and "2 of 4 partitions" in lines[0], refused.log()
    assert "rerun `rfm-worker rebuild` to resume it" in lines[0]
    swept = deployment.command("sweep", "--once")
    assert swept.returncode == 1 and UNFINISHED in swept.stderr, swept.stderr

    second = deployment.command("rebuild", "--partitions", "2,3", "--progress", "0")
    assert second.returncode == 0, second.stderr
    assert "rebuilt from" in second.stdout and "0 old key(s) deleted" in second.stdout
    assert_state_matches(store, expected)
    _resumes_after(deployment, store, events)


def test_concurrent_rebuilds_of_disjoint_partitions(deployment: Deployment, store: Store) -> None:
    """Two machines started at once: one wipes, the other waits for it, both replay."""
    events = generate(100, seed=63)
    deployment.produce(records_of(events))
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "rebuild", "--yes", "--partitions", share],
            env=deployment.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in ("0,2", "1,3")
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum("rebuilt from" in out for out, _err in outputs) == 1, outputs
    assert_state_matches(store, expected_now(events))
    _resumes_after(deployment, store, events)


def _applied_records(client: redis.Redis, topic: str) -> int:
    fields = [keys.applied_field(topic, p) for p in range(4)]
    return sum(int(v) for v in client.hmget(keys.applied(0), fields) if v is not None)


def test_a_rebuild_killed_midway_resumes_exactly(
    deployment: Deployment, store: Store, redis_client: redis.Redis
) -> None:
    events = generate(1500, seed=64)
    expected = expected_now(events)
    deployment.produce(records_of(events))
    env = deployment.env()
    slow = [sys.executable, "-m", "worker", "rebuild", "--processes", "2", "--batch", "5"]
    run = subprocess.Popen(
        [*slow, "--progress", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert run.stderr is not None
    for line in run.stderr:  # a progress line: it is under way
        assert ": done," not in line, "the rebuild went too fast to be killed midway"
        if "records/s" in line:
            break
    assert _applied_records(redis_client, deployment.orders) > 0
    os.kill(run.pid, signal.SIGKILL)  # the children die with it
    run.wait(10)
    run.stderr.close()
    time.sleep(0.5)
    assert redis_client.exists(keys.REBUILD) == 1, "the rebuild finished before the kill"

    refused = deployment.worker()
    assert refused.proc is not None and refused.proc.wait(60) == 1
    assert UNFINISHED in refused.log() and "partitions" in refused.log()

    again = deployment.command("rebuild", "--progress", "0")  # no --yes: it resumes
    assert again.returncode == 0, again.stderr
    assert "rebuilt from" in again.stdout and "0 old key(s) deleted" in again.stdout
    assert_state_matches(store, expected)
    assert redis_client.exists(keys.REBUILD) == 0
    _resumes_after(deployment, store, events)


def test_a_run_whose_rebuild_another_run_finished_says_so() -> None:
    """Two runs replaying the last partitions at once: the first to take the lock finishes
    the rebuild and says where the group resumes; the other one finds it finished
    (`finish` answers {}) and says that, not a second "rebuilt from" with no offsets."""
    replayed = Replayed({1: 309, 3: 167}, events=309, records=309, seconds=1.0)
    mine = Rebuilt(replayed, 0, 4, 4, None)
    line = summary(mine, "orders", "g")
    assert not line.startswith("rebuilt from"), line
    assert "replayed orders[1,3]" in line and "4 of 4 partitions done" in line, line
    assert "another run finished the rebuild" in line, line
    waiting = summary(Rebuilt(replayed, 0, 4, 2, None), "orders", "g")
    assert "the rebuild finishes with the run that replays the last" in waiting, waiting
    finished = summary(Rebuilt(replayed, 0, 4, 4, {0: 1, 1: 309, 2: 5, 3: 167}), "orders", "g")
    assert finished.startswith("rebuilt from orders:") and "[3]@167" in finished, finished
