"""A request body -> the raw bytes of each event it holds: one JSON object, a JSON array of
them, or NDJSON (Content-Type application/x-ndjson: one event per non-blank line). Each
event is then validated on its own bytes by the worker's parse_event."""

from __future__ import annotations

from dataclasses import dataclass

import pydantic_core

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines"})


@dataclass(frozen=True, slots=True)
class BodyRefused:
    """The body as a whole cannot be read as events (answered 400 or 413)."""

    status: int
    error: str
    message: str


_BOM = b"\xef\xbb\xbf"
_EMPTY = ("the body holds no event: send a JSON object, a JSON array of objects or NDJSON "
          "(Content-Type: application/x-ndjson)")


def split_events(body: bytes, content_type: str, *, max_events: int) -> list[bytes] | BodyRefused:
    if body.startswith(_BOM):
        return BodyRefused(400, "malformed_json", "the body starts with a UTF-8 byte-order "
                           "mark: send it without one (JSON is UTF-8 without a BOM)")
    if not body.strip():
        return BodyRefused(400, "empty", _EMPTY)
    if content_type in NDJSON_TYPES:
        items = [line for line in body.splitlines() if line.strip()]
    else:
        items_or_refusal = _json_items(body)
        if isinstance(items_or_refusal, BodyRefused):
            return items_or_refusal
        items = items_or_refusal
    if not items:
        return BodyRefused(400, "empty", _EMPTY)
    if len(items) > max_events:
        return BodyRefused(413, "too_many_events",
                           f"the body holds {len(items):,} events, over the limit of "
                           f"{max_events:,} per request: split the batch")
    return items


def _json_items(body: bytes) -> list[bytes] | BodyRefused:
    try:
        # pydantic's own JSON parser (jiter), as validation's: integers of any size stay
        # integers (orjson would turn one beyond 64 bits into a float), NaN is refused.
        document = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        # The message gives the position, never the text around it.
        return BodyRefused(400, "malformed_json",
                           f"the body is not valid JSON ({exc}); NDJSON needs "
                           "Content-Type: application/x-ndjson")
    if isinstance(document, list):
        # An array's items are produced re-serialized (compact, the same keys and values):
        # the parser keeps no item's exact bytes.
        return [pydantic_core.to_json(item) for item in document]
    # One event: produced as sent. A scalar is one (invalid) event, rejected by validation.
    return [body]
