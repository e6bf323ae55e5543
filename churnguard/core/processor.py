"""One event in, the customer's next state and what it triggers out:
`apply_event(state, event, engine) -> Outcome`. Used by the worker and by replay alike."""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from churnguard.core.clock import day_number, rfc3339
from churnguard.core.feedback import (
    LOW_RATING,
    CommentTerms,
    comment_terms,
    ticket_closed,
    ticket_opened,
)
from churnguard.core.guards import Suppressed
from churnguard.core.outcomes import (
    OutcomeRecord,
    expire_episodes,
    log_actions,
    on_feedback,
    on_purchase,
    recover_by_score,
    start_episode,
)
from churnguard.core.pack import RulePack
from churnguard.core.rfm import rfm_scores, segment_of
from churnguard.core.rules import (
    Action,
    Firing,
    evaluate,
    forget_ticket_marks,
    last_event,
    next_due,
    next_due_after_activity,
    prime,
    release_deferred,
    retention_by_events,
    retention_due,
    start_anniversaries,
)
from churnguard.core.scoring import Health, health
from churnguard.core.state import (
    CLOSED_TICKETS_KEPT,
    LOGIN_WINDOW_DAYS,
    MAX_OPEN_TICKETS,
    MAX_SCORE_TREND,
    PURCHASE_WINDOW_DAYS,
    SPEND_SCALE,
    CustomerState,
    OpenTicket,
    prune,
    remember,
)
from schemas.events import (
    ActionFeedback,
    Custom,
    Erasure,
    Event,
    Login,
    Profile,
    Purchase,
    Ticket,
)


@dataclass(frozen=True, slots=True)
class Engine:
    """Everything apply_event needs besides the state and the event: the rule pack (rules,
    score and RFM parameters) and how many event ids a customer remembers."""

    pack: RulePack
    dedup_window: int = 64
    # Reduce ticket comments to their terms (Outcome.comments): where something counts
    # them (the worker's /feedback aggregates, replay --kpis); elsewhere left out.
    analyse_comments: bool = False


class ScoreChange(NamedTuple):
    """A change of the score or segment; its record (the scores topic's, see the contract)
    is built only for the changes published (a customer's latest of a batch)."""

    customer_id: str
    at: float
    health: Health
    segment: str
    rfm: tuple[int, int, int] | None
    caused_by: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        health = self.health
        return {
            "customer_id": self.customer_id,
            "at": rfc3339(self.at),
            "score": health.score,
            "components": {
                "recency": health.recency,
                "engagement": health.engagement,
                "service": health.service,
            },
            "segment": self.segment,
            "rfm": None if self.rfm is None else dict(zip("rfm", self.rfm, strict=True)),
            "caused_by": list(self.caused_by),
        }


@dataclass(slots=True)
class Outcome:
    state: CustomerState
    # Every action fired, in order.
    actions: list[Action] = field(default_factory=list, init=False)
    # Every score or segment change, for the scores topic.
    score_changes: list[ScoreChange] = field(default_factory=list, init=False)
    duplicate: bool = False
    # Noticed too late to act on: timer occurrences past their grace, rules an event older
    # than the pack's backfill horizon fired (history) — recorded, not fired.
    expired: list[str] = field(default_factory=list, init=False)
    # Open tickets dropped to keep the state bounded (MAX_OPEN_TICKETS): their SLA is no
    # longer watched and they no longer count in the service score.
    evicted_tickets: list[str] = field(default_factory=list, init=False)
    # Firings and actions the guards stopped or deferred, for the suppressed topic.
    suppressed: list[Suppressed] = field(default_factory=list, init=False)
    # What KPIs are computed from (core/outcomes.py), for the outcomes topic.
    outcome_records: list[OutcomeRecord] = field(default_factory=list, init=False)
    # Feedback on an action this customer was not sent lately (or never): not counted.
    unmatched_feedback: int = 0
    # Ticket comments as the terms that may be counted (core/feedback.py): never encoded.
    comments: list[CommentTerms] = field(default_factory=list, init=False)
    # Data retention removed the customer (advance: no event for the pack's retention_days).
    # From advance, `state` is what was removed: the shell deletes it. From apply_event, the
    # event then started a fresh customer, which `state` is.
    retired: bool = False

    # Written out: compiled (core/native.py), the one dataclasses generates runs as Python,
    # one per event. Its parameters are the init fields above (tests/unit/test_native_core.py).
    def __init__(self, state: CustomerState, duplicate: bool = False,
                 unmatched_feedback: int = 0, retired: bool = False) -> None:
        self.state = state
        self.actions = []
        self.score_changes = []
        self.duplicate = duplicate
        self.expired = []
        self.evicted_tickets = []
        self.suppressed = []
        self.outcome_records = []
        self.unmatched_feedback = unmatched_feedback
        self.comments = []
        self.retired = retired

    @property
    def score_record(self) -> dict[str, Any] | None:
        """The latest change's record."""
        return self.score_changes[-1].to_record() if self.score_changes else None


