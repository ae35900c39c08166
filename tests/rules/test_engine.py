"""The pure engine (docs/records-and-triggers.md): which rfm.changed records a batch of
events yields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import pytest

from tests.factories import PIZZERIA
from worker.rules.customer import Customer, Published
from worker.rules.engine import Change, Result, apply_events, rescore
from worker.rules.events import ValidEvent
from worker.rules.messages import RfmChanged
from worker.rules.money import to_units
from worker.rules.profile import Profile

DAY = 86_400_000
AS_OF = int(datetime(2026, 11, 20, 18, 30, tzinfo=UTC).timestamp()) * 1000
NOW = AS_OF + 1_234  # the wall clock, a little after as_of
AS_OF_ISO = "2026-11-20T18:30:00Z"
NOW_ISO = "2026-11-20T18:30:01.234Z"

Kind = Literal["order_placed", "order_refunded", "order_cancelled"]


def ev(kind: Kind, order_id: str, event_id: str, amount: str | None, at: int) -> ValidEvent:
    return ValidEvent(
        event_id=event_id,
        type=kind,
        order_id=order_id,
        customer_id="67543",
        tenant="default",
        amount=None if amount is None else to_units(amount),
        occurred_at=at,
    )


def placed(order_id: str, amount: str, days_ago: int = 0, event_id: str = "") -> ValidEvent:
    return ev("order_placed", order_id, event_id or f"p-{order_id}", amount, AS_OF - days_ago * DAY)


def refunded(order_id: str, amount: str, event_id: str) -> ValidEvent:
    return ev("order_refunded", order_id, event_id, amount, AS_OF)


def cancelled(order_id: str, event_id: str = "") -> ValidEvent:
    return ev("order_cancelled", order_id, event_id or f"x-{order_id}", None, AS_OF)


def run(
    customer: Customer,
    *events: ValidEvent,
    partition: int | None = None,
    profile: Profile = PIZZERIA,
) -> Result:
    return apply_events(
        customer,
        list(events),
        profile=profile,
        as_of_ms=AS_OF,
        now_ms=NOW,
        partition=partition,
    )


def view(rfm: str, segment: str) -> dict[str, object]:
    r, f, m = (int(c) for c in rfm)
    return {"r": r, "f": f, "m": m, "rfm": rfm, "segment": segment}


def validated(change: Change) -> RfmChanged:
    """The payload matches the documented model, as a dict and through JSON."""
    model = RfmChanged.model_validate(change.payload)
    assert RfmChanged.model_validate_json(orjson.dumps(change.payload)) == model
    assert model.model_dump(mode="json") == change.payload
    return model


def new_customer() -> Customer:
    return Customer("default", "67543")


# -- the first order ----------------------------------------------------------------------


def test_first_order_has_no_previous() -> None:
    c = new_customer()
    result = run(c, placed("o1", "120"))
    assert (result.applied, result.duplicates) == (1, 0)
    assert result.dirty
    assert len(result.changes) == 1
    change = result.changes[0]
    model = validated(change)
    p = change.payload
    assert p["type"] == "rfm.changed"
    # a digest of the change: the same change computed again has the same id
    again = run(new_customer(), placed("o1", "120")).changes[0]
    assert p["change_id"] == again.payload["change_id"]
    assert p["tenant"] == "default"
    assert p["customer_id"] == "67543"
    assert p["cause"] == "order"
    assert p["cause_event_id"] == "p-o1"
    assert p["as_of"] == AS_OF_ISO
    assert p["emitted_at"] == NOW_ISO
    assert p["previous"] is None
    # 1 order today worth 120: R5 F1 M2, "512" -> new_customers (docs/profiles.md).
    assert p["current"] == view("512", "new_customers")
    assert p["segment_changed"] is True
    assert p["customer"] == {
        "first_order_at": AS_OF_ISO,
        "last_order_at": AS_OF_ISO,
        "orders": 1,
        "orders_lifetime": 1,
        "monetary": "120.00",
    }
    assert model.previous is None
    assert change.cause == "order"
    assert change.from_segment is None
    assert change.to_segment == "new_customers"
    assert c.published == Published(5, 1, 2, "new_customers")


def test_change_carries_the_customer_and_tenant() -> None:
    c = Customer("sofa-shop", "{}:*\n🍕")
    change = run(c, placed("o1", "10")).changes[0]
    validated(change)
    assert change.payload["tenant"] == "sofa-shop"
    assert change.payload["customer_id"] == "{}:*\n🍕"
    assert (change.tenant, change.customer_id) == ("sofa-shop", "{}:*\n🍕")


# -- when a change is (not) emitted -------------------------------------------------------


def test_duplicate_event_changes_nothing() -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    before = c.encode()
    result = run(c, placed("o1", "120"))
    assert (result.applied, result.duplicates) == (0, 1)
    assert result.changes == []
    assert not result.dirty
    assert c.encode() == before


def test_event_that_keeps_the_score_emits_nothing() -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    result = run(c, refunded("o1", "19.9999", "r1"))  # 100.0001 left: still M2
    assert (result.applied, result.duplicates) == (1, 0)
    assert result.dirty
    assert result.changes == []
    assert c.published == Published(5, 1, 2, "new_customers")


def test_refund_below_a_threshold_emits_a_refund_change() -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    result = run(c, refunded("o1", "20.0001", "r1"))  # 99.9999 left: M1
    [change] = result.changes
    validated(change)
    p = change.payload
    assert p["cause"] == "refund"
    assert p["cause_event_id"] == "r1"
    assert p["previous"] == view("512", "new_customers")
    assert p["current"] == view("511", "new_customers")
    assert p["segment_changed"] is False  # R, F, M moved, the segment did not
    assert p["customer"]["monetary"] == "99.9999"  # type: ignore[index]


def test_second_order_changes_frequency() -> None:
    c = new_customer()
    run(c, placed("o1", "120", days_ago=20))
    [change] = run(c, placed("o2", "30")).changes
    validated(change)
    p = change.payload
    assert p["cause"] == "order"
    assert p["previous"] is not None
    assert p["previous"]["rfm"] == "412"  # type: ignore[index]
    # 2 orders, last today, 150: R5 F2 M2.
    assert p["current"]["rfm"] == "522"  # type: ignore[index]
    assert p["customer"]["orders"] == 2  # type: ignore[index]
    assert p["customer"]["first_order_at"] == "2026-10-31T18:30:00Z"  # type: ignore[index]
    assert p["customer"]["monetary"] == "150.00"  # type: ignore[index]


def test_old_order_arriving_late_does_not_move_recency() -> None:
    c = new_customer()
    run(c, placed("o1", "50"))
    [change] = run(c, placed("o0", "60", days_ago=100)).changes  # 110: M2, F2
    assert change.payload["previous"]["rfm"] == "511"  # type: ignore[index]
    assert change.payload["current"]["rfm"] == "522"  # type: ignore[index]


def test_cancel_of_the_only_order_has_no_current() -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    result = run(c, cancelled("o1"))
    [change] = result.changes
    model = validated(change)
    p = change.payload
    assert p["cause"] == "cancel"
    assert p["cause_event_id"] == "x-o1"
    assert p["previous"] == view("512", "new_customers")
    assert p["current"] is None
    assert p["segment_changed"] is True
    assert p["customer"] == {
        "first_order_at": None,
        "last_order_at": None,
        "orders": 0,
        "orders_lifetime": 0,
        "monetary": "0.00",
    }
    assert model.current is None
    assert change.from_segment == "new_customers"
    assert change.to_segment is None
    assert c.published is None


def test_order_after_everything_was_cancelled_is_new_again() -> None:
    c = new_customer()
    run(c, placed("o1", "120"), cancelled("o1"))
    [change] = run(c, placed("o2", "300")).changes
    assert change.payload["previous"] is None
    assert change.payload["current"] == view("513", "new_customers")


def test_cancel_of_an_unknown_order_of_a_new_customer_emits_nothing() -> None:
    c = new_customer()
    result = run(c, cancelled("o1"))
    assert (result.applied, result.duplicates) == (1, 0)
    assert result.dirty  # the tombstone must be stored
    assert result.changes == []
    # ... and the order that arrives later is not counted.
    later = run(c, placed("o1", "120"))
    assert later.changes == []
    assert c.aggregates() is None


def test_refund_of_a_cancelled_order_emits_nothing() -> None:
    c = new_customer()
    run(c, placed("o1", "120"), placed("o2", "500", days_ago=3), cancelled("o2"))
    assert run(c, refunded("o2", "100", "r1")).changes == []
    assert c.published == Published(5, 1, 2, "new_customers")


def test_cause_mapping() -> None:
    c = new_customer()
    result = run(
        c,
        placed("o1", "300"),
        placed("o2", "300"),
        refunded("o2", "300", "r1"),
        cancelled("o1"),
    )
    causes = [(ch.payload["cause"], ch.payload["cause_event_id"]) for ch in result.changes]
    assert causes == [("order", "p-o1"), ("order", "p-o2"), ("refund", "r1"), ("cancel", "x-o1")]
    for ch in result.changes:
        assert ch.cause == ch.payload["cause"]


def test_batch_yields_changes_in_event_order_chained() -> None:
    c = new_customer()
    events = [placed(f"o{i}", "100", days_ago=i) for i in range(1, 11)]
    result = run(c, *events)
    assert (result.applied, result.duplicates) == (10, 0)
    rfms = [ch.payload["current"]["rfm"] for ch in result.changes]  # type: ignore[index]
    # R stays 5 (last order 1 day ago). After n orders of 100: F moves at n = 2, 3, 5, 10
    # and M (100 n) at n = 1, 3, 5, 10; n = 4 and 6..9 move nothing.
    assert rfms == ["512", "522", "533", "544", "555"]
    # Each change's previous is the change before's current.
    previous: object = None
    for ch in result.changes:
        validated(ch)
        assert ch.payload["previous"] == previous
        previous = ch.payload["current"]
    assert len({ch.payload["change_id"] for ch in result.changes}) == 5
    assert result.changes[-1].payload["current"] == view("555", "champions")


def test_mixed_batch_with_duplicates() -> None:
    c = new_customer()
    e1, e2 = placed("o1", "120"), placed("o2", "200")
    result = run(c, e1, e1, e2, placed("o2", "200", event_id="other-id"))
    assert (result.applied, result.duplicates) == (2, 2)
    assert len(result.changes) == 2


def test_every_change_is_scored_at_as_of_not_at_event_time() -> None:
    c = new_customer()
    [change] = run(c, placed("o1", "1000", days_ago=46)).changes
    assert change.payload["current"] == view("215", "at_risk")
    assert change.payload["as_of"] == AS_OF_ISO


def test_new_change_ids_are_unique_by_default() -> None:
    c = new_customer()
    result = apply_events(
        c,
        [placed("o1", "120"), placed("o2", "120")],
        profile=PIZZERIA,
        as_of_ms=AS_OF,
        now_ms=NOW,
    )
    first, second = (ch.payload["change_id"] for ch in result.changes)
    assert isinstance(first, str)
    assert first
    assert first != second


# -- partition and dirtiness ----------------------------------------------------------------


def test_partition_is_recorded_when_state_changes() -> None:
    c = new_customer()
    run(c, placed("o1", "120"), partition=3)
    assert c.partition == 3
    run(c, placed("o1", "120"), partition=5)  # only a duplicate: nothing rewritten
    assert c.partition == 3
    run(c, placed("o2", "1"), partition=5)
    assert c.partition == 5


# -- rescore (decay, profile changes) ---------------------------------------------------------


def rescored(customer: Customer, profile: Profile, **kw: Any) -> Change | None:
    """`rescore`'s change (its score aside)."""
    return rescore(customer, profile, **kw)[0]


