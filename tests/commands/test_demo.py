"""`rfm-worker demo` as a newcomer runs it: live changes appear, the fast clock makes
customers decay and silent regulars raise overdue alerts, Ctrl-C stops everything."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from worker.embedded.apache_kafka import missing_tools

pytestmark = pytest.mark.redis  # the demo starts its own Redis

FIRED = r"(  => [a-z_]+(, [a-z_]+)*)?"  # the automation triggers of the demo's profile
ORDER_MOVE = re.compile(rf"^\s+c\d{{5}}\s+order\s+.+ -> .+\(\d{{3}}\){FIRED}$", re.M)
DECAY_MOVE = re.compile(rf"^\s+c\d{{5}}\s+decay\s+.+ \(\d{{3}}\) -> .+\(\d{{3}}\){FIRED}$", re.M)
OVERDUE = re.compile(
    r"^\s+c\d{5}\s+OVERDUE\s+silent \d+ days \(usual gap \d+ days\)  => cadence_reminder$",
    re.M,
)
TRIGGERED = re.compile(r"-> (champions|\S+) \(\d{3}\)  => .*(vip_invitation|ask_testimonial)", re.M)
STATUS = re.compile(
    r"^-- \d+s, simulated (\d{4}-\d\d-\d\d): events applied (\d+), duplicate \d+, "
    r"dead-lettered \d+; \d+ changes received \((\d+) by decay\), (\d+) overdue alerts$",
    re.M,
)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("broker", ["tansu", "kafka"])
def test_demo_shows_decay_and_overdue_and_ctrl_c_stops_every_child(broker: str) -> None:
    """`make demo` (Tansu), and `rfm-worker demo --broker kafka` (Apache Kafka)."""
    if broker == "kafka" and (reason := missing_tools()):
        pytest.skip(reason)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "demo", "--customers", "300", "--rate", "50"),
            *("--broker", broker),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    # The first status line comes 5 s into the live stream, long after the history was
    # consumed: decay and overdue lines after it come from the fast clock. At 2 simulated
    # days per second the silent regulars are all overdue within about 25 s.
    deadline = time.monotonic() + (40 if broker == "tansu" else 70)  # a JVM starts first
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            live = "".join(lines).partition("\n-- ")[2]
            # every kind of line the assertions look for, however the stream interleaves
            if all(p.search(live) for p in (DECAY_MOVE, OVERDUE)) and TRIGGERED.search(
                "".join(lines)
            ):
                break
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert ORDER_MOVE.search(output), output
    live = output.partition("\n-- ")[2]
    assert DECAY_MOVE.search(live), output
    assert OVERDUE.search(live), output
    assert TRIGGERED.search(output), output
    status = STATUS.findall(output)
    assert len(status) >= 2, output
    simulated, applied, decay, overdue = status[-1]
    assert int(applied) > 500, output
    assert int(decay) > int(status[0][2]) and int(overdue) > 0, output
    # The simulated clock starts a year back: it is well behind the wall clock here.
    assert simulated < time.strftime("%Y-%m-%d", time.gmtime(time.time() - 300 * 86400)), output
    assert "stopped the worker, the broker and Redis" in output
    broker = int(re.search(r"broker\s+127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
    redis_port = int(re.search(r"redis\s+redis://127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
    http = int(re.search(r"metrics\s+http://127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
    for port in (broker, redis_port, http):
        assert not _listening(port), f"port {port} still open after Ctrl-C"
