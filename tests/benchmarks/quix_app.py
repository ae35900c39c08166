"""The worker's peer in `make bench`: a Quix Streams app doing the worker's job.

Written the way Quix Streams' documentation shows an app (quixstreams 3.x: `Application`,
`app.topic`, `app.dataframe`, `apply`/`filter`/`update`, `stateful=True` with
`State.get/set`, `to_topic`, `app.run()`), with its defaults where they exist: RocksDB
state store, state durable through its changelog topics (`use_changelog_topics=True`),
`processing_guarantee="at-least-once"`, a checkpoint every 5 s. It runs in an environment
of its own (`make bench` makes `.venv-peer`: quixstreams 3.28.1 pins an older
confluent-kafka and pydantic than the worker's); `peer.py` starts it on the throughput
scenario's topic and reads the report it writes.

What it does, per order event (JSON, keyed by customer id):

- validates it with `worker.rules.events.validate`, the worker's own pydantic validation
  (the floor's too): the same accept/reject rules at the same cost, so the ratio worker /
  peer measures everything but validation; rejected events are dropped (counted);
- deduplicates by order id per customer (refunds by event id): one state key per order;
- keeps the customer's aggregates in its state: first and last order, order count, net
  spend (placed minus refunded and cancelled);
- scores R, F, M (1-5) against the fixed thresholds of the worker's built-in default
  profile (recency 30/90/180/365 days at the wall clock, 2/3/5/10 orders, spend
  100/250/500/1000) and maps them to a segment with the worker's standard rules;
- when the score or the segment moved, produces a change record (previous and current
  score, the event that caused it) to the output topic, keyed by customer id.

What it does not do, which the worker does: no dead-letter topic, no order history (a
cancellation does not move the first or last order back, no frequency window, no
rescoring as time passes: no sweeper, no overdue alerts), no tenants' profiles or
quantile thresholds, no erasure, no read API, no segment counters or index; its change
record has no stable change id. Its state is RocksDB on local disk plus changelog topics;
the worker's is Redis, shared by every worker process.

`--bare`: the per-customer aggregate alone (JSON deserialised, no validation, no dedup, no
output, no changelog topics): what Quix's consume and state cost by themselves.

The app stops itself after `--count` input messages (`app.stop()`; `app.run()` then
commits its last checkpoint and returns) and writes a JSON report: the time and the
process's CPU (every thread: `time.process_time()`) at its first message, at the last
one and when `app.run()` returned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from bisect import bisect_left, bisect_right
from itertools import product
from pathlib import Path
from typing import Any

from quixstreams import Application, State

from worker.rules.events import Rejection, ValidEvent, validate
from worker.rules.money import SCALE
from worker.rules.profiles import Profiles

DAY_MS = 86_400_000
# The worker's built-in default profile (worker/rules/profile.py, BUILTIN_DEFAULT).
RECENCY_DAYS = (30, 90, 180, 365)
FREQUENCY_ORDERS = (2, 3, 5, 10)
MONETARY = tuple(v * SCALE for v in (100, 250, 500, 1000))  # money units (1/10,000)
# The worker's standard segment map (worker/rules/segments.py): first matching rule wins.
RULES = (
    ("champions", (5, 5), (4, 5), None),
    ("loyal", (3, 4), (4, 5), None),
    ("potential_loyalist", (4, 5), (2, 3), None),
    ("new_customers", (5, 5), (1, 1), None),
    ("promising", (4, 4), (1, 1), None),
    ("need_attention", (3, 3), (3, 3), None),
    ("about_to_sleep", (3, 3), (1, 2), None),
    ("cant_lose_them", (1, 2), (5, 5), None),
    ("at_risk", (1, 2), (3, 4), None),
    ("at_risk", (1, 2), (1, 2), (4, 5)),
    ("hibernating", (2, 2), (1, 2), None),
    ("lost", (1, 1), (1, 2), None),
)


def _segment_of(r: int, f: int, m: int) -> str:
    for name, *ranges in RULES:
        scores = zip(ranges, (r, f, m), strict=True)
        if all(rng is None or rng[0] <= v <= rng[1] for rng, v in scores):
            return name
    raise ValueError(f"no segment for {r}{f}{m}")


SEGMENTS = {t: _segment_of(*t) for t in product(range(1, 6), repeat=3)}


def score(agg: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """R, F, M and the segment of a customer's aggregates at now_ms (the worker's formulas)."""
    days = (now_ms - agg["last"]) // DAY_MS
    r = len(RECENCY_DAYS) + 1 - bisect_left(RECENCY_DAYS, days)
    f = 1 + bisect_right(FREQUENCY_ORDERS, agg["orders"])
    m = 1 + bisect_right(MONETARY, agg["spend"])
    return {"rfm": f"{r}{f}{m}", "segment": SEGMENTS[(r, f, m)]}


class Job:
    """The app's steps and its counts; stops the app after `count` input messages."""

    def __init__(self, app: Application, count: int) -> None:
        self.app, self.count = app, count
        self.profiles = Profiles.builtin()
        self.seen = self.rejected = self.duplicates = self.changes = 0
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = {"at": time.perf_counter(), "cpu": time.process_time()}

    def progress(self, _value: object) -> None:
        """First step: every input message passes here."""
        self.seen += 1
        if self.seen == 1:
            self.mark("first")
        if self.seen == self.count:
            self.mark("last")
            self.app.stop()  # after this message: the last checkpoint, then run() returns

    def check(self, value: bytes) -> ValidEvent | None:
        event = validate(value, self.profiles, int(time.time() * 1000))
        if isinstance(event, Rejection):
            self.rejected += 1
            return None
        return event

    def apply(self, event: ValidEvent, state: State) -> dict[str, Any] | None:
        """Dedup, aggregates, score; the change record when the score moved, else None."""
        agg = self._merge(event, state, state.get("agg"))
        if agg is None:
            self.duplicates += 1
            return None
        now = int(time.time() * 1000)
        current = score(agg, now)
        previous = agg.get("score")
        agg["score"] = current
        state.set("agg", agg)
        if previous == current:
            return None
        self.changes += 1
        return {
            "type": "rfm.changed",
            "customer_id": event.customer_id,
            "tenant": event.tenant,
            "previous": previous,
            "current": current,
            "cause": {"event_id": event.event_id, "type": event.type},
            "as_of": now,
        }

    @staticmethod
    def _merge(
        event: ValidEvent, state: State, agg: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The aggregates with the event merged (the order keys set in `state`); None for a
        duplicate, or a refund or cancellation of an order it does not know."""
        amount = event.amount or 0
        if event.type == "order_placed":
            if state.exists("o:" + event.order_id):
                return None
            state.set("o:" + event.order_id, amount)
            if agg is None:
                agg = {"first": event.occurred_at, "last": event.occurred_at}
                agg |= {"orders": 0, "spend": 0}
            agg["first"] = min(agg["first"], event.occurred_at)
            agg["last"] = max(agg["last"], event.occurred_at)
            agg["orders"] += 1
            agg["spend"] += amount
        elif agg is None or event.type == "customer_erased":
            return None
        elif event.type == "order_refunded":
            if state.exists("r:" + event.event_id):
                return None
            state.set("r:" + event.event_id, amount)
            agg["spend"] = max(0, agg["spend"] - amount)
        else:  # order_cancelled: the order no longer counts
            placed = state.get("o:" + event.order_id)
            if placed is None or placed < 0:
                return None
            state.set("o:" + event.order_id, -1)
            agg["orders"] -= 1
            agg["spend"] = max(0, agg["spend"] - placed)
        return agg


def bare_aggregate(value: dict[str, Any], state: State) -> None:
    """--bare: count and spend per customer, nothing else."""
    agg = state.get("agg", [0, 0.0])
    agg[0] += 1
    agg[1] += float(value["amount"])
    state.set("agg", agg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--orders", required=True, help="input topic")
    parser.add_argument("--changes", help="output topic (not with --bare)")
    parser.add_argument("--group", required=True, help="consumer group (fresh: reads it all)")
    parser.add_argument("--count", type=int, required=True, help="stop after N messages")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--report", required=True, help="JSON report written here")
    parser.add_argument("--consumer-config", default="{}", help="librdkafka properties")
    parser.add_argument("--bare", action="store_true")
    args = parser.parse_args(argv)

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        use_changelog_topics=not args.bare,
        state_dir=args.state_dir,
        consumer_extra_config=json.loads(args.consumer_config),
        loglevel="WARNING",
    )
    job = Job(app, args.count)
    if args.bare:
        sdf = app.dataframe(app.topic(args.orders, key_deserializer="str"))
        sdf = sdf.update(job.progress)
        sdf = sdf.update(bare_aggregate, stateful=True)
    else:
        # Raw bytes in: validate() parses and checks the JSON in one pass, as in the worker.
        # No group_by: producers key the orders by customer id, so the state is per customer.
        orders = app.topic(args.orders, key_deserializer="str", value_deserializer="bytes")
        changes = app.topic(args.changes, key_serializer="str", value_serializer="json")
        sdf = app.dataframe(orders)
        sdf = sdf.update(job.progress)
        sdf = sdf.apply(job.check).filter(lambda event: event is not None)
        sdf = sdf.apply(job.apply, stateful=True).filter(lambda change: change is not None)
        sdf.to_topic(changes)  # keyed by the message key: the customer id
    app.run()  # until job.progress stops it
    job.mark("returned")
    report = {
        "mode": "bare" if args.bare else "job",
        "events": job.seen,
        "rejected": job.rejected,
        "duplicates": job.duplicates,
        "changes": job.changes,
        "marks": job.marks,
    }
    Path(args.report).write_text(json.dumps(report))
    return 0 if job.seen >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
