"""A partition's batch of raw records -> the dirty states to write and the records to send.
Pure (no Faust): the agent loads states, calls `process_partition`, writes and sends."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from churnguard.core.processor import Engine, apply_event
from churnguard.core.state import CustomerState
from churnguard.core.validation import Rejected, parse_event
from churnguard.metrics import Metrics
from schemas.events import Event
from streams.codecs import encode_action, encode_dead_letter, encode_score
from streams.settings import TopicNames


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
    writes: dict[bytes, bytes] = field(default_factory=dict)
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
    states: dict[bytes, CustomerState | None] = {
        key: None if raw is None else CustomerState.from_bytes(raw)
        for key, raw in zip(keys, load(keys), strict=True)
    }
    dirty: set[bytes] = set()
    for record, event in valid:
        key = event.customer_id.encode()
        outcome = apply_event(
            states[key], event, ctx.engine, source=(record.topic, record.offset), noticed_at=now
        )
        states[key] = outcome.state
        dirty.add(key)  # even a duplicate moves the state's offset forward
        if outcome.duplicate:
            metrics.duplicates += 1
            continue
        metrics.events_applied[event.type] += 1
        for action in outcome.actions:
            metrics.actions[(action.rule_id, action.type)] += 1
            result.outputs.append(Output(ctx.action_topic(action.type), key, encode_action(action)))
        for score in outcome.score_records:
            metrics.score_changes += 1
            result.outputs.append(Output(ctx.topics.scores, key, encode_score(score)))
    for key in dirty:
        state = states[key]
        assert state is not None  # every dirty key had an event applied
        result.writes[key] = state.to_bytes()
    return result


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
