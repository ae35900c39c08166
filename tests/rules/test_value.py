"""The value model per customer (docs/profiles.md "Value model"): the profile keys, the
scores, the records, the band moves and the value_above trigger. The Gamma-Gamma formulas
themselves: tests/rules/test_spend.py."""

from __future__ import annotations

import math

import orjson
import pytest

from tests.rules.test_profiles import VALID_BODY, load_error, one_profile, with_triggers
from worker.rules import churn
from worker.rules.churn import Params, SpendFit, SpendParams
from worker.rules.customer import Customer, Published
from worker.rules.decay import value_band_due
from worker.rules.engine import apply_events, decay
from worker.rules.events import ValidEvent
from worker.rules.messages import CustomerView, RfmChanged, customer_view
from worker.rules.money import SCALE, to_units
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles
from worker.rules.scoring import score
from worker.rules.triggers import fired

DAY_MS = 86_400_000
T_START = 20_400 * DAY_MS  # a UTC midnight (2025-11-08)
SPEND = SpendFit(SpendParams(6.25, 3.74, 15.44), -1.0, 50)  # CDNOW's, in currency units
FIT = churn.Fit(
    "bgnbd", Params(0.243, 4.414 * 7, 0.793, 2.426), -1.0, 100, 100, 1, T_START, spend=SPEND
)
CHURN_BODY = VALID_BODY + 'churn_model = "bgnbd"\n'
VALUE_BODY = CHURN_BODY + 'value_model = "gamma_gamma"\n'


def value_profile(bands: str = "[5, 20, 50]", triggers: str = "", fit: churn.Fit = FIT) -> Profile:
    profiles = Profiles.from_toml(
        one_profile(VALUE_BODY + (f"value_bands = {bands}\n" if bands else "")) + triggers
    )
    return profiles.use_fit("default", fit)


def order(n: int, at: int, amount: str = "30") -> ValidEvent:
    return ValidEvent(
        event_id=f"e{n}",
        type="order_placed",
        order_id=f"o{n}",
        customer_id="c1",
        tenant="default",
        amount=to_units(amount),
        occurred_at=at,
    )


def customer(*orders: tuple[int, str]) -> Customer:
    """A customer with orders (day after T_START, amount)."""
    c = Customer("default", "c1")
    for n, (day, amount) in enumerate(orders):
        c.apply(order(n, T_START + day * DAY_MS + 3_600_000, amount))
    return c


# -- the profile keys ---------------------------------------------------------------------------


def test_value_keys_load() -> None:
    p = Profiles.from_toml(one_profile(VALUE_BODY + "value_bands = [50, 200.5]\n")).for_tenant("x")
    assert (p.value_model, p.value_bands) == ("gamma_gamma", [50.0, 200.5])
    p = Profiles.from_toml(one_profile(VALUE_BODY)).for_tenant("x")
    assert (p.value_model, p.value_bands) == ("gamma_gamma", None)
    assert Profiles.from_toml(one_profile(CHURN_BODY)).for_tenant("x").value_model is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            VALID_BODY + 'value_model = "gamma_gamma"\n',
            'value_model needs churn_model = "bgnbd" or "mbgnbd"',
        ),
        (CHURN_BODY + 'value_model = "pareto"\n', "value_model: Input should be 'gamma_gamma'"),
        (CHURN_BODY + "value_bands = [10]\n", 'value_bands need(s) value_model = "gamma_gamma"'),
        (VALID_BODY + "value_bands = [10]\n", 'value_bands need(s) value_model = "gamma_gamma"'),
        (
            VALUE_BODY + "value_bands = [10, 10]\n",
            "value_bands must be strictly increasing, got [10.0, 10.0]",
        ),
        (
            VALUE_BODY + "value_bands = [50, 10]\n",
            "value_bands must be strictly increasing, got [50.0, 10.0]",
        ),
        (VALUE_BODY + "value_bands = [0, 10]\n", "value_bands must be positive amounts"),
        (VALUE_BODY + "value_bands = [-5, 10]\n", "value_bands must be positive amounts"),
        (VALUE_BODY + "value_bands = [10, inf]\n", "value_bands must be positive amounts"),
        (VALUE_BODY + "value_bands = []\n", "value_bands: List should have"),
    ],
)
def test_bad_value_keys_are_rejected_and_named(body: str, message: str) -> None:
    err = load_error(one_profile(body))
    assert err.startswith("profiles.toml: profile 'default': ")
    assert message in err


