"""Automation triggers (docs/records-and-triggers.md): the pure evaluation, the records and
their `rfm.triggers` header, the metric, end to end with a real broker and Redis, and the
documented automation consumer run as written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from tests.conftest import Deployment
from tests.factories import DAY_MS, epoch_ms, midnight, placed_doc
from tests.fixtures import ingest, sweep_once
from worker import metrics
from worker.commands.demo import DEMO_PROFILES
from worker.kafka.relay import TRIGGERS_HEADER, Relay
from worker.rules.customer import Customer, Published
from worker.rules.engine import Change, apply_events, decay
from worker.rules.events import ValidEvent
from worker.rules.messages import RfmChanged, RfmOverdue
from worker.rules.money import to_units
from worker.rules.profile import Profile
from worker.rules.profile_specs import TriggerSpec
from worker.rules.profiles import Profiles
from worker.rules.triggers import fired, fired_overdue
from worker.services import causes
from worker.state.store import Committed, Store

TRIGGERS_DOC = Path(__file__).resolve().parents[2] / "docs" / "records-and-triggers.md"


def spec(name: str, when: str, **fields: Any) -> TriggerSpec:
    if "from_" in fields:
        fields["from"] = fields.pop("from_")
    return TriggerSpec.model_validate({"name": name, "when": when, **fields})


def pub(rfm: str, segment: str) -> Published:
    r, f, m = (int(ch) for ch in rfm)
    return Published(r, f, m, segment)


# -- the pure function: each kind on (previous, current) ----------------------------------


R5 = [spec("t", "r_becomes", value=5)]


@pytest.mark.parametrize(
    ("previous", "current", "fires"),
    [
        (None, pub("511", "new_customers"), True),  # a new customer at R5
        (pub("411", "promising"), pub("511", "new_customers"), True),
        (pub("111", "lost"), pub("522", "potential_loyalist"), True),
        (pub("511", "new_customers"), pub("521", "potential_loyalist"), False),  # stays at 5
        (pub("511", "new_customers"), pub("411", "promising"), False),  # leaves 5
        (pub("311", "about_to_sleep"), pub("411", "promising"), False),  # another value
        (pub("511", "new_customers"), None, False),
        (None, pub("411", "promising"), False),
    ],
)
def test_r_becomes_fires_on_arrival_at_the_value(
    previous: Published | None, current: Published | None, fires: bool
) -> None:
    assert fired(R5, previous, current) == (("t",) if fires else ())


@pytest.mark.parametrize(("dim", "when"), [("f", "f_reaches"), ("m", "m_reaches")])
@pytest.mark.parametrize(
    ("before", "after", "fires"),
    [
        (None, 3, True),  # new customer already at or above the value
        (None, 5, True),
        (None, 2, False),
        (2, 3, True),  # exactly reaching it
        (1, 4, True),  # jumping over it
        (3, 4, False),  # already there: no second crossing
        (3, 3, False),
        (4, 2, False),  # down
        (3, 2, False),
    ],
)
def test_reaches_fires_on_the_upward_crossing(
    dim: str, when: str, before: int | None, after: int, fires: bool
) -> None:
    triggers = [spec("t", when, value=3)]

    def at(v: int) -> Published:
        return Published(3, v, 1, "x") if dim == "f" else Published(3, 1, v, "x")

    previous = None if before is None else at(before)
    assert fired(triggers, previous, at(after)) == (("t",) if fires else ())


@pytest.mark.parametrize("when", ["f_reaches", "m_reaches"])
def test_reaches_never_fires_when_nothing_is_left(when: str) -> None:
    assert fired([spec("t", when, value=1)], pub("111", "lost"), None) == ()


ENTERS = [spec("t", "enters", segment="at_risk")]
LEAVES = [spec("t", "leaves", segment="at_risk")]


@pytest.mark.parametrize(
    ("previous", "current", "enters", "leaves"),
    [
        (None, pub("124", "at_risk"), True, False),
        (pub("342", "loyal"), pub("242", "at_risk"), True, False),
        (pub("242", "at_risk"), pub("142", "at_risk"), False, False),  # moves inside it
        (pub("242", "at_risk"), pub("542", "champions"), False, True),
        (pub("242", "at_risk"), None, False, True),  # every order cancelled
        (pub("342", "loyal"), pub("442", "loyal"), False, False),
        (None, pub("511", "new_customers"), False, False),
        (pub("511", "new_customers"), None, False, False),
    ],
)
def test_enters_and_leaves(
    previous: Published | None, current: Published | None, enters: bool, leaves: bool
) -> None:
    assert fired(ENTERS, previous, current) == (("t",) if enters else ())
    assert fired(LEAVES, previous, current) == (("t",) if leaves else ())


WINBACK = [
    spec("winback", "enters", segment="at_risk", from_=["loyal", "champions", "cant_lose_them"])
]


@pytest.mark.parametrize(
    ("previous", "fires"),
    [
        (pub("342", "loyal"), True),
        (pub("552", "champions"), True),
        (pub("352", "loyal"), True),
        (pub("332", "need_attention"), False),  # not one of `from`
        (None, False),  # a new customer comes from no segment
    ],
)
def test_from_restricts_the_segment_before_the_move(
    previous: Published | None, fires: bool
) -> None:
    assert fired(WINBACK, previous, pub("242", "at_risk")) == (("winback",) if fires else ())


def test_from_applies_to_value_kinds_too() -> None:
    triggers = [spec("back", "r_becomes", value=5, from_=["at_risk", "lost"])]
    assert fired(triggers, pub("242", "at_risk"), pub("542", "champions")) == ("back",)
    assert fired(triggers, pub("142", "hibernating"), pub("542", "champions")) == ()
    assert fired(triggers, None, pub("511", "new_customers")) == ()


EVERY_KIND = [
    spec("a", "r_becomes", value=5),
    spec("b", "overdue"),
    spec("c", "f_reaches", value=2),
    spec("d", "enters", segment="potential_loyalist"),
    spec("e", "leaves", segment="new_customers"),
    spec("f", "m_reaches", value=2),
    spec("g", "enters", segment="champions"),
]


def test_names_come_in_profile_order_and_overdue_never_fires_on_a_change() -> None:
    # 511 new_customers -> 522 potential_loyalist: F reaches 2, M reaches 2, enters
    # potential_loyalist, leaves new_customers; R stays 5, overdue is not a change.
    move = fired(EVERY_KIND, pub("511", "new_customers"), pub("522", "potential_loyalist"))
    assert move == ("c", "d", "e", "f")


def test_an_unchanged_state_fires_nothing() -> None:
    for p in (pub("511", "new_customers"), pub("242", "at_risk"), pub("555", "champions")):
        assert fired(EVERY_KIND, p, p) == ()
    assert fired(EVERY_KIND, None, None) == ()
    assert fired([], None, pub("555", "champions")) == ()


def test_overdue_fires_only_overdue_triggers_with_from_on_the_current_segment() -> None:
    triggers = [
        spec("ask", "r_becomes", value=1),
        spec("remind", "overdue"),
        spec("vip_lapsed", "overdue", from_=["champions"]),
        spec("regular_lapsed", "overdue", from_=["loyal", "at_risk"]),
    ]
    assert fired_overdue(triggers, pub("353", "loyal")) == ("remind", "regular_lapsed")
    assert fired_overdue(triggers, pub("553", "champions")) == ("remind", "vip_lapsed")
    assert fired_overdue(triggers, pub("111", "lost")) == ("remind",)
    assert fired_overdue([], pub("111", "lost")) == ()


# -- the engine: computed once, in the payload and on the Change ----------------------------

AS_OF = epoch_ms(midnight(10))
PIZZERIA = Profile.model_validate(
    {
        "name": "pizzeria",
        "recency_days": [15, 30, 45, 60],
        "frequency_orders": [2, 3, 5, 10],
        "monetary": [Decimal(100), Decimal(250), Decimal(500), Decimal(1000)],
        "triggers": [
            {"name": "ask_testimonial", "when": "r_becomes", "value": 5},
            {"name": "second_order", "when": "f_reaches", "value": 2},
            {"name": "vip_invitation", "when": "enters", "segment": "champions"},
            {"name": "cadence_reminder", "when": "overdue"},
        ],
    }
)


def placed(n: int, at: int, amount: str = "30") -> ValidEvent:
    return ValidEvent(
        event_id=f"p{n}",
        type="order_placed",
        order_id=f"o{n}",
        customer_id="c1",
        tenant="pizzeria",
        amount=to_units(amount),
        occurred_at=at,
    )


def test_engine_puts_the_names_in_the_change_and_its_payload() -> None:
    """Orders of 30 every 10 days, then silence; each move's names, computed once."""
    c = Customer("pizzeria", "c1")
    changes: list[Change] = []
    for n in range(5):
        at = AS_OF + n * 10 * DAY_MS
        res = apply_events(c, [placed(n, at)], profile=PIZZERIA, as_of_ms=at, now_ms=at)
        changes += res.changes
    last = AS_OF + 40 * DAY_MS
    for silent_days in (16, 21):  # R4 after 15 days; overdue past 2 x 10 days
        res = decay(c, PIZZERIA, as_of_ms=last + silent_days * DAY_MS, now_ms=last)
        changes += res.changes
    seen = []
    for change in changes:
        model = RfmOverdue if change.kind == "rfm.overdue" else RfmChanged
        assert model.model_validate(change.payload).model_dump(mode="json") == change.payload
        assert change.payload["triggers"] == list(change.triggers)
        assert change.profile == "pizzeria"
        current = change.payload["current"]
        assert isinstance(current, dict)
        seen.append((change.kind, current["rfm"], change.triggers))
    assert seen == [
        ("rfm.changed", "511", ("ask_testimonial",)),  # a new customer at R5
        ("rfm.changed", "521", ("second_order",)),
        ("rfm.changed", "531", ()),
        ("rfm.changed", "532", ()),
        ("rfm.changed", "542", ("vip_invitation",)),  # 5 orders: champions
        ("rfm.changed", "442", ()),  # decay: R4, loyal
        ("rfm.overdue", "442", ("cadence_reminder",)),
    ]


