"""deliver's read-ahead (connectors/delivery/run.py, DeliveryRun._flow_control): a customer
whose endpoint keeps failing pauses only its own partition once `max_pending` of its offsets
wait behind it; every partition pauses only while `max_pending` actions are running."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiokafka import TopicPartition

from connectors.delivery.metrics import DeliveryMetrics
from connectors.delivery.routes import Match, Route, Router
from connectors.delivery.run import DeliveryRun
from connectors.delivery.sender import Sender
from connectors.delivery.service import Deliverer
from streams.settings import Settings
from tests.unit.delivery_endpoint import HANG, Endpoint, Rec

LIMIT = 20


@dataclass
class Consumer:
    """What the flow control uses of aiokafka's consumer."""

    assigned: set[TopicPartition]
    paused_now: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_now |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_now -= set(tps)


class Producer:
    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        return None


def _rec(tp: TopicPartition, offset: int, customer: str, template: str = "t") -> Rec:
    action = {"action_id": f"a-{tp.partition}-{offset}", "type": "notification",
              "customer_id": customer, "payload": {"template": template}}
    return Rec(tp.topic, tp.partition, offset, customer.encode(), orjson.dumps(action))


def _setup(endpoint: Endpoint, session: aiohttp.ClientSession, url: str
           ) -> tuple[DeliveryRun, Deliverer]:
    """Actions with template `stuck` go to an endpoint that never answers, the rest to `url`."""
    settings = Settings(delivery={"secret": "s" * 16, "max_pending": LIMIT,
                                  "feedback": False})
    router = Router((Route(match=Match(template="stuck"), url=endpoint.url("stuck", HANG)),
                     Route(url=url)), "test")
    run = DeliveryRun(settings, router)
    metrics = DeliveryMetrics()
    sender = Sender(session, settings.delivery, metrics)
    deliverer = Deliverer(settings.delivery, settings.topics, router, sender, Producer(),
                          metrics)
    return run, deliverer


async def test_a_stuck_customer_pauses_only_its_partition(
        endpoint: Endpoint, session: aiohttp.ClientSession) -> None:
    stuck, other = TopicPartition("t", 0), TopicPartition("t", 1)
    run, deliverer = _setup(endpoint, session, endpoint.url("hook", 200))
    consumer = Consumer({stuck, other})
    # The stuck customer's action hangs; the 25 after it on its partition (other customers)
    # are delivered but wait behind it for the commit; the other partition flows.
    deliverer.submit(_rec(stuck, 0, "stuck", "stuck"))
    for offset in range(1, 26):
        deliverer.submit(_rec(stuck, offset, f"c{offset}"))
    for offset in range(5):
        deliverer.submit(_rec(other, offset, f"d{offset}"))
    await endpoint.wait_until(lambda: len(endpoint.hits) == 31)
    await deliverer.drain(0.5)
    assert deliverer.running == 1
    assert deliverer.uncommitted_of(stuck) == 26
    run._flow_control(consumer, deliverer)
    assert consumer.paused_now == {stuck}
    # Still above half the limit: stays paused; the other partition is never paused.
    run._flow_control(consumer, deliverer)
    assert consumer.paused_now == {stuck}
    await deliverer.drop([stuck, other])
    run._flow_control(consumer, deliverer)
    assert consumer.paused_now == set()


async def test_every_partition_pauses_while_max_pending_actions_run(
        endpoint: Endpoint, session: aiohttp.ClientSession) -> None:
    tps = [TopicPartition("t", p) for p in range(4)]
    run, deliverer = _setup(endpoint, session, endpoint.url("hook", HANG))
    consumer = Consumer(set(tps))
    for n in range(LIMIT):
        deliverer.submit(_rec(tps[n % 4], n // 4, f"c{n}"))
    await endpoint.wait_until(lambda: len(endpoint.hits) == LIMIT)
    run._flow_control(consumer, deliverer)
    assert consumer.paused_now == set(tps)
    await deliverer.drop(tps[:3])  # 5 still running: below half, everything resumes
    run._flow_control(consumer, deliverer)
    assert consumer.paused_now == set()
    await deliverer.drop(tps)
