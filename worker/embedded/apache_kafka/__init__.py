"""Apache Kafka started by the project itself: for the tests, the benchmark and
`rfm-worker demo --broker kafka`.

The broker comes from Maven Central as jars (pom.xml beside this file; no tarball, no bin/
scripts), copied once into a cache folder (`make kafka`, or on first use). Each node is a
combined KRaft broker+controller started as `java -cp 'lib/*' kafka.Kafka` on fixed free
loopback ports: with a fixed port Kafka opens its client listener only once it serves, so
"port open" means ready. Its data lives in a folder of its own, so a node can be stopped
and started again with its log on disk; its output goes to `broker.log` there.

`sasl=Scram(...)` secures it as a production cluster is: the client listener takes
SASL/SCRAM-SHA-512 logins only, and the StandardAuthorizer enforces ACLs (its admin user is
the super user; the others may do what ACLs grant them). Without it, a plain listener and
no authorizer.

Where java or mvn is missing, `KafkaUnavailableError` says so in one line (the test suite skips
the Kafka runs with that reason).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from worker.embedded.processes import die_with_parent, free_port, wait_for_port
from worker.errors import RfmError

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
POM = HERE / "pom.xml"
LOG_CONFIG = HERE / "log4j2.properties"
HEAP = "-Xmx512m"
START_TIMEOUT = 90.0  # seconds: a cold JVM on a busy 2-core machine


class KafkaUnavailableError(RfmError):
    """Apache Kafka cannot be run here (no java or mvn, or the jars cannot be fetched)."""


def cache_dir() -> Path:
    """Where the jars are kept: RFM_KAFKA_CACHE, else ~/.cache/rfm-worker/kafka-<pom digest>.

    The folder is named after the pom's content, so a new Kafka version gets a new folder
    and an unchanged pom never downloads again.
    """
    configured = os.environ.get("RFM_KAFKA_CACHE")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return base / "rfm-worker" / f"kafka-{digest}"


def missing_tools() -> str | None:
    """Why Apache Kafka cannot run here, in a few words, or None."""
    absent = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if absent:
        return f"Apache Kafka needs {' and '.join(absent)} on PATH (a JDK 17+ and Maven)"
    return None


def ensure_jars(quiet: bool = True) -> Path:
    """The folder of the broker's jars, fetched with Maven on first use (then nothing)."""
    lib = cache_dir() / "lib"
    done = lib / ".complete"
    if done.exists():
        return lib
    reason = missing_tools()
    if reason:
        raise KafkaUnavailableError(reason)
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Several test processes may ask at once: one fetches, the others wait for it.
    with (lib.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return lib
        logger.info("fetching Apache Kafka's jars with Maven into %s", lib)
        shutil.rmtree(lib, ignore_errors=True)
        command = [
            "mvn",
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(lib.glob("kafka_2.13-*.jar")):
            tail = " ".join((result.stdout + result.stderr).split())[-300:]
            raise KafkaUnavailableError(f"mvn could not fetch Apache Kafka's jars: {tail}")
        done.touch()
    return lib


def class_archive() -> Path:
    """Where the classes a broker loads are archived for the JVM (AppCDS), beside the jars.

    A broker started on the archive is ready in about half the time and CPU: the suite
    starts several, on two cores. Made once by `make kafka` (`ensure_class_archive`); a
    JVM that cannot use it (another JDK) says so in its log and starts without it.
    """
    return cache_dir() / "classes.jsa"


def _archive_options() -> list[str]:
    archive = class_archive()
    return [f"-XX:SharedArchiveFile={archive}"] if archive.exists() else []


def ensure_class_archive() -> Path | None:
    """The class archive, made on first use by a broker that starts, serves a topic and a
    consumer group, and stops cleanly: its JVM writes the classes it loaded as it exits.
    None where it wrote none (brokers then start without it, only slower)."""
    archive = class_archive()
    if archive.exists():
        return archive
    lib = ensure_jars()
    with (archive.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return archive
        partial = archive.with_name(f"{archive.name}.{os.getpid()}.partial")
        with ApacheKafka(jvm_options=[f"-XX:ArchiveClassesAtExit={partial}"]) as kafka:
            _exercise(kafka.bootstrap)
        # A damaged archive would crash every JVM given it: one that cannot serve a small
        # tool is thrown away.
        tool = subprocess.run(
            [
                *("java", f"-XX:SharedArchiveFile={partial}", "-Xshare:on"),
                *("-cp", f"{lib}/*", "kafka.tools.StorageTool", "random-uuid"),
            ],
            capture_output=True,
            check=False,
        )
        if tool.returncode != 0:
            partial.unlink(missing_ok=True)
            return None
        partial.rename(archive)
    return archive


def _exercise(bootstrap: str) -> None:
    """A topic created, a record produced, then read back by a consumer group: the
    classes of what the tests and the demo do, loaded (for the class archive)."""
    from confluent_kafka import Consumer, Producer

    from worker.embedded.local import create_topics

    create_topics(bootstrap, {"warm-up": 1})
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce("warm-up", b"x")
    producer.flush(30)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "warm-up", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe(["warm-up"])
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                consumer.commit(message=message, asynchronous=False)
                break
    finally:
        consumer.close()


@dataclass(frozen=True)
class Scram:
    """SASL/SCRAM-SHA-512 logins and ACLs on a broker: `users` (name -> password) are created
    when its storage is formatted; `admin`, one of them, is the super user, the identity the
    broker itself uses on its own listener and the one that grants ACLs to the others."""

    users: Mapping[str, str]
    admin: str = "admin"
    mechanism: ClassVar[str] = "SCRAM-SHA-512"

    def client_config(self, user: str) -> dict[str, str]:
        """librdkafka's settings to log in as `user`."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": self.mechanism,
            "sasl.username": user,
            "sasl.password": self.users[user],
        }

    def properties(self) -> dict[str, str]:
        """The node's settings besides its listeners (SASL_PLAINTEXT, KafkaNode.config): the
        broker logs in to its own client listener as the admin with SCRAM; the controller's
        listener takes PLAIN, as SCRAM's credentials live in the metadata log that the
        controller serves."""
        password = self.users[self.admin]
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        login = f'username="{self.admin}" password="{password}"'
        return {
            "sasl.enabled.mechanisms": self.mechanism,
            "sasl.mechanism.inter.broker.protocol": self.mechanism,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                f"{scram} required {login};"
            ),
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required {login} user_{self.admin}="{password}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{self.admin}",
        }

    def format_arguments(self) -> list[str]:
        return [
            f"--add-scram={self.mechanism}=[name={name},password={password}]"
            for name, password in self.users.items()
        ]


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaNode:
    """One combined broker+controller node, its data in `directory`."""

    def __init__(
        self,
        node_id: int,
        directory: Path,
        properties: Mapping[str, str],
        sasl: Scram | None = None,
    ) -> None:
        self.node_id = node_id
        self.directory = directory
        self.port = free_port()
        self.controller_port = free_port()
        self.properties = dict(properties)
        self.sasl = sasl
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "broker.log"

    def config(self, voters: str) -> str:
        protocol = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"  # both listeners
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": (
                f"{protocol}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"{protocol}://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": protocol,
            "listener.security.protocol.map": f"{protocol}:{protocol},CONTROLLER:{protocol}",
            "log.dirs": str(self.directory / "data"),
            **(self.sasl.properties() if self.sasl else {}),
            **self.properties,
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def format(self, lib: Path, voters: str, cluster_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "server.properties"
        path.write_text(self.config(voters), encoding="utf-8")
        result = subprocess.run(
            [
                "java",
                *_archive_options(),
                f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                "-cp",
                f"{lib}/*",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",  # an id may start with "-": never a lone word
                "-c",
                str(path),
                *(self.sasl.format_arguments() if self.sasl else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = " ".join((result.stdout + result.stderr).split())[-300:]
            raise KafkaUnavailableError(f"formatting Apache Kafka's storage failed: {tail}")

    def launch(self, lib: Path, jvm_options: Sequence[str] = ()) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "java",
                    *jvm_options,
                    HEAP,
                    "-Xms128m",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                    "-cp",
                    f"{lib}/*",
                    "kafka.Kafka",
                    str(self.directory / "server.properties"),
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # never outlives the demo or test that started it
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.proc is not None
        try:
            wait_for_port(self.port, self.proc, f"Apache Kafka node {self.node_id}", timeout)
        except RfmError as exc:
            raise RfmError(f"{exc}; its log: {self.log_path}") from exc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """A clean shutdown (SIGTERM: the node hands its leaderships over), then SIGKILL."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Stop at once, as a crash would: the data stays on disk."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


def broker_properties(nodes: int) -> dict[str, str]:
    """Settings for a small test cluster: a replication factor of `nodes` everywhere, a
    min ISR of 2 where there are 3+ nodes, no waiting for more members before the first
    rebalance, no auto-created topics (as in production), short group timeouts so a
    killed worker's partitions move within seconds under both group protocols."""
    isr = "2" if nodes >= 3 else "1"
    return {
        "num.partitions": "1",
        "default.replication.factor": str(nodes),
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": str(nodes),
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": str(nodes),
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": str(nodes),
        "share.coordinator.state.topic.min.isr": isr,
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "6000",
        "group.consumer.min.session.timeout.ms": "6000",
        "group.consumer.session.timeout.ms": "6000",
        "group.consumer.min.heartbeat.interval.ms": "500",
        "group.consumer.heartbeat.interval.ms": "500",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "background.threads": "4",
    }


class ApacheKafka:
    """A KRaft cluster of `nodes` combined nodes on loopback (1 for the suite and the demo).

    Formatted and started at construction (`wait=False`: launched, `wait_ready()` later);
    `stop()` then `start()` restarts every node with its data; `with ApacheKafka() as
    kafka:` stops and removes it at the end. `sasl=Scram(...)`: logins and ACLs (`Scram`);
    `admin_config` then logs a client in as its super user.
    """

    name = "Apache Kafka"
    kind = "kafka"
    client_config: ClassVar[dict[str, str]] = {}  # librdkafka's defaults are right for it
    auto_creates_topics = False
    exact_end_offsets = True

    def __init__(
        self,
        nodes: int = 1,
        *,
        directory: Path | None = None,
        properties: Mapping[str, str] | None = None,
        wait: bool = True,
        jvm_options: Sequence[str] | None = None,
        sasl: Scram | None = None,
    ) -> None:
        if shutil.which("java") is None:
            raise KafkaUnavailableError("Apache Kafka needs java on PATH (a JDK 17+)")
        self.lib = ensure_jars()
        # By default its nodes start on the class archive, where there is one.
        self.jvm_options = _archive_options() if jvm_options is None else list(jvm_options)
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="rfm-kafka-")
        root = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        props = {**broker_properties(nodes), **(properties or {})}
        self.sasl = sasl
        self.nodes = [KafkaNode(i + 1, root / f"node-{i + 1}", props, sasl) for i in range(nodes)]
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        cluster_id = _cluster_id()
        self._starting: list[KafkaNode] = []
        self._started = 0.0
        for node in self.nodes:
            node.format(self.lib, voters, cluster_id)
        self.start(wait=wait)

    def start(self, *, wait: bool = True) -> None:
        """Start every node that is not running, then wait for all (a quorum of several
        nodes forms only once enough of them are up). `wait=False` returns once they are
        launched, for a caller that has other work meanwhile (`wait_ready()` later)."""
        self._started = time.monotonic()
        self._starting = [node for node in self.nodes if not node.running]
        for node in self._starting:
            node.launch(self.lib, self.jvm_options)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the nodes the last `start()` launched to serve."""
        try:
            for node in self._starting:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        self._starting = []
        logger.info(
            "Apache Kafka (%d node(s)) ready at %s in %.1f s",
            len(self.nodes),
            self.bootstrap,
            time.monotonic() - self._started,
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def admin_config(self) -> dict[str, str]:
        """librdkafka's settings for a client that may do anything: the super user's login
        where the broker takes logins, else none."""
        return self.sasl.client_config(self.sasl.admin) if self.sasl else {}

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.nodes[0].proc

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RfmError("Apache Kafka is not started")
        return self.proc.pid

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def stop(self, timeout: float = 30) -> None:
        """Stop every node at once (one by one, the last would wait for a lost quorum)."""
        running = [node for node in self.nodes if node.running]
        for node in running:
            assert node.proc is not None
            with contextlib.suppress(ProcessLookupError):
                node.proc.terminate()
        deadline = time.monotonic() + timeout
        for node in running:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
