"""The page's ranked lists (worker/web/static/matrix.html), in Debian's chromium driven by
Playwright: a segment row or a matrix cell opens its customers as
GET /v1/segments/{tenant}/{segment}/customers lists them (in the order asked, paged with the
answer's `next`), the polls of the matrix leave the open list as it is, and "Download CSV"
saves the whole list as `rfm-worker members --format csv` writes it, all with the token
when one is needed."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from playwright.sync_api import Browser

from tests.factories import AS_OF_MS, placed_days_ago
from tests.state.test_value_sums import value_profiles
from tests.web.test_matrix_page import (
    TOKEN,
    Tab,
    _server,
    _settings,
    apply_at,
    base,
    browser,
    fetch,
    page,
    populate,
    secured_base,
)
from worker.commands.export import export_csv
from worker.rules.profiles import Profiles
from worker.state.store import Store
from worker.web import segment_lists
from worker.web.api import Api
from worker.web.views import segment_style

__all__ = ["base", "browser", "secured_base"]  # fixtures, used by name

PAGE_SIZE = 50  # the page's
MEMBERS = "document.getElementById('members')"
CELL_1_1 = 'document.querySelector(\'td[data-r="1"][data-f="1"]\')'


def text(tab: Tab, element_id: str) -> str:
    content: str = tab.js(f"document.getElementById('{element_id}').textContent")
    return content


def order_options(tab: Tab) -> list[str]:
    options: list[str] = tab.js(
        "Array.from(document.getElementById('members-order').options, o => o.value)"
    )
    return options


def listing(
    base: str, segment: str, authorization: str | None = None, **query: Any
) -> dict[str, Any]:
    """One page of the API's list, as the page asks for it."""
    path = f"/v1/segments/default/{quote(segment, safe='')}/customers"
    status, _, body = fetch(f"{base}{path}?{urlencode(query)}", authorization)
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def every_page(base: str, segment: str, limit: int, **query: Any) -> list[dict[str, Any]]:
    """Every customer of the list, page after page (the API's `next`)."""
    rows: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    while True:
        doc = listing(base, segment, limit=limit, **query, **cursor)
        rows += doc["customers"]
        if doc["next"] is None:
            return rows
        cursor = {"cursor": doc["next"]}


def shown(tab: Tab, page_number: int = 0, order: str = "spend") -> list[list[str]]:
    """The list's rows as displayed, once the asked page is in: each cell's text."""
    tab.wait(
        f"{MEMBERS}.getAttribute('data-loaded') === 'true' && "
        f"{MEMBERS}.getAttribute('data-page') === '{page_number}' && "
        f"{MEMBERS}.getAttribute('data-order') === '{order}'"
    )
    rows: list[list[str]] = tab.js(
        "Array.from(document.querySelectorAll('#members-table tr[data-customer]'))"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent))"
    )
    return rows


def as_shown(doc: dict[str, Any]) -> list[str]:
    """A customer view as the list shows it (null: a dash)."""
    dash = "\u2013"
    last = doc["last_order_at"].replace("T", " ").replace("Z", "").split(".")[0] + " UTC"
    p_alive = dash if doc["p_alive"] is None else f"{doc['p_alive']:.3f}"
    value = dash if doc["expected_value"] is None else f"{doc['expected_value']:,.2f}"
    scores = [str(doc[k]) for k in ("r", "f", "m")]
    label = segment_style(doc["segment"]).label
    return [doc["customer_id"], *scores, label, last, doc["monetary"], p_alive, value]


def open_segment(tab: Tab, segment: str) -> None:
    tab.page.click(f'#segments tr[data-segment="{segment}"]')


def lost_customers(store: Store, profiles: Profiles, n: int) -> None:
    """n more customers in the lost segment (one order 400+ days ago), spends 1..n."""
    events = [
        placed_days_ago(profiles, f"lost-{i:04d}", "o1", str(1 + i % 97), 400 + i % 50)
        for i in range(n)
    ]
    apply_at(store, profiles, AS_OF_MS, events)


