"""Raw record bytes -> a validated event, or the reason it cannot be used."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from churnguard.core.clock import HOUR
from schemas.events import (
    MAX_EVENT_BYTES,
    MODEL_BY_TYPE,
    ActionFeedback,
    Event,
    Login,
    Profile,
    Purchase,
    TaggedEvent,
    Ticket,
)

EARLIEST_VALID = datetime(2000, 1, 1, tzinfo=UTC).timestamp()

# One per input topic (streams.settings.TopicNames.inputs). `custom` has no per-type topic:
# only the combined one carries it, so a custom record on a per-type topic is a wrong type.
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "purchase": TypeAdapter(Purchase),
    "login": TypeAdapter(Login),
    "ticket": TypeAdapter(Ticket),
    "profile": TypeAdapter(Profile),
    "action_feedback": TypeAdapter(ActionFeedback),
    "": TypeAdapter(TaggedEvent),  # the combined topic: `type` selects the model
}
_TYPES = ", ".join(MODEL_BY_TYPE)


@dataclass(frozen=True, slots=True)
class Rejected:
    # malformed_json | too_large | invalid_event | unknown_type | absurd_timestamp |
    # key_mismatch (and, from the batch shell, processing_error | output_too_large)
    kind: str
    reason: str


def parse_event(
    raw: bytes | None,
    event_type: str,
    *,
    now: float,
    max_future_hours: float,
    key: bytes | None = None,
    require_key: bool = False,
) -> Event | Rejected:
    """`event_type` is the type a per-type topic carries, "" for the combined topic.
    With `require_key`, the record key must be the customer id (co-partitioning)."""
    if not raw:
        return Rejected("malformed_json", "empty record value")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejected(
            "too_large",
            f"record value is {len(raw):,} bytes, over the limit of {MAX_EVENT_BYTES:,} bytes "
            "(64 KiB) for one event",
        )
    try:
        event: Event = _ADAPTERS[event_type].validate_json(raw)
    except ValidationError as exc:
        return _explain(exc)
    except Exception as exc:  # a validator bug must dead-letter the record, not stall it
        return Rejected(
            "invalid_event",
            f"the validator failed on this record ({type(exc).__name__}: {exc}); the record "
            "is kept in the dead-letter topic: report it with this reason",
        )
    occurred = event.at
    if occurred < EARLIEST_VALID or occurred > now + max_future_hours * HOUR:
        return Rejected(
            "absurd_timestamp",
            f"occurred_at {event.occurred_at.isoformat()} is before 2000-01-01 or more than "
            f"{max_future_hours:g} h ahead of the wall clock",
        )
    if require_key and key != event.customer_id.encode():
        shown = "missing" if key is None else "different from customer_id"
        return Rejected(
            "key_mismatch",
            f"record key is {shown}: producers must key every record by customer_id "
            "so that a customer's events share one partition",
        )
    return event


def _explain(exc: ValidationError) -> Rejected:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind == "json_invalid":
        detail = str(first["msg"]).removeprefix("Invalid JSON: ")
        return Rejected("malformed_json", f"not valid JSON: {detail}")
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        return Rejected(
            "unknown_type",
            f"field 'type' must be one of {_TYPES}"
            + (" (missing)" if kind == "union_tag_not_found" else ""),
        )
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "record"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return Rejected("invalid_event", "; ".join(parts) + more)


@dataclass(frozen=True, slots=True)
class FieldProblem:
    # Dotted path inside the event ("amount", "tags.1", "properties.carrier"); None when the
    # problem is the record as a whole (not JSON, too large, not an object).
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class FieldRejection:
    """A rejected event with one entry per problem, for answers to a client (the HTTP
    gateway): `kind` and `reason` are parse_event's, `problems` say which field each is."""

    kind: str
    reason: str
    problems: tuple[FieldProblem, ...]


def parse_event_by_field(
    raw: bytes | None, event_type: str, *, now: float, max_future_hours: float
) -> Event | FieldRejection:
    """parse_event (the very same checks), with a rejection's problems per field. Only a
    rejected record is validated a second time, to read pydantic's errors one by one."""
    outcome = parse_event(raw, event_type, now=now, max_future_hours=max_future_hours)
    if not isinstance(outcome, Rejected):
        return outcome
    if outcome.kind == "absurd_timestamp":
        problems: tuple[FieldProblem, ...] = (FieldProblem("occurred_at", outcome.reason),)
    elif outcome.kind == "unknown_type":
        problems = (FieldProblem("type", outcome.reason),)
    elif outcome.kind == "invalid_event" and raw:
        problems = _problems(raw, event_type) or (FieldProblem(None, outcome.reason),)
    else:  # malformed_json, too_large, a validator bug: the record as a whole
        problems = (FieldProblem(None, outcome.reason),)
    return FieldRejection(outcome.kind, outcome.reason, problems)


def _problems(raw: bytes, event_type: str) -> tuple[FieldProblem, ...]:
    try:
        _ADAPTERS[event_type].validate_json(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = error["loc"]
            # The combined adapter puts the selected model's tag first: ("purchase", "amount").
            if not event_type and loc and loc[0] in MODEL_BY_TYPE:
                loc = loc[1:]
            field = ".".join(str(part) for part in loc) or None
            problems.append(FieldProblem(field, error["msg"].removeprefix("Value error, ")))
        return tuple(problems)
    except Exception:  # parse_event already explained a validator bug
        return ()
    return ()
