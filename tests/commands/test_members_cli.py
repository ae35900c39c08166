"""`rfm-worker members` (docs/segments.md "The command") against the suite's Redis: the
rows of the endpoint's pages, as JSON lines and CSV, --limit, the cell filters, and the
refusals; and the index's encoding (pure)."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator

import orjson
import pytest

from tests.commands.test_cli import run
from tests.state.test_segment_index import api_of, expected_order, random_batches
from worker.embedded import EmbeddedRedis
from worker.rules.profiles import Profiles
from worker.state import segment_index
from worker.state.store import Store


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis) -> Iterator[None]:
    """The suite's Redis, nothing else from the machine's RFM_*; logging restored after."""
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("RFM_CLOCK", "event")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_members_streams_the_endpoints_rows(
    store: Store, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    profiles = Profiles.builtin()
    random_batches(store, profiles, seed=8, batches=6)
    api = api_of(store, profiles)  # the event clock: the CLI scores at the same instant
    tenant, segment = max(store.reads.segment_counts().items(), key=lambda kv: kv[1])[0]
    rows: list[dict[str, object]] = []
    cursor = ""
    while True:
        doc = orjson.loads(
            api.handle(f"/v1/segments/{tenant}/{segment}/customers?limit=5{cursor}").body
        )
        rows += doc["customers"]
        if doc["next"] is None:
            break
        cursor = f"&cursor={doc['next']}"
    assert len(rows) > 10

    code, out, err = run(capsysbinary, "members", "--tenant", tenant, "--segment", segment)
    assert code == 0, err
    assert [orjson.loads(line) for line in out.splitlines()] == rows

    code, out, err = run(
        capsysbinary, "members", "--tenant", tenant, "--segment", segment, "--format", "csv"
    )
    assert code == 0, err
    text = out.decode()
    assert text.partition("\r\n")[0].split(",") == list(rows[0])
    as_csv = list(csv.DictReader(io.StringIO(text, newline="")))
    assert as_csv == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]

    code, out, _ = run(
        capsysbinary, "members", "--tenant", tenant, "--segment", segment, "--limit", "3"
    )
    assert [orjson.loads(line) for line in out.splitlines()] == rows[:3]

    r, f = rows[0]["r"], rows[0]["f"]
    code, out, _ = run(
        capsysbinary, "members", "--tenant", tenant, "--segment", segment,
        "--order", "orders", "-r", str(r), "-f", str(f),
    )  # fmt: skip
    ids = [orjson.loads(line)["customer_id"] for line in out.splitlines()]
    assert ids == expected_order(store, tenant, segment, "o", (r, f))

    code, out, err = run(
        capsysbinary, "members", "--tenant", tenant, "--segment", segment,
        "--order", "expected_value",
    )  # fmt: skip
    assert code == 2 and out == b"" and "value model" in err

    code, out, _ = run(capsysbinary, "members", "--segment", "nobody", "--format", "csv")
    assert code == 0 and out.count(b"\r\n") == 1  # the header alone


def test_the_members_rank_highest_first_then_by_id() -> None:
    ranked = sorted(
        segment_index.member(rank, cid)
        for rank, cid in [(5, "b"), (-3, "a"), (10**20, "z"), (5, "a"), (0, "é"), (-(10**20), "y")]
    )
    assert [(segment_index.customer_id_of(m)) for m in ranked] == ["z", "a", "b", "é", "a", "y"]
    member = segment_index.member(42, "we/ird:{id}\n")
    text = segment_index.cursor("orders", member)
    assert segment_index.parse_cursor("orders", text) == member
    assert segment_index.parse_cursor("spend", text) is None
    assert segment_index.parse_cursor("orders", "!!") is None  # not base64url
    short = segment_index.cursor("orders", b"0123abc")  # no room for a rank and an id
    assert segment_index.parse_cursor("orders", short) is None
    not_hex = segment_index.cursor("orders", b"x" * 16 + b"id")
    assert segment_index.parse_cursor("orders", not_hex) is None
