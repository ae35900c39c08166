"""The sweeper against a real Redis: the due index, decay commits, legacy indexing, and the
property that a sequence of sweeps publishes what a batch recomputation says.

The end-to-end sweeper tests (real broker, `rfm-worker run` and `sweep --once`) are in
tests/services/test_sweeper_e2e.py.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.factories import CHANGED_PROFILES, DAY_MS, placed_at
from tests.strategies import AS_OF_MS, PROFILES, Spec, apply_batches, recompute, scenarios
from worker.embedded import EmbeddedRedis
from worker.rules.customer import Customer, Published
from worker.rules.orders import Order
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.services.sweeper import Sweeper
from worker.state import keys
from worker.state.store import Committed, Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp()) * 1000


def sweep(store: Store, profiles: Profiles, at_ms: int, partitions: set[int] | None = None):
    """A whole sweep at `at_ms`; returns (sweep, the records it committed)."""
    out: list[Committed] = []
    sweeper = Sweeper(store, profiles, interval=60, clock=lambda: at_ms, now_ms=lambda: at_ms)
    done = sweeper.sweep_all(partitions or {0, 1, 2, 3}, at_ms, out.extend)
    return done, [orjson.loads(c.value) for c in out]


def due_of(store: Store, tenant: str, customer: str, partition: int = 0) -> float | None:
    key = keys.customer(tenant, customer)
    return store.redis.zscore(keys.due(keys.shard_of(tenant, customer), partition), key)


# -- the due index ---------------------------------------------------------------------------


def test_every_commit_indexes_the_next_change(store: Store, profiles: Profiles) -> None:
    # Built-in profile: R drops after 30, 90, 180, 365 days.
    causes.apply_batch(
        store, [(placed_at(profiles, 1, "c1", T0_MS), 2)], profiles, as_of_ms=T0_MS, now_ms=T0_MS
    )
    assert due_of(store, "default", "c1", 2) == T0_MS + 31 * DAY_MS
    assert due_of(store, "default", "c1", 0) is None
    # A later event on another partition moves the entry with the customer.
    later = T0_MS + 10 * DAY_MS
    causes.apply_batch(
        store, [(placed_at(profiles, 2, "c1", later), 3)], profiles, as_of_ms=later, now_ms=later
    )
    assert due_of(store, "default", "c1", 2) is None
    assert due_of(store, "default", "c1", 3) == later + 31 * DAY_MS


def test_sweep_reads_only_due_customers_and_reschedules_them(
    store: Store, profiles: Profiles
) -> None:
    for i in range(30):  # c0..c9 ordered 40 days before the sweep, the rest 5 days before
        at = T0_MS - (40 if i < 10 else 5) * DAY_MS
        causes.apply_batch(
            store, [(placed_at(profiles, 1, f"c{i}", at), i % 4)], profiles, as_of_ms=at, now_ms=at
        )
    zsets = {(s, p) for s in range(keys.SHARDS) for p in range(4)}
    assert store.due.backlog(zsets, T0_MS) == 10

    done, records = sweep(store, profiles, T0_MS)
    assert done.customers == 10 and done.changes == 10 and done.overdue == 0
    assert sorted(r["customer_id"] for r in records) == sorted(f"c{i}" for i in range(10))
    for r in records:
        assert (r["cause"], r["cause_event_id"]) == ("decay", None)
        assert (r["previous"]["r"], r["current"]["r"]) == (5, 4)
        assert r["as_of"] == "2026-01-01T00:00:00Z"
    assert store.due.backlog(zsets, T0_MS) == 0
    assert due_of(store, "default", "c0", 0) == T0_MS - 40 * DAY_MS + 91 * DAY_MS
    # The segment counters follow the decayed scores.
    assert store.reads.segment_counts()[("default", "promising")] == 10

    again, records = sweep(store, profiles, T0_MS)  # the same instant: nothing is due
    assert (again.customers, records) == (0, [])


def test_sweep_only_covers_the_given_partitions(store: Store, profiles: Profiles) -> None:
    at = T0_MS - 40 * DAY_MS
    for i in range(8):
        causes.apply_batch(
            store, [(placed_at(profiles, 1, f"c{i}", at), i % 4)], profiles, as_of_ms=at, now_ms=at
        )
    _done, records = sweep(store, profiles, T0_MS, partitions={1, 3})
    assert sorted(r["customer_id"] for r in records) == ["c1", "c3", "c5", "c7"]
    _done, records = sweep(store, profiles, T0_MS)
    assert sorted(r["customer_id"] for r in records) == ["c0", "c2", "c4", "c6"]


def test_stale_due_entry_of_a_missing_customer_is_dropped(store: Store, profiles: Profiles) -> None:
    ghost = keys.customer("default", "ghost")
    store.redis.zadd(keys.due(keys.shard_of("default", "ghost"), 1), {ghost: 5})
    done, records = sweep(store, profiles, T0_MS)
    assert (done.customers, records) == (1, [])
    assert store.redis.zcard(keys.due(keys.shard_of("default", "ghost"), 1)) == 0
    assert store.redis.exists(ghost) == 0


def test_customer_scored_later_than_the_sweep_is_not_moved_back(
    store: Store, profiles: Profiles
) -> None:
    at = T0_MS - 40 * DAY_MS
    causes.apply_batch(
        store, [(placed_at(profiles, 1, "c1", at), 0)], profiles, as_of_ms=at, now_ms=at
    )
    # The consumer scored it at T0 + 60 days (R=4 since day 31): a sweep at T0 - 1 day,
    # earlier than that, must not bring R=5 back.
    late = T0_MS + 20 * DAY_MS
    causes.apply_batch(
        store, [(placed_at(profiles, 2, "c1", at, "1"), 0)], profiles, as_of_ms=late, now_ms=late
    )
    before = store.reads.customer("default", "c1")
    assert before is not None and before.published is not None and before.published.r == 4
    _done, records = sweep(store, profiles, T0_MS - DAY_MS)
    after = store.reads.customer("default", "c1")
    assert records == [] and after is not None and after.published == before.published


def test_legacy_customers_are_indexed_then_swept(store: Store, profiles: Profiles) -> None:
    # Customers written before the due index existed: no scored_at, no due entry.
    for i in range(5):
        legacy = Customer(
            "default",
            f"old{i}",
            {"o1": Order(T0_MS - 100 * DAY_MS, 500_000)},
            Published(4, 1, 1, "promising"),
            partition=i % 2,
        )
        store.redis.set(keys.customer("default", f"old{i}"), legacy.encode())
    fresh = T0_MS - DAY_MS
    causes.apply_batch(
        store, [(placed_at(profiles, 1, "new", fresh), 0)], profiles, as_of_ms=fresh, now_ms=fresh
    )
    assert not store.marking.is_done(profiles.versions())

    _done, records = sweep(store, profiles, T0_MS)
    assert store.marking.is_done(profiles.versions())
    # Each old customer was due now: scored at T0 (100 days: R=3), published, rescheduled.
    assert sorted(r["customer_id"] for r in records) == [f"old{i}" for i in range(5)]
    assert {(r["previous"]["rfm"], r["current"]["rfm"]) for r in records} == {("411", "311")}
    assert due_of(store, "default", "old1", 1) == T0_MS - 100 * DAY_MS + 181 * DAY_MS
    assert due_of(store, "default", "new", 0) == fresh + 31 * DAY_MS  # untouched
    # The pass ran once: a new sweeper sees the marker and scans nothing.
    store.redis.delete(keys.due(keys.shard_of("default", "old0"), 0))
    _done, records = sweep(store, profiles, T0_MS + DAY_MS)
    assert records == [] and due_of(store, "default", "old0", 0) is None


def test_overdue_alert_once_per_silence(store: Store, profiles: Profiles) -> None:
    times = [T0_MS + k * 75 * DAY_MS for k in range(4)]
    for n, at in enumerate(times):
        causes.apply_batch(
            store, [(placed_at(profiles, n, "reg", at), 0)], profiles, as_of_ms=at, now_ms=at
        )
    last = times[-1]
    overdue_at = last + 150 * DAY_MS + 1  # silence > 2 x 75 days
    assert due_of(store, "default", "reg", 0) == last + 31 * DAY_MS

    kinds = []
    for at in [last + 31 * DAY_MS, last + 91 * DAY_MS, overdue_at - 1, overdue_at, overdue_at]:
        _done, records = sweep(store, profiles, at)
        kinds.append([r["type"] for r in records])
    assert kinds == [["rfm.changed"], ["rfm.changed"], [], ["rfm.overdue"], []]
    # A new order ends the silence (R=5 again); the next silence alerts again, once.
    again = overdue_at + DAY_MS
    causes.apply_batch(
        store, [(placed_at(profiles, 9, "reg", again), 0)], profiles, as_of_ms=again, now_ms=again
    )
    customer = store.reads.customer("default", "reg")
    assert customer is not None and customer.published is not None
    assert customer.published.r == 5
    gaps = [b - a for a, b in itertools.pairwise([*times, again])]
    second = again + int(2 * statistics.median(gaps)) + 1
    assert due_of(store, "default", "reg", 0) == again + 31 * DAY_MS
    alerts = [
        r for at in [second - 1, second, second + DAY_MS] for r in sweep(store, profiles, at)[1]
    ]
    assert [(r["type"], r["as_of"]) for r in alerts if r["type"] == "rfm.overdue"] == [
        (
            "rfm.overdue",
            datetime.fromtimestamp(second / 1000, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        )
    ]


# -- the property ----------------------------------------------------------------------------

OFFSETS = st.builds(
    lambda days, delta: days * DAY_MS + delta,
    st.one_of(
        st.sampled_from([0, 1, 7, 8, 15, 16, 30, 31, 45, 46, 60, 61, 90, 120, 121]),
        st.integers(0, 500),
    ),
    st.sampled_from([-1, 0, 1, 3_600_000]),
)


def _score(exp: Any) -> dict[str, Any] | None:
    if exp is None:
        return None
    return {
        "r": exp.r,
        "f": exp.f,
        "m": exp.m,
        "rfm": f"{exp.r}{exp.f}{exp.m}",
        "segment": exp.segment,
    }


def _overdue_at(times: tuple[int, ...]) -> int | None:
    if len(times) < 3:
        return None
    median = statistics.median(b - a for a, b in itertools.pairwise(times))
    return None if median <= 0 else times[-1] + int(2.0 * median) + 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), offsets=st.lists(OFFSETS, min_size=2, max_size=6))
def test_sweeps_publish_what_a_batch_recomputation_gives(
    redis_server: EmbeddedRedis,
    scenario: tuple[dict[str, Spec], list[list[bytes]]],
    offsets: list[int],
) -> None:
    events, batches = scenario
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        store = Store(client)
        apply_batches(store, batches)
        previous = {c: _score(e) for c, e in recompute(events, AS_OF_MS).items()}
        alerts: dict[tuple[str, str], list[int]] = defaultdict(list)
        published = 0
        instants = sorted({AS_OF_MS + max(0, off) for off in offsets})
        for at in instants:
            _done, records = sweep(store, PROFILES, at, partitions={0, 1, 2})
            expected = recompute(events, at)
            changes: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
            for r in records:
                who = (r["tenant"], r["customer_id"])
                if r["type"] == "rfm.overdue":
                    alerts[who].append(at)
                    assert r["current"] == _score(expected[who])
                else:
                    changes[who].append(r)
            for who, exp in expected.items():
                now = _score(exp)
                stored = store.reads.customer(*who)
                assert stored is not None
                pub = stored.published
                assert (None if pub is None else (pub.r, pub.f, pub.m, pub.segment)) == (
                    None if exp is None else (exp.r, exp.f, exp.m, exp.segment)
                )
                if now == previous[who]:
                    assert changes[who] == [], who
                else:  # exactly one decay change, from the last score to this one
                    [change] = changes[who]
                    published += 1
                    assert (change["cause"], change["previous"], change["current"]) == (
                        "decay",
                        previous[who],
                        now,
                    )
                previous[who] = now
        # Overdue: exactly once, at the first sweep past the customer's overdue instant.
        final = recompute(events, instants[-1])
        for who, exp in final.items():
            due = None if exp is None else _overdue_at(exp.times)
            first = next((at for at in instants if due is not None and at >= due), None)
            assert alerts.get(who, []) == ([] if first is None else [first]), who
        event(f"decay changes: {published > 0}; overdue alerts: {bool(alerts)}")
        # And a repeated sweep at the last instant publishes nothing.
        assert sweep(store, PROFILES, instants[-1], partitions={0, 1, 2})[1] == []
    finally:
        client.close()


def test_a_customer_whose_decay_raises_is_postponed_not_blocking(
    store: Store, profiles: Profiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.services.causes

    at = T0_MS - 40 * DAY_MS
    for i in range(4):
        causes.apply_batch(
            store, [(placed_at(profiles, 1, f"c{i}", at), 0)], profiles, as_of_ms=at, now_ms=at
        )
    real = worker.services.causes.decay

    def buggy(customer: Customer, *args: Any, **kw: Any) -> Any:
        if customer.customer_id == "c2":
            raise RuntimeError("boom")
        return real(customer, *args, **kw)

    monkeypatch.setattr(worker.services.causes, "decay", buggy)
    _done, records = sweep(store, profiles, T0_MS)
    assert sorted(r["customer_id"] for r in records) == ["c0", "c1", "c3"]
    assert due_of(store, "default", "c2", 0) == T0_MS + DAY_MS  # tried again tomorrow
    monkeypatch.setattr(worker.services.causes, "decay", real)
    _done, records = sweep(store, profiles, T0_MS + DAY_MS)
    assert [r["customer_id"] for r in records] == ["c2"]


# -- a changed profile: the marking pass, then sweeps rescore -------------------------------

# CHANGED_PROFILES (tests/factories.py): recency [10, 20, 60, 120] instead of the built-in's.


def _history(store: Store, profiles: Profiles) -> dict[str, list[int]]:
    """24 customers, 1..3 orders each at various ages, committed and swept up to T0."""
    orders: dict[str, list[int]] = {}
    for i in range(24):
        cid = f"c{i}"
        orders[cid] = [T0_MS - (5 + 13 * i + 40 * k) * DAY_MS for k in range(1 + i % 3)]
        for n, at in enumerate(sorted(orders[cid])):
            causes.apply_batch(
                store,
                [(placed_at(profiles, n, cid, at, amount="70"), i % 4)],
                profiles,
                as_of_ms=at,
                now_ms=at,
            )
    sweep(store, profiles, T0_MS)
    return orders


def test_a_changed_profile_is_applied_in_the_background(store: Store, profiles: Profiles) -> None:
    from worker.rules.decay import next_due
    from worker.rules.scoring import score

    _history(store, profiles)
    assert store.marking.versions() == {"default": profiles.default.version}
    before = {c.customer_id: c for c in store.reads.customers()}
    new = CHANGED_PROFILES.default
    expected_moves = {}
    for cid, c in before.items():
        agg = c.aggregates()
        assert agg is not None and c.published is not None
        s = score(agg, T0_MS, new)
        if (s.r, s.f, s.m, s.segment) != (
            c.published.r,
            c.published.f,
            c.published.m,
            c.published.segment,
        ):
            expected_moves[cid] = (c.published.rfm, s.rfm)
    assert 5 <= len(expected_moves) < len(before)  # the scenario moves some, not all

    # The marking pass marks due now only the customers the new profile moves; the others
    # take its version and due instants at once.
    sweeper = Sweeper(
        store, CHANGED_PROFILES, interval=60, clock=lambda: T0_MS, now_ms=lambda: T0_MS
    )
    while sweeper.marking.step():
        pass
    zsets = {(s, p) for s in range(keys.SHARDS) for p in range(4)}
    assert store.due.backlog(zsets, T0_MS) == len(expected_moves)
    # The same instant, the new profile: every move is published once, cause "rescore".
    _done, records = sweep(store, CHANGED_PROFILES, T0_MS)
    assert {r["customer_id"]: (r["previous"]["rfm"], r["current"]["rfm"]) for r in records} == (
        expected_moves
    )
    assert len(records) == len(expected_moves)
    assert {r["cause"] for r in records} == {"rescore"}
    assert store.marking.versions() == {"default": new.version}
    for cid in before:
        after = store.reads.customer("default", cid)
        assert after is not None and after.version == new.version
        agg = after.aggregates()
        assert agg is not None
        # Due instants follow the new thresholds.
        due = next_due(agg, new, T0_MS, after.alerted)
        assert due_of(store, "default", cid, after.partition or 0) == due
    # Applied: another sweep at the same instant, or a restart, publishes nothing.
    assert sweep(store, CHANGED_PROFILES, T0_MS)[1] == []
    # Back to the old profile: every moved customer moves back, nothing else.
    _done, back = sweep(store, profiles, T0_MS)
    assert {r["customer_id"]: (r["previous"]["rfm"], r["current"]["rfm"]) for r in back} == {
        cid: (b, a) for cid, (a, b) in expected_moves.items()
    }


def test_a_marking_pass_cut_short_resumes_without_repeating_changes(
    store: Store, profiles: Profiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history(store, profiles)
    real_chunks = store.reads.key_chunks
    monkeypatch.setattr(store.reads, "key_chunks", lambda: real_chunks(count=5))
    # A worker with the new profile marks a first chunk and sweeps it, then dies.
    first = Sweeper(store, CHANGED_PROFILES, interval=60, clock=lambda: T0_MS, now_ms=lambda: T0_MS)
    assert first.marking.step()
    out: list[Committed] = []
    sweep_ = first.start({0, 1, 2, 3}, T0_MS)
    while sweep_.pending:
        out += first.step(sweep_, {0, 1, 2, 3})
    assert len(out) > 0 and store.marking.versions() == {"default": profiles.default.version}
    # The next start runs the pass again: what was rescored is not marked again.
    _done, records = sweep(store, CHANGED_PROFILES, T0_MS)
    ids = [orjson.loads(c.value)["customer_id"] for c in out] + [r["customer_id"] for r in records]
    assert len(ids) == len(set(ids))
    assert store.marking.versions() == {"default": CHANGED_PROFILES.default.version}
    assert sweep(store, CHANGED_PROFILES, T0_MS)[1] == []
