"""Threshold triggers as the compiled core reads them: a rule's `ThresholdTrigger` (a pydantic
model of the pack, core/pack.py) copied into a compiled class once per pack, because every
evaluation and every due computation reads its fields (a pydantic model's field, read from
compiled code, is a lookup through its type and its dictionary)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a threshold trigger watches (rules.metric_value).
Metric = Literal[
    "health_score", "lifetime_spend", "order_count", "logins_30d", "purchases_90d",
    "open_tickets",
]


@dataclass(frozen=True, slots=True)
class Threshold:
    """Fires when `metric` enters the condition (`below` or `at_least`, exactly one is set)
    from outside it; see ThresholdTrigger for each field."""

    metric: Metric
    below: float | None
    at_least: float | None
    once: bool
    grace_hours: float

    def holds(self, value: float) -> bool:
        if self.below is not None:
            return value < self.below
        return self.at_least is not None and value >= self.at_least
