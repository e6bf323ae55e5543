"""Data retention on a live worker: a customer with no event (of any type) for the rule
pack's retention_days (default 1095) is removed by the timer tick — state, due-index entry
and census place — and counted on /metrics; a customer active meanwhile stays. After a
restart that rebuilds the store from the changelog the removed customer is not back; a later
event of its id starts a fresh customer. The worker runs on a clock file: its clock is moved
past the horizon rather than events being dated years back."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from churnguard.core.clock import rfc3339
from churnguard.rules.loading import default_pack_text
from tests.integration.pipeline_support import (
    Pipeline,
    customer_history,
    customer_view,
    customers_counted,
    http_get,
    wait_for,
)

pytestmark = pytest.mark.integration

DAY = 86_400.0
RETENTION = 1095 * DAY  # the default pack's retention_days
NOW = time.time()  # the worker's clock (its clock file) when it starts
START = NOW - 3600  # both customers' first events
OLD, ACTIVE = "retire-me", "stay-active"
ACTIVE_LATER = NOW + 1000 * DAY  # ACTIVE's login: within its retention, moving it later
# Past OLD's retention (its latest event, START + 120, + RETENTION) by a day; long before
# ACTIVE's (ACTIVE_LATER + RETENTION).
PAST_OLD = START + 120 + RETENTION + DAY



def _login(customer: str, event_id: str, at: float) -> dict[str, Any]:
    return {"type": "login", "event_id": event_id, "customer_id": customer,
            "occurred_at": rfc3339(at)}




def _metric(port: int, name: str) -> float | None:
    """The sum of a /metrics series' samples (None: the series is absent)."""
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    values = [sample.value
              for family in text_string_to_metric_families(body.decode())
              for sample in family.samples if sample.name == name]
    return sum(values) if values else None



RETIRED = "churnguard_customers_retired_total"
CUSTOMERS = "churnguard_customers"  # the gauge, per partition (summed by _metric)


def test_an_inactive_customer_is_retired_and_stays_retired_through_a_restart(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory(NOW)
    pipeline.start()
    for customer in (OLD, ACTIVE):
        for event in customer_history(customer, START):
            pipeline.send(pipeline.topics.events, event)
    pipeline.flush()
    port = pipeline.http_port()
    wait_for("two customers stored and counted", lambda: all(
        customer_view(port, c)[0] == 200 for c in (OLD, ACTIVE)) and customers_counted(port) == 2)
    before = customer_view(port, OLD)[1]
    assert before["actions"]  # the ticket's acknowledgement at least
    assert before["lifetime"]["order_count"] == 1

    # 1000 days on: ACTIVE logs in (stamped at the worker's clock: not in the future), so
    # its retention moves 1000 days later; OLD's does not move.
    pipeline.set_clock(ACTIVE_LATER)
    pipeline.send(pipeline.topics.events, _login(ACTIVE, "active-login", ACTIVE_LATER))
    pipeline.flush()
    wait_for("ACTIVE's later login applied", lambda: customer_view(port, ACTIVE)[1]["lifetime"][
        "last_active_at"] >= rfc3339(ACTIVE_LATER - 1))
    # Nothing is past a retention yet: both still there, nothing retired.
    assert customer_view(port, OLD)[0] == 200
    assert customers_counted(port) == 2
    assert _metric(port, RETIRED) == 0
    assert _metric(port, CUSTOMERS) == 2

    # Past OLD's retention, before ACTIVE's: the tick removes OLD alone.
    pipeline.set_clock(PAST_OLD)
    wait_for("OLD retired, ACTIVE kept", lambda: customer_view(port, OLD)[0] == 404
             and customer_view(port, ACTIVE)[0] == 200)
    wait_for("the census without OLD", lambda: customers_counted(port) == 1)
    wait_for("the retirement counted", lambda: _metric(port, RETIRED) == 1)
    assert _metric(port, CUSTOMERS) == 1
    fired = pipeline.logged("timers_fired")
    assert [line["retired"] for line in fired if line["retired"]] == [1], fired

    # The store rebuilt from the changelog alone: the tombstone removes OLD there too.
    pipeline.stop()
    shutil.rmtree(pipeline.settings.store_dir)
    pipeline.start()
    port = pipeline.http_port()
    wait_for("ACTIVE restored", lambda: customer_view(port, ACTIVE)[0] == 200)
    assert customer_view(port, OLD)[0] == 404
    wait_for("the census restored without OLD", lambda: customers_counted(port) == 1)
    wait_for("the customers gauge restored", lambda: _metric(port, CUSTOMERS) == 1)

    # A later event of OLD's id starts a fresh customer: nothing of before.
    pipeline.send(pipeline.topics.events, _login(OLD, "old-after", PAST_OLD - 60))
    pipeline.flush()
    wait_for("OLD's id back as a new customer", lambda: customer_view(port, OLD)[0] == 200)
    fresh = customer_view(port, OLD)[1]
    assert fresh["lifetime"]["order_count"] == 0
    assert fresh["actions"] == []
    assert fresh["open_tickets"] == []
    assert fresh["profile"]["account_manager"] is None
    wait_for("the census with the fresh customer", lambda: customers_counted(port) == 2)
    assert customer_view(port, ACTIVE)[1]["lifetime"]["order_count"] == 1


def test_a_pack_without_retention_keeps_customers_forever(
    pipeline_factory: Any, tmp_path: Path,
) -> None:
    text = default_pack_text()
    assert "\nretention_days: 1095\n" in text
    rules = tmp_path / "forever.yaml"
    rules.write_text(text.replace("\nretention_days: 1095\n", "\nretention_days: null\n"))
    pipeline: Pipeline = pipeline_factory(NOW, rules_file=rules)
    pipeline.start()
    for event in customer_history(OLD, START):
        pipeline.send(pipeline.topics.events, event)
    pipeline.flush()
    port = pipeline.http_port()
    wait_for("the customer stored and counted", lambda: customer_view(port, OLD)[0] == 200
             and customers_counted(port) == 1)
    ticked = len(pipeline.logged("timers_fired"))
    # Past the default retention by a year: the tick that advances the customer to the new
    # clock (everything due up to it, in one advance) would retire it under the default pack.
    pipeline.set_clock(PAST_OLD + 365 * DAY)
    wait_for("a tick advanced the customer to the new clock",
             lambda: len(pipeline.logged("timers_fired")) > ticked)
    assert customer_view(port, OLD)[0] == 200
    assert customers_counted(port) == 1
    assert _metric(port, RETIRED) == 0
    assert _metric(port, CUSTOMERS) == 1
    assert all(not line["retired"] for line in pipeline.logged("timers_fired"))
