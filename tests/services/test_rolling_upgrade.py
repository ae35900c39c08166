"""A rolling upgrade and a rollback, with the real previous release (built from the
project's git history, tests/releases.py), on Apache Kafka while orders flow: the state
equals the recomputation, every customer's changes form one unbroken chain with one id per
content, nothing is dead-lettered. And a state a later release wrote stops this one with
one line, dead-lettering nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Deployment, WorkerProcess
from tests.factories import generate
from tests.fixtures import (
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    records_of,
)
from tests.reference import expected_now
from tests.releases import PREVIOUS, installed, source
from worker.rules.state_format import FIRST, FORMAT
from worker.state import keys
from worker.state.store import Store


@pytest.fixture
def previous_release() -> Path:
    return installed(PREVIOUS)


def ready(proc: WorkerProcess, timeout: float = 60) -> None:
    port = int(proc.env["RFM_HTTP_PORT"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log()[-3000:]
        try:
            if fetch(port, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready in {timeout} s:\n{proc.log()[-3000:]}")


def formats_in(store: Store) -> dict[int, int]:
    """How many customer blobs are in each state format."""
    seen: dict[int, int] = {}
    for key in store.redis.scan_iter(match=keys.CUSTOMER_PATTERN, count=1000):
        raw = store.redis.get(key)
        if raw:
            fmt = orjson.loads(raw).get("f", FIRST)
            seen[fmt] = seen.get(fmt, 0) + 1
    return seen


class Stream:
    """The orders produced in small chunks over `seconds`, in a thread."""

    def __init__(self, dep: Deployment, events: list[dict[str, Any]], seconds: float) -> None:
        self.records = records_of(events)
        self.chunks = 150
        self.pause = seconds / self.chunks
        self.sent = 0
        self.thread = threading.Thread(target=self._run, args=(dep,), daemon=True)
        self.thread.start()

    def _run(self, dep: Deployment) -> None:
        producer = dep.producer(**{"linger.ms": 5})
        size = -(-len(self.records) // self.chunks)
        for start in range(0, len(self.records), size):
            for key, value in self.records[start : start + size]:
                producer.produce(dep.orders, key=key, value=value)
            producer.flush(30)
            self.sent = start + size
            time.sleep(self.pause)
        assert producer.flush(30) == 0

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive()


def test_a_rolling_upgrade_and_a_rollback_lose_nothing(
    apache_kafka: Any, deployment: Deployment, store: Store, previous_release: Path
) -> None:
    old = {"python": previous_release, "cwd": source(previous_release)}
    events = generate(400, seed=31)
    expected = expected_now(events)

    a, b = deployment.worker(**old), deployment.worker(**old)  # the previous release
    ready(a)
    ready(b)
    stream = Stream(deployment, events, seconds=70)

    time.sleep(6)
    assert b.stop() == 0
    c = deployment.worker()  # the new release beside a worker of the previous one
    ready(c)
    time.sleep(8)
    # It wrote only what the previous release reads: nothing in the new format yet.
    assert formats_in(store).get(FORMAT, 0) == 0
    assert store.redis.exists(keys.FORMAT) == 0

    assert c.stop() == 0  # a rollback: the previous release again
    b2 = deployment.worker(**old)
    ready(b2)
    time.sleep(6)

    assert b2.stop() == 0  # forward again, one worker at a time
    c2 = deployment.worker()
    ready(c2)
    assert a.stop() == 0
    d = deployment.worker()
    ready(d)
    # Every worker runs the new release: the next roster turn records the new format.
    deadline = time.monotonic() + 75
    while store.redis.hget(keys.FORMAT, "format") is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.redis.hget(keys.FORMAT, "format") == str(FORMAT).encode()
    switched_at = stream.sent
    stream.join()
    assert switched_at < len(stream.records), "the switch should happen while orders flow"

    actions = deployment.read(deployment.actions, until=converged(expected), timeout=90)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert formats_in(store).get(FORMAT, 0) > 0  # written since the switch
    assert deployment.read(deployment.dlq, until=lambda m: False, timeout=3) == []
    for proc in (a, b, b2, c, c2, d):
        assert "Traceback" not in proc.log() and "internal_error" not in proc.log()
    assert c2.stop() == 0 and d.stop() == 0


def test_a_state_written_by_a_later_release_stops_the_worker_with_one_line(
    apache_kafka: Any, deployment: Deployment, store: Store
) -> None:
    events = generate(20, seed=32)
    deployment.produce(records_of(events))
    first = deployment.worker()
    actions = deployment.read(deployment.actions, until=converged(expected_now(events)))
    assert first.stop() == 0

    # A later release (format 3) wrote this customer: the next event for it stops the
    # worker before anything of that batch is dead-lettered.
    customer = events[0]["customer_id"]
    key = keys.customer("default", customer)
    later = orjson.loads(store.redis.get(key)) | {"f": FORMAT + 1}
    store.redis.set(key, orjson.dumps(later))
    again = dict(events[0], event_id="later-1", order_id="later-o1")
    deployment.produce(records_of([again]))
    second = deployment.worker()
    assert second.proc is not None
    assert second.proc.wait(60) == 1
    line = f"state in Redis is in format {FORMAT + 1}, written by a later release"
    assert line in second.log()
    assert "Traceback" not in second.log()
    assert orjson.loads(store.redis.get(key)) == later  # untouched

    # Recorded by that release: refused at start, naming it.
    store.redis.hset(keys.FORMAT, mapping={"format": FORMAT + 1, "release": "9.9.0"})
    third = deployment.worker()
    assert third.proc is not None
    assert third.proc.wait(60) == 1
    assert "written by rfm-worker 9.9.0; this is rfm-worker" in third.log()
    # and a rebuild by this release refuses before its wipe
    rebuild = deployment.command("rebuild", "--yes")
    assert rebuild.returncode == 1, rebuild.stderr
    assert "written by rfm-worker 9.9.0" in rebuild.stderr
    assert store.redis.exists(key) == 1
    assert deployment.read(deployment.dlq, until=lambda m: False, timeout=3) == []
    assert len(deployment.read(deployment.actions, until=lambda m: False, timeout=2)) == len(
        actions
    )
