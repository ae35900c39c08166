"""`rfm-worker local` as the README uses it: start it, paste its exports, then `produce`,
`run`, `customer` and `sweep --once` against it; Ctrl-C or SIGTERM stops every child."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from worker.embedded import free_port
from worker.embedded.apache_kafka import missing_tools

pytestmark = pytest.mark.redis  # it starts its own Redis


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(("broker", "stop"), [("tansu", signal.SIGINT), ("kafka", signal.SIGTERM)])
def test_local_services_serve_the_readme_commands_until_stopped(
    broker: str, stop: signal.Signals, tmp_path: Path
) -> None:
    if broker == "kafka" and (reason := missing_tools()):
        pytest.skip(reason)
    local = subprocess.Popen(
        [sys.executable, "-m", "worker", "local", "--broker", broker],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert local.stdout is not None
    lines: list[str] = []
    worker: subprocess.Popen[bytes] | None = None
    try:
        while not any("stops the broker and Redis" in line for line in lines):
            line = local.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        # Standard output is shell: comments and exports, nothing else (it can be sourced).
        assert all(line.startswith(("#", "export ")) for line in lines), lines
        exported = dict(
            word.split("=", 1)
            for line in lines
            if line.startswith("export ")
            for word in shlex.split(line)[1:]
        )
        assert set(exported) == {
            "RFM_KAFKA_BOOTSTRAP",
            "RFM_KAFKA_CONFIG",
            "RFM_REDIS_URL",
            "RFM_ORDERS_TOPIC",
            "RFM_ACTIONS_TOPIC",
            "RFM_DLQ_TOPIC",
        }
        ports = [
            int(exported["RFM_KAFKA_BOOTSTRAP"].rpartition(":")[2]),
            int(exported["RFM_REDIS_URL"].rsplit(":", 1)[1].partition("/")[0]),
        ]
        machine = {k: v for k, v in os.environ.items() if not k.startswith("RFM_")}
        http_port = free_port()
        env = {
            **machine,
            **exported,
            "RFM_HTTP_HOST": "127.0.0.1",
            "RFM_HTTP_PORT": str(http_port),
        }

        day = datetime.now(UTC).date() - timedelta(days=3)
        history = tmp_path / "orders.csv"
        history.write_text(
            "customer_id,order_id,occurred_at,amount\n"
            f"c1,o1,{day - timedelta(days=40)},30.00\n"
            f"c1,o2,{day},70.00\n"
            f"c2,o3,{day},15.50\n"
        )
        produced = _cli(env, "produce", str(history))
        assert produced.returncode == 0, produced.stderr
        assert produced.stdout.startswith("sent 3, rejected 0, ")

        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"], env=env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 60
        # The group join comes first (on Tansu, half the consumer's 45 s session timeout):
        # read from the log, not by starting a `customer` process twice a second meanwhile.
        while b"assigned partitions [" not in log.read_bytes().replace(b"[]", b""):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        while True:
            shown = _cli(env, "customer", "c1")
            if shown.returncode == 0 and orjson.loads(shown.stdout)["orders"] == 2:
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert orjson.loads(shown.stdout)["monetary"] == "100.00"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]

        swept = _cli(env, "sweep", "--once")
        assert swept.returncode == 0, swept.stderr
        assert swept.stdout.startswith("swept as of ")

        local.send_signal(stop)
        rest, _ = local.communicate(timeout=60)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
        if local.poll() is None:
            local.kill()
            local.wait(10)
        local.stdout.close()
    assert local.returncode == 0, "".join(lines) + rest
    assert rest.strip().splitlines()[-1] == "# stopped the broker and Redis"
    for port in ports:
        assert not _listening(port), f"port {port} still open after {stop.name}"
