"""The commit call's bytes, built the fast way, against the plain code they replace: the
segment index moves (worker/state/segment_index.py `moves`) against the per-ordering loop
of `position_of`, and the packed EVALSHA command (worker/state/script_calls.py
`pack_evalsha`) against hiredis.pack_command. Byte for byte, on random entries (ranks at
and beyond the int64 edges, unicode ids, no expected value) and random arguments."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.state import segment_index
from worker.state.script_calls import pack_command, pack_evalsha
from worker.state.segment_index import Entry, Move, place, position_of

pytestmark = pytest.mark.unit


def reference_moves(before: Entry | None, after: Entry | None, customer_id: bytes) -> list[Move]:
    """`moves` as first written: one loop over the orderings, `position_of` per member."""
    if before == after:
        return []
    same_place = before is not None and after is not None and before[:3] == after[:3]
    was = None if before is None else place(before.segment, before.r, before.f)
    now = was if same_place else None if after is None else place(after.segment, after.r, after.f)

    def ranks(e: Entry | None) -> tuple[int | None, ...]:
        return (None,) * 4 if e is None else (e.spend, e.last_order, e.orders, e.value)

    out: list[Move] = []
    for code, old, new in zip("slov", ranks(before), ranks(after), strict=True):
        if same_place and old == new:
            continue
        left = None if was is None or old is None else was + position_of(old, customer_id)
        entered = None if now is None or new is None else now + position_of(new, customer_id)
        if left is not None or entered is not None:
            out.append((code, left, entered))
    return out


_EDGE = 1 << 63
ranks = st.one_of(
    st.integers(min_value=-_EDGE - 3, max_value=_EDGE + 3),
    st.sampled_from([0, 1, -1, _EDGE - 1, _EDGE, -_EDGE, -_EDGE - 1, 1 << 64, -(1 << 64)]),
    st.integers(),
)
segments = (
    st.sampled_from(["loyal", "at_risk", "champions", "n\u00e9o", "\u65b0\u5ba2"]) | st.text()
)
cells = st.integers(min_value=1, max_value=5) | st.integers()
entries = st.builds(Entry, segments, cells, cells, ranks, ranks, ranks, st.none() | ranks)


@st.composite
def entry_pairs(draw: st.DrawFn) -> tuple[Entry | None, Entry | None]:
    """Before and after: unrelated, or after a few fields changed (the common case)."""
    before = draw(st.none() | entries)
    if before is None or draw(st.booleans()):
        return before, draw(st.none() | entries)
    changed = draw(st.sets(st.sampled_from(Entry._fields), max_size=4))
    return before, before._replace(**{name: draw(getattr(_FIELDS, name)) for name in changed})


class _FIELDS:
    segment, r, f = segments, cells, cells
    spend = last_order = orders = ranks
    value = st.none() | ranks


@given(entry_pairs(), st.text())
def test_moves_are_the_reference_moves(pair: tuple[Entry | None, Entry | None], cid: str) -> None:
    before, after = pair
    customer_id = cid.encode()
    assert segment_index.moves(before, after, customer_id) == reference_moves(
        before, after, customer_id
    )
    # the cached places are the places (an entry met again hits the cache)
    assert segment_index.moves(before, after, customer_id) == reference_moves(
        before, after, customer_id
    )


def test_moves_at_the_int64_edges() -> None:
    """Ranks beyond 64 bits are clamped to the first and last position, as position_of does."""
    for rank in (_EDGE - 1, _EDGE, _EDGE + 10, -_EDGE, -_EDGE - 1, -_EDGE - 10, 1 << 80):
        before = Entry("loyal", 4, 3, 0, 0, 0, None)
        after = Entry("loyal", 4, 3, rank, rank, rank, rank)
        for pair in ((before, after), (after, before), (None, after), (after, None)):
            assert segment_index.moves(*pair, b"c1") == reference_moves(*pair, b"c1")


args = st.lists(st.binary(max_size=5000) | st.binary(min_size=4090, max_size=4100), max_size=40)


@given(st.binary(min_size=1, max_size=64), args, args)
def test_pack_evalsha_is_hiredis_pack_command(
    sha: bytes, keys: list[bytes], argv: list[bytes]
) -> None:
    expected = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *argv))
    assert pack_evalsha(sha, keys, argv) == expected


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=60))
def test_pack_of_mget_is_hiredis_pack_command(keys: list[bytes]) -> None:
    head = b"*%d\r\n$4\r\nMGET" % (len(keys) + 1)
    assert pack_command(head, keys) == hiredis.pack_command(("MGET", *keys))
