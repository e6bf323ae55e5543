"""The rule engine: evaluates a compiled rule pack (churnguard.core.pack) over the state
after an event, the event's signals and the rules' own trigger memory (armed/fired). Which
rules exist and what they do is data; this module only knows the kinds of trigger."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel

from churnguard.core.clock import DAY, HOUR, day_number, rfc3339
from churnguard.core.conditions import Subject
from churnguard.core.guards import (
    MAX_DEFERRED,
    Reason,
    Suppressed,
    capped,
    quiet_until,
    rule_verdict,
)
from churnguard.core.outcomes import Arm
from churnguard.core.pack import (
    ActionTemplate,
    CouponSpec,
    EventTrigger,
    NotificationSpec,
    ProfileUpdateSpec,
    Rule,
    RulePack,
    SegmentTrigger,
    SignalTrigger,
    TaskSpec,
)
from churnguard.core.rfm import Rfm
from churnguard.core.scoring import crossing_time
from churnguard.core.specs import (
    AnniversaryTrigger,
    InactivityTrigger,
    TicketOverdueTrigger,
    TimerTrigger,
)
from churnguard.core.state import (
    LOGIN_WINDOW_DAYS,
    PURCHASE_WINDOW_DAYS,
    CustomerState,
    count_in_window,
)
from churnguard.core.thresholds import Metric, Threshold
from churnguard.core.triggers import (
    Occurrence,
    begin_anniversaries,
    earliest_due,
    mark,
    pending,
    ticket_mark,
)


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
    pack_version: int = 0

    # Written out, as Outcome's (core/processor.py): compiled, one per action. Frozen, so
    # each field is set through object.__setattr__, as the generated one does.
    def __init__(self, action_id: str, type: str, customer_id: str,
                 rule_id: str, rule_version: int, created_at: str, caused_by: tuple[str, ...],
                 health_score: float | None, segment: str | None, payload: dict[str, Any],
                 pack_version: int = 0) -> None:
        init = object.__setattr__
        init(self, "action_id", action_id)
        init(self, "type", type)
        init(self, "customer_id", customer_id)
        init(self, "rule_id", rule_id)
        init(self, "rule_version", rule_version)
        init(self, "created_at", created_at)
        init(self, "caused_by", caused_by)
        init(self, "health_score", health_score)
        init(self, "segment", segment)
        init(self, "payload", payload)
        init(self, "pack_version", pack_version)

    def to_record(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "type": self.type,
            "customer_id": self.customer_id,
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "pack_version": self.pack_version,
            "created_at": self.created_at,
            "caused_by": list(self.caused_by),
            "health_score": self.health_score,
            "segment": self.segment,
            "payload": self.payload,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Action:
        return cls(**{**record, "caused_by": tuple(record["caused_by"])})


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


@dataclass(slots=True)  # not frozen: built for every evaluation, and frozen costs per field
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
    # Set by apply_event: the event is older than the pack's backfill horizon when noticed
    # (history: an import, a long backlog); the rules it fires expire instead.
    stale: bool = False
    # The segment before this evaluation's rescore, when it changed (segment triggers).
    previous_segment: str | None = None
    # Filled by evaluate: what was noticed too late to act on and did not fire — timer
    # occurrences past their grace, the firings of a stale event.
    expired: list[str] = field(default_factory=list, init=False)
    # Filled by evaluate: what the guards stopped or deferred (core/guards.py).
    suppressed: list[Suppressed] = field(default_factory=list, init=False)
    # Filled by evaluate: win-back rules that fired or were held out, with the ids of their
    # actions (those a held-out firing would have had): episodes start from these.
    winbacks: list[tuple[Rule, Arm, list[str]]] = field(default_factory=list, init=False)

    # Written out, as Outcome's (core/processor.py): compiled, one per evaluation.
    def __init__(self, signals: frozenset[str], now: float, trigger_key: str,
                 caused_by: tuple[str, ...], event: BaseModel | None = None,
                 noticed_at: float | None = None, time_driven: bool = False,
                 stale: bool = False, previous_segment: str | None = None) -> None:
        self.signals = signals
        self.now = now
        self.trigger_key = trigger_key
        self.caused_by = caused_by
        self.event = event
        self.noticed_at = noticed_at
        self.time_driven = time_driven
        self.stale = stale
        self.previous_segment = previous_segment
        self.expired = []
        self.suppressed = []
        self.winbacks = []


def candidates(pack: RulePack, signals: frozenset[str], *,
               time_driven: bool) -> tuple[Rule, ...]:
    """The rules that may fire for an evaluation with these signals, in pack order: the
    threshold rules always; the timers when time brought the evaluation, else only those
    an event of these signals may have made due (everything due up to the customer's
    clock fired before the event was applied). Kept per pack and set of signals."""
    key = (signals & pack.signals if signals else signals, time_driven)
    found = pack.candidates_by_signals.get(key)
    if found is None:
        listening = {rule.order for signal in key[0] for rule in pack.by_signal[signal]}
        found = pack.candidates_by_signals[key] = tuple(
            rule for rule in pack.rules
            if rule.order in listening or rule.kind == "threshold"
            or (time_driven and rule.kind == "timer"))
    return found


def evaluate(pack: RulePack, state: CustomerState, firing: Firing) -> list[Action]:
    """Run the rules that may fire (candidates) against the state after the event (or
    at a due time); update the rules' trigger memory and apply profile updates to `state` in
    place; return the actions in pack order. Timer occurrences found past their grace, and
    the firings of a stale event, are recorded in `firing.expired`; what the guards stop
    goes to `firing.suppressed`."""
    actions: list[Action] = []
    for rule in candidates(pack, firing.signals, time_driven=firing.time_driven):
        for trigger_key, extra in _fired(pack, rule, state, firing):
            # Conditions read the state live: a profile update earlier in the rule is seen.
            subject = Subject(state, firing.event, firing.now, pack.tz, extra)
            if not rule.condition(subject):
                continue
            verdict = rule_verdict(rule.spec.guards, pack.guards, rule.id, state, firing.now)
            ids = []
            for template in rule.actions:
                if not template.when(subject):
                    continue
                ids.append(action_id(state.customer_id, rule.id, trigger_key, template.index))
                if verdict is not None:
                    _suppress(pack, rule, template, state, firing, trigger_key, verdict)
                    continue
                action = _guarded(pack, rule, template, subject, firing, trigger_key)
                if action is not None:
                    actions.append(action)
            if rule.winback and verdict in _EPISODE_ARMS:
                firing.winbacks.append((rule, _EPISODE_ARMS[verdict], ids))
    return actions


# A win-back firing is an episode when it acted, or when a holdout kept it from acting
# (the comparison group); a cooldown or cap stopping it is no episode.
_EPISODE_ARMS: dict[Reason | None, Arm] = {
    None: "treated", "holdout": "held_out", "global_control": "held_out"}


def _guarded(
    pack: RulePack, rule: Rule, template: ActionTemplate, subject: Subject, firing: Firing,
    trigger_key: str,
) -> Action | None:
    """The action, unless a frequency cap stops it or quiet hours defer it."""
    state = subject.state
    spec = template.spec
    if rule.spec.guards.transactional or not pack.guarded:
        return _build(pack, rule, template, subject, firing, trigger_key)
    channel = _channel(spec.channel, state) if type(spec) is NotificationSpec else None
    release = quiet_until(pack.guards, spec.type, state, firing.now, pack.tz)
    if (release is not None and len(state.deferred) >= MAX_DEFERRED) or capped(
            pack.guards, spec.type, channel, state, firing.now, sends_at=release):
        # (A deferral beyond MAX_DEFERRED is stopped before it counts against the caps.)
        _suppress(pack, rule, template, state, firing, trigger_key, "frequency_cap")
        return None
    if release is None:
        return _build(pack, rule, template, subject, firing, trigger_key)
    # Built now (its variables are what the customer looked like when it fired), sent at the
    # end of the window with the same id; a profile update applies at once either way.
    action = _build(pack, rule, template, subject, firing, trigger_key)
    state.deferred.append((release, action.to_record()))
    _suppress(pack, rule, template, state, firing, trigger_key, "quiet_hours_deferred",
              deferred_to=release)
    return None


def release_deferred(state: CustomerState, now: float) -> list[Action]:
    """Deferred actions whose quiet hours ended by `now`, in the order they were deferred;
    sent with the time they are released."""
    due = [record for at, record in state.deferred if at <= now]
    if not due:
        return []
    state.deferred[:] = [(at, record) for at, record in state.deferred if at > now]
    return [Action.from_record({**record, "created_at": rfc3339(now)}) for record in due]


def _suppress(
    pack: RulePack, rule: Rule, template: ActionTemplate, state: CustomerState, firing: Firing,
    trigger_key: str, reason: Reason, *, deferred_to: float | None = None,
) -> None:
    firing.suppressed.append(Suppressed(
        action_id=action_id(state.customer_id, rule.id, trigger_key, template.index),
        type=template.spec.type,
        customer_id=state.customer_id,
        rule_id=rule.id,
        rule_version=rule.version,
        pack_version=pack.version,
        reason=reason,
        created_at=rfc3339(firing.now),
        deferred_to=None if deferred_to is None else rfc3339(deferred_to),
    ))


def prime(pack: RulePack, state: CustomerState) -> None:
    """Arm the threshold rules whose condition is false for a brand-new customer, so that a
    first event which already crosses a threshold (a first purchase of 12,000) fires them."""
    for rule, trigger in pack.thresholds:
        if not trigger.holds(metric_value(state, trigger.metric)):
            state.armed.append(rule.id)


def next_due(pack: RulePack, state: CustomerState) -> float | None:
    """The earliest moment something happens with no new event: a timer occurrence, the
    score decaying below an armed `health_score below` threshold, (when a rule watches
    segments) the recency grade changing, a deferred action's release, a win-back
    episode's window ending, or data retention removing the customer."""
    dues: list[float] = []
    sla = pack.ticket_sla_hours
    for rule, timer in pack.timers:
        due = earliest_due(rule.id, timer, state, sla_hours=sla, tz=pack.tz)
        if due is not None:
            dues.append(due)
    for rule, trigger in pack.thresholds:
        if (trigger.metric == "health_score" and trigger.below is not None
                and rule.id in state.armed):
            crossing = crossing_time(state, trigger.below, state.clock, pack.scoring)
            if crossing is not None:
                dues.append(crossing)
    if pack.segment_rules:
        change = recency_grade_change(state, pack.rfm)
        if change is not None:
            dues.append(change)
    if state.deferred:
        dues.append(min(at for at, _ in state.deferred))
    if state.episodes:
        # A win-back episode's window ends with time alone (KPIs: it expires).
        dues.append(min(e.ends_at for e in state.episodes))
    retained = retention_due(pack, state)
    if retained is not None:
        dues.append(retained)
    return min(dues, default=None)


