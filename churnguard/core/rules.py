"""The rule engine. Rules are data (pydantic models loadable from JSON): a trigger, optional
conditions, and action templates. The engine evaluates them over the state after an event,
the event's signals and the rule's own trigger memory (armed/fired), so a rule pack can be
swapped without code."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from churnguard.core.clock import DAY, HOUR, ZoneName, day_number, rfc3339
from churnguard.core.scoring import ScoringSettings, crossing_time
from churnguard.core.state import (
    LOGIN_WINDOW_DAYS,
    PURCHASE_WINDOW_DAYS,
    CustomerState,
    count_in_window,
)
from churnguard.core.triggers import (
    AfterTrigger,
    AnniversaryTrigger,
    InactivityTrigger,
    Occurrence,
    TicketOverdueTrigger,
    TimerTrigger,
    begin_anniversaries,
    earliest_due,
    mark,
    pending,
    ticket_mark,
)
from schemas.events import PERSONAL_FIELDS

# Signals an event can raise (see processor.apply_event).
Signal = Literal["purchase", "first_purchase", "login", "profile", "ticket_opened", "ticket_closed"]
Metric = Literal[
    "health_score", "lifetime_spend", "order_count", "logins_30d", "purchases_90d",
    "open_tickets",
]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignalTrigger(_Spec):
    """Fires on every event that raises the signal."""

    on: Signal


class ThresholdTrigger(_Spec):
    """Fires when `metric` enters the condition (`below` or `at_least`) from outside it.
    Armed while the condition is false; `once` never fires a second time."""

    on: Literal["threshold"]
    metric: Metric
    below: float | None = None
    at_least: float | None = None
    once: bool = False
    # A crossing caused by time alone (score decay) that a live worker only notices later
    # than this (a backfill of old events) disarms the rule without firing.
    grace_hours: float = Field(24, gt=0)

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdTrigger:
        if (self.below is None) == (self.at_least is None):
            raise ValueError("a threshold trigger needs exactly one of `below` or `at_least`")
        return self

    def holds(self, value: float) -> bool:
        if self.below is not None:
            return value < self.below
        return self.at_least is not None and value >= self.at_least


Trigger = Annotated[
    SignalTrigger | ThresholdTrigger | AfterTrigger | AnniversaryTrigger | InactivityTrigger
    | TicketOverdueTrigger,
    Field(discriminator="on"),
]
TIMER_TRIGGERS = (AfterTrigger, AnniversaryTrigger, InactivityTrigger, TicketOverdueTrigger)
# Condition paths: "state.tier", "event.priority", "event.satisfaction", … (see _context).
Conditions = dict[str, Any]


class NotificationSpec(_Spec):
    type: Literal["notification"]
    template: str
    # "auto" picks email, then sms, then push, by which contact channels the customer has.
    channel: Literal["auto", "email", "sms", "push"] = "auto"
    # Values starting with "$" are read from the context ("$ticket.expected_resolution_at").
    variables: dict[str, Any] = Field(default_factory=dict)
    where: Conditions = Field(default_factory=dict)


class TaskSpec(_Spec):
    type: Literal["task"]
    # "account_manager" (falls back to the default queue), "supervisor", or a queue name.
    assignee: str
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    due_in_hours: float = Field(24, ge=0)
    title: str
    # Like notification variables: "$"-values are read from the context.
    details: dict[str, Any] = Field(default_factory=dict)
    where: Conditions = Field(default_factory=dict)


class CouponSpec(_Spec):
    type: Literal["coupon"]
    value: float = Field(gt=0)
    kind: Literal["percent", "amount"] = "percent"
    expires_in_days: int = Field(30, ge=1)
    where: Conditions = Field(default_factory=dict)


class ProfileUpdateSpec(_Spec):
    type: Literal["profile_update"]
    set: dict[str, str] = Field(default_factory=dict)
    add_tags: list[str] = Field(default_factory=list)
    where: Conditions = Field(default_factory=dict)


ActionSpec = Annotated[
    NotificationSpec | TaskSpec | CouponSpec | ProfileUpdateSpec, Field(discriminator="type")
]


class Rule(_Spec):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(1, ge=1)
    description: str = ""
    enabled: bool = True
    when: Trigger
    where: Conditions = Field(default_factory=dict)
    where_not: Conditions = Field(default_factory=dict)
    actions: list[ActionSpec] = Field(min_length=1)


class RulePack(_Spec):
    rules: list[Rule]
    # Hours to resolve a ticket by priority: the acknowledgement's promise.
    ticket_sla_hours: dict[str, float]
    default_task_queue: str
    supervisor_queue: str
    # Business time zone of anniversaries ("09:00 on the birthday").
    timezone: ZoneName = "UTC"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class Action:
    action_id: str
    type: str
    customer_id: str
    rule_id: str
    rule_version: int
    created_at: str
    caused_by: tuple[str, ...]
    health_score: float | None
    segment: str | None
    payload: dict[str, Any]

    def to_record(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "type": self.type,
            "customer_id": self.customer_id,
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "created_at": self.created_at,
            "caused_by": list(self.caused_by),
            "health_score": self.health_score,
            "segment": self.segment,
            "payload": self.payload,
        }


def action_id(customer_id: str, rule_id: str, trigger_key: str, index: int) -> str:
    """Same customer, rule, trigger and action position ⇒ same id, so a replay or a
    redelivery produces ids the consumers already de-duplicate."""
    text = f"{customer_id}\x1f{rule_id}\x1f{trigger_key}\x1f{index}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def metric_value(state: CustomerState, metric: Metric) -> float:
    today = day_number(state.clock)
    match metric:
        case "health_score":
            return state.score if state.score is not None else 0.0
        case "lifetime_spend":
            return state.lifetime_spend
        case "order_count":
            return float(state.order_count)
        case "logins_30d":
            return float(count_in_window(state.login_days, today, LOGIN_WINDOW_DAYS))
        case "purchases_90d":
            return float(count_in_window(state.purchase_days, today, PURCHASE_WINDOW_DAYS))
        case "open_tickets":
            return float(len(state.open_tickets))


@dataclass(frozen=True, slots=True)
class Firing:
    """Why a rule is evaluated: what happened, at what event time, caused by which events."""

    signals: frozenset[str]
    now: float
    trigger_key: str
    caused_by: tuple[str, ...]
    # The triggering event; its fields (personal ones excluded) are read only when a rule fires.
    event: BaseModel | None = None
    # When the due occurrences are noticed (a tick's wall time, an event's time): later than
    # `grace_hours` after its due, an occurrence expires instead of firing. Defaults to `now`.
    noticed_at: float | None = None
    # Set by advance(): no event, time alone brought this evaluation.
    time_driven: bool = False
    # Filled by evaluate: timer occurrences that were past their grace and did not fire.
    expired: list[str] = field(default_factory=list)


def evaluate(pack: RulePack, state: CustomerState, firing: Firing) -> list[Action]:
    """Run every enabled rule against the state after the event (or at a due time); update
    the rules' trigger memory and apply profile updates to `state` in place; return the
    actions in pack order. Timer occurrences found past their grace are marked `expired`."""
    actions: list[Action] = []
    for rule in pack.rules:
        if not rule.enabled:
            continue
        for trigger_key, extra in _fired(pack, rule, state, firing):
            context = _context(pack, state, firing) | extra
            if not _matches(rule.where, context) or _any_matches(rule.where_not, context):
                continue
            for index, spec in enumerate(rule.actions):
                if spec.where and not _matches(spec.where, context):
                    continue
                actions.append(
                    _build(pack, rule, index, spec, state, firing, trigger_key, context)
                )
                if isinstance(spec, ProfileUpdateSpec):
                    context = _context(pack, state, firing) | extra
    return actions


def prime(pack: RulePack, state: CustomerState) -> None:
    """Arm the threshold rules whose condition is false for a brand-new customer, so that a
    first event which already crosses a threshold (a first purchase of 12,000) fires them."""
    for rule in pack.rules:
        trigger = rule.when
        if isinstance(trigger, ThresholdTrigger) and not trigger.holds(
            metric_value(state, trigger.metric)
        ):
            state.armed.append(rule.id)


def next_due(pack: RulePack, state: CustomerState, scoring: ScoringSettings) -> float | None:
    """The earliest moment a rule may fire with no new event: a timer occurrence, or the
    score decaying below an armed `health_score below` threshold."""
    dues: list[float] = []
    for rule in pack.rules:
        if not rule.enabled:
            continue
        trigger = rule.when
        if isinstance(trigger, TIMER_TRIGGERS):
            due = earliest_due(rule.id, trigger, state, sla_hours=pack.ticket_sla_hours,
                               tz=pack.tz)
            if due is not None:
                dues.append(due)
        elif (isinstance(trigger, ThresholdTrigger) and trigger.metric == "health_score"
              and trigger.below is not None and rule.id in state.armed):
            crossing = crossing_time(state, trigger.below, state.clock, scoring)
            if crossing is not None:
                dues.append(crossing)
    return min(dues, default=None)


def start_anniversaries(pack: RulePack, state: CustomerState, dates: set[str]) -> None:
    """Profile `dates` changed: their anniversaries fire from the customer's clock on."""
    for rule in pack.rules:
        if isinstance(rule.when, AnniversaryTrigger) and rule.when.date in dates:
            begin_anniversaries(rule.id, rule.when, state, pack.tz)


