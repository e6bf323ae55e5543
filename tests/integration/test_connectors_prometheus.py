"""The connectors' monitoring against real processes on the embedded broker and a real
Prometheus server (Debian's `prometheus`), scraping `churnguard gateway` and `churnguard
deliver` every second as the jobs of docker/prometheus.yml:

- events POSTed to the gateway (valid ones, a rejected one, repeats): Prometheus sees
  exactly the events accepted (and the topic holds them), rejected and duplicated, the
  requests by status (only the ingest requests: its scrapes are not counted);
- actions produced to the action topics and delivered by deliver to a webhook receiver that
  fails, rate-limits and hangs on some attempts: Prometheus sees as many delivered as the
  receiver has distinct actions, none dead-lettered, attempts = deliveries + retries, and
  the lag of every partition that had actions reaching 0;
- every metric the alert rules read from each connector is in its /metrics, with samples;
- docker/alerts.yaml loads and every rule evaluates without error, none pending or
  firing; and once deliver is stopped, ChurnguardConnectorDown's expression picks it out
  (by the job and instance labels Prometheus gives it)."""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from churnguard.access_tokens import new_token
from churnguard.core.clock import rfc3339
from connectors.admin import ensure_topics
from connectors.embedded_broker import EmbeddedBroker
from streams.settings import TopicNames
from tests.integration.connector_support import Deliver, Gateway, Receiver, read_all
from tests.integration.pipeline_support import http_get, wait_for
from tests.integration.test_prometheus_scrape import PROMETHEUS, Prometheus, running_prometheus
from tests.unit.test_docker_files import (
    CONNECTOR_JOBS,
    alert_rules,
    exposed_names,
    used_metric_names,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
ACTIONS = 48
CUSTOMERS = 12

needs_prometheus = pytest.mark.skipif(not PROMETHEUS.exists(), reason=(
    "/usr/bin/prometheus not installed (Debian: apt-get install prometheus); "
    "CI must install it"))


@pytest.fixture
def topics(shared_broker: EmbeddedBroker) -> TopicNames:
    names = TopicNames().with_prefix(f"cp{time.time_ns() % 10**9}.")
    ensure_topics(shared_broker.bootstrap,
                  [*names.actions(), names.delivery_dlq, names.feedback], PARTITIONS)
    return names


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    made = Receiver(tmp_path)
    made.start()
    yield made
    made.kill()


def _ticket(n: int, now: float) -> dict[str, Any]:
    return {"type": "ticket", "event_id": f"t{n}", "customer_id": f"c{n % CUSTOMERS}",
            "occurred_at": rfc3339(now), "ticket_id": f"T{n}", "status": "opened"}


def _produce_actions(broker: EmbeddedBroker, topics: TopicNames
                     ) -> tuple[set[str], set[tuple[str, str]]]:
    """ACTIONS action records over the four action topics, none the receiver refuses (an id
    starting with "0"): (their ids, the (topic, partition) that got records)."""
    by_type = [("notification", topics.notifications), ("task", topics.tasks),
               ("coupon", topics.coupons), ("profile_update", topics.profile_updates)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    ids: set[str] = set()
    sent = []
    for index in range(ACTIONS):
        action_type, topic = by_type[index % 4]
        digest = hashlib.sha256(f"cp{index}".encode()).hexdigest()[:32]
        action = {"action_id": "f" + digest[1:] if digest.startswith("0") else digest,
                  "type": action_type, "customer_id": f"c{index % CUSTOMERS}",
                  "rule_id": "r", "payload": {"template": "t", "index": index}}
        sent.append(producer.send(topic, key=action["customer_id"].encode(),
                                  value=orjson.dumps(action)))
        ids.add(action["action_id"])
    producer.flush(timeout=30)
    where = {(m.topic, str(m.partition)) for m in (f.get(timeout=30) for f in sent)}
    producer.close(timeout=5)
    assert len(ids) == ACTIONS
    return ids, where


def _by(prometheus: Prometheus, expr: str, label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1])
            for series in prometheus.query(expr)}


