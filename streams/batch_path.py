"""A bulk path inside a faust worker: records of the source topics bypass faust's per-event
machinery (~80-100 µs per event) and reach one batch handler per fetch.

How it hooks in (faust-streaming 0.15.3 private internals, pinned in pyproject.toml):

- `install_batch_path` replaces the app's consumer factory (`App._new_consumer`) so the
  worker runs `BatchPathConsumer`, a subclass of faust's aiokafka `Consumer`.
- `BatchPathConsumer._wait_next_records` (called by faust's `Consumer.getmany`) takes the
  source-topic records out of every fetch and hands them to the handler; everything else
  (changelog recovery, other agents) goes on through faust's normal per-event path.
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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
import structlog
from faust.exceptions import ImproperlyConfigured
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = [
    "BatchHandler",
    "BatchPathConsumer",
    "SourceRecord",
    "install_batch_path",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One fetched record of a source topic."""

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


@dataclass(frozen=True, slots=True)
class _Route:
    topics: frozenset[str]
    handler: BatchHandler
    initial_backoff_s: float
    max_backoff_s: float


class _Outcome(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    STALE = "stale"  # finished, but a rebalance happened meanwhile: not marked done


class BatchPathConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with the source topics routed to a batch handler."""

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
        super().__init__(*args, **kwargs)

    # -- fetch interception -------------------------------------------------------------

    async def _wait_next_records(
        self,
        timeout: float,  # noqa: ASYNC109 - faust's signature
    ) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        records, active_partitions = await super()._wait_next_records(timeout)
        if not records:
            return records, active_partitions
        topics = self._route.topics
        ours = {tp: recs for tp, recs in records.items() if tp.topic in topics and recs}
        if not ours:
            return records, active_partitions
        rest = {tp: recs for tp, recs in records.items() if tp.topic not in topics}
        await self._take_batch(ours)
        # Source records never reach faust's per-event path, where the subscribing agent
        # would ack (and so commit) them unprocessed.
        return rest, active_partitions

    def _flow_open(self) -> bool:
        return bool(self.flow_active and self.app.flow_control.is_active())

    async def _take_batch(self, fetched: Mapping[Any, list[Any]]) -> None:
        if not self._flow_open():
            # Rebalance or shutdown under way: faust's getmany seeks every partition back
            # to its committed offset when it sees the stopped flow, and so does recovery.
            return
        generation = self.app.consumer_generation_id
        active = self._get_active_partitions()
        batch: dict[TP, list[SourceRecord]] = {}
        skipped: dict[TP, int] = {}
        for aio_tp, recs in fetched.items():
            tp = TP(aio_tp.topic, aio_tp.partition)
            if tp in self._rewind or tp not in active:
                # A pending rewind means these records lie beyond an unprocessed gap.
                skipped[tp] = self._rewind.get(tp, recs[0].offset)
                continue
            batch[tp] = [
                SourceRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for r in recs
            ]
        if skipped:
            await self._seek_back(skipped, generation)
        if not batch:
            return
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
            await self._seek_back(firsts, generation)
            route = self._route
            self._backoff_s = min(
                route.max_backoff_s, max(route.initial_backoff_s, self._backoff_s * 2)
            )
            await self.sleep(self._backoff_s)  # returns early when the consumer stops

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
        fetch response) has been handed out: no unconsumed backlog on this partition."""
        highwater = self.highwater(tp)
        if highwater is None:
            return False  # no fetch response yet: unknown, so not caught up
        position: int | None = await self.position(tp)
        return position is not None and position >= highwater

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
        self._backoff_s = 0.0
        await super().on_partitions_assigned(assigned, generation_id)


def install_batch_path(
    app: faust.App,
    topics: Iterable[str],
    handler: BatchHandler,
    *,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 5.0,
) -> None:
    """Call before the worker starts. Records fetched for these source topics on actively
    assigned partitions go to `handler` in batches instead of faust's per-event path.

    This also subscribes the topics through a no-op agent (named
    `streams.batch_path.subscription`), which is what makes faust subscribe them and
    co-partition them with the app's tables; the app must not subscribe these topics
    anywhere else. Every topic, source and changelog, must exist with the same partition
    count before the worker starts. Requires the aiokafka transport, `stream_wait_empty`
    (the default) and at-least-once processing (no `processing_guarantee="exactly_once"`).
    """
    names = frozenset(topics)
    if not names:
        raise ValueError("install_batch_path needs at least one source topic")
    if getattr(app, "_consumer", None) is not None:
        raise RuntimeError("install_batch_path must be called before the app's consumer exists")
    if getattr(app._new_consumer, _FACTORY_MARK, False):
        raise RuntimeError("install_batch_path was already called for this app")
    route = _Route(names, handler, initial_backoff_s, max_backoff_s)

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
