"""The relay's publish (worker/kafka/relay.py) without a broker: the records it produces and
the metrics it counts, per change. (With a broker and Redis: tests/services/test_faults.py,
tests/rules/test_triggers.py.)"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from worker import metrics
from worker.kafka.relay import TRIGGERS_HEADER, Relay
from worker.rules.engine import Change
from worker.state.results import Committed

SEGMENTS = [None, "champions", "loyal", "at_risk", "hibernating"]


class Producer:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def produce(self, topic: str, **record: Any) -> None:
        self.records.append((topic, record))


def random_changes(rng: random.Random, n: int) -> list[Committed]:
    out = []
    for i in range(n):
        kind = rng.choice(["rfm.changed"] * 6 + ["rfm.overdue", "rfm.erased"])
        before, after = rng.choice(SEGMENTS), rng.choice(SEGMENTS)
        names = tuple(rng.sample(["winback", "vip", "welcome"], rng.choice([0, 0, 0, 1, 2])))
        change = Change(
            tenant="default",
            customer_id=f"c{rng.randrange(20)}",
            cause=rng.choice(["order", "decay", "profile"]),  # type: ignore[arg-type]
            from_segment=before,
            to_segment=after,
            record=b"{}",
            kind=kind,  # type: ignore[arg-type]
            triggers=names,
            profile="default",
        )
        key = change.customer_id.encode()
        out.append(Committed(b"rfm:outbox:0", f"{i}-0".encode(), key, b"v%d" % i, change))
    return out


def samples() -> Counter[tuple[str, tuple[tuple[str, str], ...]]]:
    found: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for family in metrics.REGISTRY.collect():
        if family.name in ("rfm_changes", "rfm_segment_transitions", "rfm_overdue", "rfm_erased"):
            for s in family.samples:
                if s.name.endswith("_total"):
                    found[(s.name, tuple(sorted(s.labels.items())))] += int(s.value)
    return found


def test_publish_produces_every_change_and_counts_each_once() -> None:
    rng = random.Random(5)
    batch = random_changes(rng, 400)
    expected: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for c in batch:
        ch = c.change
        if ch.kind == "rfm.overdue":
            expected[("rfm_overdue_total", ())] += 1
        elif ch.kind == "rfm.erased":
            expected[("rfm_erased_total", ())] += 1
        else:
            expected[("rfm_changes_total", (("cause", ch.cause),))] += 1
            if ch.from_segment != ch.to_segment:
                moved = ch.from_segment or "none", ch.to_segment or "none"
                labels = (("from_segment", moved[0]), ("to_segment", moved[1]))
                expected[("rfm_segment_transitions_total", labels)] += 1
    producer = Producer()
    relay = Relay(None, producer, "actions")  # type: ignore[arg-type]  # publish: no outbox
    before = samples()
    relay.publish(batch[:150])
    relay.publish(batch[150:])
    after = samples()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == expected
    # one record per key at a time (the others wait their turn): the first of each key
    firsts = [next(c for c in batch if c.key == key) for key in {c.key: 0 for c in batch}]
    assert [(t, r["key"], r["value"]) for t, r in producer.records] == [
        ("actions", c.key, c.value) for c in firsts
    ]
    assert [r["headers"] for _, r in producer.records] == [
        [(TRIGGERS_HEADER, ",".join(c.change.triggers).encode())] for c in firsts
    ]
    assert relay.backlog == len(batch)
