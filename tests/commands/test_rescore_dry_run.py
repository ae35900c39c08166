"""`rfm-worker rescore --dry-run`: the per-customer decision and its tally on hand-built
customers, then the command against the suite's Redis, checked against an independent
recomputation (tests/reference.py) and for changing nothing at all."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.factories import AS_OF, AS_OF_MS, DAY_MS
from tests.reference import recompute
from worker.cli import main
from worker.embedded import EmbeddedRedis
from worker.rules.customer import Customer, Published
from worker.rules.events import ValidEvent, validate
from worker.rules.money import to_units
from worker.rules.orders import Order
from worker.rules.profiles import Profiles
from worker.rules.rescore import decide, dry_run_doc, render, transitions
from worker.services import causes
from worker.state.store import Store

NEW = """
[profiles.default]
recency_days = [10, 20, 30, 40]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[profiles.other]
recency_days = [20, 40, 60, 80]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""


# -- the tally, on hand-built customers ---------------------------------------------------------


def customer(
    cid: str,
    orders: list[tuple[int, str]],
    published: tuple[int, int, int, str] | None,
    *,
    tenant: str = "default",
    cancelled: bool = False,
    scored_at: int = AS_OF_MS,
) -> Customer:
    """orders: (days before AS_OF, amount)."""
    return Customer(
        tenant,
        cid,
        {
            f"o{i}": Order(AS_OF_MS - days * DAY_MS, to_units(amount), cancelled=cancelled)
            for i, (days, amount) in enumerate(orders)
        },
        None if published is None else Published(*published),
        scored_at=scored_at,
    )


def hand_built() -> list[Customer]:
    """Published under the built-in default (recency [30, 90, 180, 365]); the new profile's
    recency is [10, 20, 30, 40] for default, [20, 40, 60, 80] for `other`."""
    return [
        # 15 days, 50: R5 -> R4 (<= 20): new_customers -> promising
        customer("alice", [(15, "50")], (5, 1, 1, "new_customers")),
        # 5 days: R5 either way, nothing changes
        customer("bob", [(5, "50")], (5, 1, 1, "new_customers")),
        # 3 orders, last 25 days ago, 300: 533 -> 333: potential_loyalist -> need_attention
        customer(
            "carl",
            [(25, "100"), (40, "100"), (50, "100")],
            (5, 3, 3, "potential_loyalist"),
        ),
        # 2 orders, last 15 days ago, 50: 521 -> 421, potential_loyalist either way
        customer("dina", [(15, "25"), (16, "25")], (5, 2, 1, "potential_loyalist")),
        # orders but nothing published yet: (none) -> new_customers
        customer("eve", [(5, "50")], None),
        # published, but every order cancelled since: lost -> (none)
        customer("fred", [(400, "20")], (1, 1, 1, "lost"), cancelled=True),
        # nothing published, no counted order: not examined
        customer("gina", [(5, "20")], None, cancelled=True),
        # its tenant's own new profile: 15 days is still R5
        customer("hank", [(15, "50")], (5, 1, 1, "new_customers"), tenant="other"),
        # committed 8 days after AS_OF: scored then (13 days: R4), never back in time
        customer("ivy", [(5, "50")], (5, 1, 1, "new_customers"), scored_at=AS_OF_MS + 8 * DAY_MS),
    ]


def test_decide_one_customer() -> None:
    profiles = Profiles.from_toml(NEW)
    alice, bob, *_ = hand_built()
    d = decide(alice, profiles.for_tenant("default"), AS_OF_MS)
    assert d is not None
    assert (d.from_segment, d.to_segment, d.segment_changes, d.changes) == (
        "new_customers",
        "promising",
        True,
        True,
    )
    assert d.after is not None and d.after.rfm == "411"
    d = decide(bob, profiles.for_tenant("default"), AS_OF_MS)
    assert d is not None and not d.changes and not d.segment_changes
    gina = hand_built()[6]
    assert decide(gina, profiles.for_tenant("default"), AS_OF_MS) is None


def test_transitions_of_every_tenant() -> None:
    tally = transitions(hand_built(), Profiles.from_toml(NEW), AS_OF_MS)
    assert tally.examined == 8  # all but gina
    assert tally.moves == Counter(
        {
            ("new_customers", "promising"): 2,  # alice, ivy
            ("potential_loyalist", "need_attention"): 1,  # carl
            (None, "new_customers"): 1,  # eve
            ("lost", None): 1,  # fred
        }
    )
    assert tally.moving == 5
    assert tally.score_only == 1  # dina
    assert tally.sorted_moves() == [
        ("new_customers", "promising", 2),
        (None, "new_customers", 1),
        ("lost", None, 1),
        ("potential_loyalist", "need_attention", 1),
    ]


