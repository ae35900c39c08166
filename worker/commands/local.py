"""`rfm-worker local`: the demo's embedded broker and Redis, with the three topics, until
Ctrl-C or SIGTERM; it prints the `export RFM_...` lines that point `rfm-worker run`,
`produce`, `sweep --once` and the read commands at them: the README's commands without
Docker or a Kafka of one's own.

Everything it prints on standard output is shell (comments and `export` lines), so
`rfm-worker local > local.env &` then `. ./local.env` works as well as pasting.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson

from worker.commands.arguments import add_broker
from worker.embedded import BrokerKind, EmbeddedRedis, create_topics, start_broker

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers

# The topics under their default names (RFM_*_TOPIC), partitioned as the demo's.
TOPICS = {"orders": 4, "rfm.actions": 4, "orders.dlq": 1}
TOPIC_SETTINGS = {
    "RFM_ORDERS_TOPIC": "orders",
    "RFM_ACTIONS_TOPIC": "rfm.actions",
    "RFM_DLQ_TOPIC": "orders.dlq",
}
# Closing the terminal is a way of stopping too: the services' temporary folders are removed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CHECK_EVERY = 1.0  # seconds between looks at the children


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "local",
        help="the demo's broker and Redis with the three topics, until Ctrl-C: prints the "
        "RFM_* settings for run, produce, sweep --once",
        description="Start the embedded broker and Redis (as `rfm-worker demo` does, without "
        "its worker and order stream), create the topics orders, rfm.actions and orders.dlq, "
        "print the `export RFM_...` lines that point the other commands at them, and keep "
        "them running until Ctrl-C or SIGTERM, which stops both. Everything is in memory.",
    )
    add_broker(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    return run_local(broker=args.broker)


def run_local(broker: BrokerKind = "tansu") -> int:
    """Start, print the settings, wait for a stop signal, stop every child; exit code."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        what = "Apache Kafka" if broker == "kafka" else "the embedded broker (Tansu)"
        say(f"# starting {what} and Redis ...")
        with EmbeddedRedis() as redis_server, start_broker(broker) as kafka:
            create_topics(kafka.bootstrap, TOPICS)
            say(_settings(kafka, redis_server))
            code = _wait(stop, kafka, redis_server)
        say("# stopped the broker and Redis")
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exports(kafka: Any, redis_server: EmbeddedRedis) -> dict[str, str]:
    """The settings that point the worker's commands at these services. The topics are
    there too, so that a stale RFM_*_TOPIC in the shell cannot point elsewhere."""
    return {
        "RFM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        # what the broker needs of its clients (Tansu: a short fetch wait, embedded/local.py)
        "RFM_KAFKA_CONFIG": orjson.dumps(dict(kafka.client_config)).decode(),
        "RFM_REDIS_URL": redis_server.url,
        **TOPIC_SETTINGS,
    }


def _settings(kafka: Any, redis_server: EmbeddedRedis) -> str:
    topics = ", ".join(f"{name} ({n} partition{'s' * (n > 1)})" for name, n in TOPICS.items())
    lines = [
        f"# {kafka.name} at {kafka.bootstrap}, Redis at {redis_server.url}",
        f"# topics {topics}",
        "# In another shell, paste these lines:",
        *(
            f"export {name}={shlex.quote(value)}"
            for name, value in exports(kafka, redis_server).items()
        ),
        "# then rfm-worker run, rfm-worker produce FILE, rfm-worker sweep --once, rfm-worker",
        "# customer ID, ... (docs/commands.md). Everything is in memory: Ctrl-C here (or",
        "# SIGTERM) stops the broker and Redis, and their data is gone.",
    ]
    return "\n".join(lines)


def _wait(stop: threading.Event, kafka: Any, redis_server: EmbeddedRedis) -> int:
    """Until a stop signal (0), or until a service dies by itself (1, saying which)."""
    children: list[tuple[str, Callable[[], int | None]]] = [
        (kafka.name, lambda: kafka.proc.poll()),
        ("Redis", lambda: redis_server.proc.poll() if redis_server.proc else 0),
    ]
    while not stop.wait(CHECK_EVERY):
        for name, poll in children:
            code = poll()
            if code is not None:
                say(f"# {name} exited by itself (code {code}): stopping")
                return 1
    return 0


def say(text: str) -> None:
    print(text, flush=True)
