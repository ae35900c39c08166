"""Shared fixtures: a real Redis per test process, real brokers shared by them.

All are started by the suite on free loopback ports. The brokers are those RFM_TEST_BROKER
names: `kafka` (Apache Kafka, worker/embedded/apache_kafka: fetched with Maven on first use),
`tansu` (worker/embedded.Tansu) or both (`kafka,tansu`: the demo paths on Tansu too); unset,
both where java and mvn are on PATH, else Tansu. Under pytest-xdist the controller starts
one of each for the session (`SharedBrokers`). A test that talks to a broker runs once per
broker, the broker in its id, and is marked `broker` here, one that uses the suite's
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
import socket
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
from worker.app import App
from worker.config import load_settings
from worker.embedded import (
    BrokerKind,
    EmbeddedRedis,
    Tansu,
    create_topics,
    free_port,
    start_broker,
)
from worker.embedded.apache_kafka import ApacheKafka, missing_tools
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

QUICK_JVM = "-XX:TieredStopAtLevel=1"  # the C1 compiler alone (pytest_configure)

# The xdist controller's brokers (SharedBrokers), in its config.
SHARED = pytest.StashKey["SharedBrokers"]()

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


def broker_kinds() -> tuple[BrokerKind, ...]:
    """The brokers RFM_TEST_BROKER names: `kafka`, `tansu`, or `kafka,tansu` (every broker
    test on Apache Kafka, the `demo_path` ones on Tansu too); unset, `kafka,tansu` where
    java and mvn are on PATH, else `tansu`."""
    value = os.environ.get("RFM_TEST_BROKER", "").strip().lower()
    if not value:
        return ("tansu",) if missing_tools() else ("kafka", "tansu")
    kinds = tuple(dict.fromkeys(k.strip() for k in value.split(",")))
    if not kinds or not set(kinds) <= {"kafka", "tansu"}:
        raise pytest.UsageError(f"RFM_TEST_BROKER={value!r}: expected kafka, tansu or kafka,tansu")
    return kinds  # type: ignore[return-value]


def brokers_for(demo_path: bool) -> list[BrokerKind]:
    """The brokers one broker test runs on: each named where one is named; with both, a
    demo path on both and any other on Apache Kafka, or on Tansu too where Apache Kafka
    cannot run here (its runs skip, saying why)."""
    kinds = broker_kinds()
    if len(kinds) == 1 or demo_path or missing_tools():
        return list(kinds)
    return ["kafka"]


def pytest_report_header(config: pytest.Config) -> str:
    kinds = broker_kinds()
    names = []
    if "kafka" in kinds:
        reason = missing_tools()
        names.append(f"Apache Kafka ({reason}: its runs skip)" if reason else "Apache Kafka")
    if "tansu" in kinds:
        names.append("Tansu (demo paths)" if len(kinds) > 1 else "Tansu")
    return "brokers: " + ", ".join(names)


def pytest_configure(config: pytest.Config) -> None:
    """Run in the background (`make test &`, nohup, some CI runners), the suite inherits
    SIGINT ignored, and so would every child it starts: tests that stop a child with
    SIGINT (as Ctrl-C does) would wait forever. Children get the default disposition.

    Under pytest-xdist, the controller starts the suite's brokers for every test process
    (`SharedBrokers`)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Every JVM the suite starts (its brokers, and those of `demo --broker kafka`) lives for
    # seconds to minutes under light traffic: the C2 compiler would burn more CPU than it
    # ever saves. Inherited by the test processes and their children.
    java_options = os.environ.get("JAVA_TOOL_OPTIONS", "")
    if QUICK_JVM not in java_options:
        os.environ["JAVA_TOOL_OPTIONS"] = f"{java_options} {QUICK_JVM}".strip()
    if _is_xdist_controller(config) and _may_select_broker_tests(config):
        config.stash[SHARED] = SharedBrokers(broker_kinds())


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(SHARED, None)
    if shared is not None:
        shared.close()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: tell each test process where the shared brokers listen."""
    shared = node.config.stash.get(SHARED, None)
    if shared is not None:
        node.workerinput["rfm_brokers"] = shared.addresses()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A broker test (it uses `kafka`) runs once per broker of `brokers_for`, the broker
    in its id (`test_x[kafka]`, `test_x[tansu]`)."""
    if "kafka" in metafunc.fixturenames:
        demo_path = metafunc.definition.get_closest_marker("demo_path") is not None
        metafunc.parametrize("kafka", brokers_for(demo_path), indirect=True)


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


