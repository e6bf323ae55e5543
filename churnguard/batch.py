"""A partition's batch of raw records -> the dirty states to write and the records to send.
Pure (no Faust): the agent loads states, calls `process_partition`, writes and sends."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import structlog

from churnguard import due_index
from churnguard.census import Change, change, standing
from churnguard.core.clock import parse_rfc3339, rfc3339
from churnguard.core.feedback import CommentTerms
from churnguard.core.outcomes import OutcomeRecord
from churnguard.core.processor import (
    Engine,
    Outcome,
    ScoreChange,
    advance,
    apply_event,
    exact_due,
)
from churnguard.core.state import MAX_OPEN_TICKETS, CustomerState
from churnguard.core.validation import Rejected, parse_event
from churnguard.metrics import Metrics
from churnguard.state_cache import DecodedStates
from schemas.events import PERSONAL_FIELDS, Event
from streams.codecs import (
    DLQ_KEY_LIMIT,
    DLQ_VALUE_LIMIT,
    REDACTED,
    encode_action,
    encode_dead_letter,
    encode_record,
    encode_suppressed,
)
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
    @property
    def timestamp_ms(self) -> int: ...


class Output(NamedTuple):  # several per event: a tuple is cheaper to build
    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class PartitionResult:
    # Table writes: states and due-index entries; None deletes the key.
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    # (rule id, when it started: the triggering record's timestamp or the timer's due time,
    # epoch seconds) per action sent: the shell observes the latency once the write is done.
    sources: list[tuple[str, float]] = field(default_factory=list)
    # Customers whose first state this write stores, less those it forgets (the worker's
    # customer count).
    new_customers: int = 0
    # Customer key -> (band, segment) before and after, for the customers whose standing
    # this write changes (new customers included): the census's deltas (churnguard/census.py).
    # Per key because a census still being counted applies only those behind its cursor.
    census: dict[bytes, Change] = field(default_factory=dict)
    # What this write counts for the KPI and feedback aggregates (churnguard/insights.py):
    # the outcome records it puts on the outcomes topic, and the comments' terms.
    outcomes: list[OutcomeRecord] = field(default_factory=list)
    comments: list[CommentTerms] = field(default_factory=list)
    # The written (not deleted) states by key, as `writes` stores them: what the shell keeps
    # decoded once the write succeeded (churnguard/state_cache.py).
    states: dict[bytes, CustomerState] = field(default_factory=dict)


# Kafka's per-record framing on top of key and value (aiokafka estimates up to 82 bytes
# for a record alone in its batch): an output fits when key + value + this <= the limit.
RECORD_OVERHEAD = 128
DEFAULT_MAX_RECORD_BYTES = 1_000_000
# Room in a dead letter for everything but the kept value (reason, key, source, …).
DLQ_RECORD_ROOM = 8192


@dataclass(slots=True)
class BatchContext:
    # Replaced between batches when a newer rule pack is published (streams/rules_feed.py).
    # A partition batch read again after a failed write is evaluated by the engine of its
    # first attempt instead (agents/score_events.py, `process_partition(engine=...)`).
    engine: Engine
    topics: TopicNames
    metrics: Metrics
    max_future_hours: float
    # Input topic -> event type it carries ("" for the combined topic).
    input_types: Mapping[str, str]
    # The largest record the producer may send (its max_request_size): an event or timer
    # firing whose action, score or state record is larger is dead-lettered instead.
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    @classmethod
    def create(
        cls,
        engine: Engine,
        topics: TopicNames,
        metrics: Metrics,
        max_future_hours: float,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> BatchContext:
        return cls(engine, topics, metrics, max_future_hours, topics.inputs(), max_record_bytes)

    def fits(self, key: bytes | None, value: bytes) -> bool:
        return len(value) + len(key or b"") + RECORD_OVERHEAD <= self.max_record_bytes

    @property
    def dead_letter_value_bytes(self) -> int:
        """How much of a rejected value a dead letter keeps (base64 grows it by 4/3)."""
        room = (self.max_record_bytes - DLQ_RECORD_ROOM) * 3 // 4
        return max(0, min(DLQ_VALUE_LIMIT, room))

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
    engine: Engine | None = None,
    decoded: DecodedStates | None = None,
) -> PartitionResult:
    """`records` all belong to one partition (of one or several co-partitioned topics), in
    the order they are to be applied. `load` multi-gets stored states by customer key.

    `engine` evaluates the events instead of `ctx.engine`: a batch read again after a
    write that failed once its outputs may have gone out is evaluated by the pack of its
    first attempt, so the same action ids carry the same payloads. The written states'
    dues are still indexed under the running pack (`ctx.engine`), as the re-index would
    put them: it may already have passed these customers.

    `decoded` holds states this worker wrote, kept decoded: those still stored as it has
    them are taken from it instead of being decoded again (result.states goes back in once
    written)."""
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
    evaluator = ctx.engine if engine is None else engine
    try:
        applied = _apply_all(valid, stored, ctx, now, evaluator, isolate=False,
                             decoded=decoded)
    except Exception as exc:  # a record the core cannot process: find it, never stall
        log.warning("batch_isolating_failed_record", error=type(exc).__name__,
                    records=len(valid))
        applied = _apply_all(valid, stored, ctx, now, evaluator, isolate=True)
    ctx.metrics.merge(applied.metrics)
    result.outputs += applied.outputs
    result.writes.update(applied.writes)
    result.sources += applied.sources
    result.census = applied.census
    result.outcomes = applied.outcomes
    result.comments = applied.comments
    result.states = applied.states
    result.new_customers += sum(1 for key, value in applied.writes.items()
                                if value is not None and stored.get(key, b"") is None)
    result.new_customers -= sum(1 for key, value in applied.writes.items()
                                if value is None and stored.get(key) is not None)
    _log_bounds(applied)
    return result


class _TooLarge(Exception):
    """An output or state record over max_record_bytes (raised to take the isolate path)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(slots=True)