def test_browser_lists_a_segment_in_the_order_asked(
    browser: Browser, base: str, store: Store, profiles: Profiles
) -> None:
    populate(store, profiles)
    tab = page(browser, base)
    tab.loaded()
    assert not tab.displayed("members")
    open_segment(tab, "lost")
    first = listing(base, "lost", limit=PAGE_SIZE)
    assert shown(tab) == [as_shown(c) for c in first["customers"]]
    assert [c["customer_id"] for c in first["customers"]] == ["b", "a"]  # 20 before 10
    assert tab.displayed("members")
    assert segment_style("lost").label in text(tab, "members-title")
    # no value model: no expected value to rank by
    orders = order_options(tab)
    assert orders == ["spend", "last_order", "orders"]
    tab.page.select_option("#members-order", "last_order")
    by_last = listing(base, "lost", order="last_order", limit=PAGE_SIZE)
    assert shown(tab, order="last_order") == [as_shown(c) for c in by_last["customers"]]
    assert [c["customer_id"] for c in by_last["customers"]] == ["a", "b"]  # 400 days, then 500
    # another segment replaces the list, in the order chosen
    open_segment(tab, "potential_loyalist")
    tab.wait(f"{MEMBERS}.getAttribute('data-segment') === 'potential_loyalist'")
    loyal = listing(base, "potential_loyalist", order="last_order", limit=PAGE_SIZE)
    assert shown(tab, order="last_order") == [as_shown(c) for c in loyal["customers"]]
    tab.page.click("#members-close")
    assert not tab.displayed("members")


def test_browser_pages_the_list_with_next_and_back_to_the_first(
    browser: Browser, base: str, store: Store, profiles: Profiles
) -> None:
    lost_customers(store, profiles, 2 * PAGE_SIZE + 7)
    pages = []
    cursor: dict[str, str] = {}
    for _ in range(3):
        doc = listing(base, "lost", limit=PAGE_SIZE, **cursor)
        pages.append([as_shown(c) for c in doc["customers"]])
        cursor = {"cursor": doc["next"]}
    assert [len(p) for p in pages] == [PAGE_SIZE, PAGE_SIZE, 7] and doc["next"] is None
    tab = page(browser, base)
    tab.loaded()
    open_segment(tab, "lost")
    assert shown(tab, 0) == pages[0]
    assert tab.js("document.getElementById('members-first').disabled") is True
    tab.page.click("#members-next")
    assert shown(tab, 1) == pages[1]
    tab.page.click("#members-next")
    assert shown(tab, 2) == pages[2]
    assert tab.js("document.getElementById('members-next').disabled") is True
    assert "101\u2013107" in text(tab, "members-range")
    tab.page.click("#members-previous")
    assert shown(tab, 1) == pages[1]
    # the polls of the matrix (every 2 s) leave the open list as it is, even as counts move
    apply_at(store, profiles, AS_OF_MS, [placed_days_ago(profiles, "late", "o1", "5", 450)])
    tab.wait(f"{CELL_1_1}.getAttribute('data-customers') === '{2 * PAGE_SIZE + 8}'")
    assert shown(tab, 1) == pages[1]
    tab.page.click("#members-first")
    assert shown(tab, 0) == pages[0]


def test_browser_lists_a_cell_s_customers(
    browser: Browser, base: str, store: Store, profiles: Profiles
) -> None:
    """A cell opens its dominant segment's customers in that cell (r and f)."""
    populate(store, profiles)
    # lost customers outside the cell (1, 1): F2, two orders long ago
    apply_at(
        store,
        profiles,
        AS_OF_MS,
        [placed_days_ago(profiles, "old2", f"o{i}", "30", 500 + i) for i in (1, 2)],
    )
    whole = listing(base, "lost", limit=PAGE_SIZE)
    cell = listing(base, "lost", limit=PAGE_SIZE, r=1, f=1)
    assert {(c["r"], c["f"]) for c in cell["customers"]} == {(1, 1)}
    assert len(cell["customers"]) < len(whole["customers"])  # the filter is not a no-op
    tab = page(browser, base)
    tab.loaded()
    tab.page.click('td[data-r="1"][data-f="1"]')
    tab.wait(f"{MEMBERS}.getAttribute('data-r') === '1'")
    assert shown(tab) == [as_shown(c) for c in cell["customers"]]
    title = text(tab, "members-title")
    assert "R1 F1" in title and segment_style("lost").label in title
    assert tab.js(f"{CELL_1_1}.classList.contains('open')")
    # an empty cell opens nothing
    tab.page.click('td[data-r="3"][data-f="3"]')
    assert tab.js(f"{MEMBERS}.getAttribute('data-r')") == "1"


