"""The HTTP surface (docs/http-and-metrics.md) against the suite's Redis: routes through Api.handle,
and over real sockets through serve(): the bearer token, path validation (no path reaches
another tenant's customer), timeouts and limits, and the bounded rfm_customers labels."""

from __future__ import annotations

import hmac
import http.client
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import resource
import select
import selectors
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote, unquote_to_bytes

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from tests.factories import AS_OF, AS_OF_MS, DAY, placed_days_ago, valid_event
from worker.config import Settings
from worker.errors import ConfigError
from worker.metrics import CustomersCollector, register_customers
from worker.rules.events import ValidEvent, validate
from worker.rules.profiles import TENANT_NAME, Profiles
from worker.services import causes
from worker.state.store import Store
from worker.web import api as api_module
from worker.web import views
from worker.web.api import Api
from worker.web.server import serve

ODD_IDS = [
    "a/b",
    "{x}",
    "{00}:c:default:y",
    "a:b:c",
    "with space",
    "line\nbreak",
    "emoji ☕🍕",
    "100%+sure?#frag&x=1",
    "all/of {them}: \n☕",
    " padded ",
    "trailing\n",
    "%2F",
]


class Flags:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = True

    def not_ready(self) -> list[str]:
        return [] if self.ready else ["the test says so"]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """RFM_CLOCK=event, nothing else from the machine's RFM_*."""
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_CLOCK", "event")
    return Settings()


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def api(settings: Settings, profiles: Profiles, store: Store, flags: Flags) -> Api:
    store.clock.advance(AS_OF_MS)
    return Api(settings, profiles, store, healthy=lambda: flags.healthy, not_ready=flags.not_ready)


def apply(store: Store, profiles: Profiles, events: list[ValidEvent]) -> None:
    causes.apply_batch(
        store, [(e, 0) for e in events], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS
    )


def get_json(api: Api, path: str, authorization: str | None = None) -> tuple[int, Any]:
    status, ctype, body, _headers = api.handle(path, authorization)
    assert ctype.startswith("application/json"), ctype
    return status, json.loads(body)


def customer_path(tenant: str, customer_id: str) -> str:
    return f"/v1/customers/{quote(tenant, safe='')}/{quote(customer_id, safe='')}"


# -- customers ----------------------------------------------------------------------------------


def test_customer_view(api: Api, store: Store, profiles: Profiles) -> None:
    apply(
        store,
        profiles,
        [
            placed_days_ago(profiles, "67543", "o1", "200", 60),
            placed_days_ago(profiles, "67543", "o2", "150", 20),
            placed_days_ago(profiles, "67543", "o3", "0.01", 20.5),
        ],
    )
    status, doc = get_json(api, "/v1/customers/default/67543")
    assert status == 200
    # 20 days -> R5; 3 orders -> F3; 350.01 -> M3: 533 potential_loyalist
    assert doc == {
        "tenant": "default",
        "customer_id": "67543",
        "first_order_at": "2026-04-02T00:00:00Z",
        "last_order_at": "2026-05-12T00:00:00Z",
        "orders": 3,
        "orders_lifetime": 3,
        "monetary": "350.01",
        "r": 5,
        "f": 3,
        "m": 3,
        "rfm": "533",
        "segment": "potential_loyalist",
        "as_of": "2026-06-01T00:00:00Z",
        "p_alive": None,  # the profile has no churn model
        "p_alive_band": None,
        "expected_orders": None,
        "expected_order_value": None,  # nor a value model
        "expected_value": None,
        "value_band": None,
    }


def test_customer_ids_with_any_character(api: Api, store: Store, profiles: Profiles) -> None:
    # each id gets its own amount, so a mix-up between two ids cannot go unnoticed
    amounts = {cid: f"{100 * (i + 1)}.00" for i, cid in enumerate(ODD_IDS)}
    apply(
        store, profiles, [placed_days_ago(profiles, cid, "o1", amounts[cid], 5) for cid in ODD_IDS]
    )
    for cid in ODD_IDS:
        status, doc = get_json(api, customer_path("default", cid))
        assert status == 200, cid
        assert doc["customer_id"] == cid
        assert doc["tenant"] == "default"
        assert doc["monetary"] == amounts[cid]
        assert doc["orders"] == 1


def test_customer_of_a_tenant(api: Api, store: Store, profiles: Profiles) -> None:
    apply(
        store,
        profiles,
        [
            placed_days_ago(profiles, "c/1", "o1", "1200", 2, tenant="shop-b"),
            placed_days_ago(profiles, "c/1", "o1", "10", 400),
        ],
    )
    status, doc = get_json(api, customer_path("shop-b", "c/1"))
    assert status == 200
    assert (doc["tenant"], doc["rfm"], doc["segment"]) == ("shop-b", "515", "new_customers")
    status, doc = get_json(api, customer_path("default", "c/1"))
    assert status == 200
    assert (doc["tenant"], doc["rfm"], doc["segment"]) == ("default", "111", "lost")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/customers/default/nobody",
        "/v1/customers/other-tenant/67543",
        "/v1/customers/default/" + quote("a/b/c", safe=""),
    ],
)
def test_unknown_customer_is_404_json(
    api: Api, store: Store, profiles: Profiles, path: str
) -> None:
    apply(store, profiles, [placed_days_ago(profiles, "67543", "o1", "10", 1)])
    status, doc = get_json(api, path)
    assert status == 404
    assert isinstance(doc, dict) and doc


