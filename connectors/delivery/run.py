"""`churnguard deliver`: the clients, the loop that feeds the Deliverer and commits behind
it, the /metrics /health /ready endpoints, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from churnguard.errors import UserError
from churnguard.http_listen import listen, metrics_response
from connectors.admin import ensure_topics
from connectors.delivery.metrics import DeliveryMetrics
from connectors.delivery.routes import Router
from connectors.delivery.sender import Sender
from connectors.delivery.service import Deliverer, commit
from streams.settings import Settings

log = structlog.get_logger(__name__)

# A summary line this often (never one per action).
SUMMARY_INTERVAL_S = 10.0
FETCH_TIMEOUT_MS = 200


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before a partition goes to another process: commit what is finished, stop the rest."""

    def __init__(self, runner: DeliveryRun) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._runner.take(assigned)
        log.info("delivery_partitions_assigned", partitions=len(assigned))


class DeliveryRun:
    def __init__(self, settings: Settings, router: Router) -> None:
        if settings.delivery.secret is None:
            raise UserError(
                "deliver: CHURNGUARD_DELIVERY__SECRET is not set: it signs every request "
                "(X-Churnguard-Signature) so that endpoints can check it comes from "
                "churnguard; set it to a random string of 16 or more characters, the same "
                "the endpoints check with (docs/deliver.md)")
        self.settings = settings
        self.router = router
        self.metrics = DeliveryMetrics()
        self.stopping = asyncio.Event()
        self.committed: dict[TopicPartition, int] = {}
        self.deliverer: Deliverer | None = None
        self.consumer: Any = None
        self.web_port: int | None = None
        self._lag_shown: set[TopicPartition] = set()
        self._paused_all = False
        self._lag_base: dict[TopicPartition, int] = {}  # partitions never committed

    async def release(self, partitions: set[TopicPartition]) -> None:
        if self.deliverer is None:
            return
        await commit(self.consumer, self.deliverer, self.committed)
        await self.deliverer.drop(partitions)
        for tp in partitions:
            self.committed.pop(tp, None)
            self._lag_base.pop(tp, None)
            if tp in self._lag_shown:
                self._lag_shown.discard(tp)
                self.metrics.lag.remove(tp.topic, str(tp.partition))

    async def take(self, partitions: set[TopicPartition]) -> None:
        """The group's committed offsets of newly owned partitions: where delivery resumes,
        what lag is measured from."""
        fresh = []
        for tp in partitions:
            offset = await self.consumer.committed(tp)
            if offset is None:
                fresh.append(tp)
            else:
                self.committed[tp] = offset
        if fresh:
            # Never committed (a new group): lag counts from where delivery starts, so a
            # partition stuck on its first action shows its whole backlog.
            starts = (self.consumer.beginning_offsets if self.settings.delivery.start_from
                      == "earliest" else self.consumer.end_offsets)
            self._lag_base.update(await starts(fresh))

    async def run(self) -> None:
        settings = self.settings
        topics = settings.topics
        delivery = settings.delivery
        try:
            await asyncio.to_thread(
                ensure_topics, settings.link,
                [*topics.actions(), topics.delivery_dlq, topics.feedback], settings.partitions,
                replication_factor=settings.replication_factor, timeout_s=30)
        except KafkaError as exc:
            raise UserError(f"deliver: the broker at {settings.bootstrap} failed "
                            f"({type(exc).__name__}); {settings.link.unreachable_hint()}"
                            ) from None
        web_runner = await self._start_web()  # first: a port in use stops it before any client
        producer = AIOKafkaProducer(**settings.link.client_options(), acks="all",
                                    linger_ms=5, client_id="churnguard-deliver",
                                    max_request_size=settings.max_record_bytes)
        consumer = AIOKafkaConsumer(
            **settings.link.client_options(), group_id=delivery.group_id,
            client_id="churnguard-deliver", enable_auto_commit=False,
            auto_offset_reset=delivery.start_from,
            # A customer's actions are on the same partition number of every action topic:
            # the range assignor gives them all to one process, which keeps their order.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
            max_poll_records=min(delivery.max_pending, 1000))
        self.consumer = consumer
        connector = aiohttp.TCPConnector(limit=delivery.concurrency)
        try:
            await producer.start()
            async with aiohttp.ClientSession(connector=connector) as session:
                sender = Sender(session, delivery, self.metrics)
                self.deliverer = Deliverer(delivery, topics, self.router, sender, producer,
                                           self.metrics,
                                           max_record_bytes=settings.max_record_bytes)
                consumer.subscribe(topics.actions(), listener=_Revocations(self))
                await consumer.start()
                log.info("deliver_started", routes=self.router.source,
                         group=delivery.group_id, web_port=self.web_port)
                await self._loop(consumer, self.deliverer)
                await self._stop(consumer, self.deliverer)
        finally:
            await consumer.stop()
            await producer.stop()
            await web_runner.cleanup()

    async def _loop(self, consumer: Any, deliverer: Deliverer) -> None:
        delivery = self.settings.delivery
        next_commit = next_summary = time.monotonic()
        while not self.stopping.is_set():
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            for records in batches.values():
                for record in records:
                    deliverer.submit(record)
            self._flow_control(consumer, deliverer)
            now = time.monotonic()
            if now >= next_commit:
                await commit(consumer, deliverer, self.committed)
                self._update_lag(consumer)
                next_commit = now + delivery.commit_interval_s
            if now >= next_summary:
                self._summary(deliverer)
                next_summary = now + SUMMARY_INTERVAL_S

    def _flow_control(self, consumer: Any, deliverer: Deliverer) -> None:
        """Bounded read-ahead: all partitions pause while `max_pending` actions are running,
        one partition while `max_pending` of its offsets wait behind its commit point (a
        customer whose endpoint keeps failing holds up its own partition only); each
        resumes at half."""
        limit = self.settings.delivery.max_pending
        assignment = consumer.assignment()
        paused = consumer.paused()
        running = deliverer.running
        self._paused_all = running >= limit or (running > limit // 2 and self._paused_all)
        if self._paused_all:
            wanted = set(assignment)
        else:
            wanted = {tp for tp in assignment
                      if (backlog := deliverer.uncommitted_of(tp)) >= limit
                      or (backlog > limit // 2 and tp in paused)}
        if wanted - paused:
            consumer.pause(*(wanted - paused))
        if paused - wanted:
            consumer.resume(*(paused - wanted))

    async def _stop(self, consumer: Any, deliverer: Deliverer) -> None:
        """Finish what is being sent (one attempt's timeout at most), commit it; the rest is
        re-delivered by whoever takes the partitions next."""
        drained = await deliverer.drain(self.settings.delivery.timeout_s + 1)
        await commit(consumer, deliverer, self.committed)
        left = deliverer.running
        await deliverer.drop(list(deliverer.progress))
        self._summary(deliverer)
        log.info("deliver_stopped", drained=drained, left_for_redelivery=left)

    def _summary(self, deliverer: Deliverer) -> None:
        if deliverer.finished:
            log.info("delivery_progress", running=deliverer.running,
                     uncommitted=deliverer.uncommitted,
                     **dict(deliverer.finished))
            deliverer.finished.clear()

    def _update_lag(self, consumer: Any) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            point = self.committed.get(tp, self._lag_base.get(tp))
            if highwater is not None and point is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(highwater - point)
                self._lag_shown.add(tp)

    async def _start_web(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/health", self._health_view)
        app.router.add_get("/ready", self._ready_view)
        runner, self.web_port = await listen(app, self.settings.delivery.web_host,
                                             self.settings.delivery.web_port,
                                             setting="CHURNGUARD_DELIVERY__WEB_PORT")
        return runner

    async def _metrics_view(self, _: web.Request) -> web.Response:
        return metrics_response(self.metrics.registry)

    async def _health_view(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready_view(self, _: web.Request) -> web.Response:
        assigned = len(self.consumer.assignment()) if self.consumer is not None else 0
        ready = self.deliverer is not None and assigned > 0
        return web.json_response({"ready": ready, "partitions": assigned},
                                 status=200 if ready else 503)


def run_deliver(settings: Settings, router: Router) -> int:
    run = DeliveryRun(settings, router)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, run.stopping.set)
        await run.run()

    asyncio.run(main())
    return 0
