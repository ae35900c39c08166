"""`python -m worker.embedded.apache_kafka` (`make kafka`): fetch the jars into the cache.

Exits 0 either way: without java or mvn it says so in one line, and the suite runs its
broker tests on Tansu alone.
"""

import sys

from worker.embedded.apache_kafka import KafkaUnavailableError, ensure_jars, missing_tools


def main() -> int:
    try:
        if reason := missing_tools():
            raise KafkaUnavailableError(reason)
        lib = ensure_jars(quiet=False)
    except KafkaUnavailableError as exc:
        print(f"Apache Kafka is not available here ({exc}): its test runs are skipped")
        return 0
    print(f"Apache Kafka's jars: {lib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
