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

One module per concern, their names gathered here: cache.py (the jars, fetched with Maven),
class_archiving.py (making the JVMs' class archive), scram.py (logins and ACLs), node.py (one
node) and cluster.py (`ApacheKafka`, a cluster of nodes).
"""

from worker.embedded.apache_kafka.cache import (
    KafkaUnavailableError,
    cache_dir,
    class_archive,
    ensure_jars,
    missing_tools,
)
from worker.embedded.apache_kafka.class_archiving import ensure_class_archive
from worker.embedded.apache_kafka.cluster import ApacheKafka, broker_properties
from worker.embedded.apache_kafka.node import KafkaNode
from worker.embedded.apache_kafka.scram import Scram

__all__ = [
    "ApacheKafka",
    "KafkaNode",
    "KafkaUnavailableError",
    "Scram",
    "broker_properties",
    "cache_dir",
    "class_archive",
    "ensure_class_archive",
    "ensure_jars",
    "missing_tools",
]
