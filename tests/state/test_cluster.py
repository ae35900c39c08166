"""Redis Cluster: the embedded 3-master cluster itself, Store on it (slots migrating
between batches and during them), and three workers end to end with RFM_REDIS_CLUSTER.

Every key of a shard shares the hash tag {NN} (worker/state/keys.py), so a shard lives in one
slot on one master; a batch touches shards on every master. The cluster is the session's
(tests/cluster.py, fixture `redis_cluster`); `cluster_client` empties it before each test.
"""

from __future__ import annotations

import gc
import itertools
import random
import re
import time
import uuid
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.crc import key_slot

from tests.cluster import EmbeddedCluster
from tests.conftest import Deployment, WorkerProcess
from tests.factories import AS_OF, AS_OF_MS, CHANGED_PROFILES, DAY_MS, generate, valid_event
from tests.fixtures import (
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    records_of,
)
from tests.reference import DEFAULT, Expected, expected_now, recompute
from worker.cli import main
from worker.embedded import EmbeddedRedis, create_topics, free_port
from worker.rules.events import ValidEvent
from worker.rules.messages import RfmChanged
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.sweeper import Sweeper
from worker.state import keys
from worker.state.store import BatchResult, Committed, Store

# A connection to a cluster node was once left unclosed (seen in CI, not reproduced): its
# socket's ResourceWarning fired from the GC in an unrelated later test. Suspected source:
# redis-py replacing node connections when a slot refresh races a migration. Ignore the
# warning here and collect before leaving, so it can neither fail these tests nor others.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")


@pytest.fixture(autouse=True, scope="module")
def _collect_dropped_connections() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


PARTITIONS = 4

Event = dict[str, Any]


# -- events for the store-level tests ----------------------------------------------------------


def _at(days_ago: float) -> str:
    # Half a day off the day boundaries: a score cannot depend on rounding.
    at = AS_OF - timedelta(days=days_ago, hours=12)
    return at.isoformat().replace("+00:00", "Z")


def _customer_ids(per_shard: int = 2) -> list[tuple[str, str]]:
    """(tenant, customer id) pairs, `per_shard` in each of the 64 shards; a second tenant
    and ids with hash-tag, glob and non-ASCII characters among them."""
    chosen: list[tuple[str, str]] = []
    filled: Counter[int] = Counter()
    i = 0
    while len(chosen) < per_shard * keys.SHARDS:
        i += 1
        tenant = "acme" if i % 5 == 0 else "default"
        cid = f"weird {{{i}}}:*\n😀" if i % 9 == 0 else f"c-{i}"
        shard = keys.shard_of(tenant, cid)
        if filled[shard] < per_shard:
            filled[shard] += 1
            chosen.append((tenant, cid))
    return chosen


def _customer_events(
    rng: random.Random, tenant: str, cid: str, orders: int, tag: str = ""
) -> list[Event]:
    """Orders of one customer; some cancelled, refunded or placed twice."""
    out: list[Event] = []
    base = {"customer_id": cid, **({"tenant": tenant} if tenant != "default" else {})}
    for o in range(orders):
        oid = f"o{tag}-{o}"
        placed = {
            **base,
            "event_id": f"{tenant}/{cid}/p{tag}-{o}",
            "type": "order_placed",
            "order_id": oid,
            "amount": f"{rng.randint(1, 60000) / 100:.2f}",
            "occurred_at": _at(rng.randint(0, 400)),
        }
        out.append(placed)
        roll = rng.random()
        if roll < 0.1:
            out.append(
                {
                    **base,
                    "event_id": f"{tenant}/{cid}/x{tag}-{o}",
                    "type": "order_cancelled",
                    "order_id": oid,
                    "occurred_at": _at(0),
                }
            )
        elif roll < 0.25:
            for k in range(rng.randint(1, 2)):
                out.append(
                    {
                        **base,
                        "event_id": f"{tenant}/{cid}/r{tag}-{o}-{k}",
                        "type": "order_refunded",
                        "order_id": oid,
                        "amount": f"{rng.randint(1, 30000) / 100:.2f}",
                        "occurred_at": _at(0),
                    }
                )
        elif roll < 0.3:  # the same order placed again under another event id
            out.append({**placed, "event_id": placed["event_id"] + "-again"})
    return out


