"""The command line (docs/commands.md) against the suite's Redis: customer, export,
matrix and schemas, through worker.cli.main."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Deployment
from tests.factories import AS_OF, AS_OF_MS, DAY, valid_event
from worker.cli import main
from worker.embedded import EmbeddedRedis
from worker.kafka import clients
from worker.rules.events import ValidEvent
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state.store import Store
from worker.web import openapi

REPO = Path(__file__).resolve().parents[2]
WEIRD_ID = "we/ird:{id} ☕\nx"

VIEW_FIELDS = {
    "tenant",
    "customer_id",
    "first_order_at",
    "last_order_at",
    "orders",
    "orders_lifetime",
    "monetary",
    "r",
    "f",
    "m",
    "rfm",
    "segment",
    "as_of",
    "p_alive",  # null: the profile has no churn model
    "p_alive_band",
    "expected_orders",
    "expected_order_value",  # null: no value model
    "expected_value",
    "value_band",
}


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis) -> Iterator[None]:
    """The suite's Redis, nothing else from the machine's RFM_*; logging restored after."""
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_REDIS_URL", redis_server.url)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def event(
    profiles: Profiles,
    event_id: str,
    kind: str,
    order_id: str,
    customer: str,
    occurred_at: str,
    amount: str | None = None,
    tenant: str | None = None,
    now_ms: int = AS_OF_MS,
) -> ValidEvent:
    return valid_event(
        profiles,
        event_id=event_id,
        kind=kind,
        order_id=order_id,
        customer=customer,
        occurred_at=occurred_at,
        now_ms=now_ms,
        amount=amount,
        tenant=tenant,
    )


def ago(days: float) -> str:
    return (AS_OF - days * DAY).isoformat()


def seed(store: Store, profiles: Profiles) -> None:
    """Customers whose scores at AS_OF follow from the default profile by hand:

    recency_days [30, 90, 180, 365], frequency_orders [2, 3, 5, 10], monetary
    [100, 250, 500, 1000].
    """
    e = event
    events = [
        # alice: 3 orders, 100 + 150.50 + (99.50 - 49.50 refunded) = 300.50; last order
        # 2026-05-27T10:30Z (4 days 13.5 h before AS_OF) -> R5 F3 M3 = 533 potential_loyalist
        e(profiles, "a1", "placed", "o1", "alice", ago(40), "100"),
        e(profiles, "a2", "placed", "o2", "alice", ago(10), "150.50"),
        e(profiles, "a3", "placed", "o3", "alice", "2026-05-27T12:30:00+02:00", 99.5),
        e(profiles, "a4", "refunded", "o3", "alice", ago(3), "49.50"),
        # bob: one small order 200 days ago -> R2 F1 M1 = 211 hibernating
        e(profiles, "b1", "placed", "o1", "bob", ago(200), "20.00"),
        # carol: her only order was cancelled -> no counted order
        e(profiles, "c1", "placed", "o1", "carol", ago(5), "80"),
        e(profiles, "c2", "cancelled", "o1", "carol", ago(4)),
        # any characters: 100 days, 500 -> R3 F1 M4 = 314 about_to_sleep
        e(profiles, "w1", "placed", "o1", WEIRD_ID, ago(100), "500"),
        # cell R1 F1: two lost, one big spender at_risk -> the cell's segment is lost
        e(profiles, "e1", "placed", "o1", "eve", ago(400), "10"),
        e(profiles, "f1", "placed", "o1", "frank", ago(400), "1000"),
        e(profiles, "g1", "placed", "o1", "gina", ago(500), "99.99"),
        # another tenant: 2 days, 1200 -> R5 F1 M5 = 515 new_customers
        e(profiles, "d1", "placed", "o1", "dave", ago(2), "1200", tenant="shop-b"),
    ]
    causes.apply_batch(
        store, [(ev, 0) for ev in events], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS
    )


@pytest.fixture
def seeded(store: Store, profiles: Profiles) -> Store:
    seed(store, profiles)
    return store


@pytest.fixture
def event_clock(monkeypatch: pytest.MonkeyPatch, seeded: Store) -> Store:
    """RFM_CLOCK=event with the clock at AS_OF: commands score at a known instant."""
    monkeypatch.setenv("RFM_CLOCK", "event")
    assert seeded.clock.advance(AS_OF_MS) == AS_OF_MS
    return seeded


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, str]:
    code = main(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def snapshot(client: redis.Redis) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in client.keys("*")}


ALICE_AT_AS_OF = {
    "tenant": "default",
    "customer_id": "alice",
    "first_order_at": "2026-04-22T00:00:00Z",
    "last_order_at": "2026-05-27T10:30:00Z",
    "orders": 3,
    "orders_lifetime": 3,
    "monetary": "300.50",
    "r": 5,
    "f": 3,
    "m": 3,
    "rfm": "533",
    "segment": "potential_loyalist",
    "as_of": "2026-06-01T00:00:00Z",
    "p_alive": None,
    "p_alive_band": None,
    "expected_orders": None,
    "expected_order_value": None,
    "expected_value": None,
    "value_band": None,
}


# -- customer -----------------------------------------------------------------------------------


def test_customer_prints_the_contract_view(
    event_clock: Store, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, err = run(capsysbinary, "customer", "alice")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == VIEW_FIELDS
    assert doc == ALICE_AT_AS_OF


def test_customer_with_tenant_and_any_characters(
    event_clock: Store, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, err = run(capsysbinary, "customer", "dave", "--tenant", "shop-b")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["tenant"], doc["customer_id"], doc["rfm"], doc["segment"]) == (
        "shop-b",
        "dave",
        "515",
        "new_customers",
    )
    assert (doc["orders"], doc["orders_lifetime"], doc["monetary"]) == (1, 1, "1200.00")

    code, out, err = run(capsysbinary, "customer", WEIRD_ID)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["customer_id"] == WEIRD_ID
    assert (doc["r"], doc["f"], doc["m"], doc["rfm"], doc["segment"]) == (
        3,
        1,
        4,
        "314",
        "about_to_sleep",
    )
    assert doc["monetary"] == "500.00"


@pytest.mark.parametrize(
    ("customer", "tenant"),
    [("nobody", "default"), ("dave", "default"), ("alice", "shop-b"), ("carol", "default")],
)
def test_customer_unknown_exits_1(
    event_clock: Store,
    capsysbinary: pytest.CaptureFixture[bytes],
    customer: str,
    tenant: str,
) -> None:
    code, out, err = run(capsysbinary, "customer", customer, "--tenant", tenant)
    assert code == 1
    assert out == b""
    assert len(err.splitlines()) == 1
    assert customer in err


def test_customer_with_the_wall_clock(
    store: Store, profiles: Profiles, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    now_ms = int(now.timestamp()) * 1000
    placed = event(
        profiles, "n1", "placed", "o1", "recent", (now - 10 * DAY).isoformat(), "120", now_ms=now_ms
    )
    causes.apply_batch(store, [(placed, 0)], profiles, as_of_ms=now_ms, now_ms=now_ms)
    before = time.time()
    code, out, err = run(capsysbinary, "customer", "recent")
    after = time.time()
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["r"], doc["f"], doc["m"], doc["rfm"], doc["segment"]) == (
        5,
        1,
        2,
        "512",
        "new_customers",
    )
    as_of = datetime.fromisoformat(doc["as_of"].replace("Z", "+00:00")).timestamp()
    assert before - 1 <= as_of <= after + 1


# -- export -------------------------------------------------------------------------------------


def export_lines(out: bytes) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [json.loads(line) for line in out.splitlines()]
    keyed = {(d["tenant"], d["customer_id"]): d for d in docs}
    assert len(keyed) == len(docs), "a customer exported twice"
    for d in docs:
        assert set(d) == VIEW_FIELDS
    return keyed


def test_export_every_customer_with_a_counted_order(
    event_clock: Store, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, err = run(capsysbinary, "export")
    assert code == 0, err
    docs = export_lines(out)
    assert set(docs) == {
        ("default", "alice"),
        ("default", "bob"),
        ("default", WEIRD_ID),
        ("default", "eve"),
        ("default", "frank"),
        ("default", "gina"),
        ("shop-b", "dave"),
    }  # carol's only order was cancelled
    assert docs[("default", "alice")] == ALICE_AT_AS_OF
    assert {k[1]: d["rfm"] for k, d in docs.items()} == {
        "alice": "533",
        "bob": "211",
        WEIRD_ID: "314",
        "eve": "111",
        "frank": "115",
        "gina": "111",
        "dave": "515",
    }
    assert {k[1]: d["segment"] for k, d in docs.items()} == {
        "alice": "potential_loyalist",
        "bob": "hibernating",
        WEIRD_ID: "about_to_sleep",
        "eve": "lost",
        "frank": "at_risk",
        "gina": "lost",
        "dave": "new_customers",
    }
    assert {d["as_of"] for d in docs.values()} == {"2026-06-01T00:00:00Z"}


def test_export_as_csv_has_the_json_lines_fields_and_rfc_4180_quoting(
    event_clock: Store, redis_server: EmbeddedRedis
) -> None:
    env = {**os.environ, "RFM_REDIS_URL": redis_server.url, "RFM_CLOCK": "event"}
    as_json = _cli(env, "export")
    as_csv = _cli(env, "export", "--format", "csv")
    assert as_json.returncode == as_csv.returncode == 0, as_csv.stderr
    text = as_csv.stdout.decode()
    header = text.partition("\r\n")[0]  # RFC 4180: CRLF line breaks
    assert header.split(",") == list(ALICE_AT_AS_OF)  # the view's fields, in its order
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    expected = export_lines(as_json.stdout)
    assert {(r["tenant"], r["customer_id"]): r for r in rows} == {
        key: {name: "" if value is None else str(value) for name, value in doc.items()}
        for key, doc in expected.items()
    }
    assert len(rows) == len(expected) == 7
    # the id with a newline, a colon, braces and a slash is one quoted field
    assert f'"{WEIRD_ID}"' in text

    empty = _cli(env, "export", "--format", "csv", "--tenant", "nobody-here")
    assert empty.returncode == 0
    assert empty.stdout.decode() == header + "\r\n"  # the header alone


def test_export_tenant_filter(
    event_clock: Store, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, _ = run(capsysbinary, "export", "--tenant", "shop-b")
    assert code == 0
    assert set(export_lines(out)) == {("shop-b", "dave")}
    code, out, _ = run(capsysbinary, "export", "--tenant", "default")
    assert code == 0
    assert {t for t, _ in export_lines(out)} == {"default"}
    assert len(export_lines(out)) == 6
    code, out, _ = run(capsysbinary, "export", "--tenant", "nobody-here")
    assert code == 0
    assert out == b""


@pytest.mark.parametrize(
    ("as_of", "alice_r", "alice_rfm", "alice_segment"),
    [
        # last order 2026-05-27T10:30Z
        ("2026-06-01T00:00:00Z", 5, "533", "potential_loyalist"),  # 4 days
        ("2026-06-26T10:29:59Z", 5, "533", "potential_loyalist"),  # 29 days (just under 30)
        ("2026-06-26T10:30:00Z", 5, "533", "potential_loyalist"),  # exactly 30 days
        ("2026-06-27T10:30:00Z", 4, "433", "potential_loyalist"),  # 31 days
        ("2026-09-08T00:00:00+02:00", 3, "333", "need_attention"),  # 103 days later
        ("2026-12-18T00:00:00Z", 2, "233", "at_risk"),  # 204 days
        ("2027-06-01T00:00:00Z", 1, "133", "at_risk"),  # 369 days
    ],
)
def test_export_as_of_scores_at_that_instant(
    seeded: Store,
    redis_client: redis.Redis,
    capsysbinary: pytest.CaptureFixture[bytes],
    as_of: str,
    alice_r: int,
    alice_rfm: str,
    alice_segment: str,
) -> None:
    before = snapshot(redis_client)
    code, out, err = run(capsysbinary, "export", "--tenant", "default", "--as-of", as_of)
    assert code == 0, err
    alice = export_lines(out)[("default", "alice")]
    assert (alice["r"], alice["f"], alice["m"]) == (alice_r, 3, 3)
    assert (alice["rfm"], alice["segment"]) == (alice_rfm, alice_segment)
    expected_as_of = datetime.fromisoformat(as_of).astimezone(UTC)
    assert alice["as_of"] == expected_as_of.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert snapshot(redis_client) == before  # read-only


def test_export_as_of_ten_days_and_a_hundred_later(
    store: Store,
    profiles: Profiles,
    redis_client: redis.Redis,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    causes.apply_batch(
        store,
        [(event(profiles, "x1", "placed", "o1", "x", ago(10), "300"), 0)],
        profiles,
        as_of_ms=AS_OF_MS,
        now_ms=AS_OF_MS,
    )
    before = snapshot(redis_client)
    results = {}
    for as_of in (AS_OF, AS_OF + 100 * DAY, AS_OF + 200 * DAY):
        code, out, _ = run(capsysbinary, "export", "--as-of", as_of.isoformat())
        assert code == 0
        (doc,) = export_lines(out).values()
        results[as_of] = doc["rfm"]
    # 10 days -> R5; 110 days -> R3 (<= 180); 210 days -> R2 (<= 365). F1, M3 (300).
    assert results == {AS_OF: "513", AS_OF + 100 * DAY: "313", AS_OF + 200 * DAY: "213"}
    assert snapshot(redis_client) == before


def test_read_commands_change_nothing(
    event_clock: Store, redis_client: redis.Redis, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    before = snapshot(redis_client)
    assert len(before) > 5
    for argv in (
        ["export"],
        ["export", "--as-of", "2030-01-01T00:00:00Z"],
        ["customer", "alice"],
        ["matrix"],
        ["matrix", "--json", "--tenant", "shop-b"],
    ):
        assert run(capsysbinary, *argv)[0] == 0
    assert snapshot(redis_client) == before


def test_export_as_of_a_date_is_midnight_utc(
    seeded: Store, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, err = run(capsysbinary, "export", "--tenant", "default", "--as-of", "2026-06-28")
    assert code == 0, err
    alice = export_lines(out)[("default", "alice")]
    assert alice["as_of"] == "2026-06-28T00:00:00Z"
    assert alice["rfm"] == "433"  # last order 2026-05-27T10:30Z: 31 whole days -> R4


def test_sweep_once_as_of_a_date_sweeps_at_midnight_utc(deployment: Deployment) -> None:
    day = (datetime.now(UTC) - DAY).date()  # never ahead of the wall clock
    done = _cli(deployment.env(), "sweep", "--once", "--as-of", day.isoformat())
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(f"swept as of {day.isoformat()}T00:00:00Z: ")


@pytest.mark.parametrize(
    "bad", ["yesterday", "2026-06-01T00:00:00", "2026-13-01T00:00:00Z", "2026-13-01", "2026-6-1"]
)
def test_export_rejects_an_instant_without_offset_or_invalid(
    seeded: Store, capsysbinary: pytest.CaptureFixture[bytes], bad: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--as-of", bad])
    assert info.value.code == 2
    _, err = capsysbinary.readouterr()
    assert b"--as-of" in err


# -- matrix -------------------------------------------------------------------------------------


def test_matrix_json(event_clock: Store, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, err = run(capsysbinary, "matrix", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"tenant", "as_of", "customers", "cells", "segments"}
    assert doc["tenant"] == "default"
    assert doc["as_of"] == "2026-06-01T00:00:00Z"
    assert doc["customers"] == 6
    for cell in doc["cells"]:
        assert set(cell) == {"r", "f", "customers", "segment"}
    cells = sorted((c["r"], c["f"], c["customers"], c["segment"]) for c in doc["cells"])
    assert cells == [
        (1, 1, 3, "lost"),  # eve and gina lost, frank at_risk: the most common wins
        (2, 1, 1, "hibernating"),
        (3, 1, 1, "about_to_sleep"),
        (5, 3, 1, "potential_loyalist"),
    ]
    assert doc["segments"] == {
        "about_to_sleep": 1,
        "at_risk": 1,
        "hibernating": 1,
        "lost": 2,
        "potential_loyalist": 1,
    }
    assert sum(c["customers"] for c in doc["cells"]) == doc["customers"]


def test_matrix_json_of_a_tenant(
    event_clock: Store, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, _ = run(capsysbinary, "matrix", "--json", "--tenant", "shop-b")
    assert code == 0
    doc = json.loads(out)
    assert doc["tenant"] == "shop-b"
    assert doc["customers"] == 1
    assert doc["cells"] == [{"r": 5, "f": 1, "customers": 1, "segment": "new_customers"}]
    assert doc["segments"] == {"new_customers": 1}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, capture_output=True, timeout=60
    )


@pytest.mark.parametrize(
    ("tenant", "hint"),
    [
        ("nosuch", " (tenants with customers: default, shop-b)"),
        ("shop-c", " (did you mean 'shop-b'?)"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_matrix_of_a_tenant_without_customers_says_so_and_exits_1(
    event_clock: Store, redis_server: EmbeddedRedis, tenant: str, hint: str, as_json: bool
) -> None:
    """Not an empty grid and exit 0, which looks like an answer (a typo is likelier)."""
    env = {**os.environ, "RFM_REDIS_URL": redis_server.url, "RFM_CLOCK": "event"}
    done = _cli(env, "matrix", "--tenant", tenant, *(["--json"] if as_json else []))
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().splitlines() == [f"tenant {tenant!r} has no customers{hint}"]


def test_matrix_table(event_clock: Store, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, err = run(capsysbinary, "matrix")
    assert code == 0, err
    text = out.decode()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "default" in text
    assert "6 customers" in text
    rows = {}
    for line in text.splitlines():
        tokens = line.split()
        if tokens and tokens[0] in {"1", "2", "3", "4", "5"} and len(line) > 10:
            rows[int(tokens[0])] = [int(t) for t in tokens[1:] if t.isdigit()]
    # F down, counts in R order
    assert rows[1] == [3, 1, 1]
    assert rows[3] == [1]
    assert rows[2] == rows[4] == rows[5] == []
    for name, count in {"lost": 2, "at_risk": 1, "potential_loyalist": 1}.items():
        assert re.search(rf"^{name}\s+{count}\s*$", text, re.MULTILINE), name


# -- schemas ------------------------------------------------------------------------------------

SCHEMA_FILES = {
    "order-event.json",
    "customer-erased.json",
    "rfm-changed.json",
    "rfm-overdue.json",
    "rfm-erased.json",
    "customer-view.json",
    "asyncapi.json",
    "openapi.json",
}


def test_schemas_write_and_check(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    directory = tmp_path / "schemas"
    code, _, err = run(capsysbinary, "schemas", "--check", "--dir", str(directory))
    assert code == 1  # missing
    assert err.strip()

    code, _, _ = run(capsysbinary, "schemas", "--dir", str(directory))
    assert code == 0
    assert {p.name for p in directory.iterdir()} == SCHEMA_FILES
    for path in directory.iterdir():
        assert json.loads(path.read_text())  # valid JSON
    assert run(capsysbinary, "schemas", "--check", "--dir", str(directory))[0] == 0

    changed = directory / "rfm-changed.json"
    changed.write_text(changed.read_text().replace('"change_id"', '"changeId"'))
    code, _, err = run(capsysbinary, "schemas", "--check", "--dir", str(directory))
    assert code == 1
    assert "rfm-changed.json" in err

    assert run(capsysbinary, "schemas", "--dir", str(directory))[0] == 0
    (directory / "customer-view.json").unlink()
    code, _, err = run(capsysbinary, "schemas", "--check", "--dir", str(directory))
    assert code == 1
    assert "customer-view.json" in err


def test_schemas_check_fails_when_the_openapi_document_differs(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    directory = tmp_path / "schemas"
    assert run(capsysbinary, "schemas", "--dir", str(directory))[0] == 0
    served = directory / "openapi.json"
    assert served.read_bytes() == openapi.render()
    assert run(capsysbinary, "schemas", "--check", "--dir", str(directory))[0] == 0

    doc = json.loads(served.read_bytes())
    del doc["paths"]["/v1/matrix"]  # a route the document no longer describes
    served.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    code, _, err = run(capsysbinary, "schemas", "--check", "--dir", str(directory))
    assert code == 1
    assert "openapi.json" in err
    assert "customer-view.json" not in err

    served.unlink()
    code, _, err = run(capsysbinary, "schemas", "--check", "--dir", str(directory))
    assert code == 1
    assert "openapi.json" in err


def test_repository_schemas_are_up_to_date(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert run(capsysbinary, "schemas", "--check", "--dir", str(REPO / "schemas"))[0] == 0
    monkeypatch.chdir(REPO)
    assert run(capsysbinary, "schemas", "--check")[0] == 0  # the default directory


def test_invalid_profiles_file_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    bad = tmp_path / "profiles.toml"
    bad.write_text(
        "[profiles.default]\nrecency_days = [30, 10]\n"
        "frequency_orders = [2, 3]\nmonetary = [100, 200]\n"
    )
    monkeypatch.setenv("RFM_PROFILES", str(bad))
    code, out, err = run(capsysbinary, "customer", "alice")
    assert code == 2
    assert out == b""
    assert len(err.splitlines()) == 1
    assert "recency_days" in err


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
def test_run_refuses_a_redis_that_evicts_customers(
    policy: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with EmbeddedRedis() as own:
        with redis.Redis.from_url(own.url) as admin:
            admin.config_set("maxmemory-policy", policy)
        monkeypatch.setenv("RFM_REDIS_URL", own.url)
        assert main(["run"]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after the start log line
        assert last.startswith("rfm-worker: configuration error: Redis's maxmemory-policy")
        assert f"maxmemory-policy is {policy}" in last and "RFM_REDIS_ALLOW_EVICTION" in last


def test_run_with_eviction_allowed_gets_past_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with EmbeddedRedis() as own:
        with redis.Redis.from_url(own.url) as admin:
            admin.config_set("maxmemory-policy", "allkeys-lru")
        monkeypatch.setenv("RFM_REDIS_URL", own.url)
        monkeypatch.setenv("RFM_REDIS_ALLOW_EVICTION", "true")
        with socket.socket() as taken:  # so that it fails next, at the HTTP bind
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            monkeypatch.setenv("RFM_HTTP_PORT", str(port))
            monkeypatch.setenv("RFM_HTTP_HOST", "127.0.0.1")
            assert main(["run"]) == 2
        err = capsys.readouterr().err
        assert "maxmemory-policy" not in err and f"RFM_HTTP_PORT={port}" in err


@pytest.mark.parametrize("command", [["sweep", "--once"], ["rebuild", "--yes"]])
def test_kafka_unreachable_is_one_line(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RFM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    # Nothing answers there: the metadata request fails alike after 1 s or after 10.
    monkeypatch.setattr(clients, "METADATA_TIMEOUT_S", 1.0)
    assert main(command) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("rfm-worker: Kafka at 127.0.0.1:1 (RFM_KAFKA_BOOTSTRAP) is unavailable")


def test_export_into_a_closed_pipe_ends_quietly(redis_server: EmbeddedRedis) -> None:
    """`rfm-worker export | head -1`: no BrokenPipeError traceback."""
    profiles = Profiles.builtin()
    events = [
        (event(profiles, f"e{i}", "placed", f"o{i}", f"c{i}", "2026-05-01T10:00:00Z", "10"), 0)
        for i in range(3000)
    ]
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
        causes.apply_batch(Store(client), events, profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)
    env = {**os.environ, "RFM_REDIS_URL": redis_server.url}
    done = subprocess.run(
        f"{sys.executable} -m worker export | head -1",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_run_with_kafka_unreachable_says_so_once_and_is_not_ready(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Misconfigured (no Kafka, and the built-in profile beside a base another worker
    scores with other thresholds): it says why it is not ready and writes nothing at all
    to the shared Redis, since it never joins its group (no marking pass, no sweep)."""
    from tests.factories import CHANGED_PROFILES, generate
    from worker.embedded import free_port
    from worker.rules.events import validate

    store = Store(redis_client)
    events = [validate(json.dumps(e).encode(), CHANGED_PROFILES, AS_OF_MS) for e in generate(40, 3)]
    causes.apply_batch(
        store,
        [(e, 0) for e in events if isinstance(e, ValidEvent)],
        CHANGED_PROFILES,
        as_of_ms=AS_OF_MS,
        now_ms=AS_OF_MS,
    )
    store.marking.record_done(CHANGED_PROFILES.versions())
    before = {key: redis_client.dump(key) for key in redis_client.scan_iter(count=1000)}
    assert len(before) > 40
    port = free_port()
    env = {
        **os.environ,
        "RFM_REDIS_URL": redis_server.url,
        "RFM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "RFM_HTTP_PORT": str(port),
        "RFM_HTTP_HOST": "127.0.0.1",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while "is unreachable" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # librdkafka keeps retrying meanwhile
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200  # alive: nothing to restart
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert not_ready.value.code == 503
        reasons = json.loads(not_ready.value.read())["reasons"]
        not_ready.value.close()
        assert reasons == [
            "Kafka at 127.0.0.1:1 (RFM_KAFKA_BOOTSTRAP) is unreachable",
            "not yet a member of the consumer group rfm-worker",
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    after = {key: redis_client.dump(key) for key in redis_client.scan_iter(count=1000)}
    assert after == before  # not one key written, changed or deleted
    text = log.read_text()
    assert text.count("Kafka at 127.0.0.1:1 (RFM_KAFKA_BOOTSTRAP) is unreachable") == 1
    assert "%3|" not in text  # librdkafka's raw lines go through the worker's logging
    assert sum('"logger":"worker.rdkafka"' in line for line in text.splitlines()) < 10


def test_run_with_redis_unreachable_is_one_line_at_once() -> None:
    """Said before any group join, in one line, with the exit code of a start failure."""
    env = {**os.environ, "RFM_REDIS_URL": "redis://127.0.0.1:1/0"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and time.monotonic() - started < 15
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "rfm-worker: Redis at redis://127.0.0.1:1/0 (RFM_REDIS_URL) is unavailable"
    )
    assert "Traceback" not in done.stderr
