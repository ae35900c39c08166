"""Per-customer state (docs/architecture.md): order-independent merge, exact sums, codec."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise
from typing import Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.rules.aggregates import Aggregates
from worker.rules.customer import LONG_HISTORY, Customer, Published
from worker.rules.events import ValidEvent
from worker.rules.money import to_units
from worker.rules.orders import Order

T0 = 1_793_000_000_000  # epoch ms
DAY = 86_400_000
Kind = Literal["order_placed", "order_refunded", "order_cancelled"]


def ev(
    kind: Kind,
    order_id: str,
    event_id: str,
    amount: str | None = None,
    at: int = T0,
    customer_id: str = "c1",
) -> ValidEvent:
    return ValidEvent(
        event_id=event_id,
        type=kind,
        order_id=order_id,
        customer_id=customer_id,
        tenant="default",
        amount=None if amount is None else to_units(amount),
        occurred_at=at,
    )


def placed(order_id: str, amount: str, at: int = T0, event_id: str | None = None) -> ValidEvent:
    return ev("order_placed", order_id, event_id or f"p-{order_id}", amount, at)


def refunded(order_id: str, amount: str, event_id: str, at: int = T0 + DAY) -> ValidEvent:
    return ev("order_refunded", order_id, event_id, amount, at)


def cancelled(order_id: str, event_id: str | None = None, at: int = T0 + DAY) -> ValidEvent:
    return ev("order_cancelled", order_id, event_id or f"x-{order_id}", None, at)


def customer_after(events: list[ValidEvent]) -> Customer:
    c = Customer("default", "c1")
    for e in events:
        c.apply(e)
    return c


def monetary(c: Customer) -> Decimal:
    agg = c.aggregates()
    return Decimal(0) if agg is None else Decimal(agg.monetary) / 10_000


def lifetime(c: Customer) -> int:
    agg = c.aggregates()
    return 0 if agg is None else agg.orders_lifetime


def same_state(a: Customer, b: Customer) -> bool:
    return a.encode() == b.encode() and a.aggregates() == b.aggregates()


# -- placing orders -----------------------------------------------------------------------


def test_new_customer_has_no_aggregates() -> None:
    c = Customer("default", "c1")
    assert c.aggregates() is None
    assert c.published is None


def test_one_order() -> None:
    c = Customer("default", "c1")
    assert c.apply(placed("o1", "120.50")) == "applied"
    agg = c.aggregates()
    assert agg is not None
    assert agg.first_order_at == agg.last_order_at == T0
    assert agg.orders_lifetime == 1
    assert agg.monetary == 1_205_000
    assert tuple(agg.order_times) == (T0,)


def test_several_orders_aggregate() -> None:
    c = customer_after(
        [
            placed("o2", "10", T0 + 5 * DAY),
            placed("o1", "20", T0),
            placed("o3", "30.25", T0 + 2 * DAY),
        ]
    )
    agg = c.aggregates()
    assert agg is not None
    assert agg.first_order_at == T0
    assert agg.last_order_at == T0 + 5 * DAY
    assert agg.orders_lifetime == 3
    assert agg.monetary == to_units("60.25")
    assert tuple(agg.order_times) == (T0, T0 + 2 * DAY, T0 + 5 * DAY)


def test_redelivered_event_is_a_duplicate() -> None:
    c = Customer("default", "c1")
    e = placed("o1", "50")
    assert c.apply(e) == "applied"
    before = c.encode()
    assert c.apply(e) == "duplicate"
    assert c.encode() == before
    assert lifetime(c) == 1
    assert monetary(c) == Decimal(50)


def test_second_placed_for_the_same_order_counts_once_whatever_its_event_id() -> None:
    c = Customer("default", "c1")
    c.apply(placed("o1", "50", event_id="p-a"))
    assert c.apply(placed("o1", "50", event_id="p-b")) == "duplicate"
    assert lifetime(c) == 1
    assert monetary(c) == Decimal(50)


def test_conflicting_placed_events_keep_one_order_in_any_arrival_order() -> None:
    a = placed("o1", "50", T0, event_id="p-a")
    b = placed("o1", "70", T0 + DAY, event_id="p-b")
    ab, ba = customer_after([a, b]), customer_after([b, a])
    assert same_state(ab, ba)
    assert lifetime(ab) == 1
    assert monetary(ab) in {Decimal(50), Decimal(70)}


def test_same_order_id_for_different_customers_are_independent() -> None:
    c1, c2 = Customer("default", "c1"), Customer("default", "c2")
    c1.apply(placed("o1", "10"))
    assert c2.aggregates() is None


# -- cancellations ------------------------------------------------------------------------


def test_cancel_removes_the_order_from_f_m_and_r() -> None:
    c = customer_after([placed("o1", "10", T0), placed("o2", "20", T0 + 3 * DAY)])
    assert c.apply(cancelled("o2")) == "applied"
    agg = c.aggregates()
    assert agg is not None
    assert agg.orders_lifetime == 1
    assert agg.monetary == to_units("10")
    assert agg.last_order_at == T0  # R follows the remaining order


def test_cancel_of_the_only_order_leaves_no_aggregates() -> None:
    c = customer_after([placed("o1", "10"), cancelled("o1")])
    assert c.aggregates() is None


def test_cancel_before_place() -> None:
    c = Customer("default", "c1")
    assert c.apply(cancelled("o1")) == "applied"
    assert c.aggregates() is None
    c.apply(placed("o1", "10"))
    assert c.aggregates() is None
    assert same_state(c, customer_after([placed("o1", "10"), cancelled("o1")]))


def test_cancel_redelivered_is_a_duplicate() -> None:
    c = customer_after([placed("o1", "10"), cancelled("o1")])
    before = c.encode()
    assert c.apply(cancelled("o1")) == "duplicate"
    assert c.encode() == before


def test_cancel_of_one_order_leaves_the_others() -> None:
    c = customer_after([cancelled("o9"), placed("o1", "10"), placed("o2", "5")])
    assert lifetime(c) == 2
    assert monetary(c) == Decimal(15)


# -- refunds ------------------------------------------------------------------------------


def test_partial_refund() -> None:
    c = customer_after([placed("o1", "100"), refunded("o1", "30.5", "r1")])
    assert monetary(c) == Decimal("69.5")
    assert lifetime(c) == 1  # a partially refunded order still counts


def test_multiple_refunds_add_up() -> None:
    c = customer_after(
        [
            placed("o1", "100"),
            refunded("o1", "10", "r1"),
            refunded("o1", "10", "r2"),  # same amount, another refund: counts again
            refunded("o1", "0.0001", "r3"),
        ]
    )
    assert monetary(c) == Decimal("79.9999")


def test_refund_redelivered_counts_once() -> None:
    c = customer_after([placed("o1", "100"), refunded("o1", "10", "r1")])
    assert c.apply(refunded("o1", "10", "r1")) == "duplicate"
    assert monetary(c) == Decimal(90)


def test_refund_before_place() -> None:
    c = Customer("default", "c1")
    assert c.apply(refunded("o1", "25", "r1")) == "applied"
    assert c.aggregates() is None  # a refund alone is not an order
    c.apply(placed("o1", "100"))
    assert monetary(c) == Decimal(75)
    assert lifetime(c) == 1
    assert same_state(c, customer_after([placed("o1", "100"), refunded("o1", "25", "r1")]))


def test_value_never_goes_below_zero() -> None:
    c = customer_after(
        [
            placed("o1", "100"),
            placed("o2", "40"),
            refunded("o1", "80", "r1"),
            refunded("o1", "80", "r2"),
        ]
    )
    # o1 is worth max(0, 100 - 160) = 0: it must not eat into o2.
    assert monetary(c) == Decimal(40)
    assert lifetime(c) == 2


def test_full_refund_keeps_the_order_counted_at_zero() -> None:
    c = customer_after([placed("o1", "100"), refunded("o1", "100", "r1")])
    assert monetary(c) == Decimal(0)
    assert lifetime(c) == 1


def test_refunds_of_a_cancelled_order_change_nothing() -> None:
    base = [placed("o1", "100"), placed("o2", "50"), cancelled("o1")]
    c = customer_after(base)
    before = c.aggregates()
    assert c.apply(refunded("o1", "30", "r1")) == "applied"  # merged, so a redelivery ...
    assert c.aggregates() == before  # ... is recognised, yet nothing a score sees changed
    assert c.apply(refunded("o1", "30", "r1")) == "duplicate"
    assert monetary(c) == Decimal(50)
    # Also when the refund arrived before the cancellation (or before everything).
    early = customer_after([refunded("o1", "30", "r1"), *base])
    assert same_state(early, c)
    middle = customer_after([placed("o1", "100"), refunded("o1", "30", "r1"), *base[1:]])
    assert same_state(middle, c)


def test_refund_of_another_order_does_not_touch_this_one() -> None:
    c = customer_after([placed("o1", "100"), refunded("o2", "30", "r1")])
    assert monetary(c) == Decimal(100)
    assert lifetime(c) == 1


def test_sums_are_exact() -> None:
    events = [placed(f"o{i}", "0.1", T0 + i) for i in range(10)]
    events += [placed("big", "999999999999.9999"), refunded("o0", "0.0001", "r")]
    c = customer_after(events)
    agg = c.aggregates()
    assert agg is not None
    assert agg.monetary == to_units("1000000000000.9998")  # 10 x 0.1 + big - 0.0001
    assert isinstance(agg.monetary, int)


# -- codec --------------------------------------------------------------------------------


def test_decode_of_nothing_is_a_new_customer() -> None:
    for blob in (None, b""):
        c = Customer.decode("t", "c9", blob)
        assert (c.tenant, c.customer_id) == ("t", "c9")
        assert c.orders == {}
        assert c.published is None
        assert c.partition is None


def test_encode_decode_round_trip() -> None:
    c = customer_after(
        [
            placed("o1", "100", T0),
            placed("o2", "12.3456", T0 + DAY),
            refunded("o2", "2", "r1"),
            refunded("o3", "5", "r2"),  # refund before its order
            cancelled("o4"),
        ]
    )
    c.published = Published(5, 2, 3, "potential_loyalist")
    c.partition = 7
    blob = c.encode()
    d = Customer.decode("default", "c1", blob)
    assert d.orders == c.orders
    assert d.published == c.published
    assert d.partition == 7
    assert d.aggregates() == c.aggregates()
    assert d.encode() == blob
    # The decoded state still knows what it has seen.
    assert d.apply(refunded("o2", "2", "r1")) == "duplicate"
    assert d.apply(cancelled("o4")) == "duplicate"
    assert d.apply(placed("o1", "100", T0)) == "duplicate"
    d.apply(placed("o3", "20"))
    assert monetary(d) == Decimal("100") + Decimal("10.3456") + Decimal("15")


def test_scored_customers_store_order_ages_and_old_blobs_still_decode() -> None:
    c = customer_after([placed("o1", "100", T0), placed("o2", "5", T0 + DAY), cancelled("o3")])
    c.scored_at, c.version, c.alerted = T0 + 3 * DAY, "abcd1234", T0
    doc = orjson.loads(c.encode())
    # Ages at scored_at (shorter than instants); an order never placed stays null. The
    # amounts are whole currency units ("u"): "q", which older releases do not read.
    assert "o" not in doc and "r" not in doc and doc["t"] == T0 + 3 * DAY
    assert doc["q"]["o1"][0] == 3 * DAY and doc["q"]["o2"][0] == 2 * DAY
    assert doc["q"]["o3"][0] is None
    d = Customer.decode("default", "c1", c.encode())
    assert (d.orders, d.scored_at, d.version, d.alerted) == (c.orders, c.scored_at, "abcd1234", T0)
    assert d.aggregates() == c.aggregates()
    # Blobs written with absolute instants ("o", before ages existed) or ages at "t" in
    # money units ("r", before units) read the same, and are rewritten on the next commit.
    for key, base in (("o", 0), ("r", c.scored_at)):
        legacy = {k: v for k, v in doc.items() if k not in ("q", "u")}
        legacy[key] = {oid: _legacy_entry(o, base) for oid, o in c.orders.items()}
        old = Customer.decode("default", "c1", orjson.dumps(legacy))
        assert old.orders == c.orders and old.aggregates() == c.aggregates()
        assert old.encode() == c.encode()


def _legacy_entry(order: Order, base: int) -> list[object]:
    """An order as releases before units wrote it: ages at `base` (0: instants)."""
    at = order.placed_at if order.placed_at is None or not base else base - order.placed_at
    entry: list[object] = [at, order.amount]
    if order.cancelled:
        return [*entry, order.refunds or {}, 1]
    return [*entry, order.refunds] if order.refunds else entry


@pytest.mark.parametrize(
    ("amounts", "refund", "unit"),
    [
        (["100", "25", "3"], "2", 10_000),  # whole currency units
        (["100", "12.34", "0.05"], "1.10", 100),  # whole cents
        (["100", "12.34"], "0.0001", 1),  # a refund in money units decides for all
        (["12.3456", "1"], "1", 1),
    ],
)
def test_amounts_are_written_in_the_coarsest_exact_unit(
    amounts: list[str], refund: str, unit: int
) -> None:
    events = [placed(f"o{i}", a, T0 + i * DAY) for i, a in enumerate(amounts)]
    c = customer_after([*events, refunded("o0", refund, "r1"), cancelled("o1")])
    c.scored_at = T0 + 9 * DAY
    doc = orjson.loads(c.encode())
    assert doc.get("u", 1) == unit
    # Scaled amounts go under "q": a release before units fails on it, never misreads it.
    orders = doc["q"] if unit != 1 else doc["r"]
    assert ("r" in doc) == (unit == 1) and "o" not in doc
    assert orders["o0"][1] * unit == to_units(Decimal(amounts[0]))
    d = Customer.decode("default", "c1", c.encode())
    assert d.orders == c.orders and d.aggregates() == c.aggregates()
    assert d.encode() == c.encode()
    # A blob written before units existed (money units, no "u") reads the same, and is
    # rewritten in the new form on its next commit.
    old = {k: v for k, v in doc.items() if k not in ("q", "u")}
    old["r"] = {oid: _legacy_entry(o, T0 + 9 * DAY) for oid, o in c.orders.items()}
    legacy = Customer.decode("default", "c1", orjson.dumps(old))
    assert legacy.orders == c.orders and legacy.aggregates() == c.aggregates()
    assert legacy.encode() == c.encode()


def test_encoding_is_compact_json() -> None:
    c = customer_after([placed("o1", "1")])
    doc = orjson.loads(c.encode())
    assert isinstance(doc, dict)
    assert "s" not in doc
    assert "p" not in doc


@pytest.mark.parametrize("order_id", ["{}:*", "line\nbreak", "🍕", '"', "0"])
def test_odd_order_ids_round_trip(order_id: str) -> None:
    c = customer_after([placed(order_id, "5"), refunded(order_id, "1", "r")])
    d = Customer.decode("default", "c1", c.encode())
    assert d.orders == c.orders
    assert monetary(d) == Decimal(4)


def test_cancelled_order_id_zero_string_round_trips() -> None:
    c = customer_after([cancelled("0"), placed("1", "3")])
    d = Customer.decode("default", "c1", c.encode())
    assert d.orders == c.orders
    assert d.orders["0"].cancelled and not d.orders["1"].cancelled


# -- order independence (property) ----------------------------------------------------------

KINDS: tuple[Kind, ...] = ("order_placed", "order_refunded", "order_cancelled")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[ValidEvent], list[ValidEvent], list[ValidEvent]]:
    """Distinct events, then two arrival orders of them with redeliveries mixed in."""
    specs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(KINDS),
                st.sampled_from(["o1", "o2", "o3"]),
                st.integers(min_value=0, max_value=3) | st.integers(0, 10_000_000),
                st.integers(min_value=0, max_value=2),
            ),
            min_size=1,
            max_size=14,
        )
    )
    events = [
        ValidEvent(
            event_id=f"e{i}",
            type=kind,
            order_id=oid,
            customer_id="c1",
            tenant="default",
            amount=None if kind == "order_cancelled" else units,
            occurred_at=T0 + day * DAY,
        )
        for i, (kind, oid, units, day) in enumerate(specs)
    ]
    redeliveries = draw(st.lists(st.sampled_from(events), max_size=8))
    deliveries = events + redeliveries
    return events, draw(st.permutations(deliveries)), draw(st.permutations(deliveries))


@settings(max_examples=250, database=None, deadline=None)
@given(histories())
def test_any_arrival_order_with_duplicates_gives_the_same_state(
    history: tuple[list[ValidEvent], list[ValidEvent], list[ValidEvent]],
) -> None:
    events, first, second = history
    a, b = customer_after(first), customer_after(second)
    reference = customer_after(events)
    assert a.encode() == b.encode() == reference.encode()
    assert a.aggregates() == b.aggregates() == reference.aggregates()
    # Replaying everything again (a restart that re-reads the topic) changes nothing.
    for e in second:
        a.apply(e)
    assert a.encode() == reference.encode()
    # And the state survives the codec.
    assert Customer.decode("default", "c1", a.encode()).aggregates() == a.aggregates()


def _event(n: int, kind: Kind, order_id: str, amount: int | None, at: int = T0) -> ValidEvent:
    return ValidEvent(f"e{n}", kind, order_id, "c1", "default", amount, at)


@st.composite
def one_placed_per_order(draw: st.DrawFn) -> list[ValidEvent]:
    """Histories where each order has at most one order_placed (no conflict to resolve)."""
    events: list[ValidEvent] = []
    for oid in ("o1", "o2", "o3", "o4"):
        if draw(st.booleans()):
            amount, day = draw(st.integers(0, 10_000_000)), draw(st.integers(0, 30))
            events.append(_event(len(events), "order_placed", oid, amount, T0 + day * DAY))
        for _ in range(draw(st.integers(0, 3))):
            amount = draw(st.integers(0, 5_000_000))
            events.append(_event(len(events), "order_refunded", oid, amount))
        if draw(st.integers(0, 3)) == 0:
            events.append(_event(len(events), "order_cancelled", oid, None))
    redeliveries = draw(st.lists(st.sampled_from(events), max_size=5)) if events else []
    return draw(st.permutations(events + redeliveries))


@settings(max_examples=200, database=None, deadline=None)
@given(one_placed_per_order())
def test_aggregates_follow_the_contract_rules(deliveries: list[ValidEvent]) -> None:
    # Expected values straight from the documented rules (docs/records-and-triggers.md),
    # from the set of distinct events.
    distinct = {e.event_id: e for e in deliveries}.values()
    cancelled_ids = {e.order_id for e in distinct if e.type == "order_cancelled"}
    placed_by_order = {e.order_id: e for e in distinct if e.type == "order_placed"}
    counted = {o: e for o, e in placed_by_order.items() if o not in cancelled_ids}
    expected_monetary = 0
    for oid, p in counted.items():
        refunds = sum(
            e.amount or 0 for e in distinct if e.type == "order_refunded" and e.order_id == oid
        )
        assert p.amount is not None
        expected_monetary += max(0, p.amount - refunds)

    agg = customer_after(deliveries).aggregates()
    if not counted:
        assert agg is None
        return
    assert agg is not None
    times = sorted(p.occurred_at for p in counted.values())
    assert agg.orders_lifetime == len(counted)
    assert agg.monetary == expected_monetary
    assert agg.first_order_at == times[0]
    assert agg.last_order_at == times[-1]
    assert tuple(agg.order_times) == tuple(times)


# -- long histories: what is kept up to date instead of rebuilt ------------------------------


@st.composite
def histories(draw: st.DrawFn, at_least: int = LONG_HISTORY) -> list[tuple[ValidEvent, int]]:
    """More orders than `at_least` (a long history by default), then placed (new or
    conflicting), refunded and cancelled events on them, each with how many days the
    scoring instant moves on."""
    count = at_least + draw(st.integers(1, 6))
    amount = st.integers(0, 50) | st.integers(0, 500).map(lambda u: u * 100)
    amount = amount | st.integers(0, 50).map(lambda u: u * 10_000)
    events = [
        ValidEvent(f"p{i}", "order_placed", f"o{i}", "c1", "default", 10_000, T0 + i * DAY)
        for i in range(count)
    ]
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(KINDS),
                st.integers(0, count + 3),  # an existing order, or one of a few new ones
                amount,
                st.integers(0, 400),  # day of the event
                st.sampled_from([0, 0, 1, 45]),  # days the scoring instant moves on
                st.sampled_from([0, 0, 1, 3_600_000, DAY - 1]),  # ms into its day
            ),
            max_size=30,
        )
    )
    out = [(e, 0) for e in events]
    for n, (kind, order, units, day, moves, ms) in enumerate(steps):
        event = ValidEvent(
            f"s{n}",
            kind,
            f"o{order}",
            "c1",
            "default",
            None if kind == "order_cancelled" else units,
            T0 + day * DAY + ms,
        )
        out.append((event, moves))
    return out


@settings(max_examples=150, database=None, deadline=None)
@given(histories())
def test_what_a_long_history_keeps_up_to_date_equals_a_rebuild(
    history: list[tuple[ValidEvent, int]],
) -> None:
    """The sorted gaps (the rhythm), the count of days with an order (the churn model's x)
    and the stored form of the orders are kept up to date event by event; at every step
    they equal what a rebuild from the orders gives, and the blob decodes to the same
    customer."""
    c = Customer("default", "c1", scored_at=T0)
    kept_days = 0
    for event, moves in history:
        c.apply(event)
        assert c.scored_at is not None
        c.scored_at += moves * DAY
        agg = c.aggregates()
        if agg is not None and agg.gaps is not None:
            assert list(agg.gaps) == sorted(b - a for a, b in pairwise(agg.order_times))
            assert agg.days == len({at // DAY for at in agg.order_times})
            kept_days += 1
        blob = c.encode()
        kept = (dict(c._stored or {}), c._base, c._unit)
        rebuilt = Customer("default", "c1", dict(c.orders))
        assert rebuilt._rebuild_stored(kept[1]) and (rebuilt._stored, rebuilt._unit) == (
            kept[0],
            kept[2],
        )
        d = Customer.decode("default", "c1", blob)
        assert d.orders == c.orders and d.aggregates() == agg
        assert d.encode() == blob
    assert kept_days > 0  # the count was kept and checked


@settings(max_examples=150, database=None, deadline=None)
@given(histories(at_least=0) | histories(at_least=LONG_HISTORY - 4), st.integers(0, 40))
def test_a_day_count_once_counted_is_kept_up_to_date(
    history: list[tuple[ValidEvent, int]], first_asked: int
) -> None:
    """A short history counts its days with an order when first asked (the churn model's
    x, at its first event scored), then keeps the count event by event, through places,
    refunds to nothing, cancels and conflicting events, across LONG_HISTORY too: at every
    step it equals a count of the orders' days."""
    c = Customer("default", "c1")
    asked = 0
    for n, (event, _) in enumerate(history):
        c.apply(event)
        agg = c.aggregates()
        if n < first_asked or agg is None:
            continue
        assert agg.day_count() == len({at // DAY for at in agg.order_times})
        asked += 1
    if asked > 1:
        assert c._days is not None  # kept, not counted anew
    assert Aggregates(T0, T0, 2, 0, [T0, T0 + DAY]).day_count() == 2  # without a customer
    gone = Customer("default", "c2")
    gone.apply(ValidEvent("e", "order_placed", "o", "c2", "default", 100, T0))
    agg = gone.aggregates()
    del gone  # the customer dropped: counted from the times
    assert agg is not None and agg.day_count() == 1


@settings(max_examples=150, database=None, deadline=None)
@given(histories(at_least=0) | histories(at_least=LONG_HISTORY - 4))
def test_a_history_read_back_at_every_commit_is_stored_as_before(
    history: list[tuple[ValidEvent, int]],
) -> None:
    """A customer read back at every commit keeps its orders' stored form as read, and a
    commit moves a short history's ages to its own instant. At every step the blob is the
    one a customer that rebuilt a short history's entries writes (as release 0.2.0 does),
    a history growing past LONG_HISTORY in the commit included."""
    blob, at = None, T0
    for event, moves in history:
        c = Customer.decode("default", "c1", blob)
        rebuilt = Customer.decode("default", "c1", blob)
        if len(rebuilt.orders) < LONG_HISTORY:
            rebuilt._stored = None  # built again from the orders at the next encode
        c.apply(event)
        rebuilt.apply(event)
        at += moves * DAY
        c.scored_at = rebuilt.scored_at = at
        blob = c.encode()
        assert blob == rebuilt.encode()
        assert Customer.decode("default", "c1", blob).orders == c.orders


def test_a_short_history_grown_long_in_a_commit_is_stored_at_the_commits_instant() -> None:
    """Read back with LONG_HISTORY - 1 orders, given one more and scored later: its ages are
    at the new instant, as a customer that built its entries anew writes them (a long
    history read back would keep them at the old base, under "b")."""
    c = Customer("default", "c1", scored_at=T0)
    for i in range(LONG_HISTORY - 1):
        c.apply(ValidEvent(f"p{i}", "order_placed", f"o{i}", "c1", "default", 10_000, T0 - i * DAY))
    blob = c.encode()
    read, rebuilt = (Customer.decode("default", "c1", blob) for _ in range(2))
    rebuilt._stored = None
    for customer in (read, rebuilt):
        customer.apply(ValidEvent("pn", "order_placed", "on", "c1", "default", 10_000, T0 + DAY))
        customer.scored_at = T0 + 2 * DAY
    assert len(read.orders) == LONG_HISTORY
    assert read.encode() == rebuilt.encode()
    assert b'"b"' not in read.encode()
    for customer in (read, rebuilt):  # now long, kept decoded for its next commit
        customer.scored_at = T0 + 3 * DAY
    assert read.encode() == rebuilt.encode()
    assert b'"b"' in read.encode()


def test_an_amount_replaced_by_a_conflicting_placed_event_can_coarsen_the_unit() -> None:
    """Amounts are stored in the coarsest exact unit of the orders as they are now, not of
    every amount ever seen: the bytes stay independent of arrival order."""
    c = Customer("default", "c1", scored_at=T0 + 100 * DAY)
    for i in range(LONG_HISTORY + 1):
        c.apply(placed(f"o{i}", "7", T0 + i * DAY))
    c.encode()
    c.apply(placed("x", "0.0005", T0 + 50 * DAY, event_id="late"))  # a 1/10,000 amount
    assert orjson.loads(c.encode()).get("u") is None
    c.apply(placed("x", "0.01", T0 + 40 * DAY, event_id="early"))  # earlier: it wins
    assert orjson.loads(c.encode())["u"] == 100
    fresh = Customer("default", "c1", dict(c.orders), scored_at=c.scored_at)
    assert fresh.encode() == c.encode()


# -- the per-customer bound: the oldest orders fold into the aggregates ----------------------


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """The bound at 50 kept orders, folded 10 at a time (the real one is 10,000 / 1,000)."""
    import worker.rules.customer as module

    monkeypatch.setattr(module, "MAX_ORDERS", 50)
    monkeypatch.setattr(module, "FOLD_CHUNK", 10)
    return 50, 10


def _history(n: int, start: int = 0) -> list[ValidEvent]:
    """n orders a day apart, amounts 1.00 .. (cycling), a refund on every 7th."""
    events: list[ValidEvent] = []
    for i in range(start, start + n):
        events.append(placed(f"o{i}", f"{1 + i % 9}.00", T0 + i * DAY))
        if i % 7 == 3:
            events.append(refunded(f"o{i}", "0.50", f"r{i}", T0 + i * DAY + 1))
    return events


def _fold_if_over(c: Customer) -> int:
    return c.fold() if c.over_bound else 0


def test_a_customer_beyond_the_bound_keeps_exact_aggregates(small_bound: tuple[int, int]) -> None:
    """Folded in chunks as orders come: count, net spend, first and last order stay what
    the whole history says; the kept orders are the newest MAX_ORDERS."""
    bound, chunk = small_bound
    whole = customer_after(_history(400))
    c = Customer("default", "c1")
    folded = 0
    for event in _history(400):
        c.apply(event)
        folded += _fold_if_over(c)
    assert c.folded is not None and folded == c.folded.orders
    assert bound <= len(c.orders) <= bound + chunk
    a, b = c.aggregates(), whole.aggregates()
    assert a is not None and b is not None
    assert (a.first_order_at, a.last_order_at, a.orders_lifetime, a.monetary) == (
        b.first_order_at,
        b.last_order_at,
        b.orders_lifetime,
        b.monetary,
    )
    assert list(a.order_times) == list(b.order_times)[-len(a.order_times) :]  # the newest
    back = Customer.decode("default", "c1", c.encode())  # "z" travels with the blob
    assert back.folded == c.folded
    assert back.aggregates() == a


def test_what_a_folded_customer_can_no_longer_tell_apart(small_bound: tuple[int, int]) -> None:
    """A placed event at or before the fold's horizon for an order not kept counts as a
    duplicate (a redelivery cannot be told from a very late new order); a refund or a
    cancel of a folded order is not applied; a new order after the horizon is."""
    c = Customer("default", "c1")
    for event in _history(100):
        c.apply(event)
        _fold_if_over(c)
    assert c.folded is not None
    agg = c.aggregates()
    assert agg is not None
    before = (agg.orders_lifetime, agg.monetary)
    assert c.apply(placed("o0", "1.00", T0)) == "duplicate"  # redelivered, folded
    assert c.apply(placed("late", "5.00", T0 + DAY)) == "duplicate"  # very late, new
    c.apply(cancelled("o1", "x-o1"))  # its order is folded: kept aside, never applied
    c.apply(refunded("o2", "1.00", "r-o2"))
    agg = c.aggregates()
    assert agg is not None and (agg.orders_lifetime, agg.monetary) == before
    assert c.apply(placed("new", "5.00", T0 + 200 * DAY)) == "applied"
    agg = c.aggregates()
    assert agg is not None and agg.orders_lifetime == before[0] + 1


def test_the_state_stops_growing_at_the_bound(small_bound: tuple[int, int]) -> None:
    bound, chunk = small_bound
    sizes = []
    c = Customer("default", "c1")
    for n in range(0, 2000, 100):
        for event in _history(100, start=n):
            c.apply(event)
            _fold_if_over(c)
        sizes.append(len(c.encode()))
    assert max(sizes[5:]) < 1.5 * min(sizes[5:])  # bounded, whatever the history
    assert len(c.orders) <= bound + chunk
