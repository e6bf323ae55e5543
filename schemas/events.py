"""Input events (contract v1). Each per-type topic carries one model; the combined topic
`churnguard.events` carries the same models tagged with `type`."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

# No control characters: ids are Kafka keys and RocksDB keys (churnguard.due_index uses a
# NUL-prefixed key space in the same table).
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
TicketPriority = Literal["low", "normal", "high", "urgent"]
Tier = Literal["standard", "vip"]


def _plausible(value: date) -> date:
    # Anniversaries are computed for the coming years: 9999-12-31 would overflow them.
    if not 1900 <= value.year <= 2200:
        raise ValueError("date must be between 1900-01-01 and 2200-12-31")
    return value


PlausibleDate = Annotated[date, AfterValidator(_plausible)]


class _Event(BaseModel):
    # Unknown fields are ignored so producers can add fields without breaking consumers.
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    event_id: Id
    customer_id: Id
    occurred_at: AwareDatetime


class Purchase(_Event):
    type: Literal["purchase"] = "purchase"
    order_id: Id
    # At most a billion per order: lifetime spend stays exact in 64-bit ten-thousandths.
    amount: Annotated[
        Decimal, Field(gt=0, le=1_000_000_000, max_digits=18, decimal_places=4, allow_inf_nan=False)
    ]
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3, to_upper=True)]
    items: list[dict[str, object]] | None = None


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
    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] | None = None
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
