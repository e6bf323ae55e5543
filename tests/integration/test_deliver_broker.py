"""`churnguard deliver` on the embedded broker against an endpoint that fails a fifth of its
requests, rate-limits, hangs past the timeout, refuses some actions for good, and is killed
and restarted while deliver is killed -9 and restarted too: every action arrives at least
once, one customer's in order; exactly the refused ones are dead-lettered; feedback events
say which is which."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from connectors.admin import ensure_topics
from connectors.embedded_broker import EmbeddedBroker
from streams.settings import TopicNames
from tests.integration.connector_support import Deliver, Receiver, read_all
from tests.integration.pipeline_support import http_get, wait_for

pytestmark = pytest.mark.integration

ACTIONS = 240
CUSTOMERS = 30


@pytest.fixture
def topics(shared_broker: EmbeddedBroker) -> TopicNames:
    names = TopicNames().with_prefix(f"dl{time.time_ns() % 10**9}.")
    ensure_topics(shared_broker.bootstrap,
                  [*names.actions(), names.delivery_dlq, names.feedback], 4)
    return names


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    made = Receiver(tmp_path)
    yield made
    made.kill()


def _produce_actions(broker: EmbeddedBroker, topics: TopicNames) -> list[dict[str, Any]]:
    by_type = [("notification", topics.notifications), ("task", topics.tasks),
               ("coupon", topics.coupons), ("profile_update", topics.profile_updates)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    actions = []
    for index in range(ACTIONS):
        action_type, topic = by_type[index % 4]
        action = {"action_id": hashlib.sha256(f"a{index}".encode()).hexdigest()[:32],
                  "type": action_type, "customer_id": f"c{index % CUSTOMERS}",
                  "rule_id": "r", "payload": {"template": "t", "index": index}}
        producer.send(topic, key=action["customer_id"].encode(), value=orjson.dumps(action))
        actions.append({**action, "topic": topic})
    producer.flush(timeout=30)
    producer.close(timeout=5)
    return actions


def test_every_action_arrives_at_least_once_through_failures_and_kills(
    shared_broker: EmbeddedBroker, topics: TopicNames, receiver: Receiver, tmp_path: Path
) -> None:
    actions = _produce_actions(shared_broker, topics)
    refused = {a["action_id"] for a in actions if a["action_id"].startswith("0")}
    wanted = {a["action_id"] for a in actions} - refused
    assert refused
    assert wanted

    deliver = Deliver(shared_broker, topics, f"http://127.0.0.1:{receiver.port}/hook", tmp_path)
    deliver.start()
    try:
        # The endpoint is not up yet: nothing is delivered or committed, and the lag shows
        # every partition's whole backlog (a new group: counted from the beginning).
        wait_for("the backlog in the lag",
                 lambda: _lag(deliver.web_port()) == (16, float(ACTIONS)))
        receiver.start()
        wait_for("a third delivered", lambda: len(set(receiver.keys())) >= len(wanted) // 3)
        deliver.stop(kill=True)
        receiver.kill()
        receiver.start()
        deliver.start()
        wait_for("every action delivered", lambda: set(receiver.keys()) >= wanted, timeout=90)
        dead = _wait_for_dead_letters(shared_broker, topics, refused)
        status, body = http_get(deliver.web_port(), "/metrics")
        assert status == 200
        assert b'churnguard_deliveries_total{status="refused"}' in body
        assert deliver.stop() == 0
        # A clean stop committed everything: started again, it delivers nothing anew.
        received = receiver.keys()
        deliver.start()
        wait_for("no lag", lambda: _lag(deliver.web_port()) == (16, 0.0))
        assert receiver.keys() == received
    finally:
        deliver.stop(kill=True)

    assert set(received) == wanted
    # One customer's actions on one topic arrive in the order they were produced (their
    # first arrival: a re-delivery after the kill repeats some).
    position = {a["action_id"]: i for i, a in enumerate(actions)}
    first: dict[str, int] = {}
    for key in received:
        first.setdefault(key, len(first))
    for topic in topics.actions():
        for customer in {a["customer_id"] for a in actions}:
            ids = [a["action_id"] for a in actions
                   if a["topic"] == topic and a["customer_id"] == customer
                   and a["action_id"] in wanted]
            assert sorted(ids, key=first.__getitem__) == sorted(ids, key=position.__getitem__)

    assert {d["action_id"] for d in dead} == refused
    assert {d["kind"] for d in dead} == {"refused"}
    assert {d["last_status"] for d in dead} == {422}
    assert all(d["endpoint"] == f"http://127.0.0.1:{receiver.port}/hook" for d in dead)
    feedback = read_all(shared_broker, topics.feedback)
    assert {f["action_id"] for f in feedback if f["status"] == "delivered"} == wanted
    assert {f["action_id"] for f in feedback if f["status"] == "failed"} == refused
    assert b'"deliver_stopped"' in deliver.log.read_bytes()


def _lag(port: int) -> tuple[int, float]:
    """(partitions with a lag figure, their total lag) from deliver's /metrics."""
    _, body = http_get(port, "/metrics")
    lags = [float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
            if line.startswith("churnguard_delivery_lag_records{")]
    return len(lags), sum(lags)


def _wait_for_dead_letters(broker: EmbeddedBroker, topics: TopicNames, refused: set[str]
                           ) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def complete() -> bool:
        seen[:] = read_all(broker, topics.delivery_dlq)
        return {d["action_id"] for d in seen} >= refused

    wait_for("the refused actions dead-lettered", complete, timeout=30)
    return seen
