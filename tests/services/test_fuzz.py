"""Fuzz: hostile order records through the real consume path, as an attacker would send them.

Hypothesis generates 2,000 hostile records, seeded (`derandomize=True`: every run sends
the same records, timestamps relative to now): arbitrary bytes, JSON that is not an
object, missing fields, every field of the wrong JSON type, strings at the edges of their
lengths (multibyte characters included), forbidden tenant characters, amounts and
timestamps at and beyond every edge, unknown types, bad and mismatched currencies, unknown
fields nested 10 to 5,000 deep or huge, duplicate keys (plain and \\u-escaped), other
encodings (BOM, UTF-16/32, Latin-1, overlong and CESU-8 sequences, lone surrogate escapes,
raw and escaped NUL), values padded to the exact byte around the worker's 64 KiB limit,
events the documented rules accept with every value at an edge, Kafka keys null, empty, binary or
huge, headers binary, null or spoofing the worker's own `rfm.*` ones, and tombstones. A
few more are made by hand: values, keys and headers near the ~1 MB a Kafka client sends
by default (the broker takes more), and 20,000 headers.

They go to the orders topic in one go, one known-valid event after every 3 of them; one
`rfm-worker run` (a currency per profile, a sweep every second) consumes them all; then:

1. every record is accounted for: each hostile record is in the DLQ exactly once, with the
   class `worker.rules.events.validate` gives it (a documented one) and a one-line reason, with
   its key, value and headers (or, for a copy too large for the DLQ, without its value and
   with `rfm.error.value_dropped`), or it was applied (its customer exists); no valid
   event is dead-lettered; `rfm_events_total` adds up to what was produced;
2. the known-valid customers' state equals the batch recomputation (tests/reference.py),
   so no hostile record touched them; everything published is schema-valid;
3. the worker is still running, healthy, and exits 0 on SIGTERM;
4. no reason and no log line carries a traceback, unless an event valid in process raised
   once applied (an `internal_error` dead letter, printed with its record).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings

from tests.conftest import Deployment
from tests.factories import iso_days_ago
from tests.fixtures import assert_changes_consistent, assert_state_matches, fetch, records_of
from tests.hostile import (
    ADDED,
    VALID_CUSTOMERS,
    VALUE_DROPPED,
    Headers,
    Record,
    hostile_records,
    iso_at,
)
from tests.reference import expected_now
from worker.kafka.dead_letters import OWN
from worker.rules.events import MAX_EVENT_BYTES, Rejection, validate
from worker.rules.messages import RfmChanged, RfmOverdue
from worker.rules.profiles import Profiles
from worker.state.store import Store

CASES = 2000
VALID_EVERY = 3  # one known-valid event after every 3 hostile records
CLASSES = frozenset(
    {  # README, "Records": the dead-letter classes, plus internal_error (consumer.py)
        "empty",
        "oversized",
        "invalid_encoding",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "unknown_type",
        "invalid_amount",
        "invalid_timestamp",
        "future_timestamp",
        "invalid_currency",
        "currency_mismatch",
        "invalid_field",
        "internal_error",
    }
)
PROCESS_TIMEOUT = 60  # seconds; it takes ~5 (pytest's own timeout is 120 for everything)
PRODUCER_MAX_BYTES = 10_000_000  # ours, so the near-limit records can be sent at all

# The default profile is the built-in one (what tests/reference.py `expected_now` scores
# with) plus a currency, and a tenant has its own: currency_mismatch is reachable.
PROFILES_TOML = """
[profiles.default]
currency = "EUR"
recency_days = [30, 90, 180, 365]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[profiles.sofa-shop]
currency = "USD"
recency_days = [30, 365, 730, 1825]
frequency_orders = [2, 3, 4, 6]
monetary = [500, 1500, 3000, 6000]
"""


def by_hand_records(now: datetime) -> list[Record]:
    """A few by hand: near the ~1 MB a default Kafka client sends (message.max.bytes), and
    20,000 headers. The broker takes them; the worker's dead-letter copy adds headers to
    them and may no longer fit its own producer's limit.
    """
    event = {
        "event_id": "h-big",
        "type": "order_placed",
        "order_id": "ho-big",
        "customer_id": "hc-big",
        "amount": "1.00",
        "occurred_at": iso_at(now - timedelta(days=1)),
    }

    def padded(size: int) -> bytes:
        skeleton = orjson.dumps({**event, "pad": ""})
        raw = orjson.dumps({**event, "pad": "x" * (size - len(skeleton))})
        assert len(raw) == size
        return raw

    return [
        (b"big-1", padded(900_000), None),
        (b"big-2", padded(1_000_000 - 200), [("traceparent", b"00-abc-def-01")]),
        (None, padded(1_000_000), None),
        (b"big-4", padded(1_048_577), [("h", None)]),
        (b"\x00\xff" * 150_000, padded(700_000), None),  # a 300 kB key and a 700 kB value
        (b"k" * 999_000, None, None),  # a tombstone whose key alone is near the limit
        (b"big-7", b"{", [("x", b"\x00" * 999_900)]),  # invalid JSON, a huge header
        # the same, the huge header named like the worker's own (rfm.*): a spoof
        (b"big-8", b"{", [("rfm.error.reason", b"r" * 999_900)]),
        (b"many-headers", b"{", [(f"h{i}", b"") for i in range(20_000)]),
    ]


def valid_events(count: int, seed: int) -> list[dict[str, Any]]:
    """Known-valid events of customers v0..v39: orders, duplicates, refunds, cancels."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    placed: list[dict[str, Any]] = []
    for n in range(count):
        roll = rng.random()
        if placed and roll < 0.08:  # the same event again
            events.append(dict(rng.choice(events)))
        elif placed and roll < 0.13:
            order = rng.choice(placed)
            events.append(
                {
                    "event_id": f"vr{n}",
                    "type": "order_refunded",
                    "order_id": order["order_id"],
                    "customer_id": order["customer_id"],
                    "amount": f"{rng.randint(1, 5000) / 100:.2f}",
                    "occurred_at": iso_days_ago(0),
                }
            )
        elif placed and roll < 0.16:
            order = rng.choice(placed)
            events.append(
                {
                    "event_id": f"vc{n}",
                    "type": "order_cancelled",
                    "order_id": order["order_id"],
                    "customer_id": order["customer_id"],
                    "occurred_at": iso_days_ago(0),
                }
            )
        elif placed and roll < 0.19:  # the same order placed again: the smaller amount wins
            again = {**rng.choice(placed), "event_id": f"vp{n}-again"}
            again["amount"] = f"{rng.randint(1, 40000) / 100:.2f}"
            events.append(again)
        else:
            event: dict[str, Any] = {
                "event_id": f"vp{n}",
                "type": "order_placed",
                "order_id": f"vo{n}",
                "customer_id": f"v{rng.randrange(len(VALID_CUSTOMERS))}",
                "amount": f"{rng.randint(1, 40000) / 100:.2f}",
                "occurred_at": iso_days_ago(rng.randint(0, 300)),
            }
            if rng.random() < 0.2:
                event["tenant"] = "default"
            if rng.random() < 0.2:
                event["currency"] = "EUR"
            placed.append(event)
            events.append(event)
    return events


