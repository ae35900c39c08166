"""Segment maps (docs/profiles.md): the standard map and SegmentMap validation."""

from __future__ import annotations

from itertools import product

import pytest

from worker.errors import ProfileError
from worker.rules.segments import STANDARD_MAP, STANDARD_SEGMENTS, Rule, SegmentMap

# The 11 documented names, in the documented order.
CONTRACT_SEGMENTS = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose_them",
    "hibernating",
    "lost",
)
ALL_TRIPLES = list(product(range(1, 6), repeat=3))


def test_all_triples_has_125_entries() -> None:
    assert len(ALL_TRIPLES) == 125
    assert len(set(ALL_TRIPLES)) == 125


def test_standard_map_maps_every_one_of_the_125_triples() -> None:
    table = dict(STANDARD_MAP.items())
    assert set(table) == set(ALL_TRIPLES)
    for r, f, m in ALL_TRIPLES:
        assert STANDARD_MAP.segment(r, f, m) in CONTRACT_SEGMENTS


def test_standard_map_uses_exactly_the_11_contract_names_and_all_are_reachable() -> None:
    reached = {STANDARD_MAP.segment(*t) for t in ALL_TRIPLES}
    assert reached == set(CONTRACT_SEGMENTS)
    assert len(reached) == 11
    assert set(STANDARD_SEGMENTS) == set(CONTRACT_SEGMENTS)
    assert len(STANDARD_SEGMENTS) == 11
    assert set(STANDARD_MAP.names) == set(CONTRACT_SEGMENTS)


@pytest.mark.parametrize(
    ("rfm", "segment"),
    [
        ("555", "champions"),
        ("512", "new_customers"),
        ("124", "at_risk"),
        ("111", "lost"),
    ],
)
def test_standard_map_contract_examples(rfm: str, segment: str) -> None:
    r, f, m = (int(c) for c in rfm)
    assert STANDARD_MAP.segment(r, f, m) == segment


def test_standard_map_is_five_levels_per_dimension() -> None:
    assert STANDARD_MAP.levels == (5, 5, 5)


def test_standard_map_has_no_entries_outside_1_to_5() -> None:
    for bad in [(0, 1, 1), (6, 5, 5), (5, 6, 5), (5, 5, 6)]:
        with pytest.raises(KeyError):
            STANDARD_MAP.segment(*bad)


# -- Rule ---------------------------------------------------------------------------------


def test_rule_without_ranges_matches_anything() -> None:
    rule = Rule("any")
    assert all(rule.matches(*t) for t in ALL_TRIPLES)


def test_rule_ranges_are_inclusive_and_independent() -> None:
    rule = Rule("x", r=(2, 3), m=(5, 5))
    assert rule.matches(2, 1, 5)
    assert rule.matches(3, 5, 5)
    assert not rule.matches(1, 1, 5)
    assert not rule.matches(4, 1, 5)
    assert not rule.matches(2, 1, 4)
    matched = [t for t in ALL_TRIPLES if rule.matches(*t)]
    assert len(matched) == 2 * 5 * 1


# -- SegmentMap validation ----------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    seg = SegmentMap([Rule("top", r=(5, 5)), Rule("rest")])
    assert seg.segment(5, 1, 1) == "top"
    assert seg.segment(5, 5, 5) == "top"
    assert seg.segment(4, 5, 5) == "rest"
    assert seg.names == ("top", "rest")


def test_repeated_rule_names_are_listed_once() -> None:
    seg = SegmentMap([Rule("a", r=(1, 2)), Rule("b", r=(3, 3)), Rule("a")])
    assert seg.names == ("a", "b")
    assert seg.segment(5, 5, 5) == "a"


def test_empty_rule_list_is_rejected() -> None:
    with pytest.raises(ProfileError, match="at least one rule"):
        SegmentMap([])


def test_unmapped_triple_is_named() -> None:
    # Everything is covered except (3, 2, 1).
    rules = [
        Rule("low", r=(1, 2)),
        Rule("high", r=(4, 5)),
        Rule("mid_f1", r=(3, 3), f=(1, 1)),
        Rule("mid_f2", r=(3, 3), f=(2, 2), m=(2, 5)),
        Rule("mid_f3", r=(3, 3), f=(3, 5)),
    ]
    with pytest.raises(ProfileError) as info:
        SegmentMap(rules)
    message = str(info.value)
    assert "321" in message
    assert "unmapped" in message
    assert "\n" not in message


def test_unmapped_triple_respects_levels() -> None:
    # With 2 R levels, a rule covering only R 1..2 is total; with 3 it is not.
    rules = [Rule("only", r=(1, 2))]
    assert len(SegmentMap(rules, (2, 2, 2)).items()) == 8
    with pytest.raises(ProfileError, match="311"):
        SegmentMap(rules, (3, 2, 2))


def test_shadowed_rule_is_named() -> None:
    with pytest.raises(ProfileError) as info:
        SegmentMap([Rule("everyone"), Rule("never_me", r=(5, 5))])
    message = str(info.value)
    assert "never_me" in message
    assert "#2" in message
    assert "never match" in message
    assert "\n" not in message


def test_partially_shadowed_rule_is_fine() -> None:
    seg = SegmentMap([Rule("a", r=(1, 3)), Rule("b", r=(3, 5))], (5, 1, 1))
    assert [seg.segment(r, 1, 1) for r in range(1, 6)] == ["a", "a", "a", "b", "b"]
    # A catch-all after two rules that already cover everything never matches: rejected.
    with pytest.raises(ProfileError, match=r"#3 \(c\)"):
        SegmentMap([Rule("a", r=(1, 3)), Rule("b", r=(3, 5)), Rule("c")])


def test_rule_outside_the_score_levels_can_never_match() -> None:
    with pytest.raises(ProfileError, match=r"six"):
        SegmentMap([Rule("six", r=(6, 6)), Rule("rest")])
    # With 6 R levels it is reachable.
    seg = SegmentMap([Rule("six", r=(6, 6)), Rule("rest")], (6, 5, 5))
    assert seg.segment(6, 1, 1) == "six"
    assert seg.segment(5, 1, 1) == "rest"
    assert len(seg.items()) == 150


def test_unreachable_rules_allowed_when_check_disabled() -> None:
    seg = SegmentMap([Rule("everyone"), Rule("never")], check_reachable=False)
    assert {name for _, name in seg.items()} == {"everyone"}
    # Totality is still checked.
    with pytest.raises(ProfileError, match="unmapped"):
        SegmentMap([Rule("some", r=(1, 1))], check_reachable=False)


def test_standard_rules_on_fewer_levels_still_cover_every_triple() -> None:
    seg = SegmentMap(STANDARD_MAP.rules, (3, 4, 2), check_reachable=False)
    assert len(seg.items()) == 3 * 4 * 2
    for (r, f, m), name in seg.items():
        assert name == STANDARD_MAP.segment(r, f, m)
