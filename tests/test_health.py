"""`Health`: readiness, its reasons and the rfm_ready gauge, from the facts the parts of the
worker report (the one place they are computed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from worker.config import Settings
from worker.health import Health
from worker.pacing import Stopping

pytestmark = pytest.mark.unit


def gauge() -> float | None:
    return REGISTRY.get_sample_value("rfm_ready")


def test_ready_once_joined_and_every_fact_is_good() -> None:
    settings = Settings()
    health = Health(settings, Stopping(budget=1.0))
    assert health.not_ready() == [f"not yet a member of the consumer group {settings.kafka_group}"]
    health.joined()
    assert health.ready and health.not_ready() == []
    assert gauge() == 1.0


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (lambda h: h.kafka_reachable(False), "(RFM_KAFKA_BOOTSTRAP) is unreachable"),
        (lambda h: h.brokers_silent(["b1:9092/1"]), "b1:9092/1 have not answered for 10 s"),
        (lambda h: h.redis_fails("Redis is loading its data set"), "loading its data set"),
        (lambda h: h.dead_letters_acknowledged(False), "are not acknowledged"),
    ],
    ids=["kafka", "silent-broker", "redis", "dead-letters"],
)
def test_each_bad_fact_is_a_reason_and_clears(
    report: Callable[[Health], None], reason: str
) -> None:
    """A bad fact makes the worker not ready, saying why, and the gauge 0; the good fact
    that follows it makes it ready again."""
    health = Health(Settings(), Stopping(budget=1.0))
    health.joined()
    report(health)
    assert len(health.not_ready()) == 1 and reason in health.not_ready()[0]
    assert gauge() == 0.0
    health.kafka_reachable(True)
    health.brokers_silent([])
    health.redis_answers()
    health.dead_letters_acknowledged(True)
    assert health.ready and gauge() == 1.0


def test_stopping_is_not_ready_and_a_stopped_loop_is_never_ready_again() -> None:
    stopping = Stopping(budget=1.0)
    health = Health(Settings(), stopping)
    health.joined()
    stopping.set()
    assert health.not_ready() == ["stopping"]
    health.stopped()
    assert gauge() == 0.0


def test_liveness_follows_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    health = Health(Settings(), Stopping(budget=1.0))
    assert health.is_healthy()
    monkeypatch.setattr(health, "_heartbeat", health._heartbeat - 61)
    assert not health.is_healthy()
    health.beat()
    assert health.is_healthy()