# -- the relay: header on every record, metric per tenant and trigger ----------------------


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def produce(self, topic: str, **record: Any) -> None:
        self.records.append(record)

    def poll(self, _timeout: float) -> int:
        return 0


def committed(change: Change, n: int) -> Committed:
    key = f"c{n}".encode()
    return Committed(b"outbox", f"{n}-0".encode(), key, orjson.dumps(change.payload), change)


def change_with(tenant: str, profile: str, triggers: tuple[str, ...]) -> Change:
    return Change(
        tenant=tenant,
        customer_id="c1",
        cause="decay",
        from_segment="loyal",
        to_segment="at_risk",
        record=orjson.dumps({"triggers": list(triggers)}),
        triggers=triggers,
        profile=profile,
    )


def sample(tenant: str, trigger: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "rfm_triggers_total", {"tenant": tenant, "trigger": trigger}
    )
    return value or 0.0


def test_publish_sends_the_header_and_counts_triggers_with_a_bounded_tenant() -> None:
    producer = FakeProducer()
    relay = Relay(None, producer, "actions")  # type: ignore[arg-type]  # publish: no store
    before = {
        key: sample(*key)
        for key in [("pizzeria", "winback"), ("other", "winback"), ("pizzeria", "vip")]
    }
    batch = [
        change_with("pizzeria", "pizzeria", ("winback", "vip")),
        change_with("pizzeria", "pizzeria", ()),
        change_with("pizzeria", "pizzeria", ("winback",)),
        change_with("anything-42", "default", ("winback",)),  # no profile of its own
    ]
    relay.publish([committed(c, n) for n, c in enumerate(batch)])
    assert [r["headers"] for r in producer.records] == [
        [(TRIGGERS_HEADER, b"winback,vip")],
        [(TRIGGERS_HEADER, b"")],
        [(TRIGGERS_HEADER, b"winback")],
        [(TRIGGERS_HEADER, b"winback")],
    ]
    assert sample("pizzeria", "winback") - before[("pizzeria", "winback")] == 2
    assert sample("pizzeria", "vip") - before[("pizzeria", "vip")] == 1
    assert sample("other", "winback") - before[("other", "winback")] == 1
    assert (
        metrics.REGISTRY.get_sample_value(
            "rfm_triggers_total", {"tenant": "anything-42", "trigger": "winback"}
        )
        is None
    )


