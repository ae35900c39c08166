"""A segment's ranked list of customers (GET /v1/segments/{tenant}/{segment}/customers and
`rfm-worker members`): pages of customer views read from the segment index
(worker/state/segment_index.py), never a scan of the tenant's customers. Read-only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import parse_qs

from worker.rules.profiles import Profiles
from worker.state import segment_index
from worker.state.store import Store
from worker.web.views import view

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_LEVEL = 9  # scores are one digit (the counters' "<r><f><m>")


class ListingError(ValueError):
    """A request the listing refuses (HTTP 400): `code` and a `detail` people can act on."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class Listing(NamedTuple):
    """What one listing is of: the segment, ranked by `ordering`, in one cell or not."""

    tenant: str
    segment: str
    ordering: str = segment_index.DEFAULT_ORDERING
    r: int | None = None
    f: int | None = None


def parse_query(tenant: str, segment: str, query: str) -> tuple[Listing, int, bytes | None]:
    """The listing, page size and position (the member to list after) a query asks for."""
    given = parse_qs(query, keep_blank_values=True)
    for name, values in given.items():
        if len(values) != 1:
            raise ListingError("bad_request", f"the {name[:50]} parameter is given more than once")
    one = {name: values[0] for name, values in given.items()}
    ordering = one.get("order", segment_index.DEFAULT_ORDERING)
    if ordering not in segment_index.ORDERINGS:
        raise ListingError(
            "invalid_order", "order must be one of " + ", ".join(segment_index.ORDERINGS)
        )
    limit = _integer(one, "limit", 1, MAX_LIMIT, "invalid_limit")
    r = _integer(one, "r", 1, MAX_LEVEL, "invalid_cell")
    f = _integer(one, "f", 1, MAX_LEVEL, "invalid_cell")
    after = None
    if "cursor" in one:
        after = segment_index.parse_cursor(ordering, one["cursor"])
        if after is None:
            raise ListingError(
                "invalid_cursor",
                "cursor must be the `next` of a page of this listing with the same order",
            )
    listing = Listing(tenant, segment, ordering, r, f)
    return listing, DEFAULT_LIMIT if limit is None else limit, after


def _integer(one: dict[str, str], name: str, low: int, high: int, code: str) -> int | None:
    text = one.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise ListingError(code, f"{name} must be an integer from {low} to {high}")
    return int(text)


def check(profiles: Profiles, listing: Listing) -> None:
    """Refuse a ranking the tenant's profile has no figures for."""
    if (
        listing.ordering == "expected_value"
        and profiles.for_tenant(listing.tenant).value_model is None
    ):
        raise ListingError(
            "no_value_model",
            f"order=expected_value needs a value model in tenant {listing.tenant!r}'s profile "
            "(docs/value.md); use spend, last_order or orders",
        )


def page(
    store: Store,
    profiles: Profiles,
    listing: Listing,
    limit: int,
    after: bytes | None,
    as_of_ms: int,
) -> tuple[list[dict[str, object]], bytes | None]:
    """One page of customer views, scored at as_of, and the member to list after next."""
    check(profiles, listing)
    tenant = listing.tenant
    found = store.segment_pages.page(
        tenant, listing.segment, listing.ordering, limit, after, listing.r, listing.f
    )
    # A customer is read as stored now: a commit between the index read and this one
    # shows its newer figures (the next page starts from the cursor, not from it).
    customers = store.reads.decoded([key for key, _ in found.customers], lambda _t: True)
    docs = [doc for c in customers if (doc := view(c, profiles, as_of_ms)) is not None]
    return docs, found.next


def document(
    store: Store,
    profiles: Profiles,
    listing: Listing,
    limit: int,
    after: bytes | None,
    as_of_ms: int,
) -> dict[str, object]:
    """The API's page: {tenant, segment, order, customers, next}."""
    docs, following = page(store, profiles, listing, limit, after, as_of_ms)
    return {
        "tenant": listing.tenant,
        "segment": listing.segment,
        "order": listing.ordering,
        "customers": docs,
        "next": None if following is None else segment_index.cursor(listing.ordering, following),
    }


def every_member(
    store: Store, profiles: Profiles, listing: Listing, as_of_ms: int, per_page: int = MAX_LIMIT
) -> Iterator[dict[str, object]]:
    """Every member's view, page by page (one page held at a time)."""
    check(profiles, listing)
    after: bytes | None = None
    while True:
        docs, after = page(store, profiles, listing, per_page, after, as_of_ms)
        yield from docs
        if after is None:
            return