# -- the suite's brokers: one of each kind for the session, shared by the test processes ---


def _is_xdist_controller(config: pytest.Config) -> bool:
    return (
        not hasattr(config, "workerinput")
        and config.getoption("dist", "no") != "no"
        and bool(config.getoption("tx", None))
        and not config.getoption("collectonly")
    )


def _may_select_broker_tests(config: pytest.Config) -> bool:
    """False where `-m` leaves out every broker test (`make unit`): no broker to start."""
    markexpr = config.getoption("markexpr", "")
    if not markexpr:
        return True
    try:  # pytest's own evaluator of -m (not a public API: when in doubt, start them)
        from _pytest.mark.expression import Expression

        expression = Expression.compile(markexpr)
        return any(
            expression.evaluate(lambda name, marks=marks, **_: name in marks)
            for marks in ({"broker", "redis"}, {"broker", "redis", "demo_path"})
        )
    except Exception:
        return True


class SharedBroker:
    """A broker that the xdist controller started (`SharedBrokers`), as a test process
    sees it: its address and what it is, not its process (a test that stops or freezes
    its broker takes one of its own: `own_broker`)."""

    def __init__(self, kind: BrokerKind, bootstrap: str, log: str) -> None:
        model: Any = Tansu if kind == "tansu" else ApacheKafka
        self.kind, self.bootstrap, self.log = kind, bootstrap, log
        self.name: str = model.name
        self.client_config: dict[str, str] = dict(model.client_config)
        self.auto_creates_topics: bool = model.auto_creates_topics
        self.exact_end_offsets: bool = model.exact_end_offsets
        self.proc = None
        port = int(bootstrap.rpartition(":")[2])
        # The controller does not wait for Apache Kafka to serve (the test processes start
        # meanwhile); with a fixed port it listens only once it serves.
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the suite's {self.name} is not listening on {port}: {log}")
            time.sleep(0.05)


class SharedBrokers:
    """In the xdist controller: one broker of each kind for the whole session, started
    before the test processes (Apache Kafka serves while they import and collect), killed
    at the end (their data is thrown away). One JVM instead of one per process: less CPU
    on two cores, no broker start in any test. Tests share it through unique topic and
    group names (`deployed`). Where Apache Kafka cannot run, its tests skip as they would."""

    def __init__(self, kinds: tuple[BrokerKind, ...]) -> None:
        self.brokers: dict[str, Any] = {}
        for kind in kinds:
            if kind == "kafka":
                if missing_tools():
                    continue
                self.brokers[kind] = ApacheKafka(wait=False)
            else:
                self.brokers[kind] = Tansu()

    def addresses(self) -> dict[str, tuple[str, str]]:
        """Per kind: its bootstrap, and where its log is (Apache Kafka's; Tansu has none)."""
        return {
            kind: (
                broker.bootstrap,
                f"its log: {broker.nodes[0].log_path}" if kind == "kafka" else "",
            )
            for kind, broker in self.brokers.items()
        }

    def close(self) -> None:
        for broker in self.brokers.values():
            broker.kill()
            broker.__exit__(None, None, None)


class SuiteBrokers:
    """In a test process: the shared brokers where the controller started them, else (no
    xdist) one of each kind started on first use and stopped at the end."""

    def __init__(self, shared: dict[str, tuple[str, str]]) -> None:
        self.shared = shared
        self.brokers: dict[str, Any] = {}
        self.owned: list[Any] = []

    def get(self, kind: BrokerKind) -> Any:
        if kind not in self.brokers:
            if kind in self.shared:
                self.brokers[kind] = SharedBroker(kind, *self.shared[kind])
            else:
                self.brokers[kind] = start_broker(kind)
                self.owned.append(self.brokers[kind])
        return self.brokers[kind]

    def close(self) -> None:
        for broker in self.owned:
            broker.__exit__(None, None, None)