class _Applied:
    metrics: Metrics
    outputs: list[Output] = field(default_factory=list)
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    sources: list[tuple[str, float]] = field(default_factory=list)
    # Customer -> open tickets evicted in this batch (for the one summary line).
    evicted: dict[bytes, int] = field(default_factory=dict)
    census: dict[bytes, Change] = field(default_factory=dict)
    outcomes: list[OutcomeRecord] = field(default_factory=list)
    comments: list[CommentTerms] = field(default_factory=list)
    # Customer -> its latest score change of the batch: the only one published.
    scores: dict[bytes, ScoreChange] = field(default_factory=dict)
    states: dict[bytes, CustomerState] = field(default_factory=dict)


def _log_bounds(applied: _Applied) -> None:
    # One line per batch, never one per event: a customer past a bound keeps hitting it.
    if applied.evicted:
        worst = sorted(applied.evicted.items(), key=lambda item: -item[1])[:5]
        log.warning(
            "open_tickets_evicted",
            tickets=sum(applied.evicted.values()),
            customers=len(applied.evicted),
            top=[f"{key.decode(errors='replace')}:{count}" for key, count in worst],
            limit=MAX_OPEN_TICKETS,
        )


def _apply_all(
    valid: Sequence[tuple[RawRecord, Event]],
    stored: dict[bytes, bytes | None],
    ctx: BatchContext,
    now: float,
    engine: Engine,
    *,
    isolate: bool,
    decoded: DecodedStates | None = None,
) -> _Applied:
    """Apply the events with `engine`; with `isolate`, one at a time from the last good
    serialized state, so that an event the core fails on is dead-lettered and its customer's
    state is the one before it (slower: only used after a failure). A state taken from
    `decoded` is out of it: a second pass decodes the stored bytes."""
    applied = _Applied(Metrics())
    metrics = applied.metrics
    states = {key: _decode(key, raw, decoded) for key, raw in stored.items()}
    good = dict(stored)
    due_before = {key: None if state is None else state.next_due for key, state in states.items()}
    # Before any event: apply_event changes the loaded states in place.
    standing_before = {key: standing(state) for key, state in states.items()}
    dirty: set[bytes] = set()
    for record, event in valid:
        key = event.customer_id.encode()
        if event.type == "erasure":
            _forget(key, record.topic, states, good, dirty, applied)
            continue
        try:
            outcome = apply_event(states[key], event, engine,
                                  source=(record.topic, record.offset), noticed_at=now)
            outputs = _encode(outcome, key, ctx)
            _check_sizes(outputs, ctx)
            if isolate:
                encoded = outcome.state.to_bytes()
                _check_state(key, encoded, ctx)
                good[key] = encoded
        except Exception as exc:
            if not isolate:
                raise
            raw = good[key]
            states[key] = None if raw is None else CustomerState.from_bytes(raw)
            failure = Rejected(
                "output_too_large", f"{exc.detail}; the event was not applied"
            ) if isinstance(exc, _TooLarge) else Rejected(
                "processing_error", _scrub(f"{type(exc).__name__}: {exc}", event)[:500])
            metrics.dead_letters[failure.kind] += 1
            applied.outputs.append(_dead_letter(record, failure, ctx, now))
            continue
        states[key] = outcome.state
        dirty.add(key)  # even a duplicate moves the state's offset forward
        if outcome.duplicate:
            metrics.duplicates += 1
            continue
        metrics.events_applied[(record.topic, event.type)] += 1
        _count(outcome, metrics)
        applied.outputs += outputs
        if outcome.score_changes:
            applied.scores[key] = outcome.score_changes[-1]
        applied.outcomes += outcome.outcome_records
        applied.comments += outcome.comments
        if outcome.actions:
            started = record.timestamp_ms / 1000.0
            applied.sources += [(action.rule_id, started) for action in outcome.actions]
        if outcome.evicted_tickets:
            applied.evicted[key] = applied.evicted.get(key, 0) + len(outcome.evicted_tickets)
    applied.outputs += [Output(ctx.topics.scores, key, encode_record(change.to_record()))
                        for key, change in applied.scores.items()]
    _due_under(engine, ctx.engine, dirty, states)
    # A state over the limit (seen here first) is found per event by the isolate pass.
    applied.writes, applied.states = _store(dirty, states, due_before, ctx)
    applied.census = {key: moved for key in dirty
                      if (moved := change(standing_before[key], standing(states[key])))}
    return applied


