"""Scoring profiles (docs/profiles.md): TOML loading, validation, the built-in default."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest

from worker.errors import ConfigError, ProfileError
from worker.rules.profile import BUILTIN_DEFAULT, Profile
from worker.rules.profiles import Profiles
from worker.rules.segments import STANDARD_MAP

# The documented example, without its (deliberately partial) custom segment map.
CONTRACT_EXAMPLE = """
[profiles.default]                 # applies to events with no tenant, or a tenant with no profile
currency = "EUR"                   # optional; when set, other currencies are rejected
recency_days = [15, 30, 45, 60]    # R=5 if days<=15, 4 if <=30, 3 if <=45, 2 if <=60, else 1
frequency_orders = [2, 3, 5, 10]   # F=5 if orders>=10, 4 if >=5, 3 if >=3, 2 if >=2, else 1
frequency_window_days = 365        # optional; count only orders in the last N days
monetary = [100, 250, 500, 1000]   # M=5 if monetary>=1000 ... else 1

[profiles.sofa-shop]               # a tenant's own profile: the key is the tenant name
recency_days = [30, 365, 730, 1825]
frequency_orders = [2, 3, 4, 6]
monetary = [500, 1500, 3000, 6000]
"""

CUSTOM_MAP_RULES = """
[[profiles.sofa-shop.segments]]
name = "champions"
r = [4, 5]
f = [4, 5]
"""

CATCH_ALL = """
[[profiles.sofa-shop.segments]]
name = "everyone_else"
"""


def one_profile(body: str, name: str = "default") -> str:
    return f"[profiles.{name}]\n{body}\n"


VALID_BODY = """
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""


def load_error(text: str, source: str = "profiles.toml") -> str:
    with pytest.raises(ProfileError) as info:
        Profiles.from_toml(text, source)
    message = str(info.value)
    assert "\n" not in message, "a profile error is one line"
    assert message.startswith(source)
    return message


# -- built-in default ---------------------------------------------------------------------


def test_builtin_profiles_serve_every_tenant_with_the_default() -> None:
    profiles = Profiles.builtin()
    assert profiles.names() == ["default"]
    assert profiles.default is BUILTIN_DEFAULT
    assert profiles.for_tenant("default") is BUILTIN_DEFAULT
    assert profiles.for_tenant("any-tenant") is BUILTIN_DEFAULT


def test_builtin_default_is_a_valid_standard_profile() -> None:
    p = BUILTIN_DEFAULT
    assert p.name == "default"
    assert p.currency is None
    assert p.frequency_window_days is None
    assert p.overdue_factor == 2.0
    for values in (p.recency_days, p.frequency_orders, [int(v) for v in p.monetary]):
        assert len(values) == 4
        assert all(a < b for a, b in pairwise(values))
    assert p.segment_map.levels == (5, 5, 5)
    assert dict(p.segment_map.items()) == dict(STANDARD_MAP.items())


def test_load_none_is_builtin() -> None:
    profiles = Profiles.load(None)
    assert profiles.default is BUILTIN_DEFAULT
    assert profiles.names() == ["default"]


# -- loading ------------------------------------------------------------------------------


def test_contract_example_loads() -> None:
    profiles = Profiles.from_toml(CONTRACT_EXAMPLE)
    assert profiles.names() == ["default", "sofa-shop"]
    default = profiles.for_tenant("default")
    assert default.name == "default"
    assert default.currency == "EUR"
    assert default.recency_days == [15, 30, 45, 60]
    assert default.frequency_orders == [2, 3, 5, 10]
    assert default.frequency_window_days == 365
    assert default.monetary == [Decimal(100), Decimal(250), Decimal(500), Decimal(1000)]
    assert default.monetary_units == (1_000_000, 2_500_000, 5_000_000, 10_000_000)
    sofa = profiles.for_tenant("sofa-shop")
    assert sofa.name == "sofa-shop"
    assert sofa.currency is None
    assert sofa.frequency_window_days is None
    assert sofa.recency_days == [30, 365, 730, 1825]
    assert sofa.frequency_orders == [2, 3, 4, 6]
    assert sofa.monetary_units == (5_000_000, 15_000_000, 30_000_000, 60_000_000)
    # A tenant without its own profile gets the file's default, not the built-in one.
    assert profiles.for_tenant("pizzeria") is default
    assert profiles.default is default


