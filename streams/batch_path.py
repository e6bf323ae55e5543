"""A bulk path inside a faust worker: records of the source topics bypass faust's per-event
machinery (~80-100 µs per event) and reach one batch handler per fetch.

How it hooks in (faust-streaming 0.15.3 private internals, pinned in pyproject.toml):

- `install_batch_path` replaces the app's consumer factory (`App._new_consumer`) so the
  worker runs `BatchPathConsumer`, a subclass of faust's aiokafka `Consumer`.
- `BatchPathConsumer._wait_next_records` (called by faust's `Consumer.getmany`) takes the
  source-topic records out of every fetch into per-partition buffers
  (`streams.partition_group`) and hands the handler what the cross-topic merge can decide:
  co-partitioned topics are applied in record-timestamp order, as Kafka Streams does;
  everything else (changelog recovery, other agents) goes on through faust's normal
  per-event path.
- `BatchPathConsumer._getmany` leaves out of the fetch the partitions whose buffer is full
  (their records wait in aiokafka's fetcher, which then fetches no more for them) and shortens
  the fetch wait to the next idle deadline of the merge.
- Offsets of finished batches are fed into faust's own commit path through
  `_filter_tps_with_pending_acks` and `_new_offset`, so faust's commit timer and
  `broker_commit_every` commit them and `_should_commit` keeps them from going backwards.
- `wait_empty` (what faust awaits before it commits on revocation and on shutdown) first
  waits for the batch in flight.

Guarantees: a batch is marked done only when the handler returned, the consumer generation
is unchanged and the partition is still assigned. A failed batch is read again (the fetch
position is moved back to its first offset); a batch cut short by a rebalance is read again
from the committed offset that faust seeks to after every rebalance. Handlers must therefore
be idempotent under replay (faust also drops un-committed work on revocation).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import faust
import structlog
from faust.exceptions import ImproperlyConfigured
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from churnguard.logging import log_loop_exception
from streams.consumer_stop import BoundedStopConsumerThread, ShutdownCommits
from streams.partition_group import PartitionGroups

__all__ = [
    "BatchHandler",
    "BatchPathConsumer",
    "SourceRecord",
    "install_batch_path",
]

log = structlog.get_logger(__name__)


class SourceRecord(NamedTuple):
    """One fetched record of a source topic (a tuple: built per record, a frozen dataclass
    costs ~1 µs more per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


BatchHandler = Callable[[Mapping[TP, Sequence[SourceRecord]]], Awaitable[None]]

T = TypeVar("T")

# Marks the consumer factory installed by `install_batch_path` (one route per app).
_FACTORY_MARK = "_churnguard_batch_path"
# At most one line per this many seconds about partitions the merge stopped waiting for.
_ENFORCED_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class _Route:
    topics: frozenset[str]
    handler: BatchHandler
    initial_backoff_s: float
    max_backoff_s: float
    max_idle_s: float
    max_buffered: int
    fetch_max_wait_s: float


class _Outcome(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    STALE = "stale"  # finished, but a rebalance happened meanwhile: not marked done


class _WorkerConsumerThread(BoundedStopConsumerThread):
    """With the fetch wait chosen here: faust (0.15.3) hard-codes aiokafka's
    `fetch_max_wait_ms=1500`, and a broker holds a fetch that long when nothing arrives —
    records arriving for a partition of that fetch meanwhile (Tansu) or records of the
    partitions left out of it (aiokafka fetches only the idle ones while the busy ones'
    records wait unconsumed) then wait for it, up to 1.5 s of event-to-action latency."""

    fetch_max_wait_ms = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() (aiokafka 0.14.0), which builds the fetcher.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class BatchPathConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with the source topics routed to a batch handler."""

    last_commit_attempt: float | None = None

    def __init__(self, *args: Any, batch_route: _Route, **kwargs: Any) -> None:
        self._route = batch_route
        # Next offset to commit per partition, recorded only after a batch is durable.
        self._batch_done: dict[TP, int] = {}
        # Partitions whose fetch position must go back before they may be processed
        # again (a failed or skipped batch): partition -> first unprocessed offset.
        self._rewind: dict[TP, int] = {}
        # Batches and guarded runs under way: revocation and shutdown wait for them.
        self._inflight: set[asyncio.Future[Any]] = set()
        self._backoff_s = 0.0
        # Fetched, not yet handed over: the cross-topic merge's buffers.
        self._groups: PartitionGroups[TP, SourceRecord] = PartitionGroups(
            max_idle_s=batch_route.max_idle_s, max_buffered=batch_route.max_buffered
        )
        self._enforced_logged = 0
        self._enforced_logged_at = 0.0
        # Partitions of the batch taken from the merge until it is done or read again: not
        # caught up meanwhile (the timer tick must not run ahead of their records).
        self._in_flight: set[TP] = set()
        self._shutdown_commits = ShutdownCommits()
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> BoundedStopConsumerThread:
        # faust's thread, with a stop that neither dies half-way nor hangs without a broker.
        thread = _WorkerConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = max(1, round(self._route.fetch_max_wait_s * 1000))
        thread.thread_loop.set_exception_handler(log_loop_exception)
        return thread

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        # Commit attempts, successful or with nothing new: what tells a stalled consumer
        # (commits continue, offset stuck) from a stopped one (streams/partition_status.py).
        self.last_commit_attempt = time.time()
        commit = super().commit
        if not self.app.should_stop:
            done: bool = await commit(*args, **kwargs)
            return done
        # Shutting down: with the broker gone a commit would wait forever for a coordinator.
        return await self._shutdown_commits.run(lambda: commit(*args, **kwargs))

    # -- fetch interception -------------------------------------------------------------

    async def _wait_next_records(
        self,
        timeout: float,  # noqa: ASYNC109 - faust's signature
    ) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        records, active_partitions = await super()._wait_next_records(timeout)
        if records is None:
            return records, active_partitions
        topics = self._route.topics
        ours = {tp: recs for tp, recs in records.items() if tp.topic in topics and recs}
        if not ours and not self._groups.partitions():
            return records, active_partitions
        rest = {tp: recs for tp, recs in records.items() if tp.topic not in topics}
        # Also without new records: a merge waiting on an idle partition may go on now.
        await self._take_batch(ours)
        # Source records never reach faust's per-event path, where the subscribing agent
        # would ack (and so commit) them unprocessed.
        return rest, active_partitions

    async def _getmany(
        self,
        active_partitions: set[TP] | None,
        timeout: float,  # noqa: ASYNC109 - faust's signature
    ) -> Any:
        if active_partitions is not None:
            held = self._groups.full()
            if held:
                # A copy: faust's own set of active partitions stays as it is.
                active_partitions = {tp for tp in active_partitions if tp not in held}
                if not active_partitions:
                    await asyncio.sleep(0)  # every buffer is full: the merge drains them
                    return {}
        now = time.monotonic()
        deadline = self._groups.next_deadline(now)
        if self._groups.more and self._groups.partitions():
            timeout = 0.0  # releasable records wait in the merge: take what is there, go on
        elif deadline is not None:
            timeout = min(timeout, max(0.0, deadline - now))
        return await super()._getmany(active_partitions, timeout)

    def _flow_open(self) -> bool:
        return bool(self.flow_active and self.app.flow_control.is_active())

    def _fetched_all(self, tp: TP) -> bool:
        """Whether the fetcher has handed out every record the broker had for `tp` at its
        last fetch response (its high-water mark); False while that is unknown."""
        try:
            consumer = self._thread._ensure_consumer()
            state = consumer._subscription.subscription.assignment.state_value(tp)
        except Exception:  # not started, not subscribed or not assigned: unknown
            return False
        if state is None:
            return False
        # Read once: the consumer thread may reset the position meanwhile (no assert).
        position, highwater = state._position, state.highwater
        return position is not None and highwater is not None and position >= highwater

    def offsets(self, topics: Iterable[str]) -> list[tuple[TP, int | None, int | None]]:
        """(partition, committed offset, high-water mark of the last fetch response) of every
        partition of `topics` this worker owns: what lag is computed from. The high-water
        mark comes from fetch responses because the embedded broker's ListOffsets is wrong."""
        names = set(topics)
        try:
            assignment = self._thread._ensure_consumer()._subscription.subscription.assignment
        except Exception:  # not started or not subscribed: nothing owned
            return []
        found = []
        for tp in sorted(self.assignment()):
            if tp.topic not in names:
                continue
            state = assignment.state_value(tp)
            highwater = None if state is None else state.highwater
            found.append((tp, self._committed_offset.get(tp), highwater))
        return found

    def _arriving(self, tp: TP) -> bool:
        """Whether aiokafka's fetcher holds fetched records of `tp` not yet handed out."""
        try:
            return tp in self._thread._ensure_consumer()._fetcher._records
        except Exception:  # not started: nothing held
            return False

    async def _take_batch(self, fetched: Mapping[Any, list[Any]]) -> None:
        groups = self._groups
        if not self._flow_open():
            # Rebalance or shutdown under way: faust's getmany seeks every partition back
            # to its committed offset when it sees the stopped flow, and so does recovery:
            # what is buffered will be fetched again.
            groups.clear()
            return
        generation = self.app.consumer_generation_id
        active = self._get_active_partitions()
        skipped: dict[TP, int] = {}
        for aio_tp, recs in fetched.items():
            tp = TP(aio_tp.topic, aio_tp.partition)
            if tp in self._rewind or tp not in active:
                # A pending rewind means these records lie beyond an unprocessed gap.
                skipped[tp] = self._rewind.get(tp, recs[0].offset)
                continue
            groups.add(tp, [
                SourceRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for r in recs
            ])
        for tp in groups.partitions():
            first = groups.first_offset(tp)
            if first is not None and (tp not in active or tp in skipped):
                # Paused (recovery) or taken away: fetch it again from its first buffered
                # record once it is active again.
                skipped[tp] = min(first, skipped.get(tp, first))
                groups.drop(tp)
        if skipped:
            await self._seek_back(skipped, generation)
            if not self._flow_open() or self.app.consumer_generation_id != generation:
                return  # a rebalance began meanwhile: no batch may start after its wait_empty
        topics = self._route.topics
        batch = groups.release(
            (tp for tp in active if tp.topic in topics), self._fetched_all, time.monotonic(),
            # A batch stays the size of a fetch, however much the merge holds.
            limit=self.app.conf.broker_max_poll_records,
            arriving=self._arriving,
        )
        self._log_enforced()
        if not batch:
            return
        self._in_flight = set(batch)
        try:
            await self._hand_over(batch, generation)
        finally:
            self._in_flight = set()

    async def _hand_over(self, batch: dict[TP, list[SourceRecord]], generation: int) -> None:
        """Run the handler on a released batch; mark it done, or read it again."""
        groups = self._groups
        # Taken before the handler runs, which may reorder what it was given.
        firsts = {tp: recs[0].offset for tp, recs in batch.items()}
        ends = {tp: recs[-1].offset + 1 for tp, recs in batch.items()}
        size = sum(len(recs) for recs in batch.values())

        task = self._start_guarded(self._run_handler(batch, ends, size, generation))
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # the fetcher itself is being cancelled; the batch goes on
            outcome = _Outcome.FAILED

        if outcome is _Outcome.DONE:
            self._backoff_s = 0.0
            await self._maybe_commit(size)
        elif outcome is _Outcome.FAILED:
            for tp in firsts:
                groups.drop(tp)  # what is buffered lies beyond the records to read again
            await self._seek_back(firsts, generation)
            route = self._route
            self._backoff_s = min(
                route.max_backoff_s, max(route.initial_backoff_s, self._backoff_s * 2)
            )
            await self.sleep(self._backoff_s)  # returns early when the consumer stops

    def _log_enforced(self) -> None:
        enforced = self._groups.enforced
        now = time.monotonic()
        if enforced > self._enforced_logged and (
            now - self._enforced_logged_at >= _ENFORCED_LOG_INTERVAL_S
        ):
            log.warning(
                "cross_topic_merge_stopped_waiting",
                releases=enforced - self._enforced_logged,
                max_idle_s=self._route.max_idle_s,
                hint="an input partition had records on the broker but none arrived within "
                "max_idle_s; its records may be applied out of timestamp order",
            )
            self._enforced_logged, self._enforced_logged_at = enforced, now

    async def _run_handler(
        self,
        batch: Mapping[TP, Sequence[SourceRecord]],
        ends: Mapping[TP, int],
        size: int,
        generation: int,
    ) -> _Outcome:
        try:
            await self._route.handler(batch)
        except asyncio.CancelledError:
            log.warning("batch_cancelled", records=size, partitions=len(batch))
            raise
        except Exception:
            log.exception(
                "batch_handler_failed",
                records=size,
                partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in batch),
            )
            return _Outcome.FAILED
        if self.app.consumer_generation_id != generation:
            log.info("batch_spans_rebalance", records=size, partitions=len(batch))
            return _Outcome.STALE
        assignment = self.assignment()
        done = self._batch_done
        monitor = self.app.monitor
        for tp, next_offset in ends.items():
            if tp in assignment:
                done[tp] = max(done.get(tp, next_offset), next_offset)
                monitor.track_tp_end_offset(tp, self.highwater(tp))
        return _Outcome.DONE

    async def _maybe_commit(self, records: int) -> None:
        # Same trigger as faust's per-event path: commit after `broker_commit_every`
        # records, otherwise the commit timer (`broker_commit_interval`) does it.
        self._n_acked += records
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    async def _seek_back(self, offsets: Mapping[TP, int], generation: int) -> None:
        """Move fetch positions back so that unprocessed records are fetched again."""
        if self.app.consumer_generation_id != generation:
            return  # the new generation starts from the committed offsets anyway
        for tp, offset in offsets.items():
            self._rewind[tp] = min(offset, self._rewind.get(tp, offset))
        if not self._flow_open():
            return  # a rebalance is under way: it seeks to the committed offsets itself
        assignment = self.assignment()
        targets = {tp: self._rewind[tp] for tp in offsets if tp in assignment}
        try:
            await self.seek_wait(targets)
        except Exception as exc:
            # Keep the rewinds pending: records of these partitions stay skipped (never
            # marked done past the gap) and the seek is retried on their next fetch.
            log.warning("batch_seek_back_failed", partitions=len(targets), error=repr(exc))
            return
        for tp in targets:
            self._rewind.pop(tp, None)

    def _start_guarded(self, work: Awaitable[T]) -> asyncio.Future[T]:
        # Own task: cancelling the caller (faust stops the fetcher at shutdown before it
        # waits for streams) must not cut the work short; `wait_empty` waits for it.
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    async def run_guarded(
        self, fn: Callable[[frozenset[int]], Awaitable[T]], *, topics: Iterable[str]
    ) -> T | None:
        """Run `fn(partitions)` under a batch's guarantees, for work outside the fetch loop
        (e.g. a timer writing the table): `partitions` are the numbers of the partitions of
        `topics` this worker actively owns (not paused for recovery), and revocation and
        shutdown wait for `fn` to finish. Returns None without calling `fn` while the flow
        is stopped or nothing is owned; an exception is logged and gives None (the worker
        stays up), so `fn` must leave nothing half-done that a later call cannot redo."""
        names = frozenset(topics)
        if not self._flow_open():
            return None
        owned = frozenset(tp.partition for tp in self._get_active_partitions() if tp.topic in names)
        if not owned:
            return None
        try:
            return await asyncio.shield(self._start_guarded(fn(owned)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("guarded_run_failed", partitions=sorted(owned))
            return None

    async def caught_up(self, tp: TP) -> bool:
        """Whether every record of `tp` the broker has (its high-water mark, from the last
        fetch response) has been applied: no unconsumed backlog on this partition, neither
        on the broker, nor in the merge's buffer, nor in a batch under way or read again."""
        return (not self._groups.buffered(tp) and tp not in self._in_flight
                and tp not in self._rewind and self._fetched_all(tp))

    # -- faust's commit path ------------------------------------------------------------

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        tps = set(super()._filter_tps_with_pending_acks(topics))
        tps.update(
            tp for tp in self._batch_done if topics is None or tp in topics or tp.topic in topics
        )
        return iter(tps)

    def _new_offset(self, tp: TP) -> int | None:
        done = self._batch_done.get(tp)
        if done is None:
            offset: int | None = super()._new_offset(tp)
            return offset
        # Source partitions never take the per-event path, so faust has no acks for them.
        return done

    # -- rebalance and shutdown ---------------------------------------------------------

    async def wait_empty(self) -> None:
        """Let batches and guarded runs in flight finish before faust commits and gives
        partitions up (none can start meanwhile: the flow is stopped first)."""
        pending = {task for task in self._inflight if not task.done()}
        if pending:
            log.info("waiting_for_batch_in_flight", tasks=len(pending))
            await asyncio.wait(pending)
        await super().wait_empty()

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # A new generation: recovery seeks every partition to its committed offset, so
        # done offsets and pending rewinds of the old generation no longer apply.
        self._batch_done.clear()
        self._rewind.clear()
        self._groups.clear()
        self._backoff_s = 0.0
        await super().on_partitions_assigned(assigned, generation_id)


def install_batch_path(
    app: faust.App,
    topics: Iterable[str],
    handler: BatchHandler,
    *,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 5.0,
    max_idle_s: float = 5.0,
    max_buffered: int = 20_000,
    fetch_max_wait_s: float = 1.5,
) -> None:
    """Call before the worker starts. Records fetched for these source topics on actively
    assigned partitions go to `handler` in batches instead of faust's per-event path.

    This also subscribes the topics through a no-op agent (named
    `streams.batch_path.subscription`), which is what makes faust subscribe them and
    co-partition them with the app's tables; the app must not subscribe these topics
    anywhere else. Every topic, source and changelog, must exist with the same partition
    count before the worker starts. Requires the aiokafka transport, `stream_wait_empty`
    (the default) and at-least-once processing (no `processing_guarantee="exactly_once"`).

    Partition p of every topic is one group: its records reach the handler in a prefix that
    `streams.partition_group.merge` puts in record-timestamp order; a group waits up to
    `max_idle_s` for a partition with records still on the broker, and a partition's fetching
    pauses while `max_buffered` of its records wait in the merge. A fetch waits at most
    `fetch_max_wait_s` for records to arrive.
    """
    names = frozenset(topics)
    if not names:
        raise ValueError("install_batch_path needs at least one source topic")
    if getattr(app, "_consumer", None) is not None:
        raise RuntimeError("install_batch_path must be called before the app's consumer exists")
    if getattr(app._new_consumer, _FACTORY_MARK, False):
        raise RuntimeError("install_batch_path was already called for this app")
    route = _Route(names, handler, initial_backoff_s, max_backoff_s, max_idle_s, max_buffered,
                   fetch_max_wait_s)

    channel = app.topic(
        *sorted(names),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        # Should a record ever leak past the consumer, it must not be committed.
        acks=False,
    )

    async def subscription(stream: Any) -> None:
        leaked = 0
        async for _event in stream:
            if not leaked:
                log.error("batch_path_record_leaked", topics=sorted(names))
            leaked += 1

    app.agent(channel, name=f"{__name__}.subscription")(subscription)

    def new_consumer() -> BatchPathConsumer:
        transport = app.transport
        if not isinstance(transport, faust_aiokafka.Transport):
            raise ImproperlyConfigured("the batch path needs faust's aiokafka transport")
        if not app.conf.stream_wait_empty:
            raise ImproperlyConfigured("the batch path needs stream_wait_empty=True")
        if app.in_transaction:
            raise ImproperlyConfigured("the batch path does not support exactly_once")
        # Same wiring as faust's App._new_consumer, with our consumer class.
        return BatchPathConsumer(
            transport,
            callback=app.topics.on_message,
            on_partitions_revoked=app._on_partitions_revoked,
            on_partitions_assigned=app._on_partitions_assigned,
            beacon=app.beacon,
            loop=transport.loop,
            batch_route=route,
        )

    setattr(new_consumer, _FACTORY_MARK, True)
    app._new_consumer = new_consumer  # type: ignore[method-assign]