# The demo's profile (the seed's four triggers), plus one trigger of every other kind.
TRIGGER_PROFILES = (
    DEMO_PROFILES
    + """
[[profiles.default.triggers]]
name = "champion_lost"
when = "leaves"
segment = "champions"

[[profiles.default.triggers]]
name = "regular_lapsed"
when = "overdue"
from = ["loyal"]

[[profiles.default.triggers]]
name = "fifth_order"
when = "f_reaches"
value = 4

[[profiles.default.triggers]]
name = "big_spender"
when = "m_reaches"
value = 3
"""
)


def expected_triggers(profile: Profile, record: dict[str, Any]) -> list[str]:
    """The README's table, spelled independently of worker/rules/triggers.py."""

    def dim(s: dict[str, Any] | None, d: str) -> Any:
        return None if s is None else s[d]

    prev, cur = record.get("previous"), record["current"]
    names = []
    for t in profile.triggers:
        if record["type"] == "rfm.overdue":
            ok = t.when == "overdue" and (t.from_ is None or cur["segment"] in t.from_)
            if ok:
                names.append(t.name)
            continue
        if t.when == "r_becomes":
            ok = dim(cur, "r") == t.value and dim(prev, "r") != t.value
        elif t.when in ("f_reaches", "m_reaches"):
            d = t.when[0]
            ok = cur is not None and cur[d] >= t.value and (prev is None or prev[d] < t.value)
        elif t.when == "enters":
            ok = dim(cur, "segment") == t.segment and dim(prev, "segment") != t.segment
        elif t.when == "leaves":
            ok = dim(prev, "segment") == t.segment and dim(cur, "segment") != t.segment
        else:
            ok = False
        if ok and (t.from_ is None or dim(prev, "segment") in t.from_):
            names.append(t.name)
    return names


