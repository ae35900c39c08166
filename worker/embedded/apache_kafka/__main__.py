"""`python -m worker.embedded.apache_kafka` (`make kafka`): fetch the jars into the cache,
and archive the classes a broker loads (`ensure_class_archive`), once.

Exits 0 either way: without java or mvn it says so in one line, and the suite runs its
broker tests on Tansu alone.
"""

import sys

from worker.embedded.apache_kafka import (
    KafkaUnavailableError,
    ensure_class_archive,
    ensure_jars,
    missing_tools,
)


def main() -> int:
    try:
        if reason := missing_tools():
            raise KafkaUnavailableError(reason)
        lib = ensure_jars(quiet=False)
    except KafkaUnavailableError as exc:
        print(f"Apache Kafka is not available here ({exc}): its test runs are skipped")
        return 0
    print(f"Apache Kafka's jars: {lib}")
    archive = ensure_class_archive()
    print(f"Apache Kafka's class archive: {archive or 'none (its brokers start without)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
