"""What the feedback says: per ticket category, how many tickets, how satisfied, how fast
resolved, how often past the SLA; and from ticket comments, the most frequent terms and the
terms over-represented in low-rated tickets (rated 1–2), for English and Chinese text.

A comment is reduced to its set of terms here, at once: the text itself is never kept,
logged or put on a topic, and the terms only ever become counts (`FeedbackAggregates`),
kept by the worker in its store (per day, category and rating class; churnguard/insights.py)
and never on an output topic. Definitions: docs/kpis.md."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from churnguard.core.clock import day_number, parse_rfc3339, rfc3339
from churnguard.core.outcomes import OutcomeRecord

LOW_RATING = 2  # rated 1–2: a low-rated ticket
MAX_TERMS_PER_COMMENT = 50
# Longer "words" are not vocabulary (a pasted token, a run of letters) and would only bloat
# the stored term counts: left out.
MAX_TERM_CHARS = 32
# Term counts per (day, category, class) are pruned to the most frequent KEEP_TERMS when they
# pass PRUNE_AT (space-saving: a term seen rarely in a busy cell may be forgotten).
PRUNE_AT = 2_000
KEEP_TERMS = 1_000
TOP_TERMS = 20
# A term is "over-represented" only when seen in at least this many low-rated comments.
MIN_LOW_COUNT = 3
NO_CATEGORY = "(none)"

_LATIN = re.compile(r"[^\W\d_][^\W\d_'’-]*[^\W\d_]", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


@cache
def _stop_words() -> frozenset[str]:
    import stopwordsiso

    return frozenset(stopwordsiso.stopwords(["en", "zh"]))


@cache
def _segmenter() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading messages are not ours
    jieba.initialize()
    return jieba


def comment_terms(text: str) -> frozenset[str]:
    """The distinct terms of a comment: words of two letters or more (lower-cased) and, in
    Chinese runs, jieba's words of two characters or more, up to MAX_TERM_CHARS; stop
    words (stopwords-iso, en and zh) left out."""
    stop = _stop_words()
    terms: set[str] = set()
    for found in _LATIN.findall(_CJK.sub(" ", text)):
        word = found.lower()
        if len(word) <= MAX_TERM_CHARS and word not in stop:
            terms.add(word)
    for run in _CJK.findall(text):
        if len(run) == 1:
            continue
        for word in _segmenter().cut(run):
            if 2 <= len(word) <= MAX_TERM_CHARS and word not in stop:
                terms.add(word)
    return frozenset(sorted(terms)[:MAX_TERMS_PER_COMMENT])


@dataclass(frozen=True, slots=True)
class CommentTerms:
    """A comment, as what may be counted of it: when, about what, how it was rated."""

    at: float
    category: str
    low_rated: bool
    terms: frozenset[str]


def ticket_opened(customer_id: str, at: float, category: str | None,
                  priority: str) -> OutcomeRecord:
    return {"kind": "ticket_opened", "customer_id": customer_id, "at": rfc3339(at),
            "rule_id": "", "cohort_at": rfc3339(at), "category": category or "",
            "priority": priority}


def ticket_closed(customer_id: str, at: float, opened_at: float | None,
                  category: str | None, priority: str, sla_hours: float,
                  satisfaction: int | None) -> OutcomeRecord:
    """A ticket closed at `at`; `opened_at` None when churnguard never saw it open."""
    resolution = None if opened_at is None else max(0.0, at - opened_at)
    return {"kind": "ticket_closed", "customer_id": customer_id, "at": rfc3339(at),
            "rule_id": "", "cohort_at": rfc3339(at), "category": category or "",
            "priority": priority, "satisfaction": satisfaction,
            "resolution_seconds": None if resolution is None else round(resolution, 3),
            "breached": None if resolution is None else resolution > sla_hours * 3600}


@dataclass
class FeedbackAggregates:
    # (day, category) -> counts; (day, category, priority) -> resolution minutes histogram.
    tickets: dict[tuple[int, str], Counter[str]] = field(default_factory=dict)
    resolution: dict[tuple[int, str, str], Counter[int]] = field(default_factory=dict)
    # (day, category, low_rated) -> comments, and terms by how many comments had them.
    comments: dict[tuple[int, str, bool], int] = field(default_factory=dict)
    terms: dict[tuple[int, str, bool], Counter[str]] = field(default_factory=dict)

    def fold(self, record: OutcomeRecord) -> None:
        kind = record["kind"]
        if kind not in ("ticket_opened", "ticket_closed"):
            return
        day = day_number(parse_rfc3339(record["cohort_at"]))
        category = record["category"] or NO_CATEGORY
        counts = self.tickets.setdefault((day, category), Counter())
        if kind == "ticket_opened":
            counts["opened"] += 1
            return
        counts["closed"] += 1
        rating = record["satisfaction"]
        if rating is not None:
            counts["rated"] += 1
            counts["rating_sum"] += rating
            counts["rated_low"] += rating <= LOW_RATING
        if record["resolution_seconds"] is not None:
            counts["resolved"] += 1
            counts["breached"] += bool(record["breached"])
            minutes = int(record["resolution_seconds"] // 60)
            key = (day, category, record["priority"])
            self.resolution.setdefault(key, Counter())[minutes] += 1

    def fold_comment(self, comment: CommentTerms) -> None:
        key = (day_number(comment.at), comment.category or NO_CATEGORY, comment.low_rated)
        self.comments[key] = self.comments.get(key, 0) + 1
        counts = self.terms.setdefault(key, Counter())
        counts.update(comment.terms)
        if len(counts) > PRUNE_AT:
            self.terms[key] = Counter(dict(counts.most_common(KEEP_TERMS)))

    def fold_all(self, records: Iterable[OutcomeRecord],
                 comments: Iterable[CommentTerms] = ()) -> None:
        for record in records:
            self.fold(record)
        for comment in comments:
            self.fold_comment(comment)


def report(aggregates: FeedbackAggregates | Sequence[FeedbackAggregates], *,
           since: float | None = None, until: float | None = None) -> dict[str, Any]:
    """Per ticket category (and all together) in [since, until) by day, and the terms; of
    several aggregates (the worker's partitions) as of their sum."""
    parts = [aggregates] if isinstance(aggregates, FeedbackAggregates) else aggregates
    first = None if since is None else day_number(since)
    last = None if until is None else day_number(until - 0.001)

    def within(day: int) -> bool:
        return (first is None or day >= first) and (last is None or day <= last)

    per_category: dict[str, Counter[str]] = {}
    resolution: dict[str, dict[str, Counter[int]]] = {}
    for part in parts:
        for (day, category), counts in part.tickets.items():
            if within(day):
                per_category.setdefault(category, Counter()).update(counts)
        for (day, category, priority), minutes in part.resolution.items():
            if within(day):
                resolution.setdefault(category, {}).setdefault(priority, Counter()).update(
                    minutes)
    categories = [{"category": category, **_ticket_figures(counts, resolution.get(category, {}))}
                  for category, counts in sorted(per_category.items())]
    everything: Counter[str] = Counter()
    every_resolution: dict[str, Counter[int]] = {}
    for category, counts in per_category.items():
        everything.update(counts)
        for priority, minutes in resolution.get(category, {}).items():
            every_resolution.setdefault(priority, Counter()).update(minutes)
    return {"since": None if since is None else rfc3339(since),
            "until": None if until is None else rfc3339(until),
            "total": _ticket_figures(everything, every_resolution),
            "categories": categories,
            "terms": _terms(parts, within)}


def _ticket_figures(counts: Mapping[str, int],
                    resolution: Mapping[str, Mapping[int, int]]) -> dict[str, Any]:
    rated = counts.get("rated", 0)
    resolved = counts.get("resolved", 0)
    return {
        "opened": counts.get("opened", 0),
        "closed": counts.get("closed", 0),
        "rated": rated,
        "mean_satisfaction": round(counts.get("rating_sum", 0) / rated, 3) if rated else None,
        "share_rated_low": round(counts.get("rated_low", 0) / rated, 4) if rated else None,
        "sla_breach_rate": round(counts.get("breached", 0) / resolved, 4) if resolved else None,
        "resolution_hours": {
            priority: {"tickets": sum(minutes.values()),
                       "p50": _hours(_quantile(minutes, 0.5)),
                       "p90": _hours(_quantile(minutes, 0.9))}
            for priority, minutes in sorted(resolution.items())},
    }


def _terms(parts: Sequence[FeedbackAggregates], within: Any) -> dict[str, Any]:
    low: Counter[str] = Counter()
    rest: Counter[str] = Counter()
    comments = {True: 0, False: 0}
    for part in parts:
        for (day, _, low_rated), counts in part.terms.items():
            if within(day):
                (low if low_rated else rest).update(counts)
        for (day, _, low_rated), n in part.comments.items():
            if within(day):
                comments[low_rated] += n
    every = low + rest
    frequent = [{"term": t, "comments": n}
                for t, n in sorted(every.items(), key=lambda item: (-item[1], item[0]))
                [:TOP_TERMS]]
    # Smoothed ratio of the share of low-rated comments with the term to the share of the
    # others with it: > 1 means over-represented among the unhappy.
    over: list[dict[str, Any]] = []
    for term, n in low.items():
        if n < MIN_LOW_COUNT:
            continue
        ratio = ((n + 0.5) / (comments[True] + 1)) / ((rest[term] + 0.5) / (comments[False] + 1))
        if ratio > 1:
            over.append({"term": term, "low_rated_comments": n, "other_comments": rest[term],
                         "ratio": round(ratio, 3)})
    over.sort(key=lambda item: (-item["ratio"], -item["low_rated_comments"], item["term"]))
    return {"comments": comments[True] + comments[False],
            "low_rated_comments": comments[True],
            "most_frequent": frequent, "over_represented_in_low_rated": over[:TOP_TERMS]}


def _quantile(histogram: Mapping[int, int], q: float) -> int | None:
    """The smallest value with at least q of the counts at or below it."""
    n = sum(histogram.values())
    if not n:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return None


def _hours(minutes: int | None) -> float | None:
    return None if minutes is None else round(minutes / 60, 3)
