"""The properties the worker's Kafka clients are built with (no broker: the client class
is replaced by one that keeps its configuration)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from worker.config import Settings
from worker.kafka import clients


class _Recorded:
    """Stands in for confluent_kafka.Consumer: keeps the configuration it was given."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


def consumer_config(monkeypatch: pytest.MonkeyPatch, kafka_config: str) -> dict[str, Any]:
    monkeypatch.setattr(clients, "Consumer", _Recorded)
    made = clients.consumer(Settings(kafka_config=SecretStr(kafka_config)))
    assert isinstance(made, _Recorded)
    return made.config


def test_consumer_bounds_the_fetch_queue_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    config = consumer_config(monkeypatch, "{}")
    assert config["queued.max.messages.kbytes"] == clients.FETCH_QUEUE_KBYTES
    assert clients.FETCH_QUEUE_KBYTES < 65536  # below librdkafka's own default


def test_rfm_kafka_config_overrides_the_fetch_queue_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = consumer_config(monkeypatch, '{"queued.max.messages.kbytes": 65536}')
    assert config["queued.max.messages.kbytes"] == "65536"
