"""The customer 360: one customer's stored state rendered for people to read
(GET /customers/{id} serves it).

Why a pure function of the state and the pack: everything the 360 shows (profile, lifetime
figures, score and its trend, segment, open tickets, the latest actions with their feedback,
the win-back episodes in progress, the next due time) is already in the one `CustomerState`
the worker keeps per customer, so the HTTP side reads one key and calls this, with no other
store to join and nothing to get out of step. The same state gives the same view in a test,
in replay and behind the API.

What it never shows: personal data. The state keeps no name, email or phone (only whether a
channel exists), and the birthday, which it keeps for anniversary rules, is left out unless
asked for (`personal`, an admin's view).
Action targets are shown only for the kinds whose target is a business value (a channel, an
assignee queue or account manager, a coupon code); deferred action payloads and the rules'
trigger memory are internal and not shown.

The result is JSON-ready: only str, int, float, bool, None, lists and dicts, times as RFC 3339.
An action logged before rule versions and causes were kept shows `rule_version` 0 (published
rules start at 1) and an empty `caused_by`, as a timer's firing does.
"""

from __future__ import annotations

from typing import Any

from churnguard.core.clock import HOUR, day_number, rfc3339
from churnguard.core.outcomes import FLAGS
from churnguard.core.pack import RulePack
from churnguard.core.rules import retention_due
from churnguard.core.scoring import band_of
from churnguard.core.state import (
    LOGIN_WINDOW_DAYS,
    PURCHASE_WINDOW_DAYS,
    CustomerState,
    Episode,
    LoggedAction,
    OpenTicket,
    count_in_window,
)

# Action kinds whose LoggedAction.target is a business value, not a person's: the
# notification's channel, the task's assignee, the coupon's code.
TARGET_TYPES = frozenset({"notification", "task", "coupon"})
# Feedback statuses in LoggedAction.flags, in FLAGS order; redemption is shown on its own.
FEEDBACK_STATUSES = tuple(status for status in FLAGS if status != "redeemed")


def customer_view(
    state: CustomerState, pack: RulePack, *, now: float | None = None,
    personal: bool = False,
) -> dict[str, Any]:
    """The customer 360 of `state`, a JSON-ready dict. `now` (epoch seconds; default the
    customer's event-time clock) is when the purchase and login windows are counted; the
    score, segment and RFM are the stored ones, computed at the clock (`as_of`). `pack` is
    the running rule pack: it gives each open ticket its SLA deadline. `personal`: the
    personal fields kept (the birthday) are shown too (an admin's asked-for view)."""
    moment = state.clock if now is None else now
    today = day_number(moment)
    view: dict[str, Any] = {
        "customer_id": state.customer_id,
        "as_of": rfc3339(state.clock),
        "profile": {
            "tier": state.tier,
            "account_manager": state.account_manager,
            "region": state.region,
            "timezone": state.timezone,
            "signup_date": state.signup_date,
            "tags": list(state.tags),
            "has_email": state.has_email,
            "has_phone": state.has_phone,
        },
        "lifetime": {
            "order_count": state.order_count,
            "lifetime_spend": state.lifetime_spend,
            "first_purchase_at": _time(state.first_purchase_at),
            "last_purchase_at": _time(state.last_purchase_at),
            "last_active_at": _time(state.last_active_at),
            "last_event_at": _time(state.last_event_at),
            "purchases_90d": count_in_window(state.purchase_days, today, PURCHASE_WINDOW_DAYS),
            "logins_30d": count_in_window(state.login_days, today, LOGIN_WINDOW_DAYS),
            # At most CLOSED_TICKETS_KEPT are remembered (duplicate detection only).
            "closed_tickets_kept": len(state.closed_tickets),
        },
        "score": _score(state),
        "score_trend": [{"at": rfc3339(at), "score": score} for at, score in state.score_trend],
        "segment": state.segment,
        "rfm": None if state.rfm is None else dict(zip("rfm", state.rfm, strict=True)),
        "open_tickets": [
            _ticket(ticket_id, ticket, pack)
            for ticket_id, ticket in sorted(state.open_tickets.items(),
                                            key=lambda item: (item[1].opened_at, item[0]))
        ],
        "tags": list(state.tags),
        "actions": [_action(logged) for logged in reversed(state.actions_log)],
        "open_episodes": [_episode(episode) for episode in state.episodes],
        "next_due": _time(state.next_due),
        # When data retention removes the customer unless an event comes first.
        "retained_until": _time(retention_due(pack, state)),
    }
    if personal:
        view["personal"] = {"birthday": state.birthday}
    return view


def _time(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(ts)


def _score(state: CustomerState) -> dict[str, Any]:
    components = None
    if state.components is not None:
        recency, engagement, service = state.components
        components = {"recency": recency, "engagement": engagement, "service": service}
    return {"value": state.score, "band": band_of(state.score), "components": components}


def _ticket(ticket_id: str, ticket: OpenTicket, pack: RulePack) -> dict[str, Any]:
    hours = pack.ticket_sla_hours.get(ticket.priority)
    return {
        "ticket_id": ticket_id,
        "opened_at": rfc3339(ticket.opened_at),
        "priority": ticket.priority,
        "category": ticket.category,
        "sla_due_at": None if hours is None else rfc3339(ticket.opened_at + hours * HOUR),
    }


def _action(logged: LoggedAction) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "action_id": logged.action_id,
        "type": logged.type,
        "rule_id": logged.rule_id,
        "rule_version": logged.rule_version,
        "at": rfc3339(logged.at),
        "caused_by": list(logged.caused_by),
        "target": _target(logged),
        "feedback": [status for status in FEEDBACK_STATUSES if logged.flags & FLAGS[status]],
        "redeemed": bool(logged.flags & FLAGS["redeemed"]),
    }
    if logged.type == "coupon":
        shown["coupon"] = {"value": logged.value, "kind": logged.kind,
                           "expires_at": _time(logged.expires_at)}
    return shown


def _episode(episode: Episode) -> dict[str, Any]:
    return {
        "rule_id": episode.rule_id,
        "arm": episode.arm,
        "started_at": rfc3339(episode.started_at),
        "ends_at": rfc3339(episode.ends_at),
        "threshold": episode.threshold,
        "action_ids": list(episode.action_ids),
        "recovered": episode.recovered_at is not None,
        "recovered_at": _time(episode.recovered_at),
        "purchased": episode.purchased,
    }


def _target(logged: LoggedAction) -> str | None:
    if logged.type not in TARGET_TYPES or not logged.target:
        return None
    if logged.type == "coupon":
        # A code redeems: whoever reads the 360 sees which coupon, not one to spend.
        return "…" + logged.target[-4:]
    return logged.target