def test_decay_rescore_at_a_later_as_of() -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    same_day = rescored(
        c, PIZZERIA, as_of_ms=AS_OF + 15 * DAY, now_ms=NOW, cause="decay", cause_event_id=None
    )
    assert same_day is None  # 15 days: still R5
    later = AS_OF + 16 * DAY
    change = rescored(c, PIZZERIA, as_of_ms=later, now_ms=later, cause="decay", cause_event_id=None)
    assert change is not None
    validated(change)
    assert change.payload["cause"] == "decay"
    assert change.payload["cause_event_id"] is None
    assert change.payload["previous"] == view("512", "new_customers")
    assert change.payload["current"] == view("412", "promising")
    assert change.payload["as_of"] == "2026-12-06T18:30:00Z"


def test_rescore_emits_when_only_the_segment_changed() -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    c.published = Published(5, 1, 2, "an_old_name")  # as under a previous profile
    change = rescored(c, PIZZERIA, as_of_ms=AS_OF, now_ms=NOW, cause="rescore", cause_event_id=None)
    assert change is not None
    validated(change)
    assert change.payload["previous"] == view("512", "an_old_name")
    assert change.payload["current"] == view("512", "new_customers")
    assert change.payload["segment_changed"] is True


def test_rescore_of_an_unchanged_customer_emits_nothing() -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    assert (
        rescored(c, PIZZERIA, as_of_ms=AS_OF, now_ms=NOW, cause="rescore", cause_event_id=None)
        is None
    )
    empty = new_customer()
    assert (
        rescored(empty, PIZZERIA, as_of_ms=AS_OF, now_ms=NOW, cause="decay", cause_event_id=None)
        is None
    )


