"""Exact money (docs/records-and-triggers.md: amounts have <= 4 decimals, summed without floats)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.rules.money import SCALE, format_units, to_units


def test_scale_is_four_decimals() -> None:
    assert SCALE == 10_000


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        ("0", 0),
        ("0.0001", 1),
        ("0.001", 10),
        ("0.01", 100),
        ("0.1", 1_000),
        ("1", 10_000),
        ("12.3456", 123_456),
        ("350.00", 3_500_000),
        ("1E+3", 10_000_000),
        ("999999999999.9999", 9_999_999_999_999_999),
        (Decimal("99.9999"), 999_999),
        (Decimal("100"), 1_000_000),
        (250, 2_500_000),
    ],
)
def test_to_units_is_exact(amount: Decimal | int | str, units: int) -> None:
    assert to_units(amount) == units
    assert isinstance(to_units(amount), int)


def test_to_units_sums_without_binary_float_error() -> None:
    # 0.1 + 0.2 != 0.3 in binary floating point; in money units it must be exact.
    assert to_units("0.1") + to_units("0.2") == to_units("0.3")
    assert sum(to_units("0.01") for _ in range(100)) == to_units("1")
    assert format_units(sum(to_units("0.1") for _ in range(10))) == "1.00"


@pytest.mark.parametrize(
    ("units", "text"),
    [
        (0, "0.00"),
        (1, "0.0001"),
        (10, "0.001"),
        (100, "0.01"),
        (1_000, "0.10"),
        (10_000, "1.00"),
        (123_456, "12.3456"),
        (123_450, "12.345"),
        (123_400, "12.34"),
        (3_500_000, "350.00"),
        (9_999_999_999_999_999, "999999999999.9999"),
        (10**20, "10000000000000000.00"),  # sums of many orders may exceed one amount's limit
    ],
)
def test_format_units(units: int, text: str) -> None:
    assert format_units(units) == text


@settings(max_examples=300, database=None)
@given(st.integers(min_value=0, max_value=10**20))
def test_format_units_round_trips_exactly(units: int) -> None:
    text = format_units(units)
    whole, dot, frac = text.partition(".")
    assert dot == "."
    assert whole.isdigit()
    assert 2 <= len(frac) <= 4
    assert frac.isdigit()
    assert "e" not in text.lower()
    assert to_units(text) == units
    assert Decimal(text) * SCALE == units
