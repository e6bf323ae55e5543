"""Fixtures for the agent tests: the thin Faust shell (ScoreEvents, FireTimers) driven
without Faust or a broker, over a FakeWriter behind an autospec of TableBatchWriter (so
every call the agents make is checked against the real writer's signatures), real
BatchContext/engine/metrics and a ManualClock at T0."""

from __future__ import annotations

from collections.abc import Callable
from unittest.mock import MagicMock, create_autospec

import pytest

from agents.fire_timers import FireTimers
from agents.locks import PartitionLocks
from agents.score_events import ScoreEvents
from churnguard.batch import BatchContext
from churnguard.clocks import ManualClock
from churnguard.engine import build_engine
from churnguard.metrics import Metrics
from streams.settings import Settings
from tables.state_store import TableBatchWriter
from tests.agents.support import T0, TOPICS, FakeWriter, Records


@pytest.fixture
def fake() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def writer(fake: FakeWriter) -> MagicMock:
    """The fake behind an autospec of the real writer: a call the real one would refuse
    (wrong arguments, positional `outputs`) fails the test."""
    mock = create_autospec(TableBatchWriter, instance=True)
    mock.get_many.side_effect = fake.get_many
    mock.scan.side_effect = fake.scan
    mock.count_keys.side_effect = fake.count_keys
    mock.write.side_effect = fake.write
    return mock


# --- the agents ------------------------------------------------------------------------------

@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def ctx(settings: Settings, metrics: Metrics) -> BatchContext:
    return BatchContext.create(build_engine(settings), settings.topics, metrics, 24)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def locks() -> PartitionLocks:
    return PartitionLocks()


@pytest.fixture
def score_events(
    ctx: BatchContext, writer: MagicMock, locks: PartitionLocks, clock: ManualClock
) -> ScoreEvents:
    return ScoreEvents(ctx, writer, locks, clock)


@pytest.fixture
def timers_factory(
    ctx: BatchContext, writer: MagicMock, locks: PartitionLocks, clock: ManualClock
) -> Callable[..., FireTimers]:
    def make(limit: int = 100) -> FireTimers:
        return FireTimers(ctx, writer, locks, clock, limit=limit)

    return make


@pytest.fixture
def fire_timers(timers_factory: Callable[..., FireTimers]) -> FireTimers:
    return timers_factory()


@pytest.fixture
def rec() -> Records:
    return Records(TOPICS)


