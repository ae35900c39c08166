"""The engine's output against release 0.2.0's, byte for byte, on random streams.

The commit path is where the speed work goes (docs/performance.md): records built as bytes,
the segment index's members, the commit call's packing and plan. Whatever it changes
inside, its output must not change: each commit call (KEYS and ARGV of commit.lua, which
carry the customers' state blobs, their due instants, the segment index members, the
counters and the serialised change records) must ask for the same writes as the release's
for the same stream, every value the same bytes; only the plan's layout differs (its lists
flat, `resolved`). tests/commit_calls.py runs a stream with this checkout and with the
release (built from the project's history, tests/releases.py), each on an empty Redis; the
two lists of calls, resolved, must be equal.

The streams are random and seeded: two tenants (the built-in thresholds with triggers; a
churn and value model with bands, a frequency window and overdue alerts), customer ids
with quotes, backslashes and non-ASCII characters, placed orders (some placed twice with
other amounts), partial refunds, cancels, redelivered events, erasures, events moving a
customer to another partition, and sweeps at instants up to two years later; in some
streams each batch is scored at its own instant, as a running worker scores them.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.releases import Release, installed, source
from worker.embedded.local import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "commit_calls.py"
# Release 0.2.0 as first released: the engine before the speed work of issue 32.
RELEASED = Release("0.2.0", "7ad56f2d4cce8a6b49a3ecc652ff5e7f19b0d00e")
NOW = 20_790 * 86_400_000 + 37_000_000  # 2026-12-03T10:16:40Z
DAY = 86_400_000

PROFILES = """
[profiles.default]
recency_days = [10, 20, 60, 120]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[[profiles.default.triggers]]
name = "ask_testimonial"
when = "r_becomes"
value = 5

[[profiles.default.triggers]]
name = "winback"
when = "enters"
segment = "at_risk"

[profiles.shop-b]
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
frequency_window_days = 365
monetary = [100, 250, 500, 1000]
overdue_factor = 1.5
churn_model = "bgnbd"
p_alive_bands = [0.2, 0.5, 0.8]
value_model = "gamma_gamma"
value_bands = [5, 20, 50]

[[profiles.shop-b.triggers]]
name = "cadence"
when = "overdue"

[[profiles.shop-b.triggers]]
name = "vip"
when = "enters"
segment = "champions"
"""

IDS = ["c", 'q"uote', "back\\slash", "ünï", "日本", "tab\tid", "e😀"]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def stream(seed: int, customers: int = 60, steps: int = 70, moving: bool = False) -> dict[str, Any]:
    """A random stream of batches and sweeps (see the module's docstring); a few customers
    are rarely erased, so that their histories grow long. `moving`: each batch is scored
    at its own instant, the clock moving on by 0 to 3 days from batch to batch (sweeps move
    it too), so that a customer's stored ages move from commit to commit."""
    erase = 0.03 if customers > 10 else 0.002
    rng = random.Random(seed)
    people = [
        (rng.choice(["default", "shop-b"]), f"{rng.choice(IDS)}-{n}", rng.randrange(4))
        for n in range(customers)
    ]
    orders: list[tuple[str, str, int, str]] = []  # (tenant, customer, partition, order id)
    sent: list[tuple[str, int]] = []
    sweep_at = NOW
    out: list[dict[str, Any]] = []
    serial = 0
    for _ in range(steps):
        if rng.random() < 0.15:
            sweep_at += rng.choice([1, 7, 30, 90]) * DAY
            out.append({"sweep": sweep_at})
            continue
        batch: list[tuple[str, int]] = []
        for _ in range(rng.randint(1, 60)):
            serial += 1
            roll = rng.random()
            if roll < 0.08 and sent:  # a redelivery
                batch.append(rng.choice(sent))
                continue
            tenant, cid, partition = rng.choice(people)
            if rng.random() < 0.03:
                partition = (partition + 1) % 4  # the customer's key moved partition
            doc: dict[str, Any] = {"event_id": f"e{serial}", "customer_id": cid, "tenant": tenant}
            at = NOW - rng.randrange(0, 700 * DAY)
            mine = [o for o in orders if o[1] == cid]
            if roll < 0.62 or not mine:
                order = f"o{serial}" if roll > 0.1 or not mine else rng.choice(mine)[3]
                cents = rng.choice([rng.randrange(100, 50_000), rng.randrange(1, 30) * 1000])
                doc.update(type="order_placed", order_id=order, amount=f"{cents / 100:.2f}")
                orders.append((tenant, cid, partition, order))
            elif roll < 0.8:
                cents = rng.randrange(1, 9_000)
                doc.update(type="order_refunded", order_id=rng.choice(mine)[3])
                doc["amount"] = f"{cents / 100:.2f}"
            elif roll < 1 - erase:
                doc.update(type="order_cancelled", order_id=rng.choice(mine)[3])
            else:
                doc = {"event_id": f"erase-{serial}", "type": "customer_erased"}
                doc.update(customer_id=cid, tenant=tenant)
            doc["occurred_at"] = iso(at)
            record = (orjson.dumps(doc).decode(), partition)
            batch.append(record)
            sent.append(record)
        if moving:
            sweep_at += rng.choice([0, 3_600_000, DAY, 3 * DAY])
            out.append({"batch": batch, "now": sweep_at})
        else:
            out.append({"batch": batch})
    return {
        "now": NOW,
        "profiles": PROFILES,
        "erasure_key": "a secret of sixteen characters or more",
        "partitions": 4,
        "steps": out,
    }


def calls(python: Path, cwd: Path, spec: dict[str, Any], tmp: Path, own: bool) -> list[Any]:
    """The stream's calls as the engine `python` imports plans them (`own`: this
    checkout's, as this suite imports it; else the release's, whose python puts its own
    source first as long as nothing else is on PYTHONPATH)."""
    path = tmp / "stream.json"
    path.write_bytes(orjson.dumps(spec))
    env = {k: v for k, v in os.environ.items() if own or k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), str(DRIVER), str(path)], cwd=cwd, env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result: list[Any] = orjson.loads(done.stdout)
    return result