def test_file_without_default_falls_back_to_builtin_default() -> None:
    profiles = Profiles.from_toml(one_profile(VALID_BODY, "sofa-shop"))
    assert profiles.names() == ["default", "sofa-shop"]
    assert profiles.for_tenant("other") is BUILTIN_DEFAULT
    assert profiles.for_tenant("sofa-shop").recency_days == [15, 30, 45, 60]


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    profiles = Profiles.load(path)
    assert profiles.for_tenant("sofa-shop").recency_days == [30, 365, 730, 1825]
    assert Profiles.load(str(path)).default.currency == "EUR"


def test_custom_map_with_catch_all_is_used() -> None:
    profiles = Profiles.from_toml(CONTRACT_EXAMPLE + CUSTOM_MAP_RULES + CATCH_ALL)
    sofa = profiles.for_tenant("sofa-shop")
    assert sofa.segment_map.names == ("champions", "everyone_else")
    assert sofa.segment_map.segment(4, 4, 1) == "champions"
    assert sofa.segment_map.segment(5, 5, 5) == "champions"
    assert sofa.segment_map.segment(3, 5, 5) == "everyone_else"
    assert sofa.segment_map.segment(5, 3, 5) == "everyone_else"
    # The default keeps the standard map.
    assert profiles.default.segment_map.segment(1, 1, 1) == "lost"


def test_custom_map_m_range_and_bigger_grid() -> None:
    text = one_profile(
        """
recency_days = [1, 2, 3, 4, 5]
frequency_orders = [2]
monetary = [10, 20]
[[profiles.default.segments]]
name = "whales"
m = [3, 3]
[[profiles.default.segments]]
name = "recent"
r = [5, 6]
[[profiles.default.segments]]
name = "rest"
"""
    )
    p = Profiles.from_toml(text).default
    assert p.segment_map.levels == (6, 2, 3)
    assert p.segment_map.segment(1, 1, 3) == "whales"
    assert p.segment_map.segment(6, 2, 2) == "recent"
    assert p.segment_map.segment(4, 2, 2) == "rest"


def test_fewer_levels_keep_the_standard_map() -> None:
    # Three thresholds: scores 1..4. The standard map still covers every triple, even though
    # rules that need a 5 (champions, new_customers) can no longer match.
    p = Profile(recency_days=[7, 30, 90], frequency_orders=[2], monetary=[Decimal(50)])
    assert p.segment_map.levels == (4, 2, 2)
    assert len(p.segment_map.items()) == 16
    for (r, f, m), name in p.segment_map.items():
        assert name == STANDARD_MAP.segment(r, f, m)
    assert p.segment_map.segment(1, 1, 1) == "lost"


def test_monetary_accepts_decimal_strings_and_floats_exactly() -> None:
    text = one_profile(
        """
recency_days = [15, 30, 45, 60]
frequency_orders = [2, 3, 5, 10]
monetary = [99.99, "250.5", 500, 1000.0001]
"""
    )
    p = Profiles.from_toml(text).default
    assert p.monetary_units == (999_900, 2_505_000, 5_000_000, 10_000_001)


def test_version_depends_on_content_not_name() -> None:
    a = Profiles.from_toml(one_profile(VALID_BODY, "a")).for_tenant("a")
    b = Profiles.from_toml(one_profile(VALID_BODY, "b")).for_tenant("b")
    c = Profiles.from_toml(one_profile(VALID_BODY + "frequency_window_days = 30\n", "a"))
    assert a.version == b.version
    assert a.version != c.for_tenant("a").version
    assert len(a.version) == 8


def test_profile_is_a_config_error() -> None:
    assert issubclass(ProfileError, ConfigError)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("recency_days", "[15, 15, 45, 60]"),
        ("recency_days", "[60, 45, 30, 15]"),
        ("frequency_orders", "[2, 3, 3, 10]"),
        ("frequency_orders", "[2, 5, 3, 10]"),
        ("monetary", "[100, 250, 250, 1000]"),
        ("monetary", "[100, 250.5, 250.4, 1000]"),
    ],
)
def test_non_increasing_thresholds_are_rejected(key: str, values: str) -> None:
    body = {
        "recency_days": "[15, 30, 45, 60]",
        "frequency_orders": "[2, 3, 5, 10]",
        "monetary": "[100, 250, 500, 1000]",
    }
    body[key] = values
    text = one_profile("\n".join(f"{k} = {v}" for k, v in body.items()))
    message = load_error(text)
    assert key in message
    assert "strictly increasing" in message
    assert "'default'" in message


