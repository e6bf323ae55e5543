"""The delivery loop (connectors/delivery/service.py): action records in; HTTP requests to a real
local server, dead letters and feedback events to a recording producer; offsets committed only
behind finished actions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError

from connectors.delivery.metrics import DeliveryMetrics
from connectors.delivery.routes import Route, Router
from connectors.delivery.sender import Sender
from connectors.delivery.service import PRODUCE_RETRY_S, Deliverer, commit
from connectors.delivery.settings import DeliverySettings
from streams.settings import TopicNames
from tests.unit.delivery_endpoint import HANG, Endpoint, Rec, Sleeps

TOPICS = TopicNames().with_prefix("t.")
NOTIFICATIONS = TOPICS.notifications
TP0 = TopicPartition(NOTIFICATIONS, 0)
TP1 = TopicPartition(NOTIFICATIONS, 1)


@dataclass(frozen=True)
class Produced:
    topic: str
    key: bytes | None
    value: dict[str, Any]


@dataclass
class FakeProducer:
    """Records what was acknowledged; the first `failures` sends time out."""

    failures: int = 0
    calls: int = 0
    sent: list[Produced] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise KafkaTimeoutError
        self.sent.append(Produced(topic, key, orjson.loads(value)))
        self.changed.set()

    def to(self, topic: str) -> list[Produced]:
        return [record for record in self.sent if record.topic == topic]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


class GatedSleeps(Sleeps):
    """Backoff waits that last until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.waiting.set()
        await self.gate.wait()




def action(customer: str = "cust-1", action_id: str = "act-1", *, type_: str = "notification",
           rule_id: str = "rule-1", **fields: Any) -> dict[str, Any]:
    return {"action_id": action_id, "type": type_, "customer_id": customer, "rule_id": rule_id,
            "payload": {"template": "winback"}, **fields}


def record(offset: int, value: dict[str, Any] | bytes | None, *, partition: int = 0,
           topic: str = NOTIFICATIONS, key: bytes | EllipsisType | None = ...) -> Rec:
    """An action record keyed (unless `key` says otherwise) by its customer id."""
    if isinstance(value, dict):
        if key is ...:
            key = value["customer_id"].encode()
        value = orjson.dumps(value)
    return Rec(topic, partition, offset, None if key is ... else key, value)


@dataclass
class Rig:
    deliverer: Deliverer
    producer: FakeProducer
    metrics: DeliveryMetrics
    sender_sleeps: Sleeps
    produce_sleeps: Sleeps

    def count(self, status: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "churnguard_deliveries_total", {"status": status})
        assert value is not None
        return value

    def in_flight_gauge(self) -> float:
        value = self.metrics.registry.get_sample_value("churnguard_delivery_in_flight", {})
        assert value is not None
        return value

    async def run(self, *records: Rec) -> None:
        for rec in records:
            self.deliverer.submit(rec)
        assert await self.deliverer.drain(5)


@pytest.fixture
def make(session: aiohttp.ClientSession) -> Callable[..., Rig]:
    def build(routes: Router | Route | str, *, producer: FakeProducer | None = None,
              sender_sleeps: Sleeps | None = None, max_record_bytes: int = 1_000_000,
              **overrides: Any) -> Rig:
        values: dict[str, Any] = {"secret": "s" * 16, "backoff_initial_s": 0.01,
                                  "timeout_s": 2.0, **overrides}
        settings = DeliverySettings(**values)
        if isinstance(routes, str):
            routes = Route(url=routes)
        router = routes if isinstance(routes, Router) else Router((routes,), "test-routes")
        metrics = DeliveryMetrics()
        sender_sleeps = sender_sleeps or Sleeps()
        produce_sleeps = Sleeps()
        sender = Sender(session, settings, metrics, sleep=sender_sleeps)
        producer = producer or FakeProducer()
        deliverer = Deliverer(settings, TOPICS, router, sender, producer, metrics,
                              max_record_bytes=max_record_bytes, sleep=produce_sleeps)
        return Rig(deliverer, producer, metrics, sender_sleeps, produce_sleeps)

    return build


# --- how one action ends -------------------------------------------------------------------------


