"""What only a real broker can show: Apache Kafka restarted with its data on disk, a
3-broker cluster losing partition leaders, topics that are not auto-created, exact end
offsets, and rebalances under both group protocols. Each runs on Apache Kafka (skipped
with the reason on Tansu or without a JDK) with `rfm-worker run` as a process, or the
Worker loop in process where a test must reach into it, and ends with the state equal to
the batch recomputation and every customer's changes an unbroken chain.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from tests.conftest import Deployment, deployed
from tests.factories import generate
from tests.fixtures import (
    around_a_bad_record,
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    records_of,
)
from tests.reference import expected_now
from worker import metrics
from worker.embedded import EmbeddedRedis, create_topics
from worker.embedded.apache_kafka import ApacheKafka
from worker.services.consumer import Worker
from worker.state.store import Store


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ready(port: int) -> int:
    try:
        return fetch(port, "/readyz")[0]
    except OSError:
        return 0


def _leader(bootstrap: str, topic: str, partition: int) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic, timeout=10).topics[topic].partitions[partition]
    return int(meta.leader)


@pytest.fixture
def own_kafka(apache_kafka: ApacheKafka) -> Iterator[ApacheKafka]:
    """A single-node Apache Kafka of the test's own (it is stopped and started again)."""
    with ApacheKafka() as kafka:
        yield kafka


def test_broker_restart_with_data_on_disk_mid_stream(
    own_kafka: ApacheKafka, redis_server: EmbeddedRedis, store: Store, tmp_path: Path
) -> None:
    """Kafka killed (kill -9) mid-stream and started again on the same data: the worker
    is not ready while it is gone, ready again once it is back, and the stream ends exact:
    nothing lost, nothing counted twice, every chain unbroken."""
    with deployed(own_kafka, redis_server, tmp_path) as dep:
        events = generate(300, seed=151)
        expected = expected_now(events)
        records = records_of(events)
        half = len(records) // 2
        dep.produce(records[:half])
        worker = dep.worker()
        dep.read(dep.actions, until=lambda m: len(m) >= 50)
        _wait(lambda: _ready(dep.http_port) == 200, 30, "ready before the outage")
        own_kafka.kill()
        _wait(lambda: _ready(dep.http_port) == 503, 30, "not ready while Kafka is down")
        assert fetch(dep.http_port, "/healthz")[0] == 200  # alive: nothing to restart
        time.sleep(3)
        own_kafka.start()
        _wait(lambda: _ready(dep.http_port) == 200, 60, "ready once Kafka is back")
        dep.produce(records[half:])
        actions = dep.read(dep.actions, until=converged(expected), timeout=90)
        assert_changes_consistent(actions)
        assert_state_matches(store, expected)
        assert worker.proc is not None and worker.proc.poll() is None  # no restart needed
        assert "unreachable" in worker.log() and "answers again" in worker.log()
        assert worker.stop() == 0


@pytest.fixture
def kafka_cluster(apache_kafka: ApacheKafka) -> Iterator[ApacheKafka]:
    """Three brokers: replication factor 3, min.insync.replicas 2 (the worker's producer
    uses acks=all), leaders moved within ~3 s of a broker's death."""
    with ApacheKafka(
        3,
        properties={"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"},
    ) as cluster:
        yield cluster