def forget_ticket_marks(pack: RulePack, state: CustomerState, ticket_id: str) -> None:
    """A closed ticket can no longer be overdue: drop its marks (state stays small)."""
    for rule in pack.rules:
        if isinstance(rule.when, TicketOverdueTrigger):
            state.marks.pop(ticket_mark(rule.id, ticket_id), None)


def _pending(
    pack: RulePack, rule_id: str, trigger: TimerTrigger, state: CustomerState, until: float
) -> list[Occurrence]:
    return pending(rule_id, trigger, state, sla_hours=pack.ticket_sla_hours, tz=pack.tz,
                   until=until)


def _fired(
    pack: RulePack, rule: Rule, state: CustomerState, firing: Firing
) -> list[tuple[str, dict[str, Any]]]:
    """The trigger keys (one per firing) this rule fires with now, and their context."""
    trigger = rule.when
    if isinstance(trigger, SignalTrigger):
        return [(firing.trigger_key, {})] if trigger.on in firing.signals else []
    if isinstance(trigger, ThresholdTrigger):
        if not _crossed(rule.id, trigger, state):
            return []
        if firing.time_driven and _late(firing, firing.now, trigger.grace_hours):
            # Time alone crossed it long before anyone looked (a backfill): disarmed, unfired.
            firing.expired.append(f"{rule.id}:{firing.trigger_key}")
            return []
        return [(firing.trigger_key, {})]
    fired = []
    for occurrence in _pending(pack, rule.id, trigger, state, firing.now):
        if occurrence.due > firing.now:
            continue
        mark(rule.id, trigger, state, occurrence)
        if _late(firing, occurrence.due, trigger.grace_hours):
            firing.expired.append(occurrence.key)  # a backfill found it too late to matter
            continue
        fired.append((occurrence.key, {**occurrence.context, "due_at": rfc3339(occurrence.due)}))
    return fired