@pytest.fixture(scope="session")
def suite_brokers(pytestconfig: pytest.Config) -> Iterator[SuiteBrokers]:
    workerinput = getattr(pytestconfig, "workerinput", {})
    brokers = SuiteBrokers(workerinput.get("rfm_brokers", {}))
    try:
        yield brokers
    finally:
        brokers.close()


def _usable(kind: BrokerKind) -> BrokerKind:
    if kind == "kafka" and (reason := missing_tools()):
        pytest.skip(reason)
    return kind


@pytest.fixture
def kafka(request: pytest.FixtureRequest, suite_brokers: SuiteBrokers) -> Any:
    """The suite's broker of this run of the test (its id says which: `brokers_for`),
    shared for the session."""
    return suite_brokers.get(_usable(request.param))


@pytest.fixture
def own_broker(kafka: Any) -> Iterator[Any]:
    """A broker of the same kind for this test alone: for a test that stops or freezes
    its broker, which would stall every other test on the shared one."""
    broker = start_broker(kafka.kind)
    try:
        yield broker
    finally:
        broker.__exit__(None, None, None)


@pytest.fixture
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
    """`python -m worker run` as a child process, as an operator would run it; `python`
    and `cwd`: another release's (tests/releases.py)."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        python: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.env, self.log_path = env, log_path
        self.python, self.cwd = python or Path(sys.executable), cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "worker", "run"],
            env=self.env,
            stdout=log,
            stderr=log,
            cwd=self.cwd,
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
    # librdkafka settings of the test's own producer and readers: a login, on a broker
    # that takes logins (tests/kafka/test_least_privilege.py).
    login: dict[str, str] = field(default_factory=dict)

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

    def worker(self, python: Path | None = None, cwd: Path | None = None) -> WorkerProcess:
        """Start a worker; the first serves HTTP on `http_port`, others on free ports.
        `python` and `cwd`: run another release (tests/releases.py)."""
        env = self.env()
        if self.workers:
            env["RFM_HTTP_PORT"] = str(free_port())
        if python is not None:
            env.pop("PYTHONPATH", None)  # its own `worker`, not this checkout's
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        proc = WorkerProcess(env, log, python, cwd)
        self.workers.append(proc)
        return proc.start()

    def producer(self, **config: Any) -> Producer:
        """An idempotent producer: a retried batch (a fresh topic's leader not known yet on
        Apache Kafka) never lands after a later one, so offsets follow produce order."""
        return Producer(
            {
                "bootstrap.servers": self.kafka.bootstrap,
                "enable.idempotence": True,
                **self.login,
                **config,
            }
        )

    def produce(self, records: list[tuple[bytes | None, bytes]]) -> None:
        producer = self.producer(**{"linger.ms": 5})
        try:
            for key, value in records:
                producer.produce(self.orders, key=key, value=value)
            assert producer.flush(30) == 0
        finally:
            producer.close()

    def command(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`rfm-worker ARGS` with this deployment's settings, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def read(
        self, topic: str, *, until: Callable[[list[Any]], bool], timeout: float = 60
    ) -> list[Any]:
        """Read a topic from the start (no group) until `until(messages)` or timeout."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap,
                "group.id": f"reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                **self.login,
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
def own_deployment(
    own_broker: Any, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Deployment]:
    """A deployment on a broker of the test's own (`own_broker`): the test may freeze it."""
    with deployed(own_broker, redis_server, tmp_path) as dep:
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
        worker = App(
            settings,
            Profiles.builtin(),
            Store(wrap_redis(client) if wrap_redis else client),
            wrap_producer(producer) if wrap_producer else producer,
            admin=clients.admin(settings),
        ).worker
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
