"""Each event of a request validated on its own bytes with the worker's schemas
(parse_event, the combined topic's adapter: `type` selects the model), split into the
events to produce and one rejection per invalid item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from churnguard.core.validation import FieldProblem, FieldRejection, parse_event_by_field
from schemas.events import Event

# Problems listed per rejected item at most (the first is also its `field` / `message`).
MAX_PROBLEMS = 10


@dataclass(frozen=True, slots=True)
class Admitted:
    index: int
    event: Event
    raw: bytes


@dataclass(frozen=True, slots=True)
class RejectedItem:
    index: int
    problems: tuple[FieldProblem, ...]

    def as_json(self) -> dict[str, Any]:
        first = self.problems[0]
        return {
            "index": self.index, "field": first.field, "message": first.message,
            "errors": [{"field": p.field, "message": p.message}
                       for p in self.problems[:MAX_PROBLEMS]],
        }


def admit(items: list[bytes], *, now: float, max_future_hours: float
          ) -> tuple[list[Admitted], list[RejectedItem]]:
    admitted, rejected = [], []
    for index, raw in enumerate(items):
        outcome = parse_event_by_field(raw, "", now=now, max_future_hours=max_future_hours)
        if isinstance(outcome, FieldRejection):
            rejected.append(RejectedItem(index, outcome.problems))
        elif outcome.type == "erasure":
            rejected.append(RejectedItem(index, (NOT_INGESTED,)))
        else:
            admitted.append(Admitted(index, outcome, raw))
    return admitted, rejected


# Erasing a customer is an admin's act, audited (docs/security.md), not an upstream app's.
NOT_INGESTED = FieldProblem("type", "an erasure is not accepted here: an admin forgets a "
                            "customer with `churnguard forget` or POST /customers/{id}/forget")
