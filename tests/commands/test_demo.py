"""`rfm-worker demo` as a newcomer runs it: live changes appear, the fast clock makes
customers decay and silent regulars raise overdue alerts, Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def test_once_its_clock_reaches_today_live_orders_keep_their_pace_per_simulated_day() -> None:
    """At 100 simulated days per second the clock reaches today within 4 s. Live orders
    are paced per simulated day (here one a day): from then on they come at real-time
    pace, none in the seconds left, instead of crowding each customer's orders seconds
    apart (which made seconds a customer's usual gap and a minute's silence overdue)."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "worker", "demo", "--customers", "50", "--rate", "100"),
            *("--days-per-second", "100", "--duration", "20"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    _, reached, after = output.partition("-- the simulated clock has reached today")
    assert reached, output
    assert "one every 24.0 hours" in after.splitlines()[0], output
    status = STATUS.findall(after)
    assert len(status) >= 3, output  # 5 s apart; the last at the end of --duration
    # the worker had applied the last live orders seconds before: nothing more came
    assert status[-2][1] == status[-1][1], output
    assert status[-1][0] == time.strftime("%Y-%m-%d", time.gmtime()), output
    assert "usual gap 0 days" not in output, output


# -- arguments, children, temporary files ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--rate", "0"], "--rate"),  # was a ZeroDivisionError traceback
        (["--rate", "-5"], "--rate"),  # was a loop at full CPU deaf to signals
        (["--rate", "inf"], "--rate"),
        (["--rate", "nan"], "--rate"),
        (["--rate", "fast"], "--rate"),
        (["--customers", "0"], "--customers"),
        (["--customers", "1000001"], "--customers"),
        (["--customers", "2.5"], "--customers"),
        (["--duration", "0"], "--duration"),
        (["--duration", "-1"], "--duration"),
        (["--days-per-second", "0"], "--days-per-second"),
        (["--days-per-second", "-2"], "--days-per-second"),
    ],
)
def test_demo_refuses_bad_numbers_with_a_usage_error(args: list[str], option: str) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 20  # refused before any broker starts
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert f"rfm-worker demo: error: argument {option}: " in done.stderr.splitlines()[-1]


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("broker", ["tansu", "kafka"])
def test_a_sigkilled_demo_takes_its_broker_redis_and_worker_with_it(
    broker: str, tmp_path: Path
) -> None:
    """No cleanup code runs on SIGKILL: the children die because the kernel tells them to."""
    if broker == "kafka" and (reason := missing_tools()):
        pytest.skip(reason)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "demo", "--customers", "50", "--rate", "20"),
            *("--broker", broker),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not lines or lines[-1] != "Ctrl-C stops everything.\n":  # the worker is started
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        children = _children(proc.pid)
        assert len(children) == 3, children  # Redis, the broker, the worker
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    output = "".join(lines)
    ports = [
        int(re.search(pattern, output).group(1))  # type: ignore[union-attr]
        for pattern in (
            r"broker\s+127\.0\.0\.1:(\d+)",
            r"redis\s+redis://127\.0\.0\.1:(\d+)",
            r"metrics\s+http://127\.0\.0\.1:(\d+)",
        )
    ]
    # A JVM's main thread shows as a zombie while its other threads are still exiting.
    deadline = time.monotonic() + 15
    while alive := [f"pid {pid}" for pid in children if not _gone(pid)] + [
        f"port {port}" for port in ports if _listening(port)
    ]:
        assert time.monotonic() < deadline, f"still there after the demo was killed: {alive}"
        time.sleep(0.1)


def test_demo_keeps_to_its_duration_at_any_rate_and_leaves_no_file(tmp_path: Path) -> None:
    """A rate far beyond what the stream can send still stops at --duration; the profiles
    file and the worker log were in a folder of the demo's own, removed at exit."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    started = time.monotonic()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "worker", "demo", "--customers", "50"),
            *("--rate", "1000000", "--duration", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 60
    assert "stopped the worker, the broker and Redis" in done.stdout
    profiles = re.search(r"profiles\s+(\S+)", done.stdout).group(1)  # type: ignore[union-attr]
    assert profiles.startswith(str(scratch))  # where the demo wrote it: TMPDIR
    assert list(scratch.iterdir()) == []


def test_a_worker_that_stopped_early_has_its_log_shown_before_it_is_removed(
    tmp_path: Path,
) -> None:
    """Its log is in the demo's folder, removed at exit: its end is printed instead."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--customers", "50", "--duration", "4"],
        capture_output=True,
        text=True,
        timeout=90,
        # the demo passes its environment on: this address is not the machine's (TEST-NET-1)
        env={**os.environ, "RFM_HTTP_HOST": "192.0.2.1", "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tail = done.stdout.partition("the worker exited early (code 2); the end of its log:")[2]
    assert tail, done.stdout
    assert "rfm-worker: configuration error: RFM_HTTP_HOST=192.0.2.1: " in tail
    assert tail.rstrip().endswith("stopped the worker, the broker and Redis")
    assert list(tmp_path.iterdir()) == []