def test_customer_with_every_order_cancelled_is_404(
    api: Api, store: Store, profiles: Profiles
) -> None:
    cancel = validate(
        orjson.dumps(
            {
                "event_id": "x",
                "type": "order_cancelled",
                "order_id": "o1",
                "customer_id": "gone",
                "occurred_at": AS_OF.isoformat(),
            }
        ),
        profiles,
        AS_OF_MS,
    )
    assert isinstance(cancel, ValidEvent)
    apply(store, profiles, [placed_days_ago(profiles, "gone", "o1", "10", 1), cancel])
    assert get_json(api, "/v1/customers/default/gone")[0] == 404


@pytest.mark.parametrize(
    "path", ["/nope", "/v1/customers", "/v1/customers/default", "/v1/matrixx", "/metrics/x"]
)
def test_unknown_route_is_404_json(api: Api, path: str) -> None:
    status, doc = get_json(api, path)
    assert status == 404
    assert isinstance(doc, dict) and doc


# -- health -------------------------------------------------------------------------------------


def test_healthz_and_readyz_follow_the_callables(api: Api, flags: Flags) -> None:
    assert get_json(api, "/healthz")[0] == 200
    assert get_json(api, "/readyz")[0] == 200
    flags.ready = False
    assert get_json(api, "/healthz")[0] == 200
    assert get_json(api, "/readyz") == (
        503,
        {"status": "unavailable", "reasons": ["the test says so"]},
    )
    flags.healthy = False
    assert get_json(api, "/healthz")[0] == 503
    assert get_json(api, "/readyz")[0] == 503
    flags.ready = True
    assert get_json(api, "/healthz")[0] == 503
    assert get_json(api, "/readyz")[0] == 200
    flags.healthy = True
    assert get_json(api, "/healthz")[0] == 200


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_is_prometheus_text(api: Api) -> None:
    status, ctype, body, _headers = api.handle("/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    text = body.decode()
    for name in (
        "rfm_events_total",
        "rfm_changes_total",
        "rfm_segment_transitions_total",
        "rfm_consumer_lag",
        "rfm_sweep_duration_seconds",
    ):
        assert f"# TYPE {name} " in text, name
    for line in text.splitlines():  # exposition format: comments or `name{labels} value`
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2, line


# -- matrix -------------------------------------------------------------------------------------


def test_matrix(api: Api, store: Store, profiles: Profiles) -> None:
    apply(
        store,
        profiles,
        [
            placed_days_ago(profiles, "a", "o1", "10", 400),  # 111 lost
            placed_days_ago(profiles, "b", "o1", "20", 500),  # 111 lost
            placed_days_ago(profiles, "c", "o1", "1000", 400),  # 115 at_risk
            placed_days_ago(profiles, "d", "o1", "120", 3),  # 512 new_customers
            placed_days_ago(profiles, "e", "o1", "120", 3, tenant="shop-b"),  # 512 new_customers
        ],
    )
    status, doc = get_json(api, "/v1/matrix?tenant=default")
    assert status == 200
    assert doc["tenant"] == "default"
    assert doc["as_of"] == "2026-06-01T00:00:00Z"
    assert doc["customers"] == 4
    assert sorted((c["r"], c["f"], c["customers"], c["segment"]) for c in doc["cells"]) == [
        (1, 1, 3, "lost"),
        (5, 1, 1, "new_customers"),
    ]
    assert doc["segments"] == {"at_risk": 1, "lost": 2, "new_customers": 1}

    status, doc = get_json(api, "/v1/matrix?tenant=shop-b")
    assert status == 200
    assert (doc["tenant"], doc["customers"], doc["segments"]) == ("shop-b", 1, {"new_customers": 1})
    assert doc["cells"] == [{"r": 5, "f": 1, "customers": 1, "segment": "new_customers"}]

    status, doc = get_json(api, "/v1/matrix")  # no tenant: the default tenant
    assert status == 200
    assert (doc["tenant"], doc["customers"]) == ("default", 4)


# -- over a real socket -------------------------------------------------------------------------


def test_serve_over_http(api: Api, store: Store, profiles: Profiles) -> None:
    cid = "all/of {them}: \n☕"
    apply(store, profiles, [placed_days_ago(profiles, cid, "o1", "42.50", 1)])
    server = serve(api, port=0, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(base + customer_path("default", cid), timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            doc = json.loads(resp.read())
        assert (doc["customer_id"], doc["monetary"], doc["rfm"]) == (cid, "42.50", "511")
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert b"rfm_events_total" in resp.read()
        with pytest.raises(HTTPError) as info:
            urllib.request.urlopen(base + "/v1/customers/default/nobody", timeout=10)
        with info.value as error:
            assert error.code == 404
            assert json.loads(error.read())
    finally:
        server.shutdown()
        server.server_close()


# -- helpers for the tests below ----------------------------------------------------------------

TOKEN = "t0k3n-Sh0uld_N3v3r.L3ak"


@pytest.fixture
def secured_api(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    profiles: Profiles,
    store: Store,
    flags: Flags,
) -> Api:
    """The api with RFM_HTTP_TOKEN set."""
    monkeypatch.setenv("RFM_HTTP_TOKEN", TOKEN)
    store.clock.advance(AS_OF_MS)
    return Api(Settings(), profiles, store, healthy=lambda: True, not_ready=list)


@contextmanager
def running(api: Api, **limits: Any) -> Iterator[int]:
    """serve() on a free loopback port; yields the port."""
    server = serve(api, port=0, host="127.0.0.1", **limits)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET with http.client: the path goes on the request line exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are, read the response until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def response_of(api: Api, path: str, authorization: str | None = None) -> tuple[int, Any, dict]:
    status, ctype, body, headers = api.handle(path, authorization)
    assert ctype == "application/json"
    return status, json.loads(body), dict(headers)


# -- authentication (RFM_HTTP_TOKEN) ------------------------------------------------------------

V1_PATHS = [
    "/v1/customers/default/67543",
    "/v1/customers/default/nobody",
    "/v1/matrix",
    "/v1/matrix?tenant=default",
    "/v1/matrix?tenant=bad:tenant",  # 401 before 400: no probing without the token
    "/v1/segments?tenant=default",
    "/v1/segments?tenant=bad:tenant",
    "/v1/customers/default:x/y",
    "/v1/nope",
    "/v1",
]


@pytest.mark.parametrize("path", V1_PATHS)
def test_v1_without_a_token_is_401_with_a_bearer_challenge(secured_api: Api, path: str) -> None:
    status, doc, headers = response_of(secured_api, path)
    assert status == 401
    assert doc["error"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "error=" not in headers["WWW-Authenticate"]  # RFC 6750: no error when none sent


WRONG_CREDENTIALS = [
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN.upper()}",
    f"Bearer {TOKEN} {TOKEN}",
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    TOKEN,
    f"{TOKEN} Bearer",
    f"Bearer {TOKEN}é",  # non-ASCII must not break the comparison (compare_digest on str)
    "Bearer \udcff",
]


@pytest.mark.parametrize("authorization", WRONG_CREDENTIALS)
def test_v1_with_a_wrong_token_is_401(
    secured_api: Api, store: Store, profiles: Profiles, authorization: str
) -> None:
    apply(store, profiles, [placed_days_ago(profiles, "67543", "o1", "10", 1)])
    status, doc, headers = response_of(secured_api, "/v1/customers/default/67543", authorization)
    assert status == 401
    assert doc["error"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert TOKEN not in json.dumps(doc)


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} ", f" Bearer {TOKEN}"]
)
def test_v1_with_the_token_is_served(
    secured_api: Api, store: Store, profiles: Profiles, authorization: str
) -> None:
    apply(store, profiles, [placed_days_ago(profiles, "67543", "o1", "10", 1)])
    status, doc, _ = response_of(secured_api, "/v1/customers/default/67543", authorization)
    assert (status, doc["customer_id"]) == (200, "67543")
    status, doc, _ = response_of(secured_api, "/v1/matrix?tenant=default", authorization)
    assert (status, doc["customers"]) == (200, 1)


def test_the_token_is_compared_in_constant_time(
    secured_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(api_module.hmac, "compare_digest", spy)
    assert response_of(secured_api, "/v1/matrix", f"Bearer {TOKEN}")[0] == 200
    assert response_of(secured_api, "/v1/matrix", "Bearer x")[0] == 401
    assert response_of(secured_api, "/v1/matrix", f"Basic {TOKEN}")[0] == 401
    assert len(calls) == 3
    assert {len(a) for a, _ in calls} == {32}  # digests: the length of the guess says nothing


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/healthz?x=1"])
def test_metrics_and_probes_need_no_token(secured_api: Api, path: str) -> None:
    status, _ctype, _body, headers = secured_api.handle(path)
    assert status == 200
    assert not headers


def test_without_a_token_v1_is_open(api: Api, store: Store, profiles: Profiles) -> None:
    apply(store, profiles, [placed_days_ago(profiles, "67543", "o1", "10", 1)])
    for authorization in (None, "Bearer anything", "garbage"):
        assert get_json(api, "/v1/customers/default/67543", authorization)[0] == 200


def test_token_over_http_and_never_in_the_logs(
    secured_api: Api, store: Store, profiles: Profiles, caplog: pytest.LogCaptureFixture
) -> None:
    apply(store, profiles, [placed_days_ago(profiles, "67543", "o1", "10", 1)])
    caplog.set_level(logging.DEBUG)
    path = "/v1/customers/default/67543"
    with running(secured_api) as port:
        status, headers, body = http_get(port, path)
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"] == "unauthorized"

        status, headers, body = http_get(port, path, {"Authorization": f"Bearer {TOKEN}x"})
        assert status == 401
        assert 'error="invalid_token"' in headers["www-authenticate"]

        # two Authorization headers, one of them right, are not a credential
        status, _, _ = raw_exchange(
            port,
            f"GET {path} HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Authorization: Bearer x\r\n\r\n".encode(),
        )
        assert status == 401

        status, _, body = http_get(port, path, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        assert json.loads(body)["customer_id"] == "67543"

        status, _, body = http_get(port, "/metrics")
        assert status == 200
        assert b"rfm_events_total" in body
        status, _, _ = http_get(port, "/healthz")
        assert status == 200
    assert "http on 127.0.0.1 port" in caplog.text  # the logs were captured
    assert TOKEN not in caplog.text


# -- path segments: no path reaches another tenant's customer -----------------------------------

# Customers whose ids look like other tenants' keys (rfm:{NN}:c:<tenant>:<customer_id>).
LOOKALIKES = {
    ("acme", "x"): "111.00",
    ("default", "acme:x"): "222.00",
    ("default", "acme/x"): "333.00",
    ("default", "x"): "444.00",
    ("acme", "default:acme:x"): "555.00",
    ("..", "x"): "666.00",  # '..' is a valid tenant name: it must address only itself
    ("default", "acme%3Ax"): "777.00",  # literally "%3A"
    ("default", "\ufffd"): "888.00",  # what a lenient decoder makes of %ff
    ("acme", "x\x00"): "999.00",
}

# (path, expected): (tenant, customer_id) = that customer with 200; else 404 or the 400 error.
CONFUSION: list[tuple[str, tuple[str, str] | int | str]] = [
    ("/v1/customers/acme/x", ("acme", "x")),
    ("/v1/customers/default/x", ("default", "x")),
    ("/v1/customers/default/acme:x", ("default", "acme:x")),
    ("/v1/customers/default/acme%3Ax", ("default", "acme:x")),
    ("/v1/customers/default/acme%3ax", ("default", "acme:x")),
    ("/v1/customers/de%66ault/acme%3Ax", ("default", "acme:x")),
    ("/v1/customers/default/acme%2Fx", ("default", "acme/x")),
    ("/v1/customers/default/acme%253Ax", ("default", "acme%3Ax")),  # decoded once, not twice
    ("/v1/customers/default/acme%25253Ax", 404),
    ("/v1/customers/acme/default:acme:x", ("acme", "default:acme:x")),
    ("/v1/customers/acme/x%00", ("acme", "x\x00")),
    ("/v1/customers/default/acme/x", 404),  # an unencoded '/' ends the id
    ("/v1/customers/default/..%2Facme%2Fx", 404),
    ("/v1/customers/../x", ("..", "x")),
    ("/v1/customers/%2E%2E/x", ("..", "x")),
    ("/v1/customers/acme/x?tenant=default", ("acme", "x")),
    ("/v1/customers/acme/x#/../../default/acme:x", 404),
    ("/v1/customers/acme/x;default", 404),
    ("/v1/customers/default/%EF%BF%BD", ("default", "\ufffd")),
    ("/v1/customers/default:acme/x", "invalid_tenant"),
    ("/v1/customers/default%3Aacme/x", "invalid_tenant"),
    ("/v1/customers/default%3aacme/x", "invalid_tenant"),
    ("/v1/customers/default%253Aacme/x", "invalid_tenant"),
    ("/v1/customers/default%2Facme/x", "invalid_tenant"),
    ("/v1/customers/acme:/x", "invalid_tenant"),
    ("/v1/customers/..%2F../x", "invalid_tenant"),
    ("/v1/customers/..%2Fdefault/x", "invalid_tenant"),
    ("/v1/customers/acme%00/x", "invalid_tenant"),
    ("/v1/customers/%00/x", "invalid_tenant"),
    ("/v1/customers/%ff/x", "invalid_tenant"),
    ("/v1/customers/acme%/x", "invalid_tenant"),
    ("/v1/customers/acme%2/x", "invalid_tenant"),
    ("/v1/customers/ac%20me/x", "invalid_tenant"),
    ("/v1/customers/%E2%98%95/x", "invalid_tenant"),
    ("/v1/customers//acme:x", "invalid_tenant"),
    ("/v1/customers/" + "a" * 101 + "/x", "invalid_tenant"),
    ("/v1/customers/acme/%ff", "invalid_customer_id"),
    ("/v1/customers/default/%ff", "invalid_customer_id"),  # not U+FFFD's customer
    ("/v1/customers/default/acme%3Ax%ff", "invalid_customer_id"),
    ("/v1/customers/default/%c3%28", "invalid_customer_id"),  # invalid UTF-8
    ("/v1/customers/default/%ed%a0%80", "invalid_customer_id"),  # an encoded surrogate
    ("/v1/customers/default/%", "invalid_customer_id"),
    ("/v1/customers/default/%3", "invalid_customer_id"),
    ("/v1/customers/default/%zz", "invalid_customer_id"),
    ("/v1/customers/default/", "invalid_customer_id"),
    ("/v1/customers/acme/" + "x" * 201, "invalid_customer_id"),
    ("/v1/customers/acme/" + "%78" * 201, "invalid_customer_id"),
    ("/v1/customers/default/" + quote("acme:x" * 34, safe=""), "invalid_customer_id"),
]


@pytest.fixture
def lookalikes(store: Store, profiles: Profiles) -> dict[tuple[str, str], str]:
    events = [
        placed_days_ago(profiles, cid, "o1", amount, 5, tenant=tenant)
        for (tenant, cid), amount in LOOKALIKES.items()
    ]
    apply(store, profiles, events)
    return LOOKALIKES


def assert_outcome(status: int, doc: Any, expected: tuple[str, str] | int | str) -> None:
    assert status not in (500, 503), doc
    if isinstance(expected, tuple):
        assert status == 200, doc
        assert (doc["tenant"], doc["customer_id"]) == expected
        assert doc["monetary"] == LOOKALIKES[expected]
    elif isinstance(expected, int):
        assert status == expected, doc
        assert doc["error"] == "not_found"
    else:
        assert status == 400, doc
        assert doc["error"] == expected
        segment = "tenant" if expected == "invalid_tenant" else "customer id"
        assert f"the {segment} segment" in doc["detail"]


@pytest.mark.parametrize(("path", "expected"), CONFUSION)
def test_crafted_paths_never_reach_another_tenant(
    api: Api, lookalikes: dict[tuple[str, str], str], path: str, expected: Any
) -> None:
    status, doc = get_json(api, path)
    assert_outcome(status, doc, expected)


def test_crafted_paths_over_http(api: Api, lookalikes: dict[tuple[str, str], str]) -> None:
    with running(api) as port:
        for path, expected in [*CONFUSION, ("//v1/customers/acme/x", ("acme", "x"))]:
            status, headers, body = http_get(port, path)
            assert headers["content-type"] == "application/json", path
            assert_outcome(status, json.loads(body), expected)
        # raw, unencoded non-ASCII and control bytes on the request line
        for target in (b"/v1/customers/default/\xe2\x98\x95", b"/v1/customers/acme/x\x01"):
            status, _, body = raw_exchange(port, b"GET " + target + b" HTTP/1.0\r\n\r\n")
            assert status == 400, body


def test_non_ascii_target_is_400(api: Api, lookalikes: dict[tuple[str, str], str]) -> None:
    for path in ("/v1/customers/default/☕", "/v1/customers/acme/x\x00", "/v1/matrix?tenant=é"):
        status, doc = get_json(api, path)
        assert (status, doc["error"]) == (400, "bad_request"), path


def test_customer_id_limit_is_200_characters_not_bytes(
    api: Api, store: Store, profiles: Profiles
) -> None:
    longest = ["x" * 200, "☕" * 200, "%" * 200]
    events = [
        valid_event(
            profiles,
            event_id=f"e{i}",
            kind="placed",
            order_id="o1",
            customer=cid,
            occurred_at=(AS_OF - DAY).isoformat(),
            now_ms=AS_OF_MS,
            amount="10",
        )
        for i, cid in enumerate(longest)
    ]
    apply(store, profiles, events)
    for cid in longest:
        status, doc = get_json(api, customer_path("default", cid))
        assert (status, doc["customer_id"]) == (200, cid)
    assert get_json(api, customer_path("default", "☕" * 201))[0] == 400
    status, doc = get_json(api, customer_path("a" * 100, "x"))
    assert status == 404  # the longest tenant name is valid; nobody there


_PIECES = [
    "acme", "default", "x", ":", "%3A", "%3a", "/", "%2F", "%25", "%253A", "..", ".", "%2E",
    "%00", "%ff", "%EF%BF%BD", "%", "%3", "acme:x", "%20", "+", "-", "_", "☕", "%E2%98%95",
]  # fmt: skip
_ESCAPED = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")


def _reference_decode(raw: str) -> str | None:
    if not raw.isascii() or not _ESCAPED.fullmatch(raw):
        return None
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


@hsettings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw_tenant=st.lists(st.sampled_from(_PIECES), max_size=5).map("".join),
    raw_id=st.lists(st.sampled_from(_PIECES), max_size=5).map("".join),
)
def test_any_path_reaches_only_the_customer_it_spells(
    api: Api, lookalikes: dict[tuple[str, str], str], raw_tenant: str, raw_id: str
) -> None:
    status, doc = get_json(api, f"/v1/customers/{raw_tenant}/{raw_id}")
    assert status in (200, 400, 404), doc
    tenant, customer_id = _reference_decode(raw_tenant), _reference_decode(raw_id)
    if not (raw_tenant + raw_id).isascii():
        assert status == 400
    elif "/" in raw_tenant + raw_id:
        assert status == 404  # more than two segments: no route
    elif tenant is None or not TENANT_NAME.fullmatch(tenant):
        assert (status, doc["error"]) == (400, "invalid_tenant")
    elif customer_id is None or not 1 <= len(customer_id) <= 200:
        assert (status, doc["error"]) == (400, "invalid_customer_id")
    elif (tenant, customer_id) in lookalikes:
        assert status == 200
        assert (doc["tenant"], doc["customer_id"]) == (tenant, customer_id)
        assert doc["monetary"] == lookalikes[(tenant, customer_id)]
    else:
        assert status == 404


@pytest.mark.parametrize(
    "query",
    [
        "tenant=",
        "tenant=default:x",
        "tenant=default%3Ax",
        "tenant=..%2Fdefault",
        "tenant=%ff",
        "tenant=%00",
        "tenant=%zz",
        "tenant=a+b",
        "tenant=" + "a" * 101,
        "tenant=default&tenant=acme",
    ],
)
def test_matrix_with_an_invalid_tenant_is_400(
    api: Api, lookalikes: dict[tuple[str, str], str], query: str
) -> None:
    status, doc = get_json(api, f"/v1/matrix?{query}")
    assert status == 400
    assert doc["error"] == "invalid_tenant"
    assert "tenant parameter" in doc["detail"]


def test_matrix_of_a_valid_tenant(api: Api, lookalikes: dict[tuple[str, str], str]) -> None:
    for query, tenant, customers in [
        ("tenant=acme", "acme", 3),
        ("tenant=..", "..", 1),
        ("tenant=%2E%2E", "..", 1),
        ("tenant=nobody", "nobody", 0),
        ("other=1", "default", 5),
    ]:
        status, doc = get_json(api, f"/v1/matrix?{query}")
        assert (status, doc["tenant"], doc["customers"]) == (200, tenant, customers), query


# -- timeouts and limits over a real socket -----------------------------------------------------


def test_idle_connection_is_closed_within_the_timeout(api: Api) -> None:
    with (
        running(api, timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server closed it, having sent nothing
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 3, elapsed
        assert http_get(port, "/healthz")[0] == 200  # and it still serves


def test_headers_sent_slowly_are_cut_at_the_deadline(api: Api) -> None:
    """One byte every 0.1 s never trips a per-read timeout of 0.5 s: the deadline does."""
    with (
        running(api, timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.0\r\n")
        closed_after = None
        for _ in range(100):  # 10 s of dripping at most
            try:
                sock.sendall(b"X")
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable and sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None
        assert closed_after < 3, closed_after


def test_a_request_that_waited_out_a_starved_server_is_served(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving thread gets no CPU for longer than the request timeout right after it
    accepted a probe's connection (a loaded node): the request head that came meanwhile is
    whole, so it is answered, not reset as a connection whose deadline passed."""
    from worker.web import server as server_module

    accept = server_module._Server._accept

    def starved_after_accepting(self: Any) -> None:
        accept(self)
        time.sleep(0.8)  # past the 0.5 s deadline of the connection just accepted

    monkeypatch.setattr(server_module._Server, "_accept", starved_after_accepting)
    with running(api, timeout=0.5) as port:
        assert raw_exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")[0] == 200


def test_idle_clients_do_not_block_others(api: Api) -> None:
    with running(api, timeout=5) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
        try:
            started = time.monotonic()
            assert http_get(port, "/healthz")[0] == 200
            assert time.monotonic() - started < 2
        finally:
            for sock in idle:
                sock.close()


def _busy(port: int, path: str) -> bytes:
    """The whole reply to a GET of `path`, read until the server closes."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


def assert_refused(reply: bytes) -> None:
    assert reply.startswith(b"HTTP/1.0 503 "), reply
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"] == "unavailable"


def test_a_full_budget_refuses_at_once_and_the_other_still_serves(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests are served within two budgets: the read API's (max_connections) and the
    probes' (max_probe_connections). A full one answers 503 at once; the other serves."""
    gate, inside = threading.Event(), threading.Semaphore(0)
    matrix, not_ready = views.matrix, api.not_ready

    def held(answer: Callable[..., Any]) -> Callable[..., Any]:
        def wait_then_answer(*args: Any, **kwargs: Any) -> Any:
            inside.release()
            gate.wait(10)
            return answer(*args, **kwargs)

        return wait_then_answer

    monkeypatch.setattr(views, "matrix", held(matrix))  # as Api calls it
    monkeypatch.setattr(api, "not_ready", held(not_ready))
    with (
        running(api, timeout=5, max_connections=2, max_probe_connections=1) as port,
        ThreadPoolExecutor(3) as pool,
    ):

        def enter(path: str) -> Future[tuple[int, dict[str, str], bytes]]:
            """GET `path` until the server takes it in and holds it: a slot comes back
            once its last client has closed, a moment after reading its answer."""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                future = pool.submit(http_get, port, path)
                while not future.done():
                    if inside.acquire(timeout=0.05):
                        return future
                assert future.result()[0] == 503
            raise AssertionError(f"{path} was never taken in")

        try:
            served = [enter("/v1/matrix"), enter("/v1/matrix")]  # the read API's budget
            started = time.monotonic()
            assert_refused(_busy(port, "/v1/matrix"))
            assert_refused(_busy(port, "/"))  # every path but the probes' shares it
            assert time.monotonic() - started < 2
            assert http_get(port, "/healthz")[0] == 200

            served.append(enter("/readyz"))  # and now the probes' budget
            assert_refused(_busy(port, "/healthz"))
            assert_refused(_busy(port, "//metrics?x"))
        finally:
            gate.set()
        assert [future.result()[0] for future in served] == [200, 200, 200]
        deadline = time.monotonic() + 5  # the slots come back
        while (http_get(port, "/healthz")[0], http_get(port, "/v1/matrix")[0]) != (200, 200):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_connections_without_a_request_take_no_budget(api: Api) -> None:
    with running(api, timeout=5, max_connections=1, max_probe_connections=1) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
        try:
            for sock in idle[5:]:
                sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\n")  # not the end
            time.sleep(0.3)  # all accepted
            started = time.monotonic()
            assert http_get(port, "/healthz")[0] == 200
            assert http_get(port, "/v1/matrix")[0] == 200
            assert time.monotonic() - started < 2
        finally:
            for sock in idle:
                sock.close()


def test_the_oldest_connection_without_a_request_makes_room(api: Api) -> None:
    with running(api, timeout=5, max_pending=2) as port:
        first = socket.create_connection(("127.0.0.1", port), timeout=10)
        time.sleep(0.1)
        second = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            time.sleep(0.3)  # both accepted, neither has sent anything
            started = time.monotonic()
            assert http_get(port, "/healthz")[0] == 200  # a third: the first makes room
            reply = b""
            while chunk := first.recv(4096):
                reply += chunk
            assert_refused(reply)
            assert time.monotonic() - started < 2
            second.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # still open, and served
            assert second.recv(1024).startswith(b"HTTP/1.0 200 ")
        finally:
            first.close()
            second.close()


# -- slowloris: probes and /metrics stay answerable ---------------------------------------------

PROBES = ("/healthz", "/readyz", "/metrics")
PROBE_TIMEOUT = 1.0  # seconds for a whole probe, connect to last byte (kubelet's default)
SILENT, DRIPPING, HELD = 150, 150, 128  # attack connections kept open at once
# more half-open connections than any fixed connection limit: a server that stops accepting
# at one (waitress's connection_limit) answers no probe until they go away, and dripping
# ones never do where only inactivity is timed
FLOOD = (0, 1200, 0)
HOLD = 1.5  # seconds a HELD connection stays open after its whole request
REOPEN = 0.25  # seconds before a connection the server closed is opened again
PACE = 3  # connections opened at most per 10 ms: 300 a second


def _slowloris(
    port: int,
    stop: threading.Event,
    opened: list[int],
    sizes: tuple[int, int, int] = (SILENT, DRIPPING, HELD),
) -> None:
    """Attack 127.0.0.1:port until `stop` with `sizes` (SILENT, DRIPPING, HELD) connections:
    SILENT ones send nothing, DRIPPING ones a partial /v1 request head and then a header line
    every 0.5 s, HELD ones a whole /v1 request whose answer they never read, closing only
    HOLD seconds later. Connections are opened at a steady PACE without waiting for each
    other (non-blocking connects); one the server closes is opened again REOPEN seconds
    later, as attack tools do. `opened[0]` counts connections established."""
    partial = b"GET /v1/matrix HTTP/1.1\r\nHost: x\r\n"
    whole = b"GET /v1/matrix HTTP/1.0\r\n\r\n"
    silent, dripping, held_ = sizes
    to_open = [b""] * silent + [partial] * dripping + [whole] * held_
    random.Random(1).shuffle(to_open)  # the kinds mixed, as they reach the server
    held: list[tuple[float, socket.socket]] = []  # (when to close, connection)
    closed: list[tuple[float, bytes]] = []  # (when to open again, what to send)
    with selectors.DefaultSelector() as selector:
        next_drip = time.monotonic() + 0.5
        while not stop.is_set():
            for _ in range(min(len(to_open), PACE)):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))  # established when writable
                selector.register(sock, selectors.EVENT_WRITE, (sock, to_open.pop()))
            for key, events in selector.select(0.01):
                sock, first = key.data
                if events & selectors.EVENT_WRITE and not sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_ERROR
                ):
                    opened[0] += 1
                    with suppress(OSError):
                        sock.send(first)
                    if first == whole:
                        selector.unregister(sock)
                        held.append((time.monotonic() + HOLD, sock))
                    else:
                        selector.modify(sock, selectors.EVENT_READ, key.data)
                    continue
                selector.unregister(sock)  # refused, or closed (or answered) by the server
                sock.close()
                closed.append((time.monotonic() + REOPEN, first))
            while held and held[0][0] <= time.monotonic():
                held.pop(0)[1].close()
                to_open.append(whole)
            while closed and closed[0][0] <= time.monotonic():
                to_open.append(closed.pop(0)[1])
            if time.monotonic() >= next_drip:
                next_drip += 0.5
                for key in list(selector.get_map().values()):
                    if key.data[1] == partial and key.events == selectors.EVENT_READ:
                        with suppress(OSError):
                            key.data[0].send(b"X-Drip: x\r\n")
        for key in list(selector.get_map().values()):
            key.data[0].close()
        for _, sock in held:
            sock.close()


def _probe(port: int, path: str) -> bool:
    """One probe as the kubelet makes it: a 200 within PROBE_TIMEOUT, all told."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200 and time.monotonic() - started < PROBE_TIMEOUT
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _enough_descriptors(needed: int) -> None:
    """Both ends of every attack connection are in this process: raise its limit of open
    files (often 1024) when it is lower, or skip when the hard limit forbids it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"{needed} open files needed, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.parametrize(
    "sizes", [(SILENT, DRIPPING, HELD), FLOOD], ids=["mixed", "flood of dripping heads"]
)
def test_probes_and_metrics_stay_answerable_under_slowloris(
    api: Api, sizes: tuple[int, int, int]
) -> None:
    """Hundreds of half-open connections (silent, or dripping a /v1 head) and /v1 requests
    held open, renewed as the server drops them, for several seconds: /healthz, /readyz and
    /metrics keep answering 200 in time, and the server serves /v1 again afterwards. (With
    one budget of 64 connections for every path, taken before the request line was read,
    and a 10 s deadline for the head, 0-2% of these probes were answered.) The flood: more
    connections dripping their heads than the server keeps at once, every one of them."""
    _enough_descriptors(2 * sum(sizes) + 1024)
    with running(api) as port:
        stop, opened = threading.Event(), [0]
        attacker = threading.Thread(
            target=_slowloris, args=(port, stop, opened, sizes), daemon=True
        )
        attacker.start()
        results: dict[str, list[bool]] = {path: [] for path in PROBES}
        try:
            time.sleep(2)  # the attack under way
            attack_ends = time.monotonic() + 6
            for path in itertools.cycle(PROBES):
                if time.monotonic() >= attack_ends:
                    break
                results[path].append(_probe(port, path))
                time.sleep(0.02)
        finally:
            stop.set()
            attacker.join(10)
        assert not attacker.is_alive()
        made = sum(len(r) for r in results.values())
        answered = sum(sum(r) for r in results.values())
        summary = {path: f"{sum(r)}/{len(r)}" for path, r in results.items()}
        print(f"slowloris: {opened[0]} attack connections, probes answered {summary}")
        assert opened[0] >= sum(sizes)  # the attack did run
        assert made >= 30, summary
        assert answered >= 0.99 * made, summary
        assert all(any(r) for r in results.values()), summary  # each path answered

        deadline = time.monotonic() + 5  # and afterwards the read API is served again
        while http_get(port, "/v1/matrix")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert all(_probe(port, path) for path in PROBES)


def test_request_line_too_long_is_414(api: Api) -> None:
    with running(api) as port:
        started = time.monotonic()
        path = "/v1/customers/default/" + "x" * 100_000
        status, headers, body = raw_exchange(port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert status == 414
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"] == "request_uri_too_long"
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "headers",
    [
        "".join(f"X-Filler-{i}: {'y' * 1000}\r\n" for i in range(40)),  # 40 KB in all
        "X-Long: " + "y" * 40_000 + "\r\n",  # one long line
        "".join(f"X-{i}: y\r\n" for i in range(150)),  # too many headers
    ],
)
def test_headers_too_large_are_431(api: Api, headers: str) -> None:
    with running(api) as port:
        status, _, body = raw_exchange(port, f"GET /healthz HTTP/1.0\r\n{headers}\r\n".encode())
        assert status == 431
        assert json.loads(body)["error"] == "request_header_fields_too_large"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"])
def test_other_methods_are_405_without_reading_the_body(api: Api, method: str) -> None:
    with running(api, timeout=5) as port:
        started = time.monotonic()
        # a body of a gigabyte announced, never sent: the answer must not wait for it
        status, headers, body = raw_exchange(
            port,
            f"{method} /v1/customers/default/x HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n".encode(),
        )
        assert status == 405
        assert headers["allow"] == "GET"
        assert json.loads(body)["error"] == "method_not_allowed"
        assert time.monotonic() - started < 2


def test_head_is_405_without_a_body(api: Api) -> None:
    with running(api) as port:
        status, headers, body = raw_exchange(port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert (status, headers["allow"], body) == (405, "GET", b"")


@pytest.mark.parametrize(
    "header", ["Content-Length: 5", "Transfer-Encoding: chunked", "Content-Length: x"]
)
def test_get_with_a_body_is_400(api: Api, header: str) -> None:
    with running(api, timeout=5) as port:
        started = time.monotonic()
        status, _, body = raw_exchange(port, f"GET /healthz HTTP/1.1\r\n{header}\r\n\r\n".encode())
        assert status == 400
        assert json.loads(body)["error"] == "bad_request"
        assert time.monotonic() - started < 2


def test_a_body_sent_anyway_is_drained_not_answered_with_a_reset(api: Api) -> None:
    with running(api) as port:
        request = b"POST /v1/matrix HTTP/1.0\r\nContent-Length: 50000\r\n\r\n" + b"z" * 50_000
        assert raw_exchange(port, request)[0] == 405


def test_get_without_a_body_is_served(api: Api) -> None:
    with running(api) as port:
        status, _, _ = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert status == 200


# -- the bind address (RFM_HTTP_HOST) -----------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


BIND_HOSTS = [("127.0.0.1", "127.0.0.1")]
if _has_ipv6_loopback():  # containers without IPv6 exist; IPv4 is tested everywhere
    BIND_HOSTS.append(("::1", "::1"))


@pytest.mark.parametrize(("host", "bound"), BIND_HOSTS)
def test_serve_binds_the_given_host(api: Api, host: str, bound: str) -> None:
    server = serve(api, port=0, host=host)
    try:
        assert server.server_address[0] == bound
        family = socket.AF_INET6 if ":" in bound else socket.AF_INET
        with socket.socket(family) as sock:
            sock.settimeout(10)
            sock.connect((bound, server.server_address[1]))
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.0 200 ")
    finally:
        server.shutdown()
        server.server_close()


def test_serve_on_a_host_name_binds_its_address(api: Api) -> None:
    server = serve(api, port=0, host="localhost")
    try:
        assert ipaddress.ip_address(server.server_address[0]).is_loopback
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_serve_on_a_host_it_cannot_bind_is_a_config_error(api: Api, host: str) -> None:
    with pytest.raises(ConfigError, match=f"^RFM_HTTP_HOST={re.escape(host)}: "):
        serve(api, port=0, host=host)


# -- rfm_customers: bounded labels --------------------------------------------------------------


def customers_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.labels["tenant"], s.labels["segment"]): s.value
        for family in registry.collect()
        if family.name == "rfm_customers"
        for s in family.samples
    }


def test_rfm_customers_keeps_profile_tenants_and_groups_the_others() -> None:
    counts = Counter(
        {
            ("default", "lost"): 2,
            ("sofa-shop", "lost"): 3,
            ("sofa-shop", "champions"): 1,
            ("tenant-1", "lost"): 4,
            ("tenant-2", "lost"): 5,
            ("tenant-3", "champions"): 6,
            ("other", "lost"): 7,  # a tenant named like the label, without a profile
        }
    )
    registry = CollectorRegistry()
    registry.register(CustomersCollector(lambda _label: counts, ["default", "sofa-shop"]))
    assert customers_samples(registry) == {
        ("default", "lost"): 2,
        ("sofa-shop", "lost"): 3,
        ("sofa-shop", "champions"): 1,
        ("other", "lost"): 16,
        ("other", "champions"): 6,
    }


def test_rfm_customers_labels_stay_bounded_with_many_tenants(store: Store) -> None:
    profiles = Profiles.from_toml(
        """
        [profiles.vip]
        recency_days = [10, 20, 30, 40]
        frequency_orders = [2, 3, 4, 5]
        monetary = [10, 20, 30, 40]
        """
    )
    tenants = ["vip", "default", *(f"shop-{i:03d}" for i in range(300))]
    events = [
        placed_days_ago(profiles, f"c{i}", "o1", "50", 5, tenant=t) for i, t in enumerate(tenants)
    ]
    apply(store, profiles, events)
    registry = CollectorRegistry()
    registry.register(CustomersCollector(store.reads.segment_counts, profiles.names()))
    samples = customers_samples(registry)
    assert {tenant for tenant, _ in samples} == {"vip", "default", "other"}
    assert sum(v for (t, _), v in samples.items() if t == "other") == 300
    assert sum(samples.values()) == len(tenants)


def test_register_customers_serves_the_bounded_labels_on_metrics(
    api: Api, store: Store, profiles: Profiles
) -> None:
    apply(
        store,
        profiles,
        [placed_days_ago(profiles, "c", "o1", "10", 400, tenant=f"t{i}") for i in range(3)]
        + [placed_days_ago(profiles, "c", "o1", "10", 400)],
    )
    collector = register_customers(store.reads.segment_counts, profiles.names())
    try:
        status, _ctype, body, _ = api.handle("/metrics")
        assert status == 200
        assert (
            REGISTRY.get_sample_value("rfm_customers", {"tenant": "other", "segment": "lost"}) == 3
        )
        assert (
            REGISTRY.get_sample_value("rfm_customers", {"tenant": "default", "segment": "lost"})
            == 1
        )
        assert b'tenant="t0"' not in body
        assert generate_latest(REGISTRY).count(b"rfm_customers{") == 2
    finally:
        REGISTRY.unregister(collector)
