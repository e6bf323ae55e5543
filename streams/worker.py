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
  `WATCHDOG_EXIT_CODE`. The shutdown's offset commits and the consumer thread's stop
  are bounded too (`_harden_consumer_thread`), so that the graceful path itself ends in
  time when no batch is waiting for the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import faust
import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from agents.fire_timers import FireTimers
from agents.locks import PartitionLocks
from agents.score_events import ScoreEvents
from churnguard.batch import BatchContext
from churnguard.clocks import Clock, clock_for
from churnguard.engine import build_engine
from churnguard.logging import install_exception_hooks, log_loop_exception, stdlib_logging_config
from churnguard.metrics import Metrics
from streams.app import Topology, create_app
from streams.batch_path import BatchPathConsumer, install_batch_path
from streams.health import BrokerHealth
from streams.settings import Settings
from streams.topology import ensure_all_topics
from tables.state_store import TableBatchWriter
from tables.store_lock import acquire_store_lock

log = structlog.get_logger(__name__)

STATS_INTERVAL_S = 10.0
# From SIGTERM to exit at most (the contract: within 10 s, whatever the broker does).
SHUTDOWN_DEADLINE_S = 8.0
# Exit status when the watchdog ends a stuck shutdown (EX_SOFTWARE).
WATCHDOG_EXIT_CODE = 70
# aiokafka's consumer stop (leave group, close fetcher and connections) at most.
CONSUMER_STOP_TIMEOUT_S = 3.0
# The offset commits of a shutdown together at most (aiokafka retries a commit until it
# finds the group coordinator, forever while the broker is gone).
SHUTDOWN_COMMIT_BUDGET_S = 2.0
BROKER_PROBE_INTERVAL_S = 2.0
BROKER_PROBE_TIMEOUT_S = 5.0


class ShutdownWatchdog:
    """Ends the process if a graceful shutdown has not finished `deadline_s` after `arm()`.

    Faust's stop path can block far longer than any orchestrator waits when the broker
    is gone: aiokafka commits and leaves the group through a coordinator it cannot find,
    the producer waits for unacknowledged batches up to its request timeout (20 min),
    and faust waits 60 s for a consumer thread that died on the way out. The watchdog is
    a daemon thread, so it fires even when the event loop itself is blocked.

    Exiting without the graceful path loses nothing: every output and changelog record
    is acknowledged before its state is written to RocksDB, and input offsets are
    committed only after that write (docs/design.md, "The hot path"). A batch cut short
    is read again after the restart and changes nothing twice (each state remembers the
    offsets applied); at worst its actions are sent again with the same action ids."""

    def __init__(
        self,
        deadline_s: float = SHUTDOWN_DEADLINE_S,
        *,
        exit_code: int = WATCHDOG_EXIT_CODE,
        exit_process: Callable[[int], object] = os._exit,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        # Whose pending tasks to list when the deadline passes (where the stop is stuck).
        self.loop = loop
        self.exit_code = exit_code
        self._exit_process = exit_process
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.reason: str | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, reason: str) -> None:
        """Start the countdown (idempotent: the first reason and deadline count)."""
        with self._lock:
            if self._timer is not None:
                return
            self.reason = reason
            timer = threading.Timer(self.deadline_s, self._expire)
            timer.name = "churnguard-shutdown-watchdog"
            timer.daemon = True
            self._timer = timer
            timer.start()
        log.info("shutdown_started", reason=reason, deadline_s=self.deadline_s)

    def _expire(self) -> None:
        frames = sys._current_frames()
        stacks = {
            f"{thread.name} ({thread.ident})": "".join(traceback.format_stack(frame))
            for thread in threading.enumerate()
            if thread is not threading.current_thread()
            and (frame := frames.get(thread.ident or -1)) is not None
        }
        log.error(
            "shutdown_deadline_exceeded",
            reason=self.reason,
            deadline_s=self.deadline_s,
            exit_code=self.exit_code,
            detail="graceful shutdown still blocked; exiting without it (state is safe: "
                   "changelog first, offsets committed only after writes)",
            stacks=stacks,
            tasks=self._pending_tasks(),
        )
        for stream in (sys.stderr, sys.stdout):
            with contextlib.suppress(Exception):
                stream.flush()
                stream.buffer.flush()
        self._exit_process(self.exit_code)

    def _pending_tasks(self) -> list[str]:
        """Each pending task of `loop` with its chain of awaits (best effort: read from
        this thread while the loop may run)."""
        if self.loop is None:
            return []
        try:
            return [_await_chain(task) for task in list(asyncio.all_tasks(self.loop))]
        except Exception as exc:  # a diagnostic must never stop the exit
            return [f"unavailable: {exc!r}"]


