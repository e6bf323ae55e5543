"""What deliver writes to Kafka (connectors/delivery/records.py): delivery dead letters,
action_feedback events, and which values it reads as actions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from churnguard.core.validation import Rejected, parse_event
from connectors.delivery.records import (
    Source,
    delivery_dead_letter,
    feedback_event,
    readable_action,
)
from schemas.events import ActionFeedback
from streams.codecs import CONTRACT_VERSION

AT = datetime(2024, 3, 1, 12, 0, 5, 250_000, tzinfo=UTC).timestamp()
SOURCE = Source("t.actions.coupons", 3, 77)


def _action(**fields: Any) -> dict[str, Any]:
    return {"action_id": "9f0c" * 8, "type": "coupon", "customer_id": "cust-1",
            "rule_id": "winback", "payload": {"template": "t"}, **fields}


def _dead_letter(value: bytes | None, action: dict[str, Any] | None, **fields: Any
                 ) -> dict[str, Any]:
    arguments: dict[str, Any] = {"kind": "refused", "reason": "refused: HTTP 422",
                                 "endpoint": "https://crm.example.com/api", "attempts": 1,
                                 "http_status": 422, "at": AT, **fields}
    record = orjson.loads(delivery_dead_letter(SOURCE, value, action, **arguments))
    assert isinstance(record, dict)
    return record


# --- dead letters ----------------------------------------------------------------------


def test_dead_letter_of_an_action_keeps_it() -> None:
    action = _action()
    record = _dead_letter(orjson.dumps(action), action)
    assert record == {
        "kind": "refused",
        "reason": "refused: HTTP 422",
        "source": {"topic": "t.actions.coupons", "partition": 3, "offset": 77},
        "action_id": action["action_id"],
        "endpoint": "https://crm.example.com/api",
        "attempts": 1,
        "last_status": 422,
        "action": action,
        "dead_lettered_at": "2024-03-01T12:00:05.250Z",
        "contract_version": CONTRACT_VERSION,
    }


def test_dead_letter_of_an_unreadable_value_only_describes_it() -> None:
    value = b"\x00not json at all"
    record = _dead_letter(value, None, kind="unreadable", reason="not an action record",
                          endpoint=None, attempts=0, http_status=None)
    assert record["kind"] == "unreadable"
    assert record["action"] is None
    assert record["action_id"] is None
    assert record["endpoint"] is None
    assert record["last_status"] is None
    assert record["value_length"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert "not json" not in orjson.dumps(record).decode()


def test_dead_letter_of_a_missing_value_has_no_description() -> None:
    record = _dead_letter(None, None, kind="unreadable", endpoint=None, attempts=0,
                          http_status=None)
    assert "value_length" not in record
    assert "value_sha256" not in record


def test_dead_letter_reason_is_cut_at_500_characters() -> None:
    action = _action()
    record = _dead_letter(b"{}", action, kind="gave_up", reason="x" * 499 + "yz" + "w" * 1000)
    assert record["reason"] == "x" * 499 + "y"
    assert len(_dead_letter(b"{}", action, reason="short")["reason"]) == 5


@pytest.mark.parametrize("kind", ["refused", "gave_up", "no_route", "unreadable"])
def test_dead_letter_kind_is_kept(kind: str) -> None:
    assert _dead_letter(b"{}", _action(), kind=kind)["kind"] == kind


def test_dead_letter_of_an_action_has_no_value_description() -> None:
    record = _dead_letter(b'{"x": 1}', _action(), kind="no_route", endpoint=None)
    assert "value_length" not in record
    assert "value_sha256" not in record
    assert record["endpoint"] is None


# --- feedback events -------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["delivered", "failed"])
def test_feedback_event_is_a_valid_action_feedback(status: str) -> None:
    action = _action()
    raw = feedback_event(action, status, at=AT)
    event = parse_event(raw, "action_feedback", now=AT, max_future_hours=24)
    assert not isinstance(event, Rejected), event
    assert isinstance(event, ActionFeedback)
    assert event.action_id == action["action_id"]
    assert event.customer_id == "cust-1"
    assert event.status == status
    assert event.at == pytest.approx(AT)
    # Also valid on the combined topic (it carries `type`).
    assert not isinstance(parse_event(raw, "", now=AT, max_future_hours=24), Rejected)


def test_feedback_event_id_is_deterministic() -> None:
    action = _action()
    first = orjson.loads(feedback_event(action, "delivered", at=AT))
    again = orjson.loads(feedback_event(dict(action), "delivered", at=AT + 3600))
    assert first["event_id"] == again["event_id"] == f"delivery-delivered-{action['action_id']}"
    failed = orjson.loads(feedback_event(action, "failed", at=AT))
    assert failed["event_id"] == f"delivery-failed-{action['action_id']}"
    other = orjson.loads(feedback_event(_action(action_id="b" * 32), "delivered", at=AT))
    assert other["event_id"] != first["event_id"]


def test_feedback_event_carries_nothing_but_the_feedback() -> None:
    raw = feedback_event(_action(payload={"template": "secret-ish"}), "delivered", at=AT)
    assert set(orjson.loads(raw)) == {
        "type", "event_id", "customer_id", "occurred_at", "action_id", "status"}


# --- readable_action ----------------------------------------------------------------------


def test_readable_action_returns_the_record() -> None:
    action = _action(extra={"nested": [1, 2]})
    assert readable_action(orjson.dumps(action)) == action


@pytest.mark.parametrize("value", [
    None, b"", b"not json", b"{", b"\xff\xfe", b'"a string"', b"[1, 2]", b"42", b"null",
    b"true",
])
def test_readable_action_refuses_what_is_not_a_json_object(value: bytes | None) -> None:
    assert readable_action(value) is None


@pytest.mark.parametrize("field", ["action_id", "customer_id", "type"])
@pytest.mark.parametrize("bad", [..., "", None, 7, ["a"], {"a": 1}, True])
def test_readable_action_needs_non_empty_string_ids(field: str, bad: Any) -> None:
    action = _action()
    if bad is ...:
        del action[field]
    else:
        action[field] = bad
    assert readable_action(orjson.dumps(action)) is None


def test_dead_letter_of_an_action_too_large_to_keep_names_it() -> None:
    value = orjson.dumps(_action())
    record = _dead_letter(value, None, action_id="9f0c" * 8)
    assert record["action"] is None
    assert record["action_id"] == "9f0c" * 8
    assert record["value_length"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).hexdigest()
    # An action given is named by its own id.
    assert _dead_letter(value, _action(), action_id="other")["action_id"] == "9f0c" * 8


def test_an_action_id_too_long_for_a_feedback_event_id_is_not_an_action() -> None:
    """`delivery-delivered-` + the id must stay an id (200 characters): up to 160 are read,
    longer ones are dead-lettered as unreadable rather than answered with feedback the
    worker would reject."""
    raw = feedback_event(_action(action_id="a" * 160), "delivered", at=AT)
    assert not isinstance(parse_event(raw, "action_feedback", now=AT, max_future_hours=24),
                          Rejected)
    assert readable_action(orjson.dumps(_action(action_id="a" * 160))) is not None
    assert readable_action(orjson.dumps(_action(action_id="a" * 161))) is None
