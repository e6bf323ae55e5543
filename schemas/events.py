"""Input events (contract v1). Each per-type topic carries one model; the combined topic
`churnguard.events` carries the same models tagged with `type`, and `custom` events, which
have no per-type topic. `action_feedback` has its own topic and the combined one."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from zoneinfo import available_timezones

import orjson
import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
)

# Limits of one event (docs/contract.md). A record value longer than MAX_EVENT_BYTES is
# rejected before it is parsed (churnguard.core.validation, kind `too_large`).
MAX_EVENT_BYTES = 64 * 1024
MAX_TAGS = 50
MAX_ITEMS = 100
# Custom events: a name, and flat properties of at most MAX_PROPERTIES_BYTES as compact JSON.
MAX_CUSTOM_NAME = 64
MAX_PROPERTY_KEY = 64
MAX_PROPERTY_STRING = 1_000
MAX_PROPERTIES_BYTES = 4 * 1024
MAX_CATEGORY = 40
MAX_REGION = 64
MAX_COMMENT = 2_000
# Integers every JSON reader reads exactly: beyond 2**53 a double (JavaScript, jq, many
# JSON libraries) rounds them, so consumers of an action carrying one would disagree.
MAX_PROPERTY_INT = 2**53

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


def _number_or_text(value: object) -> object:
    # pydantic reads a 3-item list as a Decimal tuple (sign, digits, exponent) and raises a
    # plain ValueError past its own errors for a bad one: a record would crash validation.
    if isinstance(value, list | tuple | dict):
        raise ValueError("must be a number or a numeric string, e.g. 129.90 or \"129.90\"")
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

# Loaded once: the IANA names of the tz database installed (no per-event file lookups).
# Not churnguard.core.clock.ZoneName: ZoneInfo() raises OSError on some names ("Europe" is
# a directory, a long name is too long for the file system), which would escape validation,
# and its message quotes the value. "localtime" is the host's zone, not the customer's.
TIME_ZONES = frozenset(available_timezones()) - {"localtime"}


def _iana_zone(value: str) -> str:
    if value not in TIME_ZONES:
        raise ValueError("must be an IANA time zone name, e.g. Europe/Paris or UTC")
    return value


TimeZone = Annotated[str, AfterValidator(_iana_zone)]

CustomName = Annotated[
    str, StringConstraints(max_length=MAX_CUSTOM_NAME, pattern=r"^[a-z][a-z0-9_.]*$")
]
_PROPERTY_KEY = re.compile(r"[a-z][a-z0-9_]*")
PropertyValue = str | bool | int | float


def _property_value(value: object) -> PropertyValue:
    # Kept as sent: no whitespace stripping (the models' str_strip_whitespace is for ids).
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_PROPERTY_INT:
            raise ValueError(
                "integer must be within ±2^53 (9,007,199,254,740,992) so that every JSON "
                "reader reads it exactly; send a string"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("number must be finite (no NaN, Infinity or overflow)")
        return value
    if isinstance(value, str):
        if len(value) > MAX_PROPERTY_STRING:
            raise ValueError(f"string must have at most {MAX_PROPERTY_STRING:,} characters")
        return value
    kind = {type(None): "null", dict: "an object", list: "a list"}.get(
        type(value), type(value).__name__
    )
    raise ValueError(f"must be a string, a number or a boolean, not {kind} (properties are flat)")


def _property_keys(value: object) -> object:
    if value is None:  # like the other optional fields: null is absent
        return {}
    if isinstance(value, dict):  # anything else: the dict schema says what is expected
        # A bad key is not quoted (it may be anything: reasons quote no values), it is
        # counted from 1 in the record's order, the order a dead letter keeps.
        for position, key in enumerate(value, 1):
            if not isinstance(key, str):  # built in Python: the dict schema rejects it
                continue
            if len(key) > MAX_PROPERTY_KEY:
                raise ValueError(f"key #{position} must have at most {MAX_PROPERTY_KEY} characters")
            if not _PROPERTY_KEY.fullmatch(key):
                raise ValueError(f"key #{position} must match ^[a-z][a-z0-9_]*$")
    return value


def _properties_size(value: dict[str, PropertyValue]) -> dict[str, PropertyValue]:
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:  # a str with lone surrogates, built in Python
        raise ValueError("must be valid Unicode text") from exc
    if size > MAX_PROPERTIES_BYTES:
        raise ValueError(
            f"{size:,} bytes as compact JSON, over the limit of {MAX_PROPERTIES_BYTES:,} "
            "bytes (4 KiB)"
        )
    return value


Properties = Annotated[
    dict[str, Annotated[PropertyValue, PlainValidator(_property_value)]],
    BeforeValidator(_property_keys),
    AfterValidator(_properties_size),
]


class _Event(BaseModel):
    # Unknown fields are ignored so producers can add fields without breaking consumers.
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    event_id: Id
    customer_id: Id
    occurred_at: Timestamp

    if TYPE_CHECKING:
        @property
        def at(self) -> float:
            """occurred_at in epoch seconds (validation, ordering and the core read it)."""

    def model_post_init(self, context: Any, /) -> None:
        # Set once validated, like a field (pydantic keeps fields in __dict__): a
        # cached_property took a lock and a Python call on its first read, ~1 µs per event.
        self.__dict__["at"] = self.occurred_at.timestamp()

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> Self:
        # A copy is not validated again: `at` follows an occurred_at it was given.
        copied = super().model_copy(update=update, deep=deep)
        copied.model_post_init(None)
        return copied


class Purchase(_Event):
    type: Literal["purchase"] = "purchase"
    order_id: Id
    # At most a billion per order: lifetime spend stays exact in 64-bit ten-thousandths.
    amount: Annotated[
        Decimal, BeforeValidator(_number_or_text),
        Field(gt=0, le=1_000_000_000, max_digits=18, decimal_places=4, allow_inf_nan=False),
    ]
    currency: Currency
    items: Annotated[list[dict[str, object]], Field(max_length=MAX_ITEMS)] | None = None
    # A coupon code churnguard issued (a coupon action's payload.code): its redemption.
    coupon_code: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class Login(_Event):
    type: Literal["login"] = "login"
    channel: str | None = None


class Ticket(_Event):
    type: Literal["ticket"] = "ticket"
    ticket_id: Id
    status: Literal["opened", "closed"]
    priority: TicketPriority | None = None
    satisfaction: Annotated[int, Field(ge=1, le=5)] | None = None
    # What the ticket is about (billing, delivery, quality, …): the feedback's breakdown.
    category: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CATEGORY)] | None = None
    # The customer's own words, on any status: analysed into term counts, never stored
    # whole, logged or copied to an output topic (it may hold personal data).
    comment: Annotated[str, StringConstraints(max_length=MAX_COMMENT)] | None = None


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
    # The customer's IANA time zone (additive in contract v1), for quiet hours.
    timezone: TimeZone | None = None
    # A free business region (KPI drill-down), e.g. "north" or "FR-IDF".
    region: Annotated[str, StringConstraints(min_length=1, max_length=MAX_REGION)] | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None


class Custom(_Event):
    """An upstream app's own event (combined topic only): rules trigger on `name` and read
    `properties`. Properties are business data: producers must not put personal data in
    them. `name` is the event's name, not a person's, but it has the key of a profile's
    `name`: code that filters by key (PERSONAL_FIELDS, the DLQ's kept fields) treats both
    alike."""

    type: Literal["custom"] = "custom"
    name: CustomName
    properties: Properties = Field(default_factory=dict)


FeedbackStatus = Literal["delivered", "opened", "clicked", "completed", "failed"]
FEEDBACK_STATUSES: tuple[FeedbackStatus, ...] = (
    "delivered", "opened", "clicked", "completed", "failed")


class ActionFeedback(_Event):
    """What the notification service or the CRM reports back about an action churnguard
    emitted (delivered, a message opened, a task completed). `note` is free text: accepted,
    never stored, logged or copied anywhere."""

    type: Literal["action_feedback"] = "action_feedback"
    action_id: Id
    status: FeedbackStatus
    note: Annotated[str, StringConstraints(max_length=MAX_COMMENT)] | None = None


class Erasure(_Event):
    """Forget this customer (`churnguard forget`, or an admin's POST /customers/{id}/forget;
    combined topic only): the owning worker deletes the customer's state, 360 history, open
    episodes and timers, and a later event of the id starts a fresh customer. Why and who
    are on the audit trail, not here."""

    type: Literal["erasure"] = "erasure"


# Never stored, copied into rule contexts or actions, or logged: contact data, and free
# text a person wrote (ticket comments, feedback notes).
PERSONAL_FIELDS = frozenset({"name", "email", "phone", "comment", "note"})

Event = Purchase | Login | Ticket | Profile | Custom | ActionFeedback | Erasure

# The combined topic: one ordered stream per customer, discriminated by `type`.
TaggedEvent = Annotated[Event, Field(discriminator="type")]

# Every type the combined topic carries. The per-type topics (streams.settings.TopicNames
# .inputs) carry purchase, login, ticket, profile and action_feedback; `custom` has none.
MODEL_BY_TYPE: dict[str, type[_Event]] = {
    "purchase": Purchase,
    "login": Login,
    "ticket": Ticket,
    "profile": Profile,
    "custom": Custom,
    "action_feedback": ActionFeedback,
    "erasure": Erasure,
}
