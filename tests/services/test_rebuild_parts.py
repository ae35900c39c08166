"""The rebuild's small parts, without a broker or Redis: partition lists, shares, progress."""

from __future__ import annotations

import argparse
import io

import pytest

from worker.commands.rebuild import partition_list
from worker.services.rebuild_progress import Progress, duration, span
from worker.services.rebuild_spread import shares


def test_partition_lists_read_and_write_alike() -> None:
    assert partition_list("0-5") == frozenset(range(6))
    assert partition_list("0,2,4-7") == frozenset({0, 2, 4, 5, 6, 7})
    assert span(partition_list("0,2,4-7")) == "0,2,4-7"
    for bad in ("", "a", "5-2", "-1", "1-"):
        with pytest.raises(argparse.ArgumentTypeError):
            partition_list(bad)


def test_shares_deal_partitions_round_robin() -> None:
    assert shares([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert shares([3], 4) == [[3]]  # never an empty share


def test_progress_lines_say_done_of_total_rate_and_time_left() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress("orders[0-1]", {0: (0, 1000), 1: (0, 1000)}, 10, out, lambda: now[0])
    now[0] = 5.0
    progress.tick({0: 500, 1: 0}, 500)
    assert out.getvalue() == ""  # quiet until 10 s went by
    now[0] = 10.0
    progress.tick({0: 1000, 1: 0}, 500)
    line = out.getvalue().strip()
    assert line == (
        "rebuild orders[0-1]: 1,000 of about 2,000 records (50%), 100 records/s, about 10 s left"
    )
    assert duration(200) == "3 min 20 s" and duration(7500) == "2 h 05 min"
