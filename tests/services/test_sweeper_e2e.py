"""The sweeper end to end: a real broker, a real Redis, `rfm-worker run` and `sweep --once`.

Sweeps run at chosen instants with RFM_CLOCK=event (time is an input: history is placed in
the past and the sweeps walk forward through it), and every record they cause is read back
from the actions topic.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Deployment
from tests.factories import DAY, epoch_ms, midnight, placed_doc
from tests.fixtures import (
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    ingest,
    records_of,
    sweep_once,
)
from tests.reference import DEFAULT, rank_score, recompute
from worker.rules.events import ValidEvent, validate
from worker.rules.instants import iso
from worker.rules.messages import RfmOverdue
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state import keys
from worker.state.store import Store
from worker.web import views

MS = timedelta(milliseconds=1)


def _cli_sweep(dep: Deployment, at: datetime) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "sweep", "--once", "--as-of", iso(epoch_ms(at))],
        env=dep.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _decay_records(dep: Deployment) -> list[dict[str, Any]]:
    """Every decay change and overdue alert on the actions topic, in topic order."""
    messages = dep.read(dep.actions, until=lambda m: False, timeout=3)
    docs = [orjson.loads(m.value()) for m in messages]
    return [d for d in docs if d["type"] == "rfm.overdue" or d["cause"] == "decay"]


@pytest.mark.demo_path
def test_the_silent_regular_decays_boundary_by_boundary(
    deployment: Deployment, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders every 75 days for two years, then silence (built-in profile: R drops after
    30, 90, 180 and 365 days; overdue past 2 x 75 days)."""
    deployment.extra_env["RFM_CLOCK"] = "event"
    last = midnight(400)
    history = [placed_doc("reg", k, last - (9 - k) * 75 * DAY) for k in range(10)]
    ingest(deployment, history, {"reg": "553"})  # 10 orders, 400.00: F5 M3

    walk = [  # (instant, what the sweep must publish)
        (last + 30 * DAY, None),
        (last + 31 * DAY - MS, None),
        (last + 31 * DAY, "553>453"),
        (last + 31 * DAY, None),
        (last + 90 * DAY, None),
        (last + 91 * DAY, "453>353"),
        (last + 150 * DAY, None),
        (last + 150 * DAY + MS, "overdue"),
        (last + 150 * DAY + MS, None),
        (last + 180 * DAY, None),
        (last + 181 * DAY, "353>253"),
        (last + 365 * DAY, None),
        (last + 366 * DAY, "253>153"),
        (last + 366 * DAY, None),
    ]
    for i, (at, expect) in enumerate(walk):
        if i == 5:  # one of them through the real command line
            done = _cli_sweep(deployment, at)
            assert done.returncode == 0, done.stderr
            summary = done.stdout.strip()
        else:
            summary = sweep_once(monkeypatch, deployment, at)
        changes = 1 if expect and expect != "overdue" else 0
        assert f"{changes} change(s) and {int(expect == 'overdue')} overdue" in summary, (
            at,
            summary,
        )

    records = _decay_records(deployment)
    seen = [
        (
            "overdue"
            if r["type"] == "rfm.overdue"
            else f"{r['previous']['rfm']}>{r['current']['rfm']}"
        )
        for r in records
    ]
    assert seen == [e for _, e in walk if e]
    assert len({r["change_id"] for r in records}) == len(records)
    moves = [r for r in records if r["type"] == "rfm.changed"]
    assert [r["as_of"] for r in moves] == [
        iso(epoch_ms(last + d * DAY)) for d in (31, 91, 181, 366)
    ]
    assert [r["current"]["segment"] for r in moves] == [
        "loyal",
        "loyal",
        "cant_lose_them",
        "cant_lose_them",
    ]
    [alert] = [r for r in records if r["type"] == "rfm.overdue"]
    RfmOverdue.model_validate(alert)
    assert alert["as_of"] == iso(epoch_ms(last + 150 * DAY + MS))
    assert alert["median_gap_days"] == 75.0
    assert alert["silent_days"] == 150
    assert alert["last_order_at"] == iso(epoch_ms(last))
    assert alert["expected_next_order_at"] == iso(epoch_ms(last + 75 * DAY))
    assert alert["current"]["rfm"] == "353"

    # The read side shows the decayed score: counters, matrix, customer view.
    assert store.reads.segment_counts() == {("default", "cant_lose_them"): 1}
    matrix = views.matrix(store, "default", store.clock.read() or 0)
    assert matrix["cells"] == [{"r": 1, "f": 5, "customers": 1, "segment": "cant_lose_them"}]

    # Time never moves back with the event clock: a refusal, in one line, exit 2.
    refused = _cli_sweep(deployment, last + 200 * DAY)
    assert refused.returncode == 2
    assert "never moves back" in refused.stderr and len(refused.stderr.splitlines()) == 1
    ahead = _cli_sweep(deployment, datetime.now(UTC) + 2 * DAY)
    assert ahead.returncode == 2 and "ahead of the wall clock" in ahead.stderr

    # A new order ends the silence: R=5 again, through the worker.
    comeback = placed_doc("reg", 10, midnight(1))
    deployment.produce(records_of([comeback]))
    worker = deployment.worker()
    actions = deployment.read(
        deployment.actions,
        until=lambda m: any(b'"cause":"order","cause_event_id":"reg-p10"' in x.value() for x in m),
    )
    back = next(orjson.loads(x.value()) for x in actions if b"reg-p10" in x.value())
    assert (back["previous"]["rfm"], back["current"]["r"]) == ("153", 5)
    assert_changes_consistent(actions)
    assert worker.stop() == 0


