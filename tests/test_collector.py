"""The cycle collector is off during a batch's work and on again after it, whatever
happens in it; nested pauses leave it off until the outer one ends."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from worker import collector


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
