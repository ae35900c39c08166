"""Pages of a segment's ranked list, read from the segment index (worker/state/segment_index.py).

A listing merges the ranges of its (shard, cell) pairs: the cells that hold customers of
the segment in each shard, as the segment counters say (read once per page, 64 hashes in
one round), narrowed by the r and f filters. Each range is read after the cursor
(ZRANGEBYLEX, a few members each at first, more from the ranges that run out before the
page is complete): O(log n + page) per range, never a scan. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from worker.state import keys, segment_index
from worker.state.reads import Reads


class Page(NamedTuple):
    """The page's customers as (customer key, customer id), in rank order, and the position
    to list after for the next page (None: this was the last)."""

    customers: list[tuple[bytes, str]]
    next: bytes | None


@dataclass(slots=True)
class _Run:
    """One range of the listing (a cell of a shard): the positions read of it so far."""

    key: bytes
    place: bytes
    shard: int
    read: list[bytes] = field(default_factory=list)
    done: bool = False  # every member after the cursor has been read


class SegmentPages:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def cells(
        self, tenant: str, segment: str, r: int | None = None, f: int | None = None
    ) -> list[tuple[int, int, int]]:
        """(shard, r, f) of every shard's cell that counts customers of the segment (the
        counters count per rfm: the m scores of one cell are one set)."""
        found: set[tuple[int, int, int]] = set()
        for shard, t, rfm, s, count in Reads(self.redis).shard_cells():
            if t != tenant or s != segment or count <= 0:
                continue
            cr, cf = int(rfm[0]), int(rfm[1])
            if (r is None or cr == r) and (f is None or cf == f):
                found.add((shard, cr, cf))
        return sorted(found)

    def page(
        self,
        tenant: str,
        segment: str,
        ordering: str,
        limit: int,
        after: bytes | None = None,
        r: int | None = None,
        f: int | None = None,
    ) -> Page:
        """Up to `limit` customers of the segment ranked by `ordering` (a name of
        segment_index.ORDERINGS), listed after the position `after` (None: from the top)."""
        code = segment_index.ORDERINGS[ordering]
        runs = [
            _Run(
                keys.segment_index(shard, tenant, code),
                segment_index.place(segment, cr, cf),
                shard,
            )
            for shard, cr, cf in self.cells(tenant, segment, r, f)
        ]
        need = limit + 1  # one more than the page: whether there is a next one
        # A first read of a few members per range answers most pages in one round; a range
        # that runs out of read members before the page is complete is read again, twice
        # as far, until no unread member can rank before the page's last.
        ask = {id(run): min(need, max(4, 2 * -(-need // max(1, len(runs))))) for run in runs}
        pending, merged = runs, []
        while pending:
            pipe = self.redis.pipeline(transaction=False)
            for run in pending:
                last = run.read[-1] if run.read else after
                start = b"[" + run.place if last is None else b"(" + run.place + last
                end = b"(" + segment_index.place_end(run.place)
                pipe.zrangebylex(run.key, start, end, 0, ask[id(run)])
            for run, got in zip(pending, pipe.execute(), strict=True):
                run.done = len(got) < ask[id(run)]
                cut = len(run.place)
                run.read.extend(m[cut:] for m in got)
                ask[id(run)] = min(need, 2 * ask[id(run)])
            merged = sorted((p, run.shard) for run in runs for p in run.read)
            bound = merged[need - 1][0] if len(merged) >= need else None
            pending = [
                run
                for run in runs
                if not run.done and (bound is None or (run.read and run.read[-1] < bound))
            ]
        top = merged[:need]
        listed = [
            (keys.customer(tenant, cid, shard), cid)
            for p, shard in top[:limit]
            for cid in (segment_index.customer_id_of(p),)
        ]
        more = len(top) > limit
        return Page(listed, top[limit - 1][0] if more else None)
