"""The running worker, composed in one place (`rfm-worker run`).

`App.opened` opens what the worker uses (Redis, checked; the Kafka clients), builds the
parts and hands each what it uses, and closes everything, in reverse, however the run
ends. One lifetime: open -> serve HTTP -> run (until a signal) -> drain -> close.

    orders topic -> OrdersConsumer -> Worker (the loop: validate, apply, publish)
                          |                |-> DeadLetters -> DLQ topic
            Checkpoint <--+ (rebalances)   |-> Store (Redis) -> Relay -> actions topic
                                           |-> Sweeper, Roster (the upkeep of the state)
    Health <- facts from all of them -> /readyz, rfm_ready (worker/web)
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from types import FrameType

from worker import __version__, collector, metrics
from worker.config import Settings
from worker.errors import ConfigError
from worker.health import Health
from worker.kafka import clients
from worker.kafka.dead_letters import DeadLetters
from worker.kafka.orders import OrdersConsumer
from worker.kafka.relay import DRAIN_TIMEOUT, Relay
from worker.pacing import Stopping
from worker.rules import money
from worker.rules.instants import wall_ms
from worker.rules.profiles import Profiles
from worker.services.checkpoint import Checkpoint
from worker.services.churn_upkeep import load_fits
from worker.services.consumer import Parts, Worker
from worker.services.quantile_upkeep import load_cuts
from worker.services.redis_retry import RedisRetry
from worker.services.roster import Roster
from worker.services.sweeper import Sweeper
from worker.state import connection, permissions
from worker.state.clock import scoring_now
from worker.state.rebuild_marker import refuse_unfinished
from worker.state.store import Store
from worker.web.api import Api
from worker.web.server import serve

logger = logging.getLogger(__name__)


class App:
    """The worker's parts, built from the settings around an open store and producer.
    Tests build one around a Redis client or producer with a fault injector in between."""

    def __init__(
        self,
        settings: Settings,
        profiles: Profiles,
        store: Store,
        producer: clients.Producer,
        *,
        admin: clients.AdminClient | None = None,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings, self.profiles, self.store = settings, profiles, store
        stopping = Stopping(DRAIN_TIMEOUT)
        health = Health(settings, stopping)
        retry_redis = RedisRetry(health, stopping)
        orders = OrdersConsumer(settings, health, admin=admin)
        relay = Relay(store.outbox, producer, settings.actions_topic)

        def clock() -> int:  # now as scores see it (worker/state/clock.py)
            return scoring_now(settings, store.clock, now_ms)

        parts = Parts(
            store=store,
            orders=orders,
            relay=relay,
            dead_letters=DeadLetters(producer, settings.dlq_topic, health, stopping, orders.watch),
            checkpoint=Checkpoint(
                settings, orders, store.applied, store.reads, relay, retry_redis, health, stopping
            ),
            sweeper=Sweeper(
                store, profiles, interval=settings.sweep_interval, clock=clock, now_ms=now_ms
            ),
            roster=Roster(store, profiles, now_ms),
            health=health,
            retry_redis=retry_redis,
            stopping=stopping,
        )
        self.health = health
        self.worker = Worker(settings, profiles, parts, now_ms)

    @classmethod
    @contextlib.contextmanager
    def opened(cls, settings: Settings, profiles: Profiles) -> Iterator[App]:
        """An App over a checked Redis and new Kafka clients, all closed on the way out
        (the consumer by the loop, once it runs: it commits on the way)."""
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(connection.opened_store(settings))
            check_redis(store, settings)
            metrics.STATE_FORMAT.set(store.formats.check())  # a later release's: stop now
            permissions.self_test(store.redis)  # a command refused: named now, not mid-stream
            # Quantile profiles score with their stored cut points, churn models with their
            # stored fit; missing ones are computed once the worker is in its group
            # (Worker._first_join).
            load_cuts(store, profiles)
            load_fits(store, profiles)
            producer = clients.producer(settings)
            stack.callback(producer.close)  # after the loop's drain: nothing left to send
            app = cls(settings, profiles, store, producer, admin=clients.admin(settings))
            metrics.register_customers(store.reads.segment_counts, profiles.names())
            metrics.register_expected_value(
                store.reads.segment_values, profiles.names(), money.SCALE
            )
            yield app

    def serve_http(self, stack: contextlib.ExitStack) -> None:
        """The HTTP server (worker/web), shut down when `stack` closes."""
        api = Api(
            self.settings,
            self.profiles,
            self.store,
            healthy=self.health.is_healthy,
            not_ready=self.health.not_ready,
        )
        try:
            server = serve(api, self.settings.http_port, self.settings.http_host)
        except OSError as exc:  # the port is taken
            self.worker.orders.close()  # the loop, which would close it, never runs
            raise ConfigError(f"RFM_HTTP_PORT={self.settings.http_port}: {exc.strerror}") from None
        stack.callback(server.shutdown)

    def run(self) -> None:
        """The loop until SIGTERM or SIGINT, then its drain."""
        with stop_signals(self.worker.stop):
            collector.tune()
            self.worker.run()


def run(settings: Settings, profiles: Profiles) -> int:
    """`rfm-worker run`: the worker, its HTTP server, and a graceful stop on signals."""
    logger.info("starting rfm-worker %s with %s", __version__, settings.describe())
    with App.opened(settings, profiles) as app, contextlib.ExitStack() as http:
        app.serve_http(http)
        app.run()
    logger.info("stopped")
    return 0


def check_redis(store: Store, settings: Settings) -> None:
    """Refuse a Redis that would evict customers, a cluster addressed as a single Redis
    (its commit calls span shards, which a cluster refuses), or a state an unfinished
    `rfm-worker rebuild` is still filling; warn when it keeps nothing on disk."""
    if not settings.redis_cluster and store.server.in_cluster_mode():
        raise ConfigError(
            "Redis runs in cluster mode but RFM_REDIS_CLUSTER is false: set "
            "RFM_REDIS_CLUSTER=true (the URL of any master)"
        )
    conf = store.server.config("maxmemory-policy", "appendonly", "save")
    policy = conf["maxmemory-policy"]
    if policy is None:
        logger.warning("cannot read Redis's maxmemory-policy: make sure it is noeviction")
    elif policy.startswith("allkeys-") and not settings.redis_allow_eviction:
        raise ConfigError(
            f"Redis's maxmemory-policy is {policy}: under memory pressure it would delete "
            "customers without a word. Set it to noeviction (the worker then stalls until "
            "memory is freed) or set RFM_REDIS_ALLOW_EVICTION=true to run anyway"
        )
    if conf["appendonly"] == "no" and conf["save"] == "":
        logger.warning(
            "Redis persistence is off (appendonly no, no save points): a Redis restart loses "
            "the state; the worker will detect it and stop (see `rfm-worker rebuild`)"
        )
    refuse_unfinished(store.redis)


@contextlib.contextmanager
def stop_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT finish the batch in hand, then stop; a second one stops at once.
    The handlers in place before are restored on the way out."""
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            raise SystemExit(f"rfm-worker: {signal.Signals(signum).name} again, stopping now")
        logger.info("%s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
