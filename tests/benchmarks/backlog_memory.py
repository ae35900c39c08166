"""Memory of the worker process draining a backlog: what a container's limit must allow.

BENCH_BACKLOG_N (1,000,000) placed orders are produced onto the orders topic BEFORE the
worker starts; then `python -m worker run` (a child, as in throughput.py) consumes them
from the start while its memory is read from /proc/PID/status every SAMPLE_S: VmRSS
(resident now) and VmHWM (the kernel's high-water mark of it, so a peak between two
samples is not missed). Two shapes of backlog, each on its own broker and Redis:

- short histories: BENCH_BACKLOG_SHORT_CUSTOMERS (432,000) customers, 2-3 orders each;
- long histories: BENCH_BACKLOG_LONG_CUSTOMERS (5,000) customers, 200 orders each: from a
  customer's 64th order on, the worker keeps it decoded between batches (`KnownCustomers` in
  worker/state/known.py, KNOWN_ORDERS orders in all), so that cache is full for the
  last two thirds of the run.

Each shape's topic is drained once per BENCH_BACKLOG_QUEUE_KBYTES value, the consumer's
`queued.max.messages.kbytes` given through RFM_KAFKA_CONFIG (65536 is librdkafka's own
default; `default` leaves it to the worker, clients.FETCH_QUEUE_KBYTES), each time by a
fresh consumer group into an emptied Redis. Per run: the peak (VmHWM), the level RSS holds
while the backlog drains (median of the samples of the run's second half), RSS IDLE_S
after the last event, and events/s (as throughput.py counts them). Takes ~13 minutes with
the defaults, so it runs only when named:

    .venv/bin/python tests/benchmarks/run.py --only backlog
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    Config,
    Row,
    Section,
    Stack,
    Topics,
    Trace,
    customer_ids,
    days_ago,
    iter_placed_orders,
    per_s,
    produce_all,
    ratio,
    say,
)

from worker.kafka.clients import FETCH_QUEUE_KBYTES
from worker.state.known import KNOWN_ORDERS

SAMPLE_S = 0.25
IDLE_S = 10.0  # after the last event: what the worker keeps once the backlog is gone
LIBRDKAFKA_DEFAULT = "65536"  # queued.max.messages.kbytes when nobody sets it
MB = 1024  # /proc reports kB


@dataclass(frozen=True, slots=True)
class Shape:
    name: str  # "short" or "long"
    customers: int


def proc_status_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a live process in kB; None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (KeyError, ValueError, IndexError):
        return None


class MemorySampler(threading.Thread):
    """(time.monotonic(), VmRSS kB, VmHWM kB) of one process every `period` seconds."""

    def __init__(self, pid: int, period: float = SAMPLE_S) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            status = proc_status_kb(self.pid)
            if status is not None:
                self.samples.append((time.monotonic(), *status))
            self.stopping.wait(self.period)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def label(kbytes: str) -> str:
    if kbytes == "default":
        return f"{FETCH_QUEUE_KBYTES} (the worker's default)"
    if kbytes == LIBRDKAFKA_DEFAULT:
        return f"{kbytes} (librdkafka's default)"
    return kbytes


def drain(stack: Stack, topics: Topics, n: int, kbytes: str, timeout: float) -> dict[str, Any]:
    """The worker on the whole backlog from a fresh group into an empty Redis, its memory
    sampled from its start to IDLE_S after the last event."""
    stack.redis.flushall()
    kafka = None if kbytes == "default" else {"queued.max.messages.kbytes": kbytes}
    worker = stack.worker(topics, kafka=kafka)
    sampler = MemorySampler(worker.proc.pid)
    sampler.start()
    try:
        trace: Trace = worker.follow(n, timeout)
        if trace.finished:
            time.sleep(IDLE_S)
    finally:
        sampler.stop()
        worker.kill()
    first, last = trace.first, trace.last
    if not trace.finished or first is None or last is None or not sampler.samples:
        raise SystemExit(f"backlog, queued.max.messages.kbytes={kbytes}: did not finish")
    samples = sampler.samples
    middle = first.at + (last.at - first.at) / 2
    # (a run shorter than a sampling period has no sample in its second half)
    second_half = [rss for at, rss, _ in samples if middle <= at <= last.at] or [
        rss for at, rss, _ in samples if at <= last.at
    ]
    before_first = [rss for at, rss, _ in samples if at <= first.at]
    started = samples[0][0]
    summary = trace.summary()
    return {
        "queued_max_messages_kbytes": FETCH_QUEUE_KBYTES if kbytes == "default" else int(kbytes),
        "set_by": "the worker" if kbytes == "default" else "RFM_KAFKA_CONFIG",
        "peak_rss_mb": round(samples[-1][2] / MB, 1),
        "draining_rss_mb": round(statistics.median(second_half) / MB, 1),
        "idle_rss_mb": round(samples[-1][1] / MB, 1),
        "ready_rss_mb": round(before_first[-1] / MB, 1) if before_first else None,
        "events_per_s": summary["events_per_s"],
        "cpu_us_per_event": summary["cpu_us_per_event"],
        "seconds": summary["seconds_first_to_last_applied"],
        # RSS over time, one point a second: seconds since the worker started, MB
        "rss_mb_series": [
            [round(at - started, 1), round(rss / MB, 1)]
            for at, rss, _ in samples[:: int(1 / SAMPLE_S)]
        ],
    }


def run(cfg: Config) -> Section:
    n = cfg.backlog_n
    shapes = (
        Shape("short", cfg.backlog_short_customers),
        Shape("long", cfg.backlog_long_customers),
    )
    section = Section("backlog")
    section.data = {"events": n, "known_orders": KNOWN_ORDERS, "shapes": {}}
    for shape in shapes:
        each = n / shape.customers
        with Stack() as stack:
            topics = stack.topics(f"b{shape.name}")
            prefix = f"b{shape.name[0]}"
            started = time.perf_counter()
            produce_all(
                stack.bootstrap,
                topics.orders,
                iter_placed_orders(
                    n,
                    customer_ids(prefix, shape.customers),
                    prefix=prefix,
                    first_ms=days_ago(700),
                    last_ms=days_ago(1),
                ),
            )
            say(
                f"  {shape.name} histories: {n:,} orders over {shape.customers:,} customers "
                f"produced in {time.perf_counter() - started:.0f} s"
            )
            runs: dict[str, dict[str, Any]] = {}
            for kbytes in cfg.backlog_queue_kbytes:
                one = drain(stack, topics, n, kbytes, cfg.backlog_timeout_s)
                runs[kbytes] = one
                say(
                    f"  {shape.name}, queued.max.messages.kbytes={label(kbytes)}: peak "
                    f"{one['peak_rss_mb']:.0f} MB, draining {one['draining_rss_mb']:.0f} MB, "
                    f"idle {one['idle_rss_mb']:.0f} MB; {one['events_per_s']:,.0f} events/s"
                )
        section.data["shapes"][shape.name] = {"customers": shape.customers, "runs": runs}
        base = runs.get(LIBRDKAFKA_DEFAULT)
        for kbytes, one in runs.items():
            section.rows.append(
                Row(
                    f"backlog of {n:,} orders over {shape.customers:,} customers ({each:,.1f} "
                    f"each), queued.max.messages.kbytes={label(kbytes)}: worker RSS peak / "
                    "while draining / idle after; events/s",
                    f"{one['peak_rss_mb']:.0f} / {one['draining_rss_mb']:.0f} / "
                    f"{one['idle_rss_mb']:.0f} MB; {per_s(one['events_per_s'])}",
                    f"{ratio(one['events_per_s'] / base['events_per_s'])} of "
                    f"{LIBRDKAFKA_DEFAULT} events/s"
                    if base and one is not base
                    else "",
                )
            )
    return section