def check_record(profile: Profile, msg: Any) -> dict[str, Any]:
    """Body valid, `triggers` as the profile says, header equal to the body's list."""
    doc: dict[str, Any] = orjson.loads(msg.value())
    (RfmOverdue if doc["type"] == "rfm.overdue" else RfmChanged).model_validate(doc)
    assert doc["triggers"] == expected_triggers(profile, doc), doc
    headers = dict(msg.headers() or [])
    assert TRIGGERS_HEADER in headers, doc
    assert (headers[TRIGGERS_HEADER] or b"") == ",".join(doc["triggers"]).encode(), doc
    return doc


# -- end to end: a worker, sweeps, the actions topic --------------------------------------


@pytest.mark.demo_path
def test_orders_and_sweeps_publish_the_profiles_triggers(
    deployment: Deployment, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two regulars decay through the built-in thresholds; one comes back. Every record's
    `triggers` is what the profile says for its move, and its header says the same."""
    profiles_file = tmp_path / "profiles.toml"
    profiles_file.write_text(TRIGGER_PROFILES)
    profile = Profiles.load(profiles_file).default
    deployment.extra_env.update({"RFM_CLOCK": "event", "RFM_PROFILES": str(profiles_file)})
    day = timedelta(days=1)
    last = midnight(400)
    # reg: 10 orders of 40 every 75 days (553 champions); mid: 5 every 20 days (542).
    history = [placed_doc("reg", k, last - (9 - k) * 75 * day) for k in range(10)]
    history += [placed_doc("mid", k, last - (4 - k) * 20 * day) for k in range(5)]
    ingest(deployment, history, {"reg": "553", "mid": "542"})
    ingested = {
        orjson.loads(m.value())["change_id"]
        for m in deployment.read(deployment.actions, until=lambda m: False, timeout=3)
    }

    for days in (31, 41, 91, 151, 181):
        sweep_once(monkeypatch, deployment, last + days * day)
    # mid comes back, 60.00 more: 6 orders, 260.00.
    ingest(deployment, [placed_doc("mid", 5, last + 200 * day, "60.00")], {"mid": "543"})

    messages = deployment.read(deployment.actions, until=lambda m: False, timeout=3)
    docs = [check_record(profile, m) for m in messages]  # every record, ingestion included
    by_id = {d["change_id"]: d for d in docs}
    assert all(by_id[d["change_id"]] == d for d in docs)  # a copy carries the same triggers
    walk: dict[str, list[tuple[str, list[str]]]] = {"reg": [], "mid": []}
    seen = set(ingested)
    for doc in docs:
        if doc["change_id"] in seen:
            continue
        seen.add(doc["change_id"])
        move = (
            f"overdue {doc['current']['rfm']}"
            if doc["type"] == "rfm.overdue"
            else f"{doc['cause']} {doc['previous']['rfm']}>{doc['current']['rfm']}"
        )
        walk[doc["customer_id"]].append((move, doc["triggers"]))
    assert walk["reg"] == [
        ("decay 553>453", ["champion_lost"]),  # champions -> loyal
        ("decay 453>353", []),  # loyal -> loyal
        ("overdue 353", ["cadence_reminder", "regular_lapsed"]),
        ("decay 353>253", []),  # loyal -> cant_lose_them
    ]
    assert walk["mid"] == [
        ("decay 542>442", ["champion_lost"]),
        ("overdue 442", ["cadence_reminder", "regular_lapsed"]),
        ("decay 442>342", []),
        ("decay 342>242", ["winback_offer"]),  # loyal -> at_risk
        ("order 242>543", ["ask_testimonial", "vip_invitation", "big_spender"]),
    ]


# -- the documented automation consumer, run as written ---------------------------------------


def readme_consumer() -> str:
    """The first python block of the "Automation triggers" section of the docs."""
    text = TRIGGERS_DOC.read_text(encoding="utf-8")
    section = text.split("\n## Automation triggers\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block in the Automation triggers section"
    return match.group(1)


README_PROFILES = """
[profiles.pizzeria]
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]