def store_events(seed: int, per_shard: int = 2) -> list[Event]:
    """A few hundred events over customers in every shard, with duplicates, shuffled."""
    rng = random.Random(seed)
    events: list[Event] = []
    for tenant, cid in _customer_ids(per_shard):
        events += _customer_events(rng, tenant, cid, rng.randint(1, 3))
    events += [dict(ev) for ev in rng.sample(events, len(events) // 10)]
    rng.shuffle(events)  # cancels and refunds may come before their order
    return events


def partition_of(event: Event) -> int:
    """A customer's events always come from one partition (Kafka keys by customer)."""
    return zlib.crc32(event["customer_id"].encode()) % PARTITIONS


def to_valid(profiles: Profiles, event: Event) -> ValidEvent:
    return valid_event(
        profiles,
        event_id=event["event_id"],
        kind=event["type"].removeprefix("order_"),
        order_id=event["order_id"],
        customer=event["customer_id"],
        occurred_at=event["occurred_at"],
        now_ms=AS_OF_MS,
        amount=event.get("amount"),
        tenant=event.get("tenant"),
    )


def apply(store: Store, profiles: Profiles, events: list[Event], at_ms: int = AS_OF_MS) -> Any:
    items = [(to_valid(profiles, ev), partition_of(ev)) for ev in events]
    return causes.apply_batch(store, items, profiles, as_of_ms=at_ms, now_ms=at_ms)


def expected_at(events: list[Event], at_ms: int = AS_OF_MS) -> dict[Any, Expected | None]:
    return recompute(events, at_ms, DEFAULT["recency"], DEFAULT["frequency"], DEFAULT["monetary"])


def shard_slot(shard: int) -> int:
    slot = key_slot(keys.counts(shard))
    assert slot == key_slot(keys.customer("default", "x", shard)) == key_slot(keys.due(shard, 0))
    return slot


def other_master(cluster: EmbeddedCluster, slot: int) -> int:
    owner = cluster.owner(slot)
    return next(p for p in cluster.ports if p != owner)


# -- what the store must hold ---------------------------------------------------------------------


def outbox(store: Store) -> list[tuple[bytes, bytes, bytes, bytes]]:
    return [e for p in range(PARTITIONS) for e in store.outbox.entries(p)]


def assert_outbox_consistent(
    store: Store,
    expected: dict[Any, Expected | None],
    committed: list[Committed] | None = None,
) -> None:
    """The outboxes hold, per customer and in commit order, a chain of changes that starts
    from no score and ends at the expected one; nothing else, nothing twice."""
    entries = outbox(store)
    if committed is not None:
        assert sorted(entries) == sorted((c.outbox, c.entry_id, c.key, c.value) for c in committed)
    chains: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    streams: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    change_ids: Counter[str] = Counter()
    for stream, _entry_id, key, value in entries:
        change = orjson.loads(value)
        assert key == change["customer_id"].encode()
        change_ids[change["change_id"]] += 1
        if change["type"] != "rfm.changed":  # overdue alerts are not links of the chain
            continue
        RfmChanged.model_validate(change)
        customer = (change["tenant"], change["customer_id"])
        shard = keys.shard_of(*customer)
        assert stream.startswith(f"rfm:{{{shard:02d}}}:outbox:".encode()), (stream, customer)
        streams[customer].add(stream)
        chains[customer].append(change)
    assert not [cid for cid, n in change_ids.items() if n > 1]
    for customer, chain in chains.items():
        assert len(streams[customer]) == 1, customer  # one partition: one stream, in order
        assert chain[0]["previous"] is None, customer
        for before, after in pairwise(chain):
            assert after["previous"] == before["current"], customer
            assert after["previous"] != after["current"], customer
        exp = expected[customer]
        assert (chain[-1]["current"] or {}).get("rfm") == (exp.rfm if exp else None), customer
    scored = {c for c, e in expected.items() if e is not None}
    assert scored <= set(chains)  # every scored customer had its score published


def assert_counts_consistent(store: Store, expected: dict[Any, Expected | None]) -> None:
    assert store.reads.segment_counts() == Counter(
        (tenant, e.segment) for (tenant, _cid), e in expected.items() if e is not None
    )


def assert_store_matches(
    store: Store,
    expected: dict[Any, Expected | None],
    committed: list[Committed] | None = None,
) -> None:
    assert_state_matches(store, expected)
    assert_outbox_consistent(store, expected, committed)
    assert_counts_consistent(store, expected)


def keys_per_master(cluster: EmbeddedCluster) -> dict[int, int]:
    return {p: int(cluster.admin(p).dbsize()) for p in cluster.ports}


# -- the embedded cluster itself ---------------------------------------------------------------


def test_the_embedded_cluster_has_three_masters_and_all_slots(
    redis_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster
) -> None:
    assert len(redis_cluster.ports) == 3
    assert all(p < 55535 for p in redis_cluster.ports)
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    assert redis_cluster.binary == EmbeddedRedis.binary()
    primaries = cluster_client.get_primaries()
    assert sorted(n.port for n in primaries) == sorted(redis_cluster.ports)
    assert cluster_client.get_replicas() == []
    for port in redis_cluster.ports:
        info = redis_cluster.cluster_info(port)
        assert (info["cluster_state"], info["cluster_slots_assigned"]) == ("ok", "16384")
        assert (info["cluster_known_nodes"], info["cluster_size"]) == ("3", "3")
    owners = Counter(redis_cluster.owner(slot) for slot in range(0, 16384, 7))
    assert set(owners) == set(redis_cluster.ports)
    # Every shard's keys share one slot; the 64 shards spread over the three masters.
    for shard in range(keys.SHARDS):
        cluster_client.hset(keys.counts(shard), "x", 1)
    assert all(n > 0 for n in keys_per_master(redis_cluster).values())
    assert sum(keys_per_master(redis_cluster).values()) == keys.SHARDS


def test_migrate_slot_moves_the_keys_and_clients_follow(
    redis_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster
) -> None:
    slot = shard_slot(5)
    for i in range(250):
        cluster_client.set(keys.customer("default", f"m{i}", 5), i)
    source, target = redis_cluster.owner(slot), other_master(redis_cluster, slot)
    assert redis_cluster.migrate_slot(slot, target) == 250
    redis_cluster.wait_ok()
    assert redis_cluster.owner(slot) == target
    assert redis_cluster.keys_in_slot(slot, source) == 0
    assert redis_cluster.keys_in_slot(slot, target) == 250
    assert cluster_client.get(keys.customer("default", "m7", 5)) == b"7"  # after MOVED


# -- Store on the cluster -----------------------------------------------------------------------


@pytest.fixture
def cluster_store(cluster_client: redis.RedisCluster) -> Store:
    return Store(cluster_client)


def test_store_batches_on_the_cluster_equal_the_recomputation(
    redis_cluster: EmbeddedCluster, cluster_store: Store, profiles: Profiles
) -> None:
    events = store_events(seed=1)
    assert 250 <= len(events) <= 600
    assert {keys.shard_of(e.get("tenant", "default"), e["customer_id"]) for e in events} == set(
        range(keys.SHARDS)
    )
    committed: list[Committed] = []
    outcomes: Counter[str] = Counter()
    quarter = len(events) // 4 + 1
    for start in range(0, len(events), quarter):
        result = apply(cluster_store, profiles, events[start : start + quarter])
        assert not result.failed and not result.rejected
        committed += result.committed
        outcomes.update(result.outcomes)
    assert outcomes["applied"] + outcomes["duplicate"] == len(events)
    assert outcomes["duplicate"] >= len(events) // 10
    expected = expected_at(events)
    assert_store_matches(cluster_store, expected, committed)
    assert all(n > 0 for n in keys_per_master(redis_cluster).values())  # every master used


def test_store_on_the_cluster_loads_its_script_again_after_a_flush(
    cluster_client: redis.RedisCluster, cluster_store: Store, profiles: Profiles
) -> None:
    """Masters without the commit script (SCRIPT FLUSH, as after a restart or on a new
    node): each node's calls meet NOSCRIPT, the script is loaded there, nothing is lost."""
    events = store_events(seed=3)
    half = len(events) // 2
    apply(cluster_store, profiles, events[:half])
    for node in cluster_client.get_primaries():
        cluster_client.get_redis_connection(node).script_flush()
    result = apply(cluster_store, profiles, events[half:])
    assert not result.failed and not result.rejected and result.conflicts == 0
    assert_state_matches(cluster_store, expected_at(events))


def test_store_same_batch_twice_on_the_cluster_is_only_duplicates(
    cluster_store: Store, profiles: Profiles
) -> None:
    events = store_events(seed=2)
    first = apply(cluster_store, profiles, events)
    expected = expected_at(events)
    assert_store_matches(cluster_store, expected, first.committed)
    entries, counts = outbox(cluster_store), cluster_store.reads.segment_counts()

    again = apply(cluster_store, profiles, list(reversed(events)))
    assert again.outcomes == Counter({"duplicate": len(events)})
    assert (again.committed, again.conflicts, again.customers) == ([], 0, 0)
    assert outbox(cluster_store) == entries
    assert cluster_store.reads.segment_counts() == counts
    assert_state_matches(cluster_store, expected)


def sweep(store: Store, profiles: Profiles, at_ms: int) -> tuple[Any, list[Committed]]:
    out: list[Committed] = []
    sweeper = Sweeper(store, profiles, interval=60, clock=lambda: at_ms, now_ms=lambda: at_ms)
    done = sweeper.sweep_all(set(range(PARTITIONS)), at_ms, out.extend)
    return done, out


def test_sweep_on_the_cluster_publishes_the_decay(cluster_store: Store, profiles: Profiles) -> None:
    events = store_events(seed=3)
    first = apply(cluster_store, profiles, events)
    before = expected_at(events)
    later_ms = AS_OF_MS + 45 * DAY_MS
    later = expected_at(events, later_ms)
    decayed = {c for c, e in later.items() if e is not None and (b := before[c]) and b.rfm != e.rfm}
    assert len(decayed) >= 10

    done, records = sweep(cluster_store, profiles, later_ms)
    changes = [orjson.loads(c.value) for c in records]
    changes = [c for c in changes if c["type"] == "rfm.changed"]
    by_customer = {(c["tenant"], c["customer_id"]): c for c in changes}
    assert len(by_customer) == len(changes) == done.changes  # one decay per customer
    assert set(by_customer) == decayed
    for customer, change in by_customer.items():
        exp_before, exp_later = before[customer], later[customer]
        assert exp_before is not None and exp_later is not None
        assert (change["cause"], change["cause_event_id"]) == ("decay", None)
        assert change["previous"]["rfm"] == exp_before.rfm
        assert change["current"]["rfm"] == exp_later.rfm
    assert_store_matches(cluster_store, later, first.committed + records)

    again, records = sweep(cluster_store, profiles, later_ms)  # nothing more due then
    assert (again.customers, records) == (0, [])


def test_a_changed_profile_is_applied_on_the_cluster(
    cluster_store: Store, profiles: Profiles
) -> None:
    events = store_events(seed=5)
    apply(cluster_store, profiles, events)
    sweep(cluster_store, profiles, AS_OF_MS)  # up to date with the first profile
    assert cluster_store.marking.versions() == {"default": profiles.default.version}
    before = {(c.tenant, c.customer_id): c.published for c in cluster_store.reads.customers()}

    _done, records = sweep(cluster_store, CHANGED_PROFILES, AS_OF_MS)
    changes = [orjson.loads(c.value) for c in records]
    assert changes and {c["cause"] for c in changes if c["type"] == "rfm.changed"} == {"rescore"}
    after = {(c.tenant, c.customer_id): c for c in cluster_store.reads.customers()}
    moved = {k for k, c in after.items() if c.published != before[k] and c.published is not None}
    assert {(c["tenant"], c["customer_id"]) for c in changes} == moved
    assert {c.version for c in after.values() if c.orders} == {CHANGED_PROFILES.default.version}
    assert cluster_store.marking.versions() == {"default": CHANGED_PROFILES.default.version}
    assert sweep(cluster_store, CHANGED_PROFILES, AS_OF_MS)[1] == []


def test_store_follows_a_slot_migrated_between_batches(
    redis_cluster: EmbeddedCluster, cluster_store: Store, profiles: Profiles
) -> None:
    events = store_events(seed=4)
    half = len(events) // 2
    first = apply(cluster_store, profiles, events[:half])
    # The shard with the most events in the second batch moves to another master.
    second_shards = Counter(
        keys.shard_of(e.get("tenant", "default"), e["customer_id"]) for e in events[half:]
    )
    shard = second_shards.most_common(1)[0][0]
    slot = shard_slot(shard)
    source, target = redis_cluster.owner(slot), other_master(redis_cluster, slot)
    stored = redis_cluster.keys_in_slot(slot, source)
    assert stored > 0
    assert redis_cluster.migrate_slot(slot, target) == stored
    assert redis_cluster.owner(slot) == target

    second = apply(cluster_store, profiles, events[half:])  # the client's slot map is stale
    assert not second.failed and not second.rejected
    assert redis_cluster.keys_in_slot(slot, source) == 0
    assert redis_cluster.keys_in_slot(slot, target) >= stored
    assert_store_matches(cluster_store, expected_at(events), first.committed + second.committed)


def _rounds(
    seed: int, hot: list[tuple[str, str]], cold: list[tuple[str, str]]
) -> Iterator[list[Event]]:
    """Endless small batches: every hot customer gets an order (or a cancel, refunds, a
    duplicate) each round, and a few other customers too."""
    rng = random.Random(seed)
    sent: list[Event] = []
    for n in itertools.count():
        batch: list[Event] = []
        for tenant, cid in [*hot, *rng.sample(cold, 3)]:
            batch += _customer_events(rng, tenant, cid, 1, tag=f"{n}")
        batch += [dict(ev) for ev in rng.sample(sent, min(len(sent), 2))]
        rng.shuffle(batch)
        sent += batch
        yield batch


def test_store_applies_batches_while_a_slot_migrates(
    redis_cluster: EmbeddedCluster, cluster_store: Store, profiles: Profiles
) -> None:
    """Small batches applied back to back while one shard's slot moves: the clients meet
    ASK and TRYAGAIN (keys on both sides), then MOVED. Nothing lost, nothing twice."""
    shard = 17
    everyone = _customer_ids(per_shard=3)
    hot = [c for c in everyone if keys.shard_of(*c) == shard]
    hot += [
        ("default", f"hot-{i}") for i in range(400) if keys.shard_of("default", f"hot-{i}") == shard
    ][:3]
    cold = [c for c in everyone if keys.shard_of(*c) != shard]
    slot = shard_slot(shard)
    target = other_master(redis_cluster, slot)
    applied: list[Event] = []
    committed: list[Committed] = []
    rounds = _rounds(5, hot, cold)

    def run(batch: list[Event]) -> BatchResult:
        result = apply(cluster_store, profiles, batch)
        assert not result.failed and not result.rejected
        applied.extend(batch)
        committed.extend(result.committed)
        return result

    for _ in range(5):
        run(next(rounds))
    with ThreadPoolExecutor(1) as pool:
        during = 0
        migration = pool.submit(
            redis_cluster.migrate_slot, slot, target, batch=2, pause=0.03, hold=lambda: during >= 3
        )
        while not migration.done() and during < 5000:
            run(next(rounds))
            during += 1
        moved = migration.result()
    for _ in range(5):
        run(next(rounds))
    assert during >= 3, f"only {during} batch(es) ran during the migration"
    assert moved > 0
    assert redis_cluster.owner(slot) == target
    assert_store_matches(cluster_store, expected_at(applied), committed)


# -- end to end: three workers on the cluster ------------------------------------------------------

ORDERS_PARTITIONS = 12
_REBALANCE = re.compile(r"(assigned|revoked|lost) partitions \[([0-9, ]*)\]")
_APPLIED = re.compile(r'^rfm_events_total\{outcome="applied"\} ([0-9.e+]+)$', re.MULTILINE)


@pytest.fixture
def cluster_deployment(
    kafka: Any,
    redis_cluster: EmbeddedCluster,
    cluster_client: redis.RedisCluster,
    tmp_path: Path,
) -> Iterator[Deployment]:
    """Fresh topics (orders with 12 partitions) and workers with RFM_REDIS_CLUSTER=true."""
    suffix = uuid.uuid4().hex[:8]
    dep = Deployment(
        kafka,
        redis_cluster,  # type: ignore[arg-type]  (Deployment only reads its .url)
        tmp_path,
        f"orders-{suffix}",
        f"actions-{suffix}",
        f"dlq-{suffix}",
        f"group-{suffix}",
        free_port(),
        extra_env={"RFM_REDIS_CLUSTER": "true"},
    )
    create_topics(kafka.bootstrap, {dep.orders: ORDERS_PARTITIONS, dep.actions: 4, dep.dlq: 1})
    yield dep
    for proc in dep.workers:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


def _check_alive(workers: list[WorkerProcess]) -> None:
    for i, worker in enumerate(workers):
        assert worker.proc is not None
        code = worker.proc.poll()
        if code is not None:
            pytest.fail(
                f"worker {i} exited with code {code}; its log ends:\n{worker.log()[-3000:]}"
            )


def _alive_and(workers: list[WorkerProcess], until: Callable[[list[Any]], bool]) -> Any:
    def check(messages: list[Any]) -> bool:
        _check_alive(workers)
        return until(messages)

    return check


def _assignments(worker: WorkerProcess) -> set[int]:
    owned: set[int] = set()
    for what, numbers in _REBALANCE.findall(worker.log()):
        parts = {int(n) for n in numbers.split(",") if n.strip()}
        owned = owned | parts if what == "assigned" else owned - parts
    return owned


def _wait_for_group(workers: list[WorkerProcess], timeout: float = 45) -> None:
    """Until the workers own every orders partition between them, each some."""
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(workers)
        owned = [_assignments(w) for w in workers]
        if (
            all(owned)
            and sum(len(o) for o in owned) == ORDERS_PARTITIONS
            and set().union(*owned) == set(range(ORDERS_PARTITIONS))
        ):
            return
        assert time.monotonic() < deadline, f"the group did not settle: {owned}"
        time.sleep(0.2)


def _applied(worker: WorkerProcess) -> float:
    status, body = fetch(int(worker.env["RFM_HTTP_PORT"]), "/metrics")
    assert status == 200
    found = _APPLIED.search(body.decode())
    return float(found.group(1)) if found else 0.0


def _assert_one_content_per_change_id(messages: list[Any]) -> None:
    contents: dict[str, set[bytes]] = defaultdict(set)
    for msg in messages:
        contents[orjson.loads(msg.value())["change_id"]].add(msg.value())
    assert {cid: v for cid, v in contents.items() if len(v) > 1} == {}


def _check_end_state(
    dep: Deployment,
    client: redis.RedisCluster,
    events: list[Event],
    expected: dict[Any, Expected | None],
    actions: list[Any],
) -> None:
    assert_changes_consistent(actions)
    _assert_one_content_per_change_id(actions)
    assert_state_matches(Store(client), expected)
    applied = [_applied(w) for w in dep.workers]
    assert all(n > 0 for n in applied), applied  # each worker had its share
    assert sum(applied) <= len({e["event_id"] for e in events})  # none applied twice
    for worker in dep.workers:
        assert worker.stop() == 0


def test_three_workers_on_the_cluster_converge(
    cluster_deployment: Deployment, cluster_client: redis.RedisCluster
) -> None:
    dep = cluster_deployment
    events = generate(600, seed=41)
    assert len(events) >= 2000
    expected = expected_now(events)
    workers = [dep.worker() for _ in range(3)]
    _wait_for_group(workers)
    dep.produce(records_of(events))
    actions = dep.read(dep.actions, until=_alive_and(workers, converged(expected)), timeout=90)
    assert converged(expected)(actions), "the changes did not converge in time"
    _check_end_state(dep, cluster_client, events, expected, actions)


def test_three_workers_on_the_cluster_while_a_slot_migrates(
    redis_cluster: EmbeddedCluster,
    cluster_deployment: Deployment,
    cluster_client: redis.RedisCluster,
) -> None:
    dep = cluster_deployment
    events = generate(600, seed=42)
    expected = expected_now(events)
    per_shard = Counter(keys.shard_of("default", e["customer_id"]) for e in events)
    slot = shard_slot(per_shard.most_common(1)[0][0])
    target = other_master(redis_cluster, slot)
    records = records_of(events)
    half = len(records) // 2
    workers = [dep.worker() for _ in range(3)]
    _wait_for_group(workers)
    dep.produce(records[:half])
    dep.read(dep.actions, until=_alive_and(workers, lambda m: len(m) >= 200), timeout=60)
    rest = records[half:]
    chunks = [rest[i : i + 50] for i in range(0, len(rest), 50)]
    during = 0
    with ThreadPoolExecutor(1) as pool:
        # The rest of the stream arrives in chunks while the slot is on its way.
        migration = pool.submit(
            redis_cluster.migrate_slot, slot, target, batch=4, pause=0.15, hold=lambda: during >= 3
        )
        while chunks and not migration.done():
            dep.produce(chunks.pop(0))
            during += 1
            time.sleep(0.05)
        moved = migration.result(timeout=60)
    dep.produce([r for chunk in chunks for r in chunk])
    assert moved > 0
    assert during >= 3, f"only {during} chunk(s) produced during the migration"
    actions = dep.read(dep.actions, until=_alive_and(workers, converged(expected)), timeout=90)
    assert converged(expected)(actions), "the changes did not converge in time"
    assert redis_cluster.owner(slot) == target
    _check_end_state(dep, cluster_client, events, expected, actions)


def test_run_refuses_a_cluster_addressed_as_a_single_redis(
    redis_cluster: EmbeddedCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without RFM_REDIS_CLUSTER a commit call spans shards, which a cluster refuses
    (CROSSSLOT): the worker says so at start, in one line, instead of failing per batch."""
    monkeypatch.setenv("RFM_REDIS_URL", f"redis://127.0.0.1:{redis_cluster.ports[0]}/0")
    monkeypatch.delenv("RFM_REDIS_CLUSTER", raising=False)
    assert main(["run"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("rfm-worker: configuration error: Redis runs in cluster mode")
    assert "RFM_REDIS_CLUSTER=true" in last