def _forget(key: bytes, topic: str, states: dict[bytes, CustomerState | None],
            good: dict[bytes, bytes | None], dirty: set[bytes], applied: _Applied) -> None:
    """An erasure: the state goes (a changelog tombstone) with its due-index entry and its
    place in the census, and no score of it is published; a later event of the id starts a
    fresh customer."""
    states[key] = good[key] = None
    dirty.add(key)
    applied.metrics.events_applied[(topic, "erasure")] += 1
    applied.scores.pop(key, None)


def _due_under(
    evaluator: Engine, running: Engine, dirty: set[bytes],
    states: dict[bytes, CustomerState | None],
) -> None:
    """Evaluated by an earlier pack (a batch read again across a switch): the dues are
    indexed under the running one, as `reindex` does, or a customer the re-index already
    passed would keep the earlier pack's due until its next event."""
    if evaluator.pack.fingerprint == running.pack.fingerprint:
        return
    for key in dirty:
        state = states[key]
        if state is not None:  # (None: forgotten)
            exact_due(running.pack, state)


def process_due(
    entries: Sequence[bytes],
    load: Callable[[list[bytes]], list[bytes | None]],
    ctx: BatchContext,
    *,
    until: float,
    noticed_at: float,
    decoded: DecodedStates | None = None,
) -> PartitionResult:
    """A tick: advance the customers of these due-index entries to `until` (the wall clock,
    or less while events are still unconsumed), firing their timers; `noticed_at` is the
    wall clock (for grace). Index entries move in the same writes as their states. States
    are taken from `decoded` as by process_partition."""
    result = PartitionResult()
    states = _load(list(dict.fromkeys(due_index.customer_of(e) for e in entries)), load,
                   decoded)
    due_before = {key: None if state is None else state.next_due for key, state in states.items()}
    too_large = 0
    for key, state in list(states.items()):
        if state is None:
            continue
        due = state.next_due
        before = standing(state)  # advance changes the state in place
        outcome = advance(state, until, ctx.engine, noticed_at=noticed_at)
        outputs = _encode(outcome, key, ctx)
        if outcome.score_changes and not outcome.retired:  # the latest, as for events
            outputs.append(Output(ctx.topics.scores, key,
                                  encode_record(outcome.score_changes[-1].to_record())))
        try:
            _check_sizes(outputs, ctx)
            encoded = None if outcome.retired else state.to_bytes()
            if encoded is not None:
                _check_state(key, encoded, ctx)
        except _TooLarge as exc:
            # Nothing of this firing happens: the stored state stays, and its index entry
            # is dropped below (no state to keep it), so the next tick does not retry it;
            # the customer's next event looks at its timers again.
            states[key] = None
            too_large += 1
            ctx.metrics.dead_letters["output_too_large"] += 1
            result.outputs.append(_timer_dead_letter(key, due, exc.detail, ctx, noticed_at))
            continue
        _count(outcome, ctx.metrics)
        ctx.metrics.timers_fired += len(outcome.actions)
        # A time-driven action is created at its due time (released deferrals: at the end
        # of their quiet hours).
        result.sources += [(a.rule_id, parse_rfc3339(a.created_at)) for a in outcome.actions]
        result.outputs += outputs
        result.outcomes += outcome.outcome_records
        result.writes[key] = encoded
        if encoded is not None:
            result.states[key] = state
        if outcome.retired:
            # Data retention, after what fired up to it: the customer goes as an erasure
            # removes one (state, index entry, census place; no score).
            states[key] = None
            result.new_customers -= 1
        after = None if outcome.retired else state.next_due
        result.writes.update(due_index.moves(key, due_before[key], after))
        moved = change(before, standing(states[key]))  # decayed, aged, or gone
        if moved is not None:
            result.census[key] = moved
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
    if too_large:
        log.warning("timer_output_too_large", customers=too_large,
                    max_record_bytes=ctx.max_record_bytes)
    return result


