"""The worker end to end: a real broker, a real Redis, `rfm-worker run` as a process."""

from __future__ import annotations

import random
import signal
import time
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import (
    BAD_RECORDS,
    around_a_bad_record,
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    final_scores,
    records_of,
)
from tests.reference import expected_now
from tests.reference import ms as reference_ms
from worker.embedded import EmbeddedRedis, create_topics, free_port
from worker.rules.events import Rejection, validate
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state.store import Store


@pytest.mark.demo_path
def test_orders_in_changes_out_bad_input_dead_lettered(deployment: Deployment, store: Store):
    events = generate(60, seed=1)
    records = records_of(events)
    bad_at = random.Random(2).sample(range(len(records)), len(BAD_RECORDS))
    for i, (value, _cls) in zip(sorted(bad_at), BAD_RECORDS, strict=True):
        records.insert(i, (b"bad-key", value))
    expected = expected_now(events)
    worker = deployment.worker()
    deployment.produce(records)

    actions = deployment.read(deployment.actions, until=converged(expected))
    assert_changes_consistent(actions)
    final = final_scores(actions)
    for customer, exp in expected.items():
        if exp is None:  # every order cancelled: never scored, or scored and then cleared
            assert final.get(customer) is None
        else:
            assert final[customer] == {
                "r": exp.r,
                "f": exp.f,
                "m": exp.m,
                "rfm": exp.rfm,
                "segment": exp.segment,
            }
    assert_state_matches(store, expected)

    dead = deployment.read(deployment.dlq, until=lambda m: len(m) >= len(BAD_RECORDS), timeout=30)
    assert len(dead) == len(BAD_RECORDS)
    by_value = {m.value(): m for m in dead}
    for value, error_class in BAD_RECORDS:
        msg = by_value[value]
        headers = {k: v.decode() for k, v in msg.headers()}
        assert msg.key() == b"bad-key"
        assert headers["rfm.error.class"] == error_class
        assert headers["rfm.error.reason"].strip()
        assert headers["rfm.source.topic"] == deployment.orders
        assert int(headers["rfm.source.offset"]) >= 0

    # The read side and metrics of the same running worker.
    port = deployment.http_port
    some = next(c for c, e in expected.items() if e is not None and "\n" in c[1])
    status, body = fetch(port, "/v1/customers/default/" + urllib.parse.quote(some[1], safe=""))
    assert status == 200
    view = orjson.loads(body)
    exp = expected[some]
    assert exp is not None
    assert (view["customer_id"], view["rfm"], view["segment"], Decimal(view["monetary"])) == (
        some[1],
        exp.rfm,
        exp.segment,
        exp.monetary,
    )
    assert fetch(port, "/v1/customers/default/nobody")[0] == 404
    assert fetch(port, "/readyz")[0] == 200
    assert fetch(port, "/healthz")[0] == 200
    # Lag is sampled every second: the first samples may predate the last records
    # consumed. Every event is applied by now, so the lag comes down to 0 with the next one.
    deadline = time.monotonic() + 10
    while 'rfm_consumer_lag{partition="3"} 0.0' not in fetch(port, "/metrics")[1].decode():
        assert time.monotonic() < deadline, "no consumer lag of 0 reported"
        time.sleep(0.2)
    metrics = fetch(port, "/metrics")[1].decode()
    for name in (
        'rfm_events_total{outcome="applied"}',
        'rfm_events_total{outcome="duplicate"}',
        'rfm_events_total{outcome="dead_lettered"} 9.0',
        'rfm_changes_total{cause="order"}',
        "rfm_segment_transitions_total{from_segment=",
        'rfm_consumer_lag{partition="3"} 0.0',
        'rfm_customers{segment="',
        "rfm_sweep_duration_seconds",
    ):
        assert name in metrics, name
    matrix = orjson.loads(fetch(port, "/v1/matrix?tenant=default")[1])
    assert matrix["customers"] == sum(1 for e in expected.values() if e is not None)

    assert worker.stop() == 0  # SIGTERM drains and exits cleanly


