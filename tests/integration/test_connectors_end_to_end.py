"""The connectors around a real worker on the embedded broker: events POSTed to
`churnguard gateway` -> the worker -> actions -> `churnguard deliver` -> a webhook receiver
that fails, rate-limits and refuses some. The receiver ends with exactly the actions a replay
of the same events expects (less those it refused, which are in the delivery DLQ), and the
worker counts the deliver's feedback."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from churnguard.access_tokens import new_token
from churnguard.core.clock import rfc3339
from churnguard.engine import build_engine
from churnguard.replay import read_events, replay
from connectors.embedded_broker import EmbeddedBroker
from tests.integration.connector_support import Deliver, Gateway, Receiver, read_all
from tests.integration.pipeline_support import Pipeline, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = 24


def _events(now: float) -> list[dict[str, Any]]:
    """Per customer a ticket opened (acknowledged) and closed (surveyed) and a purchase;
    every fourth customer spends past the VIP threshold. Times in the last hour, in order."""
    events: list[dict[str, Any]] = []
    for c in range(CUSTOMERS):
        customer, at = f"e2e-{c:02d}", now - 3000 + c * 60
        amount = "12000" if c % 4 == 0 else "40"
        events += [
            {"type": "ticket", "event_id": f"{customer}-t1", "customer_id": customer,
             "occurred_at": rfc3339(at), "ticket_id": f"T{c}", "status": "opened",
             "priority": "high"},
            {"type": "purchase", "event_id": f"{customer}-p1", "customer_id": customer,
             "occurred_at": rfc3339(at + 10), "order_id": f"O{c}", "amount": amount,
             "currency": "EUR"},
            {"type": "ticket", "event_id": f"{customer}-t2", "customer_id": customer,
             "occurred_at": rfc3339(at + 20), "ticket_id": f"T{c}", "status": "closed"},
        ]
    return sorted(events, key=lambda e: e["occurred_at"])


def test_events_posted_to_the_gateway_reach_the_webhook_as_the_replays_actions(
    pipeline_factory: Any, shared_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    now = time.time()
    pipeline: Pipeline = pipeline_factory(now)
    events = _events(now)
    parsed, bad = read_events([orjson.dumps(e) for e in events], now=now, max_future_hours=24)
    assert bad == []
    want = {a.action_id: a for a in replay(parsed, build_engine(pipeline.settings))}
    assert {a.rule_id for a in want.values()} >= {"ticket_opened_ack", "ticket_closed_survey",
                                                  "vip_upgrade"}
    refused = {ident for ident in want if ident.startswith("0")}  # the receiver's choice

    token, stored = new_token("shop", ["ingest"])
    pipeline.start()
    gateway = Gateway(pipeline, stored.line(), tmp_path)
    receiver = Receiver(tmp_path)
    receiver.start()
    deliver = Deliver(shared_broker, pipeline.topics,
                      f"http://127.0.0.1:{receiver.port}/hook", tmp_path)
    deliver.start()
    try:
        # In time order, one batch at a time, to a running worker: the gateway puts a
        # customer's events on one partition in the order posted, so the live worker
        # applies each customer's ticket, purchase and close in that order, as the replay.
        for start in range(0, len(events), 20):
            status, body = gateway.post(events[start:start + 20], token)
            assert status == 202, body
            assert len(body["accepted"]) == len(events[start:start + 20])
        wait_for("every action delivered or refused",
                 lambda: set(receiver.keys()) >= set(want) - refused, timeout=90)
        wait_for("the refused ones dead-lettered", lambda: {
            d["action_id"] for d in read_all(shared_broker, pipeline.topics.delivery_dlq)
        } >= refused)
    finally:
        deliver.stop(kill=True)
        gateway.stop()
        receiver.kill()

    assert set(receiver.keys()) == set(want) - refused
    # A fresh reader's first poll can come back before its first fetch does.
    with contextlib.suppress(AssertionError):  # the comparison below says what is missing
        wait_for("the worker's actions read",
                 lambda: {a["action_id"] for a in pipeline.actions()} >= set(want))
    actions = {a["action_id"]: a for a in pipeline.actions()}
    assert set(actions) == set(want)
    for ident, action in want.items():
        assert actions[ident] == orjson.loads(orjson.dumps(action.to_record(), default=str))

