"""GET /: the live R x F matrix page, over a real HTTP server on the suite's Redis: its headers,
that it is self-contained (no external URL), that it is served without the token while
/v1/* still asks for it, and, where Debian's chromium is installed, that a headless browser
running the page's script renders the cells and segments /v1/matrix returns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest

from tests.factories import AS_OF_MS, placed_days_ago
from worker.config import Settings
from worker.rules.profiles import Profiles
from worker.services import causes
from worker.state.store import Store
from worker.web.http_api import Api, serve

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
    assert "/v1/matrix" in html
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
    assert re.findall(r"fetch\(\s*\"([^\"]*)\"", html) == ["/v1/matrix?tenant="]


def test_page_ignores_the_query_string(base: str) -> None:
    status, headers, body = fetch(f"{base}/?tenant=x")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert body == fetch(f"{base}/")[2]


def test_page_is_served_without_the_token_but_the_data_is_not(secured_base: str) -> None:
    status, headers, _ = fetch(f"{secured_base}/")
    assert status == 200
    assert_page_headers(headers)
    assert fetch(f"{secured_base}/v1/matrix?tenant=default")[0] == 401
    assert fetch(f"{secured_base}/v1/matrix?tenant=default", f"Bearer {TOKEN}")[0] == 200


def test_page_is_get_only(base: str) -> None:
    request = urllib.request.Request(f"{base}/", method="DELETE")
    with pytest.raises(HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    with info.value as exc:
        assert exc.code == 405


# -- the data it reads ---------------------------------------------------------------------------


def matrix_over_http(base: str, tenant: str = "default") -> dict[str, Any]:
    status, headers, body = fetch(f"{base}/v1/matrix?tenant={tenant}")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc: dict[str, Any] = json.loads(body)
    return doc


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


# -- in a real browser ---------------------------------------------------------------------------


def dump_dom(url: str, profile_dir: Path) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "Debian's chromium is not installed (no `chromium` on PATH): "
            "the page's script is not run in a browser here"
        )
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile_dir}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class _Dom(HTMLParser):
    """The grid cells and segment rows as the page's script left them."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[int, int], tuple[int, str]] = {}
        self.segments: dict[str, int] = {}
        self.grid: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-r" in a and "data-f" in a:
            self.cells[(int(a["data-r"]), int(a["data-f"]))] = (
                int(a["data-customers"]),
                a["data-segment"],
            )
        elif tag == "tr" and "data-segment" in a:
            self.segments[a["data-segment"]] = int(a["data-customers"])
        elif tag == "table" and a.get("id") == "grid":
            self.grid = a


def test_browser_renders_the_matrix(
    base: str, store: Store, profiles: Profiles, tmp_path: Path
) -> None:
    populate(store, profiles)
    doc = matrix_over_http(base)
    dom_text = dump_dom(f"{base}/", tmp_path / "chromium-profile")
    dom = _Dom()
    dom.feed(dom_text)
    assert dom.grid.get("data-loaded") == "true", dom_text[:3000]
    assert dom.grid.get("data-customers") == str(doc["customers"])
    assert len(dom.cells) == 25  # R 1..5 x F 1..5
    expected = {(c["r"], c["f"]): (c["customers"], c["segment"]) for c in doc["cells"]}
    for rf, value in dom.cells.items():
        assert value == expected.get(rf, (0, "")), rf
    assert dom.segments == doc["segments"]
    for name in doc["segments"]:
        assert f">{name}<" in dom_text  # the names are in the visible text, too
    # the layout: F 5 in the first row, R 1 in the first column
    order = [(int(r), int(f)) for r, f in re.findall(r'data-r="(\d)" data-f="(\d)"', dom_text)]
    assert order[:5] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert order[-5:] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
