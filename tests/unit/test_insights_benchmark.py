"""benchmarks/insights.py at toy sizes (`--small`): every part runs against the real
handlers and core and reports its figures (what they are is the full-size run's business)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import orjson
import pytest

from benchmarks.insights import kpi_questions, main, table


@pytest.fixture(scope="module")
def result() -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--small", "--json"])
    return orjson.loads(out.getvalue())


def test_every_kpi_question_is_answered_over_http(result: Any) -> None:
    kpis = result["kpis"]
    assert set(kpis) == {q.label for q in kpi_questions(0.0)}
    for label, found in kpis.items():
        assert found["round_trip"]["n"] == result["config"]["requests"], label
        assert found["handler"]["n"] == found["round_trip"]["n"], label
        assert 0 < found["handler"]["p50_ms"] <= found["round_trip"]["p50_ms"], label
        assert found["response_bytes"] > 500, label
    sizes = result["aggregates"]["sizes"]
    assert sizes["kpi_cells"] > 1_000
    assert sizes["recovery_histogram_cells"] > 0
    assert sizes["feedback_term_entries"] > 0
    # A drill-down by account manager has a row per manager: a bigger answer than none.
    assert kpis["account_manager, all days"]["response_bytes"] > 10 * kpis[
        "(none), all days"]["response_bytes"]


def test_the_360_is_read_from_rocksdb_for_every_request(result: Any) -> None:
    assert result["states"]["customers"] == result["config"]["customers"]
    assert result["states"]["mean_bytes"] > 300
    found = result["customers"]
    assert found["round_trip"]["n"] == result["config"]["customer_requests"]
    assert found["handler"]["n"] == found["round_trip"]["n"]


def test_the_kpi_cost_compares_runs_with_and_without_the_kpi_work(result: Any) -> None:
    cost = result["cost"]
    assert cost["outcome_records"] > 0
    assert cost["slice_writes"] > 0
    assert [r["with_kpis"] for r in cost["runs_cpu_s"]] == [False, True]
    assert cost["runs_cpu_s"][0]["stage_publish_cpu_s"] == 0
    assert cost["stage_publish_cpu_s"] > 0
    assert set(result["targets"]) == {"kpis_p99_ms", "customers_p99_ms", "kpi_cost_ratio"}


def test_the_table_reports_every_part(result: Any) -> None:
    text = "\n".join(table(result))
    for expected in ("KPI aggregation cost", "/kpis:", "/customers/{id}:",
                     "account_manager, last 90 days"):
        assert expected in text
