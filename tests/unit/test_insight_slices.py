"""The KPI and feedback aggregates as slices in a partition's store (churnguard/insights.py):
the outcome records and comment terms of the real core (the hand-computed KPI scenario of
test_kpis, the feedback story of test_feedback and more tickets, English and Chinese
comments, ratings) split into any sequence of writes, each adding to the slices it touches,
read back give exactly the figures of folding everything at once; a partition read in chunks
while writes go on counts nothing twice and loses nothing; and the figures of several
partitions are those of their sum. A dict stands in for the store."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from churnguard import due_index
from churnguard.batch import DEFAULT_MAX_RECORD_BYTES, RECORD_OVERHEAD
from churnguard.core import feedback, kpis
from churnguard.core.clock import DAY, HOUR, day_number, parse_rfc3339, rfc3339
from churnguard.core.feedback import CommentTerms, FeedbackAggregates, comment_terms
from churnguard.core.kpis import GroupBy, KpiAggregates
from churnguard.core.outcomes import OutcomeRecord
from churnguard.insights import (
    KPI,
    TERMS,
    TICKETS,
    PartitionInsights,
    Slices,
    Touched,
    touched,
    writes,
)
from churnguard.kpi_report import kpis_of, replay_outcomes
from schemas.events import MAX_COMMENT, Event, TaggedEvent
from tests.unit.test_feedback import story
from tests.unit.test_kpis import ENGINE, PACK, RULE, UNTIL, scenario
from tests.unit.test_kpis import T as KPI_T

EVENTS: TypeAdapter[Event] = TypeAdapter(TaggedEvent)
Store = dict[bytes, bytes]
Batch = tuple[list[OutcomeRecord], list[CommentTerms]]

ENGLISH = ["Refund still missing, very slow support", "Parcel arrived damaged, want a refund",
           "Great service, quick answer", "Courier lost my parcel again",
           "Invoice wrong, charged twice", "Friendly agent solved the problem"]
CHINESE = ["快递太慢了，包装也破损", "客服态度很好", "退款一直没有到账", "发票开错了，重复扣款",
           "产品质量很差", "物流速度很快，满意"]
CATEGORIES = ["billing", "delivery", "quality", None, "账单"]
PRIORITIES = ["low", "normal", "high", "urgent", None]


def tickets() -> list[Event]:
    """30 tickets over seven weeks of the KPI scenario: five categories (one Chinese, one
    missing), every priority, ratings 1–5 or none, comments on opening and closing."""
    events: list[dict[str, Any]] = []

    def add(customer: str, at: float, **fields: Any) -> None:
        events.append({"type": "ticket", "event_id": f"tx{len(events)}",
                       "customer_id": customer, "occurred_at": rfc3339(at),
                       **{k: v for k, v in fields.items() if v is not None}})

    for i in range(30):
        customer = f"tix-customer-{i % 9}"
        opened = KPI_T + i * 1.7 * DAY + 9 * HOUR
        add(customer, opened, ticket_id=f"tk{i}", status="opened",
            category=CATEGORIES[i % len(CATEGORIES)], priority=PRIORITIES[i % len(PRIORITIES)],
            comment=CHINESE[i % len(CHINESE)] if i % 3 == 0 else None)
        if i % 4 != 3:
            add(customer, opened + ((i * 5) % 80 + 1) * HOUR, ticket_id=f"tk{i}",
                status="closed", satisfaction=None if i % 6 == 0 else i % 5 + 1,
                comment=(ENGLISH if i % 2 else CHINESE)[i % 6])
    return [EVENTS.validate_python(e) for e in events]


def _sorted(events: Sequence[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.occurred_at)


@cache
def history() -> tuple[tuple[OutcomeRecord, ...], tuple[CommentTerms, ...]]:
    """Every outcome record and comment of the whole history, from the real core."""
    comments: list[CommentTerms] = []
    records = replay_outcomes(_sorted([*scenario().parsed(), *story(), *tickets()]), ENGINE,
                              until=UNTIL, comments=comments)
    return tuple(records), tuple(comments)


# --- the store and the direct fold ----------------------------------------------------------

def write(store: Store, records: Sequence[OutcomeRecord],
          comments: Sequence[CommentTerms]) -> Touched:
    """One write: the touched slices read (a multi-get), added to and put back."""
    found = touched(records, comments)
    store.update(writes(found, [store.get(key) for key in found.slice_keys()]))
    return found


def read_store(store: Store) -> Slices:
    slices = Slices()
    for key in sorted(store):
        slices.read(key, store[key])
    return slices


def direct(records: Sequence[OutcomeRecord],
           comments: Sequence[CommentTerms]) -> tuple[KpiAggregates, FeedbackAggregates]:
    found_kpis, found_feedback = KpiAggregates(), FeedbackAggregates()
    found_kpis.fold_all(records)
    found_feedback.fold_all(records, comments)
    return found_kpis, found_feedback


GROUPINGS: tuple[GroupBy | None, ...] = (
    None, "rule", "tier", "segment", "account_manager", "region", "assignee", "week")


def reports(found_kpis: KpiAggregates | Sequence[KpiAggregates],
            found_feedback: FeedbackAggregates | Sequence[FeedbackAggregates]
            ) -> list[dict[str, Any]]:
    """What `/kpis` and `/feedback` show: every grouping, a rule, a period."""
    since, until = KPI_T + 2 * DAY, KPI_T + 40 * DAY
    return [
        *(kpis.report(found_kpis, PACK.kpis, group_by=g) for g in GROUPINGS),
        kpis.report(found_kpis, PACK.kpis, group_by="day", rule=RULE),
        kpis.report(found_kpis, PACK.kpis, group_by="month", since=since, until=until),
        feedback.report(found_feedback),
        feedback.report(found_feedback, since=since, until=until),
    ]


@cache
def expected() -> list[dict[str, Any]]:
    return reports(*direct(*history()))


def shape(found_kpis: KpiAggregates, found_feedback: FeedbackAggregates) -> tuple[Any, ...]:
    """The aggregates themselves (zero counts left out)."""
    return ({cell: +c for cell, c in found_kpis.cells.items()},
            {cell: +c for cell, c in found_kpis.recovery_minutes.items()},
            found_kpis.as_of,
            {cell: +c for cell, c in found_feedback.tickets.items()},
            {cell: +c for cell, c in found_feedback.resolution.items()},
            found_feedback.comments,
            {cell: +c for cell, c in found_feedback.terms.items()})


# --- the history is what the tests need -------------------------------------------------------

def test_the_history_has_every_kind_of_record_and_comment() -> None:
    records, comments = history()
    kinds = Counter(r["kind"] for r in records)
    assert set(kinds) >= {"episode_started", "episode_recovered", "episode_expired",
                          "episode_revenue", "action_issued", "coupon_redeemed",
                          "action_feedback", "first_purchase", "repeat_purchase",
                          "ticket_opened", "ticket_closed"}
    assert {c.low_rated for c in comments} == {True, False}
    assert {c.category for c in comments} >= {"billing", "delivery", "quality", "", "账单"}
    terms = set().union(*(c.terms for c in comments))
    assert {"refund", "parcel", "快递", "退款"} <= terms
    assert len({day_number(c.at) for c in comments}) > 10
    found = touched(records, comments)
    families = Counter(key[len(due_index.INSIGHTS):][:1] for key in found.slice_keys())
    assert families[KPI] > 5
    assert families[TICKETS] > 10
    assert families[TERMS] > 10
    # Well under the pruning of term counts (order-dependent by design: not tested here).
    assert all(len(c) < feedback.PRUNE_AT for c in direct(records, comments)[1].terms.values())


# --- the slices -------------------------------------------------------------------------------

def test_slices_are_keyed_by_family_day_and_rule_or_class_and_category() -> None:
    records, comments = history()
    store: Store = {}
    write(store, records, comments)
    assert all(due_index.INSIGHTS <= key < due_index.INSIGHTS_END for key in store)
    start = len(due_index.INSIGHTS)
    for key in store:
        family, (day,), rest = (key[start:start + 1], struct.unpack(">I", key[start + 1:start + 5]),
                                key[start + 5:].decode())
        if family == KPI:
            assert any(day_number(parse_rfc3339(r["cohort_at"])) == day and r["rule_id"] == rest
                       for r in records)
        elif family == TICKETS:
            assert rest == ""
        else:
            assert family == TERMS
            assert rest[:1] in ("0", "1")
            assert any(day_number(c.at) == day and (c.category or "(none)") == rest[1:]
                       and c.low_rated == (rest[:1] == "1") for c in comments)
    # Key order is day order within a family (the chunked read goes through days in order).
    days = [struct.unpack(">I", key[start + 1:start + 5])[0]
            for key in sorted(store) if key[start:start + 1] == TICKETS]
    assert days == sorted(days)


def test_a_slice_holds_counts_never_customers_nor_comment_text() -> None:
    records, comments = history()
    store: Store = {}
    write(store, records, comments)
    values = b"\n".join(store.values())
    for customer in {r["customer_id"] for r in records}:
        assert b'"' + customer.encode() + b'"' not in values, customer
    for text in [*ENGLISH, *CHINESE, "Charged twice, refund still missing. Refund please!"]:
        assert text.encode() not in values
        assert text.lower().encode() not in values
    # By design the terms slices do hold term counts (see the report: feedback.py's
    # docstring says no record carries them).
    assert b'"refund"' in values
    for raw in store.values():
        orjson.loads(raw)  # JSON, every one


def test_the_hand_computed_scenario_reads_back_from_the_store() -> None:
    """test_kpis' and test_feedback's figures, through the slices (in writes of a few
    records each) instead of one fold in memory."""
    events = _sorted([*scenario().parsed(), *story()])
    comments: list[CommentTerms] = []
    records = replay_outcomes(events, ENGINE, until=UNTIL, comments=comments)
    store: Store = {}
    for n in range(0, max(len(records), len(comments)), 3):
        write(store, records[n:n + 3], comments[n:n + 3])
    slices = read_store(store)
    slices.kpis.as_of = max(slices.kpis.as_of, UNTIL)  # as kpis_of: the history's end
    for group_by in (None, "rule", "tier", "week"):
        replayed = kpis_of(events, ENGINE, until=UNTIL, group_by=group_by)
        assert kpis.report(slices.kpis, PACK.kpis, group_by=group_by) == {
            k: v for k, v in replayed.items() if k not in ("pack_version", "feedback")}
        assert feedback.report(slices.feedback) == replayed["feedback"]
    total = kpis.report(slices.kpis, PACK.kpis)["total"]
    assert total["episodes"] == {
        "treated": {"started": 4, "recovered": 2, "expired": 1, "open": 1},
        "held_out": {"started": 2, "recovered": 1, "expired": 1, "open": 0}}
    assert (total["cost"], total["roi"], total["recovered_revenue"]) == (42.0, 1.0, 280.0)
    assert total["repeat_purchases"] == {"first_purchases": 3, "repeated": 1}
    tickets_ = feedback.report(slices.feedback)
    billing = {c["category"]: c for c in tickets_["categories"]}["billing"]
    assert billing["mean_satisfaction"] == round(8 / 3, 3)
    assert billing["resolution_hours"]["normal"] == {"tickets": 2, "p50": 2.0, "p90": 5.0}
    assert tickets_["terms"]["most_frequent"][0] == {"term": "refund", "comments": 3}


def test_a_write_adds_to_the_stored_slice_and_touches_no_other() -> None:
    records, comments = history()
    store: Store = {}
    write(store, records[:10], comments[:4])
    before = dict(store)
    found = write(store, records[10:12], comments[4:5])
    changed = {key for key in store if before.get(key) != store[key]}
    assert changed <= set(found.slice_keys())
    assert not touched([], [])
    assert write(store, [], []).slice_keys() == []


def test_the_cursor_rule_of_a_partition_being_read() -> None:
    records, comments = history()
    store: Store = {}
    write(store, records, comments)
    keys = sorted(store)
    memory = PartitionInsights()
    ahead = write(store, records[:1], [])  # before any chunk: the read will find it
    memory.publish(ahead)
    assert memory.slices.kpis.cells == {}
    memory.read([(k, store[k]) for k in keys[:3]], last=False)
    assert memory.after == keys[2]
    snapshot = shape(memory.slices.kpis, memory.slices.feedback)
    beyond = [i for i, r in enumerate(records) if touched([r], []).slice_keys()[0] > keys[2]]
    memory.publish(write(store, [records[beyond[0]]], []))  # ahead of the cursor: not folded
    assert shape(memory.slices.kpis, memory.slices.feedback) == snapshot
    behind = [i for i, r in enumerate(records) if touched([r], []).slice_keys()[0] <= keys[2]]
    memory.publish(write(store, [records[behind[0]]], []))  # behind: folded
    assert shape(memory.slices.kpis, memory.slices.feedback) != snapshot
    snapshot = shape(memory.slices.kpis, memory.slices.feedback)
    [at] = [r for r in records if touched([r], []).slice_keys() == [keys[2]]][:1]
    memory.publish(write(store, [at], []))  # the cursor's own slice: read, so folded
    assert shape(memory.slices.kpis, memory.slices.feedback) != snapshot
    # Once done, the rest of the history read from the store is the direct fold.
    memory.read([(k, store[k]) for k in sorted(store) if k > keys[2]], last=True)
    assert memory.done
    again = [*records, records[0], records[beyond[0]], records[behind[0]], at]
    assert shape(memory.slices.kpis, memory.slices.feedback) == shape(
        *direct(again, history()[1]))


# --- any split, any interleaving -------------------------------------------------------------

@st.composite
def splits(draw: st.DrawFn) -> list[Batch]:
    """The history's records and comments in any order, cut into any number of writes
    (some empty)."""
    records, comments = history()
    records_ = draw(st.permutations(records))
    comments_ = draw(st.permutations(comments))
    n = draw(st.integers(1, 40))
    cuts_r = sorted(draw(st.lists(st.integers(0, len(records_)), min_size=n - 1,
                                  max_size=n - 1)))
    cuts_c = sorted(draw(st.lists(st.integers(0, len(comments_)), min_size=n - 1,
                                  max_size=n - 1)))
    bounds_r = [0, *cuts_r, len(records_)]
    bounds_c = [0, *cuts_c, len(comments_)]
    return [(list(records_[bounds_r[i]:bounds_r[i + 1]]),
             list(comments_[bounds_c[i]:bounds_c[i + 1]])) for i in range(n)]


@given(splits())
@settings(max_examples=150, deadline=None)
def test_any_split_into_writes_reads_back_as_the_direct_fold(batches: list[Batch]) -> None:
    store: Store = {}
    for records, comments in batches:
        write(store, records, comments)
    slices = read_store(store)
    assert reports(slices.kpis, slices.feedback) == expected()
    assert shape(slices.kpis, slices.feedback) == shape(*direct(*history()))


@given(batches=splits(), plan=st.lists(st.booleans(), max_size=80), chunk=st.integers(1, 8),
       before=st.integers(0, 20))
@settings(max_examples=250, deadline=None)
def test_a_chunked_read_with_writes_in_between_ends_at_the_direct_fold(
    batches: list[Batch], plan: list[bool], chunk: int, before: int
) -> None:
    """`before` writes made before the partition is taken over, then its read a chunk at
    a time (as WorkerInsights.step: keys after the cursor, in order) interleaved with the
    next writes (True: a chunk, False: a write, published once done), then the read to its
    end, then the remaining writes: the direct fold, whatever the interleaving."""
    store: Store = {}
    pending = list(batches)
    for records, comments in pending[:before]:
        write(store, records, comments)  # no memory yet: nothing published
    pending = pending[before:]
    memory = PartitionInsights()

    def read_chunk() -> None:
        lower = due_index.INSIGHTS if memory.after is None else memory.after + b"\x00"
        keys = sorted(k for k in store if lower <= k < due_index.INSIGHTS_END)[:chunk]
        memory.read([(k, store[k]) for k in keys], last=len(keys) < chunk)

    for is_read in plan:
        if is_read:
            if not memory.done:
                read_chunk()
        elif pending:
            memory.publish(write(store, *pending.pop(0)))
    while not memory.done:
        read_chunk()
    for records, comments in pending:
        memory.publish(write(store, records, comments))
    assert shape(memory.slices.kpis, memory.slices.feedback) == shape(*direct(*history()))
    assert reports(memory.slices.kpis, memory.slices.feedback) == expected()


@given(batches=splits(), owners=st.lists(st.integers(0, 3), min_size=40, max_size=40))
@settings(max_examples=100, deadline=None)
def test_the_report_of_several_partitions_is_the_report_of_their_sum(
    batches: list[Batch], owners: list[int]
) -> None:
    """Each write goes to one of four partitions' stores: the reports over the list of their
    aggregates (read back from each store, or folded directly) are those of everything."""
    stores: list[Store] = [{}, {}, {}, {}]
    folded = [direct([], []) for _ in stores]
    for (records, comments), owner in zip(batches, owners, strict=False):
        write(stores[owner], records, comments)
        folded[owner][0].fold_all(records)
        folded[owner][1].fold_all(records, comments)
    parts = [read_store(store) for store in stores]
    assert reports([p.kpis for p in parts], [p.feedback for p in parts]) == expected()
    assert reports([k for k, _ in folded], [f for _, f in folded]) == expected()


def test_the_report_of_no_partitions_is_that_of_nothing() -> None:
    assert reports([], []) == reports(KpiAggregates(), FeedbackAggregates())


# --- size -------------------------------------------------------------------------------------

def _word(n: int, length: int) -> str:
    """A distinct word of letters only."""
    letters = ""
    while True:
        n, digit = divmod(n, 26)
        letters += chr(ord("a") + digit)
        if not n:
            break
    return (letters + "q" * length)[:length]


# A terms slice stays well under a record: up to PRUNE_AT terms per day, category and class,
# and a term at most MAX_TERM_CHARS long (~520 valid comments of two 999-letter "words" on
# one day made it > 1 MB before terms were capped).
def test_every_slice_fits_in_a_kafka_record() -> None:
    store: Store = {}
    at = KPI_T + 3 * HOUR
    for first in range(0, 600, 100):
        texts = [f"{_word(2 * n, 999)} {_word(2 * n + 1, 999)}" for n in range(first, first + 100)]
        assert all(len(text) <= MAX_COMMENT for text in texts)  # valid comments
        write(store, [], [CommentTerms(at, "billing", True, comment_terms(text))
                          for text in texts])
    [key] = store
    assert len(key) + len(store[key]) + RECORD_OVERHEAD <= DEFAULT_MAX_RECORD_BYTES
