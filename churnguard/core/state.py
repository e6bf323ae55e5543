"""Per-customer state: everything the score, the segment and the rules need, kept small
(buckets are pruned to their windows, id lists are bounded) because it is read and written
once per batch per customer."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import orjson

# Windows the buckets must answer: purchases in the last 90 days, logins in the last 30.
PURCHASE_WINDOW_DAYS = 90
LOGIN_WINDOW_DAYS = 30
CLOSED_TICKETS_KEPT = 32
# Open tickets tracked per customer (SLA timers, the service score): a new one beyond this
# evicts the oldest open one, so state size and per-event cost stay bounded.
MAX_OPEN_TICKETS = 100
# Spend is summed in ten-thousandths so thresholds are crossed exactly (no float drift).
SPEND_SCALE = 10_000


# Actions remembered per customer (feedback and coupon redemptions are matched to them,
# the customer 360 shows them): the oldest is forgotten first.
MAX_LOGGED_ACTIONS = 50
# Score changes remembered per customer (the customer 360's trend): the oldest is forgotten
# first. Stored as [epoch seconds, score] pairs, about 20 bytes each.
MAX_SCORE_TREND = 30


@dataclass(slots=True)
class OpenTicket:
    opened_at: float
    priority: str
    category: str = ""  # the opening event's (feedback figures per category)


class LoggedAction(NamedTuple):
    """An action sent, with what KPIs attribute to it (core/outcomes.py). A tuple: stored as
    a JSON list, a tenth of a dict's size."""

    action_id: str
    type: str
    rule_id: str
    at: float
    # The notification's channel, the task's assignee, the coupon's code; "" otherwise.
    target: str
    # The customer's KPI dimensions when it was sent.
    tier: str
    segment: str
    account_manager: str
    region: str
    # Feedback statuses seen and redemption (bits: core/outcomes.FLAGS).
    flags: int = 0
    # Coupons: when the code expires, its value and kind ("percent" or "amount").
    expires_at: float | None = None
    value: float = 0.0
    kind: str = ""
    # The rule's version when it fired and the events that caused it (none for a timer).
    # Last, with defaults: entries stored before they existed still load positionally.
    rule_version: int = 0
    caused_by: tuple[str, ...] = ()