def test_value_above_triggers() -> None:
    body = VALUE_BODY + "value_bands = [50, 200]\n"
    ok = Profiles.from_toml(
        with_triggers('name = "vip"\nwhen = "value_above"\nvalue = 200', body=body)
    )
    (t,) = ok.for_tenant("pizzeria").triggers
    assert (t.when, t.value) == ("value_above", 200)
    for trigger, message in [
        ('name = "w"\nwhen = "value_above"', "'value_above' needs a value"),
        (
            'name = "w"\nwhen = "value_above"\nvalue = 100',
            "value 100 is not one of value_bands [50.0, 200.0]",
        ),
        ('name = "w"\nwhen = "value_above"\nvalue = "50"', "value: Input should be a valid"),
        ('name = "w"\nwhen = "value_above"\nvalue = 50\nsegment = "lost"', "takes no segment"),
    ]:
        assert message in load_error(with_triggers(trigger, body=body))
    no_bands = with_triggers('name = "w"\nwhen = "value_above"\nvalue = 50', body=VALUE_BODY)
    assert "triggers[0] 'w': value_above needs value_bands" in load_error(no_bands)
    no_model = with_triggers('name = "w"\nwhen = "value_above"\nvalue = 50', body=CHURN_BODY)
    assert 'value_above needs value_model = "gamma_gamma"' in load_error(no_model)


def test_the_value_keys_and_the_fit_count_in_the_version() -> None:
    from tests.factories import PIZZERIA
    from worker.rules.profile import BUILTIN_DEFAULT

    # without a value model: the versions of before (tests/rules/test_profiles.py)
    assert (BUILTIN_DEFAULT.version, PIZZERIA.version) == ("871c3f4b", "3caf6316")
    churn_only = Profiles.from_toml(one_profile(CHURN_BODY)).for_tenant("x").version
    assert Profiles.from_toml(one_profile(CHURN_BODY)).use_fit("default", FIT).version == (
        Profiles.from_toml(one_profile(CHURN_BODY))
        .use_fit("default", churn.Fit("bgnbd", FIT.params, -1.0, 100, 100, 1, T_START))
        .version
    )  # a spend fit a profile without a value model does not use changes nothing
    versions = {
        churn_only,
        Profiles.from_toml(one_profile(VALUE_BODY)).for_tenant("x").version,
        Profiles.from_toml(one_profile(VALUE_BODY + "value_bands = [5]\n")).for_tenant("x").version,
        Profiles.from_toml(one_profile(VALUE_BODY + "value_bands = [6]\n")).for_tenant("x").version,
        value_profile("[5]").version,
        value_profile(
            "[5]", fit=churn.Fit("bgnbd", FIT.params, -1.0, 100, 100, 2, 0, SPEND)
        ).version,
    }
    assert len(versions) == 6


def test_a_quantile_profile_keeps_its_value_model() -> None:
    profiles = Profiles.from_toml(
        one_profile(
            'mode = "quantiles"\nchurn_model = "bgnbd"\nvalue_model = "gamma_gamma"\n'
            "value_bands = [5, 20]\n"
        )
    )
    profiles.use_fit("default", FIT)
    p = profiles.use_cuts("default", None)
    assert (p.value_model, p.value_bands, p.churn_fit) == ("gamma_gamma", [5.0, 20.0], FIT)
    plain = Profiles.from_toml(one_profile('mode = "quantiles"\nchurn_model = "bgnbd"\n'))
    assert plain.use_cuts("default", None).value_model is None


# -- scores -------------------------------------------------------------------------------------


def test_score_carries_the_expected_order_value_value_and_band() -> None:
    # days 0 (30), 10 (50 + 20: one day worth 70) and 30 (40): x = 2, m_x = (70 + 40) / 2
    c = customer((0, "30"), (10, "50"), (10, "20"), (30, "40"))
    agg = c.aggregates()
    assert agg is not None
    at = T_START + 60 * DAY_MS + 5
    s = score(agg, at, value_profile())
    eov = churn.expected_order_value(SPEND.params, 2, 55.0)
    assert s.expected_order_value == pytest.approx(eov, rel=1e-12)
    assert s.expected_orders is not None
    assert s.expected_value == pytest.approx(eov * s.expected_orders, rel=1e-12)
    assert s.value_band == churn.value_band(s.expected_value, [5, 20, 50])
    assert isinstance(s.expected_order_value, float) and isinstance(s.expected_value, float)
    # between the customer's own mean and the population's
    mean = 6.25 * 15.44 / 2.74
    assert min(mean, 55.0) < s.expected_order_value < max(mean, 55.0)
    # no bands: the values, no band
    s = score(agg, at, value_profile(bands=""))
    assert s.expected_value is not None and s.value_band is None


def test_a_one_day_customer_gets_the_population_mean() -> None:
    c = customer((0, "500"), (0, "20"))  # one day: x = 0
    agg = c.aggregates()
    assert agg is not None
    s = score(agg, T_START + DAY_MS, value_profile())
    assert s.expected_order_value == pytest.approx(6.25 * 15.44 / 2.74, rel=1e-12)


