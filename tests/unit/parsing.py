"""Parsing one raw input record as the worker does, for the input-format tests
(test_event_limits, test_custom_events): `parse`, and `reject` when it must be refused."""

from __future__ import annotations

from datetime import UTC, datetime

from churnguard.core.validation import Rejected, parse_event
from schemas.events import Event

# A day after T0 (tests/unit/conftest.py), where the record factories put occurred_at: their
# events are in the past, well within the 24 h allowed into the future.
NOW = datetime(2024, 3, 2, 12, 0, tzinfo=UTC).timestamp()


def parse(raw: bytes, event_type: str = "") -> Event | Rejected:
    """`raw` as read from the combined topic ("") or the topic of `event_type`."""
    return parse_event(raw, event_type, now=NOW, max_future_hours=24)


def reject(raw: bytes, event_type: str = "") -> Rejected:
    """As parse, which must refuse the record."""
    result = parse(raw, event_type)
    assert isinstance(result, Rejected), result
    return result


def reject_invalid(raw: bytes, event_type: str = "") -> Rejected:
    """As reject, refused as an `invalid_event` whose reason is one line."""
    result = reject(raw, event_type)
    assert result.kind == "invalid_event", result
    assert "\n" not in result.reason
    return result
