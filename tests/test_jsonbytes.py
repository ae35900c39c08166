"""Right-sized JSON bytes: what the hot path keeps per record and per customer state."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from worker import jsonbytes

RECORD = {"type": "rfm.changed", "customer_id": "c-1", "triggers": [], "p_alive": None, "n": 3}


@pytest.mark.parametrize("option", [None, orjson.OPT_SORT_KEYS])
def test_same_bytes_as_orjson(option: int | None) -> None:
    doc = {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}
    assert jsonbytes.dumps(doc, option) == orjson.dumps(doc, option=option)


def test_a_kept_result_holds_only_its_own_size() -> None:
    size = len(orjson.dumps(RECORD))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = [jsonbytes.dumps(RECORD) for _ in range(1_000)]
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a bytes object's header is ~33 bytes, a list slot 8: far below orjson's 4 KB buffer
    assert (after - before) / len(kept) < size + 128
