"""`rfm-worker matrix` as text: the grid sized from the tenant's profile (3, 5 and 9 levels),
cells in their row and column, coloured by segment on a terminal and plain otherwise
(piped, --color never, NO_COLOR), through the pure renderer and the command on the suite's
Redis."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.factories import AS_OF, AS_OF_MS, valid_event
from worker.cli import main
from worker.commands.matrix import use_color
from worker.embedded import EmbeddedRedis
from worker.rules.profiles import Profiles
from worker.rules.segments import STANDARD_SEGMENTS
from worker.services import causes
from worker.state.store import Store
from worker.web.views import (
    SEGMENT_COLORS,
    render_matrix,
    segment_color,
    segment_style,
    xterm_256,
)

ESC = "\x1b["

THREE_LEVELS = """
[profiles.default]
recency_days = [30, 90]
frequency_orders = [2, 4]
monetary = [100, 500]
"""

# 9 R and 9 F levels need their own segment map.
NINE_LEVELS = """
[profiles.default]
recency_days = [7, 14, 21, 28, 35, 42, 49, 56]
frequency_orders = [2, 3, 4, 5, 6, 7, 8, 9]
monetary = [100]

[[profiles.default.segments]]
name = "vip_regulars"
r = [7, 9]
f = [7, 9]

[[profiles.default.segments]]
name = "regulars"
f = [4, 9]

[[profiles.default.segments]]
name = "recent_few"
r = [5, 9]

