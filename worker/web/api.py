"""The read API and the probes, socket-free: `Api.handle` turns a GET's target and
Authorization header into a `Response` (docs/http-and-metrics.md). worker/web/server.py
serves it over HTTP; tests call it directly.

Routes: /metrics, /healthz, /readyz, GET / (the matrix page), /openapi.json (the OpenAPI
document of them all, worker/web/openapi.py), /v1/customers, /v1/matrix, /v1/segments and a
segment's ranked customers, /v1/segments/{tenant}/{segment}/customers. The read API (/v1/*)
requires `Authorization: Bearer <RFM_HTTP_TOKEN>` when a token is set; /metrics, /healthz and
/readyz never do (Prometheus and probes), nor / and /openapi.json (they hold no data). Path
segments are checked before any Redis read: the tenant against the tenant grammar (which
excludes ':', the key separator), the customer id 1..200 characters of strict UTF-8 once
percent-decoded, so no path can address another tenant's customer.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote_to_bytes

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from worker import metrics as _metrics  # noqa: F401  (registers the rfm_* families)
from worker.config import Settings
from worker.rules.profiles import DEFAULT_TENANT, TENANT_NAME, Profiles
from worker.state.clock import scoring_now
from worker.state.store import Store
from worker.web import segment_lists, views

MAX_CUSTOMER_ID = 200  # characters, as in order events (worker/rules/events.py)
MAX_SEGMENT = 200  # characters of a segment name in a path

_TARGET = re.compile(r"[\x21-\x7e]*")  # a request target is visible ASCII (RFC 9112)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TENANT_RULE = "1-100 of A-Z a-z 0-9 . _ -"
OPEN = frozenset({"/metrics", "/healthz", "/readyz"})  # the probes: never behind the token


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class Api:
    """What the routes need; `healthy` and `not_ready` (the reasons) come from the running
    worker."""

    def __init__(
        self,
        settings: Settings,
        profiles: Profiles,
        store: Store,
        healthy: Callable[[], bool],
        not_ready: Callable[[], list[str]],
    ) -> None:
        self.settings, self.profiles, self.store = settings, profiles, store
        self.healthy, self.not_ready = healthy, not_ready
        token = settings.http_token
        # compared as digests: equal lengths, so the comparison time says nothing either
        self._token_digest = (
            None if token is None else hashlib.sha256(token.get_secret_value().encode()).digest()
        )

    def handle(self, target: str, authorization: str | None = None) -> Response:
        """One GET: `target` as on the request line, `authorization` the header or None."""
        path, _, query = target.partition("?")
        if path in OPEN:  # a query string selects nothing here
            if path == "/metrics":
                return Response(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            if path == "/healthz":
                return self._status(self.healthy())
            reasons = self.not_ready()
            if reasons:  # what an operator reads first when a probe fails
                return _json(503, {"status": "unavailable", "reasons": reasons})
            return self._status(True)
        if path == "/v1" or path.startswith("/v1/"):
            denied = self._authenticate(authorization)
            if denied is not None:
                return denied
        if not _TARGET.fullmatch(target):
            return error(400, "bad_request", "the request target must be percent-encoded ASCII")
        if path == "/":  # the matrix page: no data in it, so never behind the token
            return _page()
        if path == "/openapi.json":  # the API's description, public in schemas/: no token
            return _openapi()
        parts = path.split("/")
        if len(parts) == 5 and parts[1:3] == ["v1", "customers"]:
            return self._customer(parts[3], parts[4])
        if path == "/v1/matrix":
            return self._matrix(query)
        if path == "/v1/segments":
            return self._segments(query)
        if len(parts) == 6 and parts[1:3] == ["v1", "segments"] and parts[5] == "customers":
            return self._segment_customers(parts[3], parts[4], query)
        return error(404, "not_found", f"no route {path[:200]}")

    def _customer(self, raw_tenant: str, raw_customer_id: str) -> Response:
        tenant = _segment(raw_tenant)
        if tenant is None or not TENANT_NAME.fullmatch(tenant):
            return error(400, "invalid_tenant", f"the tenant segment must be {_TENANT_RULE}")
        customer_id = _segment(raw_customer_id)
        if customer_id is None or not 1 <= len(customer_id) <= MAX_CUSTOMER_ID:
            return error(
                400,
                "invalid_customer_id",
                f"the customer id segment must be 1-{MAX_CUSTOMER_ID} characters of "
                "percent-encoded UTF-8 ('/' as %2F)",
            )
        as_of = scoring_now(self.settings, self.store.clock)
        doc = views.lookup(self.store, self.profiles, tenant, customer_id, as_of)
        if doc is None:
            return error(404, "not_found", f"no customer {customer_id!r} in tenant {tenant!r}")
        return _json(200, doc)

    def _matrix(self, query: str) -> Response:
        tenant = _tenant_parameter(query)
        if isinstance(tenant, Response):
            return tenant
        as_of = scoring_now(self.settings, self.store.clock)
        at_risk = views.at_risk(self.profiles.for_tenant(tenant))
        return _json(200, views.matrix(self.store, tenant, as_of, at_risk=at_risk))

    def _segments(self, query: str) -> Response:
        """The page's slower data: segment names and colours, sizes over time, flows."""
        tenant = _tenant_parameter(query)
        if isinstance(tenant, Response):
            return tenant
        as_of = scoring_now(self.settings, self.store.clock)
        return _json(200, views.segments(self.store, self.profiles, tenant, as_of))

    def _segment_customers(self, raw_tenant: str, raw_segment: str, query: str) -> Response:
        """A page of a segment's customers, ranked (worker/web/segment_lists.py)."""
        tenant = _segment(raw_tenant)
        if tenant is None or not TENANT_NAME.fullmatch(tenant):
            return error(400, "invalid_tenant", f"the tenant segment must be {_TENANT_RULE}")
        segment = _segment(raw_segment)
        if segment is None or not 1 <= len(segment) <= MAX_SEGMENT:
            return error(
                400,
                "invalid_segment",
                f"the segment must be 1-{MAX_SEGMENT} characters of percent-encoded UTF-8",
            )
        try:
            listing, limit, after = segment_lists.parse_query(tenant, segment, query)
            as_of = scoring_now(self.settings, self.store.clock)
            doc = segment_lists.document(self.store, self.profiles, listing, limit, after, as_of)
        except segment_lists.ListingError as exc:
            return error(400, exc.code, exc.detail)
        return _json(200, doc)

    def _authenticate(self, authorization: str | None) -> Response | None:
        """None when the request may proceed, else the 401 (RFC 6750)."""
        if self._token_digest is None:
            return None
        if authorization is None:
            return _unauthorized('Bearer realm="rfm-worker"', "a bearer token is required")
        scheme, _, credentials = authorization.strip().partition(" ")
        given = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
        # compare even when the scheme is wrong: the time taken does not depend on the input
        match = hmac.compare_digest(given, self._token_digest)
        if match and scheme.lower() == "bearer":
            return None
        return _unauthorized(
            'Bearer realm="rfm-worker", error="invalid_token"', "invalid bearer token"
        )

    @staticmethod
    def _status(ok: bool) -> Response:
        return _json(200 if ok else 503, {"status": "ok" if ok else "unavailable"})


