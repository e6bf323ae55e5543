"""Additive in contract v1: `custom` events (combined topic only) and `profile.timezone`.

A custom event has a name and flat properties (strings, finite numbers, booleans) of at most
4 KiB as compact JSON; every other shape is dead-lettered as `invalid_event` with a reason
that names the field and quotes no value."""

from __future__ import annotations

import base64

import orjson
import pytest

from churnguard.core.validation import Rejected
from schemas.events import (
    MAX_PROPERTIES_BYTES,
    MAX_PROPERTY_INT,
    MODEL_BY_TYPE,
    TIME_ZONES,
    Custom,
    Profile,
)
from streams.codecs import REDACTED, encode_dead_letter, minimise_value
from streams.settings import TopicNames
from tests.unit.parsing import parse, reject_invalid

PER_TYPE = ["purchase", "login", "ticket", "profile", "action_feedback"]


@pytest.fixture
def custom(record_factory):
    """A custom event dict (combined-topic shape); keywords override fields as in
    record_factory (`...` removes one)."""

    def make(**overrides):
        overrides.setdefault("name", "order_shipped")
        return record_factory("custom", **overrides)

    return make


@pytest.fixture
def custom_raw(custom):
    def make(**overrides):
        return orjson.dumps(custom(**overrides))

    return make


def with_raw_properties(record: dict, properties: bytes) -> bytes:
    """The record with `properties` spliced in as raw JSON text (NaN, 1e400, 10**30 are
    what orjson does not write)."""
    record = {k: v for k, v in record.items() if k != "properties"}
    return orjson.dumps(record)[:-1] + b',"properties":' + properties + b"}"


