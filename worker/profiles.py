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
from typing import Annotated, Self

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
    segment_map: SegmentMap = Field(default=STANDARD_MAP, exclude=True)

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
        return self

    @cached_property
    def monetary_units(self) -> tuple[int, ...]:
        """Monetary thresholds in exact money units (see worker.money)."""
        return tuple(to_units(v) for v in self.monetary)

    @property
    def version(self) -> str:
        """A short hash of the profile's content (what the rescore feature will compare)."""
        body = self.model_dump_json(exclude={"name"}).encode()
        return hashlib.sha256(body).hexdigest()[:12]


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
