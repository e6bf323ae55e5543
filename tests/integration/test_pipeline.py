"""End to end on the embedded broker: a worker child process, events published with
kafka-python to the input topics, the exact actions read back from the action topics."""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.state import CustomerState
from churnguard.engine import build_engine
from churnguard.processes import stop_process_group
from churnguard.replay import read_events, replay
from tests.integration.pipeline_support import Pipeline, wait_for

pytestmark = pytest.mark.integration

BAD_VALUE = b'{"event_id": "bad-1", "customer_id": "c1", "amount": '


def event(kind: str, eid: str, customer: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": eid, "customer_id": customer,
            "occurred_at": rfc3339(at), **fields}


def untyped(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "type"}


def expected_actions(
    pipeline: Pipeline, events: list[dict[str, Any]], until: float, *, live_from: float = 0.0
) -> list[Any]:
    """What a replay fires, less the time-driven actions due before `live_from` minus their
    24 h grace: a live worker that receives old history records those as expired."""
    lines = [orjson.dumps(e) for e in events]
    parsed, bad = read_events(lines, now=until, max_future_hours=24)
    assert bad == []
    stale = rfc3339(live_from - DAY)
    return [a for a in replay(parsed, build_engine(pipeline.settings), until=until)
            if a.caused_by or a.created_at >= stale]


def test_events_in_actions_out_with_a_dead_letter(pipeline_factory: Any) -> None:
    now = time.time()
    pipeline: Pipeline = pipeline_factory(now)
    topics = pipeline.topics
    t = now - 2 * HOUR
    events = [
        event("ticket", "k1", "c1", t + 60, ticket_id="T1", status="opened", priority="high"),
        event("ticket", "k2", "c1", t + 600, ticket_id="T1", status="closed", satisfaction=5),
        event("purchase", "o1", "c2", t + 10, order_id="A", amount="6000.00", currency="EUR"),
        event("purchase", "o2", "c2", t + 20, order_id="B", amount="4500.50", currency="EUR"),
        event("profile", "p3", "c3", t, account_manager="am-1", email="x@example.com"),
    ]
    pipeline.start()
    # Per-type topics (no `type`) and the combined topic both feed the worker. Order holds
    # within a topic: a customer's dependent events share one here.
    pipeline.send(topics.tickets, untyped(events[0]))
    pipeline.send(topics.tickets, BAD_VALUE, key=b"c1")  # truncated JSON
    pipeline.send(topics.tickets, untyped(events[1]))
    pipeline.send(topics.events, events[2])
    pipeline.send(topics.events, events[3])
    pipeline.send(topics.events, events[3])  # a duplicate event_id is applied once
    pipeline.send(topics.profiles, untyped(events[4]))
    pipeline.flush()

    want = expected_actions(pipeline, events, until=now)
    assert [(a.customer_id, a.rule_id) for a in want] == [
        ("c2", "vip_upgrade"), ("c2", "vip_upgrade"),
        ("c1", "ticket_opened_ack"), ("c1", "ticket_closed_survey"),
    ]
    wait_for("the four actions and one dead letter",
             lambda: len(pipeline.actions()) >= 4 and len(pipeline.of(topics.dlq)) >= 1)
    got = {a["action_id"]: a for a in pipeline.actions()}
    assert sorted((a["customer_id"], a["rule_id"], a["type"], a["created_at"])
                  for a in got.values()) == sorted(
        (a.customer_id, a.rule_id, a.type, a.created_at) for a in want)
    assert sorted(got) == sorted(a.action_id for a in want)
    for action in want:
        assert got[action.action_id] == orjson.loads(orjson.dumps(action.to_record(), default=str))

    ack = next(a for a in got.values() if a["rule_id"] == "ticket_opened_ack")
    assert ack["payload"]["channel"] == "push"  # no email or phone known for c1
    assert ack["payload"]["variables"]["expected_resolution_at"] == rfc3339(t + 60 + 24 * HOUR)
    upgrade = next(a for a in got.values() if a["type"] == "profile_update")
    assert upgrade["payload"]["set"] == {"tier": "vip"}
    assert [r["type"] for r in pipeline.of(topics.profile_updates)] == ["profile_update"]

    [dead] = pipeline.of(topics.dlq)
    assert dead["kind"] == "malformed_json"
    assert dead["source"]["topic"] == topics.tickets
    assert dead["source"]["offset"] >= 0
    # Not JSON: not kept (it may hold anything), only described.
    assert dead["value_b64"] is None
    assert dead["value_length"] == len(BAD_VALUE)
    assert dead["value_sha256"] == hashlib.sha256(BAD_VALUE).hexdigest()
    assert base64.b64decode(dead["key_b64"]) == b"c1"
    # The customer of the bad record still has its later events applied (the survey above).
    # Each batch publishes a customer's latest score: the last one is the final state's.
    states: dict[str, CustomerState] = {}
    parsed, _ = read_events([orjson.dumps(e) for e in events], now=now, max_future_hours=24)
    for _ in replay(parsed, build_engine(pipeline.settings), until=now, states=states):
        pass
    wait_for("the final scores", lambda: {
        r["customer_id"]: (r["score"], r["segment"]) for r in pipeline.of(topics.scores)
    } == {c: (s.score, s.segment) for c, s in states.items()})