async def test_delivered_action_gets_delivered_feedback(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", 200))
    sent = action("cust-7", "act-7")
    await rig.run(record(41, sent))
    [hit] = endpoint.hits
    assert hit.body == orjson.dumps(sent)
    assert hit.headers["Idempotency-Key"] == "act-7"
    [feedback] = rig.producer.sent
    assert feedback.topic == TOPICS.feedback
    assert feedback.key == b"cust-7"
    assert feedback.value["type"] == "action_feedback"
    assert feedback.value["status"] == "delivered"
    assert feedback.value["action_id"] == "act-7"
    assert feedback.value["customer_id"] == "cust-7"
    assert feedback.value["event_id"] == "delivery-delivered-act-7"
    assert rig.count("delivered") == 1
    assert rig.deliverer.finished == {"delivered": 1}
    assert rig.deliverer.committable({}) == {TP0: 42}
    assert rig.deliverer.uncommitted == 0
    assert rig.in_flight_gauge() == 0


@pytest.mark.parametrize("key", [b"partition-key", None])
async def test_feedback_is_keyed_by_customer_id_whatever_the_record_key(
        endpoint: Endpoint, make: Callable[..., Rig], key: bytes | None) -> None:
    router = Router((Route(match={"rule_id": "ok"}, url=endpoint.url("ok", 200)),
                     Route(url=endpoint.url("bad", 400))), "routes.yaml")
    rig = make(router)
    await rig.run(record(0, action("cust-5", "a-ok", rule_id="ok"), key=key),
                  record(1, action("cust-5", "a-bad"), key=key))
    feedback = rig.producer.to(TOPICS.feedback)
    assert [(p.key, p.value["status"]) for p in feedback] == [
        (b"cust-5", "delivered"), (b"cust-5", "failed")]
    [dlq] = rig.producer.to(TOPICS.delivery_dlq)
    assert dlq.key == key  # the dead letter keeps the action record's key


async def test_refused_action_is_dead_lettered_with_failed_feedback(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    url = endpoint.url("hook", 422).replace("http://", "http://user:pw@") + "?token=secret"
    rig = make(url, max_attempts=5)
    sent = action("cust-2", "act-2")
    await rig.run(record(5, sent, partition=1))
    assert len(endpoint.hits) == 1
    dlq, feedback = rig.producer.sent
    assert dlq.topic == TOPICS.delivery_dlq
    assert dlq.key == b"cust-2"
    assert dlq.value["kind"] == "refused"
    assert dlq.value["reason"] == "refused: HTTP 422 Unprocessable Entity"
    assert dlq.value["source"] == {"topic": NOTIFICATIONS, "partition": 1, "offset": 5}
    assert dlq.value["action_id"] == "act-2"
    assert dlq.value["action"] == sent
    assert dlq.value["attempts"] == 1
    assert dlq.value["last_status"] == 422
    assert dlq.value["endpoint"] == url.split("?")[0].replace("user:pw@", "")
    assert feedback.topic == TOPICS.feedback
    assert feedback.key == b"cust-2"
    assert feedback.value["status"] == "failed"
    assert feedback.value["event_id"] == "delivery-failed-act-2"
    assert rig.count("refused") == 1
    assert rig.count("delivered") == 0
    assert rig.deliverer.committable({}) == {TP1: 6}


async def test_out_of_attempts_is_dead_lettered_as_gave_up(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", 500), max_attempts=3)
    await rig.run(record(0, action()))
    assert len(endpoint.hits) == 3
    [dlq] = rig.producer.to(TOPICS.delivery_dlq)
    assert dlq.value["kind"] == "gave_up"
    assert dlq.value["reason"] == "gave up after 3 attempts: HTTP 500 Internal Server Error"
    assert dlq.value["attempts"] == 3
    assert dlq.value["last_status"] == 500
    [feedback] = rig.producer.to(TOPICS.feedback)
    assert feedback.value["status"] == "failed"
    assert rig.count("gave_up") == 1
    assert len(rig.sender_sleeps.waits) == 2


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'{"action_id": "a"}', None])
async def test_unreadable_record_is_dead_lettered_without_feedback(
        endpoint: Endpoint, make: Callable[..., Rig], value: bytes | None) -> None:
    rig = make(endpoint.url("hook", 200))
    await rig.run(record(3, value, key=b"k-1"))
    assert endpoint.hits == []
    [dlq] = rig.producer.sent
    assert dlq.topic == TOPICS.delivery_dlq
    assert dlq.key == b"k-1"
    assert dlq.value["kind"] == "unreadable"
    assert dlq.value["action"] is None
    assert dlq.value["action_id"] is None
    assert dlq.value["endpoint"] is None
    assert dlq.value["attempts"] == 0
    assert ("value_length" in dlq.value) == (value is not None)
    assert rig.count("unreadable") == 1
    assert rig.deliverer.committable({}) == {TP0: 4}


async def test_no_route_is_dead_lettered(endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    router = Router((Route(match={"type": "task"}, url=endpoint.url("tasks")),), "routes.yaml")
    rig = make(router)
    sent = action("cust-3", "act-3")
    await rig.run(record(0, sent))
    assert endpoint.hits == []
    dlq, feedback = rig.producer.sent
    assert dlq.topic == TOPICS.delivery_dlq
    assert dlq.value["kind"] == "no_route"
    assert dlq.value["reason"] == ("no route of routes.yaml fits type=notification "
                                   "template=winback; add one or a default")
    assert dlq.value["endpoint"] is None
    assert dlq.value["attempts"] == 0
    assert dlq.value["action"] == sent
    assert feedback.value["status"] == "failed"
    assert rig.count("no_route") == 1


async def test_skip_route_produces_nothing(endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    router = Router((Route(match={"type": "profile_update"}, skip=True),
                     Route(url=endpoint.url("hook"))), "routes.yaml")
    rig = make(router)
    await rig.run(record(0, action(type_="profile_update")))
    assert endpoint.hits == []
    assert rig.producer.sent == []
    assert rig.count("skipped") == 1
    assert rig.deliverer.finished == {"skipped": 1}
    assert rig.deliverer.committable({}) == {TP0: 1}


async def test_without_feedback_only_dead_letters_are_produced(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    router = Router((Route(match={"rule_id": "ok"}, url=endpoint.url("ok", 200)),
                     Route(url=endpoint.url("bad", 400))), "routes.yaml")
    rig = make(router, feedback=False)
    await rig.run(record(0, action(action_id="a-ok", rule_id="ok")),
                  record(1, action(action_id="a-bad", rule_id="other")))
    assert [hit.path for hit in endpoint.hits] == ["ok", "bad"]
    [dlq] = rig.producer.sent
    assert dlq.topic == TOPICS.delivery_dlq
    assert dlq.value["action_id"] == "a-bad"
    assert rig.count("delivered") == 1
    assert rig.count("refused") == 1


# --- order, concurrency and commit points ------------------------------------------------


async def test_one_customers_actions_go_in_order_while_others_go_ahead(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    sleeps = GatedSleeps()
    router = Router((Route(match={"rule_id": "first"}, url=endpoint.url("a1", 500, 200)),
                     Route(match={"rule_id": "second"}, url=endpoint.url("a2", 200)),
                     Route(match={"rule_id": "other"}, url=endpoint.url("b1", 200))), "r")
    rig = make(router, sender_sleeps=sleeps)
    deliverer = rig.deliverer
    deliverer.submit(record(0, action("alice", "a1", rule_id="first")))
    deliverer.submit(record(1, action("bob", "b1", rule_id="other")))
    deliverer.submit(record(2, action("alice", "a2", rule_id="second")))

    # Alice's first action waits for its retry; Bob's is delivered meanwhile.
    await endpoint.wait_until(lambda: {hit.path for hit in endpoint.hits} == {"a1", "b1"})
    await rig.producer.wait_until(lambda: len(rig.producer.sent) == 1)
    await sleeps.waiting.wait()
    assert rig.producer.sent[0].value["action_id"] == "b1"
    assert "a2" not in {hit.path for hit in endpoint.hits}
    # Offset 1 is finished, offset 0 is not: nothing may be committed yet.
    assert deliverer.committable({}) == {}
    assert deliverer.uncommitted == 3

    sleeps.gate.set()
    assert await deliverer.drain(5)
    paths = [hit.path for hit in endpoint.hits]
    assert paths.count("a1") == 2
    assert paths.index("b1") < len(paths) - 1 - paths[::-1].index("a1")  # b1 before a1's retry
    assert paths[-1] == "a2"  # after both of a1's attempts
    assert [p.value["action_id"] for p in rig.producer.to(TOPICS.feedback)] == ["b1", "a1", "a2"]
    assert deliverer.committable({}) == {TP0: 3}
    assert deliverer.committable({TP0: 3}) == {}
    assert deliverer.uncommitted == 0


async def test_a_customers_actions_are_sent_one_at_a_time(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", 503, 200, 500, 200, 200))
    for offset in range(3):
        rig.deliverer.submit(record(offset, action("carol", f"c{offset}")))
    assert await rig.deliverer.drain(5)
    ids = [hit.headers["Idempotency-Key"] for hit in endpoint.hits]
    attempts = [hit.headers["X-Churnguard-Attempt"] for hit in endpoint.hits]
    assert ids == ["c0", "c0", "c1", "c1", "c2"]
    assert attempts == ["1", "2", "1", "2", "1"]
    assert rig.count("delivered") == 3


async def test_committable_stops_at_an_unfinished_offset(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    router = Router((Route(match={"rule_id": "slow"}, url=endpoint.url("slow", HANG)),
                     Route(url=endpoint.url("fast", 200))), "r")
    rig = make(router, timeout_s=30.0)
    deliverer = rig.deliverer
    deliverer.submit(record(10, action("u1", "fast-1")))
    deliverer.submit(record(11, action("u2", "slow-1", rule_id="slow")))
    deliverer.submit(record(12, action("u3", "fast-2")))
    deliverer.submit(record(0, action("u4", "fast-3"), partition=1))
    await rig.producer.wait_until(lambda: len(rig.producer.sent) == 3)
    await endpoint.wait_until(lambda: any(hit.path == "slow" for hit in endpoint.hits))
    assert deliverer.committable({}) == {TP0: 11, TP1: 1}
    assert deliverer.committable({TP0: 11}) == {TP1: 1}
    assert deliverer.committable({TP0: 11, TP1: 1}) == {}
    assert deliverer.uncommitted == 2  # 11 (sending) and 12 (finished behind it)
    assert not await deliverer.drain(0.01)
    async with asyncio.timeout(5):
        await deliverer.drop([TP0, TP1])


async def test_a_failing_producer_is_retried_until_acknowledged(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    producer = FakeProducer(failures=2)
    rig = make(endpoint.url("hook", 200), producer=producer)
    await rig.run(record(0, action(action_id="a-9")))
    assert len(endpoint.hits) == 1  # the HTTP request is not repeated
    assert producer.calls == 3
    [feedback] = producer.sent
    assert feedback.value["event_id"] == "delivery-delivered-a-9"
    assert rig.produce_sleeps.waits == [PRODUCE_RETRY_S, PRODUCE_RETRY_S]
    assert rig.count("delivered") == 1
    assert rig.deliverer.committable({}) == {TP0: 1}


async def test_a_failing_dead_letter_produce_is_retried_too(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    producer = FakeProducer(failures=1)
    rig = make(endpoint.url("hook", 400), producer=producer)
    await rig.run(record(0, action()))
    assert [p.topic for p in producer.sent] == [TOPICS.delivery_dlq, TOPICS.feedback]
    assert rig.produce_sleeps.waits == [PRODUCE_RETRY_S]
    assert rig.count("refused") == 1


# --- drop and drain ----------------------------------------------------------------------------


async def test_drop_cancels_a_partitions_unfinished_actions(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    sleeps = GatedSleeps()
    router = Router((Route(match={"rule_id": "retry"}, url=endpoint.url("retry", 500, 200)),
                     Route(url=endpoint.url("ok", 200))), "r")
    rig = make(router, sender_sleeps=sleeps)
    deliverer = rig.deliverer
    deliverer.submit(record(0, action("dave", "d1", rule_id="retry")))
    deliverer.submit(record(1, action("dave", "d2")))
    deliverer.submit(record(0, action("erin", "e1"), partition=1))
    await sleeps.waiting.wait()
    await rig.producer.wait_until(lambda: len(rig.producer.sent) == 1)
    assert rig.in_flight_gauge() == 3

    async with asyncio.timeout(5):
        await deliverer.drop([TP0])
    assert TP0 not in deliverer.progress
    assert deliverer.uncommitted == 0
    assert rig.in_flight_gauge() == 0
    assert deliverer.committable({}) == {TP1: 1}
    sleeps.gate.set()
    assert await deliverer.drain(5)
    assert [hit.path for hit in endpoint.hits].count("retry") == 1
    assert [p.value["action_id"] for p in rig.producer.sent] == ["e1"]
    assert deliverer.finished == {"delivered": 1}
    assert rig.count("delivered") == 1
    # The partition comes back (re-assigned): its actions are delivered afresh.
    deliverer.submit(record(0, action("dave", "d1", rule_id="retry")))
    assert await deliverer.drain(5)
    assert deliverer.committable({}) == {TP0: 1, TP1: 1}


async def test_drain_is_true_once_everything_finished(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", 200))
    assert await rig.deliverer.drain(0)
    for offset in range(5):
        rig.deliverer.submit(record(offset, action(f"u{offset}", f"a{offset}")))
    assert await rig.deliverer.drain(5)
    assert rig.count("delivered") == 5
    assert len(rig.producer.sent) == 5
    assert rig.deliverer.committable({}) == {TP0: 5}
    assert rig.deliverer.uncommitted == 0


async def test_drain_is_false_while_an_attempt_hangs(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", HANG), timeout_s=30.0)
    rig.deliverer.submit(record(0, action()))
    await endpoint.wait_until(lambda: len(endpoint.hits) == 1)
    assert not await rig.deliverer.drain(0.01)
    assert rig.deliverer.uncommitted == 1
    async with asyncio.timeout(5):
        await rig.deliverer.drop([TP0])
    assert await rig.deliverer.drain(0)
    assert rig.producer.sent == []
    assert sum(rig.deliverer.finished.values()) == 0


# --- commit -------------------------------------------------------------------------------


@dataclass
class FakeConsumer:
    fail: bool = False
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail:
            raise CommitFailedError
        self.commits.append(dict(offsets))


async def test_commit_sends_only_moved_commit_points(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", 200))
    await rig.run(record(0, action("u1", "a1")), record(7, action("u2", "a2"), partition=1))
    consumer, committed = FakeConsumer(), {TP1: 8}
    await commit(consumer, rig.deliverer, committed)
    assert consumer.commits == [{TP0: 1}]
    assert committed == {TP0: 1, TP1: 8}
    await commit(consumer, rig.deliverer, committed)
    assert consumer.commits == [{TP0: 1}]


async def test_a_commit_lost_to_a_rebalance_is_not_recorded(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", 200))
    await rig.run(record(0, action()))
    committed: dict[TopicPartition, int] = {}
    await commit(FakeConsumer(fail=True), rig.deliverer, committed)
    assert committed == {}


# --- found by review: refused up front, or dead-lettered, never a stalled partition ----


async def test_drop_leaves_a_kept_partitions_actions_alone(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    """The same customer's next action on another topic's partition, which is kept, is still
    delivered once the dropped one is cancelled (it does not wait for ever, nor is cancelled)."""
    sleeps = GatedSleeps()
    router = Router((Route(match={"rule_id": "retry"}, url=endpoint.url("retry", 500, 200)),
                     Route(url=endpoint.url("ok", 200))), "r")
    rig = make(router, sender_sleeps=sleeps)
    tasks = TopicPartition(TOPICS.tasks, 0)
    rig.deliverer.submit(record(0, action("dave", "d1", rule_id="retry")))
    rig.deliverer.submit(record(0, action("dave", "d2", type_="task"), topic=TOPICS.tasks))
    await sleeps.waiting.wait()
    assert "ok" not in {hit.path for hit in endpoint.hits}  # d2 waits behind d1
    async with asyncio.timeout(5):
        await rig.deliverer.drop([TP0])
    assert await rig.deliverer.drain(5)
    assert [hit.path for hit in endpoint.hits] == ["retry", "ok"]
    assert [p.value["action_id"] for p in rig.producer.sent] == ["d2"]
    assert rig.deliverer.committable({}) == {tasks: 1}


async def test_a_dead_letter_too_large_for_a_record_only_describes_the_action(
        endpoint: Endpoint, make: Callable[..., Rig]) -> None:
    rig = make(endpoint.url("hook", 400), max_record_bytes=4096)
    small, large = action("u1", "small"), action("u2", "large", padding="x" * 3500)
    await rig.run(record(0, small), record(1, large))
    kept, described = (p.value for p in rig.producer.to(TOPICS.delivery_dlq))
    assert kept["action"] == small
    assert "value_length" not in kept
    assert described["action"] is None
    assert described["action_id"] == "large"
    assert described["kind"] == "refused"
    assert described["value_length"] == len(orjson.dumps(large))
    assert len(orjson.dumps(described)) < 4096 - 1024
    assert [p.value["status"] for p in rig.producer.to(TOPICS.feedback)] == ["failed", "failed"]
    assert rig.deliverer.committable({}) == {TP0: 2}


async def test_an_unexpected_failure_is_dead_lettered_and_the_offset_finished(
        endpoint: Endpoint, make: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make(endpoint.url("hook", 200))

    async def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rig.deliverer._sender, "send", broken)
    await rig.run(record(0, action()))
    [dlq] = rig.producer.to(TOPICS.delivery_dlq)
    assert dlq.value["kind"] == "error"
    assert "RuntimeError: a bug" in dlq.value["reason"]
    assert rig.deliverer.committable({}) == {TP0: 1}
    assert rig.metrics.registry.get_sample_value(
        "churnguard_deliveries_total", {"status": "error"}) == 1


@pytest.mark.parametrize("fields", [{"action_id": "a\nb"}, {"action_id": "a\x7fb"},
                                    {"type": "task\r\nX-Injected: 1"}])
async def test_an_action_id_unfit_for_a_header_is_dead_lettered(
        endpoint: Endpoint, make: Callable[..., Rig], fields: dict[str, str]) -> None:
    rig = make(endpoint.url("hook", 200))
    await rig.run(record(0, action(**fields)))
    assert len(rig.producer.to(TOPICS.delivery_dlq)) == 1
    assert rig.deliverer.committable({}) == {TP0: 1}
