"""The KPI scenario computed by hand (tests/unit/test_kpis.py) through a live worker: the
outcome records it writes to `churnguard.outcomes` are the replay's, and fold into the same
figures."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from kafka import KafkaConsumer

from churnguard.core.kpis import KpiAggregates, report
from churnguard.kpi_report import replay_outcomes
from churnguard.rules.export import export_pack
from tests.integration.pipeline_support import Pipeline, wait_for
from tests.unit.test_kpis import ENGINE, PACK, UNTIL, scenario


def _key(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def test_a_live_worker_writes_the_replays_outcomes_and_the_same_kpis(
    pipeline_factory: Any, shared_broker: Any,
) -> None:
    story = scenario()
    story.add("ticket", "cust-0", 6, ticket_id="t1", status="opened", category="billing",
              comment="PLANTED-PHRASE: call me on 555-0100")
    expected = replay_outcomes(story.parsed(), ENGINE, until=UNTIL)
    pipeline: Pipeline = pipeline_factory(UNTIL)  # the worker's clock: the scenario's end
    rules = pipeline.tmp / "pack.yaml"
    rules.write_text(export_pack(PACK.spec))
    pipeline.settings = pipeline.settings.model_copy(update={"rules_file": rules})
    pipeline.start()
    for event in sorted(story.events, key=lambda e: e["occurred_at"]):
        pipeline.send(pipeline.topics.events, event)
    pipeline.flush()
    reader = KafkaConsumer(pipeline.topics.outcomes, bootstrap_servers=shared_broker.bootstrap,
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           group_id=None)
    got: list[dict[str, Any]] = []

    def read() -> bool:
        for messages in reader.poll(timeout_ms=100).values():
            got.extend(orjson.loads(m.value) for m in messages)
        return len(got) >= len(expected)

    try:
        wait_for(f"{len(expected)} outcome records", read)
    finally:
        reader.close()
    assert Counter(map(_key, got)) == Counter(map(_key, expected))
    live, replayed = KpiAggregates(), KpiAggregates()
    live.fold_all(got)
    replayed.fold_all(expected)
    live.as_of = replayed.as_of = UNTIL
    for group_by in (None, "rule", "tier", "assignee"):
        assert report(live, PACK.kpis, group_by=group_by) == report(
            replayed, PACK.kpis, group_by=group_by)
    assert report(live, PACK.kpis)["total"]["roi"] == 1.0
    # A comment's text reaches no topic and no log line.
    assert b"PLANTED" not in orjson.dumps(got)
    assert "PLANTED" not in pipeline.log()
    assert any(r["kind"] == "ticket_opened" and r["category"] == "billing" for r in got)
