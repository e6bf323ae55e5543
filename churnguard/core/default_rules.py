"""The built-in rule pack, as data, with thresholds from the settings."""

from __future__ import annotations

from typing import Any

from churnguard.core.rules import RulePack
from streams.settings import RuleSettings


def default_pack_data(cfg: RuleSettings) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {
            "id": "ticket_opened_ack",
            "description": "Acknowledge a new ticket with the expected resolution time.",
            "when": {"on": "ticket_opened"},
            "actions": [{
                "type": "notification",
                "template": "ticket_acknowledgement",
                "variables": {
                    "ticket_id": "$event.ticket_id",
                    "priority": "$ticket.priority",
                    "expected_resolution_hours": "$ticket.expected_resolution_hours",
                    "expected_resolution_at": "$ticket.expected_resolution_at",
                },
            }],
        },
        {
            "id": "ticket_closed_survey",
            "description": "Ask for a satisfaction rating when a ticket closes.",
            "when": {"on": "ticket_closed"},
            "actions": [{
                "type": "notification",
                "template": "satisfaction_survey",
                "variables": {"ticket_id": "$event.ticket_id"},
            }],
        },
        {
            "id": "vip_upgrade",
            "description": "Upgrade to VIP once lifetime spend reaches the threshold.",
            "when": {"on": "threshold", "metric": "lifetime_spend",
                     "at_least": cfg.vip_spend_threshold, "once": True},
            "where_not": {"state.tier": "vip"},
            "actions": [
                {"type": "profile_update", "set": {"tier": "vip"}, "add_tags": ["vip"]},
                {"type": "notification", "template": "vip_welcome",
                 "variables": {"lifetime_spend": "$state.lifetime_spend"}},
            ],
        },
        {
            "id": "health_winback",
            "description": "Win back a customer whose health score falls below the threshold.",
            "when": {"on": "threshold", "metric": "health_score",
                     "below": cfg.winback_score_threshold},
            "actions": [
                {"type": "notification", "template": "winback_care",
                 "variables": {"health_score": "$score", "segment": "$segment"}},
                {"type": "task", "assignee": "account_manager", "priority": "high",
                 "due_in_hours": 24, "title": "Win-back call: health score dropped"},
                {"type": "coupon", "value": cfg.winback_coupon_value, "kind": "percent",
                 "expires_in_days": cfg.winback_coupon_days},
                {"type": "task", "assignee": "supervisor", "priority": "high",
                 "due_in_hours": 24, "title": "VIP at risk: review the win-back play",
                 "where": {"state.tier": "vip"}},
            ],
        },
        {
            "id": "onboarding_tips",
            "description": "Tips a week after the first purchase.",
            "when": {"on": "after", "anchor": "first_purchase", "days": cfg.onboarding_days},
            "actions": [{
                "type": "notification",
                "template": "onboarding_tips",
                "variables": {"faq_url": cfg.faq_url},
            }],
        },
        {
            "id": "birthday_coupon",
            "description": "A coupon on the birthday at 09:00 business time, once a year.",
            "when": {"on": "anniversary", "date": "birthday"},
            "actions": [{"type": "coupon", "value": cfg.birthday_coupon_value,
                         "kind": "percent", "expires_in_days": cfg.anniversary_coupon_days}],
        },
        {
            "id": "signup_anniversary_coupon",
            "description": "A coupon on the signup anniversary at 09:00 business time.",
            "when": {"on": "anniversary", "date": "signup_date"},
            "actions": [{"type": "coupon", "value": cfg.anniversary_coupon_value,
                         "kind": "percent", "expires_in_days": cfg.anniversary_coupon_days}],
        },
        {
            "id": "inactive_30d_followup",
            "description": "A churn-risk call after a silence with neither login nor purchase.",
            "when": {"on": "inactivity", "days": cfg.inactivity_days},
            "actions": [{"type": "task", "assignee": "account_manager", "priority": "high",
                         "due_in_hours": 24, "title": "Churn-risk call",
                         "details": {"silent_days": "$inactivity.days"}}],
        },
        {
            "id": "ticket_sla_breach",
            "description": "Escalate a ticket still open past its SLA.",
            "when": {"on": "ticket_overdue"},
            "actions": [{"type": "task", "assignee": cfg.escalation_queue, "priority": "urgent",
                         "due_in_hours": 1, "title": "Ticket past its SLA: escalate",
                         "details": {"ticket_id": "$ticket.ticket_id",
                                     "priority": "$ticket.priority",
                                     "opened_at": "$ticket.opened_at",
                                     "sla_hours": "$ticket.sla_hours"}}],
        },
    ]
    return {
        "rules": [rule for rule in rules if rule["id"] not in cfg.disabled],
        "ticket_sla_hours": cfg.ticket_sla_hours,
        "default_task_queue": cfg.default_task_queue,
        "supervisor_queue": cfg.supervisor_queue,
        "timezone": cfg.business_timezone,
    }


def default_pack(cfg: RuleSettings) -> RulePack:
    return RulePack.model_validate(default_pack_data(cfg))
