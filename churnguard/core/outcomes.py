"""What happened after churnguard acted: win-back episodes, coupons redeemed, feedback on
actions, repeat purchases. Each is an *outcome record* (a plain dict, the value of the
`churnguard.outcomes` topic) that core/kpis.py folds into KPI aggregates — the same records
from the worker and from replay, so both compute the same figures. Definitions:
docs/kpis.md.

Every record names its *cohort*: the moment its KPI is counted at (an episode's start, an
action's sending, a first purchase), and the customer's dimensions then (tier, segment,
account manager, region), so a drill-down by week or by tier never moves a later outcome
into another row than its start."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from churnguard.core.clock import DAY, parse_rfc3339, rfc3339
from churnguard.core.specs import KpiSettings
from churnguard.core.state import (
    MAX_LOGGED_ACTIONS,
    SPEND_SCALE,
    CustomerState,
    Episode,
    LoggedAction,
)

Arm = Literal["treated", "held_out"]
OutcomeRecord = dict[str, Any]

# Bits of LoggedAction.flags: each feedback status and the redemption count once.
FLAGS = {"delivered": 1, "opened": 2, "clicked": 4, "completed": 8, "failed": 16,
         "redeemed": 32}


def _e4(amount: float) -> int:
    # Money in ten-thousandths, as the state's spend: sums are exact in any order.
    return round(amount * SPEND_SCALE)


def _dims(state: CustomerState) -> tuple[str, str, str, str]:
    return (state.tier, state.segment or "", state.account_manager or "", state.region or "")


def _record(kind: str, state: CustomerState, at: float, rule_id: str, cohort: float,
            dims: tuple[str, str, str, str], **fields: Any) -> OutcomeRecord:
    tier, segment, manager, region = dims
    return {"kind": kind, "customer_id": state.customer_id, "at": rfc3339(at),
            "rule_id": rule_id, "cohort_at": rfc3339(cohort), "tier": tier,
            "segment": segment, "account_manager": manager, "region": region, **fields}


def _episode_record(kind: str, state: CustomerState, at: float, episode: Episode,
                    **fields: Any) -> OutcomeRecord:
    dims = (episode.tier, episode.segment, episode.account_manager, episode.region)
    return _record(kind, state, at, episode.rule_id, episode.started_at, dims,
                   arm=episode.arm, **fields)


def start_episode(state: CustomerState, rule_id: str, arm: Arm, threshold: float,
                  action_ids: list[str], now: float, kpis: KpiSettings) -> OutcomeRecord | None:
    """A win-back rule fired (or was held out) at `now`. One episode per rule at a time: a
    firing while the rule's episode is undecided belongs to it; once that one recovered, a
    new episode ends its revenue window."""
    for episode in state.episodes:
        if episode.rule_id == rule_id and episode.recovered_at is None:
            return None
    state.episodes[:] = [e for e in state.episodes if e.rule_id != rule_id]
    tier, segment, manager, region = _dims(state)
    episode = Episode(rule_id, arm, now, now + kpis.recovery_window_days * DAY, threshold,
                      tier, segment, manager, region, list(action_ids))
    state.episodes.append(episode)
    return _episode_record("episode_started", state, now, episode,
                           ends_at=rfc3339(episode.ends_at), threshold=threshold,
                           action_ids=list(action_ids))


def expire_episodes(state: CustomerState, now: float) -> list[OutcomeRecord]:
    """Episodes whose window ended by `now`: an undecided one expired (at its window's end);
    a recovered one is done collecting revenue."""
    if not state.episodes:
        return []
    records = [_episode_record("episode_expired", state, e.ends_at, e)
               for e in state.episodes if e.ends_at <= now and e.recovered_at is None]
    state.episodes[:] = [e for e in state.episodes if e.ends_at > now]
    return records


def recover_by_score(state: CustomerState, now: float) -> list[OutcomeRecord]:
    """After a rescore: undecided episodes whose customer is back at their threshold."""
    if not state.episodes or state.score is None:
        return []
    records = []
    for index, episode in enumerate(state.episodes):
        if episode.recovered_at is None and now < episode.ends_at and (
                state.score >= episode.threshold):
            state.episodes[index] = episode._replace(recovered_at=now)
            records.append(_recovered(state, episode, now, "score"))
    return records


def _recovered(state: CustomerState, episode: Episode, at: float, by: str) -> OutcomeRecord:
    return _episode_record("episode_recovered", state, at, episode, by=by,
                           seconds_to_recovery=round(max(0.0, at - episode.started_at), 3))


def on_purchase(state: CustomerState, occurred: float, amount: float,
                coupon_code: str | None, first: bool,
                kpis: KpiSettings) -> list[OutcomeRecord]:
    """A purchase at `occurred`: it recovers the episodes open then, is their revenue,
    redeems its coupon, and is a first or a repeat purchase."""
    records: list[OutcomeRecord] = []
    for index, episode in enumerate(state.episodes):
        if not episode.started_at <= occurred < episode.ends_at:
            continue
        # Decided once: a late purchase from before a recovery by score does not move it.
        recovered_at = episode.recovered_at
        if recovered_at is None:
            recovered_at = occurred
            records.append(_recovered(state, episode, occurred, "purchase"))
        records.append(_episode_record("episode_revenue", state, occurred, episode,
                                       amount_e4=_e4(amount), first=not episode.purchased))
        state.episodes[index] = episode._replace(recovered_at=recovered_at, purchased=True)
    if coupon_code is not None:
        records += _redeem(state, coupon_code, occurred, amount)
    if first:
        records.append(_record("first_purchase", state, occurred, "", occurred, _dims(state)))
    elif state.order_count == 2 and state.first_purchase_at is not None:
        # The second purchase (order_count already counts this one).
        gap = occurred - state.first_purchase_at
        if 0 <= gap <= kpis.repeat_purchase_days * DAY:
            records.append(_record("repeat_purchase", state, occurred, "",
                                   state.first_purchase_at, _dims(state),
                                   days=round(gap / DAY, 3)))
    return records


def _redeem(state: CustomerState, code: str, occurred: float,
            amount: float) -> list[OutcomeRecord]:
    for index, logged in enumerate(state.actions_log):
        if logged.type != "coupon" or logged.target != code:
            continue
        if logged.flags & FLAGS["redeemed"] or (
                logged.expires_at is not None and occurred >= logged.expires_at):
            return []  # redeemed once only, and never after it expired
        state.actions_log[index] = logged._replace(flags=logged.flags | FLAGS["redeemed"])
        discount = amount * logged.value / 100 if logged.kind == "percent" else logged.value
        return [_logged_record("coupon_redeemed", state, occurred, logged,
                               order_amount_e4=_e4(amount), cost_e4=_e4(discount))]
    return []


def _logged_record(kind: str, state: CustomerState, at: float, logged: LoggedAction,
                   **fields: Any) -> OutcomeRecord:
    dims = (logged.tier, logged.segment, logged.account_manager, logged.region)
    return _record(kind, state, at, logged.rule_id, logged.at, dims,
                   action_id=logged.action_id, action_type=logged.type, target=logged.target,
                   **fields)


def on_feedback(state: CustomerState, action_id: str, status: str,
                occurred: float) -> list[OutcomeRecord] | None:
    """Feedback on an action: a record the first time each status is reported for it;
    None when the action is not one this customer was sent lately (not ours, or older than
    the MAX_LOGGED_ACTIONS remembered)."""
    for index, logged in enumerate(state.actions_log):
        if logged.action_id != action_id:
            continue
        bit = FLAGS[status]
        if logged.flags & bit:
            return []  # reported again (a retrying reporter): counted once
        state.actions_log[index] = logged._replace(flags=logged.flags | bit)
        return [_logged_record("action_feedback", state, occurred, logged, status=status)]
    return None


def log_actions(state: CustomerState, actions: Iterable[Any],
                kpis: KpiSettings) -> list[OutcomeRecord]:
    """Actions sent (core.rules.Action): remembered for feedback and redemptions, and
    counted with their cost."""
    records = []
    costs = kpis.costs
    for action in actions:
        payload = action.payload
        created = parse_rfc3339(action.created_at)
        expires, value, kind, cost = None, 0.0, "", 0.0
        match action.type:
            case "notification":
                target = payload["channel"]
                cost = getattr(costs, target, 0.0)
            case "task":
                target, cost = payload["assignee"], costs.task
            case "coupon":
                target, value, kind = payload["code"], float(payload["value"]), payload["kind"]
                expires = parse_rfc3339(payload["expires_at"])
            case _:
                target = ""
        logged = LoggedAction(action.action_id, action.type, action.rule_id, created, target,
                              *_dims(state), 0, expires, value, kind, action.rule_version,
                              tuple(action.caused_by))
        state.actions_log.append(logged)
        records.append(_logged_record("action_issued", state, created, logged,
                                      cost_e4=_e4(cost)))
    if len(state.actions_log) > MAX_LOGGED_ACTIONS:
        del state.actions_log[: len(state.actions_log) - MAX_LOGGED_ACTIONS]
    return records