def retention_due(pack: RulePack, state: CustomerState) -> float | None:
    """When a tick removes this customer (data retention, processor.advance): the pack's
    retention after its latest event, but never within the backfill horizon of the live
    worker last applying one (history being imported is not removed before the rest of it
    arrives). An event only moves it later, so a lower bound kept after one
    (next_due_after_activity) stays one."""
    expired = retention_by_events(pack, state)
    noticed = state.last_noticed_at
    if expired is None or noticed is None:
        return expired
    return max(expired, noticed + pack.backfill_horizon)


def retention_by_events(pack: RulePack, state: CustomerState) -> float | None:
    """The event time at which the customer's retention ends: an event at or after it finds
    the customer gone (processor.apply_event), in a worker and in replay alike."""
    if pack.retention is None:
        return None
    return last_event(state) + pack.retention


def last_event(state: CustomerState) -> float:
    """The customer's latest event time; for a state stored before last_event_at existed,
    its clock (its latest event or timer: never earlier than that event)."""
    return state.clock if state.last_event_at is None else state.last_event_at


def next_due_after_activity(
    pack: RulePack, state: CustomerState, bound: float | None
) -> float | None:
    """next_due, or earlier, after an event that only added activity (a login, a purchase
    that is not the first) and changed no trigger memory, when nothing was due before
    `bound` before it: such an event can only have moved the customer's dues later, but
    for a silence starting afresh and the recency grades of a new purchase. The score is
    higher at every later moment, so its crossing of a threshold is not sought again here
    (that search is the costliest part of next_due): `advance` asks next_due what is really
    due when the bound comes."""
    if bound is None:  # (a fresh customer: not even its retention was due yet)
        retained = retention_due(pack, state)
        dues = [] if retained is None else [retained]
    else:
        dues = [bound]
    for rule, timer in pack.timers:
        if type(timer) is InactivityTrigger:  # (exact: see triggers.earliest_due)
            due = earliest_due(rule.id, timer, state, sla_hours=pack.ticket_sla_hours,
                               tz=pack.tz)
            if due is not None:
                dues.append(due)
    if pack.segment_rules:
        change = recency_grade_change(state, pack.rfm)
        if change is not None:
            dues.append(change)
    return min(dues, default=None)


