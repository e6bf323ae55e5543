"""A customer's events on different per-type topics are applied in record-timestamp order even
when one topic has a backlog many fetches long and another arrives whole in the first fetch:
the actions and their ids equal a replay's (issue 16, defect 1)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import orjson
import pytest

from churnguard.core.clock import parse_rfc3339, rfc3339
from churnguard.engine import build_engine
from churnguard.replay import read_events, replay
from tests.integration.pipeline_support import Pipeline, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = 40
SMALL_PURCHASES = 750  # 30,000 records on the purchases topic: several fetches per partition


def workload(start: float) -> list[dict[str, Any]]:
    """Per customer: 750 purchases of 13 (9,750), then the one that crosses 10,000, then a
    CRM profile update to tier=vip a second later. Applied before the crossing purchase, that
    profile would suppress `vip_upgrade` (its `where_not: tier=vip`)."""
    events: list[dict[str, Any]] = []
    step = 3000.0 / SMALL_PURCHASES
    for c in range(CUSTOMERS):
        customer = f"c{c:03d}"
        for n in range(SMALL_PURCHASES):
            events.append({"type": "purchase", "event_id": f"{customer}-p{n}",
                           "customer_id": customer, "occurred_at": rfc3339(start + n * step + c),
                           "order_id": f"{customer}-o{n}", "amount": "13", "currency": "EUR"})
        crossing = start + 3100 + c
        events.append({"type": "purchase", "event_id": f"{customer}-big",
                       "customer_id": customer, "occurred_at": rfc3339(crossing),
                       "order_id": f"{customer}-big", "amount": "500", "currency": "EUR"})
        events.append({"type": "profile", "event_id": f"{customer}-crm",
                       "customer_id": customer, "occurred_at": rfc3339(crossing + 1),
                       "tier": "vip", "account_manager": "am-1"})
    events.sort(key=lambda e: e["occurred_at"])
    return events


def test_per_type_topics_with_a_backlog_give_the_replay_actions(pipeline_factory: Any) -> None:
    now = time.time()
    pipeline: Pipeline = pipeline_factory(now)
    topics = pipeline.topics
    events = workload(now - 3600)
    parsed, bad = read_events([orjson.dumps(e) for e in events], now=now, max_future_hours=24)
    assert bad == []
    want = {a.action_id: a for a in replay(parsed, build_engine(pipeline.settings))}
    assert sum(a.rule_id == "vip_upgrade" for a in want.values()) == 2 * CUSTOMERS

    # Pre-produced (a backlog), stamped with event time, before the worker starts.
    topic_of = {"purchase": topics.purchases, "profile": topics.profiles}
    for e in events:
        at_ms = int(parse_rfc3339(e["occurred_at"]) * 1000)
        value = orjson.dumps({k: v for k, v in e.items() if k != "type"})
        pipeline.producer.send(topic_of[e["type"]], key=e["customer_id"].encode(), value=value,
                               timestamp_ms=at_ms)
    pipeline.flush()
    pipeline.start()

    with contextlib.suppress(AssertionError):  # the comparison below says what is missing
        wait_for(f"{len(want)} actions",
                 lambda: len({a["action_id"] for a in pipeline.actions()}) >= len(want))
    got = {a["action_id"]: a for a in pipeline.actions()}
    assert sorted((a["customer_id"], a["rule_id"], a["type"]) for a in got.values()) == sorted(
        (a.customer_id, a.rule_id, a.type) for a in want.values())
    assert sorted(got) == sorted(want)
    for ident, action in want.items():
        assert got[ident] == orjson.loads(orjson.dumps(action.to_record(), default=str))
    assert "cross_topic_merge_stopped_waiting" not in pipeline.log()

