"""Scoring profiles: thresholds per tenant, loaded from TOML and validated. Pure."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from worker.errors import ProfileError
from worker.money import to_units
from worker.segments import STANDARD_MAP, Rule, SegmentMap

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_LEVELS = 9  # scores stay single digits, so "rfm" is a plain concatenation

Range = Annotated[list[int], Field(min_length=2, max_length=2)]


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    r: Range | None = None
    f: Range | None = None
    m: Range | None = None

    @model_validator(mode="after")
    def _ranges_ordered(self) -> Self:
        for dim in ("r", "f", "m"):
            rng = getattr(self, dim)
            if rng is not None and not 1 <= rng[0] <= rng[1]:
                raise ValueError(f"{dim} = {rng} must be [low, high] with 1 <= low <= high")
        return self

    def to_rule(self) -> Rule:
        def pair(v: list[int] | None) -> tuple[int, int] | None:
            return None if v is None else (v[0], v[1])

        return Rule(self.name, pair(self.r), pair(self.f), pair(self.m))


TriggerKind = Literal["r_becomes", "f_reaches", "m_reaches", "enters", "leaves", "overdue"]
# Which score dimension a `value` trigger watches, and which threshold list sets its levels.
VALUE_KINDS: dict[str, tuple[str, str]] = {
    "r_becomes": ("r", "recency_days"),
    "f_reaches": ("f", "frequency_orders"),
    "m_reaches": ("m", "monetary"),
}
SEGMENT_KINDS = ("enters", "leaves")


class TriggerSpec(BaseModel):
    """One automation trigger (README "Automation triggers"; evaluated in worker/triggers.py).

    Checked against its profile (levels, segment names) by Profile, which knows both.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # No commas: the names travel comma-separated in the `rfm.triggers` header.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    when: TriggerKind
    value: StrictInt | None = None
    segment: str | None = None
    from_: list[str] | None = Field(default=None, alias="from")

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> Self:
        if self.when in VALUE_KINDS and self.value is None:
            raise ValueError(f"'{self.when}' needs a value")
        if self.when not in VALUE_KINDS and self.value is not None:
            raise ValueError(f"'{self.when}' takes no value")
        if self.when in SEGMENT_KINDS and self.segment is None:
            raise ValueError(f"'{self.when}' needs a segment")
        if self.when not in SEGMENT_KINDS and self.segment is not None:
            raise ValueError(f"'{self.when}' takes no segment")
        if self.when == "leaves" and self.from_ is not None:
            raise ValueError("'leaves' takes no from (the segment left is the one before)")
        if self.from_ is not None and not self.from_:
            raise ValueError("from must name at least one segment")
        return self


def _trigger_specs(raw: object) -> object:
    """Validate each [[triggers]] table alone, so an error names the trigger."""
    if not isinstance(raw, list):
        return raw  # the field's own validation says what is wrong
    specs: list[object] = []
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"triggers[{i}]" + (f" {name!r}" if isinstance(name, str) else "")
        try:
            specs.append(
                item if isinstance(item, TriggerSpec) else TriggerSpec.model_validate(item)
            )
        except ValidationError as exc:
            raise ValueError(f"{label}: {_first_error(exc)}") from None
    return specs


