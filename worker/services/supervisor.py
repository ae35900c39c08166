"""`rfm-worker run --processes N`: N workers on one machine, one per core to spare.

Each child is a whole `rfm-worker run` (one consuming process, members of the same
consumer group, so the partitions are shared among them like among workers on separate
machines; the marking pass and quantile upkeep already take turns through Redis). The
Python engine is CPU-bound in one process (docs/performance.md): N processes use N cores.

Child i serves HTTP on RFM_HTTP_PORT + i (its own /metrics, /readyz, /healthz:
docs/operations.md, "Several processes on one machine"). SIGTERM or SIGINT to the parent
is passed on to every child, and the parent waits for their graceful stops. The children
live and die together: when one exits on its own (a crash, a DataLossError), the others
are stopped and the parent exits with the first failing code, so the service manager
(systemd, a container runtime) restarts the whole set. A child never outlives the parent:
it is killed when the parent dies (Linux's parent-death signal).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from types import FrameType

from worker.children import die_with_parent
from worker.config import Settings

logger = logging.getLogger(__name__)

GRACE_S = 60.0  # a child's graceful stop (it drains within the relay's 20 s) before SIGKILL


def supervise(settings: Settings, processes: int) -> int:
    """Run `processes` workers as children until a signal or until one exits; returns the
    exit status (0 when every child stopped cleanly)."""
    stopping = threading.Event()
    children: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s: stopping %d worker process(es)", signal.Signals(signum).name, processes)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(processes):
            env = {**os.environ, "RFM_PROCESSES": "1"}
            if settings.http_port:  # 0: an ephemeral port each, as for one process
                env["RFM_HTTP_PORT"] = str(settings.http_port + i)
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker", "run"],
                    env=env,
                    preexec_fn=die_with_parent(),
                )
            )
        logger.info("started %d worker process(es): pids %s", processes, [c.pid for c in children])
        status = _wait_first(children, stopping)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                logger.error("worker process %d did not stop in %.0f s: killed", child.pid, GRACE_S)
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [c.returncode for c in children]
    failed = [code for code in codes if code not in (0, -signal.SIGTERM)]
    return status or (failed[0] if failed else 0)


def _wait_first(children: list[subprocess.Popen[bytes]], stopping: threading.Event) -> int:
    """Until a signal (0) or until a child exits by itself (its status, 1 if it was 0:
    a worker never stops unasked)."""
    while not stopping.wait(0.2):
        for child in children:
            code = child.poll()
            if code is not None:
                logger.error(
                    "worker process %d exited with status %d: stopping the others", child.pid, code
                )
                return 128 - code if code < 0 else code or 1  # -N: killed by signal N
    return 0
