"""parse_event_by_field: parse_event's very checks, a rejection's problems per field."""

from __future__ import annotations

import time

import orjson
import pytest

from churnguard.core.validation import (
    FieldProblem,
    FieldRejection,
    Rejected,
    parse_event,
    parse_event_by_field,
)
from connectors.gateway.admission import admit
from schemas.events import Login

NOW = time.time()
AT = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 60))


def _raw(**fields: object) -> bytes:
    return orjson.dumps({"event_id": "e1", "customer_id": "c1", "occurred_at": AT, **fields})


def _problems(raw: bytes) -> list[tuple[str | None, str]]:
    outcome = parse_event_by_field(raw, "", now=NOW, max_future_hours=24)
    assert isinstance(outcome, FieldRejection)
    rejected = parse_event(raw, "", now=NOW, max_future_hours=24)
    assert isinstance(rejected, Rejected)
    assert (outcome.kind, outcome.reason) == (rejected.kind, rejected.reason)
    return [(p.field, p.message) for p in outcome.problems]


def test_a_valid_event_is_the_worker_s_event() -> None:
    outcome = parse_event_by_field(_raw(type="login", channel="app"), "", now=NOW,
                                   max_future_hours=24)
    assert isinstance(outcome, Login)
    assert outcome.channel == "app"


@pytest.mark.parametrize(("fields", "expected"), [
    ({"type": "purchase", "order_id": "o", "amount": "-1", "currency": "XXY"},
     [("amount", "Input should be greater than 0"),
      ("currency", "must be an ISO 4217 currency code, e.g. EUR or USD")]),
    ({"type": "profile", "tags": ["ok", ""]},
     [("tags.1", "String should have at least 1 character")]),
    ({"type": "custom", "name": "x", "properties": {"a": [1]}},
     [("properties.a", "must be a string, a number or a boolean, not a list (properties are "
       "flat)")]),
    ({"type": "ticket", "ticket_id": "t"}, [("status", "Field required")]),
    ({"type": "teleport"},
     [("type", "field 'type' must be one of purchase, login, ticket, profile, custom, "
       "action_feedback, erasure")]),
    ({}, [("type", "field 'type' must be one of purchase, login, ticket, profile, custom, "
           "action_feedback, erasure (missing)")]),
])
def test_each_problem_names_its_field(fields: dict[str, object],
                                      expected: list[tuple[str, str]]) -> None:
    assert _problems(_raw(**fields)) == expected


def test_problems_of_the_record_as_a_whole_name_no_field() -> None:
    assert _problems(b"[1, 2]") == [(None, "Input should be an object")]
    [(field, message)] = _problems(b'{"type": "login",')
    assert field is None
    assert message.startswith("not valid JSON")
    [(field, message)] = _problems(b" " * 70_000)
    assert (field, message.split(",")[0]) == (None, "record value is 70")


def test_a_time_too_far_ahead_is_occurred_at_s() -> None:
    [(field, message)] = _problems(_raw(type="login", occurred_at="2099-01-01T00:00:00Z"))
    assert field == "occurred_at"
    assert "ahead of the wall clock" in message


def test_personal_values_are_never_quoted() -> None:
    secret = "Ada Lovelace, 12 Secret Street"
    raw = _raw(type="ticket", ticket_id="t", status="opened", comment=secret * 100,
               priority=secret)
    assert secret not in repr(_problems(raw))


def test_admit_splits_a_batch_by_position() -> None:
    items = [_raw(type="login"), b"nope", _raw(type="purchase")]
    admitted, rejected = admit(items, now=NOW, max_future_hours=24)
    assert [(a.index, a.raw) for a in admitted] == [(0, items[0])]
    assert [r.index for r in rejected] == [1, 2]
    answer = rejected[1].as_json()
    assert (answer["index"], answer["field"], answer["message"]) == (
        2, "order_id", "Field required")
    assert answer["errors"][0] == {"field": "order_id", "message": "Field required"}
    assert len(answer["errors"]) == 3  # order_id, amount, currency
    assert rejected[0].problems[0] == FieldProblem(None, rejected[0].problems[0].message)


def test_an_erasure_is_not_ingested() -> None:
    """Erasing a customer is an admin's, audited (churnguard forget), not an upstream app's."""
    raw = orjson.dumps({"type": "erasure", "event_id": "e1", "customer_id": "c1",
                        "occurred_at": "2026-11-23T09:00:00Z"})
    admitted, rejected = admit([raw], now=NOW, max_future_hours=24)
    assert admitted == []
    assert [(r.index, r.problems[0].field) for r in rejected] == [(0, "type")]
    assert "churnguard forget" in rejected[0].problems[0].message
