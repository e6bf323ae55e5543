"""`churnguard replay`: the worker's core, in-process, over a JSON-lines file in event-time
order. Same file ⇒ byte-identical output."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from churnguard.clocks import EventClock
from churnguard.core.feedback import CommentTerms
from churnguard.core.guards import Suppressed
from churnguard.core.outcomes import OutcomeRecord
from churnguard.core.processor import Engine, advance, apply_event
from churnguard.core.rules import Action
from churnguard.core.state import CustomerState
from churnguard.core.validation import Rejected, parse_event
from schemas.events import Event
from streams.codecs import encode_action


@dataclass(frozen=True, slots=True)
class BadLine:
    line_number: int
    kind: str
    reason: str


def read_events(
    lines: Iterable[bytes], *, now: float, max_future_hours: float
) -> tuple[list[Event], list[BadLine]]:
    events: list[tuple[float, int, Event]] = []
    bad: list[BadLine] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = parse_event(line, "", now=now, max_future_hours=max_future_hours)
        if isinstance(parsed, Rejected):
            bad.append(BadLine(number, parsed.kind, parsed.reason))
        else:
            events.append((parsed.at, number, parsed))
    # Event-time order; the file order breaks ties so the result is deterministic.
    events.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in events], bad


def replay(
    events: Iterable[Event],
    engine: Engine,
    *,
    until: float | None = None,
    noticed_at: float | None = None,
    states: dict[str, CustomerState] | None = None,
    suppressed: list[Suppressed] | None = None,
    outcomes: list[OutcomeRecord] | None = None,
    comments: list[CommentTerms] | None = None,
) -> Iterator[Action]:
    """Events in event-time order; the clock advances with them, so every timer fires at
    its due time, in due order, exactly as the worker's ticks would fire it. With `until`,
    events after it are ignored and the clock runs on to it. `noticed_at` plays a live
    worker that only now receives this history (timers past their grace expire, see
    apply_event); `states`, when given, is filled with every customer's final state,
    `suppressed` with what the guards stopped, `outcomes` with the outcome records KPIs
    are computed from (core/outcomes.py) and `comments` with the ticket comments' terms
    (core/feedback.py; with an engine that `analyse_comments`), in order."""
    states = {} if states is None else states
    # (due, customer) of every customer with a pending timer; stale entries are skipped.
    dues: list[tuple[float, str]] = []
    clock = EventClock()

    def fire_due() -> Iterator[Action]:
        while dues and dues[0][0] <= clock.now():
            due, customer = heapq.heappop(dues)
            state = states.get(customer)
            if state is None or state.next_due != due:
                continue  # superseded by a later event of this customer, or forgotten
            outcome = advance(state, due, engine, noticed_at=noticed_at)
            if suppressed is not None:
                suppressed.extend(outcome.suppressed)
            if outcomes is not None:
                outcomes.extend(outcome.outcome_records)
            yield from outcome.actions
            if outcome.retired:
                del states[customer]  # data retention, as a worker's tick removes it
            elif state.next_due is not None:
                heapq.heappush(dues, (state.next_due, customer))

    for event in events:
        occurred = event.at
        if until is not None and occurred > until:
            break
        clock.advance_to(occurred)
        if dues and dues[0][0] <= clock.now():  # (most events: nothing due, no generator)
            yield from fire_due()
        if event.type == "erasure":
            states.pop(event.customer_id, None)  # as the worker forgets it (batch.py)
            continue
        outcome = apply_event(states.get(event.customer_id), event, engine,
                              noticed_at=noticed_at)
        states[event.customer_id] = state = outcome.state
        if suppressed is not None:
            suppressed.extend(outcome.suppressed)
        if outcomes is not None:
            outcomes.extend(outcome.outcome_records)
        if comments is not None:
            comments.extend(outcome.comments)
        yield from outcome.actions
        if state.next_due is not None:
            heapq.heappush(dues, (state.next_due, event.customer_id))
    if until is not None:
        clock.advance_to(until)
        yield from fire_due()


def run_replay(
    source: IO[bytes],
    out: IO[bytes],
    errors: IO[str],
    engine: Engine,
    *,
    until: float | None,
    max_future_hours: float,
) -> tuple[int, int]:
    """Returns (actions written, bad lines)."""
    # Deterministic: "too far in the future" is judged against --until, never the wall clock.
    horizon = math.inf if until is None else until
    events, bad = read_events(source, now=horizon, max_future_hours=max_future_hours)
    for line in bad:
        errors.write(f"line {line.line_number}: {line.kind}: {line.reason}\n")
    written = 0
    for action in replay(events, engine, until=until):
        out.write(encode_action(action) + b"\n")
        written += 1
    return written, len(bad)
