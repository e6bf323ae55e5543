"""Strict input formats and the bounds of one event (issue 16): RFC 3339 timestamps, dates,
ISO 4217 currencies, tags, items and the size of a record value."""

from __future__ import annotations

import orjson
import pytest

from churnguard.core.validation import Rejected
from schemas.events import CURRENCIES, MAX_EVENT_BYTES, MAX_ITEMS, MAX_TAGS, Purchase
from tests.unit.parsing import parse, reject

# --- timestamps: RFC 3339 only -----------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "2024-03-01T12:00:00Z",
    "2024-03-01t12:00:00z",
    "2024-03-01T13:00:00+01:00",
    "2024-03-01T07:00:00-05:00",
    "2024-03-01T12:00:00.5Z",
    "2024-03-01T12:00:00.123456789Z",
])
def test_rfc3339_timestamps_are_accepted(raw_factory, text):
    assert not isinstance(parse(raw_factory("login", occurred_at=text)), Rejected)


@pytest.mark.parametrize("value", [
    1709294400,                    # epoch seconds: pydantic alone would take it
    1709294400.5,
    "1709294400",
    "2024-03-01 12:00:00Z",        # space separator
    "2024-03-01T12:00Z",           # no seconds
    "2024-03-01T12:00:00+0100",    # offset without a colon
    "2024-03-01T12:00:00",         # no offset
    "2024-03-01",
    "20240301T120000Z",
    " 2024-03-01T12:00:00Z",
    "2024-03-01T12:00:00.1234567890Z",
    True,
    None,
])
@pytest.mark.parametrize("event_type", ["", "login"])
def test_other_timestamps_are_rejected(raw_factory, value, event_type):
    rejected = reject(raw_factory("login", occurred_at=value), event_type)
    assert rejected.kind == "invalid_event"
    assert "occurred_at" in rejected.reason
    if value is not None:
        assert "RFC 3339" in rejected.reason
        assert "Value error" not in rejected.reason


def test_pydantic_alone_accepts_epoch_numbers():
    """Why the text check exists: without it an epoch integer passes as a datetime."""
    from pydantic import AwareDatetime, TypeAdapter

    assert TypeAdapter(AwareDatetime).validate_json(b"1709294400").year == 2024


@pytest.mark.parametrize("field", ["birthday", "signup_date"])
@pytest.mark.parametrize("value", [
    631152000, "631152000", "1990-01-01T00:00:00Z", "1990-1-1", "19900101", "1990/01/01",
])
def test_dates_must_be_yyyy_mm_dd_strings(raw_factory, field, value):
    rejected = reject(raw_factory("profile", **{field: value}))
    assert rejected.kind == "invalid_event"
    assert field in rejected.reason
    assert "YYYY-MM-DD" in rejected.reason


def test_a_date_string_is_accepted(raw_factory):
    event = parse(raw_factory("profile", birthday="1990-04-17", signup_date="2020-02-29"))
    assert event.birthday.isoformat() == "1990-04-17"


def test_models_built_in_python_take_datetime_objects(event_factory):
    event = event_factory("profile", birthday="1990-04-17")
    again = type(event).model_validate(event.model_dump())
    assert again == event


# --- currencies ----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["EUR", "usd", "JPY", "CHF"])
def test_iso_4217_currencies_are_accepted(raw_factory, code):
    assert parse(raw_factory("purchase", currency=code)).currency == code.upper()


@pytest.mark.parametrize("code", ["€€€", "ABC", "EURO", "XYZ", "eu"])
def test_other_currencies_are_rejected(raw_factory, code):
    rejected = reject(raw_factory("purchase", currency=code))
    assert rejected.kind == "invalid_event"
    assert "currency" in rejected.reason


def test_the_currency_list_is_the_maintained_one():
    assert {"EUR", "USD", "GBP", "JPY"} <= CURRENCIES
    assert len(CURRENCIES) > 150
    assert Purchase.model_fields["currency"] is not None


# --- bounds ------------------------------------------------------------------------------------

def test_at_most_50_tags(raw_factory):
    tags = [f"tag-{n}" for n in range(MAX_TAGS)]
    assert parse(raw_factory("profile", tags=tags)).tags == tags
    rejected = reject(raw_factory("profile", tags=[*tags, "one-more"]))
    assert rejected.kind == "invalid_event"
    assert "tags" in rejected.reason
    assert "at most 50" in rejected.reason


def test_at_most_100_items(raw_factory):
    items = [{"sku": f"s{n}"} for n in range(MAX_ITEMS)]
    assert len(parse(raw_factory("purchase", items=items)).items) == MAX_ITEMS
    rejected = reject(raw_factory("purchase", items=[*items, {"sku": "x"}]))
    assert rejected.kind == "invalid_event"
    assert "items" in rejected.reason
    assert "at most 100" in rejected.reason


@pytest.mark.parametrize("event_type", ["", "login"])
def test_a_value_over_64_kib_is_rejected_before_parsing(raw_factory, event_type):
    small = raw_factory("login")
    pad = MAX_EVENT_BYTES - len(small) - len(',"pad":""')
    fits = orjson.dumps({**orjson.loads(small), "pad": "x" * pad})
    assert len(fits) == MAX_EVENT_BYTES
    assert not isinstance(parse(fits, event_type), Rejected)
    over = fits[:-1] + b"  }"
    rejected = reject(over, event_type)
    assert rejected.kind == "too_large"
    assert "65,538 bytes" in rejected.reason
    assert "65,536" in rejected.reason
    # Not even looked at: an unparseable large value is too large, not malformed.
    assert reject(b"{" * (MAX_EVENT_BYTES + 1)).kind == "too_large"
