"""The throughput scenario's peer: `quix_app.py` (a Quix Streams app doing the worker's
job) on the same N events, on the same broker, in the same run as the floor and the worker.

Quix Streams runs in an interpreter of its own: BENCH_PEER_PYTHON, else `.venv-peer/bin/python`
(what `make bench` installs: `pip install -e '.[bench]'`), else this interpreter if it has
quixstreams. quixstreams 3.28.1 pins confluent-kafka < 2.13 and pydantic < 2.14, older than
the worker's, so it does not go into `.venv`. Without one the peer rows say "skipped" and
why; nothing fails. On Tansu too: Quix Streams reads the input topic's retention.ms to
configure its changelog topics, which Tansu's topic configuration does not include.

events/s: from the app's first message to `app.run()` returning after its last checkpoint
(state flushed to RocksDB, changelog and output records acknowledged, offsets committed),
as the worker's run counts up to its events committed to Redis. CPU per event: the app
process's CPU (every thread) over the same span, as the worker's is read from its
/metrics. The peer keeps its state in its own process (RocksDB), the worker in Redis: so
the CPU of Redis and of the broker over each whole run (start-up and read-back included)
is read from /proc too, and the worker's CPU with its Redis's is compared with the peer's.
The change records are read back from the output topic afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    CpuSampler,
    Row,
    Stack,
    Topics,
    broker,
    count_records,
    per_s,
    rate,
    ratio,
    say,
)

APP = Path(__file__).with_name("quix_app.py")
PEER_VENV = ROOT / ".venv-peer"


def peer_python() -> tuple[str | None, str]:
    """The interpreter that runs the app, or None and the reason there is none."""
    chosen = os.environ.get("BENCH_PEER_PYTHON", "")
    if not chosen and (PEER_VENV / "bin" / "python").exists():
        chosen = str(PEER_VENV / "bin" / "python")
    if not chosen:
        if importlib.util.find_spec("quixstreams") is not None:
            return sys.executable, ""
        return None, "quixstreams is not installed (`make bench` installs it into .venv-peer)"
    probe = subprocess.run(
        [chosen, "-c", "import quixstreams"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return None, f"{chosen} cannot import quixstreams"
    return chosen, ""


def servers_cpu(stack: Stack, since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds of the broker and Redis processes (/proc), or used since `since`."""
    now = {
        name: CpuSampler.cpu_seconds(pid) or 0.0
        for name, pid in (("broker", stack.kafka.pid), ("redis", stack.redis_server.pid))
    }
    return {k: round(v - (since or {}).get(k, 0.0), 3) for k, v in now.items()}


