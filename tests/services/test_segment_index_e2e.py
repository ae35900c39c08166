"""The segment index end to end on a real broker (docs/segments.md "Ranked lists"): after
a stream with cancels, refunds and duplicates during which the worker is killed (kill -9),
after the rescore of a changed profile, and after `rfm-worker rebuild`, every set of the
index equals a recomputation from the stored customers; and `members --format csv`
lists the rows of the endpoint's pages."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import assert_state_matches, converged, records_of
from tests.reference import expected_now
from tests.state.test_segment_index import assert_index_exact, stored_index
from worker.config import Settings
from worker.rules.profiles import Profiles
from worker.state.store import Store
from worker.web.api import Api

CHANGED = """
[profiles.default]
recency_days = [10, 20, 60, 120]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""


def _eventually(check: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_the_index_survives_kill_rescore_and_rebuild(
    deployment: Deployment, store: Store, tmp_path: Path
) -> None:
    events = generate(300, seed=29)
    expected = expected_now(events)
    records = records_of(events)
    half = len(records) // 2
    deployment.produce(records[:half])
    first = deployment.worker()
    deployment.read(deployment.actions, until=lambda m: len(m) >= 80, timeout=60)
    first.kill()  # kill -9 mid-stream; the rest arrives while no worker runs
    deployment.produce(records[half:])
    second = deployment.worker()
    deployment.read(deployment.actions, until=converged(expected), timeout=90)
    assert_state_matches(store, expected)
    assert_index_exact(store)
    assert second.stop() == 0

    # a changed profile: the worker rescores every customer in the background
    profiles_file = tmp_path / "changed.toml"
    profiles_file.write_text(CHANGED)
    version = Profiles.load(str(profiles_file)).default.version
    deployment.extra_env["RFM_PROFILES"] = str(profiles_file)
    third = deployment.worker()

    def rescored() -> None:
        assert {c.version for c in store.reads.customers() if c.orders} == {version}

    _eventually(rescored)
    assert_index_exact(store)
    assert third.stop() == 0
    before = stored_index(store)

    rebuilt = deployment.command("rebuild", "--yes")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert_index_exact(store)
    assert stored_index(store).keys() == before.keys()  # the same segments and cells

    # members --format csv: the endpoint's rows, page after page
    api = Api(Settings(), Profiles.load(str(profiles_file)), store, lambda: True, list)
    tenant, segment = max(store.reads.segment_counts().items(), key=lambda kv: kv[1])[0]
    rows: list[dict[str, Any]] = []
    cursor = ""
    while True:
        response = api.handle(f"/v1/segments/{tenant}/{segment}/customers?limit=7{cursor}")
        assert response.status == 200, response.body
        doc = orjson.loads(response.body)
        rows += doc["customers"]
        if doc["next"] is None:
            break
        cursor = f"&cursor={doc['next']}"
    listed = deployment.command(
        "members", "--tenant", tenant, "--segment", segment, "--format", "csv"
    )
    assert listed.returncode == 0, listed.stderr
    as_csv = list(csv.DictReader(io.StringIO(listed.stdout, newline="")))
    assert len(as_csv) == len(rows) == store.reads.segment_counts()[(tenant, segment)]
    assert list(as_csv[0]) == list(rows[0])  # the view's fields, in its order
    drop = {"as_of"}  # each read scores at its own instant
    assert [{k: v for k, v in r.items() if k not in drop} for r in as_csv] == [
        {k: "" if v is None else str(v) for k, v in r.items() if k not in drop} for r in rows
    ]