def test_negative_thresholds_are_rejected() -> None:
    message = load_error(
        one_profile("recency_days = [15, 30]\nfrequency_orders = [2]\nmonetary = [-1, 5]")
    )
    assert "monetary" in message
    assert "negative" in message


def test_unmapped_triple_in_custom_map_is_named() -> None:
    # The documented one-rule map covers only R 4..5 x F 4..5: 111 is the first gap.
    message = load_error(CONTRACT_EXAMPLE + CUSTOM_MAP_RULES)
    assert "sofa-shop" in message
    assert "111" in message
    assert "unmapped" in message


def test_unmapped_triple_in_the_middle_is_named() -> None:
    text = one_profile(
        """
recency_days = [10]
frequency_orders = [2]
monetary = [10]
[[profiles.default.segments]]
name = "a"
r = [1, 1]
[[profiles.default.segments]]
name = "b"
f = [2, 2]
[[profiles.default.segments]]
name = "c"
m = [1, 1]
"""
    )
    message = load_error(text)
    assert "212" in message
    assert "unmapped" in message


def test_unreachable_rule_is_named() -> None:
    text = one_profile(
        VALID_BODY
        + """
[[profiles.default.segments]]
name = "all_recent"
r = [3, 5]
[[profiles.default.segments]]
name = "all_old"
r = [1, 2]
[[profiles.default.segments]]
name = "recent_whales"
r = [4, 5]
m = [5, 5]
"""
    )
    message = load_error(text)
    assert "recent_whales" in message
    assert "#3" in message
    assert "never match" in message


def test_rule_beyond_the_score_levels_is_unreachable() -> None:
    text = one_profile(
        VALID_BODY
        + """
[[profiles.default.segments]]
name = "six"
r = [6, 6]
[[profiles.default.segments]]
name = "rest"
"""
    )
    assert "six" in load_error(text)


def test_rule_range_partly_beyond_the_levels_is_rejected() -> None:
    # r = [4, 9] still matches R 4-5, but 9 says the author expects levels that do not exist.
    text = one_profile(
        VALID_BODY
        + """
[[profiles.default.segments]]
name = "top"
r = [4, 9]
[[profiles.default.segments]]
name = "rest"
"""
    )
    assert load_error(text).endswith(
        "segment rule #1 (top): r = [4, 9] goes beyond the profile's R levels 1..5"
    )


def test_rule_with_reversed_range_is_rejected() -> None:
    text = one_profile(
        VALID_BODY
        + """
[[profiles.default.segments]]
name = "x"
f = [4, 2]
"""
    )
    message = load_error(text)
    assert "f" in message
    assert "[4, 2]" in message


@pytest.mark.parametrize(
    "text",
    [
        "[profiles.default\nrecency_days = [1]",
        "[profiles.default]\nrecency_days = [1, 2",
        "[profiles.default]\nrecency_days = = 3",
        "not toml at all",
    ],
)
def test_bad_toml_is_rejected(text: str) -> None:
    assert "not valid TOML" in load_error(text)


def test_unknown_profile_key_is_rejected_and_named() -> None:
    message = load_error(one_profile(VALID_BODY + "recency_dayz = [1, 2]\n"))
    assert "recency_dayz" in message
    assert "'default'" in message


def test_unknown_rule_key_is_rejected_and_named() -> None:
    text = one_profile(
        VALID_BODY
        + """
[[profiles.default.segments]]
name = "all"
recency = [1, 5]
"""
    )
    assert "recency" in load_error(text)


def test_unknown_top_level_key_is_rejected() -> None:
    message = load_error("[profile.default]\nrecency_days = [1]\n")
    assert "profile" in message
    assert "unknown" in message


@pytest.mark.parametrize("text", ["", "# nothing\n", "[profiles]\n"])
def test_file_without_profiles_is_rejected(text: str) -> None:
    assert "profiles" in load_error(text)


