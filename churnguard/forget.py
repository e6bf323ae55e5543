"""Forgetting a customer: `churnguard forget CUSTOMER_ID --reason TEXT --actor NAME` (and an
admin's POST /customers/{id}/forget, streams/insights.py).

The erasure is an event (`type: erasure`, schemas/events.py) on the combined input topic,
keyed by the customer: the owning worker applies it in order with the customer's other
events and deletes the state (a changelog tombstone, so a restored replica forgets too),
its due-index entry (its timers) and its place in the census; a later event of the id
starts a fresh customer. The KPI and feedback figures keep their counts (they hold no
customer). Records already on the action, score and outcome topics age out with those
topics' retention. Who and why go to the audit trail, never on the input topic."""

from __future__ import annotations

import argparse
import time
import uuid

import orjson

from churnguard.audit import AuditEntry, write_entry
from churnguard.core.clock import rfc3339
from churnguard.core.validation import Rejected, parse_event
from churnguard.errors import UserError

MAX_REASON_CHARS = 200


def erasure_record(customer_id: str, now: float) -> tuple[bytes, bytes]:
    """(key, value) of the erasure event, validated as the worker will validate it."""
    value = orjson.dumps({"type": "erasure", "event_id": f"erasure-{uuid.uuid4().hex}",
                          "customer_id": customer_id, "occurred_at": rfc3339(now)})
    parsed = parse_event(value, "", now=now, max_future_hours=1)
    if isinstance(parsed, Rejected):
        raise UserError(f"forget: {customer_id!r} is not a customer id ({parsed.reason})")
    return parsed.customer_id.encode(), value


def clean_reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text or len(text) > MAX_REASON_CHARS or not text.isprintable():
        raise UserError(f"forget: --reason must be 1–{MAX_REASON_CHARS} printable characters "
                        "(why, for the audit trail: e.g. a request's reference, not personal "
                        "data)")
    return text


def add_forget_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    forget = commands.add_parser(
        "forget", help="erase a customer: the owning worker deletes their state, history "
        "and timers; the erasure goes on the audit trail")
    forget.add_argument("customer_id")
    forget.add_argument("--reason", required=True, help="why (kept on the audit trail)")
    forget.add_argument("--actor", required=True, help="who erases (kept on the audit trail)")
    forget.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_forget_command(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from streams.settings import command_settings

    settings = command_settings(args.broker)
    reason = clean_reason(args.reason)
    actor = " ".join(args.actor.split())
    if not actor or len(actor) > 64 or not actor.isprintable():
        raise UserError("forget: --actor must be 1–64 printable characters (who erases)")
    now = time.time()
    key, value = erasure_record(args.customer_id, now)
    link = settings.link
    try:
        link.send_one(settings.topics.events, key, value)
    except KafkaError as exc:
        raise UserError(f"forget: the erasure could not be written to {settings.topics.events} "
                        f"on {link.bootstrap} ({type(exc).__name__}); {link.unreachable_hint()}"
                        ) from None
    try:
        write_entry(link, settings.topics.audit, AuditEntry(
            "customer_forgotten", actor, now, customer_id=key.decode(), message=reason))
    except UserError as exc:
        raise UserError(f"forget: the erasure is sent, but {exc}; run the same command again "
                        "(an erasure is applied once more, harmlessly) to record it") from None
    print(f"erasure of {key.decode()!r} sent: the worker owning it deletes its state within "
          "seconds; recorded on the audit trail")
    return 0