def test_nothing_without_a_value_model_or_a_spend_fit() -> None:
    c = customer((0, "30"), (5, "60"))
    agg = c.aggregates()
    assert agg is not None
    at = T_START + 9 * DAY_MS
    unfitted = Profiles.from_toml(one_profile(VALUE_BODY + "value_bands = [5]\n")).for_tenant("x")
    churn_only = Profiles.from_toml(one_profile(CHURN_BODY)).use_fit("default", FIT)
    no_spend = value_profile(fit=churn.Fit("bgnbd", FIT.params, -1.0, 100, 100, 1, T_START))
    for profile in (unfitted, churn_only, no_spend):
        s = score(agg, at, profile)
        assert (s.expected_order_value, s.expected_value, s.value_band) == (None, None, None)
    assert score(agg, at, churn_only).p_alive is not None


# -- changes, records, triggers, decay ----------------------------------------------------------


def test_records_carry_the_values_and_the_state_the_band() -> None:
    profile = value_profile()
    c = Customer("default", "c1")
    result = apply_events(
        c,
        [order(0, T_START + 1000), order(1, T_START + 7 * DAY_MS, "80")],
        profile=profile,
        as_of_ms=T_START + 7 * DAY_MS,
        now_ms=T_START + 7 * DAY_MS,
    )
    record = result.changes[-1].payload
    RfmChanged.model_validate(record)
    agg = c.aggregates()
    assert agg is not None
    s = score(agg, T_START + 7 * DAY_MS, profile)
    assert (record["expected_order_value"], record["expected_value"], record["value_band"]) == (
        s.expected_order_value,
        s.expected_value,
        s.value_band,
    )
    assert s.value_band is not None and s.band is not None
    assert s.expected_value is not None
    value = round(s.expected_value * SCALE)  # what the customer adds to its segment's sum
    assert c.published == Published(s.r, s.f, s.m, s.segment, s.band, s.value_band, value)
    blob = c.encode()
    assert orjson.loads(blob)["s"][-3:] == [s.band, s.value_band, value]
    assert Customer.decode("default", "c1", blob).published == c.published
    view = customer_view("default", "c1", agg, s, T_START + 7 * DAY_MS)
    CustomerView.model_validate(view)
    assert view["expected_value"] == s.expected_value and view["value_band"] == s.value_band
    assert list(view)[-3:] == ["expected_order_value", "expected_value", "value_band"]


def test_stored_records_decode_with_and_without_the_value_band() -> None:
    for s, published in [
        ([5, 1, 1, "new_customers"], Published(5, 1, 1, "new_customers")),
        ([5, 1, 1, "new_customers", 3], Published(5, 1, 1, "new_customers", 3)),
        ([5, 1, 1, "new_customers", None, 2], Published(5, 1, 1, "new_customers", None, 2)),
        ([5, 1, 1, "new_customers", 3, 2, 41], Published(5, 1, 1, "new_customers", 3, 2, 41)),
        ([5, 1, 1, "new_customers", 3, None, 41], Published(5, 1, 1, "new_customers", 3, None, 41)),
    ]:
        blob = orjson.dumps({"o": {"o1": [T_START, 300_000]}, "s": s})
        c = Customer.decode("default", "c1", blob)
        assert c.published == published
        assert orjson.loads(c.encode())["s"] == s  # written back as it was


def test_without_a_value_model_records_say_null() -> None:
    profile = Profiles.from_toml(one_profile(CHURN_BODY)).use_fit("default", FIT)
    c = Customer("default", "c1")
    result = apply_events(c, [order(0, T_START)], profile=profile, as_of_ms=T_START, now_ms=T_START)
    record = result.changes[-1].payload
    RfmChanged.model_validate(record)
    assert (record["expected_order_value"], record["expected_value"], record["value_band"]) == (
        None,
        None,
        None,
    )
    assert record["p_alive"] is not None
    assert len(orjson.loads(c.encode())["s"]) == 5  # the state blob as with churn alone


def test_value_above_fires_on_the_crossing_only() -> None:
    profile = value_profile(
        "[5, 20, 50]",
        '[[profiles.default.triggers]]\nname = "w"\nwhen = "value_above"\nvalue = 20\n',
    )

    def moved(was: int | None, now: int | None) -> tuple[str, ...]:
        return fired(
            profile.triggers,
            Published(5, 1, 1, "new_customers", 3, was),
            Published(5, 1, 1, "new_customers", 3, now),
            profile.p_alive_bands,
            profile.value_bands or (),
        )

    assert moved(2, 3) == ("w",)  # 20 <= value: band 3 and up
    assert moved(1, 4) == ("w",)
    assert moved(3, 4) == ()  # already above
    assert moved(3, 2) == ()  # down
    assert moved(None, 4) == ()  # no value band before (no fit yet): not a crossing
    assert moved(2, None) == ()


