"""The replay of `rfm-worker rebuild` (worker/commands/rebuild.py): the orders topic from
its start into a clean state.

For when Redis lost its data (the worker refuses to consume then, and says so). Every
worker must be stopped. The rebuild deletes what is left of the rfm-worker keys, consumes
every partition from its first offset up to the end offset seen at the start, applies the
valid events through the same commit path as the worker (records the worker dead-lettered
are skipped again, silently: their dead letters exist), records the applied offsets, and
commits them for the consumer group, so the workers resume exactly there. It publishes
nothing: the history's changes were published when it happened, and the next change of a
customer starts from its rebuilt score. Exact only if the topic still holds its whole
history (`retention.ms=-1`, no compaction).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from worker.config import Settings
from worker.errors import RfmError
from worker.kafka import KafkaException, clients, replay
from worker.rules.events import ValidEvent, validate
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state import keys, permissions
from worker.state.store import Store

logger = logging.getLogger(__name__)

BATCH = 2000


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild did."""

    ends: dict[int, int]  # partition -> the next offset, where the group resumes
    events: int  # applied
    rejected: int  # invalid, skipped
    wiped: int  # old keys deleted


def rebuild(store: Store, settings: Settings, profiles: Profiles) -> Rebuilt:
    """Delete the state `store` holds and replay the orders topic into it (every worker
    must be stopped: the command asks first)."""
    # Read to the end of every partition: the end is where the consumer reports EOF, not
    # a watermark asked for up front (some Kafka-protocol brokers report those loosely).
    consumer = clients.consumer(settings, {"enable.partition.eof": "true"})
    topic = settings.orders_topic
    try:
        permissions.self_test(store.redis)  # a refused command: named before the wipe
        wiped = store.server.wipe()
        incarnation = clients.topic_id(clients.admin(settings), topic)
        ends, events, rejected = _replay(consumer, store, settings, profiles)
        if incarnation is not None:  # the offsets recorded below are of this incarnation
            store.applied.adopt(topic, incarnation)
        store.applied.mark({p: (keys.applied_field(topic, p), end) for p, end in ends.items()})
        store.marking.record_done(profiles.versions())
        try:
            replay.commit_offsets(consumer, topic, ends)
        except KafkaException as exc:
            raise RfmError(
                f"the state is rebuilt, but the offsets of group {settings.kafka_group} could "
                f"not be committed ({exc}); is a worker still running? Stop it and rerun"
            ) from None
    finally:
        consumer.close()
    return Rebuilt(ends, events, rejected, wiped)


def _partitions(consumer: Any, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=clients.METADATA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise RfmError(f"cannot read the partitions of {topic} (RFM_ORDERS_TOPIC)")
    return sorted(meta.partitions)


def _replay(
    consumer: Any, store: Store, settings: Settings, profiles: Profiles
) -> tuple[dict[int, int], int, int]:
    """Apply every partition from its start to its end; returns (next offset per
    partition, events applied, events rejected)."""
    topic = settings.orders_topic
    ends = dict.fromkeys(_partitions(consumer, topic), 0)
    remaining = set(ends)
    replay.assign_from_start(consumer, topic, remaining)
    applied = rejected = 0
    warned: set[int] = set()
    while remaining:
        valid: list[tuple[ValidEvent, int]] = []
        now = wall_ms()
        for msg in consumer.consume(BATCH, 1.0):
            p = msg.partition()
            if error := msg.error():
                if replay.at_partition_end(error):
                    remaining.discard(p)
                continue
            if ends[p] == 0 and msg.offset() > 0 and p not in warned:
                warned.add(p)
                print(
                    f"warning: {topic}[{p}] starts at offset {msg.offset()}: its first events "
                    "are gone (retention), so the rebuilt state misses them",
                    file=sys.stderr,
                )
            ends[p] = msg.offset() + 1
            outcome = validate(msg.value(), profiles, now)
            if isinstance(outcome, ValidEvent):
                valid.append((outcome, p))
            else:
                rejected += 1
        if not valid:
            continue
        as_of = now
        if settings.clock == "event":
            as_of = store.clock.advance(max(ev.occurred_at for ev, _ in valid))
        result = causes.apply_batch(
            store, valid, profiles, as_of_ms=as_of, now_ms=now, erasure_key=settings.erasure_secret
        )
        applied += len(valid) - len(result.rejected)
        rejected += len(result.rejected)
    store.outbox.drop_all()
    return ends, applied, rejected
