"""The state format: which forms of the Redis state a release writes and reads. Pure.

Releases roll (docs/operations.md "Upgrading"): for a while two releases share one Redis
and one consumer group. A release reads every format up to its own, `FORMAT`; it writes the
newest format that every running worker reads, which the workers agree on through their
roster (worker/state/formats.py), so that the release before it keeps reading every
customer until the last of its workers is gone. A customer blob of a format above 1 says
so under "f" (worker/rules/customer.py); a release that meets a format above its own stops
with one line naming the release it needs, rather than misreading or dead-lettering.

What each format adds is in CHANGELOG.md.
"""

from __future__ import annotations

from worker import __version__
from worker.errors import StateTooNewError

FORMAT = 2  # the newest state format: this release reads it and every one before
FIRST = 1  # what releases before the state format wrote (no "f" in the blobs)
# The first release that reads each format, to name it to a worker that cannot.
RELEASES = {1: "0.1.0", 2: "0.2.0"}


def check_readable(found: int, release: str | None = None) -> None:
    """Raise StateTooNewError when state of format `found` cannot be read here; `release`,
    when known, is the release that wrote it."""
    if found > FORMAT:
        raise StateTooNewError(too_new(found, release))


def too_new(found: int, release: str | None) -> str:
    needed = release or RELEASES.get(found)
    wrote = f"rfm-worker {needed}" if needed else "a later release"
    run = f"rfm-worker {needed} or later" if needed else "the release that wrote it"
    return (
        f"the state in Redis is in format {found}, written by {wrote}; this is rfm-worker "
        f"{__version__}, which reads formats up to {FORMAT}: run {run} (nothing was "
        "dead-lettered)"
    )
