"""A partition's KPI and feedback aggregates (core/kpis.py, core/feedback.py) kept in its own
state store, so that `/kpis` and `/feedback` read counts, never customers or topics.

The store holds them as slices, each a small record under `due_index.INSIGHTS`:
- `k` + cohort day + rule id: that day's and rule's KPI cells (every dimension value);
- `f` + day: that day's ticket counts and resolution times per category;
- `t` + day + low-rated flag + category: that day's comment and term counts.
A batch's or tick's outcome records and comment terms are added to the slices they touch in
the same write as the states that produced them (agents/insights.py), so the aggregates go
through the changelog with the states: a redelivered batch, a restart or a rebalance counts
nothing twice and loses nothing, without a scan of customers.

The worker answers from memory (`PartitionInsights`): a partition's slices are read once
when it is assigned, in key order, a chunk at a time, with a cursor (`after`); until the
read is `done`, a write's records for a slice at or before the cursor are folded into
memory (the read has passed it), those for a later slice are not (the read will find them
in the store) — the census's rule (churnguard/census.py), so nothing is counted twice.

Pure: no Faust, no store."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from churnguard import due_index
from churnguard.core.clock import day_number, parse_rfc3339
from churnguard.core.feedback import NO_CATEGORY, CommentTerms, FeedbackAggregates
from churnguard.core.kpis import KpiAggregates, add_counts, contribution
from churnguard.core.outcomes import OutcomeRecord

KPI = b"k"
TICKETS = b"f"
TERMS = b"t"
FEEDBACK_KINDS = frozenset({"ticket_opened", "ticket_closed"})


def _key(family: bytes, day: int, rest: str = "") -> bytes:
    return due_index.INSIGHTS + family + struct.pack(">I", max(0, day)) + rest.encode()


def _day_of(key: bytes) -> tuple[bytes, int, str]:
    start = len(due_index.INSIGHTS)
    family = key[start:start + 1]
    (day,) = struct.unpack(">I", key[start + 1:start + 5])
    return family, day, key[start + 5:].decode()


@dataclass(slots=True)
class Touched:
    """What one write adds, by slice key: outcome records and comment terms."""

    records: dict[bytes, list[OutcomeRecord]] = field(default_factory=dict)
    comments: dict[bytes, list[CommentTerms]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.records or self.comments)

    def slice_keys(self) -> list[bytes]:
        return [*self.records, *self.comments]


def touched(records: Iterable[OutcomeRecord], comments: Iterable[CommentTerms]) -> Touched:
    found = Touched()
    for record in records:
        day = day_number(parse_rfc3339(record["cohort_at"]))
        if record["kind"] in FEEDBACK_KINDS:
            key = _key(TICKETS, day)
        else:
            key = _key(KPI, day, record["rule_id"])
        found.records.setdefault(key, []).append(record)
    for comment in comments:
        key = _key(TERMS, day_number(comment.at),
                   ("1" if comment.low_rated else "0") + (comment.category or NO_CATEGORY))
        found.comments.setdefault(key, []).append(comment)
    return found


@dataclass(slots=True)
class Slices:
    """Aggregates decoded from slices (one, to add to it; or a partition's, in memory)."""

    kpis: KpiAggregates = field(default_factory=KpiAggregates)
    feedback: FeedbackAggregates = field(default_factory=FeedbackAggregates)

    def add(self, touched: Touched, keys: Iterable[bytes] | None = None) -> None:
        """Fold what a write adds (only to the slices in `keys`, when given)."""
        wanted = None if keys is None else set(keys)
        for key, records in touched.records.items():
            if wanted is None or key in wanted:
                self.kpis.fold_all(records)
                self.feedback.fold_all(records)
        for key, comments in touched.comments.items():
            if wanted is None or key in wanted:
                self.feedback.fold_all((), comments)

    def read(self, key: bytes, raw: bytes) -> None:
        """Add a stored slice."""
        family, day, rest = _day_of(key)
        data = orjson.loads(raw)
        if family == KPI:
            histograms = {(dimension, value): {int(m): n for m, n in minutes.items()}
                          for dimension, value, minutes in data["m"]}
            for dimension, value, counts in data["c"]:
                self.kpis.add((day, rest, dimension, value), counts,
                              histograms.get((dimension, value)))
            self.kpis.as_of = max(self.kpis.as_of, data["a"])
        elif family == TICKETS:
            for category, counts in data["c"]:
                _add(self.feedback.tickets, (day, category), counts)
            for category, priority, minutes in data["r"]:
                _add(self.feedback.resolution, (day, category, priority),
                     {int(m): n for m, n in minutes.items()})
        elif family == TERMS:
            place = (day, rest[1:], rest[:1] == "1")
            self.feedback.comments[place] = self.feedback.comments.get(place, 0) + data["n"]
            _add(self.feedback.terms, place, data["t"])


def _add(cells: dict[Any, Counter[Any]], cell: Any, counts: dict[Any, int]) -> None:
    counter = cells.get(cell)
    if counter is None:
        cells[cell] = Counter(counts)
    else:
        counter.update(counts)


def writes(touched: Touched, stored: Sequence[bytes | None]) -> dict[bytes, bytes]:
    """The touched slices with the write's additions (`stored`: their records, in
    `touched.slice_keys()` order)."""
    out: dict[bytes, bytes] = {}
    for key, raw in zip(touched.slice_keys(), stored, strict=True):
        if _day_of(key)[0] == KPI:
            out[key] = _kpi_slice(raw, touched.records[key])
            continue
        one = Slices()
        if raw is not None:
            one.read(key, raw)
        one.add(touched, (key,))
        out[key] = _encode(key, one)
    return out


def _kpi_slice(raw: bytes | None, records: list[OutcomeRecord]) -> bytes:
    """A KPI slice with `records` added, as plain counts: a slice written is one day and
    rule, so none of KpiAggregates' indexes by dimension, day and month is needed."""
    cells: dict[tuple[str, str], dict[str, int]] = {}
    minutes: dict[tuple[str, str], dict[int, int]] = {}
    as_of = 0.0
    if raw is not None:
        data = orjson.loads(raw)
        cells = {(dimension, value): counts for dimension, value, counts in data["c"]}
        minutes = {(dimension, value): {int(m): n for m, n in histogram.items()}
                   for dimension, value, histogram in data["m"]}
        as_of = data["a"]
    for record in records:
        found = contribution(record)
        if found is None:
            continue
        as_of = max(as_of, found.at)
        for place in found.places:
            counter = cells.get(place)
            if counter is None:
                cells[place] = dict(found.counts)
            else:
                add_counts(counter, found.counts)
            if found.minutes:
                add_counts(minutes.setdefault(place, {}), found.minutes)
    return orjson.dumps({
        "c": [[dimension, value, counts] for (dimension, value), counts in cells.items()],
        "m": [[dimension, value, {str(m): n for m, n in histogram.items()}]
              for (dimension, value), histogram in minutes.items()],
        "a": as_of})


def _encode(key: bytes, one: Slices) -> bytes:
    """A feedback slice (tickets or terms; KPI slices: _kpi_slice)."""
    feedback = one.feedback
    if _day_of(key)[0] == TICKETS:
        return orjson.dumps({
            "c": [[category, dict(c)] for (_, category), c in feedback.tickets.items()],
            "r": [[category, priority, {str(m): n for m, n in c.items()}]
                  for (_, category, priority), c in feedback.resolution.items()]})
    [(place, comments)] = feedback.comments.items()
    return orjson.dumps({"n": comments, "t": dict(feedback.terms.get(place, Counter()))})


@dataclass(slots=True)
class PartitionInsights:
    """One owned partition's aggregates in memory, and how far its slices have been read."""

    slices: Slices = field(default_factory=Slices)
    after: bytes | None = None  # the last slice key read (None: none yet)
    done: bool = False

    def publish(self, touched: Touched) -> None:
        """A write is done: fold what it added to the slices the read has passed."""
        if self.done:
            self.slices.add(touched)
        elif self.after is not None:
            self.slices.add(touched, [k for k in touched.slice_keys() if k <= self.after])

    def read(self, chunk: Sequence[tuple[bytes, bytes]], *, last: bool) -> None:
        """The next slices in key order, from the store."""
        for key, raw in chunk:
            self.slices.read(key, raw)
        if chunk:
            self.after = chunk[-1][0]
        self.done = last
