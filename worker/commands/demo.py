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

import heapq
import itertools
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from worker.embedded import (
    BrokerKind,
    EmbeddedRedis,
    create_topics,
    die_with_parent,
    free_port,
    start_broker,
)
from worker.kafka.clients import produce

ORDERS, ACTIONS, DLQ = "orders", "rfm.actions", "orders.dlq"
BAD_MESSAGES = [
    b"not json at all",
    b'{"event_id": "bad-1", "type": "order_placed"}',
    b'{"event_id": "bad-2", "type": "order_shipped", "order_id": "o", "customer_id": "c",'
    b' "occurred_at": "2026-01-01T00:00:00Z"}',
    b'{"event_id": "bad-3", "type": "order_placed", "order_id": "o", "customer_id": "c",'
    b' "amount": "-5", "occurred_at": "2026-01-01T00:00:00Z"}',
    b"\xff\xfe invalid utf-8",
]
# The history ends this long before the wall clock: the room the fast clock runs through.
HISTORY_ENDS_AGO = timedelta(days=365)
DAYS_PER_SECOND = 2.0
SWEEP_INTERVAL = 1.0  # seconds: with the fast clock, one sweep per two simulated days
LINES_PER_SECOND = 8  # readable, still live
LINES_PER_KIND = 4  # so the flood of order moves cannot crowd out decay and overdue lines
# Orders sent in one turn of the loop at most: a rate the generator cannot keep up with
# lowers the rate actually sent, never the loop's turns (Ctrl-C, --duration, the tail).
MAX_BURST = 1000
# Personas: (weight, mean days between orders, mean basket). Silent regulars order on a
# steady rhythm, then stop; lapsed customers went quiet long before the history ends.
PERSONAS: dict[str, tuple[int, float, float]] = {
    "regular": (25, 25, 60),
    "silent_regular": (10, 20, 70),
    "one_timer": (40, 400, 40),
    "big_spender": (10, 60, 400),
    "lapsed": (15, 45, 80),
}
CHURN = 0.3  # share of live regulars and big spenders who stop ordering within the year


@dataclass(slots=True)
class Persona:
    id: str
    kind: str
    gap: float  # mean days between orders
    basket: float
    # Simulated days after the history's end during which live orders come (inf: always).
    live_days: float


class FastClock:
    """Simulated time: `days_per_second` days per real second from `start`, never past
    the wall clock (events ahead of it are rejected), then real time."""

    def __init__(self, start: datetime, days_per_second: float) -> None:
        self.start, self.days_per_second = start, days_per_second
        self.started = time.monotonic()
        self.real_time = False  # whether it has reached the wall clock

    def now(self) -> datetime:
        wall = datetime.now(UTC)
        days = (time.monotonic() - self.started) * self.days_per_second
        # compared before adding: a fast clock would overflow datetime long before year 10000
        if days >= (wall - self.start) / timedelta(days=1):
            self.real_time = True
            return wall
        return self.start + timedelta(days=days)


