"""A partition's batch of raw records -> the dirty states to write and the records to send.
Pure (no Faust): the agent loads states, calls `process_partition`, writes and sends."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from churnguard import due_index
from churnguard.core.processor import Engine, Outcome, advance, apply_event
from churnguard.core.state import CustomerState
from churnguard.core.validation import Rejected, parse_event
from churnguard.metrics import Metrics
from schemas.events import Event
from streams.codecs import encode_action, encode_dead_letter, encode_score
from streams.settings import TopicNames

log = structlog.get_logger(__name__)


class RawRecord(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class PartitionResult:
    # Table writes: states and due-index entries; None deletes the key.
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BatchContext:
    engine: Engine
    topics: TopicNames
    metrics: Metrics
    max_future_hours: float
    # Input topic -> event type it carries ("" for the combined topic).
    input_types: Mapping[str, str]

    @classmethod
    def create(
        cls, engine: Engine, topics: TopicNames, metrics: Metrics, max_future_hours: float
    ) -> BatchContext:
        return cls(engine, topics, metrics, max_future_hours, topics.inputs())

    def action_topic(self, action_type: str) -> str:
        return {
            "notification": self.topics.notifications,
            "task": self.topics.tasks,
            "coupon": self.topics.coupons,
            "profile_update": self.topics.profile_updates,
        }[action_type]


def process_partition(
    records: Sequence[RawRecord],
    load: Callable[[list[bytes]], list[bytes | None]],
    ctx: BatchContext,
    *,
    now: float,
) -> PartitionResult:
    """`records` all belong to one partition (of one or several co-partitioned topics), in
    the order they are to be applied. `load` multi-gets stored states by customer key."""
    result = PartitionResult()
    metrics = ctx.metrics
    valid: list[tuple[RawRecord, Event]] = []
    for record in records:
        metrics.events_in[record.topic] += 1
        parsed = parse_event(
            record.value,
            ctx.input_types[record.topic],
            now=now,
            max_future_hours=ctx.max_future_hours,
            key=record.key,
            require_key=True,
        )
        if isinstance(parsed, Rejected):
            metrics.dead_letters[parsed.kind] += 1
            result.outputs.append(_dead_letter(record, parsed, ctx, now))
        else:
            valid.append((record, parsed))
    if not valid:
        return result

    keys = list(dict.fromkeys(event.customer_id.encode() for _, event in valid))
    stored = dict(zip(keys, load(keys), strict=True))
    try:
        applied = _apply_all(valid, stored, ctx, now, isolate=False)
    except Exception as exc:  # a record the core cannot process: find it, never stall
        log.warning("batch_isolating_failed_record", error=type(exc).__name__,
                    records=len(valid))
        applied = _apply_all(valid, stored, ctx, now, isolate=True)
    ctx.metrics.merge(applied.metrics)
    result.outputs += applied.outputs
    result.writes.update(applied.writes)
    return result


@dataclass(slots=True)
class _Applied:
    metrics: Metrics
    outputs: list[Output] = field(default_factory=list)
    writes: dict[bytes, bytes | None] = field(default_factory=dict)


def _apply_all(
    valid: Sequence[tuple[RawRecord, Event]],
    stored: dict[bytes, bytes | None],
    ctx: BatchContext,
    now: float,
    *,
    isolate: bool,
) -> _Applied:
    """Apply the events; with `isolate`, one at a time from the last good serialized state,
    so that an event the core fails on is dead-lettered and its customer's state is the one
    before it (slower: only used after a failure)."""
    applied = _Applied(Metrics())
    metrics = applied.metrics
    states = {key: None if raw is None else CustomerState.from_bytes(raw)
              for key, raw in stored.items()}
    good = dict(stored)
    due_before = {key: None if state is None else state.next_due for key, state in states.items()}
    dirty: set[bytes] = set()
    for record, event in valid:
        key = event.customer_id.encode()
        try:
            outcome = apply_event(states[key], event, ctx.engine,
                                  source=(record.topic, record.offset), noticed_at=now)
            if isolate:
                good[key] = outcome.state.to_bytes()
        except Exception as exc:
            if not isolate:
                raise
            raw = good[key]
            states[key] = None if raw is None else CustomerState.from_bytes(raw)
            failure = Rejected("processing_error", f"{type(exc).__name__}: {exc}"[:500])
            metrics.dead_letters[failure.kind] += 1
            applied.outputs.append(_dead_letter(record, failure, ctx, now))
            continue
        states[key] = outcome.state
        dirty.add(key)  # even a duplicate moves the state's offset forward
        if outcome.duplicate:
            metrics.duplicates += 1
            continue
        metrics.events_applied[event.type] += 1
        _collect(outcome, key, ctx, applied.outputs, metrics)
    applied.writes = _store(dirty, states, due_before)
    return applied


def process_due(
    entries: Sequence[bytes],
    load: Callable[[list[bytes]], list[bytes | None]],
    ctx: BatchContext,
    *,
    until: float,
    noticed_at: float,
) -> PartitionResult:
    """A tick: advance the customers of these due-index entries to `until` (the wall clock,
    or less while events are still unconsumed), firing their timers; `noticed_at` is the
    wall clock (for grace). Index entries move in the same writes as their states."""
    result = PartitionResult()
    states = _load(list(dict.fromkeys(due_index.customer_of(e) for e in entries)), load)
    due_before = {key: None if state is None else state.next_due for key, state in states.items()}
    for key, state in states.items():
        if state is not None:
            outcome = advance(state, until, ctx.engine, noticed_at=noticed_at)
            _collect(outcome, key, ctx, result.outputs, ctx.metrics)
    result.writes.update(
        _store({k for k, s in states.items() if s is not None}, states, due_before)
    )
    # An entry that is not the state's current one (or has no state) is stale: drop it, or a
    # tick would read it forever.
    current = {
        due_index.due_key(state.next_due, key)
        for key, state in states.items()
        if state is not None and state.next_due is not None
    }
    for entry in entries:
        if entry not in current:
            result.writes[entry] = None
    ctx.metrics.due_customers += len(states)
    return result


def _load(
    keys: list[bytes], load: Callable[[list[bytes]], list[bytes | None]]
) -> dict[bytes, CustomerState | None]:
    return {
        key: None if raw is None else CustomerState.from_bytes(raw)
        for key, raw in zip(keys, load(keys), strict=True)
    }


def _collect(
    outcome: Outcome, key: bytes, ctx: BatchContext, outputs: list[Output], metrics: Metrics
) -> None:
    for action in outcome.actions:
        metrics.actions[(action.rule_id, action.type)] += 1
        outputs.append(Output(ctx.action_topic(action.type), key, encode_action(action)))
    for score in outcome.score_records:
        metrics.score_changes += 1
        outputs.append(Output(ctx.topics.scores, key, encode_score(score)))
    metrics.timers_expired += len(outcome.expired)


def _store(
    dirty: set[bytes],
    states: dict[bytes, CustomerState | None],
    due_before: dict[bytes, float | None],
) -> dict[bytes, bytes | None]:
    """Each dirty state once, and its due-index entry moved if its next due changed."""
    writes: dict[bytes, bytes | None] = {}
    for key in dirty:
        state = states[key]
        assert state is not None  # every dirty key had an event applied
        writes[key] = state.to_bytes()
        writes.update(due_index.moves(key, due_before[key], state.next_due))
    return writes


def _dead_letter(record: RawRecord, rejected: Rejected, ctx: BatchContext, now: float) -> Output:
    value = encode_dead_letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        kind=rejected.kind,
        reason=rejected.reason,
        at=now,
    )
    return Output(ctx.topics.dlq, record.key, value)