def apply_event(
    state: CustomerState | None,
    event: Event,
    engine: Engine,
    *,
    source: tuple[str, int] | None = None,
    noticed_at: float | None = None,
) -> Outcome:
    """Apply `event` (read from `source` = (topic, offset) when it came from Kafka). Timers
    due before the event fire first, at their due times, as they would have live.
    `noticed_at` is the live worker's wall clock: a timer occurrence that is only noticed
    more than its grace after it was due (a backfill of old events) expires instead of
    firing, and so do the rules of an event older than the pack's backfill horizon (its
    state, score and segment are applied all the same). Replay leaves it None: in event
    time nothing is ever late."""
    if state is None:
        state = _fresh(event, engine)
    if source is not None and state.offsets.get(source[0], -1) >= source[1]:
        return Outcome(state, duplicate=True)  # redelivered after a restart: already applied
    if source is not None:
        state.offsets[source[0]] = source[1]
    if event.event_id in state.seen:
        return Outcome(state, duplicate=True)
    remember(state.seen, event.event_id, engine.dedup_window)

    occurred = event.at
    # A live worker never lets an event stamped ahead of its clock (a fast device clock)
    # move the customer's time, and so fire timers, beyond the wall clock.
    horizon = until = occurred if noticed_at is None else min(occurred, noticed_at)
    if state.due_pack != engine.pack.fingerprint:
        # A published pack moved this customer's dues (the background reindex has not come
        # to it yet): what the running pack has due by the customer's clock fires first, so
        # that, as after every transition, nothing due by the clock is left unfired.
        exact_due(engine.pack, state)
        until = max(horizon, state.clock)
    outcome = _due_before(state, event, engine, until, noticed_at)
    state = outcome.state
    state.clock = max(state.clock, horizon)
    _note_activity(state, event, occurred, noticed_at)
    bound, first_purchase = state.next_due, state.first_purchase_at
    memory = (tuple(state.armed), len(state.deferred), len(state.episodes))
    signals = _apply(state, event, occurred, engine, outcome)
    previous = state.segment
    change = rescore(state, engine, caused_by=(event.event_id,))
    if change is not None:
        outcome.score_changes.append(change)
        signals = _segment_signals(signals, previous, state.segment)
        if state.episodes:
            outcome.outcome_records += recover_by_score(state, state.clock)
    firing = Firing(
        signals=signals,
        now=state.clock,
        trigger_key=event.event_id,
        caused_by=(event.event_id,),
        event=event,
        noticed_at=noticed_at,
        previous_segment=previous,
        # History (an import, a long backlog) builds the state above but messages no one:
        # older than the horizon by the worker's clock, its rules expire. Replay applies
        # each event at its own moment on the event clock, as a caught-up worker: never.
        stale=noticed_at is not None and noticed_at - occurred > engine.pack.backfill_horizon,
    )
    _settle(engine.pack, state, firing, evaluate(engine.pack, state, firing), outcome)
    # (A segment change alone moves no due: the segment rules it fires change memory.)
    if (type(event) in _ACTIVITY and state.first_purchase_at == first_purchase  # (as _apply)
            and (tuple(state.armed), len(state.deferred), len(state.episodes)) == memory):
        # Most events: a lower bound, cheap to keep (see next_due_after_activity). The
        # stored due is the running pack's (due_pack, checked above).
        state.next_due = next_due_after_activity(engine.pack, state, bound)
        state._due_exact = False
    else:
        exact_due(engine.pack, state)
    return outcome


