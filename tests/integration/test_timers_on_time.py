"""A worker on the wall clock fires each timer at its due moment, not at its next poll: with a
tick interval of 5 s, SLA breaches due 2 s, 3.3 s and 4.6 s after their tickets were sent
each go out well within a second. (A tick every 5 s would give each a delay somewhere in
0..5 s, and at most one of three dues 1.3 s apart could fall within 0.5 s before a tick.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from churnguard.core.clock import HOUR, parse_rfc3339, rfc3339
from tests.integration.pipeline_support import Pipeline, wait_for

pytestmark = pytest.mark.integration

TICK_INTERVAL_S = 5.0
# Well below the interval; on an idle worker the delay is the tick and its produce.
BOUND_S = 0.5


def test_a_wall_clock_worker_fires_each_timer_at_its_due_not_at_the_next_tick(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory(clock_file=None, tick_interval_s=TICK_INTERVAL_S)
    pipeline.start()
    # One customer, three urgent tickets (SLA 4 h): the first due is told to the sleeping
    # tick loop by the batch that indexes it, the next ones by each tick's seek after its
    # write (the customer's index entry moves to its next due).
    start = time.time()
    dues = [round(start + 2.0 + 1.3 * k, 3) for k in range(3)]
    for k, due in enumerate(dues):
        pipeline.send(pipeline.topics.events, {
            "type": "ticket", "event_id": f"open-{k}", "customer_id": "w1",
            "occurred_at": rfc3339(due - 4 * HOUR), "ticket_id": f"T{k}", "status": "opened",
            "priority": "urgent"})
    pipeline.flush()

    def breaches() -> dict[str, dict[str, Any]]:
        return {a["action_id"]: a for a in pipeline.actions()
                if a["rule_id"] == "ticket_sla_breach"}

    wait_for("the three SLA breaches", lambda: len(breaches()) >= 3,
             timeout=dues[-1] - time.time() + 30)
    fired = sorted(breaches().values(), key=lambda a: str(a["created_at"]))
    assert [a["created_at"] for a in fired] == [rfc3339(due) for due in dues]
    # The record's timestamp (when the worker produced it) minus the moment it fell due.
    delays = [pipeline.stamps[a["action_id"]] / 1000 - parse_rfc3339(a["created_at"])
              for a in fired]
    assert all(-0.001 <= delay < BOUND_S for delay in delays), delays
    assert "timers_fired" in pipeline.log()
