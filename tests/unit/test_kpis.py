"""KPIs against a scenario computed by hand (docs/kpis.md): episodes recovered by purchase
and by score, expired, open and held out; a redeemed and an expired coupon; a completed
task and an opened notification; a repeat purchase."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from churnguard.core.clock import DAY, parse_rfc3339, rfc3339
from churnguard.core.guards import in_share
from churnguard.core.kpis import GROUP_BY, KpiAggregates, report
from churnguard.core.processor import Engine
from churnguard.core.rules import action_id
from churnguard.kpi_report import kpis_of, render_kpis, replay_outcomes
from schemas.events import Event, TaggedEvent
from tests.unit.packs import make_pack

T = parse_rfc3339("2026-01-05T10:00:00Z")  # day 0
RULE = "churn_warning_play"
EVENTS: TypeAdapter[Event] = TypeAdapter(TaggedEvent)

# Engagement alone scores (10 points per login in 30 days): recovery at 30 = 3 logins.
PACK = make_pack(
    only=[],
    changes={
        "scoring.recency_weight": 0.0, "scoring.engagement_weight": 1.0,
        "scoring.service_weight": 0.0,
        "kpis": {"recovery_window_days": 30, "recovery_score": 30, "gross_margin": 0.3,
                 "costs": {"push": 0.5, "task": 5}},
        # The live tests (tests/integration/test_kpis_live.py, test_insights_*) run a worker
        # whose clock is the scenario's end, months after its first events, against a replay:
        # with the default horizon those events' rules would expire there.
        "backfill_horizon_hours": 24 * 365,
    },
    extra_rules=[{
        "id": RULE, "kind": "winback",
        "trigger": {"on": "custom", "name": "churn_warning"},
        "guards": {"holdout_percent": 50},
        "actions": [
            {"type": "notification", "template": "we_miss_you"},
            {"type": "task", "assignee": "account_manager", "title": "Call"},
            {"type": "coupon", "value": 10, "kind": "percent", "expires_in_days": 30},
        ],
    }],
)
ENGINE = Engine(PACK)


def _ids(held_out: bool, n: int) -> list[str]:
    found = [f"cust-{i}" for i in range(200) if in_share(50, RULE, f"cust-{i}") == held_out]
    return found[:n]


A, B, C, F = _ids(False, 4)
D, E = _ids(True, 2)


def _at(day: float) -> str:
    return rfc3339(T + day * DAY)


class Story:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, customer: str, day: float, **fields: Any) -> None:
        number = len(self.events)
        self.events.append({"type": kind, "event_id": f"e{number}", "customer_id": customer,
                            "occurred_at": _at(day), **fields})

    def warning(self, customer: str, day: float) -> str:
        self.add("custom", customer, day, name="churn_warning")
        return self.events[-1]["event_id"]

    def parsed(self) -> list[Event]:
        events = [EVENTS.validate_python(e) for e in self.events]
        return sorted(events, key=lambda e: e.occurred_at)


def _action(customer: str, warning: str, index: int) -> str:
    return action_id(customer, RULE, warning, index)


def scenario() -> Story:
    s = Story()
    s.add("profile", A, 0, tier="vip", account_manager="am-alice", region="north")
    s.add("profile", B, 0, account_manager="am-bob", region="south")
    s.add("profile", C, 0, region="north")
    for customer in (A, B, C, D):
        s.add("login", customer, 0)
    # A: recovered by a purchase on day 3 (48 h) that redeems its coupon (10 % of 200).
    wa = s.warning(A, 1)
    s.add("action_feedback", A, 2, action_id=_action(A, wa, 1), status="completed")
    s.add("action_feedback", A, 2.5, action_id=_action(A, wa, 0), status="opened")
    s.add("action_feedback", A, 2.6, action_id=_action(A, wa, 0), status="opened")  # again
    s.add("action_feedback", A, 2.7, action_id="not-ours", status="opened")
    s.add("purchase", A, 3, order_id="o-a1", amount="200", currency="EUR",
          coupon_code="CG-" + _action(A, wa, 2)[:10].upper())
    # B: recovered by score on day 4 (72 h: logins on days 0, 2, 4 = 30), then buys twice
    # in its window: 50 on day 10 (its first purchase), 30 on day 20 (a repeat).
    s.warning(B, 1)
    s.add("login", B, 2)
    s.add("login", B, 4)
    s.add("purchase", B, 10, order_id="o-b1", amount="50", currency="EUR")
    s.add("purchase", B, 20, order_id="o-b2", amount="30", currency="EUR")
    # C: expires on day 31; its coupon (expired on day 31) used on day 35 redeems nothing.
    wc = s.warning(C, 1)
    s.add("purchase", C, 35, order_id="o-c1", amount="40", currency="EUR",
          coupon_code="CG-" + _action(C, wc, 2)[:10].upper())
    # D, E: held out; D recovers by a purchase on day 5 (96 h), E expires.
    s.warning(D, 1)
    s.add("purchase", D, 5, order_id="o-d1", amount="80", currency="EUR")
    s.add("purchase", D, 100, order_id="o-d2", amount="10", currency="EUR")  # 95 days later
    s.warning(E, 1)
    # F: warned on day 100, still open on day 120.
    s.warning(F, 100)
    return s


UNTIL = T + 120 * DAY


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return kpis_of(scenario().parsed(), ENGINE, until=UNTIL, group_by="rule")


def test_the_episodes_and_their_arms(result: dict[str, Any]) -> None:
    assert result["total"]["episodes"] == {
        "treated": {"started": 4, "recovered": 2, "expired": 1, "open": 1},
        "held_out": {"started": 2, "recovered": 1, "expired": 1, "open": 0},
    }


def test_the_rates_by_hand(result: dict[str, Any]) -> None:
    total = result["total"]
    assert total["win_back_rate"] == round(2 / 3, 4)
    assert total["time_to_recovery_hours"] == {"mean": 60.0, "median": 60.0}
    assert total["win_back_purchase_rate"] == round(2 / 3, 4)
    # First purchases 90+ days before day 120: A (3), B (10), D (5); B repeated.
    assert total["repeat_purchases"] == {"first_purchases": 3, "repeated": 1}
    assert total["repeat_purchase_rate"] == round(1 / 3, 4)
    assert total["coupons"] == {"issued": 4, "redeemed": 1}
    assert total["coupon_redemption_rate"] == 0.25
    assert total["tasks"] == {"issued": 4, "completed": 1}
    assert total["follow_up_completion_rate"] == 0.25
    assert total["notifications"] == {"issued": 4, "opened": 1}
    assert total["notification_open_rate"] == 0.25


def test_revenue_cost_and_roi_by_hand(result: dict[str, Any]) -> None:
    total = result["total"]
    # A 200 + B 50 + 30 (treated, recovered, in the window); D is held out.
    assert total["recovered_revenue"] == 280.0
    # 4 push notifications × 0.5 + 4 tasks × 5 + A's coupon 10 % of 200.
    assert total["cost"] == 42.0
    assert total["roi"] == 1.0  # (280 × 0.3 − 42) / 42


def test_uplift_needs_30_decided_episodes_per_arm(result: dict[str, Any]) -> None:
    assert result["total"]["uplift"] == {
        "status": "not enough data", "treated_decided": 3, "held_out_decided": 2}


def test_drill_downs_sum_to_the_totals() -> None:
    outcomes = replay_outcomes(scenario().parsed(), ENGINE, until=UNTIL)
    aggregates = KpiAggregates()
    aggregates.fold_all(outcomes)
    total = report(aggregates, PACK.kpis)["total"]
    for group_by in GROUP_BY:
        groups = report(aggregates, PACK.kpis, group_by=group_by)["groups"]
        if group_by == "assignee":  # tasks only
            assert sum(g["tasks"]["issued"] for g in groups) == total["tasks"]["issued"]
            continue
        for path in (("episodes", "treated", "started"), ("episodes", "held_out", "expired"),
                     ("coupons", "redeemed"), ("tasks", "completed"),
                     ("notifications", "issued")):
            assert sum(_get(g, path) for g in groups) == _get(total, path), (group_by, path)
        assert sum(g["recovered_revenue"] for g in groups) == total["recovered_revenue"]
        assert sum(g["cost"] for g in groups) == pytest.approx(total["cost"])


def test_one_account_managers_slice() -> None:
    """`within`: the figures of one account manager's customers, as the drill-down by
    account manager has them, and grouped by rule or period within the slice."""
    aggregates = KpiAggregates()
    aggregates.fold_all(replay_outcomes(scenario().parsed(), ENGINE, until=UNTIL))
    by_manager = {g.pop("group"): g for g in report(
        aggregates, PACK.kpis, group_by="account_manager")["groups"]}
    for manager in ("am-alice", "am-bob"):
        within = ("account_manager", manager)
        sliced = report(aggregates, PACK.kpis, within=within)
        assert sliced["within"] == {"account_manager": manager}
        assert sliced["total"] == by_manager[manager]
        for group_by in ("rule", "week", "month"):
            groups = report(aggregates, PACK.kpis, within=within, group_by=group_by)["groups"]
            assert sum(g["episodes"]["treated"]["started"] for g in groups) == (
                sliced["total"]["episodes"]["treated"]["started"]), (manager, group_by)
    assert by_manager["am-alice"] != by_manager["am-bob"]
    with pytest.raises(ValueError, match="a slice is grouped by rule, day, week, month"):
        report(aggregates, PACK.kpis, within=("account_manager", "am-alice"), group_by="tier")
    with pytest.raises(ValueError, match="not a dimension"):
        report(aggregates, PACK.kpis, within=("assignee", "am-alice"))


def _get(node: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def test_drill_down_by_tier_and_assignee() -> None:
    events = scenario().parsed()
    by_tier = {g["group"]: g for g in kpis_of(events, ENGINE, until=UNTIL,
                                             group_by="tier")["groups"]}
    assert by_tier["vip"]["episodes"]["treated"] == {
        "started": 1, "recovered": 1, "expired": 0, "open": 0}
    assert by_tier["vip"]["win_back_rate"] == 1.0
    assert by_tier["standard"]["win_back_rate"] == 0.5
    by_assignee = {g["group"]: g["tasks"] for g in kpis_of(events, ENGINE, until=UNTIL,
                                                          group_by="assignee")["groups"]}
    assert by_assignee == {"am-alice": {"issued": 1, "completed": 1},
                           "am-bob": {"issued": 1, "completed": 0},
                           "retention-team": {"issued": 2, "completed": 0}}


def test_cohorts_by_week_and_a_since_filter() -> None:
    events = scenario().parsed()
    weeks = kpis_of(events, ENGINE, until=UNTIL, group_by="week")["groups"]
    started = {g["group"]: g["episodes"]["treated"]["started"] for g in weeks}
    # Weeks of other cohorts (B's first purchase in W03, C's in W07) have no episodes.
    assert started == {"2026-W02": 3, "2026-W03": 0, "2026-W07": 0, "2026-W16": 1}
    later = kpis_of(events, ENGINE, until=UNTIL, since=T + 50 * DAY)["total"]
    assert later["episodes"]["treated"] == {"started": 1, "recovered": 0, "expired": 0,
                                            "open": 1}


def test_folding_order_changes_nothing() -> None:
    outcomes = replay_outcomes(scenario().parsed(), ENGINE, until=UNTIL)
    forward, backward = KpiAggregates(), KpiAggregates()
    forward.fold_all(outcomes)
    backward.fold_all(reversed(outcomes))
    assert report(forward, PACK.kpis, group_by="segment") == report(
        backward, PACK.kpis, group_by="segment")
    halves = KpiAggregates()
    first, second = KpiAggregates(), KpiAggregates()
    first.fold_all(outcomes[::2])
    second.fold_all(outcomes[1::2])
    halves.merge(first)
    halves.merge(second)
    assert report(halves, PACK.kpis, group_by="rule") == report(forward, PACK.kpis,
                                                               group_by="rule")


def test_outcome_records_carry_no_free_text() -> None:
    story = scenario()
    story.add("ticket", A, 6, ticket_id="t1", status="opened",
              comment="PLANTED-PHRASE my phone is 555")
    story.add("action_feedback", A, 7, action_id="x", status="opened", note="PLANTED-PHRASE")
    outcomes = replay_outcomes(story.parsed(), ENGINE, until=UNTIL)
    assert b"PLANTED-PHRASE" not in orjson.dumps(outcomes)
    kinds = Counter(o["kind"] for o in outcomes)
    assert kinds["action_feedback"] == 2  # A's completed task and opened notification


def test_text_report_shows_the_figures(result: dict[str, Any]) -> None:
    text = render_kpis(result, as_json=False)
    assert "win-back rate           66.7 % of 3 decided" in text
    assert "median 60 h" in text
    assert "not enough data (3 treated and 2 held-out" in text
    assert RULE in text
    assert orjson.loads(render_kpis(result, as_json=True))["total"]["roi"] == 1.0


def test_uplift_with_enough_data() -> None:
    from churnguard.core.kpis import uplift

    arms = {"treated": {"recovered": 60, "expired": 40}, "held_out": {"recovered": 15,
                                                                       "expired": 35}}
    found = uplift(arms)
    assert found["status"] == "ok"
    assert found["difference"] == 0.3
    # sqrt(.6 × .4 / 100 + .3 × .7 / 50) = 0.08124; × 1.96 = 0.1592
    assert found["ci95"] == [0.1408, 0.4592]


def test_replay_kpis_command_prints_the_same_figures(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from churnguard import cli
    from churnguard.rules.export import export_pack

    # The commands configure structlog onto the (captured) stderr: not in-process here.
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    main = cli.main

    pack = tmp_path / "pack.yaml"
    pack.write_text(export_pack(PACK.spec))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in scenario().events))
    until = "2026-05-05T10:00:00Z"
    assert main(["replay", str(events), "--rules", str(pack), "--until", until, "--kpis",
                 "--group-by", "rule", "--json"]) == 0
    printed = orjson.loads(capsys.readouterr().out)
    expected = orjson.loads(orjson.dumps(kpis_of(scenario().parsed(), ENGINE, until=UNTIL,
                                                 group_by="rule")))
    assert printed == expected
    assert main(["replay", str(events), "--rules", str(pack), "--group-by", "rule"]) == 2
    assert "--group-by and --rule-id go with --kpis" in capsys.readouterr().err


def test_csv_cells_named_by_upstream_data_never_become_formulas() -> None:
    from churnguard.kpi_report import kpis_csv

    aggregates = KpiAggregates()
    aggregates.fold_all(replay_outcomes(scenario().parsed(), ENGINE, until=UNTIL))
    result = report(aggregates, PACK.kpis, group_by="tier")
    result["groups"][0]["group"] = '=HYPERLINK("http://x.example/","open")'
    rows = list(csv.DictReader(io.StringIO(kpis_csv(result))))
    assert rows[1]["group"] == "'" + result["groups"][0]["group"]  # text, not a formula


def _brute_sums(aggregates: KpiAggregates, settings: Any, since: float | None,
                until: float | None, group_by: Any, rule: str | None,
                as_of: float) -> Any:
    """The report's sums the plain way: every cell visited (the oracle of the index)."""
    from churnguard.core.kpis import DIMENSIONS, NONE, KpiSums, _with_eligibility, period_of

    first = None if since is None else int(since // DAY)
    last = None if until is None else int((until - 0.001) // DAY)
    eligible_until = int(as_of // DAY) - math.ceil(settings.repeat_purchase_days) - 1
    dimension = group_by if group_by in (*DIMENSIONS, "assignee") else ""
    wanted = None if rule is None else ("" if rule == NONE else rule)
    summed = KpiSums()
    for (day, cell_rule, cell_dimension, value), counter in aggregates.cells.items():
        if (first is not None and day < first) or (last is not None and day > last):
            continue
        if wanted is not None and cell_rule != wanted:
            continue
        minutes = aggregates.recovery_minutes.get((day, cell_rule, cell_dimension, value))
        counts = _with_eligibility(counter, day <= eligible_until)
        if cell_dimension == "":
            summed.total.update(counts)
            summed.total_minutes.update(minutes or {})
        if group_by is None or cell_dimension != dimension:
            continue
        key = (value if dimension else (cell_rule or NONE) if group_by == "rule"
               else period_of(day, group_by))
        group, group_minutes = summed.groups.setdefault(key, (Counter(), Counter()))
        group.update(counts)
        group_minutes.update(minutes or {})
    return summed


_DAY0 = int(T // DAY)


@given(cells=st.lists(st.tuples(
    st.integers(-40, 800), st.sampled_from(["", "r1", "r2"]),
    st.sampled_from([("", ""), ("tier", "vip"), ("tier", "standard"), ("region", "north"),
                     ("assignee", "q")]),
    st.dictionaries(st.sampled_from(["treated.started", "treated.recovered",
                                     "first_purchases", "repeat_purchases", "cost_e4"]),
                    st.integers(1, 5), min_size=1),
    st.none() | st.dictionaries(st.integers(0, 5000), st.integers(1, 3), min_size=1)),
    max_size=60),
    since=st.none() | st.integers(-60, 820), length=st.none() | st.integers(1, 500),
    as_of=st.integers(0, 900), group_by=st.none() | st.sampled_from(GROUP_BY),
    rule=st.none() | st.sampled_from(["r1", "(none)"]))
@settings(max_examples=300, deadline=None)
def test_the_indexed_sums_equal_visiting_every_cell(
    cells: list[Any], since: int | None, length: int | None, as_of: int, group_by: Any,
    rule: str | None,
) -> None:
    from churnguard.core.kpis import sums

    aggregates = KpiAggregates()
    for day, cell_rule, (dimension, value), counts, minutes in cells:
        aggregates.add((_DAY0 + day, cell_rule, dimension, value), counts, minutes)
    start = None if since is None else (_DAY0 + since) * DAY + 3600
    end = None if length is None or start is None else start + length * DAY
    moment = (_DAY0 + as_of) * DAY
    indexed = sums([aggregates], PACK.kpis, since=start, until=end, group_by=group_by,
                   rule=rule, as_of=moment)
    plain = _brute_sums(aggregates, PACK.kpis, start, end, group_by, rule, moment)
    assert indexed.to_json() == plain.to_json()