def _due_before(state: CustomerState, event: Event, engine: Engine, until: float,
                noticed_at: float | None) -> Outcome:
    """What is due before the event (up to `until`) fires. A customer inactive past its
    retention by then (no tick removed it: the worker was catching up, or replay) is gone
    after that: the event starts a fresh customer, which the outcome's state is; what was
    applied stays known applied (a redelivered record or repeated id changes nothing)."""
    expired = retention_by_events(engine.pack, state)
    if expired is not None and expired <= until:
        outcome = _retire(advance(state, expired, engine, noticed_at=noticed_at))
        outcome.state = _fresh(event, engine)
        outcome.state.offsets, outcome.state.seen = state.offsets, state.seen
        return outcome
    due = state.next_due
    if due is None or due > until:
        return Outcome(state)
    return advance(state, until, engine, noticed_at=noticed_at)


def _retire(outcome: Outcome) -> Outcome:
    """Data retention removes the customer: its win-back episodes still open count as
    expired (at their windows' ends, as KPIs count every undecided one), not open forever."""
    outcome.retired = True
    outcome.outcome_records += expire_episodes(outcome.state, math.inf)
    return outcome


def _note_activity(state: CustomerState, event: Event, occurred: float,
                   noticed_at: float | None) -> None:
    """The event keeps the customer (retention), unless the customer did nothing in it: a
    delivery report, a task the company completed."""
    if type(event) is ActionFeedback and event.status not in _CUSTOMER_FEEDBACK:  # (as _apply)
        return
    state.last_event_at = max(last_event(state), occurred)
    if noticed_at is not None:
        state.last_noticed_at = noticed_at


def _fresh(event: Event, engine: Engine) -> CustomerState:
    # (Seen first at the event's time: not the clock's 0, which a stored state without
    # last_event_at falls back to.)
    state = CustomerState(customer_id=event.customer_id, due_pack=engine.pack.fingerprint,
                          last_event_at=event.at)
    prime(engine.pack, state)
    return state


# Feedback that the customer gave (opening, clicking): it keeps the customer (retention).
_CUSTOMER_FEEDBACK = frozenset({"opened", "clicked"})


# Events that only add activity (a first purchase and changed memory are checked apart).
# By type, not by signal: a repeated close rates a ticket (the service score falls) with
# no signal, and feedback raises none.
_ACTIVITY = (Login, Purchase)


def exact_due(pack: RulePack, state: CustomerState) -> None:
    """next_due recomputed under `pack`, and the pack recorded with it (state.due_pack)."""
    # Pinned (a state stored before last_event_at: its clock now), or every timer firing
    # would move its retention later.
    state.last_event_at = last_event(state)
    state.next_due = next_due(pack, state)
    state.due_pack = pack.fingerprint
    state._due_exact = True


def advance(
    state: CustomerState, until: float, engine: Engine, *, noticed_at: float | None = None
) -> Outcome:
    """Fire everything due up to `until`, each at its own due time (the customer's clock
    moves to it), so live ticks, late events and replays produce the same actions. A live
    tick passes its wall clock as `noticed_at` (see apply_event). When the customer's
    retention comes, it stops there: the outcome is `retired` (the shell deletes the state)."""
    outcome = Outcome(state)
    # Kept by every transition (apply_event and this loop): no recomputation when nothing
    # is due, which is the common case on the hot path. It may be a lower bound (after an
    # event that only added activity): what is really due is asked before acting, so a
    # bound that comes fires nothing, changes nothing but the bound, as if never kept.
    due = state.next_due
    exact = state._due_exact and state.due_pack == engine.pack.fingerprint
    while due is not None and due <= until:
        if not exact:
            exact = True
            exact_due(engine.pack, state)
            if state.next_due != due:
                # A bound that came (really later) or a due a published pack moved earlier
                # (fires at its own time, as a replay under that pack would).
                due = state.next_due
                continue
        retained = retention_due(engine.pack, state)
        if retained is not None and due >= retained:
            # (Nothing else of this moment fires: the customer is gone.)
            return _retire(outcome)
        state.clock = max(state.clock, due)
        previous = state.segment
        signals: frozenset[str] = frozenset()
        change = rescore(state, engine, caused_by=())
        if change is not None:
            outcome.score_changes.append(change)
            signals = _segment_signals(signals, previous, state.segment)
        if state.episodes:
            outcome.outcome_records += recover_by_score(state, state.clock)
            outcome.outcome_records += expire_episodes(state, state.clock)
        firing = Firing(signals=signals, now=state.clock, trigger_key=f"at:{due!r}",
                        caused_by=(), noticed_at=noticed_at, time_driven=True,
                        previous_segment=previous)
        released = release_deferred(state, state.clock) if state.deferred else []
        _settle(engine.pack, state, firing, released + evaluate(engine.pack, state, firing),
                outcome)
        exact_due(engine.pack, state)
        following = state.next_due
        # Progress guard: a due that fired nothing and stays due would loop forever.
        due = None if following is not None and following <= due else following
    return outcome