def test_orders_leaving_the_frequency_window_lower_f_on_the_right_day(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        "[profiles.default]\n"
        "recency_days = [400, 500, 600, 700]\n"  # R stays 5 through the whole test
        "frequency_orders = [2, 3, 5, 10]\n"
        "frequency_window_days = 365\n"
        "monetary = [100, 250, 500, 1000]\n"
        "overdue_factor = 0\n"
    )
    deployment.extra_env.update({"RFM_CLOCK": "event", "RFM_PROFILES": str(profiles)})
    last = midnight(380)
    ages = [300, 200, 100, 50, 0]  # 5 orders in the window: F4
    events = [placed_doc("win", n, last - age * DAY) for n, age in enumerate(ages)]
    ingest(deployment, events, {"win": "542"})  # 5 x 40.00 = 200.00: M2
    walk = [
        (last + 64 * DAY, 0),
        (last + 65 * DAY - MS, 0),
        (last + 65 * DAY, 1),  # the 300-day-old order leaves: 4 orders, F3
        (last + 165 * DAY, 0),  # the next leaves, 3 orders is still F3: not even touched
        (last + 265 * DAY - MS, 0),
        (last + 265 * DAY, 1),  # 2 orders: F2
    ]
    summaries = [sweep_once(monkeypatch, deployment, at) for at, _ in walk]
    for (at, changes), summary in zip(walk, summaries, strict=True):
        assert f"{changes} change(s)" in summary, (at, summary)
    assert summaries[3].startswith(f"swept as of {iso(epoch_ms(last + 165 * DAY))}: 0 due customer")
    moves = _decay_records(deployment)
    assert [(m["as_of"], m["previous"]["f"], m["current"]["f"]) for m in moves] == [
        (iso(epoch_ms(last + 65 * DAY)), 4, 3),
        (iso(epoch_ms(last + 265 * DAY)), 3, 2),
    ]
    assert [m["customer"]["orders"] for m in moves] == [4, 2]
    assert all(m["customer"]["orders_lifetime"] == 5 for m in moves)


