"""Every counter churnguard keeps, in one place (exported to Prometheus in a later issue).
Plain integers incremented per batch by the shell; no locks (one event loop)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Values, not counts: a batch's metrics never add to them.
GAUGES = frozenset({"pack_version"})


@dataclass
class Metrics:
    events_in: Counter[str] = field(default_factory=Counter)  # by source topic
    events_applied: Counter[str] = field(default_factory=Counter)  # by event type
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # by rejection kind
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (rule, type)
    suppressed: Counter[str] = field(default_factory=Counter)  # by guard reason
    score_changes: int = 0
    timer_ticks: int = 0
    due_customers: int = 0  # customers advanced by ticks
    timers_expired: int = 0  # occurrences noticed past their grace (backfills): not fired
    tickets_evicted: int = 0  # oldest open tickets dropped beyond MAX_OPEN_TICKETS a customer
    pack_version: int = 0  # the published rule pack running (0: the shipped default)
    rule_packs_refused: int = 0  # published versions that failed validation here
    batches: int = 0
    batch_events: int = 0
    batch_seconds: float = 0.0
    failed_batches: int = 0

    def merge(self, other: Metrics) -> None:
        """Add another set of counters (a batch's, counted apart until it succeeded)."""
        for name in self.__dataclass_fields__:
            if name in GAUGES:
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, Counter):
                mine.update(theirs)
            else:
                setattr(self, name, mine + theirs)

    def snapshot(self) -> dict[str, Any]:
        return {
            "events_in": dict(self.events_in),
            "events_applied": dict(self.events_applied),
            "duplicates": self.duplicates,
            "dead_letters": dict(self.dead_letters),
            "actions": {f"{rule}/{kind}": n for (rule, kind), n in sorted(self.actions.items())},
            "suppressed": dict(self.suppressed),
            "score_changes": self.score_changes,
            "timer_ticks": self.timer_ticks,
            "due_customers": self.due_customers,
            "timers_expired": self.timers_expired,
            "tickets_evicted": self.tickets_evicted,
            "pack_version": self.pack_version,
            "rule_packs_refused": self.rule_packs_refused,
            "batches": self.batches,
            "batch_events": self.batch_events,
            "batch_seconds": round(self.batch_seconds, 3),
            "failed_batches": self.failed_batches,
        }
