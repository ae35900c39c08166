"""JSON as right-sized bytes, for what is kept after it is serialised.

orjson (3.12 and later) hands back its working buffer as the bytes object: at least 4 KB
for a 600-byte document. The hot path keeps a batch's customer states until their commit
(thousands at a time), so each would stand alone on fresh memory, and writing it would cost
more than serialising it (measured in process: a customer state 5.1 µs against 1.4 µs with
the copy). A copy of the right size lets the buffer's memory serve the next call. (The
change records are built as text and encoded once, worker/rules/messages.py: right-sized
already.)

Output that is written or sent at once (HTTP bodies, logs, the CLI) needs none of this.
"""

from __future__ import annotations

import orjson


def dumps(doc: object, option: int | None = None) -> bytes:
    """orjson.dumps(doc, option=option), in a bytes object of its own size."""
    return bytes(memoryview(orjson.dumps(doc, option=option)))
