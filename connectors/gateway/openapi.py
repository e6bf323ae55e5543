"""The gateway's OpenAPI 3.0 document (/openapi.json). Events are described loosely (their
required fields and `type`): the worker's pydantic models in schemas/events.py are the
authority, applied to each event, and docs/contract.md describes them."""

from __future__ import annotations

from typing import Any

from connectors.gateway.settings import GatewaySettings
from schemas.events import MODEL_BY_TYPE

_JSON = "application/json"


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _result(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/IngestResult"}}}}


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 1}}}


def openapi_document(limits: GatewaySettings) -> dict[str, Any]:
    batch = limits.max_batch_events
    event = {
        "type": "object",
        "description": "An input event of docs/contract.md (the combined topic's form: `type` "
        "selects the model). Unknown fields are ignored.",
        "required": ["type", "event_id", "customer_id", "occurred_at"],
        "properties": {
            "type": {"type": "string", "enum": list(MODEL_BY_TYPE)},
            "event_id": {"type": "string", "minLength": 1, "maxLength": 200},
            "customer_id": {"type": "string", "minLength": 1, "maxLength": 200},
            "occurred_at": {"type": "string", "format": "date-time"},
        },
        "additionalProperties": True,
    }
    open_get = {"security": [], "tags": ["operations"]}
    return {
        "openapi": "3.0.3",
        "info": {"title": "churnguard gateway", "version": "1",
                 "description": "HTTP ingest of churnguard input events (docs/gateway.md)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Event": event,
                "Error": {
                    "type": "object", "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "Problem": {
                    "type": "object", "required": ["field", "message"],
                    "properties": {"field": {"type": "string", "nullable": True},
                                   "message": {"type": "string"}},
                },
                "RejectedItem": {
                    "type": "object", "required": ["index", "field", "message", "errors"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0,
                                  "description": "position of the event in the batch"},
                        "field": {"type": "string", "nullable": True,
                                  "description": "the first problem's field (dotted path); "
                                  "null: the event as a whole"},
                        "message": {"type": "string"},
                        "errors": {"type": "array",
                                   "items": {"$ref": "#/components/schemas/Problem"}},
                    },
                },
                "IngestResult": {
                    "type": "object", "required": ["accepted", "duplicates"],
                    "properties": {
                        "accepted": {"type": "array", "items": {"type": "string"},
                                     "description": "event ids acknowledged by the broker"},
                        "duplicates": {"type": "array", "items": {"type": "string"},
                                       "description": "event ids accepted before (not "
                                       "produced again)"},
                        "rejected": {"type": "array",
                                     "items": {"$ref": "#/components/schemas/RejectedItem"}},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/events": {"post": {
                "summary": f"one event, or a batch of at most {batch:,} "
                f"({limits.max_body_bytes:,} bytes at most)",
                "tags": ["ingest"],
                "description": "Each event is validated with the worker's schemas and produced "
                "to its type's input topic keyed by customer_id; the answer comes once the "
                "broker acknowledged them (acks=all). NDJSON (one event per line) is taken with "
                "Content-Type: application/x-ndjson. Role: ingest.",
                "requestBody": {"required": True, "content": {
                    _JSON: {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/Event"},
                        {"type": "array", "maxItems": batch,
                         "items": {"$ref": "#/components/schemas/Event"}},
                    ]}},
                }},
                "responses": {
                    "202": _result("every event accepted (or a duplicate)"),
                    "207": _result("some events rejected, the others accepted"),
                    "400": {"description": "every event rejected (IngestResult), or the body "
                            "is not JSON or holds no event (Error)",
                            "content": {_JSON: {"schema": {"oneOf": [
                                {"$ref": "#/components/schemas/IngestResult"},
                                {"$ref": "#/components/schemas/Error"}]}}}},
                    "401": _error("no valid bearer token"),
                    "403": _error("the token lacks the `ingest` scope"),
                    "408": _error(f"the body took over {limits.body_timeout_s:g} s to arrive"),
                    "413": _error(f"body over {limits.max_body_bytes:,} bytes or more than "
                                  f"{batch:,} events"),
                    "415": _error("a Content-Encoding other than gzip or deflate"),
                    "429": _error("the token's rate limit", _RETRY_AFTER),
                    "503": _error("starting, stopping, or the broker did not acknowledge in "
                                  "time: nothing reported accepted", _RETRY_AFTER),
                },
            }},
            "/health": {"get": {**open_get, "summary": "alive",
                                "responses": {"200": {"description": "alive"}}}},
            "/ready": {"get": {**open_get, "summary": "topics exist and producer connected",
                               "responses": {"200": {"description": "ready"},
                                             "503": {"description": "not ready (yet)"}}}},
            "/metrics": {"get": {**open_get, "summary": "Prometheus text",
                                 "responses": {"200": {"description": "metrics"}}}},
            "/openapi.json": {"get": {**open_get, "summary": "this document",
                                      "responses": {"200": {"description": "OpenAPI 3.0"}}}},
        },
    }