def properties_of_size(size: int, char: str = "x") -> dict[str, str]:
    """Flat properties whose compact JSON is exactly `size` bytes (strings of at most 1,000
    characters, `char` may be multi-byte in UTF-8)."""
    width = len(char.encode())
    props: dict[str, str] = {}
    n = 0
    while True:
        key = f"k{n}"
        trial = {**props, key: ""}
        room = size - len(orjson.dumps(trial))
        assert room >= 0, "size not reachable"
        if room <= 1000 * width:
            fill = char * (room // width) + "x" * (room % width)
            props[key] = fill
            break
        props[key] = char * 1000
        n += 1
    assert len(orjson.dumps(props)) == size
    return props


# --- valid custom events ---------------------------------------------------------------------

def test_custom_without_properties(custom_raw):
    event = parse(custom_raw())
    assert isinstance(event, Custom)
    assert (event.type, event.name, event.properties) == ("custom", "order_shipped", {})
    assert event.customer_id == "c1"


def test_null_properties_are_absent(custom_raw):
    assert parse(custom_raw(properties=None)).properties == {}


def test_properties_are_returned_intact(custom_raw):
    properties = {
        "carrier": "dhl", "parcels": 2, "weight_kg": 1.25, "express": True, "gift": False,
        "zero": 0, "negative": -7, "tiny": 1e-300, "large": 1e300, "empty": "",
        "padded": "  kept as sent  ",
    }
    event = parse(custom_raw(properties=properties))
    assert isinstance(event, Custom)
    assert event.properties == properties
    # Types survive (True == 1 and 2 == 2.0 in Python: compare them too).
    assert {k: type(v) for k, v in event.properties.items()} == {
        k: type(v) for k, v in properties.items()
    }
    assert list(event.properties) == list(properties)


def test_integral_floats_stay_floats(custom):
    event = parse(with_raw_properties(custom(), b'{"a":1.0,"b":2}'))
    assert event.properties == {"a": 1.0, "b": 2}
    assert (type(event.properties["a"]), type(event.properties["b"])) == (float, int)


def test_unicode_values(custom_raw, custom):
    properties = {"city": "Zürich", "greeting": "こんにちは", "snow": "☃", "emoji": "🚚📦"}
    assert parse(custom_raw(properties=properties)).properties == properties
    # \u-escapes in the record read as the characters.
    escaped = with_raw_properties(custom(), b'{"snow":"\\u2603","truck":"\\ud83d\\ude9a"}')
    assert parse(escaped).properties == {"snow": "☃", "truck": "🚚"}


@pytest.mark.parametrize(
    "name", ["order_shipped", "a", "app.review_left", "x9_.y", "checkout.step.2", "a" * 64]
)
def test_valid_names(custom_raw, name):
    assert parse(custom_raw(name=name)).name == name


@pytest.mark.parametrize("key", ["a", "plan", "plan_2", "a" * 64, "x_"])
def test_valid_property_keys(custom_raw, key):
    assert parse(custom_raw(properties={key: 1})).properties == {key: 1}


def test_a_string_of_1000_characters(custom_raw):
    assert parse(custom_raw(properties={"s": "é" * 1000})).properties["s"] == "é" * 1000


@pytest.mark.parametrize("value", [MAX_PROPERTY_INT, -MAX_PROPERTY_INT, 2**53 - 1])
def test_integers_up_to_2_53(custom_raw, value):
    assert MAX_PROPERTY_INT == 2**53
    assert parse(custom_raw(properties={"n": value})).properties == {"n": value}


@pytest.mark.parametrize("char", ["x", "é", "☃", "🚚"])
def test_properties_of_exactly_4096_bytes(custom_raw, char):
    properties = properties_of_size(MAX_PROPERTIES_BYTES, char)
    event = parse(custom_raw(properties=properties))
    assert isinstance(event, Custom)
    assert event.properties == properties


def test_the_size_is_measured_on_compact_json_not_the_record(custom):
    """Whitespace and \\u-escapes in the record do not count: the properties as compact JSON
    (UTF-8, not escaped) do."""
    properties = properties_of_size(MAX_PROPERTIES_BYTES, "☃")
    spaced = orjson.dumps(properties, option=orjson.OPT_INDENT_2).replace(
        "☃".encode(), b"\\u2603"
    )
    assert len(spaced) > MAX_PROPERTIES_BYTES * 3 // 2
    event = parse(with_raw_properties(custom(), spaced))
    assert isinstance(event, Custom)
    assert event.properties == properties


def test_custom_on_the_combined_topic_is_a_custom_model(raw_factory):
    raw = raw_factory("custom", name="app.review_left", properties={"stars": 5})
    event = parse(raw, "")
    assert type(event) is Custom
    assert event.model_dump(include={"type", "name", "properties"}) == {
        "type": "custom", "name": "app.review_left", "properties": {"stars": 5}
    }


def test_custom_is_a_model_of_the_combined_topic_only():
    assert MODEL_BY_TYPE["custom"] is Custom
    inputs = TopicNames().inputs()
    assert "custom" not in inputs.values()
    assert inputs["churnguard.events"] == ""
    assert set(inputs.values()) == {"", *PER_TYPE}


def test_event_factory_builds_custom_events(event_factory):
    event = event_factory("custom", name="order_shipped", properties={"n": 1})
    assert isinstance(event, Custom)
    assert event.properties == {"n": 1}


def test_unknown_fields_of_a_custom_event_are_ignored(custom_raw):
    event = parse(custom_raw(extra={"deep": [1, {"x": None}]}))
    assert isinstance(event, Custom)
    assert not hasattr(event, "extra")


# --- rejected custom events ------------------------------------------------------------------

@pytest.mark.parametrize("event_type", PER_TYPE)
def test_custom_on_a_per_type_topic_is_a_wrong_type(custom_raw, event_type):
    rejected = reject_invalid(custom_raw(), event_type)
    assert "type" in rejected.reason
    assert f"'{event_type}'" in rejected.reason


@pytest.mark.parametrize("type_value", ["Custom", "CUSTOM", "customs", " custom_"])
def test_other_spellings_of_custom_are_unknown_types(custom_raw, type_value):
    rejected = parse(custom_raw(type=type_value))
    assert isinstance(rejected, Rejected)
    assert rejected.kind == "unknown_type"


def test_the_unknown_type_reason_lists_custom(custom_raw):
    rejected = parse(custom_raw(type="refund"))
    assert rejected.kind == "unknown_type"
    assert rejected.reason == (
        "field 'type' must be one of purchase, login, ticket, profile, custom, "
        "action_feedback, erasure"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Order_shipped", "pattern"),
        ("ORDER", "pattern"),
        ("orderShipped", "pattern"),
        ("1order", "pattern"),
        ("9", "pattern"),
        ("_order", "pattern"),
        (".order", "pattern"),
        ("order-shipped", "pattern"),
        ("order shipped", "pattern"),
        ("ordér", "pattern"),
        ("order/shipped", "pattern"),
        ("", "pattern"),
        ("   ", "pattern"),
        ("a" * 65, "at most 64 characters"),
        (5, "valid string"),
        (None, "valid string"),
        (..., "required"),
    ],
)
def test_invalid_names(custom_raw, name, expected):
    rejected = reject_invalid(custom_raw(name=name))
    assert rejected.reason.startswith("custom.name: ")
    assert expected in rejected.reason
    if expected == "pattern":
        assert "^[a-z][a-z0-9_.]*$" in rejected.reason


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Plan", "must match ^[a-z][a-z0-9_]*$"),
        ("plan.type", "must match"),        # a dot is for names, not keys
        ("plan-type", "must match"),
        ("1plan", "must match"),
        ("_plan", "must match"),
        ("plän", "must match"),
        ("", "must match"),
        ("plan ", "must match"),             # keys are not stripped
        ("jane@example.com", "must match"),
        ("a" * 65, "at most 64 characters"),
    ],
)
def test_invalid_property_keys(custom_raw, key, expected):
    rejected = reject_invalid(custom_raw(properties={"ok": 1, key: 2}))
    assert rejected.reason.startswith("custom.properties: key #2 ")
    assert expected in rejected.reason
    if key not in {"", "a" * 65}:
        assert key not in rejected.reason  # a bad key may be anything: not quoted


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({"b": 1}, "not an object"),
        ({}, "not an object"),
        ([1, 2], "not a list"),
        ([], "not a list"),
        ([{"deep": {"x": 1}}], "not a list"),
        (None, "not null"),
    ],
)
def test_properties_are_flat_and_never_null(custom_raw, value, shown):
    rejected = reject_invalid(custom_raw(properties={"ok": "yes", "bad": value}))
    assert rejected.reason == (
        f"custom.properties.bad: must be a string, a number or a boolean, {shown} "
        "(properties are flat)"
    )


