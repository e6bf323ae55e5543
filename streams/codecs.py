"""Wire formats of the output topics (contract v1, docs/contract.md)."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from churnguard.core.clock import rfc3339
from churnguard.core.rules import Action

CONTRACT_VERSION = 1


def encode_action(action: Action) -> bytes:
    # default=str: Decimal amounts copied into variables render as exact strings.
    return orjson.dumps(action.to_record(), default=str)


def encode_score(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def encode_dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    kind: str,
    reason: str,
    at: float,
) -> bytes:
    return orjson.dumps({
        "reason": reason,
        "kind": kind,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "key_b64": None if key is None else base64.b64encode(key).decode(),
        "value_b64": None if value is None else base64.b64encode(value).decode(),
        "dead_lettered_at": rfc3339(at),
        "contract_version": CONTRACT_VERSION,
    })
