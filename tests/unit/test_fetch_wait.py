"""The worker's fetch wait reaches aiokafka: faust (0.15.3) hard-codes
`fetch_max_wait_ms=1500`, which held records for up to 1.5 s (streams/batch_path.py)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aiokafka
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.batch_path import _WorkerConsumerThread
from streams.settings import Settings


def test_the_default_fetch_wait_is_short() -> None:
    assert Settings().fetch_max_wait_s == 0.02


def test_the_worker_consumer_gets_the_configured_fetch_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[aiokafka.AIOKafkaConsumer] = []

    def faust_creates(self: Any, transport: Any) -> aiokafka.AIOKafkaConsumer:
        async def create() -> aiokafka.AIOKafkaConsumer:
            # As faust does, 1500 ms (a real, unstarted consumer).
            return aiokafka.AIOKafkaConsumer(bootstrap_servers="localhost:1",
                                             fetch_max_wait_ms=1500)
        made.append(asyncio.run(create()))
        return made[-1]

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer",
                        faust_creates)
    thread = _WorkerConsumerThread.__new__(_WorkerConsumerThread)
    thread.fetch_max_wait_ms = 20
    consumer = thread._create_worker_consumer(None)
    assert consumer is made[0]
    assert consumer._fetch_max_wait_ms == 20
    asyncio.run(consumer.stop())  # never started: closes what it holds


def test_aiokafka_builds_its_fetcher_from_the_attribute_set() -> None:
    """The hook sets a private attribute: an aiokafka that stops reading it must fail here,
    not silently bring the 1.5 s back."""
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(
        aiokafka.AIOKafkaConsumer.start)