def _await_chain(task: asyncio.Task[Any]) -> str:
    """"name: outer:line > ... > innermost:line" for a task's current awaits."""
    steps: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(steps) < 40:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        steps.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return f"{task.get_name()}: {' > '.join(steps)}"


class Worker(faust.Worker):
    def __init__(
        self, *args: Any, watchdog: ShutdownWatchdog | None = None, **kwargs: Any
    ) -> None:
        self.watchdog = watchdog or ShutdownWatchdog()
        super().__init__(*args, **kwargs)

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


# -- the consumer thread's stop, bounded -----------------------------------------------------

async def _stop_consumer_thread(thread: Any, timeout_s: float) -> None:
    """Replaces faust's `AIOKafkaConsumerThread.on_thread_stop` (faust-streaming 0.15.3):
    the thread's method queue first, as faust does, then `stop_aiokafka_consumer`."""
    await super(faust_aiokafka.AIOKafkaConsumerThread, thread).on_thread_stop()
    if thread._consumer is not None:
        await stop_aiokafka_consumer(thread._consumer, timeout_s)


async def stop_aiokafka_consumer(consumer: Any, timeout_s: float) -> None:
    """`AIOKafkaConsumer.stop()` (aiokafka 0.14.0), bounded and never raising but for a
    cancellation of the caller.

    With the broker gone, aiokafka's `Fetcher.close()` cancels its pending fetch task while
    that task sleeps in the retry backoff of a failed request (`_proc_fetch_request`'s
    `except KafkaError:` handler, outside the `except CancelledError` that covers the
    request) and then awaits it unguarded, so `CancelledError` escapes `stop()`. In the
    consumer thread it unwound mode's `ServiceThread._shutdown_thread` before
    `set_shutdown()`, the thread died, and faust's parent waited `shutdown_timeout` (60 s)
    for a shutdown event nobody would set. Here that error is logged and swallowed, the
    stop is bounded, and the client that `stop()` closes last is closed anyway."""
    try:
        await asyncio.wait_for(consumer.stop(), timeout_s)
        return
    except asyncio.CancelledError:
        if _cancelling():
            raise
        log.warning("consumer_stop_interrupted", error="CancelledError",
                    detail="aiokafka's fetcher close re-raised a cancelled fetch")
    except TimeoutError:
        log.warning("consumer_stop_timeout", timeout_s=timeout_s)
    except Exception as exc:
        log.warning("consumer_stop_failed", error=repr(exc))
    try:
        await asyncio.wait_for(consumer._client.close(), timeout_s)
    except asyncio.CancelledError:
        if _cancelling():
            raise
        log.warning("consumer_client_close_failed", error="CancelledError")
    except Exception as exc:  # TimeoutError included
        log.warning("consumer_client_close_failed", error=repr(exc))


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not a CancelledError that
    escaped from a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _log_thread_crash(msg: str, *fmt: Any, **_: Any) -> None:
    """mode's `ServiceThread.on_crash` prints the traceback to stderr line by line."""
    log.error("consumer_thread_crashed", message=msg.format(*fmt),
              exception=traceback.format_exc())


