"""A rule pack: the rules and every business parameter they run with (score, RFM, SLAs,
queues, time zone), as validated data, and its compiled form the engine evaluates.

`build_pack(data)` takes plain data (a YAML file's content) and returns a `RulePack`, or
raises `PackInvalid` listing every problem with its location in the data — all of them,
not the first, so one round of editing fixes a file."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from churnguard.core.clock import DAY, HOUR, ZoneName
from churnguard.core.conditions import (
    ALWAYS,
    Condition,
    ConditionError,
    FieldType,
    Subject,
    compile_condition,
    compile_variable,
)
from churnguard.core.rfm import PROSPECT, Rfm
from churnguard.core.scoring import Scoring
from churnguard.core.specs import (
    ActionCosts,
    AfterTrigger,
    AnniversaryTrigger,
    InactivityTrigger,
    KpiSettings,
    PackGuards,
    RfmSettings,
    RuleGuards,
    ScoringSettings,
    TicketOverdueTrigger,
    TimerTrigger,
)
from churnguard.core.thresholds import Metric, Threshold
from churnguard.core.triggers import moved_by
from schemas.events import MODEL_BY_TYPE, PERSONAL_FIELDS

# Signals an event can raise (see processor.apply_event).
Signal = Literal["purchase", "first_purchase", "login", "profile", "ticket_opened", "ticket_closed"]
PRIORITIES = ("urgent", "high", "normal", "low")
MAX_RULES = 500
# The longest backfill horizon a pack may set: ten years.
BACKFILL_HORIZON_MAX_HOURS = 24 * 3660
# Three years, the default; at most a hundred.
RETENTION_DAYS = 3 * 365
RETENTION_MAX_DAYS = 36_500
# Problems reported at most (after the first ones, fixing them is the next step anyway).
MAX_PROBLEMS = 200
# Names of rules, segments, tags in triggers and custom events.
_NAME = r"^[a-z][a-z0-9_]*$"
_CUSTOM_NAME = r"^[a-z][a-z0-9_.]*$"


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignalTrigger(_Spec):
    """Fires on every event that raises the signal."""

    on: Signal

    @property
    def signal(self) -> str:
        return self.on


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

    def compiled(self) -> Threshold:
        """What the core reads (core/thresholds.py)."""
        return Threshold(metric=self.metric, below=self.below, at_least=self.at_least,
                         once=self.once, grace_hours=float(self.grace_hours))


class SegmentTrigger(_Spec):
    """Fires when the customer's RFM segment becomes (`segment_entered`) or stops being
    (`segment_left`) the named one — after an event, or with time alone (recency ages)."""

    on: Literal["segment_entered", "segment_left"]
    segment: str = Field(pattern=_NAME)

    @property
    def signal(self) -> str:
        return f"{self.on}:{self.segment}"


class TagTrigger(_Spec):
    """Fires when a profile event adds or removes the tag (tags churnguard's own
    profile_update actions add do not fire rules: no cascades)."""

    on: Literal["tag_added", "tag_removed"]
    tag: str = Field(min_length=1, max_length=100)

    @property
    def signal(self) -> str:
        return f"{self.on}:{self.tag}"


class CustomTrigger(_Spec):
    """Fires on a `custom` event of this name; its properties read as event.properties.X."""

    on: Literal["custom"]
    name: str = Field(pattern=_CUSTOM_NAME, max_length=64)

    @property
    def signal(self) -> str:
        return f"custom:{self.name}"


Trigger = Annotated[
    SignalTrigger | ThresholdTrigger | SegmentTrigger | TagTrigger | CustomTrigger
    | AfterTrigger | AnniversaryTrigger | InactivityTrigger | TicketOverdueTrigger,
    Field(discriminator="on"),
]
TIMER_TRIGGERS = (AfterTrigger, AnniversaryTrigger, InactivityTrigger, TicketOverdueTrigger)
EVENT_TRIGGERS = (SignalTrigger, SegmentTrigger, TagTrigger, CustomTrigger)
EventTrigger = SignalTrigger | SegmentTrigger | TagTrigger | CustomTrigger
# A condition as written in the pack (see churnguard.core.conditions): compiled by build_pack.
ConditionData = Any


class NotificationSpec(_Spec):
    type: Literal["notification"]
    template: str = Field(min_length=1, max_length=200)
    # "auto" picks email, then sms, then push, by which contact channels the customer has.
    channel: Literal["auto", "email", "sms", "push"] = "auto"
    # Values starting with "$" name a field ("$event.ticket_id", "$ticket.priority").
    variables: dict[str, Any] = Field(default_factory=dict)
    when: ConditionData = Field(default_factory=list)


class TaskSpec(_Spec):
    type: Literal["task"]
    # "account_manager" (falls back to the default queue), "supervisor", or a queue name.
    assignee: str = Field(min_length=1, max_length=200)
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    due_in_hours: float = Field(24, ge=0, le=24 * 366)
    title: str = Field(min_length=1, max_length=500)
    # Like notification variables: "$"-values name a field.
    details: dict[str, Any] = Field(default_factory=dict)
    when: ConditionData = Field(default_factory=list)


class CouponSpec(_Spec):
    type: Literal["coupon"]
    value: float = Field(gt=0, le=1_000_000)
    kind: Literal["percent", "amount"] = "percent"
    expires_in_days: int = Field(30, ge=1, le=3660)
    when: ConditionData = Field(default_factory=list)

    @model_validator(mode="after")
    def _percent(self) -> CouponSpec:
        if self.kind == "percent" and self.value > 100:
            raise ValueError(f"a percent coupon's value is at most 100 (got {self.value:g}); "
                             "use kind: amount for a fixed amount")
        return self


class ProfileUpdateSpec(_Spec):
    type: Literal["profile_update"]
    set: dict[Literal["tier"], Literal["standard", "vip"]] = Field(default_factory=dict)
    add_tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list)
    when: ConditionData = Field(default_factory=list)


ActionSpec = Annotated[
    NotificationSpec | TaskSpec | CouponSpec | ProfileUpdateSpec, Field(discriminator="type")
]


class RuleSpec(_Spec):
    id: str = Field(pattern=_NAME, max_length=64)
    description: str = Field("", max_length=1000)
    enabled: bool = True
    # Set by publishing (a rule's version goes up when its content changes), not by hand.
    version: int = Field(1, ge=1)
    trigger: Trigger
    conditions: ConditionData = Field(default_factory=list)
    actions: list[ActionSpec] = Field(min_length=1, max_length=20)
    guards: RuleGuards = RuleGuards()
    # `winback`: its firings start win-back episodes (docs/kpis.md). Unset, the rule with
    # the id `health_winback` is one and no other; `other` opts that one out.
    kind: Literal["winback", "other"] | None = None


class TaskQueues(_Spec):
    # Tasks for the account manager go here when the customer has none.
    default: str = Field(min_length=1, max_length=200)
    supervisor: str = Field(min_length=1, max_length=200)


class _Settings(_Spec):
    """The pack without its rules (validated apart, so every rule's problems are listed)."""

    version: int = Field(0, ge=0)  # the pack's published version; 0: never published
    # Business time zone: anniversaries at 09:00, now.hour / now.weekday in conditions.
    timezone: ZoneName = "UTC"
    task_queues: TaskQueues
    # Hours to resolve a ticket by priority: the acknowledgement's promise and the SLA.
    ticket_sla_hours: dict[Literal["urgent", "high", "normal", "low"],
                           Annotated[float, Field(gt=0, le=24 * 366)]]
    scoring: ScoringSettings = ScoringSettings()
    rfm: RfmSettings = RfmSettings()
    # Frequency caps, quiet hours and the global control group (core/guards.py).
    guards: PackGuards = PackGuards()
    # Recovery window, margin and action costs of the KPIs (core/outcomes.py).
    kpis: KpiSettings = KpiSettings()
    # An event processed more than this after it occurred (an import, a backlog) is history:
    # it builds state, score, segment and KPIs, but its event-driven rules expire unfired —
    # as a timer noticed past its grace does — so old history never messages a customer.
    backfill_horizon_hours: float = Field(72, gt=0, le=BACKFILL_HORIZON_MAX_HOURS)
    # Data retention: a customer with no event for this many days is removed from state by
    # the tick (processor.advance), as an erasure removes one; None keeps customers forever.
    retention_days: int | None = Field(RETENTION_DAYS, ge=1, le=RETENTION_MAX_DAYS)
    rules: list[Any] = Field(max_length=MAX_RULES)

    @field_validator("ticket_sla_hours")
    @classmethod
    def _every_priority(cls, value: dict[str, float]) -> dict[str, float]:
        missing = [p for p in PRIORITIES if p not in value]
        if missing:
            raise ValueError(f"ticket_sla_hours needs every priority; missing {missing}")
        return value


class PackSpec(_Settings):
    """The pack as data: what a YAML file holds and `churnguard rules export` prints."""

    rules: list[RuleSpec]


@dataclass(frozen=True, slots=True)
class Problem:
    loc: tuple[str | int, ...]
    message: str
    # Offset inside the string at `loc` (a condition leaf) where the problem starts.
    column: int = 0
    # The problem is the mapping key at `loc` itself (an unknown field), not its value.
    key: bool = False


class PackInvalid(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the rule pack")
        self.problems = list(problems)


Getter = Callable[[Subject], Any]
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ActionTemplate:
    """One action template of a rule, compiled: its branch condition and its variables."""

    index: int
    spec: NotificationSpec | TaskSpec | CouponSpec | ProfileUpdateSpec
    when: Condition
    # name -> literal value or getter ("$"-variables), for variables / details.
    values: tuple[tuple[str, Any, Getter | None], ...]


@dataclass(frozen=True, slots=True)
class Rule:
    spec: RuleSpec
    condition: Condition
    actions: tuple[ActionTemplate, ...]
    order: int  # position in the pack: actions come out in pack order
    # The spec's, as plain attributes (read for every rule of every evaluation), and what
    # kind of trigger it has: "event", "threshold" or "timer".
    id: str = field(init=False)
    trigger: Trigger = field(init=False)
    kind: str = field(init=False)
    # A threshold trigger as the compiled core reads it; None for the other kinds.
    threshold: Threshold | None = field(init=False)

    def __post_init__(self) -> None:
        trigger = self.spec.trigger
        kind = ("event" if isinstance(trigger, EVENT_TRIGGERS)
                else "timer" if isinstance(trigger, TIMER_TRIGGERS) else "threshold")
        object.__setattr__(self, "id", self.spec.id)
        object.__setattr__(self, "trigger", trigger)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "threshold", trigger.compiled()
                           if isinstance(trigger, ThresholdTrigger) else None)

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def winback(self) -> bool:
        kind = self.spec.kind
        return kind == "winback" or (kind is None and self.spec.id == WINBACK_RULE)


# The shipped win-back rule: its firings are episodes unless its `kind` says otherwise.
WINBACK_RULE = "health_winback"


@dataclass(frozen=True, slots=True)
class RulePack:
    spec: PackSpec
    rules: tuple[Rule, ...]  # enabled ones, in pack order
    tz: ZoneInfo
    # The spec's, as plain attributes: read on the hot path (scoring and rfm as compiled
    # classes; the spec's own are in `spec`).
    scoring: Scoring
    rfm: Rfm
    ticket_sla_hours: Mapping[str, float]
    guards: PackGuards
    kpis: KpiSettings
    # Any frequency cap or quiet hours: else actions skip those checks.
    guarded: bool
    # backfill_horizon_hours in seconds: compared once per event (processor.apply_event).
    backfill_horizon: float
    # retention_days in seconds (None: kept forever): rules.retention_due.
    retention: float | None = None
    # Rules by the signal that fires them (event triggers) or may make them due (timers:
    # triggers.moved_by), and the ones metrics fire: evaluate visits only what can fire.
    by_signal: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    thresholds: tuple[tuple[Rule, Threshold], ...] = ()
    timers: tuple[tuple[Rule, TimerTrigger], ...] = ()
    segment_rules: tuple[Rule, ...] = ()
    # Signals some rule listens to.
    signals: frozenset[str] = frozenset()
    # The content's identity (the spec's digest, 63 bits): dues computed under another pack
    # are recomputed (processor.apply_event, the re-index), whatever the version number says
    # (a rules file edited and the worker restarted keeps version 0).
    fingerprint: int = 0
    # The candidate rules per set of signals and kind of evaluation, filled lazily by
    # rules.candidates (compiled: it runs for every evaluation); the sets are bounded by the
    # pack's own triggers.
    candidates_by_signals: dict[tuple[frozenset[str], bool], tuple[Rule, ...]] = field(
        default_factory=dict)

    @property
    def version(self) -> int:
        return self.spec.version

    def recovery_threshold(self, rule: Rule) -> float:
        """The health score at which a win-back episode of `rule` has recovered: the score
        the rule watches falling below, else the pack's `kpis.recovery_score`."""
        trigger = rule.spec.trigger
        if (isinstance(trigger, ThresholdTrigger) and trigger.metric == "health_score"
                and trigger.below is not None):
            return trigger.below
        return self.kpis.recovery_score

    @property
    def default_task_queue(self) -> str:
        return self.spec.task_queues.default

    @property
    def supervisor_queue(self) -> str:
        return self.spec.task_queues.supervisor



# Trigger context fields (see rules._trigger_context), beyond the global catalogue.
_STRING = FieldType("string")
_NUMBER = FieldType("number")
_PRIORITY = FieldType("string", vocabulary=frozenset(PRIORITIES))
_TICKET_PROMISE = {
    "ticket.priority": _PRIORITY,
    "ticket.expected_resolution_hours": _NUMBER,
    "ticket.expected_resolution_at": _STRING,
}


def trigger_fields(trigger: Any) -> dict[str, FieldType]:
    """The trigger-specific fields a rule's conditions and variables may read."""
    match trigger:
        case SignalTrigger(on="ticket_opened" | "ticket_closed"):
            return dict(_TICKET_PROMISE)
        case SegmentTrigger():
            return {"segment.previous": FieldType("string", nullable=True)}
        case TicketOverdueTrigger():
            return {"ticket.ticket_id": _STRING, "ticket.priority": _PRIORITY,
                    "ticket.opened_at": _STRING, "ticket.sla_hours": _NUMBER,
                    "due_at": _STRING}
        case InactivityTrigger():
            return {"inactivity.days": _NUMBER, "due_at": _STRING}
        case AnniversaryTrigger():
            return {"anniversary.year": _NUMBER, "due_at": _STRING}
        case AfterTrigger():
            return {"due_at": _STRING}
    return {}


# The event a rule's trigger fires with, by type (None: time-driven, no event; absent: any).
_TRIGGER_EVENT = {
    "purchase": "purchase", "first_purchase": "purchase", "login": "login",
    "profile": "profile", "ticket_opened": "ticket", "ticket_closed": "ticket",
    "tag_added": "profile", "tag_removed": "profile", "custom": "custom",
}


def _event_fields_problem(name: str, trigger: Any) -> str | None:
    """A field of an event the rule never sees: a mistake in the pack, caught at load."""
    if not name.startswith("event."):
        return None
    if isinstance(trigger, TIMER_TRIGGERS):
        article = "an" if trigger.on[0] in "aeiou" else "a"
        return (f"{name}: {article} {trigger.on} rule fires with time alone and has no event; "
                "use state.* fields or the trigger's own fields")
    kind = _TRIGGER_EVENT.get(trigger.on)
    if kind is None:
        return None  # threshold and segment rules fire after any event (or time)
    attribute = name.removeprefix("event.").split(".", 1)[0]
    fields = set(MODEL_BY_TYPE[kind].model_fields) - (
        set() if kind == "custom" else PERSONAL_FIELDS)
    if attribute in fields:
        return None
    return (f"{name}: a rule on {trigger.on} sees {kind} events, which have no "
            f"{attribute!r}; their fields are {', '.join(sorted(fields))}")


def build_pack(data: Any) -> RulePack:
    """Validate and compile; raises PackInvalid with every problem found."""
    problems: list[Problem] = []
    settings = _validated(_Settings, data, (), problems)
    raw_rules = data.get("rules") if isinstance(data, dict) else None
    # (position in the file, rule): problems name the rule by its position.
    specs: list[tuple[int, RuleSpec]] = []
    if isinstance(raw_rules, list) and len(raw_rules) > MAX_RULES:
        raw_rules = []  # refused as a whole by the settings' check: not worth 100,000 lines
    if isinstance(raw_rules, list):
        for index, raw in enumerate(raw_rules):
            if len(problems) >= MAX_PROBLEMS:
                break
            spec = _validated(RuleSpec, raw, ("rules", index), problems)
            if spec is not None:
                specs.append((index, spec))
            else:
                _check_conditions_of_invalid(raw, ("rules", index), problems)
    rules = _compile_rules(specs, problems)
    _check_names(data, settings, specs, raw_rules or [], problems)
    if problems or settings is None:
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS],
                        Problem((), "… and more problems; fix these first")]
        raise PackInvalid(problems)
    pack = PackSpec.model_validate({**settings.model_dump(), "rules": [s for _, s in specs]})
    return _assemble(pack, rules)


