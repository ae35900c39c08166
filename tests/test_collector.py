"""The cycle collector is off during a batch's work and on again after it, whatever
happens in it; nested pauses leave it off until the outer one ends; a wait inside a batch
runs it. What a batch makes is freed without it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from worker import collector
from worker.rules.customer import Customer
from worker.rules.events import ValidEvent


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_during_the_batch_and_on_again_after() -> None:
    with collector.paused():
        assert not gc.isenabled()
        with collector.paused():  # nested: still off at its end
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_on_again_after_a_batch_that_raised() -> None:
    with pytest.raises(ValueError), collector.paused():
        raise ValueError("a bug in the batch")
    assert gc.isenabled()


def test_a_collector_switched_off_stays_off() -> None:
    gc.disable()
    with collector.paused():
        pass
    assert not gc.isenabled()


def test_a_wait_inside_a_batch_runs_the_collector_and_the_batch_goes_on_paused() -> None:
    with collector.paused():
        with collector.resumed():
            assert gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with collector.resumed():  # outside a batch: nothing changes
        assert gc.isenabled()
    gc.disable()
    with collector.resumed():  # switched off by someone else: left off
        assert not gc.isenabled()


def test_a_decided_customer_is_freed_without_the_collector() -> None:
    """A batch's customers are freed as the batch ends, by reference counting alone: the
    customer keeps its aggregates, and they refer to it only weakly."""
    customer = Customer("default", "c1")
    event = ValidEvent(
        event_id="e1",
        type="order_placed",
        order_id="o1",
        customer_id="c1",
        tenant="default",
        amount=4_000_000,
        occurred_at=1_700_000_000_000,
    )
    customer.apply(event)
    agg = customer.aggregates()
    assert agg is not None and agg.first_day_value() == 4_000_000  # read through the customer
    gone = weakref.ref(customer)
    with collector.paused():
        del customer
        assert gone() is None
    with pytest.raises(RuntimeError, match="aggregates_to_keep"):
        agg.first_day_value()  # the customer's values are gone with it: never estimated


def test_aggregates_to_keep_hold_their_customer() -> None:
    customer = Customer("default", "c1")
    for n, amount in enumerate((4_000_000, 1_000_000)):  # one day: 50.00, the next: 10.00
        customer.apply(
            ValidEvent(
                event_id=f"e{n}",
                type="order_placed",
                order_id=f"o{n}",
                customer_id="c1",
                tenant="default",
                amount=amount,
                occurred_at=1_700_000_000_000 + n * 86_400_000,
            )
        )
    kept = customer.aggregates_to_keep()
    del customer
    assert kept is not None
    assert kept.first_day_value() == 4_000_000  # not the estimate, 2,500,000
    assert kept.day_values() == [(19675, 4_000_000), (19676, 1_000_000)]
