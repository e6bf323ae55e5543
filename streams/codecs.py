"""Wire formats of the output topics (contract v1, docs/contract.md)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from churnguard.core.clock import rfc3339
from churnguard.core.rules import Action
from schemas.events import PERSONAL_FIELDS

CONTRACT_VERSION = 1


def encode_action(action: Action) -> bytes:
    # default=str: Decimal amounts copied into variables render as exact strings.
    return orjson.dumps(action.to_record(), default=str)


def encode_score(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


# Dead letters keep what an operator needs to find and fix a record, never personal data,
# and always fit in one Kafka message (the broker's default limit is 1 MB).
DLQ_VALUE_LIMIT = 64 * 1024
DLQ_KEY_LIMIT = 1024
DLQ_REASON_LIMIT = 1000
REDACTED = "[redacted]"


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
    """The DLQ record of a rejected input record (contract: `churnguard.dlq`). A value that
    parses as JSON is kept re-serialized with every personal field (`PERSONAL_FIELDS`, at any
    depth) redacted; only an unparseable value is kept as its raw bytes. At most
    `max_value_bytes` of it are kept (`value_truncated`); `value_length` and `value_sha256`
    describe the original bytes. `topic`/`partition`/`offset` are None for a time-driven
    firing (no input record)."""
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
        kept, redacted = redact_value(value)
        truncated = len(kept) > max_value_bytes or (not kept and bool(value))
        record |= {
            "value_b64": base64.b64encode(kept[:max_value_bytes]).decode(),
            "value_redacted": redacted,
            "value_truncated": truncated,
            "value_length": len(value),
            "value_sha256": hashlib.sha256(value).hexdigest(),
        }
    record |= {"dead_lettered_at": rfc3339(at), "contract_version": CONTRACT_VERSION}
    return orjson.dumps(record)


def redact_value(value: bytes) -> tuple[bytes, bool]:
    """(the bytes to keep, whether they are the redacted re-serialization): JSON is parsed,
    personal fields at any depth replaced by REDACTED (a null stays null), re-serialized."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value, False
    # Iterative: orjson accepts nesting up to 1024 levels, deeper than Python's recursion.
    stack = [parsed]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for name, item in node.items():
                if name.lower() in PERSONAL_FIELDS:
                    if item is not None:
                        node[name] = REDACTED
                elif isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    try:
        return orjson.dumps(parsed), True
    except TypeError:  # nested deeper than orjson writes (255 levels): nothing is kept
        return b"", True