def _sampled(port: int) -> set[str]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return exposed_names(body.decode())[0]


@needs_prometheus
def test_prometheus_scrapes_the_gateway_and_deliver_and_their_alerts_evaluate(
    shared_broker: EmbeddedBroker, topics: TopicNames, receiver: Receiver, tmp_path: Path
) -> None:
    token, stored = new_token("shop", ["ingest"])
    gateway = Gateway(None, stored.line(), tmp_path, broker=shared_broker, topics=topics,
                      partitions=PARTITIONS)
    deliver = Deliver(shared_broker, topics, f"http://127.0.0.1:{receiver.port}/hook",
                      tmp_path)
    try:
        deliver.start()
        gateway_target = f"127.0.0.1:{gateway.port}"
        deliver_target = f"127.0.0.1:{deliver.web_port()}"
        jobs = {CONNECTOR_JOBS["gateway"]: [gateway_target],
                CONNECTOR_JOBS["deliver"]: [deliver_target]}
        with running_prometheus(tmp_path / "prometheus", jobs=jobs) as prometheus:
            # Each scraped at least once (a scrape of a loaded machine can miss its 1 s
            # timeout now and then: the values below are waited for anyway).
            scraped = "max by (job) (max_over_time(up[1m]))"
            with contextlib.suppress(AssertionError):
                wait_for("both connectors scraped", lambda: _by(
                    prometheus, scraped, "job") == dict.fromkeys(jobs, 1.0), timeout=30)
            assert _by(prometheus, scraped, "job") == dict.fromkeys(jobs, 1.0), [
                (t["labels"], t["health"], t["lastError"])
                for t in prometheus.api("targets")["activeTargets"]]
            _check_gateway(prometheus, gateway, token, shared_broker, topics)
            _check_deliver(prometheus, receiver, shared_broker, topics)

            # What the alerts read from each process is in its /metrics, with samples.
            for process, port in (("gateway", gateway.port), ("deliver", deliver.web_port())):
                used = used_metric_names(process)
                assert len(used) >= 2, process
                missing = set(used) - _sampled(port)
                assert not missing, f"used by docker/ but not in {process}'s /metrics: {missing}"

            # docker/alerts.yaml against the connectors' real series: every rule evaluated
            # (after the checks above, so on their final figures) without error; nothing
            # pending or firing on healthy connectors.
            since = time.time()

            def rules() -> list[dict[str, Any]]:
                return [rule for group in prometheus.api("rules")["groups"]
                        for rule in group["rules"]]

            def evaluated() -> bool:
                got = rules()
                return len(got) == len(alert_rules()) and all(
                    rule["health"] == "ok" and _evaluated_after(rule, since) for rule in got)
            wait_for("every rule evaluated", evaluated, timeout=30)
            assert {rule["name"] for rule in rules()} == {r["alert"] for r in alert_rules()}
            alerts = prometheus.api("alerts")["alerts"]
            assert [a for a in alerts if a["state"] == "firing"] == []
            # Nothing pending either, but ChurnguardConnectorDown after a scrape that missed
            # its 1 s timeout on a loaded machine (pending for its 2 minutes, never firing).
            assert {a["labels"]["alertname"] for a in alerts} <= {"ChurnguardConnectorDown"}, \
                alerts

            # deliver stops (cleanly): the down alert's expression (without its `for`)
            # names it by the labels Prometheus scrapes it with, and only it.
            assert deliver.stop() == 0
            [down] = [r["expr"] for r in alert_rules() if r["alert"] == "ChurnguardConnectorDown"]

            def down_targets() -> set[tuple[str, str]]:
                return {(s["metric"]["job"], s["metric"]["instance"])
                        for s in prometheus.query(down)}
            wait_for("deliver seen down, and only it", lambda: down_targets() == {
                (CONNECTOR_JOBS["deliver"], deliver_target)}, timeout=30)
            assert gateway.stop() == 0
    finally:
        deliver.stop(kill=True)
        if gateway.process.poll() is None:
            gateway.stop()