def recency_grade_change(state: CustomerState, rfm: Rfm) -> float | None:
    """The first whole second after the clock at which the RFM recency grade drops (the only
    part of the segment that moves with time alone)."""
    if state.last_purchase_at is None:
        return None
    for days in sorted(rfm.recency_days):
        moment = math.floor(state.last_purchase_at + days * DAY) + 1.0
        if moment > state.clock:
            return moment
    return None


def start_anniversaries(pack: RulePack, state: CustomerState, dates: set[str]) -> None:
    """Profile `dates` changed: their anniversaries fire from the customer's clock on."""
    for rule, trigger in pack.timers:
        if type(trigger) is AnniversaryTrigger and trigger.date in dates:
            begin_anniversaries(rule.id, trigger, state, pack.tz)


def forget_ticket_marks(pack: RulePack, state: CustomerState, ticket_id: str) -> None:
    """A closed ticket can no longer be overdue: drop its marks (state stays small)."""
    for rule, trigger in pack.timers:
        if type(trigger) is TicketOverdueTrigger:
            state.marks.pop(ticket_mark(rule.id, ticket_id), None)


def _pending(
    pack: RulePack, rule_id: str, trigger: TimerTrigger, state: CustomerState, until: float
) -> list[Occurrence]:
    return pending(rule_id, trigger, state, sla_hours=pack.ticket_sla_hours, tz=pack.tz,
                   until=until)