@pytest.mark.parametrize("properties", [[], ["a"], "a=1", 5, True])
def test_properties_must_be_an_object(custom_raw, properties):
    rejected = reject_invalid(custom_raw(properties=properties))
    assert rejected.reason == "custom.properties: Input should be an object"


def test_a_string_over_1000_characters(custom_raw):
    rejected = reject_invalid(custom_raw(properties={"s": "x" * 1001}))
    assert rejected.reason == "custom.properties.s: string must have at most 1,000 characters"


@pytest.mark.parametrize(
    "number", [b"9007199254740993", b"-9007199254740993", b"18446744073709551616",
               b"1000000000000000000000000000000", b"-1" + b"0" * 400]
)
def test_integers_beyond_2_53(custom, number):
    rejected = reject_invalid(with_raw_properties(custom(), b'{"n":' + number + b"}"))
    assert rejected.reason.startswith("custom.properties.n: integer must be within ±2^53")
    assert "9,007,199,254,740,992" in rejected.reason


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e309"])
def test_non_finite_numbers(custom, number):
    rejected = reject_invalid(with_raw_properties(custom(), b'{"x":' + number + b"}"))
    assert rejected.reason == (
        "custom.properties.x: number must be finite (no NaN, Infinity or overflow)"
    )


@pytest.mark.parametrize("char", ["x", "é", "☃", "🚚"])
def test_properties_of_4097_bytes(custom_raw, char):
    properties = properties_of_size(MAX_PROPERTIES_BYTES + 1, char)
    rejected = reject_invalid(custom_raw(properties=properties))
    assert rejected.reason == (
        "custom.properties: 4,097 bytes as compact JSON, over the limit of 4,096 bytes (4 KiB)"
    )


def test_the_size_reason_gives_the_size(custom_raw):
    properties = {f"k{n}": "x" * 1000 for n in range(5)}
    size = len(orjson.dumps(properties))
    rejected = reject_invalid(custom_raw(properties=properties))
    assert f"{size:,} bytes" in rejected.reason
    assert "4,096" in rejected.reason


def test_several_bad_values_are_listed(custom_raw):
    rejected = reject_invalid(custom_raw(properties={"a": None, "b": [1], "c": "ok"}))
    assert "custom.properties.a" in rejected.reason
    assert "custom.properties.b" in rejected.reason
    assert "custom.properties.c" not in rejected.reason