@pytest.mark.demo_path
def test_sigterm_and_kill_mid_stream_count_nothing_twice(deployment: Deployment, store: Store):
    """SIGTERM under load drains and exits 0; kill -9 loses nothing; the state stays exact."""
    events = generate(400, seed=3)
    expected = expected_now(events)
    records = records_of(events)
    third = len(records) // 3
    deployment.produce(records[:third])
    first = deployment.worker()
    deployment.read(deployment.actions, until=lambda m: len(m) >= 100, timeout=60)
    deployment.produce(records[third : 2 * third])
    started = time.monotonic()
    assert first.stop(timeout=30) == 0  # SIGTERM while its partitions still have records
    assert time.monotonic() - started < 25
    second = deployment.worker()
    seen = len(deployment.read(deployment.actions, until=lambda m: True, timeout=1))
    deployment.read(deployment.actions, until=lambda m: len(m) >= seen + 50, timeout=60)
    second.kill()  # kill -9; the rest of the stream arrives while no worker runs
    deployment.produce(records[2 * third :])
    third_worker = deployment.worker()
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=90)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert third_worker.stop() == 0


@pytest.mark.redis  # its own Redis, not the suite's: frozen mid-test
def test_redis_outage_stalls_then_catches_up_without_dead_letters(kafka: Any, tmp_path: Path):
    """Redis frozen (SIGSTOP: every call times out) mid-stream, then back."""
    with EmbeddedRedis() as own_redis:
        dep = Deployment(
            kafka,
            own_redis,
            tmp_path,
            *(f"{n}-{uuid.uuid4().hex[:8]}" for n in ("orders", "actions", "dlq", "group")),
            free_port(),
        )
        create_topics(kafka.bootstrap, {dep.orders: 4, dep.actions: 4, dep.dlq: 1})
        events = generate(150, seed=5)
        records = records_of(events)
        expected = expected_now(events)
        worker = dep.worker()
        try:
            dep.produce(records[: len(records) // 2])
            dep.read(dep.actions, until=lambda m: len(m) >= 50)
            assert own_redis.proc is not None
            own_redis.proc.send_signal(signal.SIGSTOP)
            try:
                dep.produce(records[len(records) // 2 :])
                deadline = time.monotonic() + 30
                while fetch(dep.http_port, "/readyz")[0] != 503 and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert fetch(dep.http_port, "/readyz")[0] == 503  # not ready while Redis is gone
                assert fetch(dep.http_port, "/healthz")[0] == 200  # but alive: no restart needed
            finally:
                own_redis.proc.send_signal(signal.SIGCONT)
            actions = dep.read(dep.actions, until=converged(expected), timeout=90)
            assert_changes_consistent(actions)
            client = redis.Redis.from_url(own_redis.url)
            try:
                assert_state_matches(Store(client), expected)
            finally:
                client.close()
            assert dep.read(dep.dlq, until=lambda m: False, timeout=3) == []
            assert (
                "Redis (RFM_REDIS_URL) is unavailable" in worker.log()
                and "redis is back" in worker.log()
            )
            assert worker.stop() == 0
        finally:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.kill()


@pytest.mark.demo_path
def test_event_clock_scores_history_at_its_own_time(deployment: Deployment, store: Store):
    """RFM_CLOCK=event: now is the latest occurred_at seen, so old history scores fresh."""
    deployment.extra_env["RFM_CLOCK"] = "event"
    events = [
        {
            "event_id": f"h{i}",
            "type": "order_placed",
            "order_id": f"o{i}",
            "customer_id": "old",
            "amount": "60.00",
            "occurred_at": f"2021-0{i + 1}-10T10:00:00Z",
        }
        for i in range(3)
    ]
    deployment.produce(records_of(events))
    worker = deployment.worker()
    actions = deployment.read(deployment.actions, until=lambda m: len(m) >= 3)
    last = orjson.loads(actions[-1].value())
    # As of 2021-03-10 the last order is 0 days old: R=5, 3 orders (F3), 180.00 (M2).
    assert last["as_of"] == "2021-03-10T10:00:00Z"
    assert last["current"]["rfm"] == "532"
    status, body = fetch(deployment.http_port, "/v1/customers/default/old")
    assert status == 200 and orjson.loads(body)["as_of"] == "2021-03-10T10:00:00Z"
    assert store.clock.read() == reference_ms("2021-03-10T10:00:00Z")
    assert worker.stop() == 0


@pytest.mark.demo_path
def test_changes_committed_but_never_published_are_relayed_with_their_ids(
    deployment: Deployment, store: Store, profiles: Profiles
):
    """A worker that died between the Redis commit and the publication: outbox relayed."""
    events = generate(40, seed=9)
    now = int(time.time() * 1000)
    valid = []
    for i, ev in enumerate(events):
        out = validate(orjson.dumps(ev), profiles, now)
        assert not isinstance(out, Rejection)
        valid.append((out, i % 4))
    committed = causes.apply_batch(store, valid, profiles, as_of_ms=now, now_ms=now).committed
    assert committed and store.outbox.backlog() == len(committed)
    worker = deployment.worker()  # nothing on the orders topic: only the outbox to relay

    def changes(messages: list[Any]) -> list[bytes]:  # the worker's sweep may add alerts
        return [m.value() for m in messages if b'"type":"rfm.changed"' in m.value()]

    actions = deployment.read(deployment.actions, until=lambda m: len(changes(m)) >= len(committed))
    assert sorted(changes(actions)) == sorted(c.value for c in committed)
    assert_changes_consistent(actions)
    deadline = time.monotonic() + 10
    while store.outbox.backlog() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.outbox.backlog() == 0  # trimmed once the broker acknowledged them
    assert worker.stop() == 0


def test_second_worker_joining_mid_stream_moves_partitions_without_loss(
    deployment: Deployment, store: Store
):
    events = generate(300, seed=11)
    expected = expected_now(events)
    records = records_of(events)
    half = len(records) // 2
    first = deployment.worker()
    deployment.produce(records[:half])
    deployment.read(deployment.actions, until=lambda m: len(m) >= 100)
    second = deployment.worker()  # the group rebalances ...
    deadline = time.monotonic() + 45
    while "assigned partitions" not in second.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "revoked partitions" in first.log()
    deployment.produce(records[half:])  # ... and each worker applies its share of the rest
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=90)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert first.stop() == 0 and second.stop() == 0


def test_dead_letter_copy_too_large_for_the_topic_is_sent_without_its_value(
    deployment: Deployment, store: Store
):
    """Near the broker's 1 MB limit: the DLQ copy (the value plus the rfm.* headers) no
    longer fits, so it goes without its value, saying so; nothing else is affected."""
    huge = b'{"pad": "' + b"x" * (999_899 - 12) + b'"}'  # fits, barely
    events = generate(5, seed=21)
    records = [*records_of(events[:5]), (b"huge", huge), *records_of(events[5:])]
    producer = deployment.producer()
    for key, value in records:
        producer.produce(deployment.orders, key=key, value=value, partition=0)
    assert producer.flush(30) == 0
    producer.close()
    worker = deployment.worker()
    [dead] = deployment.read(deployment.dlq, until=lambda m: len(m) >= 1)
    headers = dict(dead.headers())
    assert dead.value() is None and dead.key() == b"huge"
    assert headers["rfm.error.class"] == b"oversized"
    assert b"(999898 bytes)" in headers["rfm.error.value_dropped"]
    assert int(headers["rfm.source.offset"]) == 5
    assert headers["rfm.source.partition"] == b"0"
    expected = expected_now(events)
    deployment.read(deployment.actions, until=converged(expected))
    assert_state_matches(store, expected)
    assert worker.stop() == 0


def test_dead_letter_topic_refusing_copies_stalls_and_never_skips(
    deployment: Deployment, store: Store
):
    """A DLQ topic the broker refuses (here an invalid name; a missing or forbidden topic
    behaves the same): the partition stalls, /readyz fails and says why; nothing skipped."""
    good_dlq = deployment.dlq
    deployment.extra_env["RFM_DLQ_TOPIC"] = "refused dlq!"
    before, after, records = around_a_bad_record((22, 23))
    producer = deployment.producer()
    for key, value in records:
        producer.produce(deployment.orders, key=key, value=value, partition=1)
    assert producer.flush(30) == 0
    producer.close()
    worker = deployment.worker()
    # The stall's line says why: the last delivery error, worded by the broker ("Broker:
    # Invalid topic") or by the client from the metadata it holds ("Local: Unknown topic")
    # depending on timing, and what the topic's metadata says ("Broker: Invalid topic").
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and "consumption is stalled" not in worker.log():
        time.sleep(0.5)
    stalls = [line for line in worker.log().splitlines() if "consumption is stalled" in line]
    assert stalls and all("Invalid topic" in line for line in stalls), stalls
    assert fetch(deployment.http_port, "/readyz")[0] == 503
    assert fetch(deployment.http_port, "/healthz")[0] == 200
    assert "rfm_dlq_blocked 1.0" in fetch(deployment.http_port, "/metrics")[1].decode()
    worker.kill()

    # With a DLQ topic that accepts it, the record is dead-lettered: it was never skipped.
    deployment.extra_env["RFM_DLQ_TOPIC"] = good_dlq
    second = deployment.worker()
    [dead] = deployment.read(good_dlq, until=lambda m: len(m) >= 1)
    assert dead.value() == b"{not json"
    assert dict(dead.headers())["rfm.source.offset"] == str(len(records_of(before))).encode()
    expected = expected_now(before + after)
    deployment.read(deployment.actions, until=converged(expected))
    assert_state_matches(store, expected)
    assert second.stop() == 0


def test_broker_unreachable_for_a_while_recovers_by_itself(
    own_deployment: Deployment, store: Store
):
    """The broker frozen (SIGSTOP: every request hangs, the group session expires) while
    the worker runs, then back: nothing lost, nothing published twice under another id.
    (The suite's broker keeps its data in memory, so a frozen process stands in for a
    restart: the worker sees the same dead connections and the same group rejoin.)"""
    events = generate(300, seed=24)
    expected = expected_now(events)
    own_deployment.produce(records_of(events))
    worker = own_deployment.worker()
    own_deployment.read(own_deployment.actions, until=lambda m: len(m) >= 50)
    broker = own_deployment.kafka.proc
    assert broker is not None
    broker.send_signal(signal.SIGSTOP)
    try:
        time.sleep(8)
    finally:
        broker.send_signal(signal.SIGCONT)
    actions = own_deployment.read(own_deployment.actions, until=converged(expected), timeout=90)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert worker.proc is not None and worker.proc.poll() is None  # recovered, no restart
    assert worker.stop() == 0


def test_a_worker_with_no_partition_is_ready(deployment: Deployment):
    """More workers than partitions: the one without a partition is still ready (able to
    work), or a rollout waiting for readiness would never complete."""
    single = f"{deployment.orders}-one"
    create_topics(deployment.kafka.bootstrap, {single: 1})
    deployment.extra_env["RFM_ORDERS_TOPIC"] = single
    first, second = deployment.worker(), deployment.worker()
    ports = [int(w.env["RFM_HTTP_PORT"]) for w in (first, second)]
    deadline = time.monotonic() + 40
    statuses: list[int] = []
    while time.monotonic() < deadline:
        try:
            statuses = [fetch(port, "/readyz")[0] for port in ports]
        except OSError:
            statuses = []
        if statuses == [200, 200]:
            break
        time.sleep(0.5)
    assert statuses == [200, 200], first.log()[-3000:] + second.log()[-3000:]
    logs = first.log() + second.log()
    assert "assigned partitions [0]" in logs and "assigned partitions []" in logs
    assert first.stop() == 0 and second.stop() == 0


def test_a_frozen_broker_fails_readiness_within_seconds(own_deployment: Deployment, store: Store):
    """The broker hangs (SIGSTOP: connections open, nothing answered): readiness follows
    progress, not the TCP connection: /readyz fails once the broker has held the worker's
    requests for KAFKA_SILENT_S (10 s), /healthz stays up, and both recover with it."""
    events = generate(50, seed=25)
    expected = expected_now(events)
    own_deployment.produce(records_of(events))
    worker = own_deployment.worker()
    own_deployment.read(own_deployment.actions, until=converged(expected))
    port = own_deployment.http_port
    assert fetch(port, "/readyz")[0] == 200
    broker = own_deployment.kafka.proc
    assert broker is not None
    broker.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        while fetch(port, "/readyz")[0] == 200 and time.monotonic() - frozen < 40:
            time.sleep(0.25)
        delay = time.monotonic() - frozen
        assert fetch(port, "/readyz")[0] == 503
        assert fetch(port, "/healthz")[0] == 200
    finally:
        broker.send_signal(signal.SIGCONT)
    assert delay < 16, f"readiness fell {delay:.1f} s after the broker froze"
    assert "have not answered for 10 s" in worker.log()
    deadline = time.monotonic() + 40
    while not _ready(port):
        assert time.monotonic() < deadline, "not ready again after the broker came back"
        time.sleep(0.25)
    assert fetch(port, "/healthz")[0] == 200
    assert worker.stop() == 0


def _ready(port: int) -> bool:
    """/readyz answers 200; a probe whose connection failed counts as not ready, as a
    kubelet's does (under a loaded CI machine, once: reset while the worker caught up)."""
    try:
        return fetch(port, "/readyz")[0] == 200
    except OSError:
        return False


def test_small_batches_share_one_record_of_their_offsets_per_100_ms(
    deployment: Deployment, store: Store, worker_in_process: Any
) -> None:
    """A record of applied offsets costs a script call on every shard: batches of one
    event share one record per APPLIED_EVERY_S (0.1 s) instead of paying one each, and
    the stop records the last offset, so a restart replays nothing it need not."""
    from prometheus_client import REGISTRY

    from worker.state import keys

    worker = worker_in_process()
    deadline = time.monotonic() + 30
    while not worker.checkpoint.assigned and time.monotonic() < deadline:
        time.sleep(0.05)
    events = generate(40, seed=8)[:40]
    hsets = store.redis.info("commandstats").get("cmdstat_hset", {}).get("calls", 0)
    batches = REGISTRY.get_sample_value("rfm_batch_size_count") or 0.0
    producer = deployment.producer(**{"linger.ms": 0})
    for _key, value in records_of(events):  # one partition: one field per record
        producer.produce(deployment.orders, key=b"one", value=value, partition=0)
        producer.flush(10)
        time.sleep(0.02)
    producer.close()
    expected = expected_now(events)
    deployment.read(deployment.actions, until=converged(expected), timeout=60)
    worker.stop()
    field = keys.applied_field(deployment.orders, 0)
    while store.applied.read([field])[field][0] != len(events) and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    assert store.applied.read([field])[field] == (len(events), keys.SHARDS)
    batches = (REGISTRY.get_sample_value("rfm_batch_size_count") or 0.0) - batches
    hset_calls = store.redis.info("commandstats")["cmdstat_hset"]["calls"] - hsets
    records = hset_calls / keys.SHARDS  # applied.lua: one HSET per shard and field
    assert batches >= 20, batches  # the events came in small batches
    assert records * 2 <= batches, (records, batches)
    assert_state_matches(store, expected)