def _settle(
    pack: RulePack, state: CustomerState, firing: Firing, actions: list[Action],
    outcome: Outcome,
) -> None:
    """An evaluation's results into the outcome: its actions (remembered for feedback and
    redemptions) and the win-back episodes it started."""
    outcome.actions += actions
    outcome.expired += firing.expired
    outcome.suppressed += firing.suppressed
    if actions:
        outcome.outcome_records += log_actions(state, actions, pack.kpis)
    for rule, arm, ids in firing.winbacks:
        record = start_episode(state, rule.id, arm, pack.recovery_threshold(rule), ids,
                               firing.now, pack.kpis)
        if record is not None:
            outcome.outcome_records.append(record)


def rescore(
    state: CustomerState, engine: Engine, *, caused_by: tuple[str, ...]
) -> ScoreChange | None:
    """Recompute score and segment at the customer's clock; the change, if they changed.
    A change of the score (not of the segment alone) is remembered in `score_trend`."""
    now = state.clock
    pack = engine.pack
    result = health(state, now, pack.scoring)
    scores = rfm_scores(state, now, pack.rfm)
    segment = segment_of(scores, pack.rfm)
    changed = state.score != result.score or state.segment != segment
    if state.score != result.score:
        # The customer 360's trend: score changes only, compact and bounded.
        state.score_trend.append((int(now), result.score))
        if len(state.score_trend) > MAX_SCORE_TREND:
            del state.score_trend[: len(state.score_trend) - MAX_SCORE_TREND]
    state.score = result.score
    state.components = (result.recency, result.engagement, result.service)
    state.segment = segment
    state.rfm = scores
    if not changed:
        return None
    return ScoreChange(state.customer_id, now, result, segment, scores, caused_by)


def _segment_signals(
    signals: frozenset[str], previous: str | None, current: str | None
) -> frozenset[str]:
    if previous == current:
        return signals
    changed = {f"segment_entered:{current}"}
    if previous is not None:
        changed.add(f"segment_left:{previous}")
    return signals | changed


def _apply(
    state: CustomerState, event: Event, occurred: float, engine: Engine, outcome: Outcome
) -> frozenset[str]:
    """Fold the event into the state (order-insensitive where history matters)."""
    today = day_number(state.clock)
    day = day_number(occurred)
    # Exact types, not a match on classes: isinstance of an event that is not one goes
    # through pydantic's metaclass (ABCMeta's instance check), on every event.
    if type(event) is Purchase:
        signals = {"purchase"}
        if state.first_purchase_at is None:
            signals.add("first_purchase")
        state.first_purchase_at = min(state.first_purchase_at or occurred, occurred)
        state.last_purchase_at = max(state.last_purchase_at or occurred, occurred)
        state.order_count += 1
        state.spend_e4 += int(event.amount * SPEND_SCALE)
        state.last_active_at = max(state.last_active_at or occurred, occurred)
        state.purchase_days[day] = state.purchase_days.get(day, 0) + 1
        prune(state.purchase_days, today, PURCHASE_WINDOW_DAYS)
        outcome.outcome_records += on_purchase(
            state, occurred, float(event.amount), event.coupon_code,
            "first_purchase" in signals, engine.pack.kpis)
        return frozenset(signals)
    if type(event) is Login:
        state.last_active_at = max(state.last_active_at or occurred, occurred)
        state.login_days[day] = state.login_days.get(day, 0) + 1
        # Kept as long as the engagement window (configurable) needs them.
        prune(state.login_days, today,
              max(LOGIN_WINDOW_DAYS, engine.pack.scoring.engagement_window_days))
        return frozenset({"login"})
    if type(event) is Ticket:
        return _apply_ticket(state, event, occurred, engine, outcome)
    if type(event) is Profile:
        before = {"birthday": state.birthday, "signup_date": state.signup_date}
        tags = set(state.tags)
        _apply_profile(state, event)
        changed = {name for name, value in before.items() if getattr(state, name) != value}
        if changed:
            start_anniversaries(engine.pack, state, changed)
        now = set(state.tags)
        return frozenset({"profile"} | {f"tag_added:{tag}" for tag in now - tags}
                         | {f"tag_removed:{tag}" for tag in tags - now})
    if type(event) is Custom:
        # Business-defined: no state of its own, only the rules listening to its name.
        return frozenset({f"custom:{event.name}"})
    if type(event) is ActionFeedback:
        records = on_feedback(state, event.action_id, event.status, occurred)
        if records is None:
            outcome.unmatched_feedback += 1
        else:
            outcome.outcome_records += records
        return frozenset()
    if type(event) is Erasure:
        # The callers forget the customer instead (batch.py, replay.py): nothing of an
        # erased customer is folded into anything.
        raise ValueError("an erasure is not applied to a state")
    raise TypeError(f"not an event type the core knows: {type(event).__name__}")