def test_a_reason_quotes_no_property_value(custom_raw):
    secret = "Jane Doe, jane@example.com"
    for properties in ({"note": [secret]}, {"note": {"who": secret}}, {"note": secret * 40}):
        assert secret not in reject_invalid(custom_raw(properties=properties)).reason


@pytest.mark.parametrize("field", ["event_id", "customer_id", "occurred_at"])
def test_the_common_fields_are_required(custom_raw, field):
    rejected = reject_invalid(custom_raw(**{field: ...}))
    assert f"custom.{field}: Field required" in rejected.reason


# --- dead letters of custom records ----------------------------------------------------------

def test_a_dead_letter_redacts_custom_properties_and_name(custom):
    record = custom(name="order_shipped", properties={
        "carrier": "dhl", "parcels": 2, "weight_kg": 1.5, "express": True, "bad": None,
        "nested": {"who": "Jane Doe"},
    })
    kept, redacted = minimise_value(orjson.dumps(record))
    assert redacted
    value = orjson.loads(kept)
    assert value["properties"] == {
        "carrier": REDACTED, "parcels": REDACTED, "weight_kg": REDACTED,
        "express": True, "bad": None,  # booleans and null tell nothing: kept
        "nested": {"who": REDACTED},
    }
    # The key of the custom event's name is the key of a profile's personal `name`.
    assert value["name"] == REDACTED
    assert (value["type"], value["event_id"], value["customer_id"]) == (
        "custom", record["event_id"], "c1"
    )


def test_a_profile_name_stays_redacted(record_factory):
    kept, _ = minimise_value(orjson.dumps(record_factory("profile", name="Jane Doe")))
    assert orjson.loads(kept)["name"] == REDACTED


def test_a_rejected_custom_record_dead_letters_without_its_values(custom_raw):
    raw = custom_raw(properties={"who": "Jane Doe", "deep": {"email": "jane@example.com"}})
    rejected = parse(raw)
    assert isinstance(rejected, Rejected)
    letter = orjson.loads(encode_dead_letter(
        topic="churnguard.events", partition=0, offset=7, key=b"c1", value=raw,
        kind=rejected.kind, reason=rejected.reason, at=0.0,
    ))
    kept = base64.b64decode(letter["value_b64"])
    assert b"Jane" not in kept
    assert b"jane@" not in kept
    assert letter["reason"] == rejected.reason


# --- profile.timezone ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "zone", ["Europe/Paris", "UTC", "America/Argentina/Buenos_Aires", "Asia/Kolkata",
             "Etc/GMT+5", "Pacific/Chatham"]
)
@pytest.mark.parametrize("event_type", ["", "profile"])
def test_profile_timezone(raw_factory, zone, event_type):
    event = parse(raw_factory("profile", timezone=zone), event_type)
    assert isinstance(event, Profile)
    assert event.timezone == zone


def test_profile_timezone_is_optional(raw_factory):
    assert parse(raw_factory("profile")).timezone is None
    assert parse(raw_factory("profile", timezone=None)).timezone is None


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Base",
        "",
        "   ",
        "europe/paris",            # case-sensitive, on every file system
        "Europe",                  # a directory of the tz database: ZoneInfo raises OSError
        "Europe/",
        "x" * 300,                 # too long for a file name: ZoneInfo raises OSError
        "../../etc/passwd",
        "/usr/share/zoneinfo/UTC",
        "zone.tab",                # a file of the tz database that is no zone
        "localtime",               # the host's zone, not the customer's
        "posixrules",
        "+01:00",
        "UTC+1",
        "Europe/Paris\x00",
    ],
)
@pytest.mark.parametrize("event_type", ["", "profile"])
def test_invalid_profile_timezone(raw_factory, zone, event_type):
    rejected = reject_invalid(raw_factory("profile", timezone=zone), event_type)
    assert rejected.reason.endswith(
        "timezone: must be an IANA time zone name, e.g. Europe/Paris or UTC"
    )


@pytest.mark.parametrize("zone", [5, True, ["Europe/Paris"], {"name": "UTC"}])
def test_a_timezone_must_be_a_string(raw_factory, zone):
    rejected = reject_invalid(raw_factory("profile", timezone=zone))
    assert "timezone" in rejected.reason
    assert "valid string" in rejected.reason


def test_time_zones_are_the_installed_iana_names():
    assert {"UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"} <= TIME_ZONES
    assert len(TIME_ZONES) > 300
    assert "localtime" not in TIME_ZONES
