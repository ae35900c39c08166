"""The state format: a rolling upgrade writes a newer format only once every running worker
reads it; a format this release cannot read stops it with one line (never misread)."""

from __future__ import annotations

import orjson
import pytest

from tests.factories import AS_OF as AS_OF_DT
from tests.factories import AS_OF_MS, DAY, placed_doc, valid_event
from worker import __version__
from worker.errors import StateTooNewError
from worker.rules.customer import Customer
from worker.rules.profiles import Profiles
from worker.rules.state_format import FIRST, FORMAT, RELEASES
from worker.services import causes
from worker.services.roster import STALE_MS, Roster
from worker.state import keys
from worker.state.formats import StateFormats
from worker.state.store import Store

T0 = 1_800_000_000_000


def place(store: Store, profiles: Profiles, customer: str, n: int = 1) -> None:
    doc = placed_doc(customer, n, AS_OF_DT - DAY)
    event = valid_event(
        profiles,
        event_id=doc["event_id"],
        kind="placed",
        order_id=doc["order_id"],
        customer=customer,
        occurred_at=doc["occurred_at"],
        now_ms=AS_OF_MS,
        amount=doc["amount"],
    )
    causes.apply_batch(store, [(event, 0)], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)


def blob(store: Store, customer: str) -> dict[str, object]:
    raw = store.redis.get(keys.customer("default", customer))
    assert raw is not None
    doc: dict[str, object] = orjson.loads(raw)
    return doc


def test_a_blob_says_its_format_from_the_second_on() -> None:
    customer = Customer("t", "c")
    assert b'"f"' not in customer.encode()  # the first format: as releases before it wrote
    again = Customer.decode("t", "c", customer.encode(FORMAT))
    assert orjson.loads(customer.encode(FORMAT))["f"] == FORMAT
    assert again == customer


def test_a_blob_of_a_later_format_is_refused_naming_the_release() -> None:
    later = orjson.loads(Customer("t", "c").encode(FORMAT)) | {"f": FORMAT + 1}
    with pytest.raises(StateTooNewError) as raised:
        Customer.decode("t", "c", orjson.dumps(later))
    message = str(raised.value)
    assert f"format {FORMAT + 1}" in message
    assert f"rfm-worker {__version__}" in message
    assert "nothing was dead-lettered" in message


def test_the_first_format_is_written_until_every_worker_reads_the_next(
    store: Store, profiles: Profiles
) -> None:
    # Nothing recorded (a Redis the previous release wrote): the first format.
    place(store, profiles, "c1")
    assert "f" not in blob(store, "c1")

    # A worker of the previous release runs beside this one: still the first.
    assert store.formats.agree([FIRST, FORMAT]) is False
    place(store, profiles, "c2")
    assert "f" not in blob(store, "c2")
    assert store.redis.exists(keys.FORMAT) == 0

    # Every worker reads the new one: recorded, and written from now on.
    assert store.formats.agree([FORMAT, FORMAT]) is True
    assert store.formats.recorded() == (FORMAT, __version__)
    place(store, profiles, "c3")
    assert blob(store, "c3")["f"] == FORMAT
    place(store, profiles, "c1", n=2)  # an older blob is written anew in the new format
    assert blob(store, "c1")["f"] == FORMAT

    # A process started afterwards (a command, another worker) reads the record.
    assert StateFormats(store.redis).writes == FORMAT
    # Switched for good: a worker of the previous release coming back does not undo it.
    assert store.formats.agree([FIRST, FORMAT]) is False
    assert store.formats.writes == FORMAT


def test_rfm_state_format_holds_a_worker_at_an_earlier_format(
    store: Store, profiles: Profiles
) -> None:
    held = Store(store.redis, state_format=FIRST)
    assert held.formats.agree([FORMAT]) is False
    place(held, profiles, "c1")
    assert "f" not in blob(held, "c1")
    assert held.redis.exists(keys.FORMAT) == 0


def test_a_recorded_later_format_stops_a_worker_with_one_line(store: Store) -> None:
    store.redis.hset(keys.FORMAT, mapping={"format": FORMAT + 1, "release": "9.9.0"})
    with pytest.raises(StateTooNewError, match=r"format 3, written by rfm-worker 9\.9\.0"):
        StateFormats(store.redis).check()
    assert RELEASES[FORMAT] == __version__  # the table names this release too


def test_rebuild_wipe_keeps_the_format_record(store: Store, profiles: Profiles) -> None:
    store.formats.agree([FORMAT])
    place(store, profiles, "c1")
    store.server.wipe()
    assert store.redis.exists(keys.customer("default", "c1")) == 0
    assert store.formats.recorded()[0] == FORMAT


def test_the_roster_switches_once_the_previous_release_is_gone(
    store: Store, profiles: Profiles
) -> None:
    now = [T0]
    # A worker of the previous release says only {at, versions}: it reads the first format.
    store.redis.hset(
        keys.MEMBERS, "old:1", orjson.dumps({"at": T0, "versions": profiles.versions()})
    )
    roster = Roster(store, profiles, lambda: now[0], member="new:2")
    roster.tick()
    assert store.formats.writes == FIRST
    said = orjson.loads(store.redis.hget(keys.MEMBERS, "new:2"))
    assert (said["release"], said["reads"]) == (__version__, FORMAT)

    # It stops (SIGTERM: it leaves the roster) or goes silent: the next tick switches.
    now[0] += STALE_MS + 1
    roster._every.now()
    roster.tick()
    assert store.formats.writes == FORMAT
    assert store.formats.recorded() == (FORMAT, __version__)