@dataclass
class Sent:
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    hostile: bool
    partition: int = -1
    offset: int = -1
    error: str | None = None


def _produce(deployment: Deployment, records: list[tuple[Record, bool]]) -> list[Sent]:
    """Everything in one go, each record's partition and offset taken from its ack."""
    producer = Producer(
        {
            "bootstrap.servers": deployment.kafka.bootstrap,
            "linger.ms": 20,
            "message.max.bytes": PRODUCER_MAX_BYTES,
        }
    )
    sent: list[Sent] = []
    for (key, value, headers), hostile in records:
        item = Sent(key, value, headers, hostile)

        def acked(err: Any, msg: Any, item: Sent = item) -> None:
            if err is not None:
                item.error = str(err)
            else:
                item.partition, item.offset = msg.partition(), msg.offset()

        record: dict[str, Any] = {"key": key, "value": value, "on_delivery": acked}
        if headers is not None:
            record["headers"] = headers
        while True:
            try:
                producer.produce(deployment.orders, **record)
                break
            except BufferError:
                producer.poll(0.05)
        sent.append(item)
    assert producer.flush(60) == 0
    producer.close()
    return sent


def _events_total(port: int) -> Counter[str]:
    body = fetch(port, "/metrics")[1].decode()
    return Counter(
        {
            m[1]: int(float(m[2]))
            for m in re.finditer(r'^rfm_events_total\{outcome="(\w+)"\} (\S+)$', body, re.M)
        }
    )