@pytest.mark.parametrize("cause", ["order", "cancel", "refund", "decay", "rescore"])
def test_payload_validates_for_every_cause(cause: str) -> None:
    c = new_customer()
    run(c, placed("o1", "120"))
    c.published = None
    change = rescored(
        c,
        PIZZERIA,
        as_of_ms=AS_OF,
        now_ms=NOW,
        cause=cause,  # type: ignore[arg-type]
        cause_event_id=None,
    )
    assert change is not None
    assert validated(change).cause == cause


def test_change_ids_are_version_8_uuids_derived_from_the_change() -> None:
    import uuid

    from worker.rules.engine import change_id

    ids = [change_id("default", f"c{i}", "order", f"e{i}", "v", "-", "111") for i in range(20_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (8, uuid.RFC_4122, text)
    assert change_id("default", "c0", "order", "e0", "v", "-", "111") == ids[0]
    # every part counts, and parts cannot run into each other
    assert change_id("default", "c0", "order", "e0", "v", "-", "112") != ids[0]
    assert change_id("defaultc0", "", "order", "e0", "v", "-", "111") != ids[0]
    # The digest's formula never changes between releases: a replay by a newer worker
    # must give the ids an older one published (the digest of "\x1f"-joined parts,
    # version and variant bits set as RFC 9562 says).
    assert ids[0] == "71790ace-c7c4-8bdd-b19d-4f4c458ba7bf"
    assert (
        change_id("shop", "c9", "decay", "1764:3:120000", "abc", "511:champions", "411:loyal")
        == "e6cbcfa3-a58f-8e81-9f07-76944830a303"
    )


def test_a_recomputed_change_carries_the_same_id_and_a_repeated_move_does_not() -> None:
    """Replaying the same events on the same state gives the same ids (a consumer that
    deduplicates on change_id drops the copies); the same move caused by another event
    is another change."""
    first = run(new_customer(), placed("o1", "120"), placed("o2", "120")).changes
    again = run(new_customer(), placed("o1", "120"), placed("o2", "120")).changes
    assert [c.payload["change_id"] for c in first] == [c.payload["change_id"] for c in again]
    other = run(new_customer(), placed("o9", "120")).changes
    assert other[0].payload["current"] == first[0].payload["current"]
    assert other[0].payload["change_id"] != first[0].payload["change_id"]