class Episode(NamedTuple):
    """A win-back episode still in its recovery window (core/outcomes.py)."""

    rule_id: str
    arm: str  # "treated", or "held_out" (the rule's holdout or the global control group)
    started_at: float
    ends_at: float  # started_at + the pack's recovery window
    threshold: float  # health score at or above which the customer has recovered
    tier: str
    segment: str
    account_manager: str
    region: str
    action_ids: list[str]
    recovered_at: float | None = None
    purchased: bool = False


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    # Event-time clock of this customer: the latest occurred_at (or timer time) applied.
    clock: float = 0.0
    first_purchase_at: float | None = None
    last_purchase_at: float | None = None
    # Latest login or purchase: the inactivity clock.
    last_active_at: float | None = None
    order_count: int = 0
    spend_e4: int = 0
    purchase_days: dict[int, int] = field(default_factory=dict)
    login_days: dict[int, int] = field(default_factory=dict)
    open_tickets: dict[str, OpenTicket] = field(default_factory=dict)
    closed_tickets: list[str] = field(default_factory=list)
    # (occurred_at, 1..5) in event-time order, the newest last.
    ratings: list[tuple[float, int]] = field(default_factory=list)
    birthday: str | None = None
    signup_date: str | None = None
    tier: str = "standard"
    account_manager: str | None = None
    tags: list[str] = field(default_factory=list)
    has_email: bool = False
    has_phone: bool = False
    # IANA zone from the profile: quiet hours follow it (else the pack's zone).
    timezone: str | None = None
    region: str | None = None
    score: float | None = None
    components: tuple[float, float, float] | None = None
    segment: str | None = None
    rfm: tuple[int, int, int] | None = None
    # (whole epoch seconds, score) of the latest score changes, the newest last (at most
    # MAX_SCORE_TREND): a segment change alone adds nothing.
    score_trend: list[tuple[int, float]] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    # Timer occurrences already fired (see core/triggers.py): rule or rule:ticket -> mark.
    marks: dict[str, str] = field(default_factory=dict)
    # The earliest time a timer (or the score's decay) is due: the due index's sort key.
    next_due: float | None = None
    # The fingerprint of the pack next_due was computed under (RulePack.fingerprint): a bound
    # kept after an activity event is only sound under the pack that computed it.
    due_pack: int = 0
    armed: list[str] = field(default_factory=list)
    # Guards (core/guards.py), kept only for rules and caps that need them: rule id ->
    # (firings, last firing time); (time, action type, channel) of capped actions sent in the
    # longest cap window; (release time, action record) of actions deferred by quiet hours.
    rule_fires: dict[str, tuple[int, float]] = field(default_factory=dict)
    sent: list[tuple[float, str, str]] = field(default_factory=list)
    deferred: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    # KPIs (core/outcomes.py): the latest actions sent and the open win-back episodes.
    actions_log: list[LoggedAction] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    # Source topic -> last applied offset: a redelivered record changes nothing.
    offsets: dict[str, int] = field(default_factory=dict)
    # The latest occurred_at of any event applied (timers and delivery reports do not move
    # it): data retention removes a customer the pack's retention_days after it
    # (rules.retention_due). None in states stored before it existed: their clock stands in.
    last_event_at: float | None = None
    # The live worker's wall clock when it last applied an event (None in replay): its tick
    # removes no customer within the backfill horizon of that, so that history still being
    # imported or caught up on is not removed before its later events are applied.
    last_noticed_at: float | None = None
    # Not state (no argument, not compared, not stored): the actions log as the codec last
    # read or wrote it, its entries and their stored bytes, so that to_bytes does not encode
    # an unchanged log again (about half the writes: a batch that sent the customer nothing).
    _stored_log: tuple[tuple[LoggedAction, ...], bytes] | None = field(
        default=None, init=False, repr=False, compare=False)
    # Not state either: next_due is exact (processor.exact_due) under due_pack, not a bound,
    # so advance need not recompute it before acting. A state just read does not know.
    _due_exact: bool = field(default=False, init=False, repr=False, compare=False)

    # Written out, as core/processor.Outcome's: compiled, one per state decoded (the states
    # the worker does not keep decoded: most of them, with many customers).
    def __init__(
            self, customer_id: str, clock: float = 0.0,
            first_purchase_at: float | None = None, last_purchase_at: float | None = None,
            last_active_at: float | None = None, order_count: int = 0, spend_e4: int = 0,
            purchase_days: dict[int, int] | None = None,
            login_days: dict[int, int] | None = None,
            open_tickets: dict[str, OpenTicket] | None = None,
            closed_tickets: list[str] | None = None,
            ratings: list[tuple[float, int]] | None = None, birthday: str | None = None,
            signup_date: str | None = None, tier: str = "standard",
            account_manager: str | None = None, tags: list[str] | None = None,
            has_email: bool = False, has_phone: bool = False, timezone: str | None = None,
            region: str | None = None, score: float | None = None,
            components: tuple[float, float, float] | None = None, segment: str | None = None,
            rfm: tuple[int, int, int] | None = None,
            score_trend: list[tuple[int, float]] | None = None,
            fired: list[str] | None = None, marks: dict[str, str] | None = None,
            next_due: float | None = None, due_pack: int = 0, armed: list[str] | None = None,
            rule_fires: dict[str, tuple[int, float]] | None = None,
            sent: list[tuple[float, str, str]] | None = None,
            deferred: list[tuple[float, dict[str, Any]]] | None = None,
            actions_log: list[LoggedAction] | None = None,
            episodes: list[Episode] | None = None, seen: list[str] | None = None,
            offsets: dict[str, int] | None = None, last_event_at: float | None = None,
            last_noticed_at: float | None = None,
    ) -> None:
        self.customer_id = customer_id
        self.clock = clock
        self.first_purchase_at = first_purchase_at
        self.last_purchase_at = last_purchase_at
        self.last_active_at = last_active_at
        self.order_count = order_count
        self.spend_e4 = spend_e4
        self.purchase_days = {} if purchase_days is None else purchase_days
        self.login_days = {} if login_days is None else login_days
        self.open_tickets = {} if open_tickets is None else open_tickets
        self.closed_tickets = [] if closed_tickets is None else closed_tickets
        self.ratings = [] if ratings is None else ratings
        self.birthday = birthday
        self.signup_date = signup_date
        self.tier = tier
        self.account_manager = account_manager
        self.tags = [] if tags is None else tags
        self.has_email = has_email
        self.has_phone = has_phone
        self.timezone = timezone
        self.region = region
        self.score = score
        self.components = components
        self.segment = segment
        self.rfm = rfm
        self.score_trend = [] if score_trend is None else score_trend
        self.fired = [] if fired is None else fired
        self.marks = {} if marks is None else marks
        self.next_due = next_due
        self.due_pack = due_pack
        self.armed = [] if armed is None else armed
        self.rule_fires = {} if rule_fires is None else rule_fires
        self.sent = [] if sent is None else sent
        self.deferred = [] if deferred is None else deferred
        self.actions_log = [] if actions_log is None else actions_log
        self.episodes = [] if episodes is None else episodes
        self.seen = [] if seen is None else seen
        self.offsets = {} if offsets is None else offsets
        self.last_event_at = last_event_at
        self.last_noticed_at = last_noticed_at
        self._stored_log = None
        self._due_exact = False

    @property
    def lifetime_spend(self) -> float:
        return self.spend_e4 / SPEND_SCALE

    def to_bytes(self) -> bytes:
        """The stored form (RocksDB and the changelog): core/state_codec.py."""
        return state_codec.encode(self)

    def to_json_bytes(self) -> bytes:
        """The JSON form every state had before format 1, which workers on older code read
        (their only one; CHURNGUARD_STATE_FORMAT=json during a rolling upgrade). Fields
        added since are left out: such a worker builds its state from every key it finds."""
        data = {name: getattr(self, name) for name in _JSON_FIELDS}
        return orjson.dumps(data, default=_as_json,
                            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CustomerState:
        """A stored state, of either format: binary (format 1) or JSON (older states)."""
        return state_codec.decode(raw)

    @classmethod
    def from_json(cls, raw: bytes) -> CustomerState:
        """A state in the JSON form (to_json_bytes)."""
        data: dict[str, Any] = orjson.loads(raw)
        data["purchase_days"] = {int(k): v for k, v in data["purchase_days"].items()}
        data["login_days"] = {int(k): v for k, v in data["login_days"].items()}
        data["open_tickets"] = {k: OpenTicket(**v) for k, v in data["open_tickets"].items()}
        data["ratings"] = [tuple(r) for r in data["ratings"]]
        if data["components"] is not None:
            data["components"] = tuple(data["components"])
        if data["rfm"] is not None:
            data["rfm"] = tuple(data["rfm"])
        # Absent from states written before the guards existed: the defaults apply.
        if "rule_fires" in data:
            data["rule_fires"] = {k: tuple(v) for k, v in data["rule_fires"].items()}
            data["sent"] = [tuple(entry) for entry in data["sent"]]
            data["deferred"] = [tuple(entry) for entry in data["deferred"]]
        # Absent from states written before KPIs existed.
        if data.get("actions_log"):
            data["actions_log"] = [_logged_action(entry) for entry in data["actions_log"]]
        if data.get("episodes"):
            data["episodes"] = [Episode(*entry) for entry in data["episodes"]]
        # Absent from states written before the customer 360.
        if data.get("score_trend"):
            data["score_trend"] = [tuple(entry) for entry in data["score_trend"]]
        return cls(**data)


# The fields of the JSON form: not those added after format 1 (read back as their defaults).
_JSON_FIELDS = tuple(f.name for f in fields(CustomerState)
                     if f.init and f.name not in ("last_event_at", "last_noticed_at"))


def _logged_action(entry: list[Any]) -> LoggedAction:
    # Entries stored before rule_version and caused_by existed have fewer fields: the
    # defaults apply. caused_by is stored as a JSON list: a tuple again, as it was built.
    logged = LoggedAction(*entry)
    if isinstance(logged.caused_by, tuple):
        return logged
    return logged._replace(caused_by=tuple(logged.caused_by))


def _as_json(value: object) -> list[Any] | dict[str, Any]:
    # orjson writes tuples but not their subclasses: the NamedTuples above, as lists. An open
    # ticket, as orjson would write a dataclass: its own way reads the instance's memory,
    # which a compiled class (core/native.py) does not lay out as it expects.
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, OpenTicket):
        return {"opened_at": value.opened_at, "priority": value.priority,
                "category": value.category}
    raise TypeError(f"{type(value).__name__} is not stored in a customer state")


def count_in_window(buckets: dict[int, int], today: int, window_days: int) -> int:
    if not buckets:
        return 0
    first = today - window_days + 1
    if first <= min(buckets) and max(buckets) <= today:
        return sum(buckets.values())  # the usual case (pruned to the window): no filter
    return sum(n for day, n in buckets.items() if first <= day <= today)


def prune(buckets: dict[int, int], today: int, window_days: int) -> None:
    """Drop buckets that fell out of the window (they can never count again)."""
    first = today - window_days + 1
    if not buckets or min(buckets) >= first:
        return
    for day in [d for d in buckets if d < first]:
        del buckets[day]


def remember(items: list[str], item: str, keep: int) -> None:
    items.append(item)
    if len(items) > keep:
        del items[: len(items) - keep]




# The codec needs the classes above (a cycle resolved at call time).
from churnguard.core import state_codec  # noqa: E402