def _metrics(port: int, *prefixes: str) -> str:
    body = fetch(port, "/metrics")[1].decode()
    return "; ".join(line for line in body.splitlines() if line.startswith(prefixes))


def _changes_total(port: int) -> int:
    body = fetch(port, "/metrics")[1].decode()
    found = re.findall(r"^rfm_(?:changes|overdue)_total(?:\{[^}]*\})? (\S+)$", body, re.M)
    return sum(int(float(n)) for n in found)


def _check_dead_letter(
    msg: Any, by_source: dict[tuple[int, int], Sent], deployment: Deployment
) -> tuple[tuple[int, int], str, str, bool]:
    """One DLQ record: its source, class, reason, and whether its value was dropped.

    The worker's headers come last (original ones spoofing them are left out). A copy too large
    for the DLQ topic is sent without its value (and may lose the original headers and a
    huge key), with a trailing `rfm.error.value_dropped` header saying so.
    """
    headers = list(msg.headers() or [])
    names = tuple(name for name, _ in headers)
    dropped = bool(names) and names[-1] == VALUE_DROPPED
    ours = headers[-len(ADDED) - 1 : -1] if dropped else headers[-len(ADDED) :]
    assert tuple(name for name, _ in ours) == ADDED, headers[-len(ADDED) - 1 :]
    added = {name: (value or b"").decode() for name, value in ours}
    source = (int(added["rfm.source.partition"]), int(added["rfm.source.offset"]))
    item = by_source.get(source)
    assert item is not None, f"a dead letter of no produced record: {source}"
    assert item.hostile, f"a valid event dead-lettered: {_describe(item)} {added}"
    error_class, reason = added["rfm.error.class"], added["rfm.error.reason"]
    assert error_class in CLASSES, (error_class, _describe(item))
    assert reason.strip() and "\n" not in reason and len(reason) <= 1000, reason
    assert "Traceback" not in reason, reason
    assert added["rfm.source.topic"] == deployment.orders
    # The original headers, less any that use the worker's own names (spoofs are dropped).
    original = [(k, v) for k, v in item.headers or [] if not k.startswith(OWN)]
    kept = headers[: len(headers) - len(ours) - dropped]
    if not dropped:
        assert kept == original, _describe(item)
        assert msg.key() == item.key, _describe(item)
        assert (msg.value() or b"") == (item.value or b""), _describe(item)
        return source, error_class, reason, False
    # Dropped: only for a copy that would not fit the ~1 MB a Kafka client sends by default.
    size = len(item.key or b"") + len(item.value or b"")
    size += sum(len(k.encode()) + len(v or b"") for k, v in original)
    assert size > 950_000, f"value dropped from a {size}-byte record: {_describe(item)}"
    assert msg.value() is None, _describe(item)
    assert msg.key() in (item.key, None), _describe(item)
    assert all(h in original for h in kept), (kept[:5], _describe(item))
    assert (headers[-1][1] or b"").strip(), headers[-1]
    return source, error_class, reason, True


