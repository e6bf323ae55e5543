"""The KPI and feedback slices through the agents (agents/insights.py): a batch's and a tick's
outcome records and comment terms are added to their slices in the same write as the states
(`stage`, then the write, then `publish`), `step` reads a partition taken over in chunks
with batches in between, a restarted worker (a fresh WorkerInsights over the same store)
reads the same aggregates, `of` says which partitions are not read yet, `forget` and a
partition no longer owned drop them; and no comment's text is ever stored.

The reference is independent of the slices: the outcome records the successful writes sent
to the outcomes topic, and the terms of the comments sent, folded directly."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any
from unittest.mock import MagicMock, create_autospec

import orjson
import pytest
from faust.types import TP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.fire_timers import FireTimers
from agents.insights import WorkerInsights
from agents.locks import PartitionLocks
from agents.score_events import ScoreEvents
from churnguard import due_index
from churnguard.batch import BatchContext
from churnguard.clocks import ManualClock
from churnguard.core import feedback, kpis
from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.core.feedback import LOW_RATING, CommentTerms, FeedbackAggregates, comment_terms
from churnguard.core.kpis import KpiAggregates
from churnguard.core.outcomes import OutcomeRecord
from churnguard.engine import build_engine
from churnguard.insights import PartitionInsights
from churnguard.metrics import Metrics
from streams.batch_path import SourceRecord
from streams.settings import Settings
from tables.state_store import TableBatchWriter
from tests.agents.support import T0, TOPICS, FakeWriter, Records, batch_of

Batch = dict[TP, list[SourceRecord]]
COMMENTS = ["Refund still missing, very slow support", "Great service, quick answer",
            "快递太慢了，包装也破损", "客服态度很好", "退款一直没有到账", "Courier lost my parcel"]
CATEGORIES = ["billing", "delivery", "quality"]


def autospec(fake: FakeWriter) -> MagicMock:
    """The fake behind an autospec of the real writer (as conftest's `writer`)."""
    mock: MagicMock = create_autospec(TableBatchWriter, instance=True)
    mock.get_many.side_effect = fake.get_many
    mock.scan.side_effect = fake.scan
    mock.count_keys.side_effect = fake.count_keys
    mock.write.side_effect = fake.write
    return mock


class Flow:
    """A worker's batch and tick handlers sharing one WorkerInsights, and what they were
    sent (the reference)."""

    def __init__(self, ctx: BatchContext, fake: FakeWriter, clock: ManualClock, *,
                 chunk: int = 3) -> None:
        self.ctx, self.fake, self.clock, self.chunk = ctx, fake, clock, chunk
        self.writer = autospec(fake)
        self.locks = PartitionLocks()
        self.rec = Records(TOPICS)
        self.n = 0
        self.comments: defaultdict[int, list[CommentTerms]] = defaultdict(list)
        self.failed: set[int] = set()  # indexes in fake.writes of writes that failed
        self.insights = self.restart()

    def restart(self) -> WorkerInsights:
        """A new worker on the same store: nothing in memory."""
        self.insights = WorkerInsights(self.writer, self.locks, chunk=self.chunk)
        self.events = ScoreEvents(self.ctx, self.writer, self.locks, self.clock,
                                  insights=self.insights)
        self.timers = FireTimers(self.ctx, self.writer, self.locks, self.clock, limit=100,
                                 insights=self.insights)
        return self.insights

    # -- events ------------------------------------------------------------------------------

    def _next(self) -> int:
        self.n += 1
        return self.n

    def purchase(self, customer: str, partition: int = 0) -> SourceRecord:
        n = self._next()
        return self.rec(TOPICS.purchases, partition, n, customer=customer, event_id=f"p{n}",
                        order_id=f"o{n}", at=self.clock.now())

    def ticket(self, customer: str, partition: int = 0, *, comment: str | None = None,
               closing: str | None = None, rating: int | None = None, category: str = "billing",
               hours: float = 1.0) -> tuple[list[SourceRecord], list[CommentTerms]]:
        """A ticket opened now (with `comment`) and closed `hours` later (with `closing` and
        `rating`): its records and the comment terms they must count."""
        n = self._next()
        opened, closed = self.clock.now() - hours * HOUR, self.clock.now()
        records, terms = [], []
        for status, at, text, score in (("opened", opened, comment, None),
                                        ("closed", closed, closing, rating)):
            fields: dict[str, Any] = {"ticket_id": f"tk{n}", "status": status,
                                      "category": category, "priority": "normal"}
            if text is not None:
                fields["comment"] = text
                terms.append(CommentTerms(parse_rfc3339(rfc3339(at)), category,
                                          score is not None and score <= LOW_RATING,
                                          comment_terms(text)))
            if score is not None:
                fields["satisfaction"] = score
            records.append(self.rec(TOPICS.tickets, partition, self._next(), customer=customer,
                                    event_id=f"t{n}-{status}", at=at, **fields))
        return records, terms

    async def send(self, batch: Batch, comments: Sequence[CommentTerms] = ()) -> None:
        """The batch through ScoreEvents; its comments count once its write succeeded."""
        failing = set(self.fake.fail_next)
        first = len(self.fake.writes)
        try:
            await self.events(batch)
        finally:
            for index in range(first, len(self.fake.writes)):
                if self.fake.writes[index].partition in failing:
                    self.failed.add(index)
        for comment_ in comments:
            partition = next(tp.partition for tp in batch)
            self.comments[partition].append(comment_)

    async def read(self, owned: Iterable[int]) -> list[PartitionInsights]:
        """Steps until every owned partition is read."""
        owned = sorted(owned)
        for _ in range(1000):
            ready, pending = self.insights.of(owned)
            if not pending:
                return ready
            await self.insights.step(owned)
        raise AssertionError("never read")

    # -- the reference -----------------------------------------------------------------------

    def records(self, partition: int = 0) -> list[OutcomeRecord]:
        return [orjson.loads(o.value) for i, w in enumerate(self.fake.writes)
                if w.partition == partition and i not in self.failed
                for o in w.outputs if o.topic == TOPICS.outcomes]

    def reference(self, partition: int = 0) -> tuple[Any, ...]:
        found_kpis, found_feedback = KpiAggregates(), FeedbackAggregates()
        records = self.records(partition)
        found_kpis.fold_all(records)
        found_feedback.fold_all(records, self.comments[partition])
        return shape(found_kpis, found_feedback)


def shape(found_kpis: KpiAggregates, found_feedback: FeedbackAggregates) -> tuple[Any, ...]:
    """The aggregates themselves (zero counts left out)."""
    return ({cell: +c for cell, c in found_kpis.cells.items()},
            {cell: +c for cell, c in found_kpis.recovery_minutes.items()},
            found_kpis.as_of,
            {cell: +c for cell, c in found_feedback.tickets.items()},
            {cell: +c for cell, c in found_feedback.resolution.items()},
            found_feedback.comments,
            {cell: +c for cell, c in found_feedback.terms.items()})


def of(memory: PartitionInsights) -> tuple[Any, ...]:
    return shape(memory.slices.kpis, memory.slices.feedback)


def slices(fake: FakeWriter, partition: int = 0) -> dict[bytes, bytes]:
    return {k: v for k, v in fake.data[partition].items()
            if due_index.INSIGHTS <= k < due_index.INSIGHTS_END}


@pytest.fixture
def flow(ctx: BatchContext, fake: FakeWriter, clock: ManualClock) -> Flow:
    return Flow(ctx, fake, clock)


# --- batches and ticks ------------------------------------------------------------------------

async def test_a_batch_and_a_tick_add_their_slices_in_their_own_write(
    flow: Flow, fake: FakeWriter, clock: ManualClock
) -> None:
    assert await flow.insights.step([0]) == 0  # an empty store: read at once
    [memory] = flow.insights.of([0])[0]
    assert memory.done
    # a: a purchase and a ticket rated 1 (its health score falls: a win-back episode later).
    records, comments = flow.ticket("a", comment=COMMENTS[0], closing=COMMENTS[2], rating=1)
    batch = batch_of(flow.purchase("a"), flow.purchase("b"), *records)
    await flow.send(batch, comments)
    write = fake.writes[-1]
    added = {k for k in write.items if k.startswith(due_index.INSIGHTS)}
    # One write: the states and the slices their outcomes add to (changelog included).
    assert {b"a", b"b"} <= set(write.items)
    assert added == set(slices(fake))
    families = {k[len(due_index.INSIGHTS):][:1] for k in added}
    assert families == {b"k", b"f", b"t"}
    assert of(memory) == flow.reference()
    total = kpis.report(memory.slices.kpis, flow.ctx.engine.pack.kpis)["total"]
    assert total["notifications"]["issued"] >= 1
    assert sum(c["first_purchases"] for (_, _, d, _), c in memory.slices.kpis.cells.items()
               if d == "") == 2
    tickets = feedback.report(memory.slices.feedback)
    assert tickets["terms"]["comments"] == 2
    assert tickets["terms"]["low_rated_comments"] == 1
    assert tickets["total"]["mean_satisfaction"] == 1.0
    # A redelivered batch (read again from the committed offsets) adds nothing.
    stored = slices(fake)
    await flow.events(batch)
    assert not {k for k in fake.writes[-1].items if k.startswith(due_index.INSIGHTS)}
    assert slices(fake) == stored
    assert of(memory) == flow.reference()
    # Ticks: timers fire (actions issued, an episode started and expired), slices with them.
    ticked = len(fake.writes)
    for days in range(1, 61):  # daily: a timer past its grace expires unfired
        clock.advance_to(T0 + days * DAY)
        await flow.timers.tick([0])
    tick_writes = fake.writes[ticked:]
    assert any(o.topic == TOPICS.outcomes for w in tick_writes for o in w.outputs)
    for w in tick_writes:
        has_outcomes = any(o.topic == TOPICS.outcomes for o in w.outputs)
        assert has_outcomes == any(k.startswith(due_index.INSIGHTS) for k in w.items)
    assert {r["kind"] for r in flow.records()} >= {
        "action_issued", "episode_started", "episode_expired", "first_purchase",
        "ticket_opened", "ticket_closed"}
    assert of(memory) == flow.reference()
    # A restart reads the same aggregates from the store.
    flow.restart()
    [again] = await flow.read([0])
    assert of(again) == of(memory) == flow.reference()


async def _history(flow: Flow, clock: ManualClock, days: int, partition: int = 0) -> None:
    """Purchases and rated, commented tickets on `days` days (their slices: several per
    day)."""
    for day in range(days):
        clock.advance_to(T0 + day * DAY)
        records, comments = flow.ticket(f"h{day % 4}", partition,
                                        comment=COMMENTS[day % len(COMMENTS)],
                                        closing=COMMENTS[(day + 3) % len(COMMENTS)],
                                        rating=day % 5 + 1,
                                        category=CATEGORIES[day % len(CATEGORIES)])
        await flow.send(batch_of(flow.purchase(f"h{day % 4}", partition), *records), comments)
        await flow.timers.tick([partition])


async def test_a_partition_taken_over_is_read_in_chunks_with_batches_in_between(
    flow: Flow, fake: FakeWriter, clock: ManualClock
) -> None:
    await _history(flow, clock, 6)  # written by another worker: nothing in this memory
    assert flow.insights.partitions == {}
    stored = sorted(slices(fake))
    assert len(stored) > 4 * flow.chunk
    assert await flow.insights.step([0]) == flow.chunk
    assert fake.scans[-1] == (0, due_index.INSIGHTS, due_index.INSIGHTS_END, flow.chunk)
    memory = flow.insights.partitions[0]
    assert memory.after == stored[flow.chunk - 1]
    assert flow.insights.of([0]) == ([], [0])
    # Between chunks: a ticket on the first day (its ticket slice behind the cursor, its
    # terms slice ahead of it), a purchase and a tick today (ahead).
    clock.advance_to(T0 + 6 * DAY)
    records, comments = flow.ticket("late", comment=COMMENTS[1], closing=COMMENTS[4],
                                    rating=2, hours=6 * 24 - 1)
    await flow.send(batch_of(flow.purchase("new"), *records), comments)
    touched = {k for k in fake.writes[-1].items if k.startswith(due_index.INSIGHTS)}
    assert min(touched) <= memory.after < max(touched)
    await flow.timers.tick([0])
    while True:
        cursor = memory.after
        assert cursor is not None
        read = await flow.insights.step([0])
        assert fake.scans[-1][1] == cursor + b"\x00"  # resumes after the cursor
        if memory.done:
            break
        assert read == flow.chunk
        await flow.send(batch_of(flow.purchase(f"between{read}{cursor.hex()}")))
    assert flow.insights.of([0]) == ([memory], [])
    assert of(memory) == flow.reference()
    # Done: nothing more is read, and later writes are published.
    scans = len(fake.scans)
    assert await flow.insights.step([0]) == 0
    assert len(fake.scans) == scans
    records, comments = flow.ticket("after", comment=COMMENTS[3], rating=5)
    await flow.send(batch_of(*records), comments)
    assert of(memory) == flow.reference()
    flow.restart()
    [again] = await flow.read([0])
    assert of(again) == flow.reference()


async def test_of_forget_and_partitions_no_longer_owned(
    flow: Flow, fake: FakeWriter, clock: ManualClock
) -> None:
    flow.chunk = 100
    insights = flow.restart()
    await _history(flow, clock, 2, partition=0)
    await _history(flow, clock, 3, partition=1)
    assert insights.of([0, 1]) == ([], [0, 1])  # nothing read yet: both pending
    assert await insights.step([0, 1]) == len(slices(fake, 0))  # one partition per call
    ready, pending = insights.of([0, 1])
    assert (ready, pending) == ([insights.partitions[0]], [1])
    await insights.step([0, 1])
    ready, pending = insights.of([1, 0, 1])
    assert (ready, pending) == ([insights.partitions[0], insights.partitions[1]], [])
    assert [of(p) for p in ready] == [flow.reference(0), flow.reference(1)]
    assert insights.of([1]) == ([insights.partitions[1]], [])
    _total_is_the_sum(flow, [0, 1])
    # Partition 0 revoked from this worker alone: dropped at the next step.
    assert await insights.step([1]) == 0
    assert sorted(insights.partitions) == [1]
    _total_is_the_sum(flow, [1])
    assert insights.of([0, 1]) == ([insights.partitions[1]], [0])
    # Written meanwhile (by its new owner, here the same handlers): not in this memory ...
    records, comments = flow.ticket("x", 0, comment=COMMENTS[2], rating=1)
    await flow.send(batch_of(*records), comments)
    assert 0 not in insights.partitions
    # ... read from the store once owned again.
    ready = await flow.read([0, 1])
    assert [of(p) for p in ready] == [flow.reference(0), flow.reference(1)]
    # Everything revoked.
    insights.forget()
    assert insights.partitions == {}
    assert insights.of([0, 1]) == ([], [0, 1])
    records, comments = flow.ticket("y", 1, comment=COMMENTS[5], rating=4)
    await flow.send(batch_of(*records), comments)
    assert insights.partitions == {}
    ready = await flow.read([0, 1])
    assert [of(p) for p in ready] == [flow.reference(0), flow.reference(1)]


async def test_a_failed_write_counts_nothing_and_its_retry_counts_once(
    flow: Flow, fake: FakeWriter
) -> None:
    [memory] = await flow.read([0])
    records, comments = flow.ticket("f", comment=COMMENTS[0], closing=COMMENTS[2], rating=2)
    batch = batch_of(flow.purchase("f"), *records)
    fake.fail_next[0] = RuntimeError("changelog produce failed")
    with pytest.raises(RuntimeError):
        await flow.send(batch)  # no comment counts: its write failed
    assert slices(fake) == {}
    assert of(memory) == flow.reference() == of(PartitionInsights())
    await flow.send(batch, comments)
    assert slices(fake)
    assert of(memory) == flow.reference()
    assert feedback.report(memory.slices.feedback)["terms"]["comments"] == 2
    flow.restart()
    [again] = await flow.read([0])
    assert of(again) == flow.reference()


async def test_no_comment_text_in_any_stored_value(
    flow: Flow, fake: FakeWriter, clock: ManualClock
) -> None:
    phrase = "Zebra-Quokka PLANTED, call Mrs Oyelaran on 555-0100 about the refund"
    chinese = "请打电话给王小明先生，号码五五五"
    await flow.read([0])
    records, comments = flow.ticket("secret", comment=phrase, closing=chinese, rating=1)
    await flow.send(batch_of(*records), comments)
    await _history(flow, clock, 3)
    values = [v for data in fake.data.values() for v in data.values()]
    changelog = [v for w in fake.writes for v in w.items.values() if v is not None]
    outputs = [o.value for w in fake.writes for o in w.outputs]
    for value in [*values, *changelog, *outputs]:
        for text in (phrase, phrase.lower(), chinese, "Zebra-Quokka", "PLANTED", "Oyelaran",
                     "555-0100", "5550100", "请打电话给王小明先生"):
            assert text.encode() not in value
    # What is stored of them: their terms' counts, in the terms slices only — by design,
    # but a name is a term too (schemas/events.py says a comment "may hold personal data";
    # core/feedback.py says "no record carries" the terms: these go to the changelog).
    terms = comment_terms(phrase) | comment_terms(chinese)
    assert {"zebra", "quokka", "planted", "oyelaran", "王小明"} <= terms
    for term in ("oyelaran", "王小明"):
        holding = [k for k, v in fake.data[0].items() if term.encode() in v]
        assert holding
        assert all(k.startswith(due_index.INSIGHTS + b"t") for k in holding)


# Every slice a write carries fits the largest record (a write the broker refuses would stall
# the partition): long comments do not grow the terms slice.
async def test_every_item_of_a_write_fits_the_largest_record(
    flow: Flow, fake: FakeWriter
) -> None:
    assert flow.ctx.max_record_bytes == 1_000_000
    words = ["".join(chr(ord("a") + int(d)) for d in f"{n:04d}") for n in range(1200)]
    batch: list[SourceRecord] = []
    for n in range(600):
        text = f"{words[2 * n] * 249}abc {words[2 * n + 1] * 249}abc"  # 1,999 characters
        records, _ = flow.ticket(f"long{n}", comment=text, hours=0)
        batch.append(records[0])
    await flow.send(batch_of(*batch))
    write = fake.writes[-1]
    assert not [o for o in write.outputs if o.topic == TOPICS.dlq]  # every event valid
    assert [(k, len(v)) for k, v in write.items.items()
            if v is not None and not flow.ctx.fits(k, v)] == []


# --- any interleaving ----------------------------------------------------------------------------

_CUSTOMERS = [f"k{n}" for n in range(6)]
_step = st.one_of(
    st.just(("step",)),
    st.tuples(st.just("purchase"), st.sampled_from(_CUSTOMERS), st.integers(0, 1)),
    st.tuples(st.just("ticket"), st.sampled_from(_CUSTOMERS), st.integers(0, 1),
              st.sampled_from(range(len(COMMENTS))), st.none() | st.integers(1, 5),
              st.sampled_from(CATEGORIES)),
    st.tuples(st.just("fail"), st.sampled_from(_CUSTOMERS), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("tick"), st.integers(1, 20)),
    st.tuples(st.just("owned"), st.sampled_from([(0,), (1,), (0, 1)])),
    st.just(("restart",)),
    st.just(("revoke",)),
)


@given(steps=st.lists(_step, max_size=40), chunk=st.integers(1, 6))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_interleaving_of_batches_ticks_steps_and_restarts_ends_at_the_reference(
    steps: list[tuple[object, ...]], chunk: int
) -> None:
    """Batches (some whose write fails, retried or not), ticks, chunks read, ownership
    changes, restarts and revocations in any order over two partitions: once read, each
    partition's aggregates are the direct fold of what its successful writes sent and of
    the comments sent, and a restart reads them."""
    asyncio.run(_interleave(steps, chunk))


async def _interleave(steps: list[tuple[object, ...]], chunk: int) -> None:
    settings_ = Settings()
    ctx = BatchContext.create(build_engine(settings_), settings_.topics, Metrics(), 24)
    fake, clock = FakeWriter(), ManualClock(T0)
    flow = Flow(ctx, fake, clock, chunk=chunk)
    owned: tuple[int, ...] = (0, 1)
    for step in steps:
        match step:
            case ("step",):
                await flow.insights.step(owned)
            case ("purchase", customer, partition):
                assert isinstance(partition, int)
                await flow.send(batch_of(flow.purchase(f"{customer}@{partition}", partition)))
            case ("ticket", customer, partition, text, rating, category):
                assert isinstance(partition, int)
                assert isinstance(text, int)
                assert rating is None or isinstance(rating, int)
                records, comments = flow.ticket(
                    f"{customer}@{partition}", partition, comment=COMMENTS[text],
                    closing=COMMENTS[-1 - text], rating=rating, category=str(category))
                await flow.send(batch_of(*records), comments)
            case ("fail", customer, partition, retry):
                assert isinstance(partition, int)
                records, comments = flow.ticket(f"{customer}@{partition}", partition,
                                                comment=COMMENTS[0], rating=1)
                batch = batch_of(flow.purchase(f"{customer}@{partition}", partition), *records)
                flow.fake.fail_next[partition] = RuntimeError("changelog produce failed")
                with pytest.raises(RuntimeError):
                    await flow.send(batch, comments)
                if retry:
                    await flow.send(batch, comments)
            case ("tick", hours):
                assert isinstance(hours, int)
                clock.advance_to(clock.now() + hours * 12 * HOUR)
                await flow.timers.tick([0, 1])
            case ("owned", partitions):
                assert isinstance(partitions, tuple)
                owned = partitions
            case ("restart",):
                flow.restart()
            case ("revoke",):
                flow.insights.forget()
    ready = await flow.read([0, 1])
    assert [of(p) for p in ready] == [flow.reference(0), flow.reference(1)]
    _total_is_the_sum(flow, [0, 1])
    flow.restart()
    ready = await flow.read([0, 1])
    assert [of(p) for p in ready] == [flow.reference(0), flow.reference(1)]
    _total_is_the_sum(flow, [0, 1])


def _total_is_the_sum(flow: Flow, partitions: list[int]) -> None:
    """The worker-level sum /kpis reads equals the fold of those partitions' outcomes."""
    total, read = flow.insights.kpis()
    assert read == partitions
    expected = KpiAggregates()
    for partition in partitions:
        expected.fold_all(flow.records(partition))
    assert shape(total, FeedbackAggregates())[:3] == shape(expected, FeedbackAggregates())[:3]


class _NoSlices:
    """A store holding no slice yet (all `stage` reads)."""

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [None] * len(keys)


def test_a_slice_that_outgrew_a_record_is_left_out_and_counted_not_written() -> None:
    from agents.insights import WorkerInsights
    from agents.locks import PartitionLocks
    from churnguard.batch import PartitionResult
    from churnguard.core.feedback import CommentTerms

    result = PartitionResult()
    result.comments = [CommentTerms(1.7e9, "billing", True, frozenset({f"t{n:04}" for n in
                                                                      range(40)}))]
    insights = WorkerInsights(_NoSlices(), PartitionLocks(), max_record_bytes=300)  # type: ignore[arg-type]
    found = insights.stage(0, result)
    assert result.writes == {}
    assert insights.too_large == 1
    assert found is not None
    assert not found  # nothing left for memory either: store and memory agree
