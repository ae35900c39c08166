"""`validate` as it was before its lean path, verbatim, with its own copies of the model and
helpers, so that later edits of worker/ cannot move it: the reference the lean path is held
to (tests/rules/test_events.py: every input gives exactly the same ValidEvent, or the same
Rejection, class and reason; the DLQ headers are a public contract) and timed against
(tests/benchmarks/validation.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from worker.rules.events import Rejection, ValidEvent
from worker.rules.profiles import Profiles

_FROZEN_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_FROZEN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([Ee][+-]?[0-9]+)?")
_FROZEN_MAX_EVENT_BYTES = 64 * 1024
_FROZEN_MAX_FUTURE_MS = 5 * 60 * 1000
_FROZEN_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FrozenId = Annotated[str, Strict(), Field(min_length=1, max_length=200)]


class FrozenOrderEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, title="OrderEvent")

    event_id: _FrozenId = Field(description="Unique per event; the idempotency key.")
    type: Literal["order_placed", "order_refunded", "order_cancelled"]
    order_id: _FrozenId
    customer_id: _FrozenId
    tenant: Annotated[str, Strict()] = Field(
        default="default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$"
    )
    amount: Decimal | None = Field(
        default=None,
        ge=0,
        lt=10**12,
        decimal_places=4,
        allow_inf_nan=False,
        description="Decimal string or number; required for order_placed and order_refunded.",
    )
    currency: Annotated[str, Strict()] | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    occurred_at: AwareDatetime = Field(description="RFC 3339 timestamp with an offset.")

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        if not isinstance(value, str) or not _FROZEN_RFC3339.fullmatch(value):
            raise ValueError("not an RFC 3339 timestamp with an offset")
        return value

    @field_validator("amount", mode="wrap")
    @classmethod
    def _decimal_text(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        if isinstance(value, str) and not _FROZEN_DECIMAL.fullmatch(value):
            raise ValueError("not a decimal number (ASCII digits, a point, an exponent)")
        return handler(value)


def _frozen_epoch_ms(ts: datetime) -> int:
    d = ts - _FROZEN_EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def frozen_validate(value: bytes | None, profiles: Profiles, now_ms: int) -> ValidEvent | Rejection:
    """worker.rules.events.validate before the lean path, verbatim: the reference."""
    if not value:
        return Rejection("empty", "the record has no value (tombstone or empty message)")
    if len(value) > _FROZEN_MAX_EVENT_BYTES:
        return Rejection(
            "oversized",
            f"the value is {len(value)} bytes, more than the {_FROZEN_MAX_EVENT_BYTES} allowed",
        )
    try:
        ev = FrozenOrderEvent.model_validate_json(value)
    except ValidationError as exc:
        return _frozen_rejection(exc, value)
    if ev.amount is None and ev.type != "order_cancelled":
        return Rejection("missing_field", f"amount is required for {ev.type}")
    occurred = _frozen_epoch_ms(ev.occurred_at)
    if occurred < 0:
        return Rejection(
            "invalid_timestamp",
            f"occurred_at {ev.occurred_at.isoformat()} is before 1970-01-01T00:00:00Z",
        )
    if occurred - now_ms > _FROZEN_MAX_FUTURE_MS:
        return Rejection(
            "future_timestamp",
            f"occurred_at {ev.occurred_at.isoformat()} is more than 5 minutes ahead of now",
        )
    profile = profiles.for_tenant(ev.tenant)
    if profile.currency and ev.currency and ev.currency != profile.currency:
        return Rejection(
            "currency_mismatch",
            f"currency {ev.currency} differs from {profile.currency}, the currency of "
            f"profile '{profile.name}'",
        )
    return ValidEvent(
        event_id=ev.event_id,
        type=ev.type,
        order_id=ev.order_id,
        customer_id=ev.customer_id,
        tenant=ev.tenant,
        amount=None if ev.amount is None else int(Decimal(ev.amount) * 10_000),
        occurred_at=occurred,
    )


_FROZEN_FIELD_CLASS = {
    "amount": "invalid_amount",
    "occurred_at": "invalid_timestamp",
    "type": "unknown_type",
    "currency": "invalid_currency",
}


def _frozen_rejection(exc: ValidationError, value: bytes) -> Rejection:
    err = exc.errors(include_url=False)[0]
    kind, loc = err["type"], err["loc"]
    field = str(loc[0]) if loc else ""
    if kind == "json_invalid":
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejection(
                "invalid_encoding", f"the value is not UTF-8 ({uexc.reason} at byte {uexc.start})"
            )
        return Rejection("invalid_json", f"the value is not JSON: {err['msg']}")
    if kind == "model_type":
        return Rejection("not_an_object", "the value is JSON but not an object")
    if kind == "missing":
        return Rejection("missing_field", f"required field {field} is missing")
    if not loc:
        return Rejection("invalid_field", str(err["msg"]).removeprefix("Value error, "))
    cls = _FROZEN_FIELD_CLASS.get(field, "invalid_field")
    return Rejection(cls, f"{field}: {err['msg']} (got {_frozen_preview(err.get('input'))})")


def _frozen_preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
