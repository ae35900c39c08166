"""What a commit returns (worker/state/commit.py): the outcomes of its items and the
changes it appended to the outbox, ready to publish."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from worker.rules.customer import Outcome
from worker.rules.engine import Change
from worker.rules.events import ValidEvent


@dataclass(slots=True)  # not frozen: built per event, and frozen costs 3x
class Committed:
    """A change durably in an outbox stream, ready to publish."""

    outbox: bytes  # stream key
    entry_id: bytes
    key: bytes  # customer id, the Kafka key
    value: bytes  # the rfm.changed or rfm.overdue record
    change: Change


@dataclass(slots=True)
class BatchResult:
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    committed: list[Committed] = field(default_factory=list)
    conflicts: int = 0
    customers: int = 0  # customers committed (state or due index written)
    # Items whose decision raised (a bug, or a state the code cannot handle): left out of
    # the commit, so one bad customer never blocks the rest of the batch.
    failed: list[tuple[bytes, Any, Exception]] = field(default_factory=list)  # key, item
    rejected: list[tuple[ValidEvent, int, Exception]] = field(default_factory=list)
    folded: list[tuple[str, str, int]] = field(default_factory=list)  # tenant, id, orders

    def add(self, other: BatchResult) -> None:
        self.outcomes.update(other.outcomes)
        self.committed += other.committed
        self.conflicts += other.conflicts
        self.customers += other.customers
        self.rejected += other.rejected
        self.folded += other.folded


@dataclass(slots=True)
class SweepStep:
    result: BatchResult
    read: int  # due entries read
    exhausted: set[tuple[int, int]]  # (shard, partition) due zsets with nothing more due
