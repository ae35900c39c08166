"""R, F, M scores (docs/profiles.md): every boundary of the documented example profiles."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.factories import PIZZERIA
from worker.rules.aggregates import Aggregates
from worker.rules.money import to_units
from worker.rules.profile import Profile
from worker.rules.scoring import (
    DAY_MS,
    at_least_score,
    days_between,
    recency_score,
    score,
    windowed_orders,
)

HOUR_MS = 3_600_000
AS_OF = int(datetime(2026, 11, 20, 18, 30, tzinfo=UTC).timestamp()) * 1000

SOFA_SHOP = Profile(
    name="sofa-shop",
    recency_days=[30, 365, 730, 1825],
    frequency_orders=[2, 3, 4, 6],
    monetary=[Decimal(500), Decimal(1500), Decimal(3000), Decimal(6000)],
)
WINDOWED = Profile(
    recency_days=[15, 30, 45, 60],
    frequency_orders=[2, 3, 5, 10],
    frequency_window_days=365,
    monetary=[Decimal(100), Decimal(250), Decimal(500), Decimal(1000)],
)


def aggregates(order_times: list[int], monetary: str = "0") -> Aggregates:
    times = tuple(sorted(order_times))
    return Aggregates(times[0], times[-1], len(times), to_units(monetary), times)


def one_order(age_ms: int, monetary: str = "0") -> Aggregates:
    return aggregates([AS_OF - age_ms], monetary)


# -- days arithmetic ----------------------------------------------------------------------


def test_day_is_24_hours_of_milliseconds() -> None:
    assert DAY_MS == 24 * 60 * 60 * 1000


@pytest.mark.parametrize(
    ("age_ms", "days"),
    [
        (0, 0),
        (1, 0),
        (DAY_MS - 1, 0),
        (DAY_MS, 1),
        (15 * DAY_MS, 15),
        (16 * DAY_MS - 1, 15),  # 15 days + 23:59:59.999 is still day 15
        (16 * DAY_MS, 16),
        (-1, -1),  # an order 1 ms in the future is floored to day -1
        (-DAY_MS, -1),
        (-DAY_MS - 1, -2),
    ],
)
def test_days_between_floors(age_ms: int, days: int) -> None:
    assert days_between(AS_OF - age_ms, AS_OF) == days


def test_days_between_ignores_calendar_and_timezones() -> None:
    # 2026-03-29 is a DST change in Europe: still 24 h days, counted from epoch ms.
    a = int(datetime(2026, 3, 28, 12, tzinfo=UTC).timestamp() * 1000)
    b = int(datetime(2026, 3, 30, 11, 59, 59, 999_000, tzinfo=UTC).timestamp() * 1000)
    assert days_between(a, b) == 1
    assert days_between(a, b + 1) == 2


# -- recency ------------------------------------------------------------------------------

PIZZERIA_RECENCY = [
    (0, 5),
    (1, 5),
    (15, 5),
    (16, 4),
    (30, 4),
    (31, 3),
    (45, 3),
    (46, 2),
    (60, 2),
    (61, 1),
    (10_000, 1),
]
SOFA_RECENCY = [
    (0, 5),
    (30, 5),
    (31, 4),
    (365, 4),
    (366, 3),
    (730, 3),
    (731, 2),
    (1825, 2),  # 5 years
    (1826, 1),
    (100_000, 1),
]


@pytest.mark.parametrize(("days", "r"), PIZZERIA_RECENCY)
def test_pizzeria_recency_score(days: int, r: int) -> None:
    assert recency_score(days, PIZZERIA.recency_days) == r


@pytest.mark.parametrize(("days", "r"), SOFA_RECENCY)
def test_sofa_recency_score(days: int, r: int) -> None:
    assert recency_score(days, SOFA_SHOP.recency_days) == r


@pytest.mark.parametrize(("days", "r"), PIZZERIA_RECENCY)
def test_pizzeria_recency_at_the_first_and_last_millisecond_of_each_day(days: int, r: int) -> None:
    first_ms = one_order(days * DAY_MS)
    last_ms = one_order((days + 1) * DAY_MS - 1)
    assert score(first_ms, AS_OF, PIZZERIA).r == r
    assert score(last_ms, AS_OF, PIZZERIA).r == r


@pytest.mark.parametrize(("days", "r"), SOFA_RECENCY)
def test_sofa_recency_at_the_first_and_last_millisecond_of_each_day(days: int, r: int) -> None:
    assert score(one_order(days * DAY_MS), AS_OF, SOFA_SHOP).r == r
    assert score(one_order((days + 1) * DAY_MS - 1), AS_OF, SOFA_SHOP).r == r


def test_recency_millisecond_boundaries_pizzeria() -> None:
    fifteen_days_and_almost_a_day = 15 * DAY_MS + 23 * HOUR_MS + 59 * 60_000 + 59_999
    assert score(one_order(fifteen_days_and_almost_a_day), AS_OF, PIZZERIA).r == 5
    assert score(one_order(fifteen_days_and_almost_a_day + 1), AS_OF, PIZZERIA).r == 4
    assert score(one_order(61 * DAY_MS - 1), AS_OF, PIZZERIA).r == 2
    assert score(one_order(61 * DAY_MS), AS_OF, PIZZERIA).r == 1


def test_recency_uses_the_last_order() -> None:
    agg = aggregates([AS_OF - 100 * DAY_MS, AS_OF - 20 * DAY_MS, AS_OF - 50 * DAY_MS])
    assert score(agg, AS_OF, PIZZERIA).r == 4


def test_order_in_the_future_of_as_of_is_most_recent() -> None:
    assert score(one_order(-3 * HOUR_MS), AS_OF, PIZZERIA).r == 5


def test_recency_score_with_other_threshold_counts() -> None:
    assert [recency_score(d, [10]) for d in (0, 10, 11)] == [2, 2, 1]
    assert [recency_score(d, [1, 2, 3, 4, 5, 6]) for d in (1, 2, 6, 7)] == [7, 6, 2, 1]


# -- frequency ----------------------------------------------------------------------------

PIZZERIA_FREQUENCY = [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (9, 4), (10, 5), (11, 5), (500, 5)]
SOFA_FREQUENCY = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (6, 5), (7, 5), (60, 5)]


@pytest.mark.parametrize(("orders", "f"), PIZZERIA_FREQUENCY)
def test_pizzeria_frequency(orders: int, f: int) -> None:
    assert at_least_score(orders, PIZZERIA.frequency_orders) == f
    agg = aggregates([AS_OF - i * HOUR_MS for i in range(orders)])
    s = score(agg, AS_OF, PIZZERIA)
    assert s.f == f
    assert s.orders == orders


@pytest.mark.parametrize(("orders", "f"), SOFA_FREQUENCY)
def test_sofa_frequency(orders: int, f: int) -> None:
    assert at_least_score(orders, SOFA_SHOP.frequency_orders) == f
    agg = aggregates([AS_OF - i * DAY_MS for i in range(orders)])
    assert score(agg, AS_OF, SOFA_SHOP).f == f


def test_zero_orders_scores_one() -> None:
    assert at_least_score(0, PIZZERIA.frequency_orders) == 1


# -- monetary -----------------------------------------------------------------------------

PIZZERIA_MONETARY = [
    ("0", 1),
    ("99.9999", 1),
    ("100", 2),
    ("100.0001", 2),
    ("249.9999", 2),
    ("250", 3),
    ("499.9999", 3),
    ("500", 4),
    ("999.9999", 4),
    ("1000", 5),
    ("999999999999.9999", 5),
]
SOFA_MONETARY = [
    ("0", 1),
    ("499.9999", 1),
    ("500", 2),
    ("1499.9999", 2),
    ("1500", 3),
    ("2999.9999", 3),
    ("3000", 4),
    ("5999.9999", 4),
    ("6000", 5),
]


@pytest.mark.parametrize(("amount", "m"), PIZZERIA_MONETARY)
def test_pizzeria_monetary(amount: str, m: int) -> None:
    assert score(one_order(0, amount), AS_OF, PIZZERIA).m == m


@pytest.mark.parametrize(("amount", "m"), SOFA_MONETARY)
def test_sofa_monetary(amount: str, m: int) -> None:
    assert score(one_order(0, amount), AS_OF, SOFA_SHOP).m == m


def test_monetary_thresholds_with_decimals_are_exact() -> None:
    profile = Profile(
        recency_days=[15, 30, 45, 60],
        frequency_orders=[2, 3, 5, 10],
        monetary=[Decimal("0.1"), Decimal("0.3"), Decimal("19.99"), Decimal("20.0001")],
    )
    # 0.1 + 0.2 reaches 0.3 exactly (it would not in binary floating point).
    assert score(one_order(0, "0.2999"), AS_OF, profile).m == 2
    assert score(one_order(0, str(Decimal("0.1") + Decimal("0.2"))), AS_OF, profile).m == 3
    assert score(one_order(0, "19.9899"), AS_OF, profile).m == 3
    assert score(one_order(0, "19.99"), AS_OF, profile).m == 4
    assert score(one_order(0, "20.0000"), AS_OF, profile).m == 4
    assert score(one_order(0, "20.0001"), AS_OF, profile).m == 5


# -- windowed frequency -------------------------------------------------------------------


def test_no_window_counts_lifetime_orders() -> None:
    agg = aggregates([AS_OF - 5000 * DAY_MS, AS_OF - 3000 * DAY_MS, AS_OF])
    assert windowed_orders(agg, AS_OF, None) == 3
    assert score(agg, AS_OF, PIZZERIA).orders == 3


def test_order_stops_counting_exactly_when_it_is_window_days_old() -> None:
    agg = aggregates([AS_OF - 365 * DAY_MS, AS_OF - 10 * DAY_MS])
    assert windowed_orders(agg, AS_OF, 365) == 1  # exactly 365 days old: out
    assert windowed_orders(agg, AS_OF - 1, 365) == 2  # 1 ms earlier it was 364 days old
    agg = aggregates([AS_OF - 365 * DAY_MS + 1, AS_OF - 10 * DAY_MS])
    assert windowed_orders(agg, AS_OF, 365) == 2  # 364 days + 23:59:59.999: still in


def test_window_boundary_matches_days_arithmetic() -> None:
    # Same rule as recency: an order counts while floor(age / 24h) < window.
    for age in (0, 1, 364 * DAY_MS, 365 * DAY_MS - 1, 365 * DAY_MS, 365 * DAY_MS + 1):
        agg = aggregates([AS_OF - age])
        counted = windowed_orders(agg, AS_OF, 365) == 1
        assert counted == (days_between(AS_OF - age, AS_OF) < 365), age


def test_windowed_frequency_in_score() -> None:
    # 10 orders: 5 within the last 365 days, 5 older.
    recent = [AS_OF - d * DAY_MS for d in (0, 30, 100, 200, 364)]
    old = [AS_OF - d * DAY_MS for d in (365, 400, 500, 600, 700)]
    agg = aggregates(recent + old, "100")
    windowed = score(agg, AS_OF, WINDOWED)
    assert windowed.orders == 5
    assert windowed.f == 4
    lifetime = score(agg, AS_OF, PIZZERIA)
    assert lifetime.orders == 10
    assert lifetime.f == 5
    # A day later the 364-day-old order drops out too.
    assert score(agg, AS_OF + DAY_MS, WINDOWED).orders == 4
    assert score(agg, AS_OF + DAY_MS, WINDOWED).f == 3


def test_all_orders_outside_the_window_score_f1_and_keep_r_and_m() -> None:
    agg = aggregates([AS_OF - 400 * DAY_MS, AS_OF - 380 * DAY_MS], "2000")
    s = score(agg, AS_OF, WINDOWED)
    assert (s.r, s.f, s.m, s.orders) == (1, 1, 5, 0)


# -- the whole score ----------------------------------------------------------------------


def test_score_combines_dimensions_and_standard_segment() -> None:
    # 1 order today worth 120: R5 F1 M2 -> "512" -> new_customers (documented example).
    s = score(one_order(0, "120"), AS_OF, PIZZERIA)
    assert (s.r, s.f, s.m) == (5, 1, 2)
    assert s.rfm == "512"
    assert s.segment == "new_customers"


def test_score_champions_and_lost_and_at_risk() -> None:
    champion = aggregates([AS_OF - i * DAY_MS for i in range(10)], "1000")
    s = score(champion, AS_OF, PIZZERIA)
    assert (s.rfm, s.segment) == ("555", "champions")

    lost = one_order(61 * DAY_MS, "10")
    s = score(lost, AS_OF, PIZZERIA)
    assert (s.rfm, s.segment) == ("111", "lost")

    # R1 F2 M4: two orders, the last 61 days ago, worth 500.
    at_risk = aggregates([AS_OF - 61 * DAY_MS, AS_OF - 90 * DAY_MS], "500")
    s = score(at_risk, AS_OF, PIZZERIA)
    assert (s.rfm, s.segment) == ("124", "at_risk")


def test_sofa_shop_scores_a_three_year_old_big_buyer() -> None:
    agg = aggregates([AS_OF - 3 * 365 * DAY_MS, AS_OF - 3 * 365 * DAY_MS - 1], "3200")
    s = score(agg, AS_OF, SOFA_SHOP)
    assert (s.r, s.f, s.m) == (2, 2, 4)  # 1095 days: <= 1825 -> R2; 2 orders; >= 3000


def test_score_uses_the_profile_segment_map() -> None:
    from worker.rules.profiles import Profiles

    profiles = Profiles.from_toml(
        """
[profiles.default]
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
[[profiles.default.segments]]
name = "vip"
m = [5, 5]
[[profiles.default.segments]]
name = "others"
"""
    )
    p = profiles.default
    assert score(one_order(100 * DAY_MS, "1000"), AS_OF, p).segment == "vip"
    assert score(one_order(0, "999.9999"), AS_OF, p).segment == "others"
