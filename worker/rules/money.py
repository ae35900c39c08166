"""Exact money: amounts are integers of 1/10,000 of the currency unit. Pure."""

from decimal import Decimal

SCALE = 10_000  # amounts have at most 4 decimals (docs/records-and-triggers.md)


def to_units(amount: Decimal | int | str) -> int:
    """Exact conversion; the caller has already checked the amount has <= 4 decimals."""
    return int(Decimal(amount) * SCALE)


_SCALE_BY_DECIMALS = (SCALE, SCALE // 10, SCALE // 100, SCALE // 1000, 1)


def plain_units(text: str) -> int:
    """Exact, like to_units, for text the caller has checked is plain ASCII digits with at
    most 4 decimals ("120", "0.5", "12.3456"): cheaper than through Decimal."""
    whole, _, decimals = text.partition(".")
    return int(whole + decimals) * _SCALE_BY_DECIMALS[len(decimals)]


def format_units(units: int) -> str:
    """'350.00', '12.3456': two decimals at least, four at most; integer arithmetic only."""
    if units < 0:
        return "-" + format_units(-units)
    whole, frac = divmod(units, SCALE)
    if frac % 100 == 0:  # whole cents, the usual case (in every record: from a table)
        return f"{whole}.{_CENTS[frac // 100]}"
    return f"{whole}.{f'{frac:04d}'.rstrip('0').ljust(2, '0')}"


_CENTS = [f"{cents:02d}" for cents in range(100)]