def _apply_ticket(
    state: CustomerState, event: Ticket, occurred: float, engine: Engine, outcome: Outcome
) -> frozenset[str]:
    ticket = event.ticket_id
    signals: set[str] = set()
    known = state.open_tickets.get(ticket)
    category = event.category or (known.category if known is not None else "")
    if event.comment and engine.analyse_comments:
        low = event.satisfaction is not None and event.satisfaction <= LOW_RATING
        outcome.comments.append(CommentTerms(occurred, category, low,
                                             comment_terms(event.comment)))
    if event.status == "opened":
        # A late "opened" for a ticket already closed must not reopen it.
        if ticket not in state.open_tickets and ticket not in state.closed_tickets:
            priority = event.priority or "normal"
            state.open_tickets[ticket] = OpenTicket(occurred, priority, category)
            outcome.outcome_records.append(
                ticket_opened(state.customer_id, occurred, category, priority))
            signals.add("ticket_opened")
            if len(state.open_tickets) > MAX_OPEN_TICKETS:
                # The oldest by event time (the new one itself if it is older than all):
                # the same tickets stay whatever the arrival order.
                oldest = min(state.open_tickets.items(), key=lambda t: (t[1].opened_at, t[0]))
                del state.open_tickets[oldest[0]]
                forget_ticket_marks(engine.pack, state, oldest[0])
                outcome.evicted_tickets.append(oldest[0])
    else:
        if ticket in state.open_tickets or ticket not in state.closed_tickets:
            state.open_tickets.pop(ticket, None)
            closing: str = known.priority if known is not None else event.priority or "normal"
            outcome.outcome_records.append(ticket_closed(
                state.customer_id, occurred, None if known is None else known.opened_at,
                category, closing, engine.pack.ticket_sla_hours[closing], event.satisfaction))
            remember(state.closed_tickets, ticket, CLOSED_TICKETS_KEPT)
            forget_ticket_marks(engine.pack, state, ticket)
            signals.add("ticket_closed")
        if event.satisfaction is not None:
            insort(state.ratings, (occurred, event.satisfaction))
            del state.ratings[: -engine.pack.scoring.satisfaction_sample]
    return frozenset(signals)


def _apply_profile(state: CustomerState, event: Profile) -> None:
    fields = event.model_fields_set
    if event.birthday is not None:
        state.birthday = event.birthday.isoformat()
    if event.signup_date is not None:
        state.signup_date = event.signup_date.isoformat()
    if event.tier is not None:
        state.tier = event.tier
    if event.account_manager is not None:
        state.account_manager = event.account_manager
    if event.timezone is not None:
        state.timezone = event.timezone
    if event.region is not None:
        state.region = event.region
    if event.tags is not None:
        state.tags = list(event.tags)
    # Only whether a channel exists is kept; an explicit null removes it.
    if "email" in fields:
        state.has_email = bool(event.email)
    if "phone" in fields:
        state.has_phone = bool(event.phone)
