"""`rfm-worker demo`: embedded broker and Redis, the real worker, a live order stream.

What it shows: a year of order history for a few thousand customers is published first
(regulars, silent regulars, one-timers, big spenders, lapsed customers, refunds and
cancellations), then live orders keep coming with a few bad messages among them. Every
segment move the worker publishes is printed as it arrives on the actions topic, and so is
every overdue alert.

A fast clock makes time visible: the history ends a year before the wall clock, and live
orders carry a simulated `occurred_at` that starts there and advances `days_per_second`
simulated days per real second (never past the wall clock; then it runs in real time).
Live orders are paced by that clock, a steady number per simulated day: once it reaches
today (after ~3 minutes at the default speed) they come at real-time pace, a few an hour,
and the demo says so, rather than crowding a customer's orders seconds apart (which would
make seconds its usual gap and a minute's silence overdue).
The worker runs with RFM_CLOCK=event and a one-second sweep, so its "now" follows the live
orders: recency boundaries pass and regulars fall silent while you watch. Ctrl-C stops
every child process; none outlives the demo, even a SIGKILLed one (worker/embedded/
processes.py), and its temporary folder (profiles, worker log) is removed at exit.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from worker.commands.arguments import add_broker, count, positive
from worker.commands.demo_display import Tally, caught_up, describe, say, status
from worker.commands.demo_orders import HISTORY_ENDS_AGO, FastClock, OrderStream
from worker.embedded import (
    BrokerKind,
    EmbeddedRedis,
    create_topics,
    die_with_parent,
    free_port,
    start_broker,
)
from worker.kafka import clients, replay

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers

# The demo builds its order history in memory: ~2 GB at this many customers.
DEMO_MAX_CUSTOMERS = 100_000
ORDERS, ACTIONS, DLQ = "orders", "rfm.actions", "orders.dlq"
DAYS_PER_SECOND = 2.0
SWEEP_INTERVAL = 1.0  # seconds: with the fast clock, one sweep per two simulated days
# Orders sent in one turn of the loop at most: a rate the generator cannot keep up with
# lowers the rate actually sent, never the loop's turns (Ctrl-C, --duration, the tail).
MAX_BURST = 1000

# The built-in default profile's thresholds, with the automation triggers of the docs'
# "Automation triggers" section: the demo's lines show which automation each move starts.
DEMO_PROFILES = """\
[profiles.default]
recency_days = [30, 90, 180, 365]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[[profiles.default.triggers]]
name = "ask_testimonial"
when = "r_becomes"
value = 5

[[profiles.default.triggers]]
name = "winback_offer"
when = "enters"
segment = "at_risk"
from = ["loyal", "champions", "cant_lose_them"]

[[profiles.default.triggers]]
name = "vip_invitation"
when = "enters"
segment = "champions"

