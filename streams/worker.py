"""`churnguard worker`: wires settings, the table, the batch path and the agents, then runs
the Faust worker until SIGTERM/SIGINT.

Lifecycle:
- Start: the store directory is locked first (`tables.store_lock`; a second worker on
  the same directory exits at once with a `UserError`), then topics are checked.
- Health: `Topology.health` (`streams.health.BrokerHealth`) says whether the broker
  answered the last metadata probe (every `BROKER_PROBE_INTERVAL_S`); transitions are
  logged once as `broker_unreachable` / `broker_reachable`.
- Stop: SIGTERM/SIGINT (or any other end of the worker) arms `ShutdownWatchdog`: faust's
  graceful stop gets `SHUTDOWN_DEADLINE_S`, then the process logs
  `shutdown_deadline_exceeded` with every thread's stack and exits with
  `WATCHDOG_EXIT_CODE` (`streams.shutdown`). The shutdown's offset commits and the
  consumer thread's stop are bounded too (`streams.consumer_stop`, installed by the batch
  path's consumer), so that the graceful path itself ends in time when no batch is waiting
  for the broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
from typing import Any

import faust
import structlog
from faust.types import TP
from yarl import URL

from agents.census import CensusScan
from agents.fire_timers import FireTimers
from agents.insights import WorkerInsights
from agents.locks import PartitionLocks
from agents.reindex import Reindex
from agents.score_events import ScoreEvents
from churnguard import __version__
from churnguard.access_tokens import configured_tokens
from churnguard.batch import BatchContext
from churnguard.clocks import Clock, clock_for
from churnguard.core import native, state_codec
from churnguard.core.pack import RulePack
from churnguard.engine import build_engine
from churnguard.gc_policy import tune_for_throughput
from churnguard.http_access import AccessPolicy
from churnguard.logging import install_exception_hooks, stdlib_logging_config
from churnguard.metrics import Metrics
from churnguard.rules.loading import load_pack
from churnguard.rules.publishing import Published, load_publishable_file, newest_valid, read_history
from churnguard.state_cache import DecodedStates
from streams.app import Topology, create_app
from streams.audit_log import AuditLog
from streams.batch_path import BatchPathConsumer, install_batch_path
from streams.codecs import CONTRACT_VERSION
from streams.dashboard import Dashboard
from streams.health import BROKER_PROBE_INTERVAL_S, probe_broker
from streams.insights import InsightsViews
from streams.metrics_export import WorkerCollector, registry_for
from streams.observability import Observability
from streams.rules_feed import PackSwitch, follow
from streams.settings import Settings
from streams.shutdown import ShutdownWatchdog
from streams.topology import ensure_all_topics
from streams.web import WorkerWeb
from tables.state_store import TableBatchWriter
from tables.store_lock import acquire_store_lock

log = structlog.get_logger(__name__)

STATS_INTERVAL_S = 10.0
# One re-index chunk per interval (agents/reindex.py): ~5,000 customers a second.
REINDEX_INTERVAL_S = 0.1
# One census chunk per interval (agents/census.py), for stores without a census record.
CENSUS_INTERVAL_S = 0.1


class Worker(faust.Worker):
    def __init__(
        self, *args: Any, watchdog: ShutdownWatchdog | None = None,
        web: WorkerWeb | None = None, **kwargs: Any
    ) -> None:
        self.watchdog = watchdog or ShutdownWatchdog()
        self.web = web
        super().__init__(*args, **kwargs)

    async def on_first_start(self) -> None:
        # Before the app starts: probes and /metrics answer during table recovery too.
        if self.web is not None:
            await self.web.start()
            # Shared with the group at each join (faust's assignor): the other workers
            # forward a customer's 360 view here and ask for this worker's KPI sums.
            self.app.conf.canonical_url = URL(self.web.url)
        await super().on_first_start()

    async def on_stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
        await super().on_stop()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        # The worker leaves the root logger at DEBUG for its spinner: every produced record
        # would then build a debug LogRecord on the hot path.
        logging.getLogger().setLevel(self.loglevel or logging.WARNING)
        log.info("worker_ready", app_id=self.app.conf.id)

    def _on_sigterm(self) -> None:
        self.watchdog.arm("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.watchdog.arm("SIGINT")
        super()._on_sigint()

    def on_worker_shutdown(self) -> None:
        # Every other way out (the app crashed, start-up failed) is bounded the same way.
        self.watchdog.arm("worker_stopping")
        super().on_worker_shutdown()


def build_worker_app(
    settings: Settings, *, metrics: Metrics | None = None, clock: Clock | None = None,
    published: tuple[Published, RulePack] | None = None,
) -> Topology:
    """The app with the hot path and the timer tick installed (tests inject a clock);
    `published`: the pack to start on (startup_pack), else the configured one."""
    topology = create_app(settings)
    app = topology.app
    metrics = metrics or Metrics()
    clock = clock or clock_for(settings.clock_file)
    ctx = BatchContext.create(
        build_engine(settings, None if published is None else published[1]),
        settings.topics, metrics, settings.max_future_skew_hours,
        # The producer's max_request_size: outputs and states that would not fit are
        # dead-lettered by the batch layer (its `fits` allows for Kafka's framing), so
        # the writer's own check (RecordTooLargeError) stays unreachable.
        max_record_bytes=app.conf.producer_max_request_size,
    )
    writer = TableBatchWriter(
        app,
        topology.customer_to_state,
        # Tansu's ListOffsets answers the last batch's base offset + 1, which breaks faust's
        # recovery; Apache Kafka needs no workaround.
        single_record_tail=settings.embedded_broker,
    )
    locks = PartitionLocks()
    insights = WorkerInsights(writer, locks, max_record_bytes=ctx.max_record_bytes)
    decoded = DecodedStates(settings.state_cache_customers)
    score_events = ScoreEvents(ctx, writer, locks, clock, insights=insights, decoded=decoded)
    install_batch_path(app, topology.inputs, score_events,
                       max_idle_s=settings.max_task_idle_s,
                       max_buffered=settings.buffered_records_per_partition,
                       fetch_max_wait_s=settings.fetch_max_wait_s)
    inputs = set(topology.inputs)

    async def watermark(partition: int) -> float:
        """Event time up to which the partition's inputs are applied: +inf when every input
        is caught up, else the newest applied record time of the lagging ones (-inf, so no
        tick, while nothing is applied yet). A batch in hand keeps it where the batches
        before left it: under continuous input one almost always is, and holding the tick
        until none is starved the timers for seconds."""
        consumer = app.consumer
        if not isinstance(consumer, BatchPathConsumer):
            return -math.inf
        until = math.inf
        for topic in inputs:
            tp = TP(topic, partition)
            if not await consumer.caught_up(tp):
                until = min(until, score_events.applied_until.get(tp, -math.inf))
        return until

    timers = FireTimers(ctx, writer, locks, clock, limit=settings.tick_limit,
                        watermark=watermark, insights=insights,
                        interval=settings.tick_interval_s, floor=settings.fetch_max_wait_s,
                        decoded=decoded)
    score_events.on_due = timers.note_due
    reindexing = Reindex(ctx, writer, locks)
    census = CensusScan(writer, locks, metrics)

    @app.task  # type: ignore[untyped-decorator]
    async def fire_timers() -> None:
        # Not an app.timer: the next tick is due at the owned partitions' earliest pending
        # due, between a floor and the tick interval after this one (FireTimers.pause).
        loop = asyncio.get_running_loop()
        while not app.should_stop:
            consumer = app.consumer
            if not isinstance(consumer, BatchPathConsumer) or await consumer.run_guarded(
                timers.tick, topics=inputs
            ) is None:
                timers.forget()  # no tick ran: wait the interval
            await timers.pause(loop.time())

    if settings.rules_file is None:
        def activate(pack: RulePack) -> None:
            # Between batches: the handlers read ctx.engine once per partition batch.
            ctx.engine = build_engine(settings, pack)

        switch = PackSwitch(0 if published is None else published[0].version, metrics,
                            activate)

        @app.task  # type: ignore[untyped-decorator]
        async def follow_rules() -> None:
            await follow(settings.link, settings.topics.rules, switch)
    else:
        log.info("rules_file_in_use", path=str(settings.rules_file),
                 note="published packs are not followed")

    _background_scans(app, inputs, reindexing, census, insights, decoded)
    web = _observability(topology, settings, metrics, inputs, writer,
                         insights=insights, ctx=ctx, clock=clock)

    @app.timer(interval=STATS_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def log_stats() -> None:
        # One canonical line per interval, never one per event.
        log.info("worker_stats", **metrics.snapshot())

    @app.timer(interval=BROKER_PROBE_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def broker_probe() -> None:
        await probe_broker(app, topology.health)

    return dataclasses.replace(topology, web=web)


def _background_scans(app: faust.App, inputs: set[str], reindexing: Reindex,
                      census: CensusScan, insights: WorkerInsights,
                      decoded: DecodedStates) -> None:
    """The throttled walks of the store, each through the guarded-run path: the re-index
    after a pack changed a timer, the census of a store without one, the read of the KPI
    aggregates of a partition taken over."""

    @app.timer(interval=REINDEX_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def reindex_due() -> None:
        consumer = app.consumer
        if isinstance(consumer, BatchPathConsumer):
            await consumer.run_guarded(reindexing.step, topics=inputs)

    @app.timer(interval=CENSUS_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def count_census() -> None:
        consumer = app.consumer
        if isinstance(consumer, BatchPathConsumer):
            await consumer.run_guarded(census.step, topics=inputs)
            await consumer.run_guarded(insights.step, topics=inputs)

    @app.on_partitions_revoked.connect
    async def forget_census(*args: Any, **kwargs: Any) -> None:
        # After the batch and tick in flight ended: read again once owned (another worker
        # may write the partition meanwhile).
        census.forget()
        insights.forget()
        decoded.forget()  # (would only be misses: memory back)


def _observability(
    topology: Topology, settings: Settings, metrics: Metrics, inputs: set[str],
    writer: TableBatchWriter, *, insights: WorkerInsights, ctx: BatchContext, clock: Clock,
) -> WorkerWeb | None:
    """/metrics, /health, /ready, /status and /dashboard, the business's /kpis, /feedback,
    /segments, /customers/{id} and /insights, and the 1 s sampling that keeps them fresh."""
    app = topology.app
    seen = Observability(topology, metrics, inputs, writer, insights)
    collector = WorkerCollector(metrics, seen.view, version=__version__,
                                contract_version=str(CONTRACT_VERSION))
    dashboard = Dashboard(metrics, seen.view) if settings.web_enabled else None

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def sample() -> None:
        seen.sample()
        if dashboard is not None:
            dashboard.sample()

    @app.on_partitions_assigned.connect
    async def count_rebalance(*args: Any, **kwargs: Any) -> None:
        metrics.rebalances += 1

    if not settings.web_enabled:
        return None
    changelog = topology.customer_to_state.changelog_topic.get_topic_name()

    def distribution() -> dict[str, list[int]]:
        # Each member's URL and the state partitions it owns, from the last assignment.
        shared = app.assignor.changelog_distribution  # type: ignore[attr-defined]
        return {url: list(tps.get(changelog, ())) for url, tps in shared.items()}

    async def send_audit(key: bytes | None, value: bytes) -> object:
        return await app.producer.send_and_wait(settings.topics.audit, key, value, None,
                                                None, None)

    async def send_input(key: bytes | None, value: bytes) -> object:
        return await app.producer.send_and_wait(settings.topics.events, key, value, None,
                                                None, None)

    audit = AuditLog(send_audit)
    views = InsightsViews(
        insights=insights, census=seen.census, owned=seen.owned_partitions,
        engine=lambda: ctx.engine, writer=writer, partitions=settings.partitions,
        distribution=distribution, own_url=lambda: str(app.conf.canonical_url),
        recovering=lambda: seen.readiness().recovering,
        now=clock.now, audit=audit, send_input=send_input)
    tokens = configured_tokens(settings.web_tokens, settings.web_token_file,
                               setting="CHURNGUARD_WEB_TOKEN_FILE")
    policy = AccessPolicy(tokens, open_probes=settings.web_open_probes,
                          on_refused=audit.refused)
    return WorkerWeb(registry_for(collector), seen.heartbeat, seen.readiness,
                     seen.status_report, host=settings.web_host, port=settings.web_port,
                     policy=policy, dashboard=dashboard, insights=views, audit=audit,
                     advertised_host=settings.web_advertised_host)


def startup_pack(settings: Settings) -> tuple[Published, RulePack] | None:
    """The newest published pack that validates, read before any event is processed; None
    when none was published (the shipped default runs)."""
    history = read_history(settings.link, settings.topics.rules, missing_ok=True)
    newest = newest_valid(history)
    if newest is None:
        log.info("rule_pack_default", published_versions=len(history))
        return None
    refused = [p.version for p in history if p.version > newest.version]
    if refused:
        log.error("rule_pack_refused", versions=refused, running=newest.version)
    pack = load_pack(newest.pack, f"published version {newest.version}")
    log.info("rule_pack_activated", version=newest.version, previous=None,
             sha256=newest.sha256, author=newest.author, rules=len(pack.rules))
    return newest, pack


def create_worker(settings: Settings, topology: Topology) -> Worker:
    """The faust worker for the app, its logging as one stream of JSON lines."""
    level = settings.log_level.upper()
    worker = Worker(
        topology.app,
        web=topology.web,
        loglevel=level,
        quiet=True,
        logging_config=stdlib_logging_config(level),
        # faust would replace stdout/stderr by a logger that logs every write — a thread's
        # traceback became ~100 JSON lines of one character each; the hooks installed by
        # run_worker log it as one record instead.
        redirect_stdouts=False,
    )
    worker.watchdog.loop = worker.loop
    return worker


def run_worker(settings: Settings) -> int:
    """Run the worker until it is stopped. Raises `UserError` (before anything starts)
    when the store directory is in use by another worker or its rules file is invalid."""
    state_codec.write_format(settings.state_format)
    if settings.rules_file is not None:
        # Every problem of the file (as `rules validate` finds them), before the broker.
        load_publishable_file(settings.rules_file)
    # Never released: held until the process exits, when the kernel drops it whatever the
    # way out (kill -9 too) — not earlier, while RocksDB may still be open.
    store_lock = acquire_store_lock(settings.store_dir) if settings.store == "rocksdb" else None
    ensure_all_topics(settings)
    published = None if settings.rules_file is not None else startup_pack(settings)
    worker = create_worker(settings, build_worker_app(settings, published=published))
    install_exception_hooks(worker.loop)
    tune_for_throughput()  # the app is built: what lives as long as the worker is frozen
    log.info("worker_starting", app_id=settings.app_id, partitions=settings.partitions,
             store=settings.store, store_dir=str(settings.store_dir),
             embedded_broker=settings.embedded_broker, pid=os.getpid(),
             store_lock=None if store_lock is None else str(store_lock.path),
             core=native.MODE)
    worker.execute_from_commandline()
    return 0