def test_timers_fire_on_the_worker_clock_once_across_a_restart(pipeline_factory: Any) -> None:
    t0 = time.time()
    pipeline: Pipeline = pipeline_factory(t0)
    topics = pipeline.topics
    # Logins that leave the 30-day window at a midnight between t0 + 6 h and t0 + 30 h.
    login_day = (math.floor((t0 + 6 * HOUR) / DAY) + 1 - 30) * DAY
    events = [
        # Urgent ticket: SLA breach due at t0 + 1 h.
        event("ticket", "k1", "s1", t0 - 3 * HOUR, ticket_id="U1", status="opened",
              priority="urgent"),
        # First purchase: onboarding tips due at t0 + 2 h.
        event("purchase", "o1", "s2", t0 - 7 * DAY + 2 * HOUR, order_id="A", amount="20",
              currency="EUR"),
        # Old history (its stale timers expire), then logins that lift the score to 68.5 at
        # t0; when they leave the 30-day window (t0 + 6..30 h) it drops below 60 with no
        # event at all: the win-back must fire at that moment.
        event("purchase", "o2", "s3", t0 - 60 * DAY, order_id="B", amount="50", currency="EUR"),
        *[event("login", f"l{i}", "s3", login_day + i * 60) for i in range(10)],
    ]
    pipeline.start()
    for e in events:
        pipeline.send(topics.events, e)
    pipeline.flush()
    wait_for("a score record for each customer",
             lambda: {r["customer_id"] for r in pipeline.of(topics.scores)} >= {"s1", "s2", "s3"})
    wait_for("the ticket acknowledgement", lambda: len(pipeline.actions()) >= 1)
    # Nothing is due yet on the worker's clock: only the event-driven acknowledgement.
    assert [a["rule_id"] for a in pipeline.actions()] == ["ticket_opened_ack"]

    # Time passes on the worker's clock: the SLA breach fires, nothing else is due yet.
    pipeline.set_clock(t0 + 90 * 60)
    wait_for("the SLA breach", lambda: len(pipeline.actions()) >= 2)
    others = [a for a in pipeline.actions() if a["rule_id"] != "ticket_opened_ack"]
    assert [(a["customer_id"], a["rule_id"], a["created_at"]) for a in others] == [
        ("s1", "ticket_sla_breach", rfc3339(t0 + HOUR))]
    [breach] = others
    assert (breach["customer_id"], breach["rule_id"]) == ("s1", "ticket_sla_breach")
    assert breach["created_at"] == rfc3339(t0 - 3 * HOUR + 4 * HOUR)

    # Restart without a clean shutdown, then let the clock run on for a day and a half.
    pipeline.stop(kill=True)
    pipeline.start()
    for step in range(1, 13):
        moment = t0 + step * 3 * HOUR
        pipeline.set_clock(moment)
        due = {a.action_id for a in expected_actions(pipeline, events, moment, live_from=t0)}
        wait_for(f"what is due at t0 + {3 * step} h",
                 lambda due=due: {a["action_id"] for a in pipeline.actions()} >= due)
    want = expected_actions(pipeline, events, t0 + 36 * HOUR, live_from=t0)
    got = Counter(a["action_id"] for a in pipeline.actions())
    assert set(got) == {a.action_id for a in want}
    # Each fired once: the fired markers were written with the actions, under one commit.
    assert set(got.values()) == {1}
    fired = Counter((a.customer_id, a.rule_id) for a in want)
    assert fired == {("s1", "ticket_opened_ack"): 1, ("s1", "ticket_sla_breach"): 1,
                     ("s2", "onboarding_tips"): 1, ("s3", "health_winback"): 3,
                     ("s3", "inactive_30d_followup"): 1}
    winback = [a for a in want if a.rule_id == "health_winback"]
    assert all(a.caused_by == () and a.created_at > rfc3339(t0) for a in winback)


def test_timers_fire_once_while_partitions_move_between_workers(pipeline_factory: Any) -> None:
    t0 = time.time()
    pipeline: Pipeline = pipeline_factory(t0)
    customers = [f"r{n}" for n in range(12)]  # spread over the 4 partitions
    events = [
        event("ticket", f"k-{c}", c, t0 - 3 * HOUR, ticket_id=f"T-{c}", status="opened",
              priority="urgent")  # SLA breach due at t0 + 1 h
        for c in customers
    ] + [
        event("purchase", f"o-{c}", c, t0 - 7 * DAY + 3 * HOUR, order_id=f"O-{c}",
              amount="30", currency="EUR")  # onboarding tips due at t0 + 3 h
        for c in customers
    ]
    pipeline.start()
    for e in events:
        pipeline.send(pipeline.topics.events, e)
    pipeline.flush()
    wait_for("the acknowledgements", lambda: len(pipeline.actions()) >= len(customers))

    # A second worker joins: the partitions (and their timers) are split between the two.
    other = pipeline.start_another("b")
    pipeline.set_clock(t0 + 2 * HOUR)
    wait_for("every SLA breach", lambda: sum(
        a["rule_id"] == "ticket_sla_breach" for a in pipeline.actions()) >= len(customers))

    # Each worker fired the timers of the partitions it owned.
    assert "timers_fired" in (pipeline.tmp / "worker-b.log").read_text()
    assert "timers_fired" in pipeline.log()
    # It leaves again: its partitions come back to the first worker with their timers.
    stop_process_group(other)
    pipeline.set_clock(t0 + 4 * HOUR)
    wait_for("every onboarding tip", lambda: sum(
        a["rule_id"] == "onboarding_tips" for a in pipeline.actions()) >= len(customers))

    want = expected_actions(pipeline, events, t0 + 4 * HOUR, live_from=t0)
    got = Counter(a["action_id"] for a in pipeline.actions())
    assert set(got) == {a.action_id for a in want}
    assert set(got.values()) == {1}, "a timer fired twice across the rebalances"
    assert Counter(a.rule_id for a in want) == {
        "ticket_opened_ack": 12, "ticket_sla_breach": 12, "onboarding_tips": 12}