# (seed, customers, steps, moving): many short histories; a few long ones (kept decoded
# between batches, entries rebased: worker/rules/customer.py LONG_HISTORY); each batch at
# its own instant.
@pytest.mark.parametrize(
    ("seed", "customers", "steps", "moving"),
    [
        *((seed, 60, 70, False) for seed in range(1, 7)),
        (7, 6, 150, False),
        (8, 6, 150, False),
        (9, 60, 70, True),
        (10, 6, 150, True),
    ],
)
def test_every_commit_call_is_the_released_engines(
    seed: int,
    customers: int,
    steps: int,
    moving: bool,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    released = installed(RELEASED)
    spec = {**stream(seed, customers, steps, moving), "redis": redis_server.url}
    ours = calls(Path(sys.executable), ROOT, spec, tmp_path, own=True)
    theirs = calls(released, source(released), spec, tmp_path, own=False)
    assert sum(len(step) for step in ours) > 50  # the stream commits: the test can fail
    assert len(ours) == len(theirs)
    for n, (mine, before) in enumerate(zip(ours, theirs, strict=True)):
        assert [resolved(call) for call in mine] == [resolved(call) for call in before], (
            f"step {n} of seed {seed}: {spec['steps'][n]}"[:2000]
        )


def resolved(call: list[list[str]]) -> dict[str, Any]:
    """A commit call (KEYS, ARGV in hex) as what it asks the script to do: KEYS as sent,
    the multiset of ARGV values, and each plan entry with its KEYS and ARGV indexes
    replaced by the bytes they point at. The release's plan has an entry per list
    (`[[key, ...], ...]`) and an index member per entry, in ARGV among the others; this
    checkout's lists are flat, each set's members one run of ARGV (commit.lua's header):
    the same writes, in the same order within each set."""
    keys = [bytes.fromhex(k) for k in call[0]]
    argv = [bytes.fromhex(a) for a in call[1]]
    plan = orjson.loads(argv[0])

    def entries(name: str, width: int) -> list[list[Any]]:
        listed: list[Any] = plan.get(name) or []
        if listed and isinstance(listed[0], list):
            return listed
        return [listed[i : i + width] for i in range(0, len(listed), width)]

    def key(i: int) -> bytes:
        return keys[i - 1]

    def arg(i: int) -> bytes | None:
        return None if i == 0 else argv[i - 1]

    out: dict[str, Any] = {
        "keys": keys,
        "argv": sorted(argv[1:]),
        "customers": [
            (key(k), arg(e), arg(n), key(f), key(t), due)
            for k, e, n, f, t, due in entries("customers", 6)
        ],
        "counts": [(key(h), field, delta) for h, field, delta in entries("counts", 3)],
        "changes": [(key(o), arg(k), arg(v)) for o, k, v in entries("changes", 3)],
        "vouched": [(key(h), arg(f), floor) for h, f, floor in entries("vouched", 3)],
        "expire": [(key(h), ttl) for h, ttl in entries("expire", 2)],
        "erase": [(key(h), arg(d), arg(at)) for h, d, at in entries("erase", 3)],
    }
    for name in ("index", "unindex"):
        sets: dict[bytes, list[bytes | None]] = {}
        listed = plan.get(name) or []
        if listed and isinstance(listed[0], list):  # [set, member] per member
            for at, member in listed:
                sets.setdefault(key(at), []).append(arg(member))
        else:
            for at, first, count in entries(name, 3):
                sets.setdefault(key(at), []).extend(argv[first - 1 : first - 1 + count])
        out[name] = sets
    return out
