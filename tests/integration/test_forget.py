"""Forgetting a customer (churnguard/forget.py) on a live worker: `churnguard forget` and an
admin's POST /customers/{id}/forget erase the customer's state, 360 history and place in the
census; after a restart that rebuilds the store from the changelog nothing of them is back;
a later event of the id starts a fresh customer; each erasure is on the audit trail."""

from __future__ import annotations

import shutil
import time
from typing import Any

import orjson
import pytest

from churnguard import cli
from churnguard.audit import read_audit
from churnguard.core.clock import rfc3339
from tests.integration.pipeline_support import (
    Pipeline,
    customer_history,
    customer_view,
    customers_counted,
    http_get,
    wait_for,
)

pytestmark = pytest.mark.integration

NOW = time.time()  # the worker's clock (its clock file): an erasure is stamped with the wall
GONE, KEPT, LATER = "forget-me", "keep-me", "forget-me-too"





def test_a_forgotten_customer_stays_forgotten_through_a_restart(
    pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline: Pipeline = pipeline_factory(NOW)
    pipeline.start()
    for customer in (GONE, KEPT, LATER):
        for event in customer_history(customer, NOW - 3600):
            pipeline.send(pipeline.topics.events, event)
    pipeline.flush()
    port = pipeline.http_port()
    wait_for("three customers stored and counted", lambda: all(
        customer_view(port, c)[0] == 200 for c in (GONE, KEPT, LATER))
        and customers_counted(port) == 3)
    before = customer_view(port, GONE)[1]
    assert before["actions"]  # the ticket's acknowledgement at least
    assert before["open_tickets"]

    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setenv("CHURNGUARD_TOPICS", pipeline.topics.model_dump_json())
    broker = ["--broker", pipeline.settings.broker]
    assert cli.main(["forget", GONE, "--reason", "erasure request 42", "--actor", "dpo",
                     *broker]) == 0
    assert "erasure of 'forget-me' sent" in capsys.readouterr().out
    # An admin's HTTP erasure of another.
    status, body = http_get(port, f"/customers/{LATER}/forget",
                            body=b'{"reason": "ticket 7"}')
    assert status == 202, body
    assert orjson.loads(body)["customer_id"] == LATER
    wait_for("both erased", lambda: customer_view(port, GONE)[0] == 404
             and customer_view(port, LATER)[0] == 404)
    assert customer_view(port, KEPT)[0] == 200
    wait_for("the census without them", lambda: customers_counted(port) == 1)
    # What is refused: no reason, not JSON, not an admin.
    assert http_get(port, f"/customers/{KEPT}/forget", body=b"{}")[0] == 400
    assert http_get(port, f"/customers/{KEPT}/forget", body=b"reason")[0] == 400
    assert http_get(port, f"/customers/{KEPT}/forget", "agent",
                    body=b'{"reason": "x"}')[0] == 403
    assert cli.main(["forget", KEPT, "--reason", " ", "--actor", "dpo", *broker]) == 2
    assert "--reason must be" in capsys.readouterr().err

    # The store rebuilt from the changelog alone: the tombstones erase them there too.
    pipeline.stop()
    shutil.rmtree(pipeline.settings.store_dir)
    pipeline.start()
    port = pipeline.http_port()
    wait_for("the kept customer restored", lambda: customer_view(port, KEPT)[0] == 200)
    assert customer_view(port, GONE)[0] == 404
    assert customer_view(port, LATER)[0] == 404
    wait_for("the census restored without them", lambda: customers_counted(port) == 1)

    # A later event of the id starts a fresh customer: nothing of before.
    pipeline.send(pipeline.topics.events, {
        "type": "login", "event_id": "after-1", "customer_id": GONE,
        "occurred_at": rfc3339(NOW - 60)})
    pipeline.flush()
    wait_for("the id back as a new customer", lambda: customer_view(port, GONE)[0] == 200)
    fresh = customer_view(port, GONE)[1]
    assert fresh["lifetime"]["order_count"] == 0
    assert fresh["actions"] == []
    assert fresh["open_tickets"] == []
    assert fresh["profile"]["account_manager"] is None

    entries, _ = read_audit(pipeline.settings.bootstrap, pipeline.topics.audit, since=0)
    forgotten = [(e.actor, e.customer_id, e.message) for e in entries
                 if e.action == "customer_forgotten"]
    assert forgotten == [("dpo", GONE, "erasure request 42"),
                         ("test-admin", LATER, "ticket 7")]
