"""`rfm-worker demo` as a newcomer runs it: live changes appear, Ctrl-C stops everything."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_streams_changes_and_ctrl_c_stops_every_child() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "demo", "--customers", "300", "--rate", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if any("->" in x for x in lines) and any(x.startswith("-- ") for x in lines):
                break
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert re.search(r"^\s+c\d{5}\s+order\s+.+ -> .+\(\d{3}\)$", output, re.M), output
    status = re.findall(r"events applied (\d+), duplicate \d+, dead-lettered (\d+)", output)
    assert status and int(status[-1][0]) > 500, output
    assert "stopped the worker, the broker and Redis" in output
    broker = int(re.search(r"broker\s+127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
    redis_port = int(re.search(r"redis\s+redis://127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
    http = int(re.search(r"metrics\s+http://127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
    for port in (broker, redis_port, http):
        assert not _listening(port), f"port {port} still open after Ctrl-C"
