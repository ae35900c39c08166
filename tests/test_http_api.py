"""The HTTP surface (contract section 9) against the suite's Redis: routes through Api.handle,
and once over a real socket through serve()."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote

import orjson
import pytest

from tests.factories import valid_event
from worker.config import Settings
from worker.events import ValidEvent, validate
from worker.http_api import Api, serve
from worker.profiles import Profiles
from worker.store import Store

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
AS_OF_MS = int(AS_OF.timestamp()) * 1000
DAY = timedelta(days=1)

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
    store.advance_clock(AS_OF_MS)
    return Api(settings, profiles, store, healthy=lambda: flags.healthy, ready=lambda: flags.ready)


def placed(
    profiles: Profiles,
    customer: str,
    order: str,
    amount: str,
    days_ago: float,
    tenant: str | None = None,
) -> ValidEvent:
    return valid_event(
        profiles,
        event_id=f"{tenant}/{customer}/{order}",
        kind="placed",
        order_id=order,
        customer=customer,
        occurred_at=(AS_OF - days_ago * DAY).isoformat(),
        now_ms=AS_OF_MS,
        amount=amount,
        tenant=tenant,
    )


def apply(store: Store, profiles: Profiles, events: list[ValidEvent]) -> None:
    store.apply_batch([(e, 0) for e in events], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS)


def get_json(api: Api, path: str) -> tuple[int, Any]:
    status, ctype, body = api.handle(path)
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
            placed(profiles, "67543", "o1", "200", 60),
            placed(profiles, "67543", "o2", "150", 20),
            placed(profiles, "67543", "o3", "0.01", 20.5),
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
    }


def test_customer_ids_with_any_character(api: Api, store: Store, profiles: Profiles) -> None:
    # each id gets its own amount, so a mix-up between two ids cannot go unnoticed
    amounts = {cid: f"{100 * (i + 1)}.00" for i, cid in enumerate(ODD_IDS)}
    apply(store, profiles, [placed(profiles, cid, "o1", amounts[cid], 5) for cid in ODD_IDS])
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
            placed(profiles, "c/1", "o1", "1200", 2, tenant="shop-b"),
            placed(profiles, "c/1", "o1", "10", 400),
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
    apply(store, profiles, [placed(profiles, "67543", "o1", "10", 1)])
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
    apply(store, profiles, [placed(profiles, "gone", "o1", "10", 1), cancel])
    assert get_json(api, "/v1/customers/default/gone")[0] == 404


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/v1/customers", "/v1/customers/default", "/v1/matrixx", "/metrics/x"]
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
    assert get_json(api, "/readyz")[0] == 503
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
    status, ctype, body = api.handle("/metrics")
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
            placed(profiles, "a", "o1", "10", 400),  # 111 lost
            placed(profiles, "b", "o1", "20", 500),  # 111 lost
            placed(profiles, "c", "o1", "1000", 400),  # 115 at_risk
            placed(profiles, "d", "o1", "120", 3),  # 512 new_customers
            placed(profiles, "e", "o1", "120", 3, tenant="shop-b"),  # 512 new_customers
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
    apply(store, profiles, [placed(profiles, cid, "o1", "42.50", 1)])
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
