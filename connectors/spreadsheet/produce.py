"""The import's producer: kafka-python, acks=all, records keyed by customer id to the kind's
per-type topic (created first like every churnguard topic, so a first send never
auto-creates it with the broker's partition count), every acknowledgement counted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from churnguard.errors import UserError
from connectors.admin import ensure_topics
from streams.settings import Settings


@dataclass
class Delivery:
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    first_error: str = ""


class EventProducer:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.where = f"the broker at {settings.bootstrap}"
        self.topic = topic
        self.timeout_s = settings.imports.broker_timeout_s
        self.delivery = Delivery()
        try:
            # Records carry the send time (Kafka's default), not the events' old times: a
            # topic's retention would delete history stamped a year ago at once.
            self._producer = KafkaProducer(
                **settings.link.client_options(), acks="all", client_id="churnguard-import",
                linger_ms=20, batch_size=256 * 1024, max_block_ms=int(self.timeout_s * 1000),
                # (First: the admin client's bootstrap always waits 30 s for a dead broker.)
                bootstrap_timeout_ms=int(self.timeout_s * 1000))
        except KafkaError as exc:
            raise self._failed(exc) from None
        try:
            ensure_topics(settings.link, [topic], settings.partitions,
                          replication_factor=settings.replication_factor,
                          timeout_s=self.timeout_s)
        except BaseException:
            self.abort()
            raise

    def send(self, key: bytes, value: bytes) -> None:
        try:
            future = self._producer.send(self.topic, key=key, value=value)
        except KafkaError as exc:
            raise self._failed(exc) from None
        self.delivery.sent += 1
        # Called on the producer's I/O thread, the only writer of these counts.
        future.add_callback(self._acknowledged)
        future.add_errback(self._error)

    def close(self) -> Delivery:
        """Wait for every acknowledgement (or the timeout); raises UserError unless all came."""
        try:
            self._producer.flush(timeout=self.timeout_s)
        except KafkaError as exc:
            raise self._failed(exc) from None
        finally:
            self._producer.close(timeout=5)
        delivery = self.delivery
        if delivery.acknowledged < delivery.sent:
            raise UserError(
                f"import: {self.where} acknowledged {delivery.acknowledged:,} of "
                f"{delivery.sent:,} events ({delivery.first_error or 'no answer'}); check "
                "it and import the same file again: the events it took have the same ids and "
                "are applied once")
        return delivery

    def abort(self) -> None:
        self._producer.close(timeout=0)

    def _acknowledged(self, _: Any) -> None:
        self.delivery.acknowledged += 1

    def _error(self, exc: BaseException) -> None:
        self.delivery.failed += 1
        if not self.delivery.first_error:
            self.delivery.first_error = type(exc).__name__

    def _failed(self, exc: Exception) -> UserError:
        return UserError(f"import: {self.where} failed ({type(exc).__name__}); check it and "
                         "--broker / CHURNGUARD_BROKER, then import the same file again (the "
                         "events it took have the same ids and are applied once)")
