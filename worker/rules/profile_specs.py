"""The tables inside a profile: [[segments]] rules and [[triggers]], each validated alone
(what only the whole profile can check, Profile checks). Pure."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.rules.segments import Rule

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
    "r_becomes",
    "f_reaches",
    "m_reaches",
    "enters",
    "leaves",
    "overdue",
    "p_alive_below",
    "value_above",
]
# Which score dimension a `value` trigger watches, and which threshold list sets its levels.
VALUE_KINDS: dict[str, tuple[str, str]] = {
    "r_becomes": ("r", "recency_days"),
    "f_reaches": ("f", "frequency_orders"),
    "m_reaches": ("m", "monetary"),
}
SEGMENT_KINDS = ("enters", "leaves")
# Kinds whose value is one of the profile's band bounds (a probability, an amount).
BAND_KINDS = ("p_alive_below", "value_above")


class TriggerSpec(BaseModel):
    """One automation trigger (docs/records-and-triggers.md; evaluated in worker/rules/triggers.py).

    Checked against its profile (levels, segment names) by Profile, which knows both.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # No commas: the names travel comma-separated in the `rfm.triggers` header.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    when: TriggerKind
    # an integer level; a band bound (float) for p_alive_below and value_above
    value: int | float | None = None
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
        valued = self.when in VALUE_KINDS or self.when in BAND_KINDS
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


def trigger_specs(raw: object) -> object:
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
            raise ValueError(f"{label}: {first_error(exc)}") from None
    return specs


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
