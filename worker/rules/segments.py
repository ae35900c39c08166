"""Segment maps: rules from (R, F, M) score triples to segment names. Pure."""

from __future__ import annotations

from collections.abc import ItemsView, Sequence
from dataclasses import dataclass
from itertools import product

from worker.errors import ProfileError

Triple = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Rule:
    """A segment rule: each dimension is an inclusive range; None matches anything."""

    name: str
    r: tuple[int, int] | None = None
    f: tuple[int, int] | None = None
    m: tuple[int, int] | None = None

    def matches(self, r: int, f: int, m: int) -> bool:
        return all(
            rng is None or rng[0] <= v <= rng[1]
            for rng, v in ((self.r, r), (self.f, f), (self.m, m))
        )


# The standard map, first matching rule wins. It reads as the classic R x F grid, with
# M splitting the quiet one- and two-time buyers: big spenders among them are at risk,
# the others hibernating (R=2) or lost (R=1).
STANDARD_RULES: tuple[Rule, ...] = (
    Rule("champions", r=(5, 5), f=(4, 5)),
    Rule("loyal", r=(3, 4), f=(4, 5)),
    Rule("potential_loyalist", r=(4, 5), f=(2, 3)),
    Rule("new_customers", r=(5, 5), f=(1, 1)),
    Rule("promising", r=(4, 4), f=(1, 1)),
    Rule("need_attention", r=(3, 3), f=(3, 3)),
    Rule("about_to_sleep", r=(3, 3), f=(1, 2)),
    Rule("cant_lose_them", r=(1, 2), f=(5, 5)),
    Rule("at_risk", r=(1, 2), f=(3, 4)),
    Rule("at_risk", r=(1, 2), f=(1, 2), m=(4, 5)),
    Rule("hibernating", r=(2, 2), f=(1, 2)),
    Rule("lost", r=(1, 1), f=(1, 2)),
)

STANDARD_SEGMENTS: tuple[str, ...] = tuple(dict.fromkeys(rule.name for rule in STANDARD_RULES))


class SegmentMap:
    """A validated, total map from every score triple of a profile to a segment name."""

    __slots__ = ("_table", "levels", "names", "rules")

    def __init__(
        self, rules: Sequence[Rule], levels: Triple = (5, 5, 5), *, check_reachable: bool = True
    ) -> None:
        """`levels` is the number of score levels per dimension (thresholds + 1).

        `check_reachable=False` skips the "every rule can match" check: the standard map
        used on fewer than 5 levels (it still covers every triple, some rules just go unused).
        """
        if not rules:
            raise ProfileError("a segment map needs at least one rule")
        self.rules = tuple(rules)
        self.levels = levels
        table: dict[Triple, str] = {}
        useful = [False] * len(self.rules)
        for r, f, m in product(*(range(1, n + 1) for n in levels)):
            triple = (r, f, m)
            for i, rule in enumerate(self.rules):
                if rule.matches(*triple):
                    table[triple] = rule.name
                    useful[i] = True
                    break
            else:
                raise ProfileError(f"segment map leaves rfm {_fmt(triple)} unmapped")
        for i, rule in enumerate(self.rules):
            if check_reachable and not useful[i]:
                raise ProfileError(
                    f"segment rule #{i + 1} ({rule.name}) can never match: "
                    "earlier rules or the score ranges cover all of it"
                )
        self._table = table
        self.names = tuple(dict.fromkeys(rule.name for rule in self.rules))

    def segment(self, r: int, f: int, m: int) -> str:
        return self._table[(r, f, m)]

    def items(self) -> ItemsView[Triple, str]:
        return self._table.items()


def _fmt(triple: Triple) -> str:
    return "".join(str(v) for v in triple)


STANDARD_MAP = SegmentMap(STANDARD_RULES)