def _check_actions(messages: list[Any]) -> None:
    """Every published record is schema-valid, keyed by its customer; the known-valid
    customers' changes chain. (Hostile events are not keyed by customer id, so the order
    of their customers' changes is not promised: README, "Why this is effectively-once".)
    """
    known = []
    for msg in messages:
        change = orjson.loads(msg.value())
        assert msg.key() == change["customer_id"].encode(), change
        model = RfmOverdue if change["type"] == "rfm.overdue" else RfmChanged
        model.model_validate(change)
        if change["tenant"] == "default" and change["customer_id"] in VALID_CUSTOMERS:
            known.append(msg)
    assert_changes_consistent(known)


def _log_problems(worker: Any) -> str:
    """The worker's distinct warnings and errors (JSON log lines), with their counts."""
    seen: Counter[str] = Counter()
    for line in worker.log().splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            if "Traceback" in line or "Error" in line:
                seen[line[:300]] += 1
            continue
        if isinstance(doc, dict) and doc.get("level") in ("warning", "error", "critical"):
            seen[
                f"{doc['level']}: {str(doc.get('msg'))[:300]} {str(doc.get('exc', ''))[-600:]}"
            ] += 1
    return "\n".join(f"{n} x {text}" for text, n in seen.most_common(15)) or "(none)"


def _describe(item: Sent) -> str:
    def cut(raw: bytes | None) -> str:
        return (
            "None"
            if raw is None
            else repr(raw[:300]) + (f"... ({len(raw)} B)" if len(raw) > 300 else "")
        )

    return f"key={cut(item.key)} value={cut(item.value)} headers={item.headers!r:.300}"


