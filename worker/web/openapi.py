"""The OpenAPI 3.1 document of the read API and the probes (worker/web/api.py), built from
the models the responses are checked against (worker/web/responses.py, CustomerView). Served
at GET /openapi.json and written to schemas/openapi.json by `rfm-worker schemas`, the same
bytes; docs/http-and-metrics.md says what each route does.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from pydantic.json_schema import models_json_schema

from worker.rules.profiles import DEFAULT_TENANT, TENANT_NAME
from worker.web.api import MAX_CUSTOMER_ID, PAGE_HEADERS
from worker.web.responses import MODELS

API_VERSION = "1"  # the /v1 of the paths
MAX_MEMBERS_PAGE = 1000  # customers per page of a segment's list at most (issue 29)
TENANT_PATTERN = f"^{TENANT_NAME.pattern}$"
_SCHEMAS = "#/components/schemas/{model}"

DESCRIPTION = """\
The read API of rfm-worker: customers' RFM scores, the R x F matrix of a tenant, its
segments and their members; and the worker's probes, metrics and live page.

With RFM_HTTP_TOKEN set, every /v1 path needs `Authorization: Bearer <token>` (else 401,
before anything else is checked); without it, /v1 is open. /metrics, /healthz, /readyz,
/ and /openapi.json never ask for it. Only GET is served (any other method: 405); a request
line over 8 KiB is a 414, headers over 32 KiB a 431; a request over the server's connection
budget is answered 503 at once. Every error is JSON: {"error": code, "detail": text}.
See docs/http-and-metrics.md."""


def _ref(model: str) -> dict[str, str]:
    return {"$ref": _SCHEMAS.format(model=model)}


def _json(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


_BUSY = "the server's connection budget is full, or Redis did not answer"
_BAD_TARGET = "bad_request: the request target is not percent-encoded ASCII"
_UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    secured: bool = False,
) -> dict[str, Any]:
    """A GET; a secured one (/v1) answers 401 without the token when one is set."""
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if parameters:
        op["parameters"] = parameters
    if secured:
        op["security"] = [{"bearer": []}]
        responses = {**responses, "401": _UNAUTHORIZED}
    op["responses"] = {**responses, "503": responses.get("503", _error(_BUSY))}
    return {"get": op}


def _tenant(where: str, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "tenant",
        "in": where,
        "description": description,
        "schema": {"type": "string", "pattern": TENANT_PATTERN, **extra},
        "example": DEFAULT_TENANT,
        **({"required": True} if where == "path" else {}),
    }


_TENANT_QUERY = _tenant(
    "query", "the tenant; once (repeated or empty: 400 invalid_tenant)", default=DEFAULT_TENANT
)
_TENANT_PATH = _tenant("path", "the tenant (invalid: 400 invalid_tenant)")


def _customer_id() -> dict[str, Any]:
    return {
        "name": "customer_id",
        "in": "path",
        "required": True,
        "description": "the customer id, percent-encoded UTF-8 ('/' as %2F); decoded once",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CUSTOMER_ID},
        "example": "67543",
    }


def _members_parameters() -> list[dict[str, Any]]:
    def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "description": description, "schema": schema}

    return [
        _TENANT_PATH,
        {
            "name": "segment",
            "in": "path",
            "required": True,
            "description": "the segment's name",
            "schema": {"type": "string", "minLength": 1},
            "example": "champions",
        },
        query(
            "order",
            "spend (net spend, highest first), last_order (most recent first), orders (most "
            "orders first), expected_value (highest first; only where the tenant's profile "
            "has a value model, else 400); ties broken by customer id",
            {
                "type": "string",
                "enum": ["spend", "last_order", "orders", "expected_value"],
                "default": "spend",
            },
        ),
        query(
            "limit",
            f"customers per page, at most {MAX_MEMBERS_PAGE}",
            {"type": "integer", "minimum": 1, "maximum": MAX_MEMBERS_PAGE},
        ),
        query("cursor", "`next` of the previous page", {"type": "string"}),
        query(
            "r",
            "only the customers of this R score (a matrix cell)",
            {"type": "integer", "minimum": 1},
        ),
        query(
            "f",
            "only the customers of this F score (a matrix cell)",
            {"type": "integer", "minimum": 1},
        ),
    ]


def _paths() -> dict[str, Any]:
    return _open_paths() | _read_api_paths()


def _open_paths() -> dict[str, Any]:
    """The routes served without the token: probes, metrics, the page, this document."""
    page_headers = {
        name: {"required": True, "schema": {"type": "string", "const": value}}
        for name, value in PAGE_HEADERS
    }
    return {
        "/healthz": _operation(
            "healthz",
            "Liveness: the consumer loop is turning",
            {
                "200": _json("alive", _ref("Status")),
                "503": _json(
                    "not alive, or over the probes' budget",
                    {"anyOf": [_ref("Status"), _ref("Error")]},
                ),
            },
        ),
        "/readyz": _operation(
            "readyz",
            "Readiness: in the consumer group, Redis and Kafka answering, dead letters flowing",
            {
                "200": _json("ready", _ref("Status")),
                "503": _json(
                    "not ready (the reasons), or over the probes' budget",
                    {"anyOf": [_ref("NotReady"), _ref("Error")]},
                ),
            },
        ),
        "/metrics": _operation(
            "metrics",
            "Prometheus metrics (text exposition format)",
            {
                "200": {
                    "description": "the metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        "/": _operation(
            "page",
            "The live R x F matrix page (self-contained HTML; reads /v1/matrix, /v1/segments)",
            {
                "200": {
                    "description": "the page",
                    "headers": page_headers,
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "400": _error(_BAD_TARGET),
            },
        ),
        "/openapi.json": _operation(
            "openapi",
            "This document",
            {
                "200": _json("the OpenAPI document", {"type": "object"}),
                "400": _error(_BAD_TARGET),
            },
        ),
    }


def _read_api_paths() -> dict[str, Any]:
    """The read API (/v1/*): behind the token when one is set."""
    return {
        "/v1/customers/{tenant}/{customer_id}": _operation(
            "customer",
            "A customer's aggregates and scores, now",
            {
                "200": _json("the customer view", _ref("CustomerView")),
                "400": _error("invalid_tenant, invalid_customer_id, or " + _BAD_TARGET),
                "404": _error("not_found: no such customer, or none of its orders counts"),
            },
            parameters=[_TENANT_PATH, _customer_id()],
            secured=True,
        ),
        "/v1/matrix": _operation(
            "matrix",
            "The R x F matrix of a tenant and its customers per segment",
            {
                "200": _json("the matrix", _ref("Matrix")),
                "400": _error("invalid_tenant, or " + _BAD_TARGET),
            },
            parameters=[_TENANT_QUERY],
            secured=True,
        ),
        "/v1/segments": _operation(
            "segments",
            "A tenant's segments: names, colours, sizes over the last day, moves between them",
            {
                "200": _json("the segments", _ref("Segments")),
                "400": _error("invalid_tenant, or " + _BAD_TARGET),
            },
            parameters=[_TENANT_QUERY],
            secured=True,
        ),
        "/v1/segments/{tenant}/{segment}/customers": _operation(
            "segmentCustomers",
            "A segment's customers (or one of its cells': r, f), ranked, a page at a time",
            {
                "200": _json(
                    "a page of the list: every member once across its pages", _ref("SegmentMembers")
                ),
                "400": _error(
                    "an invalid tenant, order, limit, cursor, r or f; expected_value "
                    "without a value model; or " + _BAD_TARGET
                ),
            },
            parameters=_members_parameters(),
            secured=True,
        ),
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, as a dict."""
    _, schemas = models_json_schema(
        [(model, "validation") for model in MODELS], ref_template=_SCHEMAS
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rfm-worker",
            "version": API_VERSION,
            "description": DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "RFM_HTTP_TOKEN; required only where it is set",
                }
            },
            "responses": {
                "Unauthorized": _json(
                    "unauthorized: the token is set and was not given, or another was",
                    _ref("Error"),
                    headers={
                        "WWW-Authenticate": {
                            "required": True,
                            "description": 'Bearer realm="rfm-worker" (RFC 6750)',
                            "schema": {"type": "string", "pattern": "^Bearer "},
                        }
                    },
                )
            },
        },
    }


@functools.cache
def render() -> bytes:
    """The document as served and as in schemas/openapi.json."""
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