def test_three_brokers_losing_the_leaders_of_orders_and_actions_partitions(
    kafka_cluster: ApacheKafka, redis_server: EmbeddedRedis, store: Store, tmp_path: Path
) -> None:
    """During a stream, the leader of an orders partition is killed (kill -9) and started
    again, then the leader of an actions partition: the state equals the recomputation and
    each customer's published changes form an unbroken chain."""
    with deployed(kafka_cluster, redis_server, tmp_path, replication=3) as dep:
        events = generate(400, seed=152)
        expected = expected_now(events)
        records = records_of(events)
        worker = dep.worker()
        done = threading.Event()

        def stream() -> None:  # the orders keep coming while brokers die
            for i in range(0, len(records), 40):
                dep.produce(records[i : i + 40])
                time.sleep(0.1)
            done.set()

        producer = threading.Thread(target=stream, daemon=True)
        producer.start()
        dep.read(dep.actions, until=lambda m: len(m) >= 30)
        for topic, partition in ((dep.orders, 0), (dep.actions, 1)):
            victim = kafka_cluster.node(_leader(kafka_cluster.bootstrap, topic, partition))
            victim.kill()
            _wait(
                lambda t=topic, p=partition, v=victim: (
                    _leader(
                        ",".join(f"127.0.0.1:{n.port}" for n in kafka_cluster.nodes if n.running),
                        t,
                        p,
                    )
                    not in (v.node_id, -1)
                ),
                30,
                f"a new leader of {topic}[{partition}]",
            )
            time.sleep(2)  # the stream goes on with the broker down
            kafka_cluster.start()  # the killed broker comes back and catches up
        producer.join(120)
        assert done.is_set()
        actions = dep.read(dep.actions, until=converged(expected), timeout=120)
        assert_changes_consistent(actions)
        assert_state_matches(store, expected)
        assert worker.stop() == 0


def test_missing_dead_letter_topic_stalls_says_so_and_never_skips(
    apache_kafka: ApacheKafka, deployment: Deployment, store: Store
) -> None:
    """No auto-creation (as in production): a DLQ topic that does not exist stalls the
    partition with the bad record, /readyz fails, the log names the missing topic; once
    the topic exists, the record is dead-lettered and the rest applied."""
    missing = f"{deployment.dlq}-missing"
    deployment.extra_env["RFM_DLQ_TOPIC"] = missing
    before, after, records = around_a_bad_record((153, 154))
    worker = deployment.worker()
    deployment.produce(records)
    _wait(lambda: "consumption is stalled" in worker.log(), 40, "the stall")
    assert f"the topic {missing} does not exist" in worker.log()
    assert _ready(deployment.http_port) == 503
    assert "rfm_dlq_blocked 1.0" in fetch(deployment.http_port, "/metrics")[1].decode()
    create_topics(deployment.kafka.bootstrap, {missing: 1})
    [dead] = deployment.read(missing, until=lambda m: len(m) >= 1, timeout=90)
    assert dead.value() == b"{not json"
    expected = expected_now(before + after)
    deployment.read(deployment.actions, until=converged(expected), timeout=60)
    assert_state_matches(store, expected)
    _wait(lambda: _ready(deployment.http_port) == 200, 30, "ready once the topic exists")
    assert worker.stop() == 0


