"""Output record helpers: the table-driven RFC 3339 formatter against datetime."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from worker.rules.instants import iso

LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the latest instant validation admits


def reference(ms: int) -> str:
    text = datetime.fromtimestamp(ms // 1000, UTC).isoformat()[:19]
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


@given(st.integers(min_value=0, max_value=LAST_MS))
def test_iso_matches_datetime(ms: int) -> None:
    assert iso(ms) == reference(ms)


def test_iso_edges() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(1) == "1970-01-01T00:00:00.001Z"
    assert iso(1_764_000_000_120) == "2025-11-24T16:00:00.120Z"
    assert iso(LAST_MS) == "9999-12-31T23:59:59.999Z"