[[profiles.default.segments]]
name = "fading"
"""


def grid(text: str) -> dict[tuple[int, int], tuple[int, str]]:
    """(r, f) -> (customers, segment) as a reader sees the plain grid: each value is placed
    in the column whose R header it sits under, each count line in the row its F label
    names, each segment under its count."""
    lines = text.splitlines()
    (header_at,) = [i for i, line in enumerate(lines) if line.startswith("F\\R")]
    header = lines[header_at]
    columns = {(m.start() + m.end()) / 2: int(m.group()) for m in re.finditer(r"\d+", header[3:])}
    centres = {pos + 3: r for pos, r in columns.items()}

    def column(m: re.Match[str]) -> int:
        middle = (m.start() + m.end()) / 2
        nearest = min(centres, key=lambda c: abs(c - middle))
        assert abs(nearest - middle) <= 1, (m.group(), header)
        return centres[nearest]

    cells: dict[tuple[int, int], tuple[int, str]] = {}
    i = header_at + 1
    while i + 1 < len(lines) and re.match(r"^\s*\d+ ", lines[i]):
        f = int(lines[i].split()[0])
        label_end = lines[i].index(str(f)) + len(str(f))
        counts = {
            column(m): int(m.group())
            for m in re.finditer(r"\S+", lines[i])
            if m.start() >= label_end and m.group() != "."
        }
        names = {column(m): m.group() for m in re.finditer(r"\S+", lines[i + 1])}
        assert set(counts) == set(names), (lines[i], lines[i + 1])
        for r, n in counts.items():
            cells[(r, f)] = (n, names[r])
        i += 2
    return cells


def rows_and_columns(text: str) -> tuple[list[int], list[int]]:
    lines = text.splitlines()
    (header,) = [line for line in lines if line.startswith("F\\R")]
    rs = [int(t) for t in header.split()[1:]]
    fs = [int(line.split()[0]) for line in lines if re.match(r"^\s*\d+ ", line)]
    return rs, fs


def doc_of(cells: list[tuple[int, int, int, str]], tenant: str = "default") -> dict[str, Any]:
    segments: dict[str, int] = {}
    for _, _, n, seg in cells:
        segments[seg] = segments.get(seg, 0) + n
    return {
        "tenant": tenant,
        "as_of": "2026-06-01T00:00:00Z",
        "customers": sum(n for _, _, n, _ in cells),
        "cells": [{"r": r, "f": f, "customers": n, "segment": s} for r, f, n, s in cells],
        "segments": dict(sorted(segments.items())),
    }


# -- the pure renderer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "cells"),
    [
        (3, [(1, 1, 4, "lost"), (3, 1, 2, "about_to_sleep"), (1, 3, 7, "at_risk")]),
        (
            5,
            [
                (1, 1, 3, "lost"),
                (2, 1, 1, "hibernating"),
                (5, 5, 12, "champions"),
                (4, 2, 5, "potential_loyalist"),
                (5, 1, 1234, "new_customers"),
                (1, 5, 2, "cant_lose_them"),
            ],
        ),
        (
            9,
            [
                (1, 1, 10, "fading"),
                (9, 9, 3, "vip_regulars"),
                (9, 1, 1, "recent_few"),
                (1, 9, 2, "regulars"),
                (6, 4, 8, "regulars"),
                (7, 8, 5, "vip_regulars"),
            ],
        ),
    ],
)
def test_cells_land_in_their_row_and_column(
    levels: int, cells: list[tuple[int, int, int, str]]
) -> None:
    text = render_matrix(doc_of(cells), r_levels=levels, f_levels=levels, color=False)
    assert ESC not in text
    rs, fs = rows_and_columns(text)
    assert rs == list(range(1, levels + 1))  # R across, left to right
    assert fs == list(range(levels, 0, -1))  # F down, highest first
    assert grid(text) == {(r, f): (n, s) for r, f, n, s in cells}


def test_r_and_f_levels_may_differ() -> None:
    cells = [(1, 1, 1, "lost"), (3, 2, 2, "about_to_sleep")]
    text = render_matrix(doc_of(cells), r_levels=4, f_levels=2, color=False)
    assert rows_and_columns(text) == ([1, 2, 3, 4], [2, 1])
    assert grid(text) == {(1, 1): (1, "lost"), (3, 2): (2, "about_to_sleep")}


def test_columns_fit_the_longest_segment_name() -> None:
    long = "a_really_long_custom_segment_name"
    cells = [(1, 1, 1, long), (2, 1, 2, "lost"), (3, 3, 3, "x")]
    text = render_matrix(doc_of(cells), r_levels=3, f_levels=3, color=False)
    assert grid(text) == {(1, 1): (1, long), (2, 1): (2, "lost"), (3, 3): (3, "x")}
    # every column is as wide as the longest name: names never touch their neighbours
    name_line = next(line for line in text.splitlines() if long in line)
    assert f"{long} " in name_line and "  lost" in name_line


def test_segments_are_listed_with_counts_most_first() -> None:
    cells = [(1, 1, 2, "lost"), (5, 5, 9, "champions"), (2, 1, 2, "hibernating")]
    text = render_matrix(doc_of(cells), r_levels=5, f_levels=5, color=False)
    listed = [line.split() for line in text.split("\n\n")[-1].splitlines()]
    assert listed == [["champions", "9"], ["hibernating", "2"], ["lost", "2"]]
    assert "13 customers" in text.splitlines()[0]


def test_cells_beyond_the_profile_widen_the_grid_and_say_so() -> None:
    """Scores published under a profile with more levels are not dropped."""
    cells = [(5, 4, 2, "champions"), (1, 1, 1, "lost")]
    text = render_matrix(doc_of(cells), r_levels=3, f_levels=3, color=False)
    assert rows_and_columns(text) == ([1, 2, 3, 4, 5], [4, 3, 2, 1])
    assert grid(text) == {(5, 4): (2, "champions"), (1, 1): (1, "lost")}
    assert "profile has 3 R and 3 F levels" in text


def test_an_empty_matrix_is_a_grid_of_dots() -> None:
    text = render_matrix(doc_of([]), r_levels=3, f_levels=3, color=False)
    assert rows_and_columns(text) == ([1, 2, 3], [3, 2, 1])
    assert grid(text) == {}
    assert "0 customers" in text


def test_colour_paints_each_cell_and_swatch_with_its_segment() -> None:
    cells = [(1, 1, 3, "lost"), (5, 5, 1, "champions"), (2, 2, 4, "my_custom")]
    doc = doc_of(cells)
    plain = render_matrix(doc, r_levels=5, f_levels=5, color=False)
    coloured = render_matrix(doc, r_levels=5, f_levels=5, color=True)
    assert ESC not in plain
    for segment in ("lost", "champions", "my_custom"):
        bg, fg = segment_color(segment)
        # the count tile, the name tile and the swatch of the list
        assert coloured.count(f"\x1b[38;5;{fg};48;5;{bg}m") == 3, segment
    # without the escapes: the same grid, and the same list behind the swatches
    stripped = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert grid(stripped) == grid(plain)
    listed = stripped.split("\n\n")[-1].splitlines()
    assert listed == ["   " + line for line in plain.split("\n\n")[-1].splitlines()]


def test_palette_is_stable_and_distinct_for_the_standard_segments() -> None:
    assert set(SEGMENT_COLORS) == set(STANDARD_SEGMENTS)
    assert len({bg for bg, _ in SEGMENT_COLORS.values()}) == len(STANDARD_SEGMENTS)
    # custom names: deterministic (not Python's per-process hash), from the palette
    code = "from worker.web.views import segment_color; print(segment_color('gold_tier'))"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert runs == {f"{segment_color('gold_tier')}\n"}


def test_the_terminal_and_the_page_share_one_palette() -> None:
    """The grid's 256 colours are the nearest to the page's (views.segment_style), so the
    two cannot drift apart; xterm's cube and grey ramp, as documented."""
    for name in (*STANDARD_SEGMENTS, "gold_tier", "vip_regulars"):
        style = segment_style(name)
        bg, fg = segment_color(name)
        assert bg == xterm_256(style.colour), name
        assert fg == (231 if style.text == "#ffffff" else 16), name
    assert xterm_256("#000000") == 16 and xterm_256("#ffffff") == 231
    assert xterm_256("#ff0000") == 196 and xterm_256("#87af5f") == 107  # cube
    assert xterm_256("#222222") == 235 and xterm_256("#eeeeee") == 255  # grey ramp


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("choice", "tty", "environ", "expected"),
    [
        ("auto", True, {}, True),
        ("auto", False, {}, False),  # piped
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", True, {"NO_COLOR": ""}, True),  # no-color.org: set and non-empty
        ("auto", True, {"TERM": "dumb"}, False),
        ("never", True, {}, False),
        ("always", False, {}, True),
        ("always", False, {"NO_COLOR": "1"}, True),  # an explicit choice wins
    ],
)
def test_when_to_colour(choice: str, tty: bool, environ: dict[str, str], expected: bool) -> None:
    assert use_color(choice, _Stream(tty), environ) is expected


