"""Input events (contract v1). Each per-type topic carries one model; the combined topic
`churnguard.events` carries the same models tagged with `type`."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

# Limits of one event (docs/contract.md). A record value longer than MAX_EVENT_BYTES is
# rejected before it is parsed (churnguard.core.validation, kind `too_large`).
MAX_EVENT_BYTES = 64 * 1024
MAX_TAGS = 50
MAX_ITEMS = 100

# No control characters: ids are Kafka keys and RocksDB keys (churnguard.due_index uses a
# NUL-prefixed key space in the same table).
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
TicketPriority = Literal["low", "normal", "high", "urgent"]
Tier = Literal["standard", "vip"]


# RFC 3339 `date-time` (section 5.6): a 'T' separator, seconds, an offset or Z. Checked on the
# text because pydantic also takes epoch numbers, a space separator, no seconds, "+0200".
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _rfc3339_text(value: object) -> object:
    if isinstance(value, datetime):  # built in Python, not read from a record
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 timestamp string with seconds and a UTC offset, "
            "e.g. 2026-11-23T09:00:00Z or 2026-11-23T10:00:00.250+01:00"
        )
    return value


def _full_date_text(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _FULL_DATE.fullmatch(value):
        raise ValueError("must be a date string YYYY-MM-DD, e.g. 1990-04-17")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]

# Loaded once: the ISO 4217 codes pycountry maintains.
CURRENCIES = frozenset(currency.alpha_3 for currency in pycountry.currencies)


def _iso_4217(value: str) -> str:
    if value not in CURRENCIES:
        raise ValueError("must be an ISO 4217 currency code, e.g. EUR or USD")
    return value


Currency = Annotated[
    str, StringConstraints(min_length=3, max_length=3, to_upper=True), AfterValidator(_iso_4217)
]


def _plausible(value: date) -> date:
    # Anniversaries are computed for the coming years: 9999-12-31 would overflow them.
    if not 1900 <= value.year <= 2200:
        raise ValueError("date must be between 1900-01-01 and 2200-12-31")
    return value


PlausibleDate = Annotated[date, BeforeValidator(_full_date_text), AfterValidator(_plausible)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class _Event(BaseModel):
    # Unknown fields are ignored so producers can add fields without breaking consumers.
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    event_id: Id
    customer_id: Id
    occurred_at: Timestamp


class Purchase(_Event):
    type: Literal["purchase"] = "purchase"
    order_id: Id
    # At most a billion per order: lifetime spend stays exact in 64-bit ten-thousandths.
    amount: Annotated[
        Decimal, Field(gt=0, le=1_000_000_000, max_digits=18, decimal_places=4, allow_inf_nan=False)
    ]
    currency: Currency
    items: Annotated[list[dict[str, object]], Field(max_length=MAX_ITEMS)] | None = None


class Login(_Event):
    type: Literal["login"] = "login"
    channel: str | None = None


class Ticket(_Event):
    type: Literal["ticket"] = "ticket"
    ticket_id: Id
    status: Literal["opened", "closed"]
    priority: TicketPriority | None = None
    satisfaction: Annotated[int, Field(ge=1, le=5)] | None = None


class Profile(_Event):
    """Partial update: absent fields leave the stored value unchanged. name/email/phone are
    validated but never stored or logged (data minimisation): churnguard only keeps whether
    a contact channel exists."""

    type: Literal["profile"] = "profile"
    birthday: PlausibleDate | None = None
    signup_date: PlausibleDate | None = None
    tier: Tier | None = None
    account_manager: Id | None = None
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None


# Never stored, copied into rule contexts or actions, or logged.
PERSONAL_FIELDS = frozenset({"name", "email", "phone"})

Event = Purchase | Login | Ticket | Profile

# The combined topic: one ordered stream per customer, discriminated by `type`.
TaggedEvent = Annotated[Event, Field(discriminator="type")]

MODEL_BY_TYPE: dict[str, type[_Event]] = {
    "purchase": Purchase,
    "login": Login,
    "ticket": Ticket,
    "profile": Profile,
}
