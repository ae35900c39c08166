"""The JSON documents of the read API and the probes, as pydantic models: the documented
shape (worker/web/openapi.py builds the OpenAPI document from them and from CustomerView).

As with the records (worker/rules/messages.py), the server builds plain dicts with the same
shape (worker/web/views.py, worker/web/api.py) and the tests check the two agree: every
response of the suite's fuzzing is validated against the document. A field typed
`X | SkipJsonSchema[None] = absent()` is absent, never null, when it does not apply.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from worker.rules.messages import CustomerView

Instant = str  # RFC 3339 in UTC with a Z, milliseconds only when there are some
MemberOrder = Literal["spend", "last_order", "orders", "expected_value"]


def absent(description: str | None = None) -> Any:
    """The default of a field that is left out when it does not apply (no null, no default
    in the schema)."""

    def no_default(schema: dict[str, Any]) -> None:
        schema.pop("default", None)

    return Field(default=None, description=description, json_schema_extra=no_default)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Error(_Model):
    """Every error of the read API and of the server (400, 401, 404, 405, 414, 431, 503)."""

    model_config = ConfigDict(title="Error")
    error: str = Field(description="a stable code: invalid_tenant, not_found, unauthorized, ...")
    detail: str = Field(description="what was wrong, for people")


class Status(_Model):
    """/healthz, and /readyz when ready."""

    model_config = ConfigDict(title="Status")
    status: Literal["ok", "unavailable"]


class NotReady(_Model):
    """/readyz when not ready: one sentence per failed condition."""

    model_config = ConfigDict(title="NotReady")
    status: Literal["unavailable"]
    reasons: list[str] = Field(min_length=1)


class MatrixCell(_Model):
    model_config = ConfigDict(title="MatrixCell")
    r: int = Field(ge=1)
    f: int = Field(ge=1)
    customers: int = Field(ge=0)
    segment: str = Field(description="the cell's dominant segment")
    expected_value: float | SkipJsonSchema[None] = absent(
        "with a value model: its customers' summed expected_value"
    )


class ValueAtRisk(_Model):
    model_config = ConfigDict(title="ValueAtRisk")
    segments: list[str]
    expected_value: float


class Matrix(_Model):
    """GET /v1/matrix (and `rfm-worker matrix --json`): the R x F grid and the customers per
    segment, from the counters; the value fields only for a profile with a value model."""

    model_config = ConfigDict(title="Matrix")
    tenant: str
    as_of: Instant
    customers: int = Field(ge=0)
    cells: list[MatrixCell]
    segments: dict[str, int]
    expected_value: float | SkipJsonSchema[None] = absent()
    segment_expected_value: dict[str, float] | SkipJsonSchema[None] = absent()
    value_at_risk: ValueAtRisk | SkipJsonSchema[None] = absent()


class Levels(_Model):
    model_config = ConfigDict(title="Levels")
    r: int
    f: int
    m: int


class SegmentInfo(_Model):
    model_config = ConfigDict(title="SegmentInfo")
    name: str
    label: str
    colour: str = Field(pattern=r"^#[0-9A-Fa-f]{6}$")
    text: str = Field(pattern=r"^#[0-9A-Fa-f]{6}$", description="the text colour on `colour`")
    in_profile: bool
    customers: int


class Move(_Model):
    model_config = ConfigDict(title="Move", populate_by_name=True)
    from_: str | None = Field(alias="from", description="null: a new customer")
    to: str | None = Field(description="null: no counted order left")
    customers: int = Field(ge=1)


class FlowWindow(_Model):
    model_config = ConfigDict(title="FlowWindow")
    since: Instant
    until: Instant
    complete: bool
    moves: list[Move]


class Flows(_Model):
    model_config = ConfigDict(title="Flows")
    recorded_since: Instant | None
    hour: FlowWindow
    day: FlowWindow


class Sizes(_Model):
    model_config = ConfigDict(title="Sizes")
    at: list[Instant]
    segments: dict[str, list[int]]


class Segments(_Model):
    """GET /v1/segments: the tenant's segments, their sizes now and over the last day, and
    the moves between them (docs/http-and-metrics.md)."""

    model_config = ConfigDict(title="Segments")
    tenant: str
    profile: str
    as_of: Instant
    levels: Levels
    segments: list[SegmentInfo]
    flows: Flows
    sizes: Sizes


class SegmentMembers(_Model):
    """GET /v1/segments/{tenant}/{segment}/customers: one page of a segment's (or one of
    its cells') customers, ranked by `order`; `next` the cursor of the next page, null on
    the last."""

    model_config = ConfigDict(title="SegmentMembers")
    tenant: str
    segment: str
    order: MemberOrder
    customers: list[CustomerView]
    next: str | None


MODELS: tuple[type[BaseModel], ...] = (
    CustomerView,
    Matrix,
    Segments,
    SegmentMembers,
    Status,
    NotReady,
    Error,
)
