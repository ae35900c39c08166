"""Every commit call the engine plans for a stream of batches and sweeps: run by
tests/services/test_same_commit_calls.py with this checkout's python and with an earlier
release's (tests/releases.py), whose calls must be the same bytes.

A script, not a module of the suite: it imports `worker` from wherever the python that
runs it finds it, and uses only what both releases have. Input (JSON, a file):
{"now": ms, "profiles": TOML, "erasure_key": str | null, "redis": url,
 "steps": [{"batch": [[event JSON text, partition], ...], "now"?: ms} | {"sweep": as_of ms}]}
(a batch's own "now", when it has one, is the instant it is scored at);
output (JSON, stdout): per step, its calls as [KEYS, ARGV] in hex.

    python tests/commit_calls.py INPUT.json
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import redis

from worker.rules import churn
from worker.rules.churn import Params, SpendFit, SpendParams
from worker.rules.events import ValidEvent, validate
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state import commit, keys
from worker.state.store import Store

# A churn and spend fit (CDNOW's figures), for every profile with a churn model.
SPEND = SpendFit(SpendParams(6.25, 3.74, 15.44), -1.0, 50)
FIT_AT = 20_400 * 86_400_000


def main(path: str) -> None:
    with open(path, "rb") as f:
        spec: dict[str, Any] = orjson.loads(f.read())
    profiles = Profiles.from_toml(spec["profiles"])
    fit = churn.Fit("bgnbd", Params(0.243, 30.9, 0.793, 2.426), -1.0, 100, 100, 1, FIT_AT, SPEND)
    for name in profiles.churn_names():
        profiles.use_fit(name, fit)
    client = redis.Redis.from_url(spec["redis"])
    client.flushdb()
    client.script_flush()  # both runs load the script at their first call (NOSCRIPT)
    store = Store(client)
    calls: list[list[list[str]]] = []
    plan_call = commit.plan_call

    def recorded(*args: Any, **kw: Any) -> Any:
        plan = plan_call(*args, **kw)
        if plan.call is not None:
            calls.append([[k.hex() for k in plan.call[0]], [a.hex() for a in plan.call[1]]])
        return plan

    commit.plan_call = recorded  # type: ignore[assignment]
    now = spec["now"]
    key = spec["erasure_key"]
    steps = []
    for step in spec["steps"]:
        calls = []
        if "batch" in step:
            at = step.get("now", now)
            items = []
            for text, partition in step["batch"]:
                event = validate(text.encode(), profiles, at)
                assert isinstance(event, ValidEvent), event
                items.append((event, partition))
            causes.apply_batch(
                store,
                items,
                profiles,
                as_of_ms=at,
                now_ms=at,
                erasure_key=None if key is None else key.encode(),
            )
        else:
            zsets = [(s, p) for s in range(keys.SHARDS) for p in range(spec["partitions"])]
            at = step["sweep"]
            causes.sweep_step(store, zsets, profiles, as_of_ms=at, now_ms=at, limit=10_000)
        steps.append(calls)
    sys.stdout.buffer.write(orjson.dumps(steps))


if __name__ == "__main__":
    main(sys.argv[1])
