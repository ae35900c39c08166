"""`rfm-worker run --processes N`: N workers sharing the partitions, living and dying together."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import assert_state_matches, converged, fetch, records_of
from tests.reference import expected_now
from worker.embedded import free_port
from worker.state.store import Store


def _port_pair() -> int:
    """A free port whose successor is free too (process i serves on RFM_HTTP_PORT + i)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _start(deployment: Deployment, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**deployment.env(), "RFM_HTTP_PORT": str(port)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--processes", "2"],
            env=env,
            stdout=out,
            stderr=out,
        )


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie is gone


def _wait(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.1)
    return False


def _ready(port: int) -> bool:
    try:
        return fetch(port, "/readyz")[0] == 200
    except OSError:  # not listening yet, or a connection reset while it starts
        return False


def _applied(port: int) -> float:
    status, body = fetch(port, "/metrics")
    assert status == 200
    found = re.search(rb'^rfm_events_total\{outcome="applied"\} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def test_two_processes_share_the_partitions_and_stop_together(
    deployment: Deployment, store: Store, tmp_path: Path
) -> None:
    port = _port_pair()
    parent = _start(deployment, port, tmp_path / "run.log")
    try:
        assert _wait(lambda: len(_children(parent.pid)) == 2, 30)
        children = _children(parent.pid)
        assert _wait(lambda: _ready(port) and _ready(port + 1), 60)
        events = generate(300, seed=17)
        expected = expected_now(events)
        deployment.produce(records_of(events))
        deployment.read(deployment.actions, until=converged(expected), timeout=90)
        assert_state_matches(store, expected)
        # Both processes consumed: the four partitions are shared between them.
        assert _applied(port) > 0 and _applied(port + 1) > 0
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
        assert not any(_alive(c) for c in children)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_a_process_that_dies_stops_the_others_and_the_parent_fails(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = _port_pair()
    parent = _start(deployment, port, tmp_path / "run.log")
    try:
        assert _wait(lambda: len(_children(parent.pid)) == 2, 30)
        first, second = _children(parent.pid)
        assert _wait(lambda: _ready(port + 1), 60)
        os.kill(first, signal.SIGKILL)
        assert parent.wait(60) == 128 + signal.SIGKILL  # the status says what happened
        assert not _alive(second)
        log = (tmp_path / "run.log").read_text()
        assert f"worker process {first} exited with status -9: stopping the others" in log
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_the_processes_never_outlive_a_killed_parent(
    deployment: Deployment, tmp_path: Path
) -> None:
    parent = _start(deployment, _port_pair(), tmp_path / "run.log")
    try:
        assert _wait(lambda: len(_children(parent.pid)) == 2, 30)
        children = _children(parent.pid)
        parent.kill()
        parent.wait(10)
        assert _wait(lambda: not any(_alive(c) for c in children), 10)
    finally:
        for child in _children(parent.pid):
            os.kill(child, signal.SIGKILL)
