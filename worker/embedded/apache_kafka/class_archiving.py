"""The class archive of Apache Kafka's JVMs (AppCDS), made once by a broker that serves
what the tests and the demo do (`make kafka`)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

from worker.embedded.apache_kafka.cache import class_archive, ensure_jars
from worker.embedded.apache_kafka.cluster import ApacheKafka


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
