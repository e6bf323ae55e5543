"""streams.codecs.encode_dead_letter: no personal data in the DLQ (a JSON value is kept
minimised, anything else not at all), and a bounded record."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from churnguard.core.validation import Rejected, parse_event
from streams.codecs import DLQ_VALUE_LIMIT, REDACTED, encode_dead_letter

PII = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000"}


def letter(value: bytes | None, *, key: bytes | None = b"c1", **kwargs: object) -> dict:
    fields: dict = {"topic": "churnguard.profiles", "partition": 3, "offset": 7, "key": key,
                    "value": value, "kind": "invalid_event", "reason": "r", "at": 0.0}
    fields.update(kwargs)
    return orjson.loads(encode_dead_letter(**fields))


def kept(record: dict) -> bytes:
    return base64.b64decode(record["value_b64"])


def test_a_rejected_profile_keeps_no_personal_data(raw_factory, t0):
    raw = raw_factory("profile", birthday="1990-13-45", **PII)
    rejected = parse_event(raw, "", now=t0, max_future_hours=24)
    assert isinstance(rejected, Rejected)
    record = encode_dead_letter(topic="churnguard.profiles", partition=0, offset=1, key=b"c1",
                                value=raw, kind=rejected.kind, reason=rejected.reason, at=t0)
    for secret in PII.values():
        assert secret.encode() not in record
        assert secret not in rejected.reason
        assert secret.encode() not in kept(orjson.loads(record))
    data = orjson.loads(record)
    assert data["value_redacted"] is True
    value = orjson.loads(kept(data))
    assert {name: value[name] for name in PII} == dict.fromkeys(PII, REDACTED)
    assert value["birthday"] == "1990-13-45"  # what validation judged is kept
    assert data["value_length"] == len(raw)
    assert data["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert data["value_truncated"] is False


def test_only_the_diagnostic_fields_keep_their_values_the_structure_stays():
    value = {"event_id": "e", "customer_id": "c1", "occurred_at": "2026-01-01 10:00",
             "amount": "NaN?", "currency": "€€€", "satisfaction": 9, "email": None,
             "Phone": "123", "order_id": "o-ada@example.com", "tags": ["vip", "Ada"],
             "notes": "call Ada on +44 20", "flag": True,
             "items": [{"name": "Jane", "sku": "A", "qty": 2},
                       [{"contact": {"email": "j@x.io"}}]]}
    record = letter(orjson.dumps(value))
    assert record["value_redacted"] is True
    assert orjson.loads(kept(record)) == {
        "event_id": "e", "customer_id": "c1", "occurred_at": "2026-01-01 10:00",
        "amount": "NaN?", "currency": "€€€", "satisfaction": 9, "email": None,
        "Phone": REDACTED, "order_id": REDACTED, "tags": [REDACTED, REDACTED],
        "notes": REDACTED, "flag": True,
        "items": [{"name": REDACTED, "sku": REDACTED, "qty": REDACTED},
                  [{"contact": {"email": REDACTED}}]],
    }


def test_a_long_string_in_a_diagnostic_field_is_no_code_and_is_redacted():
    record = letter(orjson.dumps({"event_id": "e" * 201, "currency": "Ada Lovelace"}))
    assert orjson.loads(kept(record)) == {"event_id": REDACTED, "currency": "Ada Lovelace"}


def test_a_json_value_that_is_no_object_keeps_only_its_shape():
    assert orjson.loads(kept(letter(b'"ada@example.com"'))) == REDACTED
    assert orjson.loads(kept(letter(b'[1, "a", null]'))) == [REDACTED, REDACTED, None]
    clean = letter(b'{"event_id": "e", "customer_id": "c1"}')
    assert clean["value_redacted"] is False


def test_deeply_nested_json_is_redacted_without_recursion():
    raw = b"[" * 200 + b'{"a": {"email": "x@y.z"}}' + b"]" * 200
    assert b"x@y.z" not in kept(letter(raw))


@pytest.mark.parametrize("raw", [
    b'{"email": "ada@example.com", "amount": ',  # truncated
    b'{"name": "Ada \xff\xfe Lovelace"}',  # not UTF-8
    b'{"amount": NaN, "name": "Ada Lovelace"}',
    b"name=Ada+Lovelace&email=ada@example.com",
])
def test_a_value_that_is_not_json_is_not_kept_only_described(raw):
    record = letter(raw, kind="malformed_json")
    assert record["value_b64"] is None
    assert (record["value_redacted"], record["value_truncated"]) == (True, False)
    assert record["value_length"] == len(raw)
    assert record["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert b"Ada" not in encode_dead_letter(
        topic="t", partition=0, offset=0, key=b"c1", value=raw, kind="malformed_json",
        reason="r", at=0.0)


def test_a_large_value_is_truncated_with_length_and_digest_of_the_original():
    raw = orjson.dumps({"event_id": "e", "pad": ["x"] * (40 * 1024)})
    record = letter(raw, kind="too_large")
    assert kept(record) == orjson.dumps({"event_id": "e", "pad": [REDACTED] * (40 * 1024)}
                                        )[:DLQ_VALUE_LIMIT]
    assert record["value_truncated"] is True
    assert record["value_length"] == len(raw)
    assert record["value_sha256"] == hashlib.sha256(raw).hexdigest()


def test_a_large_json_value_is_minimised_before_it_is_truncated():
    raw = orjson.dumps({"email": "ada@example.com", "pad": "y" * (200 * 1024)})
    record = letter(raw, kind="too_large")
    assert orjson.loads(kept(record)) == {"email": REDACTED, "pad": REDACTED}
    assert record["value_truncated"] is False


@pytest.mark.parametrize("size", [0, 1024, 999_000])
def test_a_dead_letter_always_fits_in_one_broker_message(size):
    huge = b"k" * size
    record = encode_dead_letter(topic="t", partition=0, offset=0, key=huge, value=huge + b"v",
                                kind="too_large", reason="why " * 100_000, at=0.0)
    assert len(record) < 100 * 1024


def test_a_key_longer_than_any_customer_id_is_truncated():
    record = letter(b"{}", key=b"k" * 5000)
    assert base64.b64decode(record["key_b64"]) == b"k" * 1024
    assert record["key_truncated"] is True


def test_missing_key_and_value_and_a_time_driven_source():
    record = letter(None, key=None, topic=None, partition=None, offset=None)
    assert record["key_b64"] is None
    assert record["value_b64"] is None
    assert "value_redacted" not in record
    assert record["source"] == {"topic": None, "partition": None, "offset": None}


def test_max_value_bytes_lowers_the_cap():
    record = letter(orjson.dumps(["z"] * 5000), max_value_bytes=100)
    assert len(kept(record)) == 100
    assert record["value_truncated"] is True


def test_json_nested_too_deep_to_rewrite_keeps_nothing():
    raw = b'{"a":' * 300 + b'{"email":"x@y.z"}' + b"}" * 300
    record = letter(raw)
    assert record["value_b64"] is None
    assert record["value_redacted"] is True
    assert record["value_length"] == len(raw)


@pytest.mark.parametrize("bad", [
    {"name": ["Ada Lovelace"]},
    {"email": {"address": "ada@example.com"}},
    {"phone": 442079460000},
    {"tier": "Ada Lovelace"},
    {"account_manager": "ada@example.com\x01x"},
])
def test_rejection_reasons_never_echo_the_input(raw_factory, t0, bad):
    raw = raw_factory("profile", **bad)
    rejected = parse_event(raw, "", now=t0, max_future_hours=24)
    assert isinstance(rejected, Rejected)
    for secret in ("Ada Lovelace", "ada@example.com", "442079460000"):
        assert secret not in rejected.reason
