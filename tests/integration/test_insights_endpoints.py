"""The business endpoints of a live worker: `/kpis` (JSON and CSV), `/feedback`,
`/segments` and `/customers/{id}` give the hand-computed KPI scenario's figures — the same
the replay computes — and keep them across a restart (read back from the store, not
recounted); with two workers, either one answers for all partitions and a customer's 360
view comes from the worker that owns it."""

from __future__ import annotations

import csv
import io
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from kafka import KafkaConsumer

from churnguard.core.feedback import FeedbackAggregates
from churnguard.core.feedback import report as feedback_report
from churnguard.core.kpis import GROUP_BY, KpiAggregates, report
from churnguard.kpi_report import replay_outcomes
from churnguard.rules.export import export_pack
from streams.insights import partition_of
from streams.topology import STATE_TABLE
from tests.integration.pipeline_support import Pipeline, http_get, wait_for
from tests.unit.test_kpis import ENGINE, PACK, UNTIL, A, scenario

pytestmark = pytest.mark.integration


def _json(port: int, path: str) -> tuple[int, Any]:
    status, body = http_get(port, path)
    return status, orjson.loads(body)


def _expected() -> tuple[Any, list[Any], list[Any]]:
    story = scenario()
    story.add("ticket", A, 6, ticket_id="t1", status="opened", category="billing",
              comment="PLANTED-PHRASE slow delivery, refund please")
    story.add("ticket", A, 7, ticket_id="t1", status="closed", satisfaction=1,
              comment="退款太慢 slow delivery again")
    comments: list[Any] = []
    outcomes = replay_outcomes(story.parsed(), ENGINE, until=UNTIL, comments=comments)
    return story, outcomes, comments


def _start(pipeline_factory: Any) -> tuple[Pipeline, Any, list[Any], list[Any]]:
    story, outcomes, comments = _expected()
    pipeline: Pipeline = pipeline_factory(UNTIL)
    rules = pipeline.tmp / "pack.yaml"
    rules.write_text(export_pack(PACK.spec))
    pipeline.settings = pipeline.settings.model_copy(update={"rules_file": rules})
    return pipeline, story, outcomes, comments


def _send(pipeline: Pipeline, story: Any) -> None:
    for event in sorted(story.events, key=lambda e: e["occurred_at"]):
        pipeline.send(pipeline.topics.events, event)
    pipeline.flush()


def _aggregates(outcomes: list[Any], comments: list[Any]) -> tuple[KpiAggregates,
                                                                    FeedbackAggregates]:
    kpis, feedback = KpiAggregates(), FeedbackAggregates()
    kpis.fold_all(outcomes)
    kpis.as_of = UNTIL  # the worker's clock: whose repeat-purchase window has elapsed
    feedback.fold_all(outcomes, comments)
    return kpis, feedback


def _complete(port: int, path: str, expected: Any, key: str = "total") -> Any:
    """The answer once every partition is read and it has the expected figures."""
    found: dict[str, Any] = {}

    def check() -> bool:
        status, body = _json(port, path)
        found["last"] = body
        return status == 200 and not body["partial"] and body[key] == expected

    try:
        wait_for(f"{path} with every partition and the scenario's figures", check)
    except AssertionError:
        raise AssertionError(f"{path}: last answer {found.get('last')}") from None
    return found["last"]


def _figures(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: answer[k] for k in ("total", "groups")}


def test_a_live_worker_serves_the_replays_kpis_feedback_segments_and_360(
    pipeline_factory: Any, shared_broker: Any,
) -> None:
    pipeline, story, outcomes, comments = _start(pipeline_factory)
    pipeline.start()
    _send(pipeline, story)
    port = pipeline.http_port()
    kpis, feedback = _aggregates(outcomes, comments)
    expected = {g: report(kpis, PACK.kpis, group_by=g) for g in (None, *GROUP_BY)}
    first = _complete(port, "/kpis", expected[None]["total"])
    for group_by in GROUP_BY:
        _, answer = _json(port, f"/kpis?group_by={group_by}")
        assert _figures(answer) == _figures(expected[group_by]), group_by
    # Drill-down: the groups of a customer dimension add up to the total's counts.
    _, by_tier = _json(port, "/kpis?group_by=tier")
    started = sum(g["episodes"]["treated"]["started"] for g in by_tier["groups"])
    assert started == first["total"]["episodes"]["treated"]["started"] > 0
    # One rule, a period.
    _, one_rule = _json(port, f"/kpis?rule={quote('churn_warning_play')}&group_by=week")
    assert _figures(one_rule) == _figures(report(kpis, PACK.kpis, group_by="week",
                                                 rule="churn_warning_play"))
    since = "2026-01-08"
    _, later = _json(port, f"/kpis?since={since}")
    assert later["total"] == report(kpis, PACK.kpis, since=1767830400.0)["total"]
    # CSV: a header and one row per group plus the total, the same numbers.
    status, body = http_get(port, "/kpis?group_by=rule&format=csv")
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert rows[0]["group"] == "(total)"
    assert [r["group"] for r in rows[1:]] == [g["group"] for g in expected["rule"]["groups"]]
    assert float(rows[0]["win_back_rate"]) == first["total"]["win_back_rate"]
    # Feedback: per category and the terms, as the replay says.
    wanted = feedback_report(feedback)
    got = _complete(port, "/feedback", wanted["total"])
    assert got["categories"] == wanted["categories"]
    assert got["terms"] == wanted["terms"]
    assert any(t["term"] == "slow" for t in got["terms"]["most_frequent"])
    # Segments and bands: every customer of the scenario, once.
    customers = len({e["customer_id"] for e in story.events})
    status, segments = _json(port, "/segments")
    assert status == 200
    assert not segments["partial"]
    assert sum(segments["bands"].values()) == customers
    assert sum(segments["segments"].values()) == customers
    # The 360 view of a customer, and what is refused.
    status, view = _json(port, f"/customers/{A}")
    assert status == 200
    assert view["customer_id"] == A
    assert {a["rule_id"] for a in view["actions"]} >= {"churn_warning_play"}
    status, missing = _json(port, "/customers/nobody-here")
    assert status == 404
    assert "nobody-here" in missing["error"]
    for bad in ("/kpis?group_by=planet", "/kpis?since=yesterday", "/kpis?format=xml",
                "/kpis?since=2026-02-01&until=2026-01-01", "/kpis?since=nan",
                "/feedback?until=inf", "/kpis?since=-inf&format=csv",
                "/customers/%00census%00", f"/customers/{'x' * 201}"):
        status, error = _json(port, bad)
        assert (status, bool(error["error"])) == (400, True), bad
    # Out of the years events can have: a bound, not an error.
    assert _json(port, "/kpis?since=1e20")[0] == 200
    assert _json(port, "/kpis?since=99999999999d")[1]["total"] == first["total"]
    # After a restart the figures are read back from the store (no customer is recounted).
    pipeline.stop()
    pipeline.start()
    port = _port_of(pipeline.log_path)
    again = _complete(port, "/kpis?group_by=rule", expected["rule"]["total"])
    assert _figures(again) == _figures(expected["rule"])
    assert "PLANTED-PHRASE" not in pipeline.log()
    _no_comment_on_any_topic(pipeline, shared_broker.bootstrap)


