"""Personal data planted in every input field that may carry it — a profile's name, e-mail
and phone, a ticket's comment, an action feedback's note, and the same in events that are
rejected — never reaches a log line, an output topic, the state changelog, the dead-letter
topic or the audit trail of a live worker (docs/security.md, "Personal data")."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer

from churnguard.core.clock import rfc3339
from tests.integration.pipeline_support import Pipeline, http_get, wait_for

pytestmark = pytest.mark.integration

NAME = "Plantedname Personsson"
EMAIL = "planted.person@example.com"
PHONE = "+49 151 2345 6789"
COMMENT = "PLANTED-COMMENT my flat is at 1 Secret Street"
NOTE = "PLANTED-NOTE call me at home"
PLANTED = (NAME, EMAIL, PHONE, COMMENT, NOTE, "Secret Street", "2345 6789")


def _events(now: float) -> list[dict[str, Any]]:
    at = [rfc3339(now - 3600 + 60 * n) for n in range(8)]
    customer = "pd-1"
    return [
        {"type": "profile", "event_id": "pd-p1", "customer_id": customer, "occurred_at": at[0],
         "name": NAME, "email": EMAIL, "phone": PHONE, "tier": "standard"},
        {"type": "ticket", "event_id": "pd-t1", "customer_id": customer, "occurred_at": at[1],
         "ticket_id": "T1", "status": "opened", "priority": "high", "comment": COMMENT},
        {"type": "ticket", "event_id": "pd-t2", "customer_id": customer, "occurred_at": at[2],
         "ticket_id": "T1", "status": "closed", "satisfaction": 1, "comment": COMMENT},
        {"type": "action_feedback", "event_id": "pd-f1", "customer_id": customer,
         "occurred_at": at[3], "action_id": "a" * 32, "status": "opened", "note": NOTE},
        # Rejected ones, dead-lettered: their personal fields must not go with them.
        {"type": "profile", "event_id": "pd-bad1", "customer_id": customer,
         "occurred_at": at[4], "name": NAME, "email": EMAIL, "phone": PHONE,
         "signup_date": "not a date"},
        {"type": "ticket", "event_id": "pd-bad2", "customer_id": customer,
         "occurred_at": at[5], "ticket_id": "T2", "status": "maybe", "comment": COMMENT},
        {"type": "action_feedback", "event_id": "pd-bad3", "customer_id": customer,
         "occurred_at": at[6], "action_id": "a" * 32, "status": "loved", "note": NOTE},
        {"type": "login", "event_id": "pd-l1", "customer_id": customer, "occurred_at": at[7]},
    ]


def _every_record(pipeline: Pipeline) -> list[bytes]:
    """Every key and value on every topic of the deployment but the input it was sent to."""
    reader = KafkaConsumer(bootstrap_servers=pipeline.settings.bootstrap,
                           enable_auto_commit=False, group_id=None,
                           auto_offset_reset="earliest")
    try:
        prefix = pipeline.topics.events.split(".", 1)[0] + "."
        topics = {t for t in reader.topics()
                  if t.startswith(prefix) or t.startswith(pipeline.settings.app_id)}
        topics.discard(pipeline.topics.events)
        assert {pipeline.topics.dlq, pipeline.topics.audit} <= topics
        reader.subscribe(sorted(topics))
        found: list[bytes] = []
        idle = 0
        while idle < 10:  # ten empty polls in a row: every topic read to its end
            batch = reader.poll(timeout_ms=200)
            idle = 0 if batch else idle + 1
            found += [part for messages in batch.values() for m in messages
                      for part in (m.key, m.value) if part]
        return found
    finally:
        reader.close()


def test_planted_personal_data_is_in_no_log_and_on_no_topic(pipeline_factory: Any) -> None:
    now = time.time()
    pipeline: Pipeline = pipeline_factory(now)
    pipeline.start()
    for event in _events(now):
        pipeline.send(pipeline.topics.events, event)
    pipeline.flush()
    port = pipeline.http_port()
    wait_for("the events applied and the bad ones dead-lettered", lambda: len(
        pipeline.of(pipeline.topics.dlq)) == 3 and http_get(port, "/customers/pd-1")[0] == 200
        and orjson.loads(http_get(port, "/customers/pd-1")[1])["lifetime"]["logins_30d"] == 1)
    view = http_get(port, "/customers/pd-1?personal=true")[1]  # an admin's, audited
    assert orjson.loads(view)["profile"]["has_email"] is True
    assert http_get(port, "/customers/pd-1", "viewer")[0] == 403  # refused, audited
    # The worker's shutdown flushes every log line it has.
    pipeline.stop()

    records = _every_record(pipeline)
    assert len(records) > 20
    text = b"\n".join(records).decode(errors="replace")
    found = [p for p in PLANTED if p in text]
    assert found == [], f"on a topic: {found}"
    log = pipeline.log()
    assert '"http_listening"' in log  # the scan read the worker's log
    found = [p for p in PLANTED if p in log]
    assert found == [], f"in the log: {found}"
    assert "pd-1" in text  # the customer's id is there: the scan read the records
