"""Child processes that never outlive their parent (`rfm-worker run --processes N`, and the
embedded broker and Redis of the demo and the tests)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets SIGKILL when this process dies, however it
    dies (a SIGKILL of the demo included, where no cleanup code runs). Linux's
    PR_SET_PDEATHSIG, set in the child between fork and exec; it survives the exec.

    None (no such guarantee) elsewhere, and off the main thread: the signal follows the
    *thread* that forked (prctl(2)), so a child started by a thread that then ends would be
    killed with it. Every embedded service is started from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    parent = os.getpid()

    def set_pdeathsig() -> None:
        # unsigned long arguments: prctl is variadic and the kernel checks the signal number
        if prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal
            os.kill(os.getpid(), signal.SIGKILL)

    return set_pdeathsig