def _no_comment_on_any_topic(pipeline: Pipeline, bootstrap: str) -> None:
    """Every topic of the deployment, the state changelog included: a comment's terms may
    be counted, its text is never written."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                           group_id=None, auto_offset_reset="earliest")
    try:
        prefix = pipeline.topics.events.split(".", 1)[0] + "."
        topics = {t for t in reader.topics()
                  if t.startswith(prefix) or t.startswith(pipeline.settings.app_id)}
        assert f"{pipeline.settings.app_id}-{STATE_TABLE}-changelog" in topics
        reader.subscribe(sorted(topics - {pipeline.topics.events}))
        values: list[bytes] = []
        idle = 0
        while idle < 10:  # ten empty polls in a row: every topic read to its end
            batch = reader.poll(timeout_ms=200)
            idle = 0 if batch else idle + 1
            values += [m.value for messages in batch.values() for m in messages if m.value]
    finally:
        reader.close()
    assert values
    text = b"\n".join(values)
    assert b"PLANTED-PHRASE" not in text
    assert "退款太慢".encode() not in text
    assert b"refund please" not in text


def test_two_workers_answer_for_every_partition_and_route_the_360_to_its_owner(
    pipeline_factory: Any,
) -> None:
    pipeline, story, outcomes, comments = _start(pipeline_factory)
    pipeline.start()
    other_log = pipeline.tmp / "worker-b.log"
    pipeline.start_another("b")
    _send(pipeline, story)
    ports = [_port_of(pipeline.log_path), _port_of(other_log)]
    kpis, _ = _aggregates(outcomes, comments)
    expected = report(kpis, PACK.kpis, group_by="rule")
    for port in ports:
        answer = _complete(port, "/kpis?group_by=rule", expected["total"])
        assert _figures(answer) == _figures(expected)
    # Which worker owns which customer: each one's /status lists its partitions.
    owned = {port: {row["partition"] for row in _json(port, "/status")[1]["partitions"]}
             for port in ports}
    assert owned[ports[0]]
    assert owned[ports[1]]
    assert not owned[ports[0]] & owned[ports[1]]
    customers = sorted({e["customer_id"] for e in story.events})
    n = pipeline.settings.partitions
    remote = [(c, port) for c in customers for port in ports
              if partition_of(c.encode(), n) not in owned[port]]
    assert remote, "every customer on one worker: the routing is not exercised"
    for customer, port in remote:
        status, view = _json(port, f"/customers/{customer}")
        assert status == 200
        assert view["customer_id"] == customer
        assert view["partition"] not in owned[port]
        # The same view as its owner gives.
        owner = next(p for p in ports if view["partition"] in owned[p])
        assert _json(owner, f"/customers/{customer}")[1] == view
        # The caller's token goes with the forwarded request: the owner checks it too.
        assert http_get(port, f"/customers/{customer}", None)[0] == 401
        alices = view["profile"]["account_manager"] == "am-alice"
        assert http_get(port, f"/customers/{customer}", "alice")[0] == (
            200 if alices else 403)
    # A slice gathered from both workers: one account manager's figures.
    expected_slice = report(kpis, PACK.kpis, within=("account_manager", "am-alice"))
    for port in ports:
        status, body = http_get(port, "/kpis", "alice")
        assert status == 200
        answer = orjson.loads(body)
        assert not answer["partial"]
        assert answer["total"] == expected_slice["total"]


def _port_of(log_path: Any) -> int:
    lines = [line for line in log_path.read_text().splitlines() if '"http_listening"' in line]
    return int(orjson.loads(lines[-1])["port"])