def test_sweeps_racing_the_consumer_end_at_the_batch_recomputation(
    deployment: Deployment, store: Store
) -> None:
    """The worker sweeps every 0.2 s while it consumes two years of history in time order
    (the event clock moves with it): decay commits race order commits on the same
    customers. The end state is the batch recomputation at the last instant."""
    deployment.extra_env.update({"RFM_CLOCK": "event", "RFM_SWEEP_INTERVAL": "0.2"})
    rng = random.Random(11)
    start = midnight(900)
    events: list[dict[str, Any]] = []
    for c in range(120):
        cid = f"r{c}" if c % 9 else f"r{{{c}}}:*"
        for n in range(rng.randint(1, 8)):
            events.append(placed_doc(cid, n, start + timedelta(minutes=rng.randint(0, 700 * 1440))))
    events.sort(key=lambda e: e["occurred_at"])
    end_ms = max(epoch_ms(datetime.fromisoformat(e["occurred_at"])) for e in events)
    expected = recompute(
        events, end_ms, DEFAULT["recency"], DEFAULT["frequency"], DEFAULT["monetary"]
    )
    worker = deployment.worker()
    deadline = time.monotonic() + 30  # consuming already, so each chunk is its own batch
    while time.monotonic() < deadline:
        try:
            if fetch(deployment.http_port, "/readyz")[0] == 200:
                break
        except OSError:  # not listening yet
            pass
        time.sleep(0.2)
    records = records_of(events)
    chunk = len(records) // 12 + 1
    for i in range(0, len(records), chunk):  # many batches, each a step of the clock
        deployment.produce(records[i : i + chunk])
        time.sleep(0.3)
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=90)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert store.clock.read() == end_ms
    docs = [orjson.loads(m.value()) for m in actions]
    assert any(d["type"] == "rfm.changed" and d["cause"] == "decay" for d in docs)
    _, metrics = fetch(deployment.http_port, "/metrics")
    text = metrics.decode()
    assert "rfm_sweep_duration_seconds_count" in text
    assert 'rfm_rescored_total{cause="decay"}' in text
    assert "rfm_sweep_due " in text and "rfm_overdue_total " in text
    assert worker.stop() == 0


def test_two_sweepers_at_once_publish_each_change_once(
    deployment: Deployment, store: Store, profiles: Profiles
) -> None:
    """Two `sweep --once` processes over the same due customers at the same instant."""
    rng = random.Random(5)
    scored = midnight(300)
    events = [
        placed_doc(f"s{c}", n, scored - rng.randint(0, 200) * DAY - rng.randint(0, 86_399_999) * MS)
        for c in range(200)
        for n in range(rng.randint(1, 6))
    ]
    valid = []
    for ev in events:
        v = validate(orjson.dumps(ev), profiles, epoch_ms(scored))
        assert isinstance(v, ValidEvent)
        valid.append((v, int(ev["customer_id"][1:]) % 4))
    causes.apply_batch(store, valid, profiles, as_of_ms=epoch_ms(scored), now_ms=epoch_ms(scored))
    for stream in list(store.redis.scan_iter(match=keys.OUTBOX_PATTERN)):
        store.redis.delete(stream)  # only what the sweeps publish matters here

    at = midnight(10)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "sweep", "--once", "--as-of", iso(epoch_ms(at))],
            env=deployment.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    before = recompute(
        events, epoch_ms(scored), DEFAULT["recency"], DEFAULT["frequency"], DEFAULT["monetary"]
    )
    after = recompute(
        events, epoch_ms(at), DEFAULT["recency"], DEFAULT["frequency"], DEFAULT["monetary"]
    )
    moved = {c for c, e in after.items() if e and e.rfm != getattr(before[c], "rfm", None)}
    assert len(moved) > 100
    ids: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in _decay_records(deployment):
        ids[(r["type"], r["tenant"], r["customer_id"])].add(r["change_id"])
    changed = {(t, c) for (kind, t, c) in ids if kind == "rfm.changed"}
    assert changed == moved
    assert all(len(v) == 1 for v in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}
    # Together they rescored each due customer once.
    published = sum(int(out.split("rescored, ")[1].split(" change")[0]) for out, _ in outputs)
    assert published == len(moved)
    assert_state_matches(store, after)