[[profiles.default.triggers]]
name = "cadence_reminder"
when = "overdue"
"""


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="embedded broker and Redis, the worker, a live order stream")
    p.add_argument(
        "--customers",
        type=count(DEMO_MAX_CUSTOMERS),
        default=3000,
        help=f"customers in the order history (1 to {DEMO_MAX_CUSTOMERS}; default 3000)",
    )
    p.add_argument("--rate", type=positive, default=200, help="orders per second (default 200)")
    p.add_argument("--duration", type=positive, default=None, help="stop after N seconds")
    p.add_argument(
        "--days-per-second",
        type=positive,
        default=2.0,
        help="how fast the live stream's clock runs, in simulated days per second (default 2)",
    )
    add_broker(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    return run_demo(
        customers=args.customers,
        rate=args.rate,
        duration=args.duration,
        days_per_second=args.days_per_second,
        broker=args.broker,
    )


def run_demo(
    customers: int = 3000,
    rate: float = 200,
    duration: float | None = None,
    days_per_second: float = DAYS_PER_SECOND,
    broker: BrokerKind = "tansu",
) -> int:
    _check(customers, rate, duration, days_per_second)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    what = "Apache Kafka" if broker == "kafka" else "an embedded Kafka-protocol broker (Tansu)"
    say(f"starting {what} and Redis ...")
    with (
        tempfile.TemporaryDirectory(prefix="rfm-demo-") as scratch,
        EmbeddedRedis() as redis_server,
        start_broker(broker) as kafka,
    ):
        create_topics(kafka.bootstrap, {ORDERS: 4, ACTIONS: 4, DLQ: 1})
        http_port = free_port()
        # Both files live in the demo's own folder, removed when it stops.
        profiles_path = Path(scratch) / "profiles.toml"
        profiles_path.write_text(DEMO_PROFILES, encoding="utf-8")
        env = _worker_env(kafka, redis_server, http_port, profiles_path)
        log_path = Path(scratch) / "worker.log"
        log = log_path.open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=env,
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent(),
        )
        base = f"http://127.0.0.1:{http_port}"
        say(_banner(kafka, redis_server, base, profiles_path, log_path))
        try:
            return _stream(
                kafka.bootstrap,
                f"{base}/metrics",
                OrderStream(customers),
                rate,
                days_per_second,
                duration,
                stop,
            )
        finally:
            _stop_worker(worker, log, log_path)


def _check(customers: int, rate: float, duration: float | None, days_per_second: float) -> None:
    # The command line refuses these with a usage message (add_parser); this is for callers.
    if customers < 1:
        raise ValueError("customers must be at least 1")
    for name, value in (("rate", rate), ("days_per_second", days_per_second)):
        if not (0 < value < math.inf):
            raise ValueError(f"{name} must be a positive number")
    if duration is not None and not (0 < duration < math.inf):
        raise ValueError("duration must be a positive number of seconds")


def _worker_env(
    kafka: Any, redis_server: EmbeddedRedis, http_port: int, profiles_path: Path
) -> dict[str, str]:
    return {
        **os.environ,
        "RFM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "RFM_REDIS_URL": redis_server.url,
        "RFM_HTTP_PORT": str(http_port),
        "RFM_KAFKA_CONFIG": orjson.dumps(
            {"session.timeout.ms": "6000"} | kafka.client_config
        ).decode(),
        # "now" is the latest order's occurred_at, so the fast clock drives the sweeps.
        "RFM_CLOCK": "event",
        "RFM_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
        "RFM_PROFILES": str(profiles_path),
    }


def _banner(
    kafka: Any, redis_server: EmbeddedRedis, base: str, profiles_path: Path, log_path: Path
) -> str:
    return f"""
  broker     {kafka.bootstrap}   ({kafka.name}; topics {ORDERS}, {ACTIONS}, {DLQ})
  redis      {redis_server.url}
  page       {base}/
  metrics    {base}/metrics
  matrix     {base}/v1/matrix?tenant=default
  a customer {base}/v1/customers/default/c00001
  profiles   {profiles_path}   (the built-in thresholds + automation triggers)
  CLI        RFM_REDIS_URL={redis_server.url} RFM_CLOCK=event RFM_PROFILES={profiles_path} \\
               {_cli()} matrix
  worker log {log_path}
