"""`rfm-worker run [--processes N]`: consume, score, publish and serve HTTP until SIGTERM or
SIGINT (worker/app.py); with N > 1, N such workers under one supervisor."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from worker.app import run
from worker.commands import context
from worker.commands.arguments import count

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="consume, score, publish and serve HTTP until SIGTERM/SIGINT")
    p.add_argument(
        "--processes",
        type=count(64),
        help="consuming processes sharing the partitions (default RFM_PROCESSES, 1); "
        "process i serves HTTP on RFM_HTTP_PORT + i",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings, profiles = context.environment()
    processes = args.processes or settings.processes
    if processes > 1:
        from worker.services.supervisor import supervise

        return supervise(settings, processes)
    with context.reachable(settings):
        return run(settings, profiles)
