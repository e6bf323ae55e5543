"""`churnguard worker`: wires settings, the table, the batch path and the agents, then runs
the Faust worker until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import math

import faust
import structlog
from faust.types import TP

from agents.fire_timers import FireTimers
from agents.locks import PartitionLocks
from agents.score_events import ScoreEvents
from churnguard.batch import BatchContext
from churnguard.clocks import Clock, clock_for
from churnguard.engine import build_engine
from churnguard.logging import stdlib_logging_config
from churnguard.metrics import Metrics
from streams.app import Topology, create_app
from streams.batch_path import BatchPathConsumer, install_batch_path
from streams.settings import Settings
from streams.topology import ensure_all_topics
from tables.state_store import TableBatchWriter

log = structlog.get_logger(__name__)

STATS_INTERVAL_S = 10.0


class Worker(faust.Worker):
    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        # The worker leaves the root logger at DEBUG for its spinner: every produced record
        # would then build a debug LogRecord on the hot path.
        logging.getLogger().setLevel(self.loglevel or logging.WARNING)
        log.info("worker_ready", app_id=self.app.conf.id)


def build_worker_app(
    settings: Settings, *, metrics: Metrics | None = None, clock: Clock | None = None
) -> Topology:
    """The app with the hot path and the timer tick installed (tests inject a clock)."""
    topology = create_app(settings)
    app = topology.app
    metrics = metrics or Metrics()
    clock = clock or clock_for(settings.clock_file)
    ctx = BatchContext.create(
        build_engine(settings), settings.topics, metrics, settings.max_future_skew_hours
    )
    writer = TableBatchWriter(
        app,
        topology.customer_to_state,
        # Tansu's ListOffsets answers the last batch's base offset + 1, which breaks faust's
        # recovery; Apache Kafka needs no workaround.
        single_record_tail=settings.embedded_broker,
    )
    locks = PartitionLocks()
    score_events = ScoreEvents(ctx, writer, locks, clock)
    install_batch_path(app, topology.inputs, score_events,
                       max_idle_s=settings.max_task_idle_s,
                       max_buffered=settings.buffered_records_per_partition)
    inputs = set(topology.inputs)

    async def watermark(partition: int) -> float:
        """Event time up to which the partition's inputs are applied: +inf when every input
        is caught up, else the newest applied record time of the lagging ones (-inf, so no
        tick, while a batch of it is in hand or nothing is applied yet)."""
        consumer = app.consumer
        if score_events.pending[partition] or not isinstance(consumer, BatchPathConsumer):
            return -math.inf
        until = math.inf
        for topic in inputs:
            tp = TP(topic, partition)
            if not await consumer.caught_up(tp):
                until = min(until, score_events.applied_until.get(tp, -math.inf))
        return until

    timers = FireTimers(ctx, writer, locks, clock, limit=settings.tick_limit,
                        watermark=watermark)

    @app.timer(interval=settings.tick_interval_s)  # type: ignore[untyped-decorator]
    async def fire_timers() -> None:
        consumer = app.consumer
        if not isinstance(consumer, BatchPathConsumer):
            return
        await consumer.run_guarded(
            timers.tick, topics=inputs
        )

    @app.timer(interval=STATS_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def log_stats() -> None:
        # One canonical line per interval, never one per event.
        log.info("worker_stats", **metrics.snapshot())

    return topology


def run_worker(settings: Settings) -> int:
    ensure_all_topics(settings)
    topology = build_worker_app(settings)
    level = settings.log_level.upper()
    worker = Worker(
        topology.app, loglevel=level, quiet=True, logging_config=stdlib_logging_config(level)
    )
    log.info("worker_starting", app_id=settings.app_id, partitions=settings.partitions,
             store=settings.store, embedded_broker=settings.embedded_broker)
    worker.execute_from_commandline()
    return 0
