"""The gateway's producer: aiokafka, acks=all, every event to the combined input topic keyed
by customer_id with the default (murmur2, Java-compatible) partitioner, as the contract
requires; `deliver` returns only once the broker acknowledged every record of a request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from churnguard.audit import TOPIC_CONFIG
from connectors.admin import ensure_topics
from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int


class BrokerUnavailable(Exception):
    """Not every record of a request was acknowledged in time: `acknowledged` holds the
    positions (in the records given) of those that were."""

    def __init__(self, reason: str, acknowledged: list[int]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.acknowledged = acknowledged


class EventSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout_s = settings.gateway.broker_timeout_s
        self._producer: AIOKafkaProducer | None = None

    @property
    def ready(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Create or check the combined input topic (a first send would auto-create it with
        the broker's partition count), then connect the producer."""
        settings = self.settings
        timeout_s = settings.gateway.startup_timeout_s
        await asyncio.to_thread(
            ensure_topics, settings.link, [settings.topics.events, settings.topics.audit],
            settings.partitions, replication_factor=settings.replication_factor,
            configs={settings.topics.audit: TOPIC_CONFIG}, timeout_s=timeout_s)
        producer = AIOKafkaProducer(
            **settings.link.client_options(), acks="all", client_id="churnguard-gateway",
            linger_ms=settings.gateway.linger_ms, max_batch_size=256 * 1024,
            max_request_size=settings.max_record_bytes,
            request_timeout_ms=int(self.timeout_s * 1000))
        try:
            await asyncio.wait_for(producer.start(), timeout_s)
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def deliver(self, records: Sequence[Record]) -> None:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("the producer is not connected yet", [])
        futures: list[asyncio.Future[object]] = []
        try:
            async with asyncio.timeout(self.timeout_s):
                for record in records:
                    futures.append(await producer.send(
                        record.topic, record.value, key=record.key,
                        timestamp_ms=record.timestamp_ms))
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            acknowledged = [i for i, f in enumerate(futures)
                            if f.done() and not f.cancelled() and f.exception() is None]
            for future in futures:  # an abandoned failure must not be logged as unretrieved
                if future.done() and not future.cancelled():
                    future.exception()
                else:
                    future.add_done_callback(_retrieve)
            raise BrokerUnavailable(type(exc).__name__, acknowledged) from exc

    async def send_audit(self, key: bytes | None, value: bytes) -> object:
        """One audit entry (churnguard/audit.py), acknowledged."""
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("the producer is not connected yet", [])
        return await producer.send_and_wait(self.settings.topics.audit, value, key=key)

    async def stop(self) -> None:
        """Flush what is buffered (acknowledged or failed) and disconnect."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