def test_a_worker_started_with_changed_thresholds_rescores_in_the_background(
    deployment: Deployment, store: Store
) -> None:
    """Scores published under one profile; the worker restarts with tighter recency
    thresholds and publishes, with cause `rescore`, exactly the moves they cause."""
    deployment.extra_env["RFM_CLOCK"] = "event"
    deployment.extra_env["RFM_SWEEP_INTERVAL"] = "1"
    old = deployment.tmp_path / "old.toml"
    new = deployment.tmp_path / "new.toml"
    old.write_text(
        "[profiles.default]\nrecency_days = [30, 90, 180, 365]\n"
        "frequency_orders = [2, 3, 5, 10]\nmonetary = [100, 250, 500, 1000]\n"
    )
    new.write_text(old.read_text().replace("[30, 90, 180, 365]", "[7, 14, 60, 120]"))
    deployment.extra_env["RFM_PROFILES"] = str(old)
    now = midnight(0) - 12 * timedelta(hours=1)  # in the past: accepted as an order time
    ages = {f"c{i}": 3 + 11 * i for i in range(20)}  # 3 .. 212 days
    events = [placed_doc(c, 0, now - d * DAY) for c, d in ages.items()]
    events.append(placed_doc("clock", 0, now))  # the event clock stands at `now`
    old_profiles, new_profiles = Profiles.load(old), Profiles.load(new)

    def rfm(profiles: Profiles, cid: str) -> str:
        return views.lookup(store, profiles, "default", cid, epoch_ms(now))["rfm"]  # type: ignore[index]

    deployment.produce(records_of(events))
    first = deployment.worker()
    deadline = time.monotonic() + 60
    while True:  # until every customer is published as the old profile scores it now
        stored = {c: store.reads.customer("default", c) for c in ages}
        before = {c: rfm(old_profiles, c) for c in ages if stored[c] is not None}
        published = {c: s.published.rfm for c, s in stored.items() if s and s.published}
        if len(before) == len(ages) and published == before:
            break
        assert time.monotonic() < deadline, {
            c: (before.get(c), published.get(c)) for c in ages if before.get(c) != published.get(c)
        }
        time.sleep(0.2)
    assert first.stop() == 0
    expected = {c: (before[c], rfm(new_profiles, c)) for c in ages}
    expected = {c: move for c, move in expected.items() if move[0] != move[1]}
    assert 5 <= len(expected) < len(ages)

    deployment.extra_env["RFM_PROFILES"] = str(new)
    worker = deployment.worker()

    def rescores(messages: list[Any]) -> list[dict[str, Any]]:
        docs = [orjson.loads(m.value()) for m in messages]
        return [d for d in docs if d.get("cause") == "rescore"]

    actions = deployment.read(
        deployment.actions, until=lambda m: len(rescores(m)) >= len(expected), timeout=60
    )
    time.sleep(1.5)  # a further sweep publishes nothing more
    actions = deployment.read(deployment.actions, until=lambda m: False, timeout=2)
    got = {d["customer_id"]: (d["previous"]["rfm"], d["current"]["rfm"]) for d in rescores(actions)}
    assert got == expected and len(rescores(actions)) == len(expected)
    assert store.marking.versions() == {"default": new_profiles.default.version}
    metrics = fetch(int(worker.env["RFM_HTTP_PORT"]), "/metrics")[1].decode()
    assert "rfm_rescore_running 0.0" in metrics
    # Marked for the sweep: only the customers the new thresholds move.
    assert f"rfm_rescore_marked_total {float(len(expected))}" in metrics
    assert f"rfm_rescore_examined_total {float(len(ages) + 1)}" in metrics
    assert "rescore pass done" in worker.log()
    assert_changes_consistent(actions)
    assert worker.stop() == 0


