"""The OpenAPI document of the read API (worker/web/openapi.py, docs/http-and-metrics.md): a
valid OpenAPI 3.1 document (openapi-spec-validator, the 3.1 validator with its JSON Schema
2020-12 checks), the bytes served at /openapi.json without the token and kept in schemas/
(`rfm-worker schemas --check`); and a property-based test of a live server on the suite's
Redis by schemathesis: requests generated from the document (valid and invalid ones), no
5xx, every response conforming to the document (status code, content type, body schema,
headers), and no valid request refused (but on the members route, where a valid cursor is
one the server issued)."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import AS_OF_MS, placed_days_ago, valid_event
from tests.state.test_value_sums import value_profiles
from worker.config import Settings
from worker.rules.events import ValidEvent
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state.store import Store
from worker.web import openapi
from worker.web.api import Api
from worker.web.server import serve

REPO = Path(__file__).resolve().parents[2]
TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MEMBERS = "/v1/segments/{tenant}/{segment}/customers"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    # beyond conformance: a request the document calls valid is not refused with a 400 (the
    # document's grammar of tenants and ids is the server's)
    positive_data_acceptance,
]
# Per operation, valid and invalid requests together (about 1,000 requests in all): the
# whole run takes ~20 s on 2 cores (/v1/segments reads ~2,600 hashes a request).
MAX_EXAMPLES = 150


# -- the document -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert json.loads(openapi.render()) == doc


def test_the_document_describes_every_route() -> None:
    """Every route of worker/web/api.py, and the members route of issue 29."""
    assert set(openapi.document()["paths"]) == {
        "/metrics",
        "/healthz",
        "/readyz",
        "/",
        "/openapi.json",
        "/v1/customers/{tenant}/{customer_id}",
        "/v1/matrix",
        "/v1/segments",
        MEMBERS,
    }


def test_the_token_is_asked_for_on_v1_only() -> None:
    for path, item in openapi.document()["paths"].items():
        operation = item["get"]
        secured = path.startswith("/v1/")
        assert ("security" in operation) == secured, path
        assert ("401" in operation["responses"]) == secured, path


def test_schemas_holds_the_served_document() -> None:
    assert (REPO / "schemas" / "openapi.json").read_bytes() == openapi.render()


# -- a live server ------------------------------------------------------------------------------


@dataclass
class Live:
    base: str
    profiles: Profiles
    store: Store


def _settings(monkeypatch: pytest.MonkeyPatch, token: str | None) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_CLOCK", "event")
    if token is not None:
        monkeypatch.setenv("RFM_HTTP_TOKEN", token)
    return Settings()


def populate(store: Store, profiles: Profiles) -> None:
    """Customers of a tenant with a value model (default), of one without (plain) and of one
    without a profile; odd ids; one whose only order was cancelled (404)."""
    events: list[ValidEvent] = []
    for i, customer in enumerate(["67543", "a/b", "emoji ☕", "100%+sure?#x", "c", "d", "e"]):
        for order in range(i % 4 + 1):
            events.append(
                placed_days_ago(profiles, customer, f"o{order}", f"{10 + 40 * i}.5", 3 + 90 * order)
            )
    for tenant in ("plain", "shop-b"):
        events += [
            placed_days_ago(profiles, f"{tenant}-{i}", "o1", "20", i * 50, tenant) for i in range(3)
        ]
    events.append(placed_days_ago(profiles, "gone", "o1", "20", 5))
    causes.apply_batch(
        store, [(e, 0) for e in events], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS
    )
    cancel = valid_event(
        profiles,
        event_id="cancel/gone",
        kind="cancelled",
        order_id="o1",
        customer="gone",
        occurred_at="2026-05-31T00:00:00Z",
        now_ms=AS_OF_MS,
    )
    causes.apply_batch(store, [(cancel, 0)], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)


@contextmanager
def _serving(api: Api) -> Iterator[str]:
    server = serve(api, 0, "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch, store: Store) -> Iterator[Live]:
    """The worker's HTTP server with RFM_HTTP_TOKEN set, over the suite's Redis."""
    profiles = value_profiles()
    store.clock.advance(AS_OF_MS)
    populate(store, profiles)
    api = Api(_settings(monkeypatch, TOKEN), profiles, store, lambda: True, list)
    with _serving(api) as base:
        yield Live(base, profiles, store)


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


def test_openapi_json_is_served_without_the_token(live: Live) -> None:
    status, headers, body = fetch(f"{live.base}/openapi.json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body == openapi.render()
    assert fetch(f"{live.base}/v1/matrix")[0] == 401  # while the data asks for it


# The document as built; test_openapi_json_is_served_without_the_token checks the server
# serves these bytes. Valid and invalid requests, MAX_EXAMPLES each per operation.
schema = schemathesis.openapi.from_dict(openapi.document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
)


@schema.parametrize()
@hsettings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_response_conforms(case: Any, live: Live) -> None:
    """With the token: no 5xx, and the response as documented. Without it (or with the
    one schemathesis makes up), a /v1 path is a 401 as documented (the token is checked
    before anything else)."""
    # A cursor is valid only as the server issued it, and order=expected_value only where
    # the tenant's profile has a value model: what the document cannot say, so the members
    # route may refuse a request it calls valid (400)
    checks = [c for c in CHECKS if case.path != MEMBERS or c is not positive_data_acceptance]
    case.call_and_validate(base_url=live.base, headers=AUTH, checks=checks)
    if case.path.startswith("/v1/"):  # with the generated Authorization, if any
        response = case.call_and_validate(base_url=live.base, checks=CHECKS)
        if case.method == "GET":  # not one of the other methods schemathesis tries (405)
            assert response.status_code == 401, (case.path, response.status_code)


# -- the real responses against the models ------------------------------------------------------

Check = Callable[[str, Any], None]


@pytest.fixture
def conforms() -> Check:
    """Validates a document against a component schema of the OpenAPI document."""
    doc = openapi.document()

    def check(name: str, instance: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(instance)

    return check


def test_matrix_with_and_without_a_value_model(live: Live, conforms: Check) -> None:
    """The value fields are there with a value model, absent (never null) without."""
    with_value = json.loads(fetch(f"{live.base}/v1/matrix?tenant=default", AUTH)[2])
    conforms("Matrix", with_value)
    assert with_value["value_at_risk"]["segments"]
    assert all("expected_value" in cell for cell in with_value["cells"])
    without = json.loads(fetch(f"{live.base}/v1/matrix?tenant=plain", AUTH)[2])
    conforms("Matrix", without)
    assert without["cells"] and "value_at_risk" not in without
    assert all("expected_value" not in cell for cell in without["cells"])


def test_customer_view_with_the_models(live: Live, conforms: Check) -> None:
    doc = json.loads(fetch(f"{live.base}/v1/customers/default/67543", AUTH)[2])
    conforms("CustomerView", doc)
    assert doc["p_alive"] is not None and doc["expected_value"] is not None


def test_readyz_not_ready_conforms(
    monkeypatch: pytest.MonkeyPatch, store: Store, profiles: Profiles, conforms: Check
) -> None:
    api = Api(_settings(monkeypatch, None), profiles, store, lambda: False, lambda: ["why"])
    with _serving(api) as base:
        status, _, body = fetch(f"{base}/readyz")
        assert status == 503
        conforms("NotReady", json.loads(body))
        status, _, body = fetch(f"{base}/healthz")
        assert status == 503
        conforms("Status", json.loads(body))
