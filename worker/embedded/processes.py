"""Child processes on loopback for the embedded services: a free port, waiting for a
listener, the start/stop/kill of one child (which dies with its parent: worker/children.py)."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from types import TracebackType
from typing import Self

from worker.children import die_with_parent
from worker.errors import RfmError

__all__ = ["Child", "die_with_parent", "free_port", "wait_for_port"]

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RfmError(f"{what} exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RfmError(f"{what} did not listen on port {port} within {timeout:.0f}s")


class Child:
    name = "child"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is for the parent to handle
            preexec_fn=die_with_parent(),
        )
        wait_for_port(self.port, self.proc, self.name, timeout=20)
        logger.info("%s listening on 127.0.0.1:%d", self.name, self.port)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RfmError(f"{self.name} is not started")
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """Stop at once, as a crash would (the tests use this for outages)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
