"""`rfm-worker produce`: CSV and JSON lines (gzip, stdin) to the orders topic, validated by
the worker's rules, with deterministic event ids; and the backfill recipe end to end."""

from __future__ import annotations

import csv
import fcntl
import gzip
import io
import json
import logging
import os
import pty
import random
import re
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Deployment
from tests.factories import DAY
from tests.reference import DEFAULT, recompute
from worker.cli import main
from worker.commands.order_files import Row, derived_event_id, open_source, rows
from worker.embedded import free_port
from worker.errors import UsageError
from worker.rules.events import Rejection, ValidEvent
from worker.rules.instants import iso
from worker.rules.profiles import Profiles
from worker.state.store import Store
from worker.web import views


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing from the machine's RFM_*; logging restored after main() set it up."""
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _rows(path: Path | str, stdin: bytes | None = None) -> list[Row]:
    source = open_source(str(path), io.BufferedReader(io.BytesIO(stdin)) if stdin else None)
    try:
        return list(rows(source, Profiles.builtin()))
    finally:
        source.close()


def _doc(row: Row) -> dict[str, Any]:
    assert isinstance(row.result, ValidEvent), row
    doc: dict[str, Any] = orjson.loads(row.value)
    return doc


CSV_TEXT = (
    "customer_id,order_id,occurred_at,amount,type,tenant\n"
    "c1,o1,2024-03-01,40.00,,\n"  # line 2: a date, default type and tenant
    "c1,o2,2024-03-05T10:30:00+02:00,12.5,order_placed,shop-1\n"
    "\n"  # line 4: blank, skipped
    'c2,o3,"2024-03-0\n2",10,,\n'  # lines 5-6: a quoted newline makes a bad date
    "c3,o4,2024-03-07,-1,,\n"  # line 7: negative amount
    "c4,o5,2024-03-07,,order_cancelled,\n"  # line 8: a cancel needs no amount
    "c5,o6,2024-03-07,1,order_placed\n"  # line 9: too few fields
    "c6,o7,2024-03-07,abc,,\n"  # line 10
)


def test_csv_dates_are_midnight_utc_instants_kept_and_bad_rows_located(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(CSV_TEXT)
    result = _rows(path)
    assert [r.line for r in result] == [2, 3, 5, 7, 8, 9, 10]
    first, second = _doc(result[0]), _doc(result[1])
    assert first["occurred_at"] == "2024-03-01T00:00:00Z"
    assert first["type"] == "order_placed" and "tenant" not in first
    assert result[0].result.occurred_at == int(  # type: ignore[union-attr]
        datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000
    )
    assert second["occurred_at"] == "2024-03-05T10:30:00+02:00"
    assert second["tenant"] == "shop-1" and second["amount"] == "12.5"
    assert _doc(result[4])["type"] == "order_cancelled" and "amount" not in _doc(result[4])
    classes = [(r.line, r.result.error_class) for r in result if isinstance(r.result, Rejection)]
    assert classes == [
        (5, "invalid_timestamp"),
        (7, "invalid_amount"),
        (9, "invalid_row"),
        (10, "invalid_amount"),
    ]
    # Event ids derived from the content: the same on every read, distinct per row.
    again = _rows(path)
    ids = [_doc(r)["event_id"] for r in result if isinstance(r.result, ValidEvent)]
    assert ids == [_doc(r)["event_id"] for r in again if isinstance(r.result, ValidEvent)]
    assert len(set(ids)) == len(ids) and all(i.startswith("bf-") for i in ids)


def test_csv_header_without_a_required_column_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("customer_id,order_id,amount\nc1,o1,1\n")
    with pytest.raises(UsageError, match="occurred_at"):
        _rows(path)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        (
            "customer_id;order_id;occurred_at;amount\nc1;o1;2024-03-01;40,00\n",
            "its fields are separated by semicolons: produce reads comma-separated CSV",
        ),
        (
            "customer_id\torder_id\toccurred_at\tamount\nc1\to1\t2024-03-01\t40.00\n",
            "its fields are separated by tabs: produce reads comma-separated CSV",
        ),
        (
            '{"type":"order_placed","order_id":"o1","customer_id":"c1","amount":"1",'
            '"occurred_at":"2024-01-02T00:00:00Z"}\n',
            "it looks like JSON lines: name the file .jsonl",
        ),
    ],
)
def test_a_header_that_is_not_comma_separated_gets_a_hint(
    tmp_path: Path, text: str, hint: str
) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        _rows(path)
    message = str(info.value)
    assert message.startswith("the CSV header lacks column(s) ") and hint in message
    assert "\n" not in message


