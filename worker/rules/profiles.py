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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.errors import ProfileError
from worker.rules.churn import ChurnModel, Fit
from worker.rules.money import to_units
from worker.rules.quantiles import QUINTILES, Cuts
from worker.rules.segments import STANDARD_MAP, Rule, SegmentMap

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_LEVELS = 9  # scores stay single digits, so "rfm" is a plain concatenation
THRESHOLD_KEYS = ("recency_days", "frequency_orders", "monetary")
QUANTILE_KEYS = ("quantiles_every_minutes", "quantiles_sample")
# The churn model's settings besides churn_model itself (docs/churn.md).
CHURN_KEYS = ("churn_horizon_days", "p_alive_bands", "churn_refit_minutes")
DEFAULT_P_ALIVE_BANDS = (0.2, 0.5, 0.8)
# Before a quantile profile's first cut points, every customer scores 333: R, F and M
# thresholds that no value passes on one side and every value reaches on the other.
NEVER = 10**18  # days, orders, money units no customer reaches (decay: never due by R)
PLACEHOLDER_RECENCY = [-NEVER, -NEVER, NEVER, NEVER]  # R = 3 for any days
PLACEHOLDER_AT_LEAST = [0, 0, NEVER, NEVER]  # F, M = 3 for any value >= 0

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


TriggerKind = Literal[
    "r_becomes", "f_reaches", "m_reaches", "enters", "leaves", "overdue", "p_alive_below"
]
# Which score dimension a `value` trigger watches, and which threshold list sets its levels.
VALUE_KINDS: dict[str, tuple[str, str]] = {
    "r_becomes": ("r", "recency_days"),
    "f_reaches": ("f", "frequency_orders"),
    "m_reaches": ("m", "monetary"),
}
SEGMENT_KINDS = ("enters", "leaves")


