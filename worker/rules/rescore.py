"""Rescoring with other profiles: what it would change, per customer and in total. Pure.

`decide` is the per-customer decision: a customer's stored aggregates scored with a
profile at an instant, against the score the worker last published for it (the
`previous` of its next `rfm.changed`). `transitions` tallies the decisions of many
customers: `rfm-worker rescore --dry-run` prints that tally; it reads and never writes.

The instant follows the engine's rule (worker/rules/engine.py): a customer's time never moves
back, so one committed at a later instant than as_of is scored at that instant. The
comparison is the engine's too: the worker publishes a change when (R, F, M), the
segment, the P(alive) band or the value band (docs/churn.md) differ. So the tally also
counts decay the sweeper has not published yet, which applying the profile now would
publish along with the profile's own moves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from worker.rules.customer import Customer, Published
from worker.rules.instants import iso
from worker.rules.profile import Profile
from worker.rules.profiles import Profiles
from worker.rules.scoring import Score, score

NO_SEGMENT = "(none)"  # how text output shows "no segment" (JSON says null)


@dataclass(frozen=True, slots=True)
class Decision:
    """One customer: what the worker published, and what the profile scores now."""

    tenant: str
    customer_id: str
    before: Published | None  # the last published score; None if nothing was published
    after: Score | None  # None when the customer has no counted order
    as_of_ms: int  # the instant it was scored at

    @property
    def from_segment(self) -> str | None:
        return None if self.before is None else self.before.segment

    @property
    def to_segment(self) -> str | None:
        return None if self.after is None else self.after.segment

    @property
    def segment_changes(self) -> bool:
        return self.from_segment != self.to_segment

    @property
    def changes(self) -> bool:
        """Whether applying the profile would publish an `rfm.changed` for the customer."""
        return _triple(self.before) != _triple(self.after) or self.segment_changes


def _triple(
    s: Published | Score | None,
) -> tuple[int, int, int, int | None, int | None] | None:
    """(R, F, M), the P(alive) band (None without a churn model) and the value band (None
    without a value model): what a change is."""
    return None if s is None else (s.r, s.f, s.m, s.band, s.value_band)


def decide(customer: Customer, profile: Profile, as_of_ms: int) -> Decision | None:
    """The customer scored with `profile` at as_of (or at its last commit, if later), against
    its published score. None when there is nothing to compare: no published score and no
    counted order."""
    agg = customer.aggregates()
    if agg is None and customer.published is None:
        return None
    at = max(as_of_ms, customer.scored_at or as_of_ms)
    after = None if agg is None else score(agg, at, profile)
    return Decision(customer.tenant, customer.customer_id, customer.published, after, at)


@dataclass(slots=True)
class Tally:
    """Decisions counted: customers examined, moves between segments, and the customers
    whose (R, F, M) would change while their segment stays."""

    examined: int = 0
    moves: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)
    score_only: int = 0

    @property
    def moving(self) -> int:
        """Customers whose segment would change."""
        return sum(self.moves.values())

    def add(self, decision: Decision) -> None:
        self.examined += 1
        if decision.segment_changes:
            self.moves[(decision.from_segment, decision.to_segment)] += 1
        elif decision.changes:
            self.score_only += 1

    def sorted_moves(self) -> list[tuple[str | None, str | None, int]]:
        """(from, to, customers), most customers first, then by name (no segment first)."""
        return sorted(
            ((frm, to, n) for (frm, to), n in self.moves.items()),
            key=lambda m: (-m[2], m[0] is not None, m[0] or "", m[1] is not None, m[1] or ""),
        )


def transitions(
    customers: Iterable[Customer], profiles: Profiles, as_of_ms: int, tenant: str | None = None
) -> Tally:
    """Tally what scoring `customers` with `profiles` (each with its tenant's profile) at
    as_of would change against what was published; only `tenant`'s customers when given."""
    tally = Tally()
    for customer in customers:
        if tenant is not None and customer.tenant != tenant:
            continue
        decision = decide(customer, profiles.for_tenant(customer.tenant), as_of_ms)
        if decision is not None:
            tally.add(decision)
    return tally


def dry_run_doc(tally: Tally, tenant: str | None, as_of_ms: int) -> dict[str, object]:
    """`rescore --dry-run --json`: only the moves between segments."""
    return {
        "tenant": tenant,
        "as_of": iso(as_of_ms),
        "customers": tally.examined,
        "moves": [{"from": frm, "to": to, "customers": n} for frm, to, n in tally.sorted_moves()],
    }


def render(tally: Tally, tenant: str | None, as_of_ms: int, source: str | None) -> str:
    """`rescore --dry-run` as text: the moves, the totals, and that nothing was changed."""
    scope = "every tenant" if tenant is None else f"tenant {tenant}"
    profiles = "the built-in default profile" if source is None else f"profiles {source}"
    lines = [f"rescore dry run: {scope}, {profiles}, as of {iso(as_of_ms)}", ""]
    moves = tally.sorted_moves()
    if moves:
        froms = [NO_SEGMENT if frm is None else frm for frm, _, _ in moves]
        tos = [NO_SEGMENT if to is None else to for _, to, _ in moves]
        wf, wt = max(map(len, froms)), max(map(len, tos))
        wn = max(len(str(n)) for _, _, n in moves)
        lines.append("would move (from -> to: customers)")
        lines += [
            f"  {frm:<{wf}} -> {to + ':':<{wt + 1}} {n:>{wn}}"
            for frm, to, (_, _, n) in zip(froms, tos, moves, strict=True)
        ]
    else:
        lines.append("no customer would change segment")
    totals = [
        ("customers examined", tally.examined),
        ("segment would change", tally.moving),
        ("RFM score would change, segment not", tally.score_only),
    ]
    wl = max(len(label) for label, _ in totals)
    wv = max(len(str(v)) for _, v in totals)
    lines.append("")
    lines += [f"{label + ':':<{wl + 1}} {value:>{wv}}" for label, value in totals]
    lines.append(
        "Nothing was changed (dry run): `rfm-worker run` applies a changed profile itself "
        "when it starts with it."
    )
    return "\n".join(lines)