def test_transitions_of_one_tenant_and_the_documents() -> None:
    profiles = Profiles.from_toml(NEW)
    tally = transitions(hand_built(), profiles, AS_OF_MS, tenant="other")
    assert (tally.examined, tally.moves, tally.score_only) == (1, Counter(), 0)

    tally = transitions(hand_built(), profiles, AS_OF_MS)
    doc = dry_run_doc(tally, None, AS_OF_MS)
    assert doc == {
        "tenant": None,
        "as_of": "2026-06-01T00:00:00Z",
        "customers": 8,
        "moves": [
            {"from": "new_customers", "to": "promising", "customers": 2},
            {"from": None, "to": "new_customers", "customers": 1},
            {"from": "lost", "to": None, "customers": 1},
            {"from": "potential_loyalist", "to": "need_attention", "customers": 1},
        ],
    }
    text = render(tally, None, AS_OF_MS, "new.toml")
    lines = text.splitlines()
    assert (
        lines[0] == "rescore dry run: every tenant, profiles new.toml, as of 2026-06-01T00:00:00Z"
    )
    moves = [line.split() for line in lines if line.startswith("  ")]
    assert moves == [
        ["new_customers", "->", "promising:", "2"],
        ["(none)", "->", "new_customers:", "1"],
        ["lost", "->", "(none):", "1"],
        ["potential_loyalist", "->", "need_attention:", "1"],
    ]
    totals = [line.split(":") for line in lines if line.startswith(("customers", "segment", "RFM"))]
    assert [(label, int(value)) for label, value in totals] == [
        ("customers examined", 8),
        ("segment would change", 5),
        ("RFM score would change, segment not", 1),
    ]
    assert "Nothing was changed" in lines[-1]


def test_render_without_moves() -> None:
    tally = transitions([], Profiles.builtin(), AS_OF_MS, tenant="x")
    text = render(tally, "x", AS_OF_MS, None)
    assert "tenant x, the built-in default profile" in text
    assert "no customer would change segment" in text
    assert "customers examined: 0" in " ".join(text.split())


# -- the command, on the suite's Redis ----------------------------------------------------------

OLD = """
[profiles.default]
recency_days = [30, 90, 180, 365]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""
# shop-b has no profile before: it was scored with `default`; now it gets its own.
OTHER = """
[profiles.default]
recency_days = [15, 45, 120, 300]
frequency_orders = [2, 4, 6, 8]
monetary = [50, 200, 400, 800]

[profiles.shop-b]
recency_days = [60, 200]
frequency_orders = [3, 6]
monetary = [300, 900]
"""
THRESHOLDS = {
    ("old", "default"): ([30, 90, 180, 365], [2, 3, 5, 10], [100, 250, 500, 1000]),
    ("old", "shop-b"): ([30, 90, 180, 365], [2, 3, 5, 10], [100, 250, 500, 1000]),
    ("new", "default"): ([15, 45, 120, 300], [2, 4, 6, 8], [50, 200, 400, 800]),
    ("new", "shop-b"): ([60, 200], [3, 6], [300, 900]),
}


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("RFM_CLOCK", "event")
    yield


def order_events(seed: int = 7) -> list[dict[str, Any]]:
    """A mixed population over two tenants: orders, refunds, cancellations."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(120):
        tenant = "default" if n % 3 else "shop-b"
        cid = f"c{n}"
        for o in range(rng.randint(1, 12)):
            at = AS_OF - timedelta(days=rng.randint(0, 700), hours=rng.randint(0, 23))
            amount = f"{rng.randint(5, 400)}.{rng.randint(0, 99):02d}"
            base = {"tenant": tenant, "customer_id": cid, "order_id": f"o{o}"}
            events.append(
                {
                    **base,
                    "event_id": f"{cid}-{o}-p",
                    "type": "order_placed",
                    "occurred_at": at.isoformat(),
                    "amount": amount,
                }
            )
            luck = rng.random()
            if luck < 0.1:
                events.append(
                    {
                        **base,
                        "event_id": f"{cid}-{o}-c",
                        "type": "order_cancelled",
                        "occurred_at": (at + timedelta(hours=1)).isoformat(),
                    }
                )
            elif luck < 0.2:
                events.append(
                    {
                        **base,
                        "event_id": f"{cid}-{o}-r",
                        "type": "order_refunded",
                        "occurred_at": (at + timedelta(hours=1)).isoformat(),
                        "amount": "5.00",
                    }
                )
    # a customer whose only order was cancelled: no published score, not examined
    for kind in ("placed", "cancelled"):
        doc = {
            "tenant": "default",
            "customer_id": "gone",
            "order_id": "o1",
            "event_id": f"gone-{kind}",
            "type": f"order_{kind}",
            "occurred_at": (AS_OF - timedelta(days=3)).isoformat(),
        }
        events.append({**doc, "amount": "10"} if kind == "placed" else doc)
    return events