def test_a_base_switched_to_quantile_mode_moves_once_to_its_quintiles(
    deployment: Deployment, store: Store
) -> None:
    """Customers scored with thresholds; `rescore --dry-run` with a quantile profile shows
    the moves; `rfm-worker run` restarted with it computes the cut points before scoring
    and publishes each customer's move once, straight to its quintile (never via 333)."""
    from worker.rules.money import to_units
    from worker.rules.segments import STANDARD_MAP

    deployment.extra_env["RFM_CLOCK"] = "event"
    deployment.extra_env["RFM_SWEEP_INTERVAL"] = "1"
    rng = random.Random(3)
    end = midnight(1)
    history: dict[str, list[tuple[datetime, str]]] = {
        f"q{i}": [
            (end - rng.randrange(0, 300) * DAY, f"{rng.choice([10, 25, 60, 200, 450])}.00")
            for _ in range(rng.choice([1, 1, 2, 3, 5]))
        ]
        for i in range(150)
    }
    history["q0"].append((end, "10.00"))  # the event clock ends at `end`
    events = [
        placed_doc(c, n, at, amount) for c, h in history.items() for n, (at, amount) in enumerate(h)
    ]
    days = {
        c: (epoch_ms(end) - max(epoch_ms(at) for at, _ in h)) // 86_400_000
        for c, h in history.items()
    }
    counts = {c: len(h) for c, h in history.items()}
    spend = {c: sum(to_units(a) for _, a in h) for c, h in history.items()}
    expected = {
        c: (
            rank_score(days[c], list(days.values()), recency=True),
            rank_score(counts[c], list(counts.values())),
            rank_score(spend[c], list(spend.values())),
        )
        for c in history
    }

    def published() -> dict[str, tuple[int, int, int, str]]:
        stored = {c.customer_id: c.published for c in store.reads.customers("default")}
        return {c: (p.r, p.f, p.m, p.segment) for c, p in stored.items() if p is not None}

    def wait_for(check: Callable[[dict[str, tuple[int, int, int, str]]], bool]) -> None:
        deadline = time.monotonic() + 60
        while not check(published()):
            assert time.monotonic() < deadline, published()
            time.sleep(0.3)

    # Thresholds (the built-in profile) first, swept up to `end`.
    deployment.produce(records_of(events))
    first = deployment.worker()
    wait_for(
        lambda p: (
            len(p) == len(history)
            and store.due.backlog(
                {(s, q) for s in range(keys.SHARDS) for q in range(4)}, epoch_ms(end)
            )
            == 0
        )
    )
    assert first.stop() == 0
    before = published()

    # The dry run shows the moves the switch will make, and changes nothing.
    profile = deployment.tmp_path / "quantiles.toml"
    profile.write_text('[profiles.default]\nmode = "quantiles"\n')
    segment = {c: STANDARD_MAP.segment(*t) for c, t in expected.items()}
    moves: dict[tuple[str, str], int] = defaultdict(int)
    for c, (*_, seg) in before.items():
        if seg != segment[c]:
            moves[(seg, segment[c])] += 1
    dry = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "rescore",
            "--dry-run",
            "--profiles",
            str(profile),
            "--json",
        ],
        env=deployment.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    doc = orjson.loads(dry.stdout)
    assert {(m["from"], m["to"]): m["customers"] for m in doc["moves"]} == moves
    assert published() == before and store.cut_points.read() == {}

    deployment.extra_env["RFM_PROFILES"] = str(profile)
    worker = deployment.worker()
    wait_for(lambda p: {c: t[:3] for c, t in p.items()} == expected)
    cuts = store.cut_points.read()["default"]
    assert (cuts.version, cuts.population, cuts.sampled) == (1, 150, 150)
    actions = deployment.read(deployment.actions, until=lambda m: False, timeout=2)
    rescored = [
        d for d in (orjson.loads(m.value()) for m in actions) if d.get("cause") == "rescore"
    ]
    assert len({d["customer_id"] for d in rescored}) == len(rescored)  # one move each
    assert {d["customer_id"] for d in rescored} == {
        c for c, t in expected.items() if before[c][:3] != t
    }
    for d in rescored:
        assert tuple(int(x) for x in d["current"]["rfm"]) == expected[d["customer_id"]]
    assert_changes_consistent(actions)
    assert worker.stop() == 0