_TRIGGER: TypeAdapter[Any] = TypeAdapter(Trigger)
_MODELS: tuple[type[BaseModel], ...] = (
    _Settings, RuleSpec, SignalTrigger, ThresholdTrigger, SegmentTrigger, TagTrigger,
    CustomTrigger, AfterTrigger, AnniversaryTrigger, InactivityTrigger, TicketOverdueTrigger,
    NotificationSpec, TaskSpec, CouponSpec, ProfileUpdateSpec, TaskQueues, RuleGuards,
    PackGuards, ScoringSettings, RfmSettings, KpiSettings, ActionCosts,
)


def _check_conditions_of_invalid(
    raw: Any, prefix: tuple[str | int, ...], problems: list[Problem]
) -> None:
    """A rule that failed validation still has its conditions checked (one round of editing
    for two mistakes in one rule), when its trigger is valid (it says which fields exist)."""
    if not isinstance(raw, dict) or "conditions" not in raw:
        return
    try:
        trigger = _TRIGGER.validate_python(raw.get("trigger"))
    except ValidationError:
        return
    _compile(raw["conditions"], trigger, trigger_fields(trigger), (*prefix, "conditions"),
             problems)


def _validated(
    model: type[_M], data: Any, prefix: tuple[str | int, ...], problems: list[Problem]
) -> _M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            loc = prefix + _data_loc(data, tuple(error["loc"]))
            if prefix == () and loc[:1] == ("rules",) and len(loc) > 2:
                continue  # the rules are validated one by one
            # An unknown field or an invalid mapping key: the key is the mistake.
            key = error["type"] == "extra_forbidden" or "[key]" in error["loc"]
            problems.append(Problem(loc, _message(error, model), key=key))
        return None


