"""The erasure rules, pure (worker/rules/erasure.py, docs/personal-data.md): validation of
`customer_erased`, the tombstone's digest, what one customer's events do around it."""

from __future__ import annotations

import orjson

from tests.factories import AS_OF, AS_OF_MS, DAY, valid_event
from worker.commands.forget import erasure_event
from worker.rules.customer import Customer
from worker.rules.erasure import apply_with_erasures, tombstone_field
from worker.rules.events import Rejection, ValidEvent, validate
from worker.rules.profiles import Profiles

PROFILES = Profiles.load(None)


def erasure(days_ago: float, **extra: object) -> bytes:
    doc = {
        "event_id": "e1",
        "type": "customer_erased",
        "customer_id": "c1",
        "occurred_at": (AS_OF - days_ago * DAY).isoformat(),
        **extra,
    }
    return orjson.dumps(doc)


def placed(n: int, days_ago: float) -> ValidEvent:
    return valid_event(
        PROFILES,
        event_id=f"p{n}",
        kind="placed",
        order_id=f"o{n}",
        customer="c1",
        occurred_at=(AS_OF - days_ago * DAY).isoformat(),
        now_ms=AS_OF_MS,
        amount="30",
    )


def test_an_erasure_is_validated_like_an_event() -> None:
    ok = validate(erasure(1, order_id="ignored", amount="x"), PROFILES, AS_OF_MS)
    assert isinstance(ok, ValidEvent)
    assert (ok.type, ok.order_id, ok.amount, ok.tenant) == ("customer_erased", "", None, "default")
    missing = validate(erasure(1, customer_id=None), PROFILES, AS_OF_MS)
    assert isinstance(missing, Rejection) and missing.error_class == "invalid_field"
    future = validate(erasure(-1), PROFILES, AS_OF_MS)
    assert isinstance(future, Rejection) and future.error_class == "future_timestamp"
    bad_tenant = validate(erasure(1, tenant="a:b"), PROFILES, AS_OF_MS)
    assert isinstance(bad_tenant, Rejection) and bad_tenant.error_class == "invalid_field"


def test_the_digest_is_keyed_and_names_no_one() -> None:
    one = tombstone_field(b"k" * 16, "default", "c1")
    assert len(one) == 16 and b"c1" not in one
    assert one == tombstone_field(b"k" * 16, "default", "c1")
    assert one != tombstone_field(b"j" * 16, "default", "c1")
    assert one != tombstone_field(b"k" * 16, "other", "c1")


def test_events_around_an_erasure() -> None:
    customer = Customer("default", "c1")
    gone = validate(erasure(5), PROFILES, AS_OF_MS)
    assert isinstance(gone, ValidEvent)
    events = [placed(1, 10), gone, placed(2, 5), placed(3, 1)]
    res, at = apply_with_erasures(
        customer,
        events,
        None,
        profile=PROFILES.default,
        as_of_ms=AS_OF_MS,
        now_ms=AS_OF_MS,
        partition=0,
    )
    assert at == gone.occurred_at
    assert (res.applied, res.erased) == (2, 2)  # the erasure and p3; p1 and p2 ignored
    assert res.changes[0].kind == "rfm.erased"
    agg = res.customer.aggregates()
    assert agg is not None and agg.orders_lifetime == 1 and not res.removed
    # the same again, tombstone stored: nothing new, no record
    again, at = apply_with_erasures(
        Customer("default", "c1"),
        [placed(1, 10), gone],
        gone.occurred_at,
        profile=PROFILES.default,
        as_of_ms=AS_OF_MS,
        now_ms=AS_OF_MS,
        partition=0,
    )
    assert at is None and again.changes == [] and again.erased == 2 and not again.dirty


def test_forget_derives_its_event_id() -> None:
    one = erasure_event("shop-1", "c1", "2026-01-01T00:00:00Z", PROFILES, now_ms=AS_OF_MS)
    assert one == erasure_event("shop-1", "c1", "2026-01-01T00:00:00Z", PROFILES, AS_OF_MS)
    assert (
        one["event_id"] != erasure_event("shop-1", "c2", one["occurred_at"], PROFILES)["event_id"]
    )
    assert isinstance(validate(orjson.dumps(one), PROFILES, AS_OF_MS), ValidEvent)
