"""Shared fixtures: a real Redis and a real broker, one each per test process.

Both are started by the suite on free loopback ports. The broker is the one RFM_TEST_BROKER
names: `kafka` (Apache Kafka, worker/embedded/apache_kafka: fetched with Maven on first use) or
`tansu` (worker/embedded.Tansu); unset, Apache Kafka where java and mvn are on PATH, else
Tansu. A test that talks to a broker is marked `broker` here, one that uses the suite's
Redis or Redis Cluster `redis`, one that needs neither `unit` (docs/development.md).
Apache Kafka runs without java or mvn are skipped with that reason, said once; anything
else that cannot start fails loudly instead of skipping.

Shared helpers that are not fixtures: tests/factories.py (instants, profiles, events),
tests/reference.py (the expected outcome), tests/fixtures.py (running the worker and
checking what it did), tests/strategies.py (Hypothesis models).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.cluster import EmbeddedCluster
from worker.config import load_settings
from worker.embedded import BrokerKind, EmbeddedRedis, create_topics, free_port, start_broker
from worker.embedded.apache_kafka import missing_tools
from worker.kafka import clients
from worker.rules.profiles import Profiles
from worker.services.consumer import Worker
from worker.state import connection
from worker.state.store import Store

# The shared helper modules' asserts report their values, as the tests' own do (before
# any test module imports them).
pytest.register_assert_rewrite(
    "tests.factories", "tests.fixtures", "tests.reference", "tests.strategies"
)

# Fixtures that give a test the suite's Redis (the others it needs depend on these).
REDIS_FIXTURES = frozenset({"redis_server", "redis_cluster"})


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the suite's own Redis, emptied before each test (never a shared one)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client)


def broker_kind() -> BrokerKind:
    kind = os.environ.get("RFM_TEST_BROKER", "").strip().lower()
    if kind in ("kafka", "tansu"):
        return kind  # type: ignore[return-value]
    if kind:
        raise pytest.UsageError(f"RFM_TEST_BROKER={kind!r}: expected kafka or tansu")
    return "tansu" if missing_tools() else "kafka"


def pytest_report_header(config: pytest.Config) -> str:
    kind = broker_kind()
    if kind == "kafka":
        reason = missing_tools()
        return (
            f"broker: Apache Kafka ({reason}: broker tests skip)"
            if reason
            else "broker: Apache Kafka"
        )
    return "broker: Tansu"


def pytest_configure(config: pytest.Config) -> None:
    """Run in the background (`make test &`, nohup, some CI runners), the suite inherits
    SIGINT ignored, and so would every child it starts: tests that stop a child with
    SIGINT (as Ctrl-C does) would wait forever. Children get the default disposition."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that talks to a broker (it uses the `kafka` fixture, directly or
    through `deployment`), so `-m broker` selects exactly those; and every test that uses
    the suite's Redis or Redis Cluster (`redis_server` or `redis_cluster`, directly or
    through `redis_client`, `store`, `cluster_client`, `deployment`, ...) `redis`; what
    needs neither is `unit`. `item.fixturenames` is the whole closure, autouse included."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        needs = False
        if {"kafka", "apache_kafka"} & fixtures:
            item.add_marker(pytest.mark.broker)
            needs = True
        if REDIS_FIXTURES & fixtures:
            item.add_marker(pytest.mark.redis)
            needs = True
        if not needs and item.get_closest_marker("redis") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def kafka() -> Iterator[Any]:
    """The suite's broker (RFM_TEST_BROKER): Tansu or Apache Kafka, one per test process."""
    kind = broker_kind()
    if kind == "kafka" and (reason := missing_tools()):
        pytest.skip(reason)
    broker = start_broker(kind)
    try:
        yield broker
    finally:
        broker.__exit__(None, None, None)


@pytest.fixture(scope="session")
def apache_kafka(kafka: Any) -> Any:
    """The suite's broker where it is Apache Kafka; tests of what only a real broker shows."""
    if kafka.kind != "kafka":
        pytest.skip("needs Apache Kafka (RFM_TEST_BROKER=kafka)")
    return kafka


@pytest.fixture
def profiles() -> Profiles:
    return Profiles.builtin()


# -- integration helpers: unique topics, a worker process, produce and read ---------------