@pytest.mark.demo_path
def test_hostile_records_are_applied_or_dead_lettered_and_valid_ones_stay_exact(
    deployment: Deployment, store: Store
) -> None:
    started = time.monotonic()
    now = datetime.now(UTC)
    hostile: list[Record] = []

    @settings(
        max_examples=CASES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_records(now))
    def collect(record: Record) -> None:
        hostile.append(record)

    collect()
    assert len(hostile) >= CASES
    hostile += by_hand_records(now)
    valid = valid_events(len(hostile) // VALID_EVERY, seed=7)
    valid_records = iter(records_of(valid))
    records: list[tuple[Record, bool]] = []
    for i, record in enumerate(hostile):
        records.append((record, True))
        if i % VALID_EVERY == VALID_EVERY - 1:
            key, value = next(valid_records)
            records.append(((key, value, None), False))
    generated = time.monotonic()

    # Precondition: no hostile record that passes validation is a known-valid customer's.
    profiles = Profiles.from_toml(PROFILES_TOML)
    for key, value, _headers in hostile:
        out = validate(value, profiles, int(time.time() * 1000))
        if not isinstance(out, Rejection):
            assert (out.tenant, out.customer_id) not in {("default", c) for c in VALID_CUSTOMERS}, (
                key,
                value,
            )

    profiles_file = deployment.tmp_path / "profiles.toml"
    profiles_file.write_text(PROFILES_TOML)
    deployment.extra_env["RFM_PROFILES"] = str(profiles_file)
    deployment.extra_env["RFM_SWEEP_INTERVAL"] = "1"  # sweep the hostile customers too
    sent = _produce(deployment, records)
    refused = [s for s in sent if s.error is not None]
    assert not [s for s in refused if not s.hostile], "the broker refused a valid event"
    sent = [s for s in sent if s.error is None]
    assert sum(1 for s in sent if s.hostile and len(s.value or b"") > MAX_EVENT_BYTES) >= 10
    produced = time.monotonic()

    worker = deployment.worker()
    port = deployment.http_port
    totals: Counter[str] = Counter()
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while True:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited with {worker.proc.returncode}: {_log_problems(worker)}")
        try:
            totals = _events_total(port)
        except OSError:  # not listening yet
            totals = Counter()
        done = totals["applied"] + totals["duplicate"] + totals["dead_lettered"]
        if done >= len(sent):
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"{done} of {len(sent)} records processed in {PROCESS_TIMEOUT} s: {dict(totals)}\n"
                f"{_log_problems(worker)}"
            )
        time.sleep(0.2)
    consumed = time.monotonic()
    assert done == len(sent), totals

    # 1. Every record accounted for: dead-lettered once with its class, or applied.
    # (counted when sent: a copy the DLQ never acknowledges is missing below, not here)
    dead = deployment.read(
        deployment.dlq, until=lambda m: len(m) >= totals["dead_lettered"], timeout=30
    )
    by_source = {(s.partition, s.offset): s for s in sent}
    dead_letters: dict[tuple[int, int], tuple[str, str]] = {}
    dropped = []
    for msg in dead:
        source, error_class, reason, was_dropped = _check_dead_letter(msg, by_source, deployment)
        assert source not in dead_letters, f"dead-lettered twice: {source}"
        if was_dropped:
            dropped.append(by_source[source])
        dead_letters[source] = (error_class, reason)

    at_check = int(time.time() * 1000)
    internal: list[tuple[Sent, str]] = []
    mismatched: list[str] = []
    applied = 0
    for item in sent:
        if not item.hostile:
            continue
        out = validate(item.value, profiles, at_check)
        got = dead_letters.get((item.partition, item.offset))
        if isinstance(out, Rejection):
            if got is None:
                mismatched.append(f"{out.error_class}, never in the DLQ: {_describe(item)}")
            elif got[0] != out.error_class:
                mismatched.append(f"{out.error_class} expected, got {got}: {_describe(item)}")
        elif got is not None:
            if got[0] == "internal_error":
                internal.append((item, got[1]))
            else:
                mismatched.append(f"valid in process, dead-lettered {got}: {_describe(item)}")
        else:
            applied += 1
            assert store.reads.customer(out.tenant, out.customer_id) is not None, _describe(item)
    if mismatched:
        pytest.fail(
            "\n".join(mismatched[:20])
            + f"\nmetrics: {_metrics(port, 'rfm_dlq', 'rfm_ready', 'rfm_delivery')}"
            + f"\nworker log:\n{_log_problems(worker)}"
        )
    assert len(dead) == totals["dead_lettered"], (len(dead), totals)
    assert applied + sum(1 for s in sent if not s.hostile) == (
        totals["applied"] + totals["duplicate"]
    )

    # 2. The known-valid customers are exact; what hostile events published is valid output.
    assert_state_matches(store, expected_now(valid))
    changes = _changes_total(port)
    actions = deployment.read(deployment.actions, until=lambda m: len(m) >= changes, timeout=60)
    _check_actions(actions)

    # 3. Still up and healthy, then a clean stop.
    assert worker.proc.poll() is None
    assert fetch(port, "/healthz")[0] == 200
    assert worker.stop() == 0

    # 4. No traceback for ordinary bad input: only an internal_error (an event valid in
    # process that raised once applied, dead-lettered by design) may log one.
    if not internal:
        assert "Traceback" not in worker.log(), _log_problems(worker)
    print(  # shown with -s or -rP
        f"{len(hostile)} hostile records ({len(refused)} refused by the broker), "
        f"{len(valid)} valid; {len(dead)} dead-lettered ({len(dropped)} without their value), "
        f"{applied} hostile applied, {len(internal)} internal errors; generated in "
        f"{generated - started:.1f} s, produced {produced - generated:.1f} s, consumed "
        f"{consumed - produced:.1f} s, total {time.monotonic() - started:.1f} s; classes "
        f"{dict(Counter(c for c, _ in dead_letters.values()).most_common())}"
    )
    for item, reason in internal:
        print(f"internal_error: {reason}: {_describe(item)}")