def reindex(
    keys: Sequence[bytes], load: Callable[[list[bytes]], list[bytes | None]], ctx: BatchContext
) -> tuple[PartitionResult, int]:
    """Recompute these customers' next due under the running pack (a published pack changed
    a timer): states and index entries whose due moved, and how many moved. Nothing fires
    here; an entry now due fires at the next tick. A stale entry never fires under the old
    pack's terms meanwhile: a tick evaluates the running pack, which finds nothing due and
    moves the entry. Scores and segments stay as they are: no census change."""
    result = PartitionResult()
    moved = 0
    for key, state in _load(list(keys), load).items():
        if state is None:
            continue
        before, unpinned = state.next_due, state.last_event_at is None
        exact_due(ctx.engine.pack, state)  # (which pins a state stored before last_event_at)
        if state.next_due == before and not unpinned:
            continue
        result.writes.update(due_index.moves(key, before, state.next_due))
        result.writes[key] = state.to_bytes()
        moved += 1
    return result, moved


def _decode(key: bytes, raw: bytes | None, decoded: DecodedStates | None
            ) -> CustomerState | None:
    if raw is None:
        return None
    if decoded is not None and (state := decoded.take(key, raw)) is not None:
        return state
    return CustomerState.from_bytes(raw)


def _load(
    keys: list[bytes], load: Callable[[list[bytes]], list[bytes | None]],
    decoded: DecodedStates | None = None,
) -> dict[bytes, CustomerState | None]:
    return {key: _decode(key, raw, decoded) for key, raw in zip(keys, load(keys), strict=True)}