def expected_moves(events: list[dict[str, Any]], tenant: str | None) -> tuple[int, Counter[Any]]:
    """(customers examined, (from, to) -> customers), recomputed from the events alone."""
    examined, moves = 0, Counter[tuple[str, str]]()
    for t in ("default", "shop-b"):
        if tenant is not None and t != tenant:
            continue
        mine = [e for e in events if e["tenant"] == t]
        before = recompute(mine, AS_OF_MS, *THRESHOLDS[("old", t)])
        after = recompute(mine, AS_OF_MS, *THRESHOLDS[("new", t)])
        for cust, old in before.items():
            if old is None:
                continue
            examined += 1
            new = after[cust]
            assert new is not None
            if old.segment != new.segment:
                moves[(old.segment, new.segment)] += 1
    return examined, moves


def snapshot(client: redis.Redis) -> dict[Any, Any]:
    return {key: client.dump(key) for key in client.keys("*")}


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, str]:
    code = main(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


@pytest.fixture
def deployed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> tuple[list[dict[str, Any]], Path]:
    """Customers committed under OLD (RFM_PROFILES), the event clock at AS_OF; returns the
    events and the path of OTHER."""
    old, other = tmp_path / "old.toml", tmp_path / "other.toml"
    old.write_text(OLD)
    other.write_text(OTHER)
    monkeypatch.setenv("RFM_PROFILES", str(old))
    profiles = Profiles.load(old)
    events = order_events()
    valid = []
    for doc in events:
        ev = validate(orjson.dumps(doc), profiles, AS_OF_MS)
        assert isinstance(ev, ValidEvent), ev
        valid.append((ev, 0))
    causes.apply_batch(store, valid, profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)
    assert store.clock.advance(AS_OF_MS) == AS_OF_MS
    return events, other


def as_counter(doc: dict[str, Any]) -> Counter[tuple[str, str]]:
    return Counter({(m["from"], m["to"]): m["customers"] for m in doc["moves"]})


def test_dry_run_json_matches_a_recomputation_and_changes_nothing(
    deployed: tuple[list[dict[str, Any]], Path],
    redis_client: redis.Redis,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    events, other = deployed
    before = snapshot(redis_client)
    assert len(before) > 100

    code, out, err = run(capsysbinary, "rescore", "--dry-run", "--profiles", str(other), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"tenant", "as_of", "customers", "moves"}
    assert (doc["tenant"], doc["as_of"]) == (None, "2026-06-01T00:00:00Z")
    examined, moves = expected_moves(events, None)
    assert examined > 100 and len(moves) > 3  # the population does move
    assert doc["customers"] == examined
    assert as_counter(doc) == moves
    assert all(set(m) == {"from", "to", "customers"} for m in doc["moves"])
    counts = [m["customers"] for m in doc["moves"]]
    assert counts == sorted(counts, reverse=True)

    code, out, err = run(
        capsysbinary,
        "rescore",
        "--dry-run",
        "--profiles",
        str(other),
        "--json",
        "--tenant",
        "shop-b",
    )
    assert code == 0, err
    doc = json.loads(out)
    examined, moves = expected_moves(events, "shop-b")
    assert (doc["tenant"], doc["customers"], as_counter(doc)) == ("shop-b", examined, moves)

    # the profiles in effect (RFM_PROFILES), at the instant they were applied: no move
    code, out, err = run(capsysbinary, "rescore", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["moves"] == []

    code, out, err = run(capsysbinary, "rescore", "--dry-run", "--profiles", str(other))
    assert code == 0, err
    text = out.decode()
    assert f"every tenant, profiles {other}" in text
    examined, moves = expected_moves(events, None)
    listed = {
        (frm, to.rstrip(":")): int(n)
        for frm, _, to, n in (line.split() for line in text.splitlines() if line.startswith("  "))
    }
    assert listed == dict(moves)
    assert f"customers examined: {examined}" in " ".join(text.split())
    assert "Nothing was changed" in text

    assert snapshot(redis_client) == before


def test_without_dry_run_it_refuses(
    deployed: tuple[list[dict[str, Any]], Path],
    redis_client: redis.Redis,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    _, other = deployed
    before = snapshot(redis_client)
    for argv in (["rescore"], ["rescore", "--profiles", str(other), "--json"]):
        code, out, err = run(capsysbinary, *argv)
        assert code == 2 and out == b""
        assert len(err.strip().splitlines()) == 1
        assert "--dry-run" in err and "applied by the worker itself" in err
    assert snapshot(redis_client) == before


def test_an_invalid_profiles_file_is_one_line(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[profiles.default]\nrecency_days = [30, 10]\nfrequency_orders = [2]\nmonetary = [1]\n"
    )
    for path in (bad, tmp_path / "missing.toml"):
        code, out, err = run(capsysbinary, "rescore", "--dry-run", "--profiles", str(path))
        assert code == 2 and out == b""
        assert len(err.strip().splitlines()) == 1
        assert err.startswith("rfm-worker: configuration error:") and str(path) in err


def test_redis_down_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    monkeypatch.setenv("RFM_REDIS_URL", "redis://127.0.0.1:1/0")
    code, out, err = run(capsysbinary, "rescore", "--dry-run", "--json")
    assert code == 2 and out == b""
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith(
        "rfm-worker: Redis at redis://127.0.0.1:1/0 (RFM_REDIS_URL) is unavailable"
    )
