"""GET /: the live page of the matrix, over a real HTTP server on the suite's Redis: its
headers, that it is self-contained (no external URL) and holds no segment table of its own,
that it is served without the token while /v1/* still asks for it; /v1/segments (names,
colours, sizes over time, flows between segments, worker/state/flows.py); the palette in
simulated colour-vision deficiencies; and, where Debian's chromium is installed, that a
headless browser (driven by Playwright) running the page's script renders what the API
returns, and nothing but how to give the token when one is needed and none was given."""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.factories import AS_OF_MS, placed_days_ago, valid_event
from tests.state.test_value_sums import value_profiles
from worker.config import Settings
from worker.rules.events import ValidEvent
from worker.rules.instants import iso
from worker.rules.profiles import Profiles
from worker.rules.segments import STANDARD_SEGMENTS
from worker.services import causes
from worker.state import flows, keys
from worker.state.store import BatchResult, Store
from worker.web.api import Api
from worker.web.server import serve
from worker.web.views import STANDARD_COLOURS, segment_style

TOKEN = "page-test-token"
CSP = (
    "default-src 'none'",
    "script-src 'unsafe-inline'",
    "style-src 'unsafe-inline'",
    "connect-src 'self'",
)


def _settings(monkeypatch: pytest.MonkeyPatch, token: str | None) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RFM_CLOCK", "event")
    if token is not None:
        monkeypatch.setenv("RFM_HTTP_TOKEN", token)
    return Settings()