class OrderStream:
    """Realistic orders: each customer has a rhythm and a basket size."""

    def __init__(self, customers: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.customers = [self._persona(i) for i in range(customers)]
        # Live customers by when their next order is due (filled by `history`).
        self._due: list[tuple[datetime, int]] = []

    def _persona(self, i: int) -> Persona:
        kinds = list(PERSONAS)
        kind = self.rng.choices(kinds, weights=[PERSONAS[k][0] for k in kinds])[0]
        _, gap, basket = PERSONAS[kind]
        live_days = math.inf
        if kind == "silent_regular":
            gap, live_days = self.rng.uniform(10, 30), 0
        elif kind == "lapsed":
            live_days = 0
        elif kind != "one_timer" and self.rng.random() < CHURN:
            live_days = self.rng.uniform(0, HISTORY_ENDS_AGO.days)
        return Persona(f"c{i:05d}", kind, gap, basket, live_days)

    def _gap(self, cust: Persona) -> timedelta:
        """A steady rhythm (never twice the usual gap), so only real silences are overdue."""
        return timedelta(days=cust.gap * self.rng.uniform(0.7, 1.3))

    def _event(
        self,
        kind: str,
        cust: Persona,
        order_id: str,
        at: datetime,
        amount: float | None = None,
    ) -> tuple[bytes, bytes]:
        doc: dict[str, Any] = {
            "event_id": f"e{next(self.ids)}",
            "type": kind,
            "order_id": order_id,
            "customer_id": cust.id,
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
        }
        if amount is not None:
            doc["amount"] = f"{amount:.2f}"
        return cust.id.encode(), orjson.dumps(doc)

    def _order(
        self,
        cust: Persona,
        at: datetime,
        now: datetime,
        later: timedelta = timedelta(days=3),
    ) -> list[tuple[bytes, bytes]]:
        oid = f"o{next(self.ids)}"
        amount = max(5.0, self.rng.gauss(cust.basket, cust.basket / 3))
        out = [self._event("order_placed", cust, oid, at, amount)]
        # Never after the simulated now: it would move the worker's event clock ahead.
        follow_up = min(at + later, now)
        roll = self.rng.random()
        if roll < 0.04:
            out.append(self._event("order_cancelled", cust, oid, follow_up))
        elif roll < 0.10:
            out.append(
                self._event(
                    "order_refunded",
                    cust,
                    oid,
                    follow_up,
                    round(amount * self.rng.uniform(0.1, 1.0), 2),
                )
            )
        return out

    def _order_times(self, cust: Persona, end: datetime) -> list[datetime]:
        if cust.kind == "silent_regular":
            # Silent for 0.6 to 1.9 gaps at `end`: the overdue instant (2 gaps, the built-in
            # profile's overdue_factor) falls in the first weeks of the live stream.
            at = end - timedelta(days=self.rng.uniform(0.6, 1.9) * cust.gap)
            times = [at]
            for _ in range(self.rng.randint(4, 12)):
                at -= self._gap(cust)
                times.append(at)
            return times[::-1]
        quiet = 200 if cust.kind == "lapsed" else 0
        at = end - timedelta(days=self.rng.uniform(30, 400))
        times = []
        while at < end - timedelta(days=quiet + 1):
            times.append(at)
            if cust.kind == "one_timer" and self.rng.random() < 0.8:
                break
            at += self._gap(cust)
        return times

    def history(self, end: datetime) -> list[tuple[bytes, bytes]]:
        """About a year of past orders up to `end`, in time order."""
        events: list[tuple[datetime, tuple[bytes, bytes]]] = []
        self._due = []
        for i, cust in enumerate(self.customers):
            times = self._order_times(cust, end)
            for at in times:
                events.extend((at, ev) for ev in self._order(cust, at, end))
            if cust.live_days > 0:
                self._due.append(((times[-1] if times else end) + self._gap(cust), i))
        heapq.heapify(self._due)
        events.sort(key=lambda item: item[0])
        return [ev for _, ev in events]

    def live(self, now: datetime, days_in: float) -> list[tuple[bytes, bytes]]:
        """One live order at the simulated `now`, `days_in` days after the history's end.

        It goes to the customer whose next order is the most due. At any rate, every
        customer's gaps shrink or stretch alike and stay steady: the overdue alerts are
        for the customers who stop (silent regulars, churners), not for random gaps.
        """
        if self.rng.random() < 0.01:
            return [(b"junk", self.rng.choice(BAD_MESSAGES))]
        while self._due:
            due, i = heapq.heappop(self._due)
            cust = self.customers[i]
            if days_in < cust.live_days:  # else churned: out of the stream for good
                heapq.heappush(self._due, (due + self._gap(cust), i))
                return self._order(cust, now, now, later=timedelta(0))
        return []


@dataclass(slots=True)
class Tally:
    """Every record read from the actions topic, shown or not."""

    changes: int = 0
    decay: int = 0
    overdue: int = 0
    shown: Counter[str] = field(default_factory=Counter)  # lines shown this second, by kind

    def count(self, record: dict[str, Any]) -> str:
        """Count the record; its kind for the line budget: overdue, decay or events."""
        if record.get("type") == "rfm.overdue":
            self.overdue += 1
            return "overdue"
        if record.get("type") == "rfm.changed":
            self.changes += 1
            if record.get("cause") == "decay":
                self.decay += 1
                return "decay"
        return "events"

    def may_show(self, kind: str) -> bool:
        if self.shown.total() >= LINES_PER_SECOND or self.shown[kind] >= LINES_PER_KIND:
            return False
        self.shown[kind] += 1
        return True


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


def run_demo(
    customers: int = 3000,
    rate: float = 200,
    duration: float | None = None,
    days_per_second: float = DAYS_PER_SECOND,
    broker: BrokerKind = "tansu",
) -> int:
    # The command line refuses these with a usage message (worker/cli.py); this is for callers.
    if customers < 1:
        raise ValueError("customers must be at least 1")
    for name, value in (("rate", rate), ("days_per_second", days_per_second)):
        if not (0 < value < math.inf):
            raise ValueError(f"{name} must be a positive number")
    if duration is not None and not (0 < duration < math.inf):
        raise ValueError("duration must be a positive number of seconds")
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
        env = {
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
        }
        # Both files live in the demo's own folder, removed when it stops.
        profiles_path = Path(scratch) / "profiles.toml"
        profiles_path.write_text(DEMO_PROFILES, encoding="utf-8")
        env["RFM_PROFILES"] = str(profiles_path)
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
        say(f"""
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
""")
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
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    history_end = datetime.now(UTC) - HISTORY_ENDS_AGO
    history = gen.history(history_end)
    for n, (key, value) in enumerate(history):
        if n % 10_000 == 0 and stop.is_set():
            break
        _produce(producer, key, value)
    producer.flush(30)
    say(
        f"published {len(history)} historical order events up to {history_end:%Y-%m-%d}; "
        f"live orders follow at {rate:.0f}/s, their clock running {days_per_second:g} "
        "simulated days per second"
    )
    say("segment changes and overdue alerts as they happen (customer, cause, before -> after):\n")
    # Tail the actions topic without a consumer group: no join to wait for.
    actions = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "rfm-demo-tail", "enable.auto.commit": False}
    )
    actions.assign([TopicPartition(ACTIONS, p, OFFSET_BEGINNING) for p in range(4)])
    clock = FastClock(history_end, days_per_second)
    # Live orders are paced in simulated time: `rate` per real second while the clock runs
    # fast, the same number per simulated day once it runs in real time.
    step = timedelta(days=days_per_second / rate)
    caught_up = False
    tally = Tally()
    started = time.monotonic()
    next_send, next_status, second = history_end, started + 5, int(started)
    try:
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - started > duration:
                break
            sim_now = clock.now()
            days_in = (sim_now - history_end) / timedelta(days=1)
            burst = 0
            while next_send <= sim_now and burst < MAX_BURST:
                for key, value in gen.live(sim_now, days_in):
                    _produce(producer, key, value)
                next_send += step
                burst += 1
            # behind by a real second at most: no catch-up flood
            next_send = max(next_send, sim_now - timedelta(days=days_per_second))
            if clock.real_time and not caught_up:
                caught_up = True
                say(_caught_up(sim_now, step))
            producer.poll(0)
            if int(now) != second:
                second = int(now)
                tally.shown.clear()
            for msg in actions.consume(500, 0.05):
                if msg.error():
                    continue
                record = orjson.loads(msg.value() or b"{}")
                kind = tally.count(record)
                line = _describe(record)
                if line is not None and tally.may_show(kind):
                    say(line)
            if now >= next_status:
                next_status = now + 5
                say(_status(metrics_url, tally, clock.now(), now - started))
    finally:
        producer.flush(10)
        producer.close()
        actions.close()
    say(_status(metrics_url, tally, clock.now(), time.monotonic() - started))
    return 0


