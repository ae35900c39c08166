"""Readiness and liveness of `rfm-worker run`: what /readyz and /healthz answer
(docs/http-and-metrics.md, Readiness), computed in one place.

Each part of the worker reports its own facts here, through a method: Kafka reachable and
answering (worker/kafka/watch.py), Redis answering (worker/services/redis_retry.py), dead
letters acknowledged (worker/kafka/dead_letters.py), in the consumer group
(worker/services/checkpoint.py), stopping (worker/pacing.py's `Stopping`). Readiness, its
reasons and the `rfm_ready` gauge are derived from them here and nowhere else. It sits
beside worker/metrics.py, not in services/, because the Kafka side reports to it too.
"""

from __future__ import annotations

import time

from worker import metrics
from worker.config import Settings
from worker.pacing import Stopping

# A broker that holds requests of this worker (a fetch, a heartbeat, a produce) unanswered
# for this long is hung (a frozen process, a stalled disk, a network black hole): not
# ready. A healthy broker answers a fetch within fetch.wait.max.ms (500 ms) and a
# heartbeat within its interval (3-5 s); TCP would take minutes to notice.
KAFKA_SILENT_S = 10.0
LIVENESS_S = 60.0  # a loop that has not turned for this long is stuck: not healthy


class Health:
    def __init__(self, settings: Settings, stopping: Stopping) -> None:
        self._settings = settings
        self._stopping = stopping
        self._kafka_ok = True
        self._kafka_silent: tuple[str, ...] = ()  # brokers holding requests unanswered
        self._redis_problem: str | None = None  # why Redis does not serve the worker now
        self._dlq_ok = True
        self._joined = False  # the first assignment (possibly empty) has been received
        self._heartbeat = time.monotonic()

    # -- facts, as the components report them -------------------------------------------

    def kafka_reachable(self, ok: bool) -> None:
        self._kafka_ok = ok
        self._publish()

    def brokers_silent(self, brokers: list[str]) -> None:
        self._kafka_silent = tuple(brokers)
        self._publish()

    def redis_fails(self, problem: str) -> None:
        """Why Redis does not serve the worker now, in words (/readyz says it)."""
        self._redis_problem = problem
        self._publish()

    def redis_answers(self) -> None:
        self._redis_problem = None
        self._publish()

    def dead_letters_acknowledged(self, ok: bool) -> None:
        self._dlq_ok = ok
        self._publish()

    def joined(self) -> None:
        """The first assignment (possibly empty) was received: a member of the group."""
        self._joined = True
        self._publish()

    def beat(self) -> None:
        """The loop turned (or waits on purpose: a Redis outage, a stalled DLQ topic)."""
        self._heartbeat = time.monotonic()

    # -- what they make ------------------------------------------------------------------

    @property
    def is_joined(self) -> bool:
        return self._joined

    @property
    def kafka_ok(self) -> bool:
        return self._kafka_ok

    @property
    def silent_brokers(self) -> tuple[str, ...]:
        return self._kafka_silent

    @property
    def redis_problem(self) -> str | None:
        """The Redis problem reported last (None: Redis answers)."""
        return self._redis_problem

    @property
    def dlq_ok(self) -> bool:
        return self._dlq_ok

    @property
    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Why the worker is not able to work, in words (/readyz says them); empty: ready.
        A member with no partition (more workers than partitions) is ready, or a rollout
        would never complete."""
        s = self._settings
        reasons = []
        if self._stopping.is_set():
            reasons.append("stopping")
        if not self._kafka_ok:
            reasons.append(f"Kafka at {s.kafka_bootstrap} (RFM_KAFKA_BOOTSTRAP) is unreachable")
        if self._kafka_silent:
            reasons.append(
                f"Kafka broker(s) {', '.join(self._kafka_silent)} have not answered for "
                f"{KAFKA_SILENT_S:.0f} s"
            )
        if not self._joined:
            reasons.append(f"not yet a member of the consumer group {s.kafka_group}")
        if self._redis_problem is not None:
            reasons.append(self._redis_problem)
        if not self._dlq_ok:
            reasons.append(f"dead letters to {s.dlq_topic} are not acknowledged")
        return reasons

    def is_healthy(self) -> bool:
        """The loop is turning (a Redis outage keeps it turning: not ready, still alive)."""
        return time.monotonic() - self._heartbeat < LIVENESS_S

    def _publish(self) -> None:
        metrics.READY.set(1 if self.ready else 0)

    def stopped(self) -> None:
        """The loop has ended: never ready again."""
        metrics.READY.set(0)
