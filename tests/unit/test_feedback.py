"""What the feedback says: ticket figures per category and the terms of comments, English and
Chinese, computed by hand; a comment's text never reaches an outcome record."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.core.feedback import FeedbackAggregates, comment_terms, report
from churnguard.core.processor import Engine
from churnguard.kpi_report import kpis_of, render_kpis, replay_outcomes
from schemas.events import Event, TaggedEvent
from tests.unit.packs import make_pack

T = parse_rfc3339("2026-03-02T08:00:00Z")
EVENTS: TypeAdapter[Event] = TypeAdapter(TaggedEvent)
ENGINE = Engine(make_pack(only=[]))  # SLA hours: urgent 4, high 24, normal 72, low 168


def _ticket(n: int, customer: str, hours: float, **fields: Any) -> Event:
    return EVENTS.validate_python({
        "type": "ticket", "event_id": f"e{n}", "customer_id": customer,
        "occurred_at": rfc3339(T + hours * HOUR), **fields})


def story() -> list[Event]:
    events = []
    n = 0

    def add(customer: str, hours: float, **fields: Any) -> None:
        nonlocal n
        n += 1
        events.append(_ticket(n, customer, hours, **fields))

    # billing: 3 tickets; closed after 2 h (rated 1), 30 h (rated 2, high: past 24 h), 5 h.
    add("c1", 0, ticket_id="b1", status="opened", category="billing", priority="normal")
    add("c1", 2, ticket_id="b1", status="closed", satisfaction=1,
        comment="Charged twice, refund still missing. Refund please!")
    add("c2", 0, ticket_id="b2", status="opened", category="billing", priority="high")
    add("c2", 30, ticket_id="b2", status="closed", satisfaction=2,
        comment="The refund took forever")
    add("c3", 0, ticket_id="b3", status="opened", category="billing", priority="normal")
    add("c3", 5, ticket_id="b3", status="closed", satisfaction=5, comment="Quick and kind")
    # delivery: 2 tickets; one closed after 10 h rated 4 with a Chinese comment, one open.
    add("c4", 1, ticket_id="d1", status="opened", category="delivery", priority="urgent",
        comment="快递太慢了，包装也破损")
    add("c4", 11, ticket_id="d1", status="closed", satisfaction=4, comment="客服态度很好")
    add("c5", 1, ticket_id="d2", status="opened", category="delivery")
    # a third low-rated refund comment, without category
    add("c6", 3, ticket_id="x1", status="opened")
    add("c6", 4, ticket_id="x1", status="closed", satisfaction=1,
        comment="no refund yet, terrible")
    return sorted(events, key=lambda e: e.occurred_at)


@pytest.fixture(scope="module")
def feedback() -> dict[str, Any]:
    result: dict[str, Any] = kpis_of(story(), ENGINE, until=T + 10 * DAY)["feedback"]
    return result


def test_per_category_by_hand(feedback: dict[str, Any]) -> None:
    by = {c["category"]: c for c in feedback["categories"]}
    billing = by["billing"]
    assert (billing["opened"], billing["closed"], billing["rated"]) == (3, 3, 3)
    assert billing["mean_satisfaction"] == round(8 / 3, 3)
    assert billing["share_rated_low"] == round(2 / 3, 4)
    assert billing["sla_breach_rate"] == round(1 / 3, 4)  # b2: 30 h > 24 h
    assert billing["resolution_hours"] == {
        "high": {"tickets": 1, "p50": 30.0, "p90": 30.0},
        "normal": {"tickets": 2, "p50": 2.0, "p90": 5.0}}
    delivery = by["delivery"]
    assert (delivery["opened"], delivery["closed"]) == (2, 1)
    assert delivery["mean_satisfaction"] == 4.0
    assert delivery["sla_breach_rate"] == 1.0  # urgent: 10 h > 4 h
    assert by["(none)"]["share_rated_low"] == 1.0
    assert feedback["total"]["opened"] == 6
    assert feedback["total"]["rated"] == 5


def test_terms_english_and_chinese() -> None:
    assert comment_terms("Refund please! The refund, REFUND.") == {"refund"}
    assert {"快递", "包装", "破损"} <= comment_terms("快递太慢了，包装也破损")
    assert "the" not in comment_terms("the parcel")  # a stop word
    assert "了" not in comment_terms("快递太慢了")


def test_terms_over_represented_in_low_rated_comments(feedback: dict[str, Any]) -> None:
    terms = feedback["terms"]
    assert terms["comments"] == 6
    assert terms["low_rated_comments"] == 3
    assert terms["most_frequent"][0] == {"term": "refund", "comments": 3}
    [refund] = [t for t in terms["over_represented_in_low_rated"] if t["term"] == "refund"]
    # (3 + .5) / (3 + 1) over (0 + .5) / (3 + 1)
    assert refund == {"term": "refund", "low_rated_comments": 3, "other_comments": 0,
                      "ratio": 7.0}
    text = render_kpis({"as_of": None, "rule": None, "since": None, "pack_version": 0,
                        "group_by": None, "total": kpis_of([], ENGINE, until=None)["total"],
                        "feedback": feedback}, as_json=False)
    assert "most frequent terms: refund (3)," in text
    assert "over-represented in low-rated: refund (×7)" in text


def test_no_comment_text_in_any_outcome_record() -> None:
    events = [*story(), _ticket(99, "c9", 50, ticket_id="p1", status="opened",
                                comment="PLANTED-PHRASE call me on 555-0100")]
    records = replay_outcomes(sorted(events, key=lambda e: e.occurred_at), ENGINE, until=None)
    dumped = orjson.dumps(records)
    assert b"PLANTED" not in dumped
    assert b"555" not in dumped
    assert b"refund" not in dumped  # not even the terms: they only ever become counts


def test_a_since_filter_selects_cohorts_by_day() -> None:
    aggregates = FeedbackAggregates()
    comments: list[Any] = []
    aggregates.fold_all(replay_outcomes(story(), ENGINE, until=None, comments=comments),
                        comments)
    assert report(aggregates, since=T + DAY)["total"]["opened"] == 0
    assert report(aggregates, until=T + DAY)["total"]["opened"] == 6