def _data_loc(data: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """pydantic's loc without the tags of discriminated unions (`actions.2.coupon.value`
    is `actions[2].value` in the file)."""
    kept: list[str | int] = []
    node = data
    for part in loc:
        if part == "[key]":  # pydantic's marker of an invalid mapping key: the key is the place
            continue
        if (isinstance(node, dict) and part not in node
                and part in (node.get("on"), node.get("type"))):
            continue
        kept.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(kept)


def _message(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    """pydantic's message, said in the pack's terms where pydantic's are obscure."""
    message = str(error["msg"]).removeprefix("Value error, ")
    context = error.get("ctx") or {}
    match error["type"]:
        case "extra_forbidden":
            name = str(error["loc"][-1])
            close = difflib.get_close_matches(name, _known_keys(model), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown field {name!r}{hint}; see docs/rules.md for the fields"
        case "union_tag_invalid":
            tag, key = str(context.get("tag")), str(context.get("discriminator", "")).strip("'")
            expected = [t.strip(" '") for t in str(context.get("expected_tags", "")).split(",")]
            close = difflib.get_close_matches(tag, expected, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{key}: {tag!r} is unknown{hint}; {key} is one of {', '.join(expected)}"
        case "union_tag_not_found":
            key = str(context.get("discriminator", "")).strip("'")
            return f"{key}: is missing (it says which kind this is; see docs/rules.md)"
        case "too_short" if error["loc"][-1:] == ("actions",):
            return "a rule needs at least one action"
    return message


def _known_keys(model: type[BaseModel]) -> list[str]:
    """Every field name of the pack's models (for suggestions)."""
    return sorted({name for m in _MODELS for name in m.model_fields} | set(model.model_fields))


def _compile_rules(specs: list[tuple[int, RuleSpec]], problems: list[Problem]) -> list[Rule]:
    rules: list[Rule] = []
    for index, spec in specs:
        prefix: tuple[str | int, ...] = ("rules", index)
        extra = trigger_fields(spec.trigger)
        condition = _compile(spec.conditions, spec.trigger, extra, (*prefix, "conditions"),
                             problems)
        actions = []
        for number, action in enumerate(spec.actions):
            where = (*prefix, "actions", number)
            when = _compile(action.when, spec.trigger, extra, (*where, "when"), problems)
            values = tuple(_values(action, spec.trigger, extra, where, problems))
            actions.append(ActionTemplate(number, action, when, values))
        rules.append(Rule(spec, condition, tuple(actions), len(rules)))
    return rules


def _compile(
    data: Any, trigger: Any, extra: Mapping[str, FieldType], loc: tuple[str | int, ...],
    problems: list[Problem],
) -> Condition:
    try:
        condition = compile_condition(data, extra_fields=extra)
    except ConditionError as exc:
        problems.extend(Problem((*loc, *p.path), p.message, p.column) for p in exc.problems)
        return ALWAYS
    for name in sorted(condition.fields):
        message = _event_fields_problem(name, trigger)
        if message is not None:  # at every leaf that reads it, at the field's name
            problems.extend(Problem((*loc, *path), message, column)
                            for path, column in condition.places[name])
    return condition


def _values(
    action: NotificationSpec | TaskSpec | CouponSpec | ProfileUpdateSpec,
    trigger: Any, extra: Mapping[str, FieldType], loc: tuple[str | int, ...],
    problems: list[Problem],
) -> Iterator[tuple[str, Any, Getter | None]]:
    if isinstance(action, NotificationSpec):
        name, values = "variables", action.variables
    elif isinstance(action, TaskSpec):
        name, values = "details", action.details
    else:
        return
    for key, value in values.items():
        if isinstance(value, str) and value.startswith("$"):
            message = _event_fields_problem(value[1:], trigger)
            if message is not None:
                problems.append(Problem((*loc, name, key), message))
                continue
            try:
                yield key, None, compile_variable(value, extra_fields=extra)
            except ConditionError as exc:
                problems.extend(Problem((*loc, name, key), p.message, p.column)
                                for p in exc.problems)
        elif value is None or isinstance(value, str | int | float | bool):
            yield key, value, None
        else:
            problems.append(Problem((*loc, name, key),
                                    "expected a string, number, boolean or a $field"))


def _rfm_alone(data: Any) -> RfmSettings | None:
    """The pack's RFM settings when only other settings are wrong."""
    try:
        return RfmSettings.model_validate(data.get("rfm", {}) if isinstance(data, dict) else {})
    except ValidationError:
        return None


def _check_names(
    data: Any, settings: _Settings | None, specs: Sequence[tuple[int, RuleSpec]],
    raw_rules: Sequence[Any], problems: list[Problem],
) -> None:
    """What no single rule can check: unique ids, segments the pack defines."""
    first: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(rule_id, str):
            continue
        if rule_id in first:
            problems.append(Problem(
                ("rules", index, "id"),
                f"duplicate rule id {rule_id!r} (first at rules[{first[rule_id]}])"))
        else:
            first[rule_id] = index
    rfm = settings.rfm if settings is not None else _rfm_alone(data)
    if rfm is None:
        return  # the segments are the settings' (their problems are reported)
    segments = {PROSPECT, rfm.fallback_segment} | {s.segment for s in rfm.segments}
    for index, spec in specs:
        trigger = spec.trigger
        if isinstance(trigger, SegmentTrigger) and trigger.segment not in segments:
            problems.append(Problem(
                ("rules", index, "trigger", "segment"),
                f"unknown segment {trigger.segment!r}; the pack's segments are "
                f"{', '.join(sorted(segments))}"))


def _assemble(spec: PackSpec, rules: list[Rule]) -> RulePack:
    enabled = tuple(rule for rule in rules if rule.spec.enabled)
    by_signal: dict[str, list[Rule]] = {}
    for rule in enabled:
        trigger = rule.spec.trigger
        if isinstance(trigger, EVENT_TRIGGERS):
            by_signal.setdefault(trigger.signal, []).append(rule)
        elif isinstance(trigger, TIMER_TRIGGERS):
            for signal in moved_by(trigger):
                by_signal.setdefault(signal, []).append(rule)
    return RulePack(
        spec=spec,
        rules=enabled,
        tz=ZoneInfo(spec.timezone),
        scoring=Scoring.of(spec.scoring),
        rfm=Rfm.of(spec.rfm),
        ticket_sla_hours={str(k): v for k, v in spec.ticket_sla_hours.items()},
        guards=spec.guards,
        kpis=spec.kpis,
        guarded=bool(spec.guards.frequency_caps) or spec.guards.quiet_hours is not None,
        backfill_horizon=spec.backfill_horizon_hours * HOUR,
        retention=None if spec.retention_days is None else spec.retention_days * DAY,
        by_signal={signal: tuple(group) for signal, group in by_signal.items()},
        thresholds=tuple((r, r.threshold) for r in enabled if r.threshold is not None),
        timers=tuple((r, r.spec.trigger) for r in enabled
                     if isinstance(r.spec.trigger, TIMER_TRIGGERS)),
        segment_rules=tuple(r for r in enabled if isinstance(r.spec.trigger, SegmentTrigger)),
        signals=frozenset(by_signal),
        fingerprint=int.from_bytes(
            hashlib.sha256(spec.model_dump_json().encode()).digest()[:8], "big") >> 1,
    )