def test_profile_that_is_not_a_table_is_rejected() -> None:
    assert "profiles.default" in load_error("[profiles]\ndefault = 3\n")


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1", "", "€"])
def test_bad_currency_is_rejected(currency: str) -> None:
    message = load_error(one_profile(VALID_BODY + f'currency = "{currency}"\n'))
    assert "currency" in message


def test_currency_must_be_a_string() -> None:
    assert "currency" in load_error(one_profile(VALID_BODY + "currency = 978\n"))


@pytest.mark.parametrize("missing", ["recency_days", "frequency_orders", "monetary"])
def test_missing_thresholds_are_rejected(missing: str) -> None:
    lines = [line for line in VALID_BODY.strip().splitlines() if not line.startswith(missing)]
    message = load_error(one_profile("\n".join(lines)))
    assert missing in message


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("recency_days = []", "recency_days"),
        ("recency_days = [1, 2, 3, 4, 5, 6, 7, 8, 9]", "recency_days"),
        ('frequency_orders = ["two"]', "frequency_orders"),
        ("frequency_orders = [2.5]", "frequency_orders"),
        ("frequency_window_days = 0", "frequency_window_days"),
        ("frequency_window_days = -30", "frequency_window_days"),
        ("monetary = [100.00001]", "monetary"),
        ("monetary = [nan, 1]", "monetary"),
        ("monetary = [1, inf]", "monetary"),
        ('monetary = ["lots"]', "monetary"),
        ("overdue_factor = -1.0", "overdue_factor"),
    ],
)
def test_bad_values_are_rejected_and_named(line: str, key: str) -> None:
    body = {
        "recency_days": "recency_days = [15, 30, 45, 60]",
        "frequency_orders": "frequency_orders = [2, 3, 5, 10]",
        "monetary": "monetary = [100, 250, 500, 1000]",
    }
    body[key] = line
    assert key in load_error(one_profile("\n".join(body.values())))


def test_more_than_five_levels_need_a_custom_map() -> None:
    text = one_profile(
        """
recency_days = [1, 2, 3, 4, 5]
frequency_orders = [2, 3, 5, 10]
monetary = [100, 250, 500, 1000]
"""
    )
    assert "custom" in load_error(text)


def test_missing_file_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ProfileError) as info:
        Profiles.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "cannot read" in message
    assert "\n" not in message