class Profile(BaseModel):
    """One tenant's scoring rules (contract section 3)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = DEFAULT_TENANT
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    recency_days: list[StrictInt] = Field(min_length=1, max_length=MAX_LEVELS - 1)
    frequency_orders: list[StrictInt] = Field(min_length=1, max_length=MAX_LEVELS - 1)
    frequency_window_days: StrictInt | None = Field(default=None, gt=0)
    monetary: list[Annotated[Decimal, Field(decimal_places=4)]] = Field(
        min_length=1, max_length=MAX_LEVELS - 1
    )
    overdue_factor: float = Field(default=2.0, ge=0)
    segments: list[RuleSpec] | None = None
    triggers: list[TriggerSpec] = Field(default_factory=list)
    segment_map: SegmentMap = Field(default=STANDARD_MAP, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _triggers_one_by_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and "triggers" in data:
            return {**data, "triggers": _trigger_specs(data["triggers"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        for key in ("recency_days", "frequency_orders", "monetary"):
            values = getattr(self, key)
            if any(b <= a for a, b in pairwise(values)):
                raise ValueError(f"{key} must be strictly increasing, got {values}")
            if values[0] < 0:
                raise ValueError(f"{key} must not be negative, got {values}")
        levels = (
            len(self.recency_days) + 1,
            len(self.frequency_orders) + 1,
            len(self.monetary) + 1,
        )
        # The standard map is defined on 1..5; fewer levels are still covered by it.
        if self.segments is None and any(n > 5 for n in levels):
            raise ValueError("more than 5 score levels need a custom [[segments]] map")
        rules = (
            STANDARD_MAP.rules if self.segments is None else [s.to_rule() for s in self.segments]
        )
        try:
            seg_map = SegmentMap(rules, levels, check_reachable=self.segments is not None)
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        object.__setattr__(self, "segment_map", seg_map)
        self._check_triggers(levels)
        return self

    def _check_triggers(self, levels: tuple[int, int, int]) -> None:
        """What a trigger can only be checked against: levels and segment names."""
        seen: set[str] = set()
        for i, t in enumerate(self.triggers):
            label = f"triggers[{i}] {t.name!r}"
            if t.name in seen:
                raise ValueError(f"{label}: duplicate trigger name")
            seen.add(t.name)
            if t.value is not None:
                dim, key = VALUE_KINDS[t.when]
                top = levels["rfm".index(dim)]
                if not 1 <= t.value <= top:
                    raise ValueError(
                        f"{label}: value {t.value} is outside {dim.upper()}'s levels 1..{top}"
                        f" ({key} has {top - 1} thresholds)"
                    )
            for segment in ([t.segment] if t.segment else []) + (t.from_ or []):
                if segment not in self.segment_map.names:
                    where = "segment" if segment == t.segment else "from segment"
                    raise ValueError(
                        f"{label}: {where} {segment!r} is not in the profile's segment map"
                    )

    @cached_property
    def monetary_units(self) -> tuple[int, ...]:
        """Monetary thresholds in exact money units (see worker.money)."""
        return tuple(to_units(v) for v in self.monetary)

    @cached_property
    def version(self) -> str:
        """A short hash of the profile's content, stored with every customer's scores: a
        customer whose version differs from its profile's is rescored (worker/sweeper.py).
        Only what scores depend on counts: editing a trigger rescores nobody."""
        body = self.model_dump_json(exclude={"name", "currency", "triggers"}).encode()
        return hashlib.sha256(body).hexdigest()[:8]


# The built-in default: a general e-commerce shop. README documents it.
BUILTIN_DEFAULT = Profile(
    recency_days=[30, 90, 180, 365],
    frequency_orders=[2, 3, 5, 10],
    monetary=[Decimal(100), Decimal(250), Decimal(500), Decimal(1000)],
)


class Profiles:
    """Profile lookup by tenant; tenants without a profile use `default`."""

    def __init__(self, profiles: Mapping[str, Profile]) -> None:
        self._profiles = dict(profiles)
        self._profiles.setdefault(DEFAULT_TENANT, BUILTIN_DEFAULT)
        self.default = self._profiles[DEFAULT_TENANT]

    def for_tenant(self, tenant: str) -> Profile:
        return self._profiles.get(tenant, self.default)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    @classmethod
    def builtin(cls) -> Profiles:
        return cls({})

    @classmethod
    def from_toml(cls, text: str, source: str = "<profiles>") -> Profiles:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{source}: not valid TOML: {exc}") from None
        table = doc.get("profiles")
        extra = set(doc) - {"profiles"}
        if extra:
            raise ProfileError(f"{source}: unknown top-level key(s) {sorted(extra)}")
        if not isinstance(table, dict) or not table:
            raise ProfileError(f"{source}: expected at least one [profiles.NAME] table")
        profiles: dict[str, Profile] = {}
        for name, body in table.items():
            if not TENANT_NAME.fullmatch(name):
                raise ProfileError(
                    f"{source}: profile name {name!r} is not a tenant name "
                    "(1-100 of A-Z a-z 0-9 . _ -)"
                )
            if not isinstance(body, dict):
                raise ProfileError(f"{source}: profiles.{name} must be a table")
            try:
                profiles[name] = Profile.model_validate({**body, "name": name})
            except ValidationError as exc:
                raise ProfileError(f"{source}: profile '{name}': {_first_error(exc)}") from None
        return cls(profiles)

    @classmethod
    def load(cls, path: str | Path | None) -> Profiles:
        if path is None:
            return cls.builtin()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"cannot read profiles file {path}: {exc.strerror}") from None
        return cls.from_toml(text, str(path))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