class TriggerSpec(BaseModel):
    """One automation trigger (docs/records-and-triggers.md; evaluated in worker/rules/triggers.py).

    Checked against its profile (levels, segment names) by Profile, which knows both.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # No commas: the names travel comma-separated in the `rfm.triggers` header.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    when: TriggerKind
    value: int | float | None = None  # an integer level; a float for p_alive_below only
    segment: str | None = None
    from_: list[str] | None = Field(default=None, alias="from")

    @field_validator("value", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # strict: TOML's "5" or true is a mistake, not a 5 or a 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("Input should be a valid number")
        return value

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> Self:
        valued = self.when in VALUE_KINDS or self.when == "p_alive_below"
        if valued and self.value is None:
            raise ValueError(f"'{self.when}' needs a value")
        if not valued and self.value is not None:
            raise ValueError(f"'{self.when}' takes no value")
        if self.when in VALUE_KINDS and not isinstance(self.value, int):
            raise ValueError(f"'{self.when}' needs an integer value (a score level)")
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
    """One tenant's scoring rules (docs/profiles.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = DEFAULT_TENANT
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    # "quantiles": R, F, M by quintile of the tenant's customer base (worker/rules/quantiles.py);
    # the three threshold lists are then omitted and come from the stored cut points.
    mode: Literal["thresholds", "quantiles"] = "thresholds"
    # Required in thresholds mode (checked below: empty here means omitted).
    recency_days: list[StrictInt] = Field(default_factory=list, max_length=MAX_LEVELS - 1)
    frequency_orders: list[StrictInt] = Field(default_factory=list, max_length=MAX_LEVELS - 1)
    frequency_window_days: StrictInt | None = Field(default=None, gt=0)
    monetary: list[Annotated[Decimal, Field(decimal_places=4)]] = Field(
        default_factory=list, max_length=MAX_LEVELS - 1
    )
    quantiles_every_minutes: StrictInt = Field(default=60, gt=0)
    quantiles_sample: StrictInt = Field(default=100_000, ge=100)
    overdue_factor: float = Field(default=2.0, ge=0)
    # The churn model (worker/rules/churn/, docs/churn.md): none unless named.
    churn_model: ChurnModel | None = None
    churn_horizon_days: StrictInt = Field(default=90, gt=0)
    p_alive_bands: list[float] = Field(
        default_factory=lambda: list(DEFAULT_P_ALIVE_BANDS), min_length=1, max_length=MAX_LEVELS - 1
    )
    churn_refit_minutes: StrictInt = Field(default=60, gt=0)
    # The fit the profile scores P(alive) with (`with_fit`); never read from TOML.
    churn_fit: Fit | None = Field(default=None, exclude=True)
    segments: list[RuleSpec] | None = None
    triggers: list[TriggerSpec] = Field(default_factory=list)
    segment_map: SegmentMap = Field(default=STANDARD_MAP, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _triggers_one_by_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and "churn_fit" in data:
            raise ValueError("churn_fit is not a profile key (fits are computed and stored)")
        if isinstance(data, dict) and "triggers" in data:
            return {**data, "triggers": _trigger_specs(data["triggers"])}
        return data

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        # `scored_by` builds the thresholds of quantile cut points: equal cut points (ties)
        # and negative days (orders slightly in the future) are valid there, and only there.
        derived = bool(info.context and info.context.get("derived"))
        self._check_churn(derived)
        if self.mode == "quantiles":
            given = [k for k in THRESHOLD_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f'mode = "quantiles" takes no {", ".join(given)}: the thresholds are '
                    "the quintiles of the tenant's customers"
                )
            levels = (QUINTILES, QUINTILES, QUINTILES)
        else:
            given = [k for k in QUANTILE_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(f'{", ".join(given)} need(s) mode = "quantiles"')
            for key in THRESHOLD_KEYS:
                values = getattr(self, key)
                if not values:
                    raise ValueError(
                        f"{key} is required (a list of 1 to {MAX_LEVELS - 1} thresholds), "
                        'unless mode = "quantiles"'
                    )
                if derived:
                    if any(b < a for a, b in pairwise(values)):
                        raise ValueError(f"{key} must be non-decreasing, got {values}")
                    continue
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
        for i, spec in enumerate(self.segments or [], 1):
            for dim, n in zip(("r", "f", "m"), levels, strict=True):
                rng = getattr(spec, dim)
                if rng is not None and rng[1] > n:
                    raise ValueError(
                        f"segment rule #{i} ({spec.name}): {dim} = {rng} goes beyond the "
                        f"profile's {dim.upper()} levels 1..{n}"
                    )
        try:
            seg_map = SegmentMap(rules, levels, check_reachable=self.segments is not None)
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        object.__setattr__(self, "segment_map", seg_map)
        self._check_triggers(levels)
        return self

    def _check_churn(self, derived: bool) -> None:
        if derived:
            return
        if self.churn_model is None:
            given = [k for k in CHURN_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(f'{", ".join(given)} need(s) churn_model = "bgnbd" or "mbgnbd"')
            return
        bands = self.p_alive_bands
        if any(not 0 < v < 1 for v in bands):
            raise ValueError(f"p_alive_bands must be between 0 and 1 (exclusive), got {bands}")
        if any(b <= a for a, b in pairwise(bands)):
            raise ValueError(f"p_alive_bands must be strictly increasing, got {bands}")

    def _check_triggers(self, levels: tuple[int, int, int]) -> None:
        """What a trigger can only be checked against: levels and segment names."""
        seen: set[str] = set()
        for i, t in enumerate(self.triggers):
            label = f"triggers[{i}] {t.name!r}"
            if t.name in seen:
                raise ValueError(f"{label}: duplicate trigger name")
            seen.add(t.name)
            if t.when == "p_alive_below":
                if self.churn_model is None:
                    raise ValueError(
                        f'{label}: p_alive_below needs churn_model = "bgnbd" or "mbgnbd"'
                    )
                # P(alive) is watched at the band bounds (the sweeper wakes a customer
                # there), so a crossing is only seen at one of them.
                if t.value not in self.p_alive_bands:
                    raise ValueError(
                        f"{label}: value {t.value} is not one of p_alive_bands "
                        f"{self.p_alive_bands} (P(alive) is watched at the band bounds)"
                    )
                continue
            if t.value is not None:
                dim, key = VALUE_KINDS[t.when]
                top = levels["rfm".index(dim)]
                if not 1 <= t.value <= top:
                    why = (
                        "quintiles"
                        if self.mode == "quantiles"
                        else f"{key} has {top - 1} thresholds"
                    )
                    raise ValueError(
                        f"{label}: value {t.value} is outside {dim.upper()}'s levels 1..{top}"
                        f" ({why})"
                    )
            for segment in ([t.segment] if t.segment else []) + (t.from_ or []):
                if segment not in self.segment_map.names:
                    where = "segment" if segment == t.segment else "from segment"
                    raise ValueError(
                        f"{label}: {where} {segment!r} is not in the profile's segment map"
                    )

    @cached_property
    def monetary_units(self) -> tuple[int, ...]:
        """Monetary thresholds in exact money units (see worker.rules.money)."""
        return tuple(to_units(v) for v in self.monetary)

    @cached_property
    def version(self) -> str:
        """A short hash of the profile's content, stored with every customer's scores: a
        customer whose version differs from its profile's is rescored (worker/services/marking.py).
        Only what scores depend on counts: editing a trigger rescores nobody."""
        # The mode and quantile settings are left out: a quantile profile scores with the
        # thresholds of `scored_by`, whose version follows its cut points; and a thresholds
        # profile keeps the version it had before quantile mode existed. Likewise a profile
        # without a churn model keeps the version it had before churn models existed; with
        # one, the model, horizon, bands and fit version count (a new fit is applied like
        # a changed profile), the refit cadence does not (no score depends on it).
        body = self.model_dump_json(
            exclude={
                "name",
                "currency",
                "triggers",
                "mode",
                *QUANTILE_KEYS,
                "churn_model",
                *CHURN_KEYS,
            }
        ).encode()
        if self.churn_model is not None:
            fit = self.churn_fit
            body += (
                f"|churn:{self.churn_model}:{self.churn_horizon_days}:{self.p_alive_bands}:"
                f"{0 if fit is None else fit.version}"
            ).encode()
        return hashlib.sha256(body).hexdigest()[:8]

    def with_fit(self, fit: Fit | None) -> Profile:
        """This profile scoring P(alive) with `fit` (None: no fit yet, P(alive) null); its
        `version` follows the fit's. A fit of another model than the profile's is ignored."""
        if self.churn_model is None:
            return self
        if fit is not None and fit.model != self.churn_model:
            fit = None
        copy = self.model_copy()
        copy.__dict__.pop("version", None)  # a cached_property: computed again with the fit
        object.__setattr__(copy, "churn_fit", fit)
        return copy

    def scored_by(self, cuts: Cuts | None) -> Profile:
        """The thresholds-mode profile a quantile profile scores with, given its current cut
        points (worker/rules/quantiles.py): same name, currency, window, overdue factor, segments
        and triggers; thresholds from the cuts (non-decreasing: ties make equal ones). Its
        `version` changes with the cut points, so a new computation is applied like a
        changed profile (worker/services/marking.py). Without cuts (no population yet) every
        customer scores 333. A thresholds-mode profile is returned as it is."""
        if self.mode != "quantiles":
            return self
        if cuts is None:
            recency, frequency, monetary_units = (
                PLACEHOLDER_RECENCY,
                PLACEHOLDER_AT_LEAST,
                PLACEHOLDER_AT_LEAST,
            )
        else:
            recency = list(cuts.recency_days)
            frequency = [c + 1 for c in cuts.frequency_orders]
            monetary_units = [c + 1 for c in cuts.monetary]
        body = self.model_dump(
            exclude={"mode", "segment_map", *THRESHOLD_KEYS, *QUANTILE_KEYS}, by_alias=True
        )
        if self.churn_model is None:  # a profile without a model stays as it was
            for key in ("churn_model", *CHURN_KEYS):
                body.pop(key, None)
        body.update(
            recency_days=recency,
            frequency_orders=frequency,
            monetary=[Decimal(u).scaleb(-4) for u in monetary_units],
        )
        return Profile.model_validate(body, context={"derived": True}).with_fit(self.churn_fit)


# The built-in default: a general e-commerce shop, documented in docs/profiles.md.
BUILTIN_DEFAULT = Profile(
    recency_days=[30, 90, 180, 365],
    frequency_orders=[2, 3, 5, 10],
    monetary=[Decimal(100), Decimal(250), Decimal(500), Decimal(1000)],
)


class Profiles:
    """Profile lookup by tenant; tenants without a profile use `default`."""

    def __init__(self, profiles: Mapping[str, Profile]) -> None:
        self.configured = dict(profiles)  # as loaded: quantile profiles without thresholds
        self.configured.setdefault(DEFAULT_TENANT, BUILTIN_DEFAULT)
        self.cuts: dict[str, Cuts | None] = dict.fromkeys(self.quantile_names())
        self.fits: dict[str, Fit | None] = dict.fromkeys(self.churn_names())
        # What scoring uses: quantile profiles replaced by the thresholds of their cuts.
        self._profiles = {name: p.scored_by(None) for name, p in self.configured.items()}
        self.default = self._profiles[DEFAULT_TENANT]

    def for_tenant(self, tenant: str) -> Profile:
        """The profile the tenant's customers are scored with (thresholds mode always)."""
        return self._profiles.get(tenant, self.default)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def versions(self) -> dict[str, str]:
        """Each profile's version (name -> version): what the marking pass checks against."""
        return {name: self.for_tenant(name).version for name in self.names()}

    def quantile_names(self) -> list[str]:
        """The profiles with mode = "quantiles"."""
        return sorted(n for n, p in self.configured.items() if p.mode == "quantiles")

    def churn_names(self) -> list[str]:
        """The profiles with a churn model."""
        return sorted(n for n, p in self.configured.items() if p.churn_model is not None)

    def use_cuts(self, name: str, cuts: Cuts | None) -> Profile:
        """Score quantile profile `name` with these cut points from now on; returns the
        profile now used."""
        profile = self.configured[name]
        if profile.mode != "quantiles":
            raise ValueError(f"profile {name!r} is not in quantiles mode")
        self.cuts[name] = cuts
        return self._rebuild(name)

    def use_fit(self, name: str, fit: Fit | None) -> Profile:
        """Score P(alive) of profile `name` with this fit from now on; returns the profile
        now used."""
        if self.configured[name].churn_model is None:
            raise ValueError(f"profile {name!r} has no churn model")
        self.fits[name] = fit
        return self._rebuild(name)

    def _rebuild(self, name: str) -> Profile:
        profile = self.configured[name]
        scored = profile.scored_by(self.cuts.get(name)) if profile.mode == "quantiles" else profile
        self._profiles[name] = scored = scored.with_fit(self.fits.get(name))
        if name == DEFAULT_TENANT:
            self.default = scored
        return scored

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
