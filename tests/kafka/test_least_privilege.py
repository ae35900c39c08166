"""Least privilege (docs/operations.md, Least privilege): the worker, `sweep --once` and
`rebuild` on Apache Kafka with SASL/SCRAM-SHA-512 and only the ACLs the docs grant, and on
Redis over TLS as an ACL user with only the commands the docs list; then the same with one
grant taken away, which fails visibly.

Apache Kafka only (Tansu has no SASL); Redis is Debian's `redis-server` (TLS), skipped with
the reason where the one on PATH has no TLS.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import TopicCollection
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import (
    BAD_RECORDS,
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    final_scores,
    records_of,
)
from tests.reference import expected_now
from worker.embedded import create_topics, free_port
from worker.embedded.apache_kafka import ApacheKafka, Scram
from worker.embedded.processes import Child, die_with_parent, wait_for_port
from worker.errors import RfmError
from worker.state import permissions
from worker.state.cut_points import CutPoints
from worker.state.store import Store

USER, PASSWORD = "rfm-worker", "worker-secret"
ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
ORDERS, ACTIONS, DLQ, GROUP = "orders", "rfm.actions", "orders.dlq", "rfm-worker"

# The Redis ACL rule of docs/operations.md for the worker's user, as written there.
REDIS_RULE = "on >{password} " + permissions.ACL_RULE

# The Kafka ACLs of docs/operations.md for User:rfm-worker (Read and Write imply Describe).
KAFKA_ACLS: list[tuple[ResourceType, str, AclOperation]] = [
    (ResourceType.TOPIC, ORDERS, AclOperation.READ),
    (ResourceType.GROUP, GROUP, AclOperation.READ),
    (ResourceType.TOPIC, ACTIONS, AclOperation.WRITE),
    (ResourceType.TOPIC, DLQ, AclOperation.WRITE),
]


# -- Redis over TLS with ACL users ------------------------------------------------------------


def tls_redis_binary() -> str:
    """Debian's redis-server (built with TLS); skips with the reason where there is none."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("needs redis-server with TLS on PATH (Debian: apt-get install redis-server)")
    return found


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signs for 127.0.0.1 (what clients check)."""
    paths = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-keyout", str(paths["ca-key"]), "-out", str(paths["ca"]), "-subj", "/CN=rfm test CA"),
    )
    request = folder / "server.csr"
    openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(paths["server-key"])),
        *("-out", str(request), "-subj", "/CN=127.0.0.1"),
    )
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    openssl(
        *("x509", "-req", "-in", str(request), "-days", "2", "-CA", str(paths["ca"])),
        *("-CAkey", str(paths["ca-key"]), "-CAcreateserial", "-out", str(paths["server"])),
        *("-extfile", str(extensions)),
    )
    return paths


class TlsRedis(Child):
    """redis-server on a TLS port only (no plain port), its users from an ACL file: the
    default user off, an admin, and the worker's user with `rule`."""

    name = "redis-server (TLS)"

    def __init__(self, folder: Path, rule: str) -> None:
        super().__init__()
        binary = tls_redis_binary()
        self.certs = make_certificates(folder)
        acl = folder / "users.acl"
        acl.write_text(
            "user default off\n"
            f"user {ADMIN} on >{ADMIN_PASSWORD} ~* &* +@all\n"
            f"user {USER} {rule.format(password=PASSWORD)}\n",
            encoding="utf-8",
        )
        argv = [
            binary,
            *("--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(self.certs["server"])),
            *("--tls-key-file", str(self.certs["server-key"])),
            *("--tls-ca-cert-file", str(self.certs["ca"])),
            *("--tls-auth-clients", "no", "--aclfile", str(acl)),
            *("--save", "", "--appendonly", "no", "--dir", str(folder)),
        ]
        log = folder / "redis.log"  # its own words, where a build without TLS says so
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=out, start_new_session=True, preexec_fn=die_with_parent()
            )
        try:
            wait_for_port(self.port, self.proc, self.name, timeout=20)
        except RfmError:
            said = log.read_text(errors="replace")
            if "Bad directive" in said and "tls-" in said:
                pytest.skip(f"the redis-server on PATH has no TLS ({binary}: {said.strip()})")
            raise RfmError(f"redis-server with TLS did not start: {said.strip()}") from None

    @property
    def url(self) -> str:
        """The worker's login (Deployment.env gives it the worker)."""
        return self.url_for(USER, PASSWORD)

    def url_for(self, user: str, password: str) -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.certs['ca']}"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url_for(ADMIN, ADMIN_PASSWORD))