def _encode(outcome: Outcome, key: bytes, ctx: BatchContext) -> list[Output]:
    outputs = [
        Output(ctx.action_topic(action.type), key, encode_action(action))
        for action in outcome.actions
    ]
    outputs += [Output(ctx.topics.suppressed, key, encode_suppressed(s))
                for s in outcome.suppressed]
    # (Score records: only a customer's latest of a batch or tick is published, see callers.)
    outputs += [Output(ctx.topics.outcomes, key, encode_record(r))
                for r in outcome.outcome_records]
    return outputs


def _count(outcome: Outcome, metrics: Metrics) -> None:
    for action in outcome.actions:
        metrics.actions[(action.rule_id, action.type)] += 1
    for suppressed in outcome.suppressed:
        metrics.suppressed[suppressed.reason] += 1
    metrics.score_changes += len(outcome.score_changes)
    for record in outcome.outcome_records:
        metrics.outcomes[record["kind"]] += 1
    metrics.feedback_unmatched += outcome.unmatched_feedback
    metrics.timers_expired += len(outcome.expired)
    metrics.tickets_evicted += len(outcome.evicted_tickets)
    metrics.customers_retired += outcome.retired  # (from an event: before it, which began afresh)


def _check_sizes(outputs: list[Output], ctx: BatchContext) -> None:
    for output in outputs:
        if not ctx.fits(output.key, output.value):
            raise _TooLarge(
                f"a record for {output.topic} would be {len(output.value):,} bytes "
                f"(+{len(output.key or b''):,} key), over max_record_bytes "
                f"{ctx.max_record_bytes:,}"
            )


def _check_state(key: bytes, raw: bytes, ctx: BatchContext) -> None:
    if not ctx.fits(key, raw):
        raise _TooLarge(
            f"the customer's state would be {len(raw):,} bytes, over max_record_bytes "
            f"{ctx.max_record_bytes:,}"
        )


def _store(
    dirty: set[bytes],
    states: dict[bytes, CustomerState | None],
    due_before: dict[bytes, float | None],
    ctx: BatchContext,
) -> tuple[dict[bytes, bytes | None], dict[bytes, CustomerState]]:
    """Each dirty state once (None: forgotten, deleted), and its due-index entry moved if
    its next due changed; and the states written."""
    writes: dict[bytes, bytes | None] = {}
    written: dict[bytes, CustomerState] = {}
    for key in dirty:
        state = states[key]
        if state is None:
            writes[key] = None
            writes.update(due_index.moves(key, due_before[key], None))
            continue
        raw = state.to_bytes()
        _check_state(key, raw, ctx)
        writes[key] = raw
        written[key] = state
        writes.update(due_index.moves(key, due_before[key], state.next_due))
    return writes, written


def _scrub(text: str, event: Event) -> str:
    """An exception's text never carries the event's personal values into the DLQ."""
    for name in PERSONAL_FIELDS:
        value = getattr(event, name, None)
        if isinstance(value, str) and value:
            text = text.replace(value, REDACTED)
    return text


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
        max_value_bytes=ctx.dead_letter_value_bytes,
    )
    return Output(ctx.topics.dlq, _dlq_key(record.key), value)


def _timer_dead_letter(
    key: bytes, due: float | None, detail: str, ctx: BatchContext, now: float
) -> Output:
    """A time-driven firing has no input record: the source is null, the key the customer's."""
    when = "" if due is None else f" due at {rfc3339(due)}"
    reason = (f"timer{when}: {detail}; the firing was not applied, the customer's timers "
              "are looked at again with its next event")
    value = encode_dead_letter(topic=None, partition=None, offset=None, key=key, value=None,
                               kind="output_too_large", reason=reason, at=now)
    return Output(ctx.topics.dlq, key, value)


def _dlq_key(key: bytes | None) -> bytes | None:
    return key if key is None or len(key) <= DLQ_KEY_LIMIT else key[:DLQ_KEY_LIMIT]