PAGE_HEADERS = (
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


@functools.cache
def _page_body() -> bytes:
    return resources.files("worker.web").joinpath("static/matrix.html").read_bytes()


def _page() -> Response:
    """GET /: the live R x F matrix page (worker/web/static/matrix.html); it reads /v1/matrix
    and /v1/segments."""
    return Response(200, "text/html; charset=utf-8", _page_body(), PAGE_HEADERS)


def _openapi() -> Response:
    """GET /openapi.json: the document of this API (worker/web/openapi.py)."""
    from worker.web import openapi  # it reads this module's limits: imported once both exist

    return Response(200, "application/json", openapi.render())


def _tenant_parameter(query: str) -> str | Response:
    """?tenant= of /v1/matrix and /v1/segments (the default tenant when absent), or the 400."""
    given = parse_qs(query, keep_blank_values=True).get("tenant", [DEFAULT_TENANT])
    if len(given) != 1 or not TENANT_NAME.fullmatch(given[0]):
        return error(400, "invalid_tenant", f"the tenant parameter must be once {_TENANT_RULE}")
    return given[0]


def _segment(raw: str) -> str | None:
    """A percent-decoded path segment, or None when it is not valid percent-encoded UTF-8."""
    if _BAD_ESCAPE.search(raw):
        return None
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json(status: int, doc: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, "application/json", orjson.dumps(doc), headers)


def error(status: int, code: str, detail: str) -> Response:
    """The JSON error document: {"error": code, "detail": detail}."""
    return _json(status, {"error": code, "detail": detail})


def _unauthorized(challenge: str, detail: str) -> Response:
    return _json(
        401, {"error": "unauthorized", "detail": detail}, (("WWW-Authenticate", challenge),)
    )
