"""Automation triggers: which of a profile's triggers a move fires. Pure.

A trigger fires on a move (previous -> current), never on a state: a customer who stays at
R=5 does not fire `r_becomes 5` again. The engine calls these once, when it builds a
change (worker/rules/engine.py), and the names go into the record, so a re-publication carries
the same triggers. docs/records-and-triggers.md documents the semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from worker.rules.profile_specs import TriggerSpec


class Scored(Protocol):
    """A score as the engine has it: rules.scoring.Score or rules.customer.Published."""

    @property
    def r(self) -> int: ...
    @property
    def f(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def segment(self) -> str: ...
    @property
    def band(self) -> int | None: ...
    @property
    def value_band(self) -> int | None: ...


def fired(
    triggers: Sequence[TriggerSpec],
    previous: Scored | None,
    current: Scored | None,
    p_alive_bands: Sequence[float] = (),
    value_bands: Sequence[float] = (),
) -> tuple[str, ...]:
    """The names of the triggers an `rfm.changed` move fires, in profile order.

    `previous` is None for a new customer, `current` None when no counted order is left.
    `p_alive_bands`, `value_bands`: the profile's band bounds (p_alive_below and
    value_above triggers).
    """
    if not triggers:
        return ()
    before = previous.segment if previous is not None else None
    return tuple(
        t.name
        for t in triggers
        if _moves(t, previous, current, p_alive_bands, value_bands)
        and (t.from_ is None or before in t.from_)
    )


def fired_overdue(triggers: Sequence[TriggerSpec], current: Scored) -> tuple[str, ...]:
    """The names of the `overdue` triggers an `rfm.overdue` alert fires, in profile order;
    `from` is matched against the customer's current segment."""
    return tuple(
        t.name
        for t in triggers
        if t.when == "overdue" and (t.from_ is None or current.segment in t.from_)
    )


def _moves(
    t: TriggerSpec,
    previous: Scored | None,
    current: Scored | None,
    p_alive_bands: Sequence[float],
    value_bands: Sequence[float],
) -> bool:
    if t.when == "overdue":
        return False  # only on rfm.overdue records (fired_overdue)
    if t.when == "p_alive_below":
        # The value is one of the bounds (checked by the profile): P(alive) < bounds[j]
        # exactly when the band is at most j + 1. A crossing needs a known band before.
        band_was = None if previous is None else previous.band
        band_now = None if current is None else current.band
        if band_was is None or band_now is None or t.value not in p_alive_bands:
            return False
        top = p_alive_bands.index(t.value) + 1  # the highest band below the value
        return band_now <= top < band_was
    if t.when == "value_above":
        # Likewise: expected value >= bounds[j] exactly when the value band is at least
        # j + 2, and a crossing needs a known value band before.
        value_was = None if previous is None else previous.value_band
        value_now = None if current is None else current.value_band
        if value_was is None or value_now is None or t.value not in value_bands:
            return False
        lowest = value_bands.index(t.value) + 2  # the lowest band at or above the value
        return value_was < lowest <= value_now
    if t.when in ("enters", "leaves"):
        before = previous.segment if previous is not None else None
        after = current.segment if current is not None else None
        inside, outside = (after, before) if t.when == "enters" else (before, after)
        return inside == t.segment and outside != t.segment
    if current is None:  # r_becomes, f_reaches, m_reaches: nothing left reaches anything
        return False
    dim = t.when[0]  # "r", "f" or "m"
    now: int = getattr(current, dim)
    was: int | None = None if previous is None else getattr(previous, dim)
    if t.when == "r_becomes":
        return now == t.value and was != t.value
    assert t.value is not None
    return now >= t.value and (was is None or was < t.value)