class _Budget:
    """Seconds shared by several waits, counted from the first `remaining()` call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline: float | None = None

    def remaining(self) -> float:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.seconds
        return max(0.0, self._deadline - now)


def _bound_shutdown_commits(app: faust.App, consumer: Any, budget_s: float) -> None:
    """While the app stops, faust commits offsets twice (`App._stop_consumer` and the
    consumer's `on_stop`, both through `wait_empty`); with the broker gone each commit
    waits forever for a group coordinator. Those commits share `budget_s`; one that does
    not finish in time is given up: the records since the last commit are read again
    after the restart and change nothing (each state remembers the offsets applied).
    Commits outside a shutdown (timer, rebalance) are untouched."""
    commit = consumer.commit
    budget = _Budget(budget_s)

    async def bounded_commit(*args: Any, **kwargs: Any) -> bool:
        if not app.should_stop:
            done: bool = await commit(*args, **kwargs)
            return done
        timeout_s = budget.remaining()
        if timeout_s > 0:
            task = asyncio.ensure_future(commit(*args, **kwargs))
            # Not wait_for, which waits for the cancelled commit to unwind: a commit
            # waiting for another one to finish (the commit timer's, stuck the same way)
            # swallows its own cancellation in faust's
            # `Consumer.maybe_wait_for_commit_to_finish` and starts a new commit, which
            # then never returns. The task is cancelled and left to the loop's shutdown.
            finished, _ = await asyncio.wait({task}, timeout=timeout_s)
            if finished:
                return bool(task.result())
            task.cancel()
        log.warning("shutdown_commit_skipped", budget_s=budget_s,
                    detail="offsets since the last commit are read again on restart")
        return False

    consumer.commit = bounded_commit


def _harden_consumer_thread(
    app: faust.App,
    *,
    stop_timeout_s: float = CONSUMER_STOP_TIMEOUT_S,
    commit_budget_s: float = SHUTDOWN_COMMIT_BUDGET_S,
) -> None:
    """Wrap the app's consumer factory (installed by `install_batch_path`) so that the
    consumer's shutdown commits and its thread's stop are bounded, and the thread logs
    crashes and loop errors as one record each."""
    factory = app._new_consumer

    @functools.wraps(factory)  # keeps the batch path's factory mark
    def new_consumer() -> Any:
        consumer: Any = factory()
        _bound_shutdown_commits(app, consumer, commit_budget_s)
        thread: Any = consumer._thread
        if isinstance(thread, faust_aiokafka.AIOKafkaConsumerThread):
            # Per instance: batch_path.py's consumer class creates faust's thread class.
            thread.on_thread_stop = functools.partial(  # type: ignore[method-assign]
                _stop_consumer_thread, thread, stop_timeout_s
            )
            thread.on_crash = _log_thread_crash  # type: ignore[method-assign]
            thread.thread_loop.set_exception_handler(log_loop_exception)
        return consumer

    app._new_consumer = new_consumer  # type: ignore[method-assign]


# -- broker health ---------------------------------------------------------------------------

async def probe_broker(
    app: faust.App, health: BrokerHealth, *, timeout_s: float = BROKER_PROBE_TIMEOUT_S
) -> None:
    """Ask the producer's client for fresh cluster metadata and report to `health`."""
    producer = getattr(app.producer, "_producer", None)
    if producer is None:
        return  # not started yet (or stopped)
    try:
        # A shielded future of the client's metadata synchronizer: a timeout here leaves
        # the update itself running.
        updated = await asyncio.wait_for(producer.client.force_metadata_update(), timeout_s)
    except TimeoutError:
        health.report(False, reason=f"no metadata answer within {timeout_s:g}s")
        return
    health.report(
        bool(updated),
        reason=None if updated else "metadata request failed on every known broker",
    )


# -- the app ---------------------------------------------------------------------------------

def build_worker_app(
    settings: Settings, *, metrics: Metrics | None = None, clock: Clock | None = None
) -> Topology:
    """The app with the hot path and the timer tick installed (tests inject a clock)."""
    topology = create_app(settings)
    app = topology.app
    metrics = metrics or Metrics()
    clock = clock or clock_for(settings.clock_file)
    ctx = BatchContext.create(
        build_engine(settings), settings.topics, metrics, settings.max_future_skew_hours,
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
    score_events = ScoreEvents(ctx, writer, locks, clock)
    install_batch_path(app, topology.inputs, score_events,
                       max_idle_s=settings.max_task_idle_s,
                       max_buffered=settings.buffered_records_per_partition)
    _harden_consumer_thread(app)
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

    @app.timer(interval=BROKER_PROBE_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def broker_probe() -> None:
        await probe_broker(app, topology.health)

    return topology


def create_worker(settings: Settings, topology: Topology) -> Worker:
    """The faust worker for the app, its logging as one stream of JSON lines."""
    level = settings.log_level.upper()
    worker = Worker(
        topology.app,
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
    when the store directory is in use by another worker."""
    # Never released: held until the process exits, when the kernel drops it whatever the
    # way out (kill -9 too) — not earlier, while RocksDB may still be open.
    store_lock = acquire_store_lock(settings.store_dir) if settings.store == "rocksdb" else None
    ensure_all_topics(settings)
    worker = create_worker(settings, build_worker_app(settings))
    install_exception_hooks(worker.loop)
    log.info("worker_starting", app_id=settings.app_id, partitions=settings.partitions,
             store=settings.store, store_dir=str(settings.store_dir),
             embedded_broker=settings.embedded_broker, pid=os.getpid(),
             store_lock=None if store_lock is None else str(store_lock.path))
    worker.execute_from_commandline()
    return 0