def _evaluated_after(rule: dict[str, Any], since: float) -> bool:
    """The rule's last evaluation ("2026-12-03T17:40:01.123456789Z") began in a whole
    second after `since`."""
    stamp = rule.get("lastEvaluation", "")
    if not stamp or stamp.startswith("0001"):
        return False
    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) > since


def _check_gateway(prometheus: Prometheus, gateway: Gateway, token: str,
                   broker: EmbeddedBroker, topics: TopicNames) -> None:
    now = time.time()
    events = [_ticket(n, now) for n in range(30)]
    status, first = gateway.post(events[:20], token)
    assert status == 202, first
    bad = {k: v for k, v in _ticket(99, now).items() if k != "customer_id"}
    status, second = gateway.post([*events[20:25], bad, *events[25:]], token)
    assert status == 207, second
    status, third = gateway.post(events[:5], token)  # a client's retry: duplicates
    assert status == 202, third
    answers = (first, second, third)
    accepted = sum(len(body["accepted"]) for body in answers)
    duplicates = sum(len(body["duplicates"]) for body in answers)
    assert (accepted, duplicates, len(second["rejected"])) == (30, 5, 1)
    # The broker has them: what the gateway counts as accepted is what it produced.
    assert len(read_all(broker, topics.events)) == accepted

    want = {"accepted": accepted, "rejected": 1, "duplicate": duplicates, "unavailable": 0,
            "rate_limited": 0}
    wait_for("Prometheus sees the gateway's events", lambda: _by(
        prometheus, "churnguard_gateway_events_total", "result") == want, timeout=30)
    # Its scrapes (a second each, all along) and probes are not requests.
    assert _by(prometheus, "churnguard_gateway_requests_total", "status") == {
        "202": 2.0, "207": 1.0}
    assert prometheus.value("churnguard_gateway_batch_events_count") == 3.0
    assert prometheus.value("churnguard_gateway_batch_events_sum") == 36.0
    assert prometheus.value("churnguard_gateway_request_duration_seconds_count") == 3.0
    assert prometheus.value("churnguard_gateway_ready") == 1.0


def _check_deliver(prometheus: Prometheus, receiver: Receiver, broker: EmbeddedBroker,
                   topics: TopicNames) -> None:
    wanted, partitions = _produce_actions(broker, topics)
    wait_for("every action delivered", lambda: set(receiver.keys()) >= wanted, timeout=90)
    received = set(receiver.keys())
    assert received == wanted

    def statuses() -> dict[str, float]:
        return _by(prometheus, "churnguard_deliveries_total", "status")
    wait_for("Prometheus sees every delivery", lambda: statuses().get("delivered") == len(
        received), timeout=30)
    assert {s: v for s, v in statuses().items() if v} == {"delivered": float(len(received))}

    # The lag of every partition that had actions, as Prometheus saw it: 0 once committed.
    def lag() -> dict[tuple[str, str], float]:
        return {(s["metric"]["topic"], s["metric"]["partition"]): float(s["value"][1])
                for s in prometheus.query("churnguard_delivery_lag_records")}
    wait_for("delivery lag 0", lambda: lag().keys() >= partitions and not any(
        lag().values()), timeout=30)
    assert set(lag()) <= {(t, str(p)) for t in topics.actions() for p in range(PARTITIONS)}
    assert prometheus.value("max(churnguard_delivery_lag_records)") == 0.0
    assert prometheus.value("churnguard_delivery_in_flight") == 0.0
    # Every attempt is timed; every attempt but each action's last is a retry: the
    # receiver fails a third of them, so there are some.
    attempts = prometheus.value("churnguard_delivery_duration_seconds_count")
    retries = prometheus.value("churnguard_delivery_retries_total")
    assert attempts is not None
    assert retries is not None
    assert retries > 0
    assert attempts - retries == len(received)
