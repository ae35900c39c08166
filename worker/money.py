"""Exact money: amounts are integers of 1/10,000 of the currency unit. Pure."""

from decimal import Decimal

SCALE = 10_000  # amounts have at most 4 decimals (contract section 4)
_QUANTUM = Decimal(1) / SCALE


def to_units(amount: Decimal | int | str) -> int:
    """Exact conversion; the caller has already checked the amount has <= 4 decimals."""
    return int(Decimal(amount) * SCALE)


def format_units(units: int) -> str:
    """'350.00', '12.3456': two decimals at least, four at most, no float on the way."""
    text = str((Decimal(units) / SCALE).quantize(_QUANTUM))
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
