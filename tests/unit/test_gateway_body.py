"""Request bodies -> the bytes of each event: an object, an array, NDJSON; refusals."""

from __future__ import annotations

import orjson

from connectors.gateway.body import BodyRefused, split_events


def test_one_object_is_one_event_as_sent() -> None:
    body = b'{"type": "login", "event_id": "e1"}\n'
    assert split_events(body, "application/json", max_events=10) == [body]


def test_an_array_is_a_batch_of_re_serialized_items() -> None:
    items = [{"type": "login", "amount": 12.5, "n": 2**53}, {"b": [1, {"c": None}]}, 7]
    body = orjson.dumps(items, option=orjson.OPT_INDENT_2)
    assert split_events(body, "application/json", max_events=10) == [
        orjson.dumps(item) for item in items]


def test_numbers_in_an_array_keep_their_values() -> None:
    # Beyond 64 bits an integer stays one (a custom property's ±2^53 check then rejects it,
    # as it would the same event sent alone); a decimal is its shortest double.
    body = b'[{"n": 123456789012345678901234567890, "amount": 129.90, "x": "1"}]'
    assert split_events(body, "application/json", max_events=10) == [
        b'{"n":123456789012345678901234567890,"amount":129.9,"x":"1"}']


def test_ndjson_is_one_event_per_non_blank_line_kept_as_sent() -> None:
    body = b'{"a": 1}\r\n\n  \n{broken\n{"b": 2}'
    assert split_events(body, "application/x-ndjson", max_events=10) == [
        b'{"a": 1}', b"{broken", b'{"b": 2}']


def test_refusals() -> None:
    assert split_events(b"[1, 2, 3]", "application/json", max_events=2) == BodyRefused(
        413, "too_many_events",
        "the body holds 3 events, over the limit of 2 per request: split the batch")
    for body, content_type in [(b"[]", "application/json"), (b"\n \n", "application/x-ndjson")]:
        refused = split_events(body, content_type, max_events=2)
        assert isinstance(refused, BodyRefused)
        assert (refused.status, refused.error) == (400, "empty")
    refused = split_events(b'{"a": 1}\n{"b": 2}', "application/json", max_events=2)
    assert isinstance(refused, BodyRefused)
    assert (refused.status, refused.error) == (400, "malformed_json")
    assert "application/x-ndjson" in refused.message