# -- Apache Kafka with SASL/SCRAM and ACLs ----------------------------------------------------


def acl(resource: ResourceType, name: str, operation: AclOperation) -> AclBinding:
    return AclBinding(
        resource,
        name,
        ResourcePatternType.LITERAL,
        f"User:{USER}",
        "*",
        operation,
        AclPermissionType.ALLOW,
    )


def grant(admin: AdminClient, bindings: list[AclBinding]) -> None:
    for future in admin.create_acls(bindings, request_timeout=10).values():
        future.result()


def revoke(admin: AdminClient, binding: AclBinding) -> None:
    pattern = AclBindingFilter(
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )
    for future in admin.delete_acls([pattern], request_timeout=10).values():
        assert len(future.result()) == 1


@pytest.fixture
def secured(apache_kafka: ApacheKafka, tmp_path: Path) -> Iterator[Deployment]:
    """The three topics on a broker of the test's own with logins and ACLs, the worker's
    user granted KAFKA_ACLS; Redis over TLS with the worker's user as REDIS_RULE says. The
    Deployment's workers log in as that user, its producer and readers as the admin."""
    scram = Scram({ADMIN: ADMIN_PASSWORD, USER: PASSWORD}, admin=ADMIN)
    redis_folder = tmp_path / "redis"
    redis_folder.mkdir()
    with TlsRedis(redis_folder, REDIS_RULE) as server, ApacheKafka(sasl=scram) as kafka:
        create_topics(kafka.bootstrap, {ORDERS: 4, ACTIONS: 4, DLQ: 1}, config=kafka.admin_config)
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap, **kafka.admin_config})
        grant(admin, [acl(*entry) for entry in KAFKA_ACLS])
        dep = Deployment(
            kafka,
            server,  # what a Deployment uses of it is `url`: the worker's login
            tmp_path,
            ORDERS,
            ACTIONS,
            DLQ,
            GROUP,
            free_port(),
            login=kafka.admin_config,
        )
        dep.extra_env["RFM_KAFKA_CONFIG"] = orjson.dumps(
            {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
            | scram.client_config(USER)
        ).decode()
        try:
            yield dep
        finally:
            for worker in dep.workers:
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.kill()


def admin_store(dep: Deployment) -> Store:
    """The state as the admin reads it (the test's checks, never the worker's login)."""
    return Store(dep.redis_server.admin())


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.redis  # its own, over TLS, not the suite's
def test_worker_sweep_and_rebuild_with_only_the_documented_grants(secured: Deployment) -> None:
    """Placed, refunded and cancelled orders with duplicates and bad records: the state is
    the recomputation, every change published, every bad record dead-lettered, the read
    API answers; `sweep --once` and `rebuild --yes` run with the same logins, as do the
    profile locks and the topic id lookup; Redis refused the worker's user nothing but the
    checks the worker tolerates."""
    dep = secured
    store = admin_store(dep)
    store.redis.config_resetstat()
    events = generate(60, seed=261)
    records = records_of(events)
    for i, (value, _class) in enumerate(BAD_RECORDS):
        records.insert(i * 37, (b"bad-key", value))
    expected = expected_now(events)
    worker = dep.worker()
    dep.produce(records)

    actions = dep.read(dep.actions, until=converged(expected), timeout=60)
    assert_changes_consistent(actions)
    final = final_scores(actions)
    for customer, exp in expected.items():
        assert (final.get(customer) or {}).get("rfm") == (exp.rfm if exp else None)
    assert_state_matches(store, expected)
    dead = dep.read(dep.dlq, until=lambda m: len(m) >= len(BAD_RECORDS), timeout=30)
    assert sorted((m.value(), dict(m.headers())["rfm.error.class"].decode()) for m in dead) == (
        sorted(BAD_RECORDS)
    )
    wait(lambda: fetch(dep.http_port, "/readyz")[0] == 200, 30, "/readyz 200")
    for path in ("/v1/customers/default/cust-1", "/v1/matrix", "/v1/segments"):
        assert fetch(dep.http_port, path)[0] == 200, path
    assert worker.stop() == 0

    swept = dep.command("sweep", "--once", timeout=60)
    assert swept.returncode == 0, swept.stderr
    rebuilt = dep.command("rebuild", "--yes", timeout=60)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert_state_matches(store, expected)

    # The quantile and churn upkeep's per-profile lock (redis-py's Lock and its scripts), and
    # the PING with which redis-py checks a connection idle for 30 s (worker/state/connection.py).
    own = redis.Redis.from_url(dep.redis_server.url)
    assert own.ping()
    locks = CutPoints(own)
    assert locks.try_lock("default", 10_000) and locks.renew_lock("default", 10_000)
    locks.unlock("default")
    own.close()

    # What the worker will ask of the orders topic: its id (Describe, implied by Read).
    assert dep.kafka.sasl is not None
    as_worker = AdminClient(
        {"bootstrap.servers": dep.kafka.bootstrap, **dep.kafka.sasl.client_config(USER)}
    )
    [description] = as_worker.describe_topics(TopicCollection([ORDERS])).values()
    assert description.result(10).topic_id is not None

    refused = {entry["object"] for entry in store.redis.acl_log()}
    # Tolerated when refused: the start's checks (INFO, CONFIG GET), and the client metadata
    # redis-py sends on connect to a Redis that knows those subcommands (7.2+, 8.x).
    tolerated = {"info", "config|get", "client|setinfo", "client|maint_notifications"}
    assert refused <= tolerated, store.redis.acl_log()
    # And the rule grants nothing unused (the admin's own reads are GETs, which the worker
    # calls too): a command granted but never called is to be dropped from the rule.
    stats = store.redis.info("commandstats")
    called = {name.removeprefix("cmdstat_") for name, stat in stats.items() if stat["calls"]}
    granted = {word[1:] for word in REDIS_RULE.split() if word.startswith("+")}
    assert granted <= called, granted - called


@pytest.mark.redis
def test_one_grant_less_fails_visibly(secured: Deployment) -> None:
    """Without Write on the DLQ topic, a bad record stalls the worker (not ready, the log
    says why) and nothing is skipped until the grant is back; without XADD, which only
    the commit script calls, the worker waits too, saying what Redis refuses."""
    dep = secured
    admin = AdminClient({"bootstrap.servers": dep.kafka.bootstrap, **dep.login})
    dlq_write = acl(ResourceType.TOPIC, DLQ, AclOperation.WRITE)
    revoke(admin, dlq_write)
    worker = dep.worker()
    dep.produce([(b"bad-key", b"{not json")])
    wait(lambda: "consumption is stalled" in worker.log(), 40, "the stall")
    assert "TOPIC_AUTHORIZATION_FAILED" in worker.log()
    assert fetch(dep.http_port, "/readyz") == (
        503,
        b'{"status":"unavailable","reasons":["dead letters to orders.dlq are not acknowledged"]}',
    )
    grant(admin, [dlq_write])
    [dead] = dep.read(dep.dlq, until=lambda m: len(m) >= 1, timeout=60)
    assert dead.value() == b"{not json"
    wait(lambda: fetch(dep.http_port, "/readyz")[0] == 200, 30, "ready again")

    # XADD is called by the commit script alone: it checks its writes before the first one,
    # so the worker waits, writes nothing, and says what is refused.
    store = admin_store(dep)
    store.redis.acl_setuser(USER, enabled=True, commands=["-xadd"])
    dep.produce(records_of(generate(3, seed=262)))
    wait(lambda: b"XADD" in fetch(dep.http_port, "/readyz")[1].upper(), 40, "the refusal")
    store.redis.acl_setuser(USER, enabled=True, commands=["+xadd"])
    wait(lambda: fetch(dep.http_port, "/readyz")[0] == 200, 30, "ready again")
    assert worker.proc is not None and worker.proc.poll() is None


def test_the_docs_grant_exactly_these() -> None:
    """docs/operations.md states the Redis rule and the Kafka ACLs that these tests grant."""
    docs = (Path(__file__).parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    assert f"user {USER} {REDIS_RULE.format(password='PASSWORD')}\n" in docs
    names = {ORDERS: "RFM_ORDERS_TOPIC", GROUP: "RFM_KAFKA_GROUP", ACTIONS: "RFM_ACTIONS_TOPIC"}
    names[DLQ] = "RFM_DLQ_TOPIC"
    rows = {
        (kind.name.lower(), name, operation.name.title()) for kind, name, operation in KAFKA_ACLS
    }
    for kind, name, operation in rows:
        assert f"| {kind} | `{name}` (`{names[name]}`) | {operation} |" in docs
    assert docs.count("--allow-principal User:rfm-worker") == 2  # Read, then Write