def test_a_value_band_move_is_a_change_and_fires_value_above() -> None:
    """A big second order lifts the expected value across a bound set between the two."""
    at1, at2 = T_START + 1000, T_START + 3 * DAY_MS
    probe = value_profile(bands="")
    c = Customer("default", "c1")
    apply_events(c, [order(0, at1)], profile=probe, as_of_ms=at1, now_ms=at1)
    agg = c.aggregates()
    assert agg is not None
    low = score(agg, at1, probe).expected_value
    apply_events(c, [order(1, at2, "400")], profile=probe, as_of_ms=at2, now_ms=at2)
    agg = c.aggregates()
    assert agg is not None
    high = score(agg, at2, probe).expected_value
    assert low is not None and high is not None and high > low
    bound = round((low + high) / 2, 2)
    trigger = (
        f'[[profiles.default.triggers]]\nname = "vip"\nwhen = "value_above"\nvalue = {bound}\n'
    )
    profile = value_profile(f"[{bound}]", trigger)
    c = Customer("default", "c1")
    first = apply_events(c, [order(0, at1)], profile=profile, as_of_ms=at1, now_ms=at1)
    assert first.changes[-1].payload["value_band"] == 1
    assert first.changes[-1].triggers == ()
    second = apply_events(c, [order(1, at2, "400")], profile=profile, as_of_ms=at2, now_ms=at2)
    (change,) = second.changes
    assert change.payload["value_band"] == 2 and change.triggers == ("vip",)
    assert c.published is not None and c.published.value_band == 2


def test_the_value_band_decays_at_its_due_midnights() -> None:
    """With no new order the expected value falls: each band drop is published (cause
    decay) at the first midnight it happens, the instant value_band_due said."""
    profile = value_profile("[1, 5, 20, 50]")
    c = Customer("default", "c1")
    at = T_START + 7 * DAY_MS
    first = apply_events(
        c,
        [order(0, T_START + 1000, "60"), order(1, at, "90")],
        profile=profile,
        as_of_ms=at,
        now_ms=at,
    )
    start = first.changes[-1].payload["value_band"]
    assert isinstance(start, int) and start >= 3
    bands = [start]
    due = first.due
    for _ in range(60):
        if due is None:
            break
        agg = c.aggregates()
        assert agg is not None
        before = score(agg, due - 1, profile)
        result = decay(c, profile, as_of_ms=due, now_ms=due)
        after = score(agg, due, profile)
        if after.value_band != before.value_band:
            # the first midnight of the new band, announced by the previous due instant
            assert due % DAY_MS == 0
            assert after.value_band is not None and before.value_band is not None
            assert after.value_band < before.value_band
            (change,) = [ch for ch in result.changes if ch.kind == "rfm.changed"]
            assert change.payload["value_band"] == after.value_band
            bands.append(after.value_band)
        due = result.due
    assert bands == list(range(start, 0, -1))
    assert c.published is not None and c.published.value_band == 1
    agg = c.aggregates()
    assert agg is not None
    assert value_band_due(agg, profile, T_START + 10_000 * DAY_MS) is None  # the lowest


def test_value_band_due_is_the_first_midnight_below() -> None:
    profile = value_profile("[5, 20, 50]")
    c = customer((0, "30"), (4, "70"), (9, "50"))
    agg = c.aggregates()
    assert agg is not None
    at = T_START + 12 * DAY_MS
    band = score(agg, at, profile).value_band
    due = value_band_due(agg, profile, at)
    assert band is not None and band > 1 and due is not None
    assert due % DAY_MS == 0 and due > at
    assert score(agg, due - 1, profile).value_band == band
    assert score(agg, due, profile).value_band == band - 1
    value = score(agg, due, profile).expected_value
    assert value is not None and math.isfinite(value)


def test_value_at_risk_names_segments_of_the_map() -> None:
    """value_at_risk: the segments of the value at risk (page, /v1/matrix); by default those
    of at_risk, cant_lose_them, about_to_sleep the map has; names outside the map, or the
    key without a value model, are refused."""
    assert value_profile().at_risk_segments == ["at_risk", "cant_lose_them", "about_to_sleep"]
    chosen = Profiles.from_toml(one_profile(VALUE_BODY + 'value_at_risk = ["hibernating"]\n'))
    assert chosen.for_tenant("x").at_risk_segments == ["hibernating"]
    assert "not in the profile's segment map" in load_error(
        one_profile(VALUE_BODY + 'value_at_risk = ["nope"]\n')
    )
    assert 'need(s) value_model = "gamma_gamma"' in load_error(
        one_profile(CHURN_BODY + 'value_at_risk = ["at_risk"]\n')
    )
    # no score depends on it: the version stays
    assert (
        chosen.for_tenant("x").version
        == Profiles.from_toml(one_profile(VALUE_BODY)).for_tenant("x").version
    )