_NO_EXTRA: dict[str, Any] = {}


def _fired(
    pack: RulePack, rule: Rule, state: CustomerState, firing: Firing
) -> list[tuple[str, dict[str, Any]]]:
    """The trigger keys (one per firing) this rule fires with now, and their context."""
    # By the rule's kind (compiled with the pack): no isinstance chain per rule visited.
    kind = rule.kind
    if kind == "event":
        if cast(EventTrigger, rule.trigger).signal not in firing.signals:
            return []
        if firing.stale:  # last year's ticket is acknowledged by no one (a backfill)
            firing.expired.append(f"{rule.id}:{firing.trigger_key}")
            return []
        return [(firing.trigger_key, _event_context(pack, rule.trigger, firing))]
    if kind == "threshold":
        trigger = cast(Threshold, rule.threshold)
        if not _crossed(rule.id, trigger, state):
            return []
        if not firing.time_driven:
            if firing.stale:
                # Crossed by an old event: disarmed unfired, as a late time-driven crossing.
                firing.expired.append(f"{rule.id}:{firing.trigger_key}")
                return []
            return [(firing.trigger_key, _NO_EXTRA)]  # the event's id: fires once
        if _late(firing, firing.now, trigger.grace_hours):
            # Time alone crossed it long before anyone looked (a backfill): disarmed, unfired.
            firing.expired.append(f"{rule.id}:{firing.trigger_key}")
            return []
        return [(_arming_key(rule, state, firing.trigger_key), _NO_EXTRA)]
    timer = cast(TimerTrigger, rule.trigger)
    due = earliest_due(rule.id, timer, state, sla_hours=pack.ticket_sla_hours, tz=pack.tz)
    if due is None or due > firing.now:
        return []  # nothing due: no occurrence built (the common case after an event)
    fired = []
    for occurrence in _pending(pack, rule.id, timer, state, firing.now):
        if occurrence.due > firing.now:
            continue
        mark(rule.id, timer, state, occurrence)
        if _late(firing, occurrence.due, timer.grace_hours):
            firing.expired.append(occurrence.key)  # a backfill found it too late to matter
            continue
        fired.append((occurrence.key, {**occurrence.context, "due_at": rfc3339(occurrence.due)}))
    return fired