def _download(tab: Tab) -> tuple[str, bytes]:
    with tab.page.expect_download(timeout=30_000) as info:
        tab.page.click("#members-download")
    download = info.value
    assert download.failure() is None
    return download.suggested_filename, Path(download.path()).read_bytes()


def _csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.BytesIO()
    export_csv(rows, out)
    return out.getvalue()


def test_browser_downloads_the_whole_segment_as_members_csv(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """More than one of the API's largest pages, floats (P(alive), value: a value model) and
    an id to quote: the file equals the API's pages written by `members --format csv`'s
    writer, and `members`' own rows."""
    profiles = value_profiles()
    populate(store, profiles)
    lost_customers(store, profiles, segment_lists.MAX_LIMIT + 5)
    apply_at(store, profiles, AS_OF_MS, [placed_days_ago(profiles, 'x,"y"\n', "o1", "7", 420)])
    store.clock.advance(AS_OF_MS)
    api = Api(_settings(monkeypatch, None), profiles, store, lambda: True, lambda: True)
    for served in _server(api):
        rows = every_page(served, "lost", limit=333, order="expected_value")
        assert len(rows) == segment_lists.MAX_LIMIT + 8
        expected = _csv(rows)
        members = segment_lists.Listing("default", "lost", "expected_value")
        assert expected == _csv(
            list(segment_lists.every_member(store, profiles, members, AS_OF_MS))
        )
        assert b'"x,""y""\n"' in expected and b".0," in expected  # quoted; 1.0 as Python writes it
        tab = page(browser, served)
        tab.loaded()
        open_segment(tab, "lost")
        orders = order_options(tab)
        assert orders[-1] == "expected_value"
        tab.page.select_option("#members-order", "expected_value")
        shown(tab, order="expected_value")
        name, body = _download(tab)
        assert name == "default-lost-expected_value.csv"
        assert body == expected
        # a cell's list downloads the cell's customers only
        tab.page.click('td[data-r="1"][data-f="1"]')
        tab.wait(f"{MEMBERS}.getAttribute('data-r') === '1'")
        shown(tab, order="expected_value")
        name, body = _download(tab)
        assert name == "default-lost-r1-f1-expected_value.csv"
        cell = every_page(served, "lost", limit=1000, order="expected_value", r=1, f=1)
        assert body == _csv(cell)


def test_browser_lists_with_the_token(
    browser: Browser, secured_base: str, store: Store, profiles: Profiles
) -> None:
    populate(store, profiles)
    bearer = f"Bearer {TOKEN}"
    path = "/v1/segments/default/lost/customers"
    assert fetch(f"{secured_base}{path}")[0] == 401
    tab = page(browser, secured_base)
    tab.refused()
    tab.submit(token=TOKEN)
    tab.loaded()
    open_segment(tab, "lost")
    first = listing(secured_base, "lost", bearer, limit=PAGE_SIZE)
    assert shown(tab) == [as_shown(c) for c in first["customers"]]
    _name, body = _download(tab)
    assert body == _csv(first["customers"])
    # the token forgotten: the list goes with the rest of the data
    tab.js("document.getElementById('forget').click()")
    tab.refused()
    assert not tab.displayed("members")
    assert tab.js("document.querySelectorAll('#members-table tr').length") == 0