def say(line: str) -> None:
    print(line, flush=True)


def _status(metrics_url: str, tally: Tally, sim_now: datetime, elapsed: float) -> str:
    """One line: the simulated date, the worker's own metrics (what it applied and
    rejected), and what arrived on the actions topic."""
    received = (
        f"{tally.changes} changes received ({tally.decay} by decay), {tally.overdue} overdue alerts"
    )
    head = f"-- {elapsed:.0f}s, simulated {sim_now:%Y-%m-%d}"
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as resp:  # noqa: S310 - our URL
            text = resp.read().decode()
    except OSError:
        return f"{head}: {received} (worker metrics unavailable)"
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^rfm_events_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }
    return (
        f"{head}: events applied {counts.get('applied', 0):.0f}, "
        f"duplicate {counts.get('duplicate', 0):.0f}, "
        f"dead-lettered {counts.get('dead_lettered', 0):.0f}; {received}"
    )


def _caught_up(sim_now: datetime, step: timedelta) -> str:
    every = step.total_seconds()
    if every >= 3600:
        pace = f"{every / 3600:.1f} hours"
    elif every >= 60:
        pace = f"{every / 60:.0f} minutes"
    else:
        pace = f"{every:.1f} s"
    return (
        f"-- the simulated clock has reached today ({sim_now:%Y-%m-%d}): it runs in real "
        f"time from now on, and live orders keep their pace per simulated day (one every "
        f"{pace}); the sweeper and the page go on. Ctrl-C stops the demo."
    )


def _produce(producer: Producer, key: bytes, value: bytes) -> None:
    produce(producer, ORDERS, key=key, value=value)


def _describe(record: dict[str, Any]) -> str | None:
    """A line for an overdue alert or a segment move, with the triggers that fired;
    None for other records."""
    customer = record.get("customer_id", "?")
    fired = record.get("triggers") or []
    tail = f"  => {', '.join(fired)}" if fired else ""
    if record.get("type") == "rfm.overdue":
        return (
            f"{customer:>8}  {'OVERDUE':<7} silent {record['silent_days']} days "
            f"(usual gap {record['median_gap_days']:.0f} days){tail}"
        )
    if record.get("type") != "rfm.changed" or not record.get("segment_changed"):
        return None
    prev, cur = record["previous"], record["current"]
    before = f"{prev['segment']} ({prev['rfm']})" if prev else "new"
    after = f"{cur['segment']} ({cur['rfm']})" if cur else "no orders left"
    return f"{customer:>8}  {record['cause']:<7} {before:>26} -> {after}{tail}"