def _true_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """End offset minus the group's committed offset, per partition, asked of the broker."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        committed = {tp.partition: tp.offset for tp in probe.committed(parts, timeout=10)}
        lag = {}
        for p in range(4):
            _low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            lag[p] = high - max(committed[p], 0)
        return lag
    finally:
        probe.close()


def test_missing_actions_topic_pauses_with_the_true_lag_then_publishes_in_order(
    apache_kafka: ApacheKafka,
    deployment: Deployment,
    store: Store,
    worker_in_process: Callable[..., Worker],
) -> None:
    """The actions topic does not exist: changes wait in the outbox, consumption pauses
    at the bound; a burst produced meanwhile shows in rfm_consumer_lag exactly as the
    broker counts it (end offset minus committed offset). Once the topic exists every
    change is published, in order."""
    missing = f"{deployment.actions}-missing"
    deployment.extra_env["RFM_ACTIONS_TOPIC"] = missing
    events = generate(150, seed=155)
    worker = worker_in_process()
    worker.max_backlog = 40
    records = records_of(events)
    deployment.produce(records[:100])
    _wait(lambda: worker.paused, 30, "consumption to pause")
    deployment.produce(records[100:])  # the burst: nobody consumes it while paused

    def reported() -> dict[int, int]:
        return {
            p: int(metrics.CONSUMER_LAG.labels(str(p))._value.get())  # type: ignore[attr-defined]
            for p in range(4)
        }

    truth: dict[int, int] = {}

    def agree() -> bool:
        truth.update(_true_lag(deployment.kafka.bootstrap, deployment.group, deployment.orders))
        return reported() == truth

    try:
        _wait(agree, 20, "rfm_consumer_lag to equal the broker's lag")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: reported {reported()}, broker {truth}") from None
    assert sum(truth.values()) >= len(records) - 100  # the burst, at least
    assert worker.paused

    create_topics(deployment.kafka.bootstrap, {missing: 4})
    expected = expected_now(events)
    actions = deployment.read(missing, until=converged(expected), timeout=120)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    _wait(lambda: sum(reported().values()) == 0, 20, "the lag to fall to 0")


@pytest.mark.parametrize(
    "protocol",
    [
        {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"},  # classic, cooperative
        {"group.protocol": "consumer"},  # KIP-848: timeouts are the broker's
    ],
    ids=["classic-cooperative-sticky", "consumer-protocol"],
)
def test_rebalances_under_both_group_protocols(
    apache_kafka: ApacheKafka, deployment: Deployment, store: Store, protocol: dict[str, str]
) -> None:
    """Workers join, leave (SIGTERM) and die (kill -9) mid-stream under the classic
    protocol with cooperative-sticky and under the consumer protocol set through
    RFM_KAFKA_CONFIG alone: the state is exact and every chain unbroken."""
    deployment.extra_env["RFM_KAFKA_CONFIG"] = orjson.dumps(protocol).decode()
    events = generate(400, seed=156)
    expected = expected_now(events)
    records = records_of(events)
    quarter = len(records) // 4
    first = deployment.worker()
    deployment.produce(records[:quarter])
    deployment.read(deployment.actions, until=lambda m: len(m) >= 50)
    second = deployment.worker()
    _wait(lambda: "assigned partitions [" in second.log().replace("[]", ""), 60, "a share")
    deployment.produce(records[quarter : 2 * quarter])
    third = deployment.worker()
    _wait(lambda: "assigned partitions [" in third.log().replace("[]", ""), 60, "a share")
    deployment.produce(records[2 * quarter : 3 * quarter])
    assert second.stop() == 0  # leaves: its partitions move to the others
    third.kill()  # dies: its partitions move once its session expires
    deployment.produce(records[3 * quarter :])
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=120)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert "revoked partitions" in first.log()
    assert first.stop() == 0


def test_rebalance_chaos_with_three_workers(
    apache_kafka: ApacheKafka, deployment: Deployment, store: Store
) -> None:
    """Three workers while the stream flows; rounds of kill -9 (then a new worker) and of
    SIGSTOP longer than the session timeout (the group moves on without the frozen one,
    which wakes up later): a dozen rebalances and more. The state is exact and every
    customer's chain unbroken."""
    rng = random.Random(157)
    events = generate(500, seed=157)
    expected = expected_now(events)
    records = records_of(events)
    chunks = [records[i : i + len(records) // 8] for i in range(0, len(records), len(records) // 8)]
    workers = [deployment.worker() for _ in range(3)]
    deployment.produce(chunks.pop(0))
    deployment.read(deployment.actions, until=lambda m: len(m) >= 50)
    for round_ in range(6):
        alive = [w for w in workers if w.proc is not None and w.proc.poll() is None]
        victim = rng.choice(alive)
        assert victim.proc is not None
        if round_ % 2 == 0:
            victim.kill()
            workers.append(deployment.worker())
        else:
            victim.proc.send_signal(signal.SIGSTOP)
        if chunks:
            deployment.produce(chunks.pop(0))
        time.sleep(8)  # past the 6 s session timeout: the group rebalances without it
        if round_ % 2:
            victim.proc.send_signal(signal.SIGCONT)
    for chunk in chunks:
        deployment.produce(chunk)
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=120)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    revokes = sum(w.log().count("assigned partitions") for w in workers)
    assert revokes >= 12, f"only {revokes} assignments"
