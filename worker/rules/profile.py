"""One tenant's scoring profile: the [profiles.NAME] table of the TOML file, validated,
and what scoring derives from it (its version, quantile thresholds, churn fit). Pure."""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from functools import cached_property
from itertools import pairwise
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    model_validator,
)

from worker.errors import ProfileError
from worker.rules.churn import ChurnModel, Fit, ValueModel
from worker.rules.money import to_units
from worker.rules.profile_specs import VALUE_KINDS, RuleSpec, TriggerSpec, trigger_specs
from worker.rules.quantiles import QUINTILES, Cuts
from worker.rules.segments import STANDARD_MAP, SegmentMap

DEFAULT_TENANT = "default"
MAX_LEVELS = 9  # scores stay single digits, so "rfm" is a plain concatenation
THRESHOLD_KEYS = ("recency_days", "frequency_orders", "monetary")
QUANTILE_KEYS = ("quantiles_every_minutes", "quantiles_sample")
# The churn model's settings besides churn_model itself (docs/churn.md).
CHURN_KEYS = ("churn_horizon_days", "p_alive_bands", "churn_refit_minutes")
DEFAULT_P_ALIVE_BANDS = (0.2, 0.5, 0.8)
# The value model's settings besides value_model itself (docs/profiles.md).
VALUE_KEYS = ("value_bands", "value_at_risk")
# The segments whose expected value is "at risk" (the page, /v1/matrix), by default those
# of them the profile's segment map has.
DEFAULT_VALUE_AT_RISK = ("at_risk", "cant_lose_them", "about_to_sleep")
# Before a quantile profile's first cut points, every customer scores 333: R, F and M
# thresholds that no value passes on one side and every value reaches on the other.
NEVER = 10**18  # days, orders, money units no customer reaches (decay: never due by R)
PLACEHOLDER_RECENCY = [-NEVER, -NEVER, NEVER, NEVER]  # R = 3 for any days
PLACEHOLDER_AT_LEAST = [0, 0, NEVER, NEVER]  # F, M = 3 for any value >= 0


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
    # The value model (Gamma-Gamma on top of the churn model): none unless named; its
    # bands are amounts in the profile's currency units (no bands: no value band).
    value_model: ValueModel | None = None
    value_bands: list[float] | None = Field(default=None, min_length=1, max_length=MAX_LEVELS - 1)
    value_at_risk: list[str] | None = Field(default=None, min_length=1)
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
            return {**data, "triggers": trigger_specs(data["triggers"])}
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
        self._check_value_at_risk()
        return self

    def _check_value_at_risk(self) -> None:
        unknown = [n for n in self.value_at_risk or [] if n not in self.segment_map.names]
        if unknown:
            raise ValueError(f"value_at_risk: {unknown} not in the profile's segment map")

    @property
    def at_risk_segments(self) -> list[str]:
        """The segments whose customers' expected value is the value at risk."""
        if self.value_at_risk is not None:
            return list(self.value_at_risk)
        return [n for n in DEFAULT_VALUE_AT_RISK if n in self.segment_map.names]

    def _check_churn(self, derived: bool) -> None:
        if derived:
            return
        self._check_value()
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

    def _check_value(self) -> None:
        if self.value_model is None:
            given = [k for k in VALUE_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(f'{", ".join(given)} need(s) value_model = "gamma_gamma"')
            return
        if self.churn_model is None:
            # expected_value is the expected order value times the churn model's orders
            raise ValueError('value_model needs churn_model = "bgnbd" or "mbgnbd"')
        bands = self.value_bands or []
        if any(not 0 < v < math.inf for v in bands):
            raise ValueError(f"value_bands must be positive amounts, got {bands}")
        if any(b <= a for a, b in pairwise(bands)):
            raise ValueError(f"value_bands must be strictly increasing, got {bands}")

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
            if t.when == "value_above":
                self._check_value_above(label, t.value)
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

    def _check_value_above(self, label: str, value: float | None) -> None:
        if self.value_model is None:
            raise ValueError(f'{label}: value_above needs value_model = "gamma_gamma"')
        # Like P(alive), the expected value is watched at its band bounds only.
        if not self.value_bands:
            raise ValueError(
                f"{label}: value_above needs value_bands (the expected value is watched "
                "at the band bounds)"
            )
        if value not in self.value_bands:
            raise ValueError(
                f"{label}: value {value} is not one of value_bands {self.value_bands} "
                "(the expected value is watched at the band bounds)"
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
        # a changed profile), the refit cadence does not (no score depends on it). The
        # value model likewise; its spend fit is part of the churn fit and its version.
        body = self.model_dump_json(
            exclude={
                "name",
                "currency",
                "triggers",
                "mode",
                *QUANTILE_KEYS,
                "churn_model",
                *CHURN_KEYS,
                "value_model",
                *VALUE_KEYS,
            }
        ).encode()
        if self.churn_model is not None:
            fit = self.churn_fit
            body += (
                f"|churn:{self.churn_model}:{self.churn_horizon_days}:{self.p_alive_bands}:"
                f"{0 if fit is None else fit.version}"
            ).encode()
        if self.value_model is not None:
            body += f"|value:{self.value_model}:{self.value_bands}".encode()
        return hashlib.sha256(body).hexdigest()[:8]

    def with_fit(self, fit: Fit | None) -> Profile:
        """This profile scoring P(alive) (and with a value model, the expected value) with
        `fit` (None: no fit yet, both null); its `version` follows the fit's. A fit of
        another model than the profile's is ignored."""
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
        if self.value_model is None:
            for key in ("value_model", *VALUE_KEYS):
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
