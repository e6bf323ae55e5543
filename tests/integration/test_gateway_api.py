"""POST /v1/events on a real gateway and the embedded broker: what is answered, and what is
on the topics afterwards (read back with kafka-python: topic, key, partition, value)."""

from __future__ import annotations

import gzip
import itertools
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import requests
from kafka import KafkaConsumer
from kafka.partitioner.default import murmur2
from structlog.testing import capture_logs

from churnguard.access_tokens import AccessToken, new_token
from churnguard.audit import read_audit
from connectors.embedded_broker import EmbeddedBroker, start_broker
from connectors.gateway.background import GatewayThread
from connectors.gateway.settings import GatewaySettings
from streams.settings import Settings, TopicNames
from tests.integration.pipeline_support import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
_prefixes = itertools.count()
INGEST_TOKEN, INGEST = new_token("shop", ["ingest"])
READ_TOKEN, READ_ONLY = new_token("dashboards", ["viewer"])


def gateway_settings(broker: EmbeddedBroker, tokens: tuple[AccessToken, ...] = (INGEST, READ_ONLY),
                     **limits: Any) -> Settings:
    """Settings of a gateway with its own topics on `broker`, on a free port."""
    prefix = f"gw{next(_prefixes)}-{int(time.time() * 1000) % 10**8}."
    return Settings(broker=broker.url, partitions=PARTITIONS,
                    topics=TopicNames().with_prefix(prefix),
                    gateway=GatewaySettings(port=0, tokens=tokens, **limits))


def now_text() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def event(kind: str, event_id: str, customer_id: str = "c1", **fields: Any) -> dict[str, Any]:
    extra: dict[str, dict[str, Any]] = {
        "purchase": {"order_id": "o1", "amount": "19.90", "currency": "EUR"},
        "login": {"channel": "app"},
        "ticket": {"ticket_id": "t1", "status": "opened", "priority": "high"},
        "profile": {"tier": "vip", "email": "someone@example.com"},
        "action_feedback": {"action_id": "a1", "status": "opened"},
        "custom": {"name": "order_shipped", "properties": {"parcels": 2}},
    }
    return {"type": kind, "event_id": event_id, "customer_id": customer_id,
            "occurred_at": now_text(), **extra[kind], **fields}


def post(gateway: GatewayThread, body: Any, *, token: str = INGEST_TOKEN,
         content_type: str = "application/json") -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(f"{gateway.url}/v1/events", data=data, timeout=30, headers={
        "Authorization": f"Bearer {token}", "Content-Type": content_type})


