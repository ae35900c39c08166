"""Exact money: amounts are integers of 1/10,000 of the currency unit. Pure."""

from decimal import Decimal

SCALE = 10_000  # amounts have at most 4 decimals (docs/records-and-triggers.md)


def to_units(amount: Decimal | int | str) -> int:
    """Exact conversion; the caller has already checked the amount has <= 4 decimals."""
    return int(Decimal(amount) * SCALE)


def format_units(units: int) -> str:
    """'350.00', '12.3456': two decimals at least, four at most; integer arithmetic only."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), SCALE)
    if frac % 100 == 0:  # whole cents, the usual case
        return f"{sign}{whole}.{frac // 100:02d}"
    return f"{sign}{whole}.{f'{frac:04d}'.rstrip('0').ljust(2, '0')}"
