"""Apache Kafka's jars, fetched with Maven into a cache folder once, and where the class
archive of its JVMs is kept beside them."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from worker.errors import RfmError

logger = logging.getLogger(__name__)

POM = Path(__file__).parent / "pom.xml"


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


def archive_options() -> list[str]:
    archive = class_archive()
    return [f"-XX:SharedArchiveFile={archive}"] if archive.exists() else []
