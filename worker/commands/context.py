"""What the commands that read the RFM_* environment share: the settings and profiles, an
unreachable Kafka or Redis said in one line, and the read-only commands' opened store."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from worker.config import Settings, load_settings, mask_url
from worker.errors import UnavailableError
from worker.kafka import KafkaException
from worker.rules.profiles import Profiles
from worker.state.clock import scoring_now
from worker.state.store import Store


def environment() -> tuple[Settings, Profiles]:
    """The settings (their log level applied) and the profiles they name."""
    settings = load_settings()
    logging.getLogger().setLevel(settings.log_level.upper())
    return settings, Profiles.load(settings.profiles)


@contextlib.contextmanager
def reachable(settings: Settings) -> Iterator[None]:
    """An unreachable Kafka or Redis becomes an UnavailableError naming it and its setting
    (one line, exit 2), not a traceback."""
    try:
        yield
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args else exc
        raise UnavailableError(
            f"Kafka at {settings.kafka_bootstrap} (RFM_KAFKA_BOOTSTRAP) is unavailable: {reason}"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        url = mask_url(settings.redis_url.get_secret_value())
        reason = " ".join(str(exc).split())
        raise UnavailableError(f"Redis at {url} (RFM_REDIS_URL) is unavailable: {reason}") from None


@dataclass(frozen=True, slots=True)
class Reading:
    """An opened store and the profiles to score its customers with."""

    settings: Settings
    profiles: Profiles
    store: Store

    def now(self) -> int:
        """The instant the worker scores at now (the wall clock, or the event clock)."""
        return scoring_now(self.settings, self.store.clock)


@contextlib.contextmanager
def reading(settings: Settings, profiles: Profiles) -> Iterator[Reading]:
    """The read-only commands' store, with quantile profiles given their stored cut points
    and churn models their stored fits, as the worker scores."""
    from worker.services.churn_upkeep import load_fits
    from worker.services.quantile_upkeep import load_cuts
    from worker.state.connection import opened_store

    with opened_store(settings) as store, reachable(settings):
        load_cuts(store, profiles)
        load_fits(store, profiles)
        yield Reading(settings, profiles, store)