def test_directory_instead_of_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        Profiles.load(tmp_path)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(one_profile(VALID_BODY + 'currency = "eur"\n'), encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        Profiles.load(path)
    assert str(info.value).startswith(str(path))


def test_profile_name_must_be_a_possible_tenant() -> None:
    text = "[profiles.'my shop']\nrecency_days=[1]\nfrequency_orders=[1]\nmonetary=[1]\n"
    with pytest.raises(ProfileError, match="not a tenant name"):
        Profiles.from_toml(text)


def test_boolean_thresholds_are_not_numbers() -> None:
    text = "[profiles.x]\nrecency_days=[true, 5]\nfrequency_orders=[1]\nmonetary=[1]\n"
    with pytest.raises(ProfileError, match="recency_days"):
        Profiles.from_toml(text)


# -- automation triggers ------------------------------------------------------------------

PIZZERIA_TRIGGERS = """
[[profiles.pizzeria.triggers]]
name = "ask_testimonial"
when = "r_becomes"
value = 5

[[profiles.pizzeria.triggers]]
name = "winback_offer"
when = "enters"
segment = "at_risk"
from = ["loyal", "champions", "cant_lose_them"]

[[profiles.pizzeria.triggers]]
name = "vip_invitation"
when = "enters"
segment = "champions"

[[profiles.pizzeria.triggers]]
name = "cadence_reminder"
when = "overdue"
"""


def with_triggers(*triggers: str, body: str = VALID_BODY) -> str:
    tables = "".join(f"\n[[profiles.pizzeria.triggers]]\n{t}\n" for t in triggers)
    return one_profile(body, "pizzeria") + tables


def test_readme_triggers_load_in_order() -> None:
    p = Profiles.from_toml(one_profile(VALID_BODY, "pizzeria") + PIZZERIA_TRIGGERS)
    triggers = p.for_tenant("pizzeria").triggers
    assert [(t.name, t.when, t.value, t.segment, t.from_) for t in triggers] == [
        ("ask_testimonial", "r_becomes", 5, None, None),
        ("winback_offer", "enters", None, "at_risk", ["loyal", "champions", "cant_lose_them"]),
        ("vip_invitation", "enters", None, "champions", None),
        ("cadence_reminder", "overdue", None, None, None),
    ]
    assert p.default.triggers == []  # no triggers unless a profile names some


def test_triggers_use_the_custom_segment_map_and_levels() -> None:
    body = """
recency_days = [30, 365]
frequency_orders = [2, 3, 4, 6, 8, 12]
monetary = [500]
[[profiles.pizzeria.segments]]
name = "fans"
f = [5, 7]
[[profiles.pizzeria.segments]]
name = "everyone_else"
"""
    text = with_triggers(
        'name = "fan"\nwhen = "enters"\nsegment = "fans"\nfrom = ["everyone_else"]',
        'name = "top_r"\nwhen = "r_becomes"\nvalue = 3',
        'name = "f7"\nwhen = "f_reaches"\nvalue = 7',
        'name = "m2"\nwhen = "m_reaches"\nvalue = 2',
        body=body,
    )
    assert [t.name for t in Profiles.from_toml(text).for_tenant("pizzeria").triggers] == [
        "fan",
        "top_r",
        "f7",
        "m2",
    ]
    err = load_error(with_triggers('name = "x"\nwhen = "enters"\nsegment = "at_risk"', body=body))
    assert "triggers[0] 'x': segment 'at_risk' is not in the profile's segment map" in err
    err = load_error(with_triggers('name = "x"\nwhen = "m_reaches"\nvalue = 3', body=body))
    assert "triggers[0] 'x': value 3 is outside M's levels 1..2" in err


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (['name = "w"\nwhen = "becomes"\nvalue = 5'], "triggers[0] 'w': when: Input should be"),
        (['name = "w"\nwhen = "r_becomes"'], "triggers[0] 'w': 'r_becomes' needs a value"),
        (['name = "w"\nwhen = "f_reaches"'], "triggers[0] 'w': 'f_reaches' needs a value"),
        (['name = "w"\nwhen = "m_reaches"'], "triggers[0] 'w': 'm_reaches' needs a value"),
        (['name = "w"\nwhen = "enters"'], "triggers[0] 'w': 'enters' needs a segment"),
        (['name = "w"\nwhen = "leaves"'], "triggers[0] 'w': 'leaves' needs a segment"),
        (
            ['name = "w"\nwhen = "overdue"\nvalue = 1'],
            "triggers[0] 'w': 'overdue' takes no value",
        ),
        (
            ['name = "w"\nwhen = "enters"\nsegment = "lost"\nvalue = 1'],
            "triggers[0] 'w': 'enters' takes no value",
        ),
        (
            ['name = "w"\nwhen = "r_becomes"\nvalue = 5\nsegment = "lost"'],
            "triggers[0] 'w': 'r_becomes' takes no segment",
        ),
        (
            ['name = "w"\nwhen = "enters"\nsegment = "at_riks"'],
            "triggers[0] 'w': segment 'at_riks' is not in the profile's segment map",
        ),
        (
            ['name = "w"\nwhen = "enters"\nsegment = "at_risk"\nfrom = ["loyal", "loyals"]'],
            "triggers[0] 'w': from segment 'loyals' is not in the profile's segment map",
        ),
        (
            ['name = "w"\nwhen = "overdue"\nfrom = ["vip"]'],
            "triggers[0] 'w': from segment 'vip' is not in the profile's segment map",
        ),
        (
            ['name = "w"\nwhen = "leaves"\nsegment = "loyal"\nfrom = ["champions"]'],
            "triggers[0] 'w': 'leaves' takes no from",
        ),
        (
            ['name = "w"\nwhen = "enters"\nsegment = "loyal"\nfrom = []'],
            "triggers[0] 'w': from must name at least one segment",
        ),
        (['name = "w"\nwhen = "r_becomes"\nvalue = 6'], "value 6 is outside R's levels 1..5"),
        (['name = "w"\nwhen = "r_becomes"\nvalue = 0'], "value 0 is outside R's levels 1..5"),
        (['name = "w"\nwhen = "f_reaches"\nvalue = 6'], "value 6 is outside F's levels 1..5"),
        (['name = "w"\nwhen = "m_reaches"\nvalue = 9'], "value 9 is outside M's levels 1..5"),
        (['name = "w"\nwhen = "r_becomes"\nvalue = "5"'], "triggers[0] 'w': value: "),
        (['name = "w"\nwhen = "r_becomes"\nvalue = true'], "triggers[0] 'w': value: "),
        (
            ['name = "w"\nwhen = "overdue"', 'name = "w"\nwhen = "r_becomes"\nvalue = 1'],
            "triggers[1] 'w': duplicate trigger name",
        ),
        (
            ['name = "w"\nwhen = "overdue"\ncolour = "red"'],
            "triggers[0] 'w': colour: Extra inputs are not permitted",
        ),
        (['name = "a,b"\nwhen = "overdue"'], "triggers[0] 'a,b': name: String should match"),
        (['when = "overdue"'], "triggers[0]: name: Field required"),
    ],
)
def test_bad_triggers_are_rejected_naming_profile_and_trigger(
    tables: list[str], message: str
) -> None:
    err = load_error(with_triggers(*tables))
    assert err.startswith("profiles.toml: profile 'pizzeria': triggers[")
    assert message in err


