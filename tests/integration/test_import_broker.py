"""`churnguard import` into a real worker on the embedded broker: the rows become events on
the per-type topic, keyed by customer; a ticket from last year builds state but is not
acknowledged, today's is; importing the same file again changes nothing."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest

from churnguard.core.clock import DAY, HOUR
from connectors.spreadsheet.run import run_import
from tests.integration.pipeline_support import Pipeline, wait_for

pytestmark = pytest.mark.integration


def _when(moment: float) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(moment))


def test_imported_history_builds_state_and_messages_only_recent_tickets(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    now = time.time()
    pipeline: Pipeline = pipeline_factory(now)
    source = tmp_path / "tickets.csv"
    with source.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([
            ["客户编号", "创建时间", "工单号", "状态", "优先级"],
            ["c-old", _when(now - 365 * DAY), "T1", "opened", "high"],
            ["c-new", _when(now - HOUR), "T2", "opened", "high"],
            ["c-bad", _when(now - HOUR), "T3", "maybe", "high"],
        ])
    pipeline.start()
    out, err = io.StringIO(), io.StringIO()
    code = run_import(source, "tickets", None, dry_run=False, settings=pipeline.settings,
                      out=out, err=err)
    assert code == 1
    assert err.getvalue() == "tickets.csv:4: 状态 (D): Input should be 'opened' or 'closed'\n"
    assert out.getvalue().startswith(
        f"tickets.csv: 3 rows read, 2 produced to {pipeline.topics.tickets}, 1 rejected")
    with (tmp_path / "tickets.rejected.csv").open(encoding="utf-8-sig") as file:
        assert list(csv.reader(file))[1][:2] == ["4", "状态 (D)"]

    wait_for("both customers scored", lambda: {
        r["customer_id"] for r in pipeline.of(pipeline.topics.scores)} >= {"c-old", "c-new"})
    wait_for("today's acknowledgement", lambda: len(pipeline.actions()) >= 1)
    assert [(a["customer_id"], a["rule_id"]) for a in pipeline.actions()] == [
        ("c-new", "ticket_opened_ack")]
    # The old ticket counts: it is open (for the SLA it is long expired) and scored.
    old_scores = [r for r in pipeline.of(pipeline.topics.scores) if r["customer_id"] == "c-old"]
    assert old_scores[-1]["score"] is not None

    # The same file again: the same event ids, applied once — no new score, no new action.
    scores_before = len(pipeline.of(pipeline.topics.scores))
    assert run_import(source, "tickets", None, dry_run=False, settings=pipeline.settings,
                      out=io.StringIO(), err=io.StringIO()) == 1
    marker = tmp_path / "marker.csv"
    with marker.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["客户编号", "创建时间", "工单号", "状态"],
                                    ["c-new", _when(now - HOUR), "T9", "opened"]])
    assert run_import(marker, "tickets", None, dry_run=False, settings=pipeline.settings,
                      out=io.StringIO(), err=io.StringIO()) == 0
    # The marker comes after the re-import on c-new's partition: once it is acknowledged,
    # the re-imported records before it have been applied.
    wait_for("the marker's acknowledgement", lambda: len(pipeline.actions()) >= 2)
    assert [(a["customer_id"], a["rule_id"]) for a in pipeline.actions()] == [
        ("c-new", "ticket_opened_ack"), ("c-new", "ticket_opened_ack")]
    new_scores = pipeline.of(pipeline.topics.scores)[scores_before:]
    assert {r["customer_id"] for r in new_scores} <= {"c-new"}
