"""Wire formats of the output topics (contract v1, docs/contract.md)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from churnguard.core.clock import rfc3339
from churnguard.core.guards import Suppressed
from churnguard.core.rules import Action

CONTRACT_VERSION = 1


def encode_action(action: Action) -> bytes:
    # default=str: Decimal amounts copied into variables render as exact strings.
    return orjson.dumps(action.to_record(), default=str)


def encode_suppressed(suppressed: Suppressed) -> bytes:
    return orjson.dumps(suppressed.to_record())


def encode_record(record: dict[str, Any]) -> bytes:
    """A plain record: a score change (scores topic) or an outcome (outcomes topic)."""
    return orjson.dumps(record)


# Dead letters keep what an operator needs to find and fix a record, never personal data,
# and always fit in one Kafka message (the broker's default limit is 1 MB).
DLQ_VALUE_LIMIT = 64 * 1024
DLQ_KEY_LIMIT = 1024
DLQ_REASON_LIMIT = 1000
REDACTED = "[redacted]"
# The fields whose values a dead letter keeps: which record it was, when, and the values
# validation judges (numbers, codes, dates, enumerations). Never names, contact details,
# free text, tags, ids of other systems or unknown fields — wherever personal data may hide.
DLQ_KEPT_FIELDS = frozenset({
    "type", "event_id", "customer_id", "occurred_at", "amount", "currency", "status",
    "priority", "satisfaction", "tier", "birthday", "signup_date", "action_id", "category",
})
# A kept field's value longer than this is no code or number: replaced like any other.
_KEPT_STRING_LIMIT = 200


def encode_dead_letter(
    *,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    kind: str,
    reason: str,
    at: float,
    max_value_bytes: int = DLQ_VALUE_LIMIT,
) -> bytes:
    """The DLQ record of a rejected input record (contract: `churnguard.dlq`). A JSON value
    is kept minimised (`minimise_value`): its structure, and the values of `DLQ_KEPT_FIELDS`;
    a value that is not JSON is not kept at all — the record stays findable at its source
    topic/partition/offset for the input topic's retention. At most `max_value_bytes` are
    kept (`value_truncated`); `value_length` and `value_sha256` describe the original bytes.
    `topic`/`partition`/`offset` are None for a time-driven firing (no input record)."""
    record: dict[str, Any] = {
        "reason": reason if len(reason) <= DLQ_REASON_LIMIT else reason[:DLQ_REASON_LIMIT] + "…",
        "kind": kind,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "key_b64": None if key is None else base64.b64encode(key[:DLQ_KEY_LIMIT]).decode(),
    }
    if key is not None and len(key) > DLQ_KEY_LIMIT:
        record["key_truncated"] = True
    if value is None:
        record["value_b64"] = None
    else:
        kept, redacted = minimise_value(value)
        truncated = kept is not None and len(kept) > max_value_bytes
        record |= {
            "value_b64": (
                None if kept is None else base64.b64encode(kept[:max_value_bytes]).decode()
            ),
            "value_redacted": redacted,
            "value_truncated": truncated,
            "value_length": len(value),
            "value_sha256": hashlib.sha256(value).hexdigest(),
        }
    record |= {"dead_lettered_at": rfc3339(at), "contract_version": CONTRACT_VERSION}
    return orjson.dumps(record)


def minimise_value(value: bytes) -> tuple[bytes | None, bool]:
    """(what a dead letter keeps of a rejected value, whether anything was replaced).

    JSON keeps its structure (objects' keys, lists' lengths); the value of a field of
    `DLQ_KEPT_FIELDS` stays when it is a number, a boolean, null or a short string; every
    other string or number becomes `"[redacted]"` (null and booleans tell nothing and stay).
    Not JSON (or nested deeper than orjson writes, 255 levels): None, nothing is kept, since
    its bytes may hold anything."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, True
    redacted = False

    def scrub(item: Any, keep: bool) -> Any:
        nonlocal redacted
        if item is None or isinstance(item, bool) or (keep and _short_scalar(item)):
            return item
        redacted = True
        return REDACTED

    if not isinstance(parsed, dict | list):
        return orjson.dumps(scrub(parsed, False)), redacted
    # Iterative: orjson accepts nesting up to 1024 levels, deeper than Python's recursion.
    # Only the event's own (top-level) fields are contract fields.
    stack: list[tuple[Any, bool]] = [(parsed, True)]
    while stack:
        node, top = stack.pop()
        entries = node.items() if isinstance(node, dict) else enumerate(node)
        for name, item in list(entries):
            if isinstance(item, dict | list):
                stack.append((item, False))
            else:
                node[name] = scrub(item, top and name in DLQ_KEPT_FIELDS)
    try:
        return orjson.dumps(parsed), redacted
    except TypeError:  # nested deeper than orjson writes (255 levels): nothing is kept
        return None, True


def _short_scalar(item: Any) -> bool:
    if isinstance(item, str):
        return len(item) <= _KEPT_STRING_LIMIT
    return isinstance(item, int | float)