def _arming_key(rule: Rule, state: CustomerState, key: str) -> str:
    """A time-driven threshold firing's key, `at:<due>`, made unique per arming: a rule
    re-armed and crossed again at the same moment (an event at that moment, a pack
    published in between) fires anew with its own action ids, `at:<due>#2` and on."""
    now = state.clock
    # (A logged action's time is its created_at, in milliseconds.)
    if not (any(logged.rule_id == rule.id and abs(logged.at - now) < 0.001
                for logged in state.actions_log)
            or any(e.rule_id == rule.id and e.started_at == now for e in state.episodes)
            or any(record["rule_id"] == rule.id for _, record in state.deferred)):
        return key  # this rule sent nothing at this moment: its first firing here
    known = {logged.action_id for logged in state.actions_log}
    known.update(record["action_id"] for _, record in state.deferred)
    for episode in state.episodes:
        known.update(episode.action_ids)
    fresh, arming = key, 1
    while any(action_id(state.customer_id, rule.id, fresh, template.index) in known
              for template in rule.actions):
        arming += 1
        fresh = f"{key}#{arming}"
    return fresh


def _event_context(pack: RulePack, trigger: Any, firing: Firing) -> dict[str, Any]:
    """The trigger fields (pack.trigger_fields) of an event-driven firing."""
    if type(trigger) is SegmentTrigger:
        return {"segment.previous": firing.previous_segment}
    if type(trigger) is SignalTrigger and trigger.on in ("ticket_opened", "ticket_closed"):
        event = firing.event
        # The promise runs from the ticket's own time, even when its event arrives late.
        priority = getattr(event, "priority", None) or "normal"
        hours = pack.ticket_sla_hours[priority]
        opened = event.at if event is not None else firing.now  # type: ignore[attr-defined]
        return {
            "ticket.priority": priority,
            "ticket.expected_resolution_hours": hours,
            "ticket.expected_resolution_at": rfc3339(opened + hours * HOUR),
        }
    return _NO_EXTRA


def _late(firing: Firing, due: float, grace_hours: float) -> bool:
    noticed = firing.now if firing.noticed_at is None else firing.noticed_at
    return noticed - due > grace_hours * HOUR


def _crossed(rule_id: str, trigger: Threshold, state: CustomerState) -> bool:
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


def _resolve(template: ActionTemplate, subject: Subject) -> dict[str, Any]:
    return {name: value if getter is None else getter(subject)
            for name, value, getter in template.values}


def _build(
    pack: RulePack,
    rule: Rule,
    template: ActionTemplate,
    subject: Subject,
    firing: Firing,
    trigger_key: str,
) -> Action:
    state = subject.state
    spec = template.spec
    ident = action_id(state.customer_id, rule.id, trigger_key, template.index)
    payload: dict[str, Any]
    # Exact types, not a match on classes (see triggers.earliest_due).
    if type(spec) is NotificationSpec:
        payload = {
            "template": spec.template,
            "channel": _channel(spec.channel, state),
            "variables": _resolve(template, subject),
        }
    elif type(spec) is TaskSpec:
        payload = {
            "assignee": _assignee(pack, spec.assignee, state),
            "priority": spec.priority,
            "due_at": rfc3339(firing.now + spec.due_in_hours * HOUR),
            "title": spec.title,
        }
        if spec.details:
            payload["details"] = _resolve(template, subject)
    elif type(spec) is CouponSpec:
        payload = {
            "code": f"CG-{ident[:10].upper()}",
            "value": spec.value,
            "kind": spec.kind,
            "expires_at": rfc3339(firing.now + spec.expires_in_days * DAY),
        }
    else:
        assert type(spec) is ProfileUpdateSpec
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
        pack_version=pack.version,
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
