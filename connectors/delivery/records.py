"""What deliver writes to Kafka: a delivery dead letter (churnguard.delivery-dlq) and an
action_feedback event (the feedback topic) per finished action. Wire formats: docs/contract.md."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from churnguard.core.clock import rfc3339
from streams.codecs import CONTRACT_VERSION

_ERROR_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int


def delivery_dead_letter(
    source: Source, value: bytes | None, action: dict[str, Any] | None, *, kind: str,
    reason: str, endpoint: str | None, attempts: int, http_status: int | None, at: float,
    action_id: str | None = None,
) -> bytes:
    """`kind`: refused | gave_up | no_route | unreadable. The action record itself is kept
    (actions carry no personal data); a value that is not one, or an action too large to
    keep (`action_id` then names it), is only described."""
    record: dict[str, Any] = {
        "kind": kind,
        "reason": reason[:_ERROR_LIMIT],
        "source": {"topic": source.topic, "partition": source.partition,
                   "offset": source.offset},
        "action_id": action_id if action is None else action.get("action_id"),
        "endpoint": endpoint,
        "attempts": attempts,
        "last_status": http_status,
        "action": action,
    }
    if action is None and value is not None:
        record |= {"value_length": len(value),
                   "value_sha256": hashlib.sha256(value).hexdigest()}
    record |= {"dead_lettered_at": rfc3339(at), "contract_version": CONTRACT_VERSION}
    return orjson.dumps(record)


def feedback_event(action: dict[str, Any], status: str, *, at: float) -> bytes:
    """An action_feedback event: its id is the action's and the status's, so a re-delivered
    action (after a crash) repeats the same event, which the worker applies once."""
    return orjson.dumps({
        "type": "action_feedback",
        "event_id": f"delivery-{status}-{action['action_id']}",
        "customer_id": action["customer_id"],
        "occurred_at": rfc3339(at),
        "action_id": action["action_id"],
        "status": status,
    })


def readable_action(value: bytes | None) -> dict[str, Any] | None:
    """The action record, None unless it is one: a JSON object with action_id, customer_id
    and type as strings fit for a header and an event id (the worker's are 32 hex digits,
    ids of at most 200 characters, one word)."""
    if not value:
        return None
    try:
        action = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(action, dict):
        return None
    for name, (limit, unfit) in _FIELDS.items():
        text = action.get(name)
        if not isinstance(text, str) or not 0 < len(text) <= limit or unfit.search(text):
            return None
    return action


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
# action_id and type go into headers; the feedback event's id (`delivery-delivered-` +
# action_id) stays within an id's 200 characters.
_FIELDS = {"action_id": (160, _CONTROL_OR_SPACE), "type": (40, _CONTROL_OR_SPACE),
           "customer_id": (200, _CONTROL)}