[[profiles.pizzeria.triggers]]
name = "ask_testimonial"
when = "r_becomes"
value = 5

[[profiles.pizzeria.triggers]]
name = "vip_invitation"
when = "enters"
segment = "champions"
"""


@pytest.mark.demo_path
def test_readme_automation_consumer_dispatches_each_change_once(
    deployment: Deployment, store: Store
) -> None:
    """Real records (the store and the relay, on the real broker): each change published
    twice, once by `publish` and once more by `recover` (its header derived from the stored
    value). The README consumer acts once per change and trigger."""
    profiles = Profiles.from_toml(README_PROFILES)
    now = int(time.time() * 1000)
    at = now - 60_000
    events: list[tuple[ValidEvent, int]] = []
    for c in range(3):  # 3 new customers (ask_testimonial); c0 reaches champions too
        for n in range(5 if c == 0 else 1):
            ev = ValidEvent(
                event_id=f"c{c}-p{n}",
                type="order_placed",
                order_id=f"c{c}-o{n}",
                customer_id=f"c{c}",
                tenant="pizzeria",
                amount=to_units("30"),
                occurred_at=at - n * DAY_MS,
            )
            events.append((ev, c))
    done = causes.apply_batch(store, events, profiles, as_of_ms=now, now_ms=now).committed
    fired_names = Counter(name for c in done for name in c.change.triggers)
    assert fired_names == {"ask_testimonial": 3, "vip_invitation": 1}

    producer = Producer({"bootstrap.servers": deployment.kafka.bootstrap})
    again_producer = Producer({"bootstrap.servers": deployment.kafka.bootstrap})
    try:
        first = Relay(store.outbox, producer, deployment.actions)
        first.publish(done)
        assert producer.flush(30) == 0  # acknowledged, not yet trimmed: still in the outbox
        again = Relay(store.outbox, again_producer, deployment.actions)
        assert again.recover(range(4)) == len(done)
        assert again.drain(30) and first.drain(30)
    finally:
        producer.close()
        again_producer.close()

    messages = deployment.read(deployment.actions, until=lambda m: len(m) >= 2 * len(done))
    assert len(messages) == 2 * len(done)
    for msg in messages:  # both paths: the same header for the same change
        check_record(profiles.for_tenant("pizzeria"), msg)

    env = {
        **os.environ,
        "RFM_KAFKA_BOOTSTRAP": deployment.kafka.bootstrap,
        "RFM_ACTIONS_TOPIC": deployment.actions,
        "AUTOMATION_GROUP": f"automation-{deployment.group}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", readme_consumer()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    # A daemon: a reader left waiting on a child must never keep the test run alive.
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    expected = sorted(
        f"{name} pizzeria {c.change.customer_id}" for c in done for name in c.change.triggers
    )
    try:
        deadline = time.monotonic() + 60
        while len(lines) < len(expected) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(2)  # room for a second action, if a copy were acted on again
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        reader.join(10)
    finally:
        if proc.poll() is None:  # reaped whatever happened above
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert sorted(line.strip() for line in lines) == expected, err
