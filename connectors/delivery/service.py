"""The delivery loop: action records in, one task per action, offsets committed behind them.

A customer's actions are delivered one after another in the order read (a task waits for
the customer's previous one); different customers' go concurrently, bounded by the sender's
slots (the read-ahead is bounded by run.py's flow control). An action is
finished when it is delivered, skipped, or its dead letter is acknowledged by the broker;
only then can its offset be committed (PartitionProgress). A crash or a lost partition
re-delivers what was not committed under the same Idempotency-Key: at-least-once."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from connectors.delivery.metrics import DeliveryMetrics
from connectors.delivery.progress import PartitionProgress
from connectors.delivery.records import (
    Source,
    delivery_dead_letter,
    feedback_event,
    readable_action,
)
from connectors.delivery.routes import Router, shown_url
from connectors.delivery.sender import Sender
from connectors.delivery.settings import DeliverySettings
from streams.settings import TopicNames

log = structlog.get_logger(__name__)

# A failed produce (DLQ, feedback) is retried after this; the action stays unfinished.
PRODUCE_RETRY_S = 1.0


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Producer(Protocol):
    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None
                            ) -> Any: ...


class Deliverer:
    def __init__(self, settings: DeliverySettings, topics: TopicNames, router: Router,
                 sender: Sender, producer: Producer, metrics: DeliveryMetrics, *,
                 max_record_bytes: int = 1_000_000,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._settings = settings
        self._topics = topics
        self._router = router
        self._sender = sender
        self._producer = producer
        self._metrics = metrics
        self._sleep = sleep
        # Room for the record's key and framing (as the worker's limit counts them).
        self._max_record_bytes = max_record_bytes - 1024
        self.progress: dict[TopicPartition, PartitionProgress] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._tails: dict[bytes | None, asyncio.Task[None]] = {}  # each customer's last
        self.finished: Counter[str] = Counter()  # since the last summary line

    @property
    def running(self) -> int:
        """Actions started and not finished (sending, waiting to retry, or queued behind
        their customer's previous one)."""
        return sum(len(tasks) for tasks in self._tasks.values())

    @property
    def uncommitted(self) -> int:
        return sum(p.uncommitted for p in self.progress.values())

    def uncommitted_of(self, tp: TopicPartition) -> int:
        progress = self.progress.get(tp)
        return 0 if progress is None else progress.uncommitted

    def submit(self, record: Record) -> None:
        """Start delivering `record` (after its customer's previous action)."""
        tp = TopicPartition(record.topic, record.partition)
        self.progress.setdefault(tp, PartitionProgress()).read(record.offset)
        previous = self._tails.get(record.key)
        task = asyncio.create_task(self._finish(tp, record, previous))
        self._tails[record.key] = task
        self._tasks.setdefault(tp, set()).add(task)
        task.add_done_callback(lambda done: self._forget(tp, record.key, done))
        self._metrics.in_flight.inc()

    def committable(self, committed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Partitions whose commit point moved past `committed`."""
        return {tp: p.commit_point for tp, p in self.progress.items()
                if p.commit_point is not None and p.commit_point > committed.get(tp, -1)}

    async def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this process no longer owns (revoked, or shutting down): their
        unfinished actions stop; the next owner re-delivers from the committed offset."""
        tasks = [task for tp in partitions for task in self._tasks.get(tp, ())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for tp in partitions:
            self.progress.pop(tp, None)
            self._tasks.pop(tp, None)

    async def drain(self, timeout_s: float) -> bool:
        """Wait for every started action up to `timeout_s`; True when all finished."""
        tasks = [task for tasks in self._tasks.values() for task in tasks]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    def _forget(self, tp: TopicPartition, key: bytes | None, task: asyncio.Task[None]) -> None:
        self._metrics.in_flight.dec()
        if self._tails.get(key) is task:
            del self._tails[key]
        tasks = self._tasks.get(tp)
        if tasks is not None:
            tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug: the action stays unfinished (its offset is never committed past), so
            # nothing is lost; a restart delivers it again.
            log.error("delivery_task_failed", topic=tp.topic, partition=tp.partition,
                      error=repr(task.exception()))

    async def _finish(self, tp: TopicPartition, record: Record,
                      previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            # Whatever became of it: cancelled with a partition this process lost (its
            # partition of this topic goes too, with the range assignor), or failed.
            await asyncio.wait([previous])
        try:
            status = await self._deliver(record)
        except Exception as exc:  # a bug must not hold the partition's commits forever
            log.error("delivery_failed_unexpectedly", topic=record.topic,
                      partition=record.partition, offset=record.offset,
                      error=type(exc).__name__)
            status = "error"
            await self._dead_letter(record, Source(record.topic, record.partition,
                                                   record.offset),
                                    readable_action(record.value), "error",
                                    f"deliver failed on this action ({type(exc).__name__}: "
                                    f"{exc}); report it", None, 0, None)
        self.finished[status] += 1
        self._metrics.deliveries.labels(status=status).inc()
        progress = self.progress.get(tp)
        if progress is not None:
            progress.finish(record.offset)

    async def _deliver(self, record: Record) -> str:
        source = Source(record.topic, record.partition, record.offset)
        action = readable_action(record.value)
        if action is None:
            await self._dead_letter(record, source, None, "unreadable",
                                    "not an action record (a JSON object with action_id, "
                                    "customer_id and type)", None, 0, None)
            return "unreadable"
        route = self._router.route(action)
        if route is None:
            payload = action.get("payload")
            template = payload.get("template") if isinstance(payload, dict) else None
            what = f"type={action['type']}" + (f" template={template}" if template else "")
            await self._dead_letter(record, source, action, "no_route",
                                    f"no route of {self._router.source} fits {what}; add "
                                    "one or a default", None, 0, None)
            return "no_route"
        if route.skip:
            return "skipped"
        assert route.url is not None
        assert record.value is not None
        attempted = await self._sender.send(route, record.value, action["action_id"],
                                            action["type"])
        if attempted.status == "delivered":
            await self._feedback(record, action, "delivered")
            return "delivered"
        reason = (f"refused: {attempted.error}" if attempted.status == "refused" else
                  f"gave up after {attempted.attempts} attempts: {attempted.error}")
        await self._dead_letter(record, source, action, attempted.status, reason,
                                shown_url(route.url), attempted.attempts,
                                attempted.http_status)
        return attempted.status

    async def _dead_letter(self, record: Record, source: Source, action: dict[str, Any] | None,
                           kind: str, reason: str, endpoint: str | None, attempts: int,
                           http_status: int | None) -> None:
        letter = functools.partial(delivery_dead_letter, source, record.value, kind=kind,
                                   reason=reason, endpoint=endpoint, attempts=attempts,
                                   http_status=http_status, at=time.time())
        value = letter(action)
        if len(value) > self._max_record_bytes:
            # The action with its dead letter's fields would not fit in one record: only
            # described then (it stays readable at its source offset for the retention).
            value = letter(None, action_id=None if action is None else action["action_id"])
        await self._produce(self._topics.delivery_dlq, value, record.key)
        if action is not None:
            await self._feedback(record, action, "failed")

    async def _feedback(self, record: Record, action: dict[str, Any], status: str) -> None:
        if self._settings.feedback:
            await self._produce(self._topics.feedback,
                                feedback_event(action, status, at=time.time()),
                                action["customer_id"].encode())

    async def _produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        """Until the broker acknowledges it: an action is finished only once its outputs
        are durable."""
        while True:
            try:
                await self._producer.send_and_wait(topic, value, key=key)
            except KafkaError as exc:
                log.warning("delivery_produce_failed", topic=topic, error=type(exc).__name__,
                            retry_in_s=PRODUCE_RETRY_S)
                await self._sleep(PRODUCE_RETRY_S)
            else:
                return


async def commit(consumer: Any, deliverer: Deliverer, committed: dict[TopicPartition, int]
                 ) -> None:
    """Commit every partition's commit point that moved; a commit lost to a rebalance is
    only logged (the next owner re-delivers from the last one that succeeded)."""
    offsets = deliverer.committable(committed)
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
    except CommitFailedError:
        log.warning("delivery_commit_lost_to_rebalance", partitions=len(offsets))
    else:
        committed.update(offsets)