class WorkerProcess:
    """`python -m worker run` as a child process, as an operator would run it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=self.env, stdout=log, stderr=log
        )
        log.close()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Deployment:
    """Fresh topics and a worker configuration on the suite's broker and Redis."""

    kafka: Any  # Tansu or ApacheKafka
    redis_server: EmbeddedRedis
    tmp_path: Path
    orders: str
    actions: str
    dlq: str
    group: str
    http_port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RFM_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "RFM_KAFKA_GROUP": self.group,
            "RFM_KAFKA_CONFIG": orjson.dumps(
                {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
                | self.kafka.client_config
            ).decode(),
            "RFM_ORDERS_TOPIC": self.orders,
            "RFM_ACTIONS_TOPIC": self.actions,
            "RFM_DLQ_TOPIC": self.dlq,
            "RFM_REDIS_URL": self.redis_server.url,
            "RFM_HTTP_PORT": str(self.http_port),
            **self.extra_env,
        }

    def worker(self) -> WorkerProcess:
        """Start a worker; the first serves HTTP on `http_port`, others on free ports."""
        env = self.env()
        if self.workers:
            env["RFM_HTTP_PORT"] = str(free_port())
        proc = WorkerProcess(env, self.tmp_path / f"worker-{len(self.workers)}.log")
        self.workers.append(proc)
        return proc.start()

    def producer(self, **config: Any) -> Producer:
        """An idempotent producer: a retried batch (a fresh topic's leader not known yet on
        Apache Kafka) never lands after a later one, so offsets follow produce order."""
        return Producer(
            {"bootstrap.servers": self.kafka.bootstrap, "enable.idempotence": True, **config}
        )

    def produce(self, records: list[tuple[bytes | None, bytes]]) -> None:
        producer = self.producer(**{"linger.ms": 5})
        try:
            for key, value in records:
                producer.produce(self.orders, key=key, value=value)
            assert producer.flush(30) == 0
        finally:
            producer.close()

    def read(
        self, topic: str, *, until: Callable[[list[Any]], bool], timeout: float = 60
    ) -> list[Any]:
        """Read a topic from the start (no group) until `until(messages)` or timeout."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap,
                "group.id": f"reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not until(messages):
                messages += [m for m in consumer.consume(1000, 0.2) if not m.error()]
        finally:
            consumer.close()
        return messages


@contextlib.contextmanager
def deployed(
    kafka: Any, redis_server: EmbeddedRedis, tmp_path: Path, replication: int = 1
) -> Iterator[Deployment]:
    """Fresh topics (4 / 4 / 1 partitions) and a group on this broker and Redis; the
    workers started on them are killed at the end."""
    suffix = uuid.uuid4().hex[:8]
    dep = Deployment(
        kafka,
        redis_server,
        tmp_path,
        f"orders-{suffix}",
        f"actions-{suffix}",
        f"dlq-{suffix}",
        f"group-{suffix}",
        free_port(),
    )
    create_topics(
        kafka.bootstrap,
        {dep.orders: 4, dep.actions: 4, dep.dlq: 1},
        replication_factor=replication,
    )
    try:
        yield dep
    finally:
        for proc in dep.workers:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()


@pytest.fixture
def deployment(
    kafka: Any, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Deployment]:
    with deployed(kafka, redis_server, tmp_path) as dep:
        yield dep


@pytest.fixture
def worker_in_process(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Worker]]:
    """Start the Worker loop in a thread of the test process, configured for `deployment`:
    `start(wrap_redis=..., wrap_producer=...)` lets a test put a fault injector between it
    and its Redis client or producer. Every worker started is stopped afterwards."""
    threads: list[tuple[Worker, threading.Thread]] = []
    closing: list[Callable[[], object]] = []  # what each worker opened

    def start(wrap_redis: Any = None, wrap_producer: Any = None) -> Worker:
        for name, value in deployment.env().items():
            if name.startswith("RFM_"):
                monkeypatch.setenv(name, value)
        settings = load_settings()
        client = connection.redis_client(settings)
        producer = clients.producer(settings)
        closing.extend([producer.close, client.close])
        worker = Worker(
            settings,
            Profiles.builtin(),
            Store(wrap_redis(client) if wrap_redis else client),
            clients.consumer(settings),
            wrap_producer(producer) if wrap_producer else producer,
        )
        thread = threading.Thread(target=worker.run, name=f"worker-{id(worker)}", daemon=True)
        thread.start()
        threads.append((worker, thread))
        return worker

    yield start
    for worker, thread in threads:
        worker.stop()
        thread.join(30)
    for close in closing:
        close()


# -- Redis Cluster: three masters on loopback (tests/cluster.py) --------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    """A 3-master Redis Cluster for the session; tests may migrate its slots."""
    with EmbeddedCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_client(redis_cluster: EmbeddedCluster) -> Iterator[redis.RedisCluster]:
    """A cluster client of the suite's own cluster, emptied (every master) before each test."""
    redis_cluster.stabilize()  # no slot left half-migrated by an earlier test
    client = redis_cluster.client()
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield client
    client.close()
