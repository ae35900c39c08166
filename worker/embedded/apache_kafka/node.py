"""One Apache Kafka node: a combined KRaft broker+controller, its data in a folder of its
own, started as `java -cp 'lib/*' kafka.Kafka` on fixed free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker.embedded.apache_kafka.cache import KafkaUnavailableError, archive_options
from worker.embedded.apache_kafka.scram import Scram
from worker.embedded.processes import die_with_parent, free_port, wait_for_port
from worker.errors import RfmError

LOG_CONFIG = Path(__file__).parent / "log4j2.properties"
HEAP = "-Xmx512m"
START_TIMEOUT = 90.0  # seconds: a cold JVM on a busy 2-core machine


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
                *archive_options(),
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