def _late(firing: Firing, due: float, grace_hours: float) -> bool:
    noticed = firing.now if firing.noticed_at is None else firing.noticed_at
    return noticed - due > grace_hours * HOUR


def _crossed(rule_id: str, trigger: ThresholdTrigger, state: CustomerState) -> bool:
    if trigger.once and rule_id in state.fired:
        return False
    holds = trigger.holds(metric_value(state, trigger.metric))
    armed = rule_id in state.armed
    if not holds:
        if not armed:
            state.armed.append(rule_id)
        return False
    if not armed:
        return False
    state.armed.remove(rule_id)
    if trigger.once:
        state.fired.append(rule_id)
    return True


def _context(pack: RulePack, state: CustomerState, firing: Firing) -> dict[str, Any]:
    context: dict[str, Any] = {
        "state.tier": state.tier,
        "state.segment": state.segment,
        "state.account_manager": state.account_manager,
        "state.lifetime_spend": state.lifetime_spend,
        "state.order_count": state.order_count,
        "score": state.score,
        "segment": state.segment,
        "now": rfc3339(firing.now),
    }
    fields = {} if firing.event is None else vars(firing.event)
    for key, value in fields.items():
        if key not in PERSONAL_FIELDS:
            context[f"event.{key}"] = value
    if fields.get("type") == "ticket":
        # The promise runs from the ticket's own time, even when its event arrives late.
        priority = fields.get("priority") or "normal"
        hours = pack.ticket_sla_hours[priority]
        opened = fields["occurred_at"].timestamp()
        context["ticket.priority"] = priority
        context["ticket.expected_resolution_hours"] = hours
        context["ticket.expected_resolution_at"] = rfc3339(opened + hours * HOUR)
    return context


