"""The `rfm-worker` command line (docs/commands.md): the parser, built from the command
modules of worker/commands/ (each declares its arguments and its handler), and the exit
codes of errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from worker import __version__, logs
from worker.commands import (
    customer,
    demo,
    export,
    forget,
    local,
    matrix,
    members,
    model,
    produce,
    rebuild,
    rescore,
    run,
    schemas,
    sweep_once,
)
from worker.errors import ConfigError, RfmError, UnavailableError, UsageError
from worker.rules.state_format import FORMAT as STATE_FORMAT

if TYPE_CHECKING:
    from worker.commands.arguments import Subparsers

# In the order `rfm-worker --help` lists them.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    run.add_parser,
    customer.add_parser,
    export.add_parser,
    matrix.add_parser,
    members.add_parser,
    rescore.add_parser,
    demo.add_parser,
    local.add_parser,
    sweep_once.add_parser,
    rebuild.add_parser,
    produce.add_parser,
    forget.add_parser,
    model.add_parser,
    schemas.add_parser,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rfm-worker",
        description="Real-time RFM segmentation. Every command reads the RFM_* environment.",
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"rfm-worker {__version__} (state format {STATE_FORMAT})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add_parser in COMMANDS:
        add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"rfm-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except (UsageError, UnavailableError) as exc:  # Kafka or Redis out of reach: one line
        print(f"rfm-worker: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `rfm-worker export | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RfmError as exc:
        print(f"rfm-worker: {exc}", file=sys.stderr)
        return 1