def test_a_comma_separated_header_lacking_a_column_gets_no_hint(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("customer_id,order_id,date;time,amount\nc1,o1,2024-03-01,1\n")
    with pytest.raises(UsageError) as info:
        _rows(path)
    assert str(info.value) == (
        "the CSV header lacks column(s) occurred_at (expected customer_id, order_id, "
        "occurred_at, amount, optional type, currency, tenant, event_id)"
    )


@pytest.mark.parametrize(
    "header", ["customer,order,date,amount", "customer_id;order_id;occurred_at;amount"]
)
def test_a_wrong_header_is_one_line_at_once_without_asking_kafka(
    tmp_path: Path, header: str
) -> None:
    """The file is checked before the broker is contacted: nothing listens on the port, and
    the header is still what is said, at once (it was 10 s, then "Kafka unavailable")."""
    path = tmp_path / "orders.csv"
    path.write_text(f"{header}\nc1,o1,2024-03-01,40.00\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFM_")}
    env["RFM_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "produce", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 8  # a Python start, not a broker timeout
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("rfm-worker: the CSV header lacks column(s) ")
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_json_lines_gzip_and_stdin_detection(tmp_path: Path) -> None:
    lines = [
        b'{"event_id":"e1","type":"order_placed","order_id":"o1","customer_id":"c1",'
        b'"amount":"5","occurred_at":"2024-01-01T00:00:00Z"}',
        b"",
        b'{"type":"order_placed","order_id":"o2","customer_id":"c1","amount":7,'
        b'"occurred_at":"2024-01-02T00:00:00Z"}',
        b"not json",
        b"[1, 2]",
        b'{"type":"order_placed","order_id":"o3","customer_id":"c1","amount":"1",'
        b'"occurred_at":"2024-01-02"}',
    ]
    data = b"\n".join(lines) + b"\n"
    plain = tmp_path / "orders.jsonl"
    plain.write_bytes(data)
    zipped = tmp_path / "orders.ndjson.gz"
    zipped.write_bytes(gzip.compress(data))
    for result in (
        _rows(plain),
        _rows(zipped),
        _rows("-", b"\n  \n" + data),  # JSON lines by the first non-blank character
        _rows("-", gzip.compress(data)),  # gzip by its magic bytes
    ):
        shift = result[0].line - 1
        assert [r.line - shift for r in result] == [1, 3, 4, 5, 6]
        assert _doc(result[0])["event_id"] == "e1"
        assert _doc(result[1])["event_id"] == derived_event_id(orjson.loads(lines[2]))
        assert [r.result.error_class for r in result[2:]] == [  # type: ignore[union-attr]
            "invalid_json",
            "not_an_object",
            "invalid_timestamp",  # dates are a CSV convenience only
        ]
    # CSV on standard input, gzipped
    csv_rows = _rows("-", gzip.compress(CSV_TEXT.encode()))
    assert [r.line for r in csv_rows] == [2, 3, 5, 7, 8, 9, 10]


def test_missing_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["produce", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "nope.csv: no such file" in err


# -- with the broker ----------------------------------------------------------------------


def _setenv(monkeypatch: pytest.MonkeyPatch, dep: Deployment) -> None:
    for name, value in dep.env().items():
        if name.startswith("RFM_"):
            monkeypatch.setenv(name, value)


def _topic(dep: Deployment, count: int) -> list[tuple[int, bytes, bytes]]:
    messages = dep.read(dep.orders, until=lambda m: len(m) >= count, timeout=30)
    return [(m.partition(), m.key(), m.value()) for m in messages]


@pytest.mark.demo_path
def test_produce_sends_the_valid_rows_reports_the_rest_and_a_rerun_is_identical(
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _setenv(monkeypatch, deployment)
    path = tmp_path / "orders.csv"
    path.write_text(CSV_TEXT)
    errors = tmp_path / "errors.jsonl"
    assert main(["produce", str(path), "--errors", str(errors)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("sent 3, rejected 4, ") and out.rstrip().endswith("events/s")
    assert "4 row(s) rejected: invalid_amount 2, invalid_timestamp 1, invalid_row 1" in err
    assert "  line 7: invalid_amount: amount:" in err
    assert "  line 9: invalid_row: 5 fields where the header has 6" in err
    docs = [json.loads(x) for x in errors.read_text().splitlines()]
    assert [(d["line"], d["error_class"]) for d in docs] == [
        (5, "invalid_timestamp"),
        (7, "invalid_amount"),
        (9, "invalid_row"),
        (10, "invalid_amount"),
    ]
    assert docs[1]["row"]["amount"] == "-1" and docs[1]["reason"]
    first = _topic(deployment, 3)
    assert sorted(k for _, k, _ in first) == [b"c1", b"c1", b"c4"]

    # A second run of the same file: the very same records (ids included), key by key.
    assert main(["produce", str(path)]) == 1
    both = _topic(deployment, 6)
    assert len(both) == 6
    assert Counter(both) == Counter(dict.fromkeys(first, 2))


def test_produce_from_standard_input_gzipped_json_lines(deployment: Deployment) -> None:
    events = [
        {
            "type": "order_placed",
            "order_id": f"o{n}",
            "customer_id": f"c{n % 3}",
            "amount": "10.00",
            "occurred_at": f"2025-01-{n + 1:02d}T12:00:00Z",
        }
        for n in range(5)
    ]
    data = gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in events))
    done = subprocess.run(
        [sys.executable, "-m", "worker", "produce", "-"],
        input=data,
        env=deployment.env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("sent 5, rejected 0, ")
    values = [orjson.loads(v) for _, _, v in _topic(deployment, 5)]
    assert sorted(v["event_id"] for v in values) == sorted(derived_event_id(e) for e in events)


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with standard error on a pseudo-terminal (what makes produce draw its bar):
    the exit code and what was drawn there."""
    controller, terminal = pty.openpty()
    # a new terminal is 0 columns wide, where tqdm draws nothing
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    drawn = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    return proc.wait(60), drawn.decode(errors="replace")


def test_the_progress_bar_counts_rows(deployment: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    day = (datetime.now(UTC) - 10 * DAY).date()
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["customer_id", "order_id", "occurred_at", "amount"])
        out.writerows([f"c{n % 97}", f"o{n}", day.isoformat(), "12.50"] for n in range(2500))
    code, drawn = _on_a_terminal(
        [sys.executable, "-m", "worker", "produce", str(path)], deployment.env()
    )
    assert code == 0, drawn
    final = drawn.replace("\r", "\n").strip().splitlines()[-1]
    assert re.match(r"produce: 2\.50k rows \[", final), drawn  # rows, not bytes
    assert "sent=2500, rejected=0, file=100%" in final, drawn
    assert "B/s" not in drawn and "kB" not in drawn, drawn


# -- the backfill recipe ------------------------------------------------------------------


def _history(path: Path, customers: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """A multi-year CSV history (dates and instants, placed/refunded/cancelled) and the
    same events as the reference recomputation reads them; and the last instant."""
    rng = random.Random(seed)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - 3 * 365 * DAY
    events: list[dict[str, Any]] = []
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["customer_id", "order_id", "occurred_at", "amount", "type"])
        for c in range(customers):
            cid = f"cust-{c}" if c % 17 else f'we,ird "{c}"'
            placed = []
            for n in range(rng.randint(1, 7)):
                at = start + rng.randint(0, 3 * 365 - 20) * DAY
                as_date = rng.random() < 0.5
                if not as_date:
                    at += timedelta(seconds=rng.randint(0, 86_399))
                text = at.date().isoformat() if as_date else at.isoformat()
                amount = f"{rng.randint(5, 400)}.{rng.randint(0, 99):02d}"
                out.writerow([cid, f"o{n}", text, amount, ""])
                events.append(_ev(cid, f"o{n}", "order_placed", at, amount))
                placed.append((f"o{n}", at, amount))
            if len(placed) > 1 and rng.random() < 0.3:  # cancel one, refund another
                (o1, at1, _), (o2, at2, amt2) = placed[0], placed[1]
                out.writerow([cid, o1, (at1 + DAY).isoformat(), "", "order_cancelled"])
                events.append(_ev(cid, o1, "order_cancelled", at1 + DAY, None))
                refund = str(Decimal(amt2) / 2)
                out.writerow([cid, o2, (at2 + DAY).date().isoformat(), refund, "order_refunded"])
                at_refund = (at2 + DAY).replace(hour=0, minute=0, second=0)
                events.append(_ev(cid, o2, "order_refunded", at_refund, refund))
    last = max(datetime.fromisoformat(e["occurred_at"]) for e in events)
    return events, int(last.timestamp() * 1000)


def _ev(cid: str, oid: str, kind: str, at: datetime, amount: str | None) -> dict[str, Any]:
    ev = {"event_id": f"{cid}|{oid}|{kind}", "type": kind, "order_id": oid, "customer_id": cid}
    ev["occurred_at"] = at.isoformat()
    if amount is not None:
        ev["amount"] = amount
    return ev


def test_backfill_recipe_produce_run_with_the_event_clock_then_sweep(
    deployment: Deployment, store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "history.csv"
    events, end_ms = _history(path, customers=300, seed=3)
    expected = recompute(
        events, end_ms, DEFAULT["recency"], DEFAULT["frequency"], DEFAULT["monetary"]
    )
    assert all(e is not None for e in expected.values())
    deployment.extra_env["RFM_CLOCK"] = "event"
    env = deployment.env()

    done = subprocess.run(
        [sys.executable, "-m", "worker", "produce", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"sent {len(events)}, rejected 0, ")

    worker = deployment.worker()
    profiles = Profiles.builtin()

    def applied() -> bool:
        if store.clock.read() != end_ms:
            return False
        for (tenant, cid), e in expected.items():
            doc = views.lookup(store, profiles, tenant, cid, end_ms)
            assert e is not None
            if doc is None or (doc["orders_lifetime"], Decimal(str(doc["monetary"]))) != (
                e.orders_lifetime,
                e.monetary,
            ):
                return False
        return True

    deadline = time.monotonic() + 30
    while not applied():
        assert time.monotonic() < deadline, worker.log()[-2000:]
        time.sleep(0.3)
    assert worker.stop() == 0

    sweep = subprocess.run(
        [sys.executable, "-m", "worker", "sweep", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sweep.returncode == 0, sweep.stderr
    # at the event clock, the history's last moment
    assert sweep.stdout.startswith(f"swept as of {iso(end_ms)}: "), sweep.stdout
    # After the sweep, the segment counters are those of the batch recomputation at the
    # history's last moment.
    want = Counter(("default", e.segment) for e in expected.values() if e is not None)
    assert store.reads.segment_counts() == dict(want)

    for cid in ["cust-1", "cust-2", "cust-50", 'we,ird "17"', "cust-299"]:
        shown = subprocess.run(
            [sys.executable, "-m", "worker", "customer", cid],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        doc = json.loads(shown.stdout)
        e = expected[("default", cid)]
        assert e is not None
        assert (doc["r"], doc["f"], doc["m"], doc["segment"]) == (e.r, e.f, e.m, e.segment)
        assert doc["orders"] == e.orders and Decimal(doc["monetary"]) == e.monetary
        assert doc["as_of"].startswith(
            datetime.fromtimestamp(end_ms / 1000, UTC).date().isoformat()
        )