(profiles and worker log are removed when the demo stops)
Ctrl-C stops everything.
"""


def _stop_worker(worker: subprocess.Popen[bytes], log: IO[bytes], log_path: Path) -> None:
    exited_early = worker.poll()  # before our SIGTERM: it stopped by itself
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
    log.close()
    if exited_early is not None:  # its log goes with the folder: show its end now
        tail = log_path.read_text(errors="replace").splitlines()[-20:]
        say(f"the worker exited early (code {exited_early}); the end of its log:")
        say("\n".join(tail))
    say("stopped the worker, the broker and Redis")


def _cli() -> str:
    """How to run the CLI from another shell: the script beside this Python (the venv's,
    which may not be on that shell's PATH), else the module."""
    script = Path(sys.executable).with_name("rfm-worker")
    return str(script) if script.exists() else f"{sys.executable} -m worker"


def _stream(
    bootstrap: str,
    metrics_url: str,
    gen: OrderStream,
    rate: float,
    days_per_second: float,
    duration: float | None,
    stop: threading.Event,
) -> int:
    producer = clients.plain_producer(bootstrap)
    history_end = datetime.now(UTC) - HISTORY_ENDS_AGO
    published = _publish_history(producer, gen, history_end, stop)
    say(
        f"published {published} historical order events up to {history_end:%Y-%m-%d}; "
        f"live orders follow at {rate:.0f}/s, their clock running {days_per_second:g} "
        "simulated days per second"
    )
    say("segment changes and overdue alerts as they happen (customer, cause, before -> after):\n")
    # Tail the actions topic without a consumer group: no join to wait for.
    actions = clients.plain_consumer(bootstrap, "rfm-demo-tail")
    replay.assign_from_start(actions, ACTIONS, range(4))
    clock = FastClock(history_end, days_per_second)
    live = _Live(gen, producer, history_end, rate, days_per_second)
    tally = Tally()
    started = time.monotonic()
    next_status, second = started + 5, int(started)
    try:
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - started > duration:
                break
            live.send(clock)
            producer.poll(0)
            if int(now) != second:
                second = int(now)
                tally.shown.clear()
            _show_actions(actions, tally)
            if now >= next_status:
                next_status = now + 5
                say(status(metrics_url, tally, clock.now(), now - started))
    finally:
        producer.flush(10)
        producer.close()
        actions.close()
    say(status(metrics_url, tally, clock.now(), time.monotonic() - started))
    return 0


def _publish_history(
    producer: clients.Producer, gen: OrderStream, history_end: datetime, stop: threading.Event
) -> int:
    """The order history up to `history_end`, acknowledged; how many events it holds."""
    history = gen.history(history_end)
    for n, (key, value) in enumerate(history):
        if n % 10_000 == 0 and stop.is_set():
            break
        _produce(producer, key, value)
    producer.flush(30)
    return len(history)


class _Live:
    """The live orders, paced in simulated time: `rate` per real second while the clock
    runs fast, the same number per simulated day once it runs in real time."""

    def __init__(
        self,
        gen: OrderStream,
        producer: clients.Producer,
        history_end: datetime,
        rate: float,
        days_per_second: float,
    ) -> None:
        self.gen, self.producer, self.history_end = gen, producer, history_end
        self.days_per_second = days_per_second
        self.step = timedelta(days=days_per_second / rate)
        self.next_send = history_end
        self.caught_up = False

    def send(self, clock: FastClock) -> None:
        """The orders due by the clock's now (MAX_BURST at most)."""
        sim_now = clock.now()
        days_in = (sim_now - self.history_end) / timedelta(days=1)
        burst = 0
        while self.next_send <= sim_now and burst < MAX_BURST:
            for key, value in self.gen.live(sim_now, days_in):
                _produce(self.producer, key, value)
            self.next_send += self.step
            burst += 1
        # behind by a real second at most: no catch-up flood
        self.next_send = max(self.next_send, sim_now - timedelta(days=self.days_per_second))
        if clock.real_time and not self.caught_up:
            self.caught_up = True
            say(caught_up(sim_now, self.step))


def _show_actions(actions: clients.Consumer, tally: Tally) -> None:
    """Count what arrived on the actions topic; print the lines the budget allows."""
    for msg in actions.consume(500, 0.05):
        if msg.error():
            continue
        record = orjson.loads(msg.value() or b"{}")
        kind = tally.count(record)
        line = describe(record)
        if line is not None and tally.may_show(kind):
            say(line)


def _produce(producer: clients.Producer, key: bytes, value: bytes) -> None:
    clients.produce(producer, ORDERS, key=key, value=value)
