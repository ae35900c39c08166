"""Time as an input (worker/rules/decay.py) and the per-customer sweep (rules.engine.decay).
Pure.

Exact millisecond boundaries: for every instant a score changes by itself, the ms before
it and the ms at it. The central property: `next_due` is the first instant after as_of at
which the score (R, F, M, segment) changes by time alone, or a pending overdue instant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import PIZZERIA, valid_event
from tests.strategies import T0, first_change, histories, instants, key
from worker.rules.aggregates import Aggregates
from worker.rules.customer import Customer, Published
from worker.rules.decay import MAX_DUE_MS, MIN_OVERDUE_ORDERS, next_due, overdue_pending, rhythm
from worker.rules.engine import Change, Result, apply_events, decay
from worker.rules.events import ValidEvent
from worker.rules.instants import DAY_MS, iso
from worker.rules.messages import RfmChanged, RfmOverdue
from worker.rules.money import to_units
from worker.rules.orders import Order
from worker.rules.profile import BUILTIN_DEFAULT, Profile
from worker.rules.profiles import Profiles
from worker.rules.scoring import score

DAY = DAY_MS
HOUR = 3_600_000
YEAR = 365 * DAY
# T0 (tests/strategies.py) is deliberately not on a day boundary: every instant below is
# L + whole days + some ms. PIZZERIA is tests/factories.py's.
MONEY = [Decimal(100), Decimal(250), Decimal(500), Decimal(1000)]

# Recency far away, so that only the window moves F in the windowed tests.
WINDOWED = Profile(
    recency_days=[400, 800, 1200, 1600],
    frequency_orders=[2, 3, 5, 10],
    frequency_window_days=365,
    monetary=MONEY,
    overdue_factor=0,
)
# The built-in default's numbers, written out.
SHOP = Profile(
    recency_days=[30, 90, 180, 365],
    frequency_orders=[2, 3, 5, 10],
    monetary=MONEY,
    overdue_factor=2.0,
)


def aggregates(times: list[int] | tuple[int, ...], monetary: str = "0") -> Aggregates:
    ordered = tuple(sorted(times))
    return Aggregates(ordered[0], ordered[-1], len(ordered), to_units(monetary), ordered)


def profile(
    recency: list[int],
    frequency: list[int] | None = None,
    *,
    window: int | None = None,
    factor: float = 2.0,
) -> Profile:
    return Profile(
        recency_days=recency,
        frequency_orders=frequency or [2, 3, 5, 10],
        monetary=MONEY,
        frequency_window_days=window,
        overdue_factor=factor,
    )


# -- 1. recency -----------------------------------------------------------------------------

L = T0  # the last order in the recency tests


@pytest.mark.parametrize(
    ("as_of", "due"),
    [
        (L - 3 * HOUR, L + 16 * DAY),  # the order is in the future of as_of: R5 still
        (L, L + 16 * DAY),
        (L + 1, L + 16 * DAY),
        (L + 15 * DAY, L + 16 * DAY),
        (L + 16 * DAY - 1, L + 16 * DAY),
        (L + 16 * DAY, L + 31 * DAY),
        (L + 31 * DAY - 1, L + 31 * DAY),
        (L + 31 * DAY, L + 46 * DAY),
        (L + 46 * DAY - 1, L + 46 * DAY),
        (L + 46 * DAY, L + 61 * DAY),
        (L + 61 * DAY - 1, L + 61 * DAY),
        (L + 61 * DAY, None),  # R1: nothing left to change by itself
        (L + 10_000 * DAY, None),
    ],
)
def test_recency_due_at_every_boundary(as_of: int, due: int | None) -> None:
    agg = aggregates([L], "120")
    assert next_due(agg, PIZZERIA, as_of, None) == due
    if due is not None:
        before, at = score(agg, due - 1, PIZZERIA), score(agg, due, PIZZERIA)
        assert score(agg, as_of, PIZZERIA) == before
        assert at.r == before.r - 1


def test_recency_due_walk_from_the_order_to_r1() -> None:
    agg = aggregates([L], "120")
    as_of, dues, rs = L, [], [score(agg, L, PIZZERIA).r]
    while (due := next_due(agg, PIZZERIA, as_of, None)) is not None:
        assert due > as_of
        assert score(agg, due - 1, PIZZERIA).r == rs[-1]
        dues.append(due)
        rs.append(score(agg, due, PIZZERIA).r)
        as_of = due
    assert dues == [L + 16 * DAY, L + 31 * DAY, L + 46 * DAY, L + 61 * DAY]
    assert rs == [5, 4, 3, 2, 1]
    assert score(agg, L + 61 * DAY - 1, PIZZERIA).r == 2
    assert score(agg, L + 10 * YEAR, PIZZERIA).r == 1


def test_recency_due_uses_the_last_order() -> None:
    agg = aggregates([L - 100 * DAY, L - 40 * DAY, L], "120")
    # 3 orders: the overdue rule applies; alerted = L means this silence was alerted.
    assert next_due(agg, PIZZERIA, L + 20 * DAY, L) == L + 31 * DAY


def test_recency_with_a_zero_threshold_changes_after_the_first_day() -> None:
    p = profile([0, 7])
    agg = aggregates([L])
    assert next_due(agg, p, L, None) == L + DAY
    assert score(agg, L + DAY - 1, p).r == 3
    assert score(agg, L + DAY, p).r == 2
    assert next_due(agg, p, L + DAY, None) == L + 8 * DAY
    assert next_due(agg, p, L + 8 * DAY, None) is None


def test_no_customer_is_never_due() -> None:
    assert next_due(None, PIZZERIA, T0, None) is None


def test_due_past_year_9999_is_never() -> None:
    p = profile([15])
    last = MAX_DUE_MS - 16 * DAY  # R drops at exactly MAX_DUE_MS: still representable
    assert next_due(aggregates([last]), p, last, None) == MAX_DUE_MS
    assert next_due(aggregates([last + 1]), p, last + 1, None) is None


# -- 2. the central property ----------------------------------------------------------------

FACTORS = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.7])


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    def thresholds(lo: int, hi: int) -> list[int]:
        return sorted(draw(st.sets(st.integers(lo, hi), min_size=1, max_size=4)))

    return Profile(
        recency_days=thresholds(0, 400),
        # 0 is a valid frequency threshold too; see test_zero_frequency_threshold_*.
        frequency_orders=thresholds(1, 12),
        monetary=[Decimal(v) for v in thresholds(0, 2000)],
        frequency_window_days=draw(st.none() | st.integers(1, 400)),
        overdue_factor=draw(FACTORS),
    )


@settings(max_examples=400, derandomize=True, deadline=None)
@given(data=st.data(), agg=histories(), p=profiles())
def test_next_due_is_the_first_change_by_time_alone(
    data: st.DataObject, agg: Aggregates, p: Profile
) -> None:
    as_of = data.draw(instants(agg, p), label="as_of")
    earlier = [t for t in agg.order_times if t < agg.last_order_at]
    alerted = data.draw(
        st.sampled_from([None, agg.last_order_at, agg.last_order_at - 1, *earlier[:1]]),
        label="alerted",
    )
    d = next_due(agg, p, as_of, alerted)
    rh = rhythm(agg, p)
    pending = overdue_pending(rh, agg, alerted)
    # What time alone does to the score: next_due once this silence has been alerted.
    by_time = next_due(agg, p, as_of, agg.last_order_at)
    now = key(score(agg, as_of, p))

    # Exactly the oracle's first change, or the pending overdue instant if it comes first.
    assert by_time == first_change(agg, p, as_of)
    if pending:
        assert rh is not None
        assert d == (rh.overdue_at if by_time is None else min(by_time, rh.overdue_at))
    else:
        assert d == by_time
    # (a) after as_of, unless an overdue alert is pending (then it may be due now).
    if d is not None and d <= as_of:
        assert pending and rh is not None and d == rh.overdue_at
    if by_time is None:
        assert key(score(agg, as_of + 10 * YEAR, p)) == now
        assert d is None or pending
        return
    assert by_time > as_of
    # (b) constant on [as_of, by_time), which contains [as_of, d).
    assert key(score(agg, by_time - 1, p)) == now
    for _ in range(3):
        t = data.draw(st.integers(as_of, by_time - 1), label="between")
        assert key(score(agg, t, p)) == now
    if d is not None and d > as_of:
        assert key(score(agg, d - 1, p)) == now
    # (c) different at by_time; at d too, unless d is the overdue instant.
    assert key(score(agg, by_time, p)) != now
    if d is not None and not (pending and rh is not None and d == rh.overdue_at):
        assert d == by_time


# -- 3. windowed frequency ------------------------------------------------------------------


def test_windowed_f_drops_exactly_when_the_order_is_window_days_old() -> None:
    o = [T0 - 300 * DAY + 5, T0 - 200 * DAY, T0 - 100 * DAY + 7 * HOUR]
    o += [T0 - 50 * DAY, T0 - 10 * DAY]
    agg = aggregates(o, "300")
    s = score(agg, T0, WINDOWED)
    assert (s.f, s.orders) == (4, 5)

    # 5 orders, F4: F drops when the oldest leaves (count 4 < 5).
    due = next_due(agg, WINDOWED, T0, None)
    assert due == o[0] + 365 * DAY
    assert (score(agg, due - 1, WINDOWED).f, score(agg, due - 1, WINDOWED).orders) == (4, 5)
    assert (score(agg, due, WINDOWED).f, score(agg, due, WINDOWED).orders) == (3, 4)

    # 4 orders, F3: the second order leaving keeps F3 (3 orders); the third drops it.
    due = next_due(agg, WINDOWED, due, None)
    assert due == o[2] + 365 * DAY
    assert score(agg, o[1] + 365 * DAY, WINDOWED).f == 3
    assert (score(agg, due - 1, WINDOWED).f, score(agg, due - 1, WINDOWED).orders) == (3, 3)
    assert (score(agg, due, WINDOWED).f, score(agg, due, WINDOWED).orders) == (2, 2)

    # 2 orders, F2: F1 when the fourth leaves.
    due = next_due(agg, WINDOWED, due, None)
    assert due == o[3] + 365 * DAY
    assert score(agg, due - 1, WINDOWED).f == 2
    assert score(agg, due, WINDOWED).f == 1

    # F1 cannot fall: the last order leaving the window is no change; R is next.
    due = next_due(agg, WINDOWED, due, None)
    assert due == o[4] + 401 * DAY
    assert key(score(agg, o[4] + 365 * DAY, WINDOWED)) == key(score(agg, due - 1, WINDOWED))
    assert score(agg, due, WINDOWED).r == score(agg, due - 1, WINDOWED).r - 1


def test_windowed_f_and_recency_due_is_the_earlier_of_the_two() -> None:
    p = profile([15, 30, 45, 60], window=365, factor=0)
    o = [T0 - 364 * DAY - 3, T0 - 300 * DAY, T0 - 20 * DAY]
    agg = aggregates(o)
    assert score(agg, T0, p).f == 3
    # R drops at last + 31 days; the oldest order leaves 1 day minus 3 ms from now.
    assert next_due(agg, p, T0, None) == o[0] + 365 * DAY == T0 + DAY - 3
    assert next_due(agg, p, T0 + DAY - 3, None) == o[2] + 31 * DAY


def test_several_orders_leave_the_window_at_once() -> None:
    a, b = T0 - 200 * DAY, T0 - 100 * DAY
    agg = aggregates([a, a, a, b, b])
    assert score(agg, T0, WINDOWED).f == 4  # 5 orders
    due = next_due(agg, WINDOWED, T0, None)
    assert due == a + 365 * DAY
    assert score(agg, due - 1, WINDOWED).orders == 5
    s = score(agg, due, WINDOWED)
    assert (s.f, s.orders) == (2, 2)  # 5 -> 2 orders in one ms: F4 -> F2
    due = next_due(agg, WINDOWED, due, None)
    assert due == b + 365 * DAY
    assert score(agg, due - 1, WINDOWED).f == 2
    assert score(agg, due, WINDOWED).f == 1


def test_f5_to_f3_when_six_of_ten_orders_leave_together() -> None:
    a = T0 - 300 * DAY
    agg = aggregates([a] * 6 + [T0 - d * DAY for d in (40, 30, 20, 10)])
    assert score(agg, T0, WINDOWED).f == 5
    due = next_due(agg, WINDOWED, T0, None)
    assert due == a + 365 * DAY
    assert score(agg, due - 1, WINDOWED).f == 5
    assert (score(agg, due, WINDOWED).f, score(agg, due, WINDOWED).orders) == (3, 4)


def test_orders_placed_after_as_of_count_and_expire_in_turn() -> None:
    # A sweep instant before the latest orders' occurred_at (a late clock, a backfill).
    o = [T0 - 300 * DAY, T0 - 200 * DAY, T0 + HOUR, T0 + 2 * HOUR]
    agg = aggregates(o)
    s = score(agg, T0, WINDOWED)
    assert (s.r, s.f, s.orders) == (5, 3, 4)
    due = next_due(agg, WINDOWED, T0, None)
    assert due == o[1] + 365 * DAY  # the 2nd oldest leaving takes the count below 3
    assert score(agg, due - 1, WINDOWED).f == 3
    assert score(agg, due, WINDOWED).f == 2
    due = next_due(agg, WINDOWED, due, None)
    assert due == o[2] + 365 * DAY  # now below 2
    assert score(agg, due - 1, WINDOWED).f == 2
    assert (score(agg, due, WINDOWED).f, score(agg, due, WINDOWED).orders) == (1, 1)


def test_as_of_long_before_every_order_in_a_short_window() -> None:
    p = profile([60, 90], [1, 2, 3], window=30, factor=0)
    o = [T0, T0 + DAY, T0 + 2 * DAY]
    agg = aggregates(o)
    as_of = T0 - 100 * DAY
    assert score(agg, as_of, p).f == 4
    assert next_due(agg, p, as_of, None) == T0 + 30 * DAY
    assert score(agg, T0 + 30 * DAY - 1, p).f == 4
    assert score(agg, T0 + 30 * DAY, p).f == 3


@pytest.mark.parametrize(
    ("as_of", "due"),
    [
        # 1 order, frequency [0, 2]: F is 2 whatever the count, it never falls; only R.
        (T0, T0 + 16 * DAY),
        (T0 + 29 * DAY, T0 + 31 * DAY),
        (T0 + 31 * DAY, None),
    ],
    ids=["R3", "R2", "R1"],
)
def test_zero_frequency_threshold_one_order(as_of: int, due: int | None) -> None:
    # A 0 threshold is a valid profile (thresholds must be increasing and not negative).
    p = profile([15, 30], [0, 2], window=30, factor=0)
    agg = aggregates([T0])
    assert score(agg, as_of, p).f == 2
    assert next_due(agg, p, as_of, None) == due


def test_zero_frequency_threshold_two_orders() -> None:
    p = profile([15, 30], [0, 2], window=30, factor=0)
    agg = aggregates([T0 - 5 * DAY, T0])
    assert score(agg, T0, p).f == 3
    assert next_due(agg, p, T0, None) == T0 + 16 * DAY  # R first
    assert next_due(agg, p, T0 + 16 * DAY, None) == T0 + 25 * DAY  # F3 -> F2
    assert score(agg, T0 + 25 * DAY, p).f == 2
    assert next_due(agg, p, T0 + 25 * DAY, None) == T0 + 31 * DAY  # F2 is final: R again


# -- 4. the overdue rule --------------------------------------------------------------------


def test_fewer_than_three_orders_are_never_overdue() -> None:
    assert MIN_OVERDUE_ORDERS == 3
    agg = aggregates([T0 - 10 * DAY, T0])
    assert rhythm(agg, SHOP) is None
    assert not overdue_pending(rhythm(agg, SHOP), agg, None)
    # 100 days of silence against a 10-day rhythm: only recency moves.
    assert next_due(agg, SHOP, T0 + 100 * DAY, None) == T0 + 181 * DAY
    assert next_due(agg, SHOP, T0 + 366 * DAY, None) is None


def test_factor_zero_disables_the_rule() -> None:
    p = profile([30, 90, 180, 365], factor=0)
    agg = aggregates([T0 - 20 * DAY, T0 - 10 * DAY, T0])
    assert rhythm(agg, p) is None
    assert next_due(agg, p, T0 + 29 * DAY, None) == T0 + 31 * DAY
    assert next_due(agg, p, T0 + 366 * DAY, None) is None


def test_median_of_an_odd_number_of_gaps() -> None:
    agg = aggregates([T0 - 120 * DAY, T0 - 30 * DAY, T0 - 10 * DAY, T0])  # gaps 90, 20, 10
    rh = rhythm(agg, SHOP)
    assert rh is not None
    assert rh.median_gap_ms == 20 * DAY  # the middle gap, not the mean (40 days)
    assert rh.median_gap_days == 20.0
    assert rh.overdue_at == T0 + 40 * DAY + 1


def test_median_of_an_even_number_of_gaps_is_the_mean_of_the_middle_two() -> None:
    agg = aggregates([T0 - 100 * DAY, T0 - 90 * DAY, T0 - 70 * DAY, T0 - 40 * DAY, T0])
    rh = rhythm(agg, SHOP)  # gaps 10, 20, 30, 40
    assert rh is not None
    assert rh.median_gap_ms == 25 * DAY
    assert rh.median_gap_days == 25.0
    assert rh.overdue_at == T0 + 50 * DAY + 1


def test_median_of_half_a_millisecond() -> None:
    agg = aggregates([T0 - 3, T0 - 2, T0])  # gaps 1 and 2 ms: median 1.5 ms
    rh = rhythm(agg, profile([30], factor=1.0))
    assert rh is not None
    assert rh.median_gap_ms == 1.5
    assert rh.overdue_at == T0 + 2  # silence 2 > 1.5, silence 1 is not
    rh = rhythm(agg, profile([30], factor=2.0))
    assert rh is not None
    assert rh.overdue_at == T0 + 4  # silence 3 does not exceed 3.0


def test_median_gap_days_is_rounded_to_three_decimals() -> None:
    agg = aggregates([T0 - 72 * HOUR, T0 - 36 * HOUR, T0])
    rh = rhythm(agg, SHOP)
    assert rh is not None
    assert rh.median_gap_days == 1.5
    agg = aggregates([T0 - 2 * DAY - 2, T0 - DAY - 1, T0])
    rh = rhythm(agg, SHOP)
    assert rh is not None
    assert rh.median_gap_days == 1.0  # 1 day + 1 ms


@pytest.mark.parametrize(
    "times",
    [
        [T0, T0, T0],
        [T0] * 7,
        [T0 - 10 * DAY, T0, T0, T0],  # gaps 10 days, 0, 0: median 0
    ],
)
def test_no_rhythm_without_a_median_gap(times: list[int]) -> None:
    agg = aggregates(times)
    assert rhythm(agg, SHOP) is None
    assert next_due(agg, SHOP, T0, None) == T0 + 31 * DAY
    assert next_due(agg, SHOP, T0 + 366 * DAY, None) is None


@pytest.mark.parametrize(
    ("gap", "factor", "overdue_at"),
    [
        (75 * DAY, 2.0, 150 * DAY + 1),
        (75 * DAY, 1.5, 112 * DAY + 12 * HOUR + 1),
        (75 * DAY, 0.5, 37 * DAY + 12 * HOUR + 1),
        (7 * DAY + 1, 1.5, 907_200_001 + 1),  # 1.5 x 604_800_001 = 907_200_001.5: floored
        (7 * DAY + 1, 2.0, 1_209_600_002 + 1),
        (3, 3.7, 11 + 1),  # 11.1 ms
        (1, 0.5, 0 + 1),  # silence 1 ms > 0.5 ms
    ],
)
def test_overdue_instant_is_last_plus_floor_of_factor_times_median_plus_one(
    gap: int, factor: float, overdue_at: int
) -> None:
    agg = aggregates([T0 - 2 * gap, T0 - gap, T0])
    p = profile([30, 90, 180, 365], factor=factor)
    rh = rhythm(agg, p)
    assert rh is not None
    assert rh.overdue_at == T0 + overdue_at
    silence_before, silence_at = overdue_at - 1, overdue_at
    assert not silence_before > factor * gap
    assert silence_at > factor * gap


def test_next_due_includes_the_overdue_instant_while_unalerted() -> None:
    agg = aggregates([T0 - 150 * DAY, T0 - 75 * DAY, T0])
    overdue_at = T0 + 150 * DAY + 1
    # At T0 + 91 days R3 would change at +181; the overdue instant comes first.
    assert next_due(agg, SHOP, T0 + 91 * DAY, None) == overdue_at
    assert next_due(agg, SHOP, overdue_at - 1, None) == overdue_at
    # Due now (at or before as_of) while the silence is unalerted.
    assert next_due(agg, SHOP, overdue_at, None) == overdue_at
    assert next_due(agg, SHOP, T0 + 400 * DAY, None) == overdue_at
    # An older silence was alerted: this one is still pending.
    assert next_due(agg, SHOP, T0 + 91 * DAY, T0 - 75 * DAY) == overdue_at
    # This silence was alerted: recency only.
    assert next_due(agg, SHOP, T0 + 91 * DAY, T0) == T0 + 181 * DAY
    assert next_due(agg, SHOP, overdue_at, T0) == T0 + 181 * DAY
    assert next_due(agg, SHOP, T0 + 366 * DAY, T0) is None
    # Before it, an earlier recency boundary is due first.
    assert next_due(agg, SHOP, T0, None) == T0 + 31 * DAY


def test_overdue_pending() -> None:
    agg = aggregates([T0 - 20 * DAY, T0 - 10 * DAY, T0])
    rh = rhythm(agg, SHOP)
    assert overdue_pending(rh, agg, None)
    assert overdue_pending(rh, agg, T0 - 1)
    assert not overdue_pending(rh, agg, T0)
    assert not overdue_pending(None, agg, None)


# -- 5. engine.decay ------------------------------------------------------------------------

PROFILES = Profiles.builtin()
START = int(datetime(2024, 3, 1, 9, 15, 30, tzinfo=UTC).timestamp()) * 1000 + 250
GAP = 75 * DAY
LAST = START + 9 * GAP  # 10 orders, every 75 days for two years
NOW = LAST + 5 * 366 * DAY  # the wall clock: after every instant below


def placed_event(order_id: str, at: int, amount: str = "30") -> ValidEvent:
    return valid_event(
        PROFILES,
        event_id=f"p-{order_id}",
        kind="placed",
        order_id=order_id,
        customer="c-75",
        occurred_at=iso(at),
        now_ms=NOW,
        amount=amount,
    )


def regular_customer() -> Customer:
    """10 orders of 30 every 75 days, scored at the last one: 553 champions."""
    c = Customer("default", "c-75")
    events = [placed_event(f"o{i}", START + i * GAP) for i in range(10)]
    result = apply_events(c, events, profile=SHOP, as_of_ms=LAST, now_ms=NOW)
    assert c.published == Published(5, 5, 3, "champions")
    assert result.due == LAST + 31 * DAY
    return c


def sweep(c: Customer, at: int) -> Result:
    return decay(c, SHOP, as_of_ms=at, now_ms=NOW)


def view(rfm: str, segment: str) -> dict[str, object]:
    r, f, m = (int(ch) for ch in rfm)
    return {"r": r, "f": f, "m": m, "rfm": rfm, "segment": segment}


def check_changed(change: Change, at: int, previous: str, current: str) -> None:
    model = RfmChanged.model_validate(change.payload)
    assert RfmChanged.model_validate_json(orjson.dumps(change.payload)) == model
    p = change.payload
    assert (change.kind, change.cause, p["cause"]) == ("rfm.changed", "decay", "decay")
    assert p["cause_event_id"] is None
    assert p["as_of"] == iso(at)
    assert p["emitted_at"] == iso(NOW)
    prev_seg, cur_seg = previous.split(":"), current.split(":")
    assert p["previous"] == view(*prev_seg)
    assert p["current"] == view(*cur_seg)
    assert p["segment_changed"] is (prev_seg[1] != cur_seg[1])
    assert (change.from_segment, change.to_segment) == (prev_seg[1], cur_seg[1])


def check_overdue(change: Change, at: int, last: int, current: str) -> None:
    model = RfmOverdue.model_validate(change.payload)
    assert RfmOverdue.model_validate_json(orjson.dumps(change.payload)) == model
    assert (change.kind, change.cause) == ("rfm.overdue", "decay")
    assert (change.from_segment, change.to_segment) == (None, None)
    assert change.payload == {
        "type": "rfm.overdue",
        "change_id": change.payload["change_id"],
        "tenant": "default",
        "customer_id": "c-75",
        "as_of": iso(at),
        "last_order_at": iso(last),
        "median_gap_days": 75.0,
        "expected_next_order_at": iso(last + 75 * DAY),
        "silent_days": (at - last) // DAY,
        "current": view(*current.split(":")),
        "triggers": [],
        "emitted_at": iso(NOW),
    }


def test_shop_profile_is_the_builtin_default() -> None:
    assert SHOP.recency_days == BUILTIN_DEFAULT.recency_days
    assert SHOP.frequency_orders == BUILTIN_DEFAULT.frequency_orders
    assert SHOP.overdue_factor == BUILTIN_DEFAULT.overdue_factor == 2.0


def test_decay_walk_one_change_per_boundary_and_one_overdue_per_silence() -> None:
    c = regular_customer()
    overdue_at = LAST + 150 * DAY + 1
    # (instant, expected rfm.changed previous -> current or None, overdue?, next due)
    steps: list[tuple[int, tuple[str, str] | None, bool, int | None]] = [
        (LAST + 31 * DAY - 1, None, False, LAST + 31 * DAY),
        (LAST + 31 * DAY, ("553:champions", "453:loyal"), False, LAST + 91 * DAY),
        (LAST + 31 * DAY, None, False, LAST + 91 * DAY),  # the same instant again
        (LAST + 91 * DAY - 1, None, False, LAST + 91 * DAY),
        (LAST + 91 * DAY, ("453:loyal", "353:loyal"), False, overdue_at),
        (LAST + 150 * DAY, None, False, overdue_at),  # silence == 2 x 75 days: not yet
        (overdue_at, None, True, LAST + 181 * DAY),
        (overdue_at, None, False, LAST + 181 * DAY),
        (LAST + 181 * DAY - 1, None, False, LAST + 181 * DAY),
        (LAST + 181 * DAY, ("353:loyal", "253:cant_lose_them"), False, LAST + 366 * DAY),
        (LAST + 366 * DAY - 1, None, False, LAST + 366 * DAY),
        (LAST + 366 * DAY, ("253:cant_lose_them", "153:cant_lose_them"), False, None),
        (LAST + 366 * DAY, None, False, None),
        (LAST + 10 * 365 * DAY, None, False, None),
    ]
    for at, changed, overdue, due in steps:
        before = c.scored_at
        result = sweep(c, at)
        assert result.touched
        assert result.due == due, at
        assert result.due is None or result.due > at
        kinds = [ch.kind for ch in result.changes]
        assert kinds == ["rfm.changed"] * (changed is not None) + ["rfm.overdue"] * overdue, at
        if changed is not None:
            check_changed(result.changes[0], at, *changed)
        if overdue:
            check_overdue(result.changes[-1], at, LAST, "353:loyal")
            assert result.changes[-1].payload["silent_days"] == 150
            assert c.alerted == LAST
        assert result.dirty is bool(result.changes)
        assert c.scored_at == (at if result.changes else before)
    assert c.published == Published(1, 5, 3, "cant_lose_them")


def test_a_late_sweep_publishes_one_change_for_several_boundaries_and_the_alert() -> None:
    c = regular_customer()
    at = LAST + 200 * DAY
    result = sweep(c, at)
    assert [ch.kind for ch in result.changes] == ["rfm.changed", "rfm.overdue"]
    check_changed(result.changes[0], at, "553:champions", "253:cant_lose_them")
    check_overdue(result.changes[1], at, LAST, "253:cant_lose_them")
    assert result.changes[1].payload["silent_days"] == 200
    assert result.due == LAST + 366 * DAY
    assert sweep(c, at).changes == []
    assert sweep(c, LAST + 1000 * DAY).changes[0].kind == "rfm.changed"
    assert sweep(c, LAST + 2000 * DAY).changes == []


def test_a_new_order_ends_the_silence_and_the_next_one_alerts_again() -> None:
    c = regular_customer()
    sweep(c, LAST + 200 * DAY)
    assert c.alerted == LAST
    back = LAST + 400 * DAY
    result = apply_events(
        c,
        [placed_event("o10", back)],
        profile=SHOP,
        as_of_ms=back,
        now_ms=NOW,
    )
    [change] = result.changes
    assert change.payload["current"] == view("553", "champions")
    assert c.alerted == LAST  # the old silence's alert, kept
    assert result.due == back + 31 * DAY
    # Gaps: nine of 75 days and one of 400: the median is still 75 days.
    overdue_at = back + 150 * DAY + 1
    result = sweep(c, overdue_at - 1)
    assert [ch.kind for ch in result.changes] == ["rfm.changed"]
    check_changed(result.changes[0], overdue_at - 1, "553:champions", "353:loyal")
    assert result.due == overdue_at
    result = sweep(c, overdue_at)
    assert [ch.kind for ch in result.changes] == ["rfm.overdue"]
    check_overdue(result.changes[0], overdue_at, back, "353:loyal")
    assert c.alerted == back
    assert result.due == back + 181 * DAY
    for later in (overdue_at, back + 181 * DAY, back + 366 * DAY, back + 3000 * DAY):
        assert all(ch.kind == "rfm.changed" for ch in sweep(c, later).changes)


def test_three_orders_one_cancelled_never_alert() -> None:
    c = Customer("default", "c-75")
    c.orders = {
        "a": Order(LAST - 20 * DAY, 10),
        "b": Order(LAST - 10 * DAY, 10, cancelled=True),
        "c": Order(LAST, 10),
    }
    for at in (LAST, LAST + 100 * DAY, LAST + 400 * DAY, LAST + 4000 * DAY):
        result = sweep(c, at)
        assert all(ch.kind == "rfm.changed" for ch in result.changes)
        assert c.alerted is None
    assert result.due is None


def test_decay_scores_at_the_customers_later_instant() -> None:
    c = regular_customer()
    c.scored_at = LAST + 95 * DAY  # committed later than the due index entry we swept
    sweep_at = LAST + 40 * DAY
    result = sweep(c, sweep_at)
    [change] = result.changes
    check_changed(change, LAST + 95 * DAY, "553:champions", "353:loyal")  # not 453 (day 40)
    assert c.scored_at == LAST + 95 * DAY  # never moves back
    assert result.due == LAST + 150 * DAY + 1
    assert result.due > sweep_at


def test_decay_alerts_at_the_customers_later_instant() -> None:
    c = regular_customer()
    sweep(c, LAST + 100 * DAY)
    c.scored_at = LAST + 160 * DAY
    result = sweep(c, LAST + 120 * DAY)  # before the overdue instant, but the customer is past
    assert [ch.kind for ch in result.changes] == ["rfm.overdue"]
    check_overdue(result.changes[0], LAST + 160 * DAY, LAST, "353:loyal")
    assert result.changes[0].payload["silent_days"] == 160
    assert result.due == LAST + 181 * DAY


def test_decay_of_an_unchanged_later_customer_is_rescheduled_after_the_sweep() -> None:
    c = regular_customer()
    c.scored_at = LAST + 20 * DAY
    result = sweep(c, LAST + 5 * DAY)
    assert result.changes == []
    assert (result.touched, result.dirty) == (True, False)
    assert result.due == LAST + 31 * DAY
    assert c.scored_at == LAST + 20 * DAY


def test_decay_of_a_customer_without_orders() -> None:
    c = Customer("default", "nobody")
    result = sweep(c, T0)
    assert (result.changes, result.due, result.dirty, result.touched) == ([], None, False, True)


def test_decay_with_a_zero_frequency_threshold_and_a_window() -> None:
    p = profile([15, 30], [0, 2], window=30, factor=0)
    c = Customer("default", "c0")
    c.orders = {"a": Order(T0, 10)}
    result = decay(c, p, as_of_ms=T0, now_ms=NOW)
    assert c.published is not None and c.published.f == 2
    assert result.due == T0 + 16 * DAY


# -- sweeping follows the due index --------------------------------------------------------


@st.composite
def customers(draw: st.DrawFn) -> Customer:
    agg = draw(histories())
    c = Customer("default", "c")
    for i, t in enumerate(agg.order_times):
        cancelled = draw(st.integers(0, 9)) == 5  # 1 in 10; 0 would be drawn too often
        c.orders[f"o{i}"] = Order(t, draw(st.integers(0, 3_000_000)), cancelled=cancelled)
    return c


@settings(max_examples=150, derandomize=True, deadline=None)
@given(data=st.data(), c=customers(), p=profiles())
def test_following_the_due_instants_yields_something_at_each_and_one_alert(
    data: st.DataObject, c: Customer, p: Profile
) -> None:
    agg = c.aggregates()
    at = data.draw(instants(agg, p) if agg is not None else st.just(T0), label="first sweep")
    if data.draw(st.booleans(), label="committed later"):
        c.scored_at = at + data.draw(st.integers(0, 100 * DAY), label="later by")
    records: list[Change] = []
    result = decay(c, p, as_of_ms=at, now_ms=NOW)
    for _ in range(30):
        records += result.changes
        effective = max(at, c.scored_at or at)
        assert result.due == next_due(agg, p, effective, c.alerted)
        # After a sweep the customer is due after the sweep's instant, or never.
        assert result.due is None or result.due > effective >= at
        # The same instant again: nothing more.
        again = decay(c, p, as_of_ms=at, now_ms=NOW)
        assert again.changes == []
        assert again.due == result.due
        if result.due is None:
            break
        # The sweeper wakes at the due instant (or a little late): something is published.
        at = result.due + data.draw(st.sampled_from([0, 0, 1, HOUR]), label="lag")
        result = decay(c, p, as_of_ms=at, now_ms=NOW)
        assert result.changes, at
    else:
        pytest.fail("the due chain did not end")
    assert agg is None or c.published == Published(*key(score(agg, at + 10 * YEAR, p)))
    changed = [r.payload for r in records if r.kind == "rfm.changed"]
    for a, b in pairwise(changed):
        assert a["current"] == b["previous"]  # one chain, nothing lost or repeated
    overdue = [r for r in records if r.kind == "rfm.overdue"]
    assert len(overdue) <= 1  # one silence: at most one alert
    rh = None if agg is None else rhythm(agg, p)
    assert len(overdue) == (rh is not None)