def test_first_trigger_error_of_the_readme_typo() -> None:
    text = with_triggers(
        'name = "ask_testimonial"\nwhen = "r_becomes"\nvalue = 5',
        'name = "winback_offer"\nwhen = "enters"\nsegment = "at_riks"\nfrom = ["loyal"]',
    )
    assert load_error(text) == (
        "profiles.toml: profile 'pizzeria': triggers[1] 'winback_offer': "
        "segment 'at_riks' is not in the profile's segment map"
    )


def test_triggers_must_be_a_list_of_tables() -> None:
    err = load_error(one_profile(VALID_BODY + "triggers = 3\n", "pizzeria"))
    assert "profile 'pizzeria': triggers: Input should be a valid list" in err


# -- the churn model's keys (docs/churn.md) ------------------------------------------------------

CHURN_BODY = VALID_BODY + 'churn_model = "bgnbd"\n'


def test_churn_keys_load_with_their_defaults() -> None:
    p = Profiles.from_toml(one_profile(CHURN_BODY)).for_tenant("x")
    assert (p.churn_model, p.churn_horizon_days, p.p_alive_bands, p.churn_refit_minutes) == (
        "bgnbd",
        90,
        [0.2, 0.5, 0.8],
        60,
    )
    assert p.churn_fit is None
    body = CHURN_BODY.replace("bgnbd", "mbgnbd") + (
        "churn_horizon_days = 30\np_alive_bands = [0.1, 0.9]\nchurn_refit_minutes = 5\n"
    )
    p = Profiles.from_toml(one_profile(body)).for_tenant("x")
    assert (p.churn_model, p.churn_horizon_days, p.p_alive_bands, p.churn_refit_minutes) == (
        "mbgnbd",
        30,
        [0.1, 0.9],
        5,
    )


def test_a_profile_without_a_model_keeps_its_version() -> None:
    """The versions of profiles without churn_model are what they were before the model
    (computed on the release before it): their customers are not rescored on upgrade."""
    from tests.factories import PIZZERIA

    quantiles = Profiles.from_toml(one_profile('mode = "quantiles"')).for_tenant("x")
    assert (BUILTIN_DEFAULT.version, PIZZERIA.version, quantiles.version) == (
        "871c3f4b",
        "3caf6316",
        "e3ed2fde",
    )


@pytest.mark.parametrize(
    "extra",
    [
        'churn_model = "mbgnbd"\n',
        "churn_horizon_days = 30\n",
        "p_alive_bands = [0.3, 0.6]\n",
    ],
)
def test_the_churn_keys_change_the_version(extra: str) -> None:
    base = Profiles.from_toml(one_profile(CHURN_BODY)).for_tenant("x")
    body = VALID_BODY + extra if "churn_model" in extra else CHURN_BODY + extra
    changed = Profiles.from_toml(one_profile(body)).for_tenant("x")
    assert changed.version != base.version
    no_model = Profiles.from_toml(one_profile(VALID_BODY)).for_tenant("x")
    assert base.version != no_model.version


