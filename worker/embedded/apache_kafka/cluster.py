"""A KRaft cluster of Apache Kafka nodes on loopback: formatted, started, stopped."""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from worker.embedded.apache_kafka.cache import (
    KafkaUnavailableError,
    archive_options,
    ensure_jars,
)
from worker.embedded.apache_kafka.node import KafkaNode
from worker.embedded.apache_kafka.scram import Scram
from worker.errors import RfmError

logger = logging.getLogger(__name__)


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


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


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
        self.jvm_options = archive_options() if jvm_options is None else list(jvm_options)
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