def records(settings: Settings, topic: str, expected: int) -> list[Any]:
    """Every record of `topic` once `expected` are there (the answer came after acks=all:
    they are on the broker already; the wait covers the consumer's own start)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=1500)
    try:
        found: list[Any] = []
        for record in consumer:
            found.append(record)
            if len(found) >= expected:
                # Anything beyond `expected` would come in the same fetch: one more poll.
                found.extend(r for batch in consumer.poll(timeout_ms=300).values() for r in batch)
                break
        return found
    finally:
        consumer.close()


@pytest.fixture
def gateway(shared_broker: EmbeddedBroker) -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings(shared_broker)) as running:
        yield running


def test_a_batch_goes_to_each_type_topic_keyed_and_partitioned_by_customer(
    gateway: GatewayThread,
) -> None:
    kinds = ["purchase", "login", "ticket", "profile", "action_feedback", "custom"]
    batch = [event(kind, f"e-{kind}", f"cust-{n}") for n, kind in enumerate(kinds)]
    answer = post(gateway, batch)
    assert answer.status_code == 202
    assert answer.json() == {"accepted": [e["event_id"] for e in batch], "duplicates": []}

    # Every type on the combined topic: a customer's events stay in the order posted.
    produced = {orjson.loads(r.value)["event_id"]: r
                for r in records(gateway.settings, gateway.settings.topics.events, len(batch))}
    for sent in batch:
        record = produced[sent["event_id"]]
        key = sent["customer_id"].encode()
        assert record.key == key
        assert record.partition == (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        assert orjson.loads(record.value) == sent  # personal fields too: the worker drops them
        assert record.timestamp == _ms(sent["occurred_at"])


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_records_are_stamped_with_the_event_time_never_ahead_of_now(
    gateway: GatewayThread,
) -> None:
    # The worker merges the combined topic with other producers' per-type topics by
    # record timestamp: the event's time, never the send time.
    opened = event("ticket", "t1", occurred_at="2026-11-23T09:00:00.001Z")
    bought = event("purchase", "p1", occurred_at="2026-11-23T09:00:00.002Z")
    future = time.time() + 6 * 3600  # accepted (24 h of skew), not stamped ahead of now
    ahead = event("login", "l1", occurred_at=datetime.fromtimestamp(future, UTC).isoformat())
    before = time.time()
    assert post(gateway, [opened, bought, ahead]).status_code == 202
    ticket, purchase, login = records(gateway.settings, gateway.settings.topics.events, 3)
    # One customer, one partition: in the order posted.
    assert [orjson.loads(r.value)["type"] for r in (ticket, purchase, login)] == [
        "ticket", "purchase", "login"]
    assert ticket.offset < purchase.offset < login.offset
    assert (ticket.timestamp, purchase.timestamp) == (
        _ms(opened["occurred_at"]), _ms(bought["occurred_at"]))
    assert before * 1000 - 1 <= login.timestamp <= time.time() * 1000


def test_a_single_object_is_produced_as_sent(gateway: GatewayThread) -> None:
    body = b'{"type": "login", "event_id": "e1", "customer_id": " c9 ", ' \
           b'"occurred_at": "' + now_text().encode() + b'"}\n'
    assert post(gateway, body).json() == {"accepted": ["e1"], "duplicates": []}
    [record] = records(gateway.settings, gateway.settings.topics.events, 1)
    assert record.value == body
    assert record.key == b"c9"  # the parsed id, which the worker compares the key with


def test_invalid_events_are_rejected_one_by_one_and_the_valid_ones_accepted(
    gateway: GatewayThread,
) -> None:
    batch = [
        event("purchase", "p1", amount="-5"),
        event("login", "l1"),
        event("ticket", "t1", status="maybe", comment="my address is 1 Secret Street"),
        {"type": "teleport", "event_id": "x", "customer_id": "c1", "occurred_at": now_text()},
        event("profile", "pr1", tags=["ok", ""]),
        "not an object",
        event("login", "l2", occurred_at="2099-01-01T00:00:00Z"),
    ]
    answer = post(gateway, batch)
    assert answer.status_code == 207
    body = answer.json()
    assert body["accepted"] == ["l1"]
    assert body["duplicates"] == []
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (0, "amount"), (2, "status"), (3, "type"), (4, "tags.1"), (5, None), (6, "occurred_at")]
    assert body["rejected"][0]["message"] == "Input should be greater than 0"
    assert "Secret Street" not in answer.text
    assert [r.value for r in records(gateway.settings, gateway.settings.topics.events, 1)] == [
        orjson.dumps(batch[1])]

    all_bad = post(gateway, [batch[0], batch[3]])
    assert all_bad.status_code == 400
    assert all_bad.json()["accepted"] == []
    assert [r["index"] for r in all_bad.json()["rejected"]] == [0, 1]


def test_ndjson_lines_are_events(gateway: GatewayThread) -> None:
    lines = [orjson.dumps(event("login", f"n{i}", f"c{i}")) for i in range(3)]
    body = b"\n".join([lines[0], b"", lines[1], b"{broken", lines[2]]) + b"\n"
    answer = post(gateway, body, content_type="application/x-ndjson")
    assert answer.status_code == 207
    assert answer.json()["accepted"] == ["n0", "n1", "n2"]
    assert [(r["index"], r["field"]) for r in answer.json()["rejected"]] == [(2, None)]
    produced = records(gateway.settings, gateway.settings.topics.events, 3)
    assert sorted(r.value for r in produced) == sorted(lines)


def test_a_repeated_event_is_a_duplicate_and_not_produced_again(gateway: GatewayThread) -> None:
    first = event("login", "same")
    assert post(gateway, [first, first]).json() == {"accepted": ["same"], "duplicates": ["same"]}
    again = post(gateway, [first, event("login", "same", customer_id="other")])
    # An event id is unique per customer: another customer's "same" is another event.
    assert again.json() == {"accepted": ["same"], "duplicates": ["same"]}
    produced = records(gateway.settings, gateway.settings.topics.events, 2)
    assert sorted(r.key for r in produced) == [b"c1", b"other"]


def test_tokens_and_roles(gateway: GatewayThread) -> None:
    url = f"{gateway.url}/v1/events"
    missing = requests.post(url, data=b"{}", timeout=10)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "unauthorized"
    assert post(gateway, [event("login", "e")], token=INGEST_TOKEN + "x").status_code == 401
    wrong_role = post(gateway, [event("login", "e")], token=READ_TOKEN)
    assert wrong_role.status_code == 403
    assert wrong_role.json() == {
        "error": "forbidden",
        "message": "token 'dashboards' (viewer) lacks the role 'ingest' this needs"}
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        assert requests.get(gateway.url + path, timeout=10).status_code == 200
    # Each refusal is on the audit trail, the token's name where it was a configured one.

    def refusals() -> list[tuple[str | None, int | None, str | None]]:
        entries, _ = read_audit(gateway.settings.bootstrap, gateway.settings.topics.audit,
                                since=0, timeout_s=10)
        return sorted(((e.actor or "", e.status, e.path) for e in entries
                       if e.action == "access_refused"), key=str)

    wanted = sorted([("", 401, "/v1/events"), ("", 401, "/v1/events"),
                     ("dashboards", 403, "/v1/events")], key=str)
    wait_for("the refusals on the audit trail", lambda: refusals() == wanted, timeout=20)


def test_bodies_the_gateway_refuses_whole(shared_broker: EmbeddedBroker) -> None:
    settings = gateway_settings(shared_broker, max_body_bytes=4096, max_batch_events=3,
                                rate_limit_burst=3)
    with GatewayThread(settings) as gateway:
        too_big = post(gateway, [event("login", "e", note="x" * 5000)])
        assert (too_big.status_code, too_big.json()["error"]) == (413, "body_too_large")
        chunked = requests.post(f"{gateway.url}/v1/events", timeout=10,
                                data=iter([b"[", b" " * 5000, b"]"]),
                                headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
        assert (chunked.status_code, chunked.json()["error"]) == (413, "body_too_large")
        many = post(gateway, [event("login", f"e{i}") for i in range(4)])
        assert (many.status_code, many.json()["error"]) == (413, "too_many_events")
        assert "4 events, over the limit of 3" in many.json()["message"]
        malformed = post(gateway, b'[{"type": "login",')
        assert (malformed.status_code, malformed.json()["error"]) == (400, "malformed_json")
        empty = post(gateway, [])
        assert (empty.status_code, empty.json()["error"]) == (400, "empty")
        nothing = post(gateway, b"")
        assert (nothing.status_code, nothing.json()["error"]) == (400, "empty")
        bom = post(gateway, b"\xef\xbb\xbf" + orjson.dumps([event("login", "e")]))
        assert (bom.status_code, bom.json()["error"]) == (400, "malformed_json")
        assert "byte-order mark" in bom.json()["message"]
        assert records(settings, settings.topics.events, 0) == []


def test_encodings_and_a_body_that_never_ends(shared_broker: EmbeddedBroker) -> None:
    settings = gateway_settings(shared_broker, body_timeout_s=0.5)
    with GatewayThread(settings) as gateway:
        url = f"{gateway.url}/v1/events"
        auth = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
        body = orjson.dumps([event("login", "gz")])
        gzipped = requests.post(url, data=gzip.compress(body), timeout=10,
                                headers={**auth, "Content-Encoding": "gzip"})
        assert (gzipped.status_code, gzipped.json()["accepted"]) == (202, ["gz"])
        broken = requests.post(url, data=b"not deflate at all", timeout=10,
                               headers={**auth, "Content-Encoding": "deflate"})
        assert (broken.status_code, broken.json()["error"]) == (400, "malformed_body")
        other = requests.post(url, data=body, timeout=10,
                               headers={**auth, "Content-Encoding": "compress"})
        assert (other.status_code, other.json()["error"]) == (415, "unsupported_encoding")

        # A client that announces a body and stops sending: answered 408, not held.
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
            client.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                           b"Authorization: Bearer " + INGEST_TOKEN.encode() + b"\r\n\r\n[")
            answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")


def test_a_token_that_is_not_ascii_is_no_token(gateway: GatewayThread) -> None:
    # aiohttp decodes header bytes that are not UTF-8 with surrogate escapes.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
        client.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                       b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n{}")
        answer = client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401")


def test_a_token_over_its_rate_is_told_when_to_retry(shared_broker: EmbeddedBroker) -> None:
    settings = gateway_settings(shared_broker, max_batch_events=10, rate_limit_burst=10,
                                rate_limit_events_per_s=0.5)
    with GatewayThread(settings) as gateway:
        assert post(gateway, [event("login", f"e{i}") for i in range(8)]).status_code == 202
        limited = post(gateway, [event("login", f"f{i}") for i in range(4)])
        assert limited.status_code == 429
        # 2 events short at 0.5 events/s: 4 s.
        assert limited.headers["Retry-After"] == "4"
        assert limited.json()["error"] == "rate_limited"
        # Another token has its own bucket.
        admin_token, admin = new_token("ops", ["admin"])
        assert admin.allows("ingest")
    with GatewayThread(gateway_settings(shared_broker, tokens=(INGEST, admin),
                                        max_batch_events=10, rate_limit_burst=10,
                                        rate_limit_events_per_s=0.5)) as gateway:
        assert post(gateway, [event("login", f"g{i}") for i in range(10)]).status_code == 202
        assert post(gateway, [event("login", "h")], token=admin_token).status_code == 202
        assert post(gateway, [event("login", "i")]).status_code == 429


def test_metrics_count_requests_and_events(gateway: GatewayThread) -> None:
    post(gateway, [event("login", "m1"), event("login", "m1"), event("purchase", "m2",
                                                                       amount="0")])
    post(gateway, [event("login", "m3")], token="nope")
    text = requests.get(gateway.url + "/metrics", timeout=10).text
    for line in ('churnguard_gateway_requests_total{status="207"} 1.0',
                 'churnguard_gateway_requests_total{status="401"} 1.0',
                 'churnguard_gateway_events_total{result="accepted"} 1.0',
                 'churnguard_gateway_events_total{result="duplicate"} 1.0',
                 'churnguard_gateway_events_total{result="rejected"} 1.0',
                 "churnguard_gateway_request_duration_seconds_count 2.0",
                 "churnguard_gateway_ready 1.0"):
        assert line in text


def test_no_personal_data_in_logs(shared_broker: EmbeddedBroker) -> None:
    personal = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946"}
    with capture_logs() as logs, GatewayThread(gateway_settings(shared_broker)) as gateway:
        post(gateway, [event("profile", "p1", **personal),
                       event("profile", "p2", tier="emperor", **personal),
                       event("ticket", "t1", comment="c" * 2001)])
    written = orjson.dumps(logs).decode()
    assert [entry["event"] for entry in logs] == [
        "gateway_listening", "topics_created", "gateway_ready", "gateway_stopped"]
    assert logs[-1]["events"] == {"accepted": 1, "rejected": 2}
    for value in personal.values():
        assert value not in written


def test_a_broker_that_does_not_answer_gives_503_and_nothing_accepted() -> None:
    broker = start_broker()
    try:
        settings = gateway_settings(broker, broker_timeout_s=1.5)
        with GatewayThread(settings) as gateway:
            assert post(gateway, [event("login", "before")]).status_code == 202
            broker.kill()
            answer = post(gateway, [event("login", "during"), event("login", "during2")])
            assert answer.status_code == 503
            assert answer.headers["Retry-After"] == "5"
            assert answer.json()["error"] == "broker_unavailable"
            assert "accepted" not in answer.json()
            metrics = requests.get(gateway.url + "/metrics", timeout=10).text
            assert 'churnguard_gateway_events_total{result="unavailable"} 2.0' in metrics
    finally:
        broker.stop()