def test_a_new_fit_changes_the_version_the_refit_cadence_does_not() -> None:
    from worker.rules.churn import Fit, Params

    profiles = Profiles.from_toml(one_profile(CHURN_BODY))
    before = profiles.for_tenant("x").version
    fit = Fit("bgnbd", Params(0.2, 30.0, 0.8, 2.4), -10.0, 100, 100, 1, 0)
    after = profiles.use_fit("default", fit)
    assert after.churn_fit == fit and after.version != before
    assert profiles.for_tenant("x") is after
    refit = Profiles.from_toml(one_profile(CHURN_BODY + "churn_refit_minutes = 5\n"))
    assert refit.for_tenant("x").version == before
    # a fit of another model (the profile changed model since) is not used
    other = Fit("mbgnbd", Params(0.2, 30.0, 0.8, 2.4), -10.0, 100, 100, 1, 0)
    assert profiles.use_fit("default", other).churn_fit is None


def test_a_quantile_profile_keeps_its_fit_with_new_cut_points() -> None:
    from worker.rules.churn import Fit, Params

    profiles = Profiles.from_toml(one_profile('mode = "quantiles"\nchurn_model = "mbgnbd"\n'))
    fit = Fit("mbgnbd", Params(0.2, 30.0, 0.8, 2.4), -10.0, 100, 100, 1, 0)
    profiles.use_fit("default", fit)
    assert profiles.use_cuts("default", None).churn_fit == fit
    assert profiles.for_tenant("x").churn_model == "mbgnbd"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('churn_model = "pareto"\n', "churn_model: Input should be 'bgnbd' or 'mbgnbd'"),
        ("churn_horizon_days = 30\n", 'churn_horizon_days need(s) churn_model = "bgnbd"'),
        ("p_alive_bands = [0.5]\n", "p_alive_bands need(s) churn_model"),
        ("churn_refit_minutes = 5\n", "churn_refit_minutes need(s) churn_model"),
        ('churn_model = "bgnbd"\nchurn_horizon_days = 0\n', "churn_horizon_days: Input should"),
        ('churn_model = "bgnbd"\nchurn_refit_minutes = 0\n', "churn_refit_minutes: Input should"),
        (
            'churn_model = "bgnbd"\np_alive_bands = [0.5, 0.5]\n',
            "p_alive_bands must be strictly increasing, got [0.5, 0.5]",
        ),
        (
            'churn_model = "bgnbd"\np_alive_bands = [0.0, 0.5]\n',
            "p_alive_bands must be between 0 and 1 (exclusive), got [0.0, 0.5]",
        ),
        (
            'churn_model = "bgnbd"\np_alive_bands = [0.5, 1]\n',
            "p_alive_bands must be between 0 and 1 (exclusive)",
        ),
        ('churn_model = "bgnbd"\np_alive_bands = []\n', "p_alive_bands: List should have"),
        ('churn_model = "bgnbd"\nchurn_fit = 1\n', "churn_fit is not a profile key"),
    ],
)
def test_bad_churn_keys_are_rejected_and_named(body: str, message: str) -> None:
    err = load_error(one_profile(VALID_BODY + body))
    assert err.startswith("profiles.toml: profile 'default': ")
    assert message in err


def test_p_alive_below_triggers() -> None:
    body = CHURN_BODY
    ok = Profiles.from_toml(
        with_triggers('name = "slipping"\nwhen = "p_alive_below"\nvalue = 0.5', body=body)
    )
    (t,) = ok.for_tenant("pizzeria").triggers
    assert (t.when, t.value) == ("p_alive_below", 0.5)
    for trigger, message in [
        ('name = "w"\nwhen = "p_alive_below"', "'p_alive_below' needs a value"),
        (
            'name = "w"\nwhen = "p_alive_below"\nvalue = 0.3',
            "value 0.3 is not one of p_alive_bands",
        ),
        ('name = "w"\nwhen = "r_becomes"\nvalue = 0.5', "'r_becomes' needs an integer value"),
        ('name = "w"\nwhen = "p_alive_below"\nvalue = "0.5"', "value: Input should be a valid"),
    ]:
        assert message in load_error(with_triggers(trigger, body=body))
    no_model = with_triggers('name = "w"\nwhen = "p_alive_below"\nvalue = 0.5')
    assert 'p_alive_below needs churn_model = "bgnbd" or "mbgnbd"' in load_error(no_model)