def run_app(
    python: str, stack: Stack, orders: str, n: int, timeout: float, *, bare: bool = False
) -> dict[str, Any]:
    """quix_app.py on `orders` from its start (fresh group, fresh state directory) until it
    stopped itself after n messages; its report, with events/s and CPU per event."""
    label = "peer (bare)" if bare else "peer"
    say(f"  {label}: Quix Streams app consuming {n:,} events")
    tag = uuid.uuid4().hex[:8]
    out: Topics | None = None if bare else stack.topics("peer")
    report = stack.logs / f"quix-{tag}.json"
    log = stack.logs / f"quix-{tag}.log"
    argv = [
        python,
        str(APP),
        f"--bootstrap={stack.bootstrap}",
        f"--orders={orders}",
        f"--group=quix-{tag}",
        f"--count={n}",
        f"--state-dir={stack.logs / f'quix-state-{tag}'}",
        f"--report={report}",
        f"--consumer-config={json.dumps(stack.kafka_config())}",  # the worker's
        *(["--bare"] if bare else [f"--changes={out.actions}"] if out else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = servers_cpu(stack)
    with log.open("wb") as sink:
        try:
            code = subprocess.run(
                argv, cwd=ROOT, env=env, stdout=sink, stderr=sink, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0 or not report.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{label}: the Quix Streams app exited with {code}:\n{tail}")
    doc: dict[str, Any] = json.loads(report.read_text())
    doc["servers_cpu_s"] = servers_cpu(stack, since=before)
    first, returned = doc["marks"]["first"], doc["marks"]["returned"]
    seconds = returned["at"] - first["at"]
    doc["seconds_first_to_returned"] = round(seconds, 3)
    doc["events_per_s"] = round(rate(doc["events"], seconds), 1)
    doc["cpu_us_per_event"] = round((returned["cpu"] - first["cpu"]) * 1e6 / doc["events"], 1)
    last = doc["marks"]["last"]
    doc["events_per_s_to_last_message"] = round(rate(doc["events"], last["at"] - first["at"]), 1)
    if out is not None:
        doc["output_topic_records"] = count_records(
            stack.bootstrap, out.actions, doc["changes"], config=stack.kafka.client_config
        )
        if doc["output_topic_records"] < doc["changes"]:
            raise SystemExit(
                f"{label}: {doc['output_topic_records']} records on its output topic, "
                f"{doc['changes']} changes"
            )
    say(
        f"  {label}: {doc['events_per_s']:,.0f} events/s over {seconds:.1f} s, "
        f"{doc['cpu_us_per_event']:.1f} µs of CPU per event"
    )
    return doc


def measure(
    stack: Stack, topics: Topics, n: int, timeout: float, worker_servers: dict[str, float]
) -> dict[str, Any]:
    """The peer and the bare aggregate on the scenario's orders topic; {"skipped": reason}
    without quixstreams. `worker_servers`: servers_cpu over the worker's run."""
    python, reason = peer_python()
    if broker().kind == "tansu":  # its DescribeConfigs answer has no retention.ms
        python, reason = None, "Quix Streams 3.28.1 needs the topic's retention.ms, Tansu has none"
    if python is None:
        say(f"  peer: skipped, {reason}")
        return {"skipped": reason}
    return {
        "python": python,
        "worker_servers_cpu_s": worker_servers,
        "job": run_app(python, stack, topics.orders, n, timeout),
        "bare": run_app(python, stack, topics.orders, n, timeout, bare=True),
    }


def rows(peer: dict[str, Any], worker: dict[str, Any], n: int) -> list[Row]:
    """The peer's rows of the throughput table, against the worker of the same run."""
    if "skipped" in peer:
        return [Row("peer: a Quix Streams app doing this job", f"skipped: {peer['skipped']}")]
    job, bare = peer["job"], peer["bare"]
    ours, theirs = peer["worker_servers_cpu_s"], job["servers_cpu_s"]
    with_redis = worker["cpu_us_per_event"] + ours["redis"] * 1e6 / n
    return [
        Row(
            f"peer: a Quix Streams 3.28.1 app doing this job on the same {n:,} events (the "
            "worker's validation, dedup by order id, aggregates, R/F/M bands, a change record "
            f"when the score moves: {job['changes'] / n:.2f} per event; RocksDB state, "
            "changelog topics on, at-least-once)",
            per_s(job["events_per_s"]),
            f"worker / peer {ratio(worker['events_per_s'] / job['events_per_s'])} "
            f"({ratio(worker['events_per_s'] / job['events_per_s_to_last_message'])} to its "
            "last message, before its last checkpoint)",
        ),
        Row(
            "peer CPU per event (the app process's CPU seconds over its run / events)",
            f"{job['cpu_us_per_event']:.1f} µs",
            f"peer / worker {ratio(job['cpu_us_per_event'] / worker['cpu_us_per_event'])}",
        ),
        Row(
            "CPU per event with the state store: the worker and its Redis (Redis over the "
            "whole run) / the peer (RocksDB in its process)",
            f"{with_redis:.1f} / {job['cpu_us_per_event']:.1f} µs",
            f"peer / worker {ratio(job['cpu_us_per_event'] / with_redis)}",
        ),
        Row(
            "broker CPU per event over the worker's / the peer's whole run (the peer's "
            "changelog records included)",
            f"{ours['broker'] * 1e6 / n:.1f} / {theirs['broker'] * 1e6 / n:.1f} µs",
        ),
        Row(
            "bare Quix Streams per-customer aggregate (count and spend in its state; no "
            "validation, no dedup, no output, no changelog topics)",
            per_s(bare["events_per_s"]),
            f"worker / bare {ratio(worker['events_per_s'] / bare['events_per_s'])}; "
            f"{bare['cpu_us_per_event']:.1f} µs CPU per event",
        ),
    ]