def _matches(conditions: Conditions, context: Mapping[str, Any]) -> bool:
    return all(context.get(path) == value for path, value in conditions.items())


def _any_matches(conditions: Conditions, context: Mapping[str, Any]) -> bool:
    return any(context.get(path) == value for path, value in conditions.items())


def _resolve(variables: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: context.get(value[1:]) if isinstance(value, str) and value.startswith("$") else value
        for name, value in variables.items()
    }


def _build(
    pack: RulePack,
    rule: Rule,
    index: int,
    spec: NotificationSpec | TaskSpec | CouponSpec | ProfileUpdateSpec,
    state: CustomerState,
    firing: Firing,
    trigger_key: str,
    context: Mapping[str, Any],
) -> Action:
    ident = action_id(state.customer_id, rule.id, trigger_key, index)
    payload: dict[str, Any]
    match spec:
        case NotificationSpec():
            payload = {
                "template": spec.template,
                "channel": _channel(spec.channel, state),
                "variables": _resolve(spec.variables, context),
            }
        case TaskSpec():
            payload = {
                "assignee": _assignee(pack, spec.assignee, state),
                "priority": spec.priority,
                "due_at": rfc3339(firing.now + spec.due_in_hours * HOUR),
                "title": spec.title,
            }
            if spec.details:
                payload["details"] = _resolve(spec.details, context)
        case CouponSpec():
            payload = {
                "code": f"CG-{ident[:10].upper()}",
                "value": spec.value,
                "kind": spec.kind,
                "expires_at": rfc3339(firing.now + spec.expires_in_days * DAY),
            }
        case ProfileUpdateSpec():
            payload = {"set": dict(spec.set), "add_tags": list(spec.add_tags)}
            _apply_profile_update(state, spec)
    return Action(
        action_id=ident,
        type=spec.type,
        customer_id=state.customer_id,
        rule_id=rule.id,
        rule_version=rule.version,
        created_at=rfc3339(firing.now),
        caused_by=firing.caused_by,
        health_score=state.score,
        segment=state.segment,
        payload=payload,
    )


def _channel(requested: str, state: CustomerState) -> str:
    if requested != "auto":
        return requested
    if state.has_email:
        return "email"
    return "sms" if state.has_phone else "push"


def _assignee(pack: RulePack, assignee: str, state: CustomerState) -> str:
    if assignee == "account_manager":
        return state.account_manager or pack.default_task_queue
    if assignee == "supervisor":
        return pack.supervisor_queue
    return assignee


def _apply_profile_update(state: CustomerState, spec: ProfileUpdateSpec) -> None:
    """Our own tier/tag changes take effect at once (the CRM echoes them later)."""
    if "tier" in spec.set:
        state.tier = spec.set["tier"]
    for tag in spec.add_tags:
        if tag not in state.tags:
            state.tags.append(tag)
