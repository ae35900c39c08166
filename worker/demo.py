"""`rfm-worker demo`: embedded broker and Redis, the real worker, a live order stream.

What it shows: a year of order history for a few thousand customers is published first
(regulars, one-timers, big spenders, refunds, cancellations), then live orders keep coming
with a few bad messages among them. Every change the worker publishes is printed as it
arrives on the actions topic. Ctrl-C stops every child process.
"""

from __future__ import annotations

import itertools
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from worker.clients import produce
from worker.embedded import EmbeddedKafka, EmbeddedRedis, create_topics, free_port

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


class OrderStream:
    """Realistic orders: each customer has a rhythm and a basket size."""

    def __init__(self, customers: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.customers = [self._persona(i) for i in range(customers)]

    def _persona(self, i: int) -> dict[str, Any]:
        kind = self.rng.choices(
            ["regular", "one_timer", "big_spender", "lapsed"], weights=[30, 45, 10, 15]
        )[0]
        gap = {"regular": 25, "one_timer": 400, "big_spender": 60, "lapsed": 45}[kind]
        basket = {"regular": 60, "one_timer": 40, "big_spender": 400, "lapsed": 80}[kind]
        return {"id": f"c{i:05d}", "kind": kind, "gap": gap, "basket": basket}

    def _event(
        self,
        kind: str,
        cust: dict[str, Any],
        order_id: str,
        at: datetime,
        amount: float | None = None,
    ) -> tuple[bytes, bytes]:
        doc: dict[str, Any] = {
            "event_id": f"e{next(self.ids)}",
            "type": kind,
            "order_id": order_id,
            "customer_id": cust["id"],
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
        }
        if amount is not None:
            doc["amount"] = f"{amount:.2f}"
        return cust["id"].encode(), orjson.dumps(doc)

    def _order(
        self, cust: dict[str, Any], at: datetime, later: timedelta = timedelta(days=3)
    ) -> list[tuple[bytes, bytes]]:
        oid = f"o{next(self.ids)}"
        amount = max(5.0, self.rng.gauss(cust["basket"], cust["basket"] / 3))
        out = [self._event("order_placed", cust, oid, at, amount)]
        follow_up = min(at + later, datetime.now(UTC))  # never in the future
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

    def history(self, now: datetime) -> list[tuple[bytes, bytes]]:
        """About a year of past orders, in time order."""
        events: list[tuple[datetime, tuple[bytes, bytes]]] = []
        for cust in self.customers:
            quiet = 200 if cust["kind"] == "lapsed" else 0
            at = now - timedelta(days=self.rng.uniform(30, 400))
            while at < now - timedelta(days=quiet + 1):
                for ev in self._order(cust, at):
                    events.append((at, ev))
                if cust["kind"] == "one_timer" and self.rng.random() < 0.8:
                    break
                at += timedelta(days=self.rng.expovariate(1 / cust["gap"]))
        events.sort(key=lambda item: item[0])
        return [ev for _, ev in events]

    def live(self) -> list[tuple[bytes, bytes]]:
        cust = self.rng.choice(self.customers)
        if self.rng.random() < 0.01:
            return [(b"junk", self.rng.choice(BAD_MESSAGES))]
        return self._order(cust, datetime.now(UTC), later=timedelta(0))


def run_demo(customers: int = 3000, rate: float = 200, duration: float | None = None) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say("starting an embedded Kafka-protocol broker (Tansu) and Redis ...")
    with EmbeddedRedis() as redis_server, EmbeddedKafka() as broker:
        create_topics(broker.bootstrap, {ORDERS: 4, ACTIONS: 4, DLQ: 1})
        http_port = free_port()
        env = {
            **os.environ,
            "RFM_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RFM_REDIS_URL": redis_server.url,
            "RFM_HTTP_PORT": str(http_port),
            "RFM_KAFKA_CONFIG": '{"session.timeout.ms": "6000"}',
        }
        env.pop("RFM_PROFILES", None)
        log_path = Path(tempfile.gettempdir()) / f"rfm-demo-worker-{os.getpid()}.log"
        log = log_path.open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{http_port}"
        say(f"""
  broker     {broker.bootstrap}   (topics {ORDERS}, {ACTIONS}, {DLQ})
  redis      {redis_server.url}
  metrics    {base}/metrics
  matrix     {base}/v1/matrix?tenant=default
  a customer {base}/v1/customers/default/c00001
  CLI        RFM_REDIS_URL={redis_server.url} rfm-worker matrix
  worker log {log_path}
Ctrl-C stops everything.
""")
        try:
            return _stream(broker.bootstrap, f"{base}/metrics", customers, rate, duration, stop)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()
            say("stopped the worker, the broker and Redis")


def _stream(
    bootstrap: str,
    metrics_url: str,
    customers: int,
    rate: float,
    duration: float | None,
    stop: threading.Event,
) -> int:
    gen = OrderStream(customers)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    history = gen.history(datetime.now(UTC))
    for key, value in history:
        _produce(producer, key, value)
    producer.flush(30)
    say(f"published {len(history)} historical order events; live orders follow at {rate:.0f}/s")
    say("segment changes as they happen (customer, cause, before -> after):\n")
    # Tail the actions topic without a consumer group: no join to wait for.
    actions = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "rfm-demo-tail", "enable.auto.commit": False}
    )
    actions.assign([TopicPartition(ACTIONS, p, OFFSET_BEGINNING) for p in range(4)])
    started = time.monotonic()
    next_send, next_status, changes = started, started + 5, 0
    shown_this_second, second = 0, int(started)
    try:
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - started > duration:
                break
            while next_send <= now:
                for key, value in gen.live():
                    _produce(producer, key, value)
                next_send += 1 / rate
            producer.poll(0)
            for msg in actions.consume(500, 0.05):
                if msg.error():
                    continue
                changes += 1
                change = orjson.loads(msg.value() or b"{}")
                if int(now) != second:
                    second, shown_this_second = int(now), 0
                # Segment moves only, at most 8 lines a second: readable, still live.
                if change.get("segment_changed") and shown_this_second < 8:
                    shown_this_second += 1
                    say(_describe(change))
            if now >= next_status:
                next_status = now + 5
                say(_status(metrics_url, changes, now - started))
    finally:
        producer.flush(10)
        actions.close()
    say(_status(metrics_url, changes, time.monotonic() - started))
    return 0


def say(line: str) -> None:
    print(line, flush=True)


def _status(metrics_url: str, changes: int, elapsed: float) -> str:
    """One line from the worker's own metrics: what it applied, rejected and published."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as resp:  # noqa: S310 - our URL
            text = resp.read().decode()
    except OSError:
        return f"-- {elapsed:.0f}s: {changes} changes received (worker metrics unavailable)"
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^rfm_events_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }
    return (
        f"-- {elapsed:.0f}s: events applied {counts.get('applied', 0):.0f}, "
        f"duplicate {counts.get('duplicate', 0):.0f}, "
        f"dead-lettered {counts.get('dead_lettered', 0):.0f}; "
        f"{changes} changes received"
    )


def _produce(producer: Producer, key: bytes, value: bytes) -> None:
    produce(producer, ORDERS, key=key, value=value)


def _describe(change: dict[str, Any]) -> str:
    prev, cur = change["previous"], change["current"]
    before = f"{prev['segment']} ({prev['rfm']})" if prev else "new"
    after = f"{cur['segment']} ({cur['rfm']})" if cur else "no orders left"
    return f"{change['customer_id']:>8}  {change['cause']:<7} {before:>26} -> {after}"