def _server(api: Api) -> Iterator[str]:
    server = serve(api, 0, "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch, profiles: Profiles, store: Store) -> Iterator[str]:
    store.clock.advance(AS_OF_MS)
    api = Api(_settings(monkeypatch, None), profiles, store, lambda: True, lambda: True)
    yield from _server(api)


@pytest.fixture
def secured_base(
    monkeypatch: pytest.MonkeyPatch, profiles: Profiles, store: Store
) -> Iterator[str]:
    store.clock.advance(AS_OF_MS)
    api = Api(_settings(monkeypatch, TOKEN), profiles, store, lambda: True, lambda: True)
    yield from _server(api)


def populate(store: Store, profiles: Profiles) -> None:
    """default: (1,1) 3 lost-dominated, (5,1) 1 new_customers, (5,3) 2 potential_loyalist."""
    events = [
        placed_days_ago(profiles, "a", "o1", "10", 400),  # 111 lost
        placed_days_ago(profiles, "b", "o1", "20", 500),  # 111 lost
        placed_days_ago(profiles, "c", "o1", "1000", 400),  # 115 at_risk
        placed_days_ago(profiles, "d", "o1", "120", 3),  # 512 new_customers
        placed_days_ago(profiles, "e", "o1", "120", 3, tenant="shop-b"),  # another tenant
    ]
    for customer in ("p", "q"):  # 3 orders, the last 20 days ago: R5 F3
        events += [
            placed_days_ago(profiles, customer, "o1", "200", 60),
            placed_days_ago(profiles, customer, "o2", "150", 20),
            placed_days_ago(profiles, customer, "o3", "0.01", 20.5),
        ]
    causes.apply_batch(
        store, [(e, 0) for e in events], profiles, as_of_ms=AS_OF_MS, now_ms=AS_OF_MS
    )


def fetch(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


def assert_page_headers(headers: dict[str, str]) -> None:
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    directives = [d.strip() for d in headers["Content-Security-Policy"].split(";")]
    for directive in CSP:
        assert directive in directives, directive
    # nothing beyond same-origin fetch and the inline script and style
    for directive in directives:
        name = directive.split(" ", 1)[0]
        assert name not in {"img-src", "font-src", "frame-src", "worker-src", "object-src"}
        assert "*" not in directive and "http" not in directive, directive


class _Refs(HTMLParser):
    """Every src/href/action attribute and whether any element loads a script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v or "" for k, v in attrs if k in {"src", "href", "action", "srcset"}]
        if tag == "link":
            self.refs.append("<link>")


# -- the page ------------------------------------------------------------------------------------


def test_page_is_html_with_strict_headers(base: str) -> None:
    status, headers, body = fetch(f"{base}/")
    assert status == 200
    assert_page_headers(headers)
    html = body.decode("utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "/v1/matrix" in html and "/v1/segments" in html
    assert "sessionStorage" in html and "Bearer " in html
    assert "data-r" in html and "data-f" in html


def test_page_has_no_external_url(base: str) -> None:
    html = fetch(f"{base}/")[2].decode("utf-8")
    assert "http://" not in html and "https://" not in html
    assert "//" not in html  # not even protocol-relative (nor a JS line comment)
    parser = _Refs()
    parser.feed(html)
    assert parser.refs == []  # no src, href or <link>: everything is inline
    assert not re.search(r"url\s*\(|@import", html)
    # one fetch, of same-origin paths only: the matrix, the segments, a segment's customers
    # and the OpenAPI document (the customer view's fields, for the CSV)
    assert re.findall(r"fetch\(([^,]*),", html) == ["path"]
    assert set(re.findall(r'"(/[^"]*)"', html)) == {
        "/v1/matrix?tenant=",
        "/v1/segments?tenant=",
        "/v1/segments/",
        "/",
        "/customers?",
        "/openapi.json",
    }


def test_page_holds_no_segment_table_of_its_own(base: str) -> None:
    """Names and colours come from /v1/segments: a table in the page would drift from the
    segment maps (it once said cannot_lose_them for cant_lose_them)."""
    html = fetch(f"{base}/")[2].decode("utf-8")
    for name in STANDARD_SEGMENTS:
        assert not re.search(rf"\b{name}\b", html), name
    for label, colour in STANDARD_COLOURS.values():
        assert colour.lower() not in html.lower(), label
        assert label not in html, label


def test_page_ignores_the_query_string(base: str) -> None:
    status, headers, body = fetch(f"{base}/?tenant=x")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert body == fetch(f"{base}/")[2]


def test_page_is_served_without_the_token_but_the_data_is_not(secured_base: str) -> None:
    status, headers, _ = fetch(f"{secured_base}/")
    assert status == 200
    assert_page_headers(headers)
    for path in ("/v1/matrix?tenant=default", "/v1/segments?tenant=default"):
        assert fetch(f"{secured_base}{path}")[0] == 401, path
        assert fetch(f"{secured_base}{path}", f"Bearer {TOKEN}")[0] == 200, path


def test_page_is_get_only(base: str) -> None:
    request = urllib.request.Request(f"{base}/", method="DELETE")
    with pytest.raises(HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    with info.value as exc:
        assert exc.code == 405


# -- the data it reads ---------------------------------------------------------------------------


def get_over_http(base: str, resource: str, tenant: str = "default") -> dict[str, Any]:
    status, headers, body = fetch(f"{base}/v1/{resource}?tenant={tenant}")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    doc: dict[str, Any] = json.loads(body)
    return doc


def matrix_over_http(base: str, tenant: str = "default") -> dict[str, Any]:
    return get_over_http(base, "matrix", tenant)


def test_matrix_over_http_counts_what_was_applied(
    base: str, store: Store, profiles: Profiles
) -> None:
    assert matrix_over_http(base)["customers"] == 0
    populate(store, profiles)
    doc = matrix_over_http(base)
    assert doc["tenant"] == "default" and doc["customers"] == 6
    assert sorted((c["r"], c["f"], c["customers"], c["segment"]) for c in doc["cells"]) == [
        (1, 1, 3, "lost"),
        (5, 1, 1, "new_customers"),
        (5, 3, 2, "potential_loyalist"),
    ]
    assert doc["segments"] == {
        "at_risk": 1,
        "lost": 2,
        "new_customers": 1,
        "potential_loyalist": 2,
    }
    other = matrix_over_http(base, "shop-b")
    assert (other["customers"], other["segments"]) == (1, {"new_customers": 1})


def test_segments_name_and_colour_every_segment_of_the_profile(
    base: str, store: Store, profiles: Profiles
) -> None:
    populate(store, profiles)
    doc = get_over_http(base, "segments")
    assert (doc["tenant"], doc["profile"], doc["as_of"]) == ("default", "default", iso(AS_OF_MS))
    assert doc["levels"] == {"r": 5, "f": 5, "m": 5}
    # the profile's map, in its order (best customers first), each named and coloured
    assert [s["name"] for s in doc["segments"]] == list(STANDARD_SEGMENTS)
    for s in doc["segments"]:
        label, colour = STANDARD_COLOURS[s["name"]]
        assert (s["label"], s["colour"], s["in_profile"]) == (label, colour, True)
        assert s["text"] in ("#000000", "#ffffff")
    assert {s["name"]: s["customers"] for s in doc["segments"] if s["customers"]} == (
        matrix_over_http(base)["segments"]
    )
    # not recorded (no rfm:flows:since): no window is complete, no size but today's
    assert doc["flows"]["recorded_since"] is None
    for window in ("hour", "day"):
        assert doc["flows"][window]["complete"] is False
        assert doc["flows"][window]["until"] == iso(AS_OF_MS)
    assert doc["sizes"]["at"] == [iso(AS_OF_MS)]
    assert doc["sizes"]["segments"]["lost"] == [2]
    assert doc["sizes"]["segments"]["champions"] == [0]


def test_every_standard_segment_has_a_colour_and_a_name_people_read() -> None:
    assert set(STANDARD_COLOURS) == set(STANDARD_SEGMENTS)
    assert len({colour.lower() for _, colour in STANDARD_COLOURS.values()}) == len(
        STANDARD_SEGMENTS
    )
    for name in STANDARD_SEGMENTS:
        label = segment_style(name).label
        assert "_" not in label and label[0].isupper() and label != name, label
    assert segment_style("cant_lose_them").label == "Can't lose them"
    assert segment_style("at_risk").label == "At risk"
    # any other name: readable, and the same colour in every process (crc32, not hash())
    assert segment_style("vip_regulars").label == "Vip regulars"
    assert segment_style("vip_regulars") == segment_style("vip_regulars")


# Colour-vision deficiencies, simulated on linear RGB (Machado, Oliveira and Fernandes
# 2009, severity 1.0), compared in CIELAB.
CVD = {
    "normal vision": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "protanopia": (
        (0.152286, 1.052583, -0.204868),
        (0.114503, 0.786281, 0.099216),
        (-0.003882, -0.048116, 1.051998),
    ),
    "deuteranopia": (
        (0.367322, 0.860646, -0.227968),
        (0.280085, 0.672501, 0.047413),
        (-0.011820, 0.042940, 0.968881),
    ),
    "tritanopia": (
        (1.255528, -0.076749, -0.178779),
        (-0.078411, 0.930809, 0.147602),
        (0.004733, 0.691367, 0.303900),
    ),
}


def _lab_as_seen(colour: str, matrix: tuple[tuple[float, ...], ...]) -> tuple[float, ...]:
    def linear(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    rgb = [linear(int(colour[i : i + 2], 16)) for i in (1, 3, 5)]
    seen = [sum(m * v for m, v in zip(row, rgb, strict=True)) for row in matrix]
    r, g, b = (min(1.0, max(0.0, v)) for v in seen)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_standard_colours_stay_apart_in_colour_blind_vision() -> None:
    """Every two standard segments differ by a CIE76 delta E of 15 at least (clearly apart)
    in normal vision and the three dichromacies; lost and at risk, once two near reds, by
    30 at least."""
    colours = {name: colour for name, (_label, colour) in STANDARD_COLOURS.items()}
    for vision, matrix in CVD.items():
        seen = {name: _lab_as_seen(colour, matrix) for name, colour in colours.items()}
        for a, b in itertools.combinations(seen, 2):
            distance = math.dist(seen[a], seen[b])
            assert distance >= 15, (vision, a, b, round(distance, 1))
        assert math.dist(seen["lost"], seen["at_risk"]) >= 30, vision


def test_segments_of_an_earlier_profile_follow_the_profile_s(
    base: str, store: Store, profiles: Profiles
) -> None:
    """Customers last published under another map keep its names until rescored: they are
    listed after the profile's, styled as any custom name."""
    earlier = Profiles.from_toml(
        """
[profiles.default]
recency_days = [30, 60, 90, 180]
frequency_orders = [2, 3, 4, 5]
monetary = [100, 200, 300, 400]

[[profiles.default.segments]]
name = "vip_regulars"
"""
    )
    causes.apply_batch(
        store,
        [(placed_days_ago(earlier, "v", "o1", "10", 3), 0)],
        earlier,
        as_of_ms=AS_OF_MS,
        now_ms=AS_OF_MS,
    )
    doc = get_over_http(base, "segments")
    names = [s["name"] for s in doc["segments"]]
    assert names == [*STANDARD_SEGMENTS, "vip_regulars"]
    vip = doc["segments"][-1]
    style = segment_style("vip_regulars")
    assert (vip["in_profile"], vip["customers"], vip["label"], vip["colour"]) == (
        False,
        1,
        style.label,
        style.colour,
    )


def test_segments_with_an_invalid_tenant_is_400(base: str) -> None:
    for query in ("tenant=", "tenant=a:b", "tenant=a&tenant=b"):
        status, _, body = fetch(f"{base}/v1/segments?{query}")
        assert (status, json.loads(body)["error"]) == (400, "invalid_tenant"), query


# -- flows between segments and sizes over time ---------------------------------------------------

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
RECORDED_SINCE = AS_OF_MS - 23 * HOUR_MS  # moves recorded from then on
BEFORE = AS_OF_MS - 26 * HOUR_MS  # a customer committed before moves were recorded
FIRST = AS_OF_MS - 20 * HOUR_MS + 10 * MINUTE_MS  # within the day, not the hour
LAST = AS_OF_MS - 30 * MINUTE_MS  # within the hour


def apply_at(store: Store, profiles: Profiles, at_ms: int, events: list[ValidEvent]) -> BatchResult:
    return causes.apply_batch(
        store, [(e, 0) for e in events], profiles, as_of_ms=at_ms, now_ms=AS_OF_MS
    )


def cancelled(profiles: Profiles, customer: str, order: str, at_ms: int) -> ValidEvent:
    return valid_event(
        profiles,
        event_id=f"{customer}/{order}/cancelled",
        kind="cancelled",
        order_id=order,
        customer=customer,
        occurred_at=iso(at_ms),
        now_ms=AS_OF_MS,
    )


def moves_of_a_day(store: Store, profiles: Profiles) -> None:
    """f lost before moves were recorded; a, b lost, c at risk, d new at FIRST; at LAST d's
    only order cancelled (new_customers -> none), e lost, and a customer of shop-b."""
    apply_at(store, profiles, BEFORE, [placed_days_ago(profiles, "f", "o1", "10", 600)])
    store.redis.set(flows.RECORDED_SINCE, RECORDED_SINCE)  # as the worker does at start
    apply_at(
        store,
        profiles,
        FIRST,
        [
            placed_days_ago(profiles, "a", "o1", "10", 400),  # 111 lost
            placed_days_ago(profiles, "b", "o1", "20", 500),  # 111 lost
            placed_days_ago(profiles, "c", "o1", "1000", 400),  # 115 at_risk
            placed_days_ago(profiles, "d", "o1", "120", 3),  # 512 new_customers
        ],
    )
    apply_at(
        store,
        profiles,
        LAST,
        [
            cancelled(profiles, "d", "o1", LAST),
            placed_days_ago(profiles, "e", "o1", "10", 400),
            placed_days_ago(profiles, "g", "o1", "120", 3, tenant="shop-b"),
        ],
    )


def moves(doc: dict[str, Any], window: str) -> list[tuple[str | None, str | None, int]]:
    return [(m["from"], m["to"], m["customers"]) for m in doc["flows"][window]["moves"]]


# What moves_of_a_day moved, most customers first.
HOUR_MOVES = [(None, "lost", 1), ("new_customers", None, 1)]
DAY_MOVES = [
    (None, "lost", 3),
    (None, "at_risk", 1),
    (None, "new_customers", 1),
    ("new_customers", None, 1),
]
# Sizes at each hour from RECORDED_SINCE to AS_OF, then now: f before; a, b, c and d from
# FIRST's hour on; e in and d out within the last hour.
LOST_SIZES = [1] * 4 + [3] * 19 + [4, 4]
AT_RISK_SIZES = [0] * 4 + [1] * 19 + [1, 1]
NEW_SIZES = [0] * 4 + [1] * 19 + [0, 0]


def test_flows_and_sizes_over_time(base: str, store: Store, profiles: Profiles) -> None:
    moves_of_a_day(store, profiles)
    doc = get_over_http(base, "segments")
    recorded = doc["flows"]["recorded_since"]
    assert recorded == iso(RECORDED_SINCE)
    hour, day = doc["flows"]["hour"], doc["flows"]["day"]
    assert (hour["since"], hour["until"], hour["complete"]) == (
        iso(AS_OF_MS - HOUR_MS),
        iso(AS_OF_MS),
        True,
    )
    # the day began before moves were recorded: said, not hidden
    assert (day["since"], day["complete"]) == (iso(AS_OF_MS - 24 * HOUR_MS), False)
    assert moves(doc, "hour") == HOUR_MOVES
    assert moves(doc, "day") == DAY_MOVES

    at = doc["sizes"]["at"]
    hours = range(RECORDED_SINCE, AS_OF_MS + 1, HOUR_MS)
    assert at == [iso(t) for t in hours] + [iso(AS_OF_MS)]
    sizes = doc["sizes"]["segments"]
    assert sizes["lost"] == LOST_SIZES
    assert sizes["at_risk"] == AT_RISK_SIZES
    assert sizes["new_customers"] == NEW_SIZES
    assert sizes["champions"] == [0] * len(at)
    # the last point is the counters now, as the matrix has them
    now = {name: series[-1] for name, series in sizes.items() if series[-1]}
    assert now == matrix_over_http(base)["segments"] == {"lost": 4, "at_risk": 1}

    other = get_over_http(base, "segments", "shop-b")
    assert moves(other, "hour") == [(None, "new_customers", 1)]
    assert other["sizes"]["segments"]["new_customers"] == [0] * 23 + [1, 1]


def test_flows_of_an_hour_an_hour_later(base: str, store: Store, profiles: Profiles) -> None:
    """Windows slide with the clock: an hour later, LAST's moves are out of the hour, and
    the day began after moves were recorded."""
    moves_of_a_day(store, profiles)
    store.clock.advance(AS_OF_MS + HOUR_MS)
    doc = get_over_http(base, "segments")
    assert moves(doc, "hour") == []
    assert moves(doc, "day") == DAY_MOVES
    assert doc["flows"]["day"]["complete"] is True
    assert doc["sizes"]["segments"]["lost"] == [*LOST_SIZES, 4]


def test_the_flow_layout_is_the_documented_one() -> None:
    """docs/http-and-metrics.md and the report to the commit path spell these keys."""
    at = AS_OF_MS + 7 * MINUTE_MS + 5
    writes = flows.flow_writes(5, "shop-b", at, "loyal", None)
    assert writes == [
        flows.FlowWrite(
            f"rfm:{{05}}:flows:shop-b:5m:{AS_OF_MS + 5 * MINUTE_MS}".encode(),
            "loyal\t",
            3 * HOUR_MS,
        ),
        flows.FlowWrite(f"rfm:{{05}}:flows:shop-b:1h:{AS_OF_MS}".encode(), "loyal\t", 48 * HOUR_MS),
    ]
    assert flows.flow_writes(5, "t", at, None, "lost")[0].field == "\tlost"
    assert flows.flow_writes(5, "t", at, "lost", "lost") == []  # not a move between segments
    assert flows.RECORDED_SINCE == b"rfm:flows:since"
    docs = (Path(__file__).parents[2] / "docs" / "http-and-metrics.md").read_text()
    assert "`rfm:{NN}:flows:<tenant>:<span>:<start>`" in docs and "`rfm:flows:since`" in docs
    # the keys are not customer keys to the scans of the read side
    assert not fnmatch.fnmatchcase(writes[0].key.decode(), keys.CUSTOMER_PATTERN.decode())


def test_the_commit_path_records_flows(base: str, store: Store, profiles: Profiles) -> None:
    moves_of_a_day(store, profiles)
    doc = get_over_http(base, "segments")
    assert moves(doc, "hour") == HOUR_MOVES
    assert moves(doc, "day") == DAY_MOVES


# -- in a real browser ---------------------------------------------------------------------------


class Tab:
    """A page in Debian's chromium, headless, driven by Playwright (its own browser builds
    are not fetched: it starts the chromium on PATH): the page runs in real time, and a test
    reads what the browser lays out (is an element displayed?) and acts as a user would
    (types the token, presses apply)."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def js(self, expression: str) -> Any:
        return self.page.evaluate(expression)

    def wait(self, expression: str, timeout: float = 20) -> Any:
        """The value of `expression` once it is truthy (the page polls every 2 s)."""
        # as a function: Playwright evals a bare expression, which the page's CSP refuses
        predicate = f"() => ({expression})"
        try:
            return self.page.wait_for_function(predicate, timeout=timeout * 1000).json_value()
        except PlaywrightTimeoutError:
            raise AssertionError(f"never true: {expression}\n{self.status()}") from None

    def status(self) -> str:
        text: str = self.js("(document.getElementById('status') || {}).textContent || ''")
        return text

    def loaded(self) -> None:
        self.wait("document.getElementById('grid').getAttribute('data-loaded') === 'true'")

    def refused(self) -> None:
        self.wait("document.getElementById('status').className === 'error'")

    def displayed(self, element_id: str) -> bool:
        """Whether the browser lays the element out (not display: none, nor inside one)."""
        shown: bool = self.js(
            f"document.getElementById('{element_id}').getClientRects().length > 0"
        )
        return shown

    def dom(self) -> tuple[_Dom, str]:
        html: str = self.js("document.documentElement.outerHTML")
        dom = _Dom()
        dom.feed(html)
        return dom, html

    def submit(self, *, token: str | None = None, tenant: str | None = None) -> None:
        """Fill the form as a user would and press apply."""
        for field, value in (("token", token), ("tenant", tenant)):
            if value is not None:
                self.page.fill(f"#{field}", value)
        self.page.click("#controls button[type=submit]")


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "no `chromium` on PATH (Debian: apt-get install chromium): "
            "the page's script is not run in a browser here"
        )
    with sync_playwright() as playwright:
        driven = playwright.chromium.launch(executable_path=chromium)
        try:
            yield driven
        finally:
            driven.close()


class _Dom(HTMLParser):
    """What the page's script left: grid cells, segment rows, legend, moves, and the
    attributes and text of every element with an id."""

    VOID = frozenset({"br", "input", "meta", "img", "hr", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[int, int], tuple[int, str]] = {}
        self.cell_text: dict[tuple[int, int], str] = {}
        self.segments: dict[str, int] = {}
        self.sizes: dict[str, list[int]] = {}
        self.legend: list[str] = []
        self.moves: dict[str, list[tuple[str | None, str | None, int]]] = {}
        self.ids: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self._stack: list[tuple[str, str | None, tuple[int, int] | None]] = []  # tag, id, cell
        self._window: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        cell = None
        if "id" in a:
            self.ids[a["id"]] = a
            self.text[a["id"]] = ""
        if tag == "table" and "data-window" in a:
            self._window = a["data-window"]
            self.moves[self._window] = []
        if tag == "td" and "data-r" in a and "data-f" in a:
            cell = (int(a["data-r"]), int(a["data-f"]))
            self.cells[cell] = (int(a["data-customers"]), a["data-segment"])
            self.cell_text[cell] = ""
        elif tag == "tr" and "data-segment" in a:
            self.segments[a["data-segment"]] = int(a["data-customers"])
            self.sizes[a["data-segment"]] = [int(v) for v in a["data-sizes"].split(",") if v]
        elif tag == "li" and "data-segment" in a:
            self.legend.append(a["data-segment"])
        elif tag == "tr" and "data-from" in a and self._window is not None:
            self.moves[self._window].append(
                (a["data-from"] or None, a["data-to"] or None, int(a["data-customers"]))
            )
        if tag not in self.VOID:
            self._stack.append((tag, a.get("id"), cell))

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop()[0] != tag:
            pass
        if tag == "table":
            self._window = None

    def handle_data(self, data: str) -> None:
        for _tag, id_, cell in self._stack:  # the text of every element it is inside
            if id_ is not None:
                self.text[id_] += data
            if cell is not None:
                self.cell_text[cell] += data


def page(browser: Browser, base: str) -> Tab:
    """The page, once its first answer is rendered: the data, or an error."""
    tab = Tab(browser.new_page())  # a context of its own: no storage shared between tests
    tab.page.goto(f"{base}/")
    tab.wait(
        "document.getElementById('grid').getAttribute('data-loaded') === 'true' || "
        "document.getElementById('status').className === 'error'"
    )
    return tab


def test_browser_renders_the_matrix(
    browser: Browser, base: str, store: Store, profiles: Profiles
) -> None:
    populate(store, profiles)
    doc = matrix_over_http(base)
    tab = page(browser, base)
    tab.loaded()
    dom, html = tab.dom()
    assert tab.displayed("content") and not tab.displayed("help")
    assert dom.ids["grid"].get("data-customers") == str(doc["customers"])
    assert len(dom.cells) == 25  # R 1..5 x F 1..5
    expected = {(c["r"], c["f"]): (c["customers"], c["segment"]) for c in doc["cells"]}
    for rf, value in dom.cells.items():
        assert value == expected.get(rf, (0, "")), rf
        if value[0]:  # the count, then the name people read, not the identifier
            assert dom.cell_text[rf] == f"{value[0]}{segment_style(value[1]).label}", rf
    # each cell in its segment's colour, from the server's definition
    lost = tab.js(
        'getComputedStyle(document.querySelector(\'td[data-r="1"][data-f="1"]\')).backgroundColor'
    )
    assert lost == "rgb(34, 34, 34)" == _css_rgb(STANDARD_COLOURS["lost"][1])
    assert dom.segments == {name: doc["segments"].get(name, 0) for name in STANDARD_SEGMENTS}
    # the legend: every segment of the map, in its order, and what the outlines mean
    assert dom.legend == list(STANDARD_SEGMENTS)
    for name in STANDARD_SEGMENTS:
        assert segment_style(name).label in dom.text["legend"], name
    assert "orange outline" in html
    # the layout: F 5 in the first row, R 1 in the first column
    order = [(int(r), int(f)) for r, f in re.findall(r'data-r="(\d)" data-f="(\d)"', html)]
    assert order[:5] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert order[-5:] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
    # one instant, the scores', in UTC and labelled so; no local time beside it
    status = dom.text["status"]
    assert "as of 2026-06-01 00:00:00 UTC" in status, status
    assert len(re.findall(r"\d\d:\d\d", status)) == 1, status
    # no moves recorded by this deployment: said, and no empty tables pretending otherwise
    assert "does not record" in dom.text["flows-note"]
    assert dom.moves == {"hour": [], "day": []}


def _css_rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(colour[i : i + 2], 16) for i in (1, 3, 5)))


def test_browser_outlines_the_cells_that_changed(
    browser: Browser, base: str, store: Store, profiles: Profiles
) -> None:
    """A new customer while the page is open: its cell's count moves and it is outlined
    (the legend's orange outline); the other cells are not."""
    populate(store, profiles)
    tab = page(browser, base)
    tab.loaded()
    apply_at(store, profiles, AS_OF_MS, [placed_days_ago(profiles, "z", "o1", "10", 450)])
    cell = 'document.querySelector(\'td[data-r="1"][data-f="1"]\')'
    tab.wait(f"{cell}.getAttribute('data-customers') === '4'")
    # one evaluation: the outline lasts until the next refresh, 2 s later
    outlined = tab.wait(
        f"{cell}.classList.contains('moved') && getComputedStyle({cell}).outlineColor === "
        "'rgb(230, 159, 0)' && document.querySelectorAll('td.moved').length"
    )
    assert outlined == 1


def test_browser_shows_flows_and_sizes_over_time(
    browser: Browser, base: str, store: Store, profiles: Profiles
) -> None:
    moves_of_a_day(store, profiles)
    tab = page(browser, base)
    tab.loaded()
    dom, _html = tab.dom()
    assert dom.moves["hour"] == HOUR_MOVES
    assert dom.moves["day"] == DAY_MOVES
    assert dom.ids["flows-day"]["data-complete"] == "false"
    assert "since 23:00 UTC" in dom.text["flows-hour-title"]
    assert "since 2026-05-31 00:00 UTC" in dom.text["flows-day-title"]
    assert "recorded since 2026-05-31 01:00:00 UTC" in dom.text["flows-note"]
    assert dom.sizes["lost"] == LOST_SIZES
    assert dom.sizes["new_customers"] == NEW_SIZES
    # a move from or to no segment reads as what it is
    flows_text = dom.text["flows"]
    assert "(first order)" in flows_text and "(no order left)" in flows_text
    assert "New customers" in flows_text and "new_customers" not in flows_text


def test_browser_with_a_token_needed_shows_only_how_to_give_it(
    browser: Browser, secured_base: str, store: Store, profiles: Profiles
) -> None:
    populate(store, profiles)
    tab = page(browser, secured_base)
    tab.refused()

    def nothing_but_the_error(status: str) -> None:
        assert status in tab.status()
        assert not tab.displayed("content")  # no grid of zeros under the error
        assert tab.displayed("help") and tab.displayed("status")
        dom, _html = tab.dom()
        assert dom.cells == {} and dom.segments == {} and dom.legend == []
        help_text = dom.text["help"]
        assert "RFM_HTTP_TOKEN" in help_text and "token field above" in help_text

    nothing_but_the_error("asks for a token")
    tab.submit(token="not-the-token")
    tab.wait("document.getElementById('status').textContent.indexOf('refused') >= 0")
    nothing_but_the_error("The token was refused")

    # given as the help says, the data shows, and the help goes
    tab.submit(token=TOKEN)
    tab.loaded()
    assert tab.displayed("content") and not tab.displayed("help")
    assert tab.js("document.getElementById('grid').getAttribute('data-customers')") == "6"
    assert tab.js("sessionStorage.getItem('rfm-worker.token')") == TOKEN
    assert tab.js("document.getElementById('token').value") == ""  # not left in the field

    # forgotten: back to nothing but the error, the data gone from the page too
    tab.js("document.getElementById('forget').click()")
    tab.refused()
    nothing_but_the_error("asks for a token")


def test_browser_sizes_the_grid_from_the_profile(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    small = Profiles.from_toml(
        """
[profiles.default]
recency_days = [30, 90]
frequency_orders = [2, 4]
monetary = [100, 500]
"""
    )
    apply_at(store, small, AS_OF_MS, [placed_days_ago(small, "a", "o1", "10", 10)])
    store.clock.advance(AS_OF_MS)
    api = Api(_settings(monkeypatch, None), small, store, lambda: True, lambda: True)
    for base in _server(api):
        tab = page(browser, base)
        tab.loaded()
        dom, _html = tab.dom()
        assert set(dom.cells) == {(r, f) for r in (1, 2, 3) for f in (1, 2, 3)}
        assert dom.cells[(3, 1)] == (1, "about_to_sleep")


def test_browser_switches_tenant_without_mixing_them(
    browser: Browser, base: str, store: Store, profiles: Profiles
) -> None:
    populate(store, profiles)
    tab = page(browser, base)
    tab.loaded()
    tab.submit(tenant="shop-b")
    tab.wait("document.getElementById('grid').getAttribute('data-tenant') === 'shop-b'")
    dom, _html = tab.dom()
    assert dom.ids["grid"]["data-customers"] == "1"
    assert {rf: v for rf, v in dom.cells.items() if v[0]} == {(5, 1): (1, "new_customers")}
    assert tab.js("document.querySelectorAll('td.moved').length") == 0  # not a change


# -- value per segment (a profile with a value model) ------------------------------------------


@pytest.fixture
def value_base(monkeypatch: pytest.MonkeyPatch, store: Store) -> Iterator[str]:
    """A page over a base whose profile has a value model (and a fit), populated."""
    store.clock.advance(AS_OF_MS)
    profiles = value_profiles()
    populate(store, profiles)
    api = Api(_settings(monkeypatch, None), profiles, store, lambda: True, lambda: True)
    yield from _server(api)


def test_browser_shows_value_per_segment_and_the_value_at_risk(
    browser: Browser, value_base: str
) -> None:
    """Each segment's expected value beside its count, and the value at risk above the
    list, as /v1/matrix gives them."""
    doc = matrix_over_http(value_base)
    assert doc["value_at_risk"]["expected_value"] > 0  # `c` is at_risk
    tab = page(browser, value_base)
    tab.loaded()
    dom, _html = tab.dom()
    rows = tab.js("document.getElementById('segments').outerHTML")
    pattern = r'data-segment="([a-z_]+)"[^>]*data-expected-value="([\d.e-]+)"'
    shown = {name: float(value) for name, value in re.findall(pattern, rows)}
    assert shown == {name: doc["segment_expected_value"].get(name, 0) for name in shown}
    assert set(shown) >= set(doc["segment_expected_value"])
    assert tab.displayed("value-at-risk")
    risk = dom.text["value-at-risk"]
    assert risk.startswith("Value at risk: ")
    assert ", ".join(segment_style(name).label for name in doc["value_at_risk"]["segments"]) in risk
    share = 100 * doc["value_at_risk"]["expected_value"] / doc["expected_value"]
    assert f"({share:.1f}%)" in risk
    assert "expected value" in dom.text["segments"] and "value share" in dom.text["segments"]


def test_browser_without_a_value_model_shows_no_value(browser: Browser, base: str, store: Store,
                                                      profiles: Profiles) -> None:  # fmt: skip
    populate(store, profiles)
    tab = page(browser, base)
    tab.loaded()
    dom, _html = tab.dom()
    assert not tab.displayed("value-at-risk")
    assert "expected value" not in dom.text["segments"]