# -- the command, on the suite's Redis ---------------------------------------------------------


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("RFM_") or name in ("NO_COLOR", "TERM"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("RFM_CLOCK", "event")
    yield


def seed(store: Store, profiles: Profiles, customers: dict[str, tuple[int, int]]) -> None:
    """Each customer: (days since its last order, number of orders), 50.00 an order."""
    events = []
    for cid, (days, orders) in customers.items():
        for i in range(orders):
            at = AS_OF - timedelta(days=days + i)
            events.append(
                valid_event(
                    profiles,
                    event_id=f"{cid}-{i}",
                    kind="placed",
                    order_id=f"o{i}",
                    customer=cid,
                    occurred_at=at.isoformat(),
                    now_ms=AS_OF_MS,
                    amount="50",
                )
            )
    causes.apply_batch(
        store, [(e, 0) for e in events], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS
    )
    store.clock.advance(AS_OF_MS)


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("toml", "customers", "expected"),
    [
        (
            THREE_LEVELS,
            # recency [30, 90]: R3 <= 30 days, R2 <= 90, R1; frequency [2, 4]
            {"a": (10, 1), "b": (10, 1), "c": (60, 2), "d": (200, 5)},
            # the standard map on 3 levels: R3 F1 is about_to_sleep, as on 5 levels
            {(3, 1): (2, "about_to_sleep"), (2, 2): (1, "hibernating"), (1, 3): (1, "at_risk")},
        ),
        (
            NINE_LEVELS,
            # recency every 7 days: 0-7 R9 ... > 56 R1; F = orders (1..9)
            {"a": (1, 9), "b": (3, 7), "c": (20, 4), "d": (100, 1), "e": (40, 1)},
            {
                (9, 9): (1, "vip_regulars"),
                (9, 7): (1, "vip_regulars"),
                (7, 4): (1, "regulars"),
                (1, 1): (1, "fading"),
                (4, 1): (1, "fading"),
            },
        ),
    ],
)
def test_matrix_command_draws_the_profile_grid(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Store,
    capsysbinary: pytest.CaptureFixture[bytes],
    toml: str,
    customers: dict[str, tuple[int, int]],
    expected: dict[tuple[int, int], tuple[int, str]],
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(toml)
    monkeypatch.setenv("RFM_PROFILES", str(path))
    profiles = Profiles.load(path)
    seed(store, profiles, customers)
    levels = len(profiles.default.recency_days) + 1

    code, out, err = run(capsysbinary, "matrix")
    assert code == 0, err
    assert ESC not in out  # captured: not a terminal
    assert rows_and_columns(out) == (list(range(1, levels + 1)), list(range(levels, 0, -1)))
    assert grid(out) == expected

    code, coloured, _ = run(capsysbinary, "matrix", "--color", "always")
    assert code == 0 and ESC in coloured
    assert grid(re.sub(r"\x1b\[[0-9;]*m", "", coloured)) == expected

    monkeypatch.setenv("NO_COLOR", "1")
    assert ESC not in run(capsysbinary, "matrix")[1]
    assert ESC not in run(capsysbinary, "matrix", "--color", "never")[1]

    # --json keeps its contract
    code, out, _ = run(capsysbinary, "matrix", "--json")
    assert code == 0 and ESC not in out
    doc = json.loads(out)
    assert set(doc) == {"tenant", "as_of", "customers", "cells", "segments"}
    assert {(c["r"], c["f"]): (c["customers"], c["segment"]) for c in doc["cells"]} == expected


def test_matrix_of_a_tenant_uses_its_own_profile(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Store,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(THREE_LEVELS.replace("profiles.default", "profiles.small"))
    monkeypatch.setenv("RFM_PROFILES", str(path))
    profiles = Profiles.load(str(path))
    seed(store, profiles, {"a": (10, 1)})  # a customer each: no customers is exit 1
    small = valid_event(
        profiles,
        event_id="s-1",
        kind="placed",
        order_id="o1",
        customer="s",
        occurred_at=(AS_OF - timedelta(days=10)).isoformat(),
        now_ms=AS_OF_MS,
        amount="50",
        tenant="small",
    )
    causes.apply_batch(store, [(small, 0)], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)
    code, out, _ = run(capsysbinary, "matrix", "--tenant", "small")
    assert code == 0 and rows_and_columns(out) == ([1, 2, 3], [3, 2, 1])
    code, out, _ = run(capsysbinary, "matrix")  # the built-in default: 5 levels
    assert code == 0 and rows_and_columns(out) == ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])


def test_matrix_on_a_real_terminal_is_coloured_unless_no_color(
    store: Store, profiles: Profiles
) -> None:
    seed(store, profiles, {"a": (10, 12), "b": (400, 1)})

    def on_a_terminal(extra: dict[str, str]) -> str:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "matrix"],
                stdout=follower,
                stderr=subprocess.PIPE,
                env={**os.environ, **extra},
            )
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        finally:
            os.close(leader)
        return b"".join(chunks).decode()

    coloured = on_a_terminal({})
    bg, fg = segment_color("champions")
    assert f"\x1b[38;5;{fg};48;5;{bg}m" in coloured
    assert ESC not in on_a_terminal({"NO_COLOR": "1"})
