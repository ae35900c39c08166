"""`rfm-worker rebuild --processes N`: this run's partitions shared among N child processes.

Each child is `python -m worker rebuild --share <partitions>`: it joins the rebuild the
parent started (it never wipes nor finishes), replays its partitions, prints its progress
on stderr (the parent's) and, last, one JSON line of figures on stdout for the parent. A
child never outlives the parent (Linux's parent-death signal: worker/children.py); when
one fails, the others are stopped and the run fails, to be run again (it resumes).
"""

from __future__ import annotations

import subprocess
import sys
import time

import orjson

from worker.children import die_with_parent
from worker.errors import RfmError
from worker.services.rebuild_progress import span
from worker.services.rebuild_replay import Replayed


def shares(partitions: list[int], processes: int) -> list[list[int]]:
    """Partitions dealt round robin to at most `processes` children."""
    count = max(1, min(processes, len(partitions)))
    return [partitions[i::count] for i in range(count)]


def spread(partitions: list[int], processes: int, *, batch: int, progress_s: float) -> Replayed:
    """Replay `partitions` in child processes; their figures added up."""
    children = [
        (
            share,
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "worker", "rebuild", "--share", span(share)),
                    *("--batch", str(batch), "--progress", str(progress_s)),
                ],
                stdout=subprocess.PIPE,
                preexec_fn=die_with_parent(),
            ),
        )
        for share in shares(partitions, processes)
    ]
    try:
        _wait_all(children)
    finally:
        for _share, child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
    total = Replayed({})
    for _share, child in children:
        assert child.stdout is not None
        lines = child.stdout.read().splitlines()
        figures = orjson.loads(lines[-1])
        total.ends.update({int(p): int(end) for p, end in figures["ends"].items()})
        total.events += figures["events"]
        total.rejected += figures["rejected"]
        total.records += figures["records"]
    return total


def _wait_all(children: list[tuple[list[int], subprocess.Popen[bytes]]]) -> None:
    """Until every child exited 0; RfmError naming the first that did not."""
    while True:
        running = 0
        for share, child in children:
            code = child.poll()
            if code is None:
                running += 1
            elif code != 0:
                raise RfmError(
                    f"the rebuild process of partitions {span(share)} exited with status "
                    f"{code}; run `rfm-worker rebuild` again to resume"
                )
        if not running:
            return
        time.sleep(0.2)


def figures(done: Replayed) -> bytes:
    """A child's last stdout line, read by `spread`."""
    return orjson.dumps(
        {
            "ends": {str(p): end for p, end in done.ends.items()},
            "events": done.events,
            "rejected": done.rejected,
            "records": done.records,
        }
    )
