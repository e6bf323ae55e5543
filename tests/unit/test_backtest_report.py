"""churnguard.backtest: the per-rule report, the comparison of two packs, their text and JSON,
and --since — over small hand-made histories with exact counts, and the demo scenario."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from churnguard.backtest import (
    BANDS,
    DIFFERING_SHOWN,
    band_of,
    compare,
    dumps,
    parse_since,
    render_comparison,
    render_report,
    report,
    to_json,
)
from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.guards import CONTROL_GROUP, in_share
from churnguard.core.pack import build_pack
from churnguard.core.processor import Engine
from churnguard.errors import UserError
from churnguard.replay import read_events, replay
from churnguard.scenario import demo_events
from tests.unit.packs import default_data, make_pack, rules_only

DEMO_START = datetime(2024, 1, 1, tzinfo=UTC).timestamp()

THANKS = {  # half of the customers (a stable hash) are held out
    "id": "purchase_thanks",
    "trigger": {"on": "purchase"},
    "guards": {"holdout_percent": 50},
    "actions": [{"type": "notification", "template": "thanks"}],
}
NUDGE = {  # coupons: capped at one per customer per 7 days by the pack
    "id": "login_nudge",
    "trigger": {"on": "login"},
    "actions": [{"type": "coupon", "value": 5, "kind": "percent", "expires_in_days": 7}],
}


def vip_rule(at_least: float) -> dict[str, Any]:
    [rule] = [r for r in default_data()["rules"] if r["id"] == "vip_upgrade"]
    rule["trigger"]["at_least"] = at_least
    return rule


def engine_of(*rules: dict[str, Any], guards: dict[str, Any] | None = None) -> Engine:
    data = default_data()
    data["rules"] = [dict(rule) for rule in rules]
    data["guards"] = guards or {}
    return Engine(pack=build_pack(data))


def guarded_engine(vip_at_least: float) -> Engine:
    return engine_of(vip_rule(vip_at_least), THANKS, NUDGE,
                     guards={"frequency_caps": [{"type": "coupon", "max": 1, "days": 7}]})


SPEND = {"c1": "100", "c2": "600", "c3": "5000", "c4": "12000", "c5": "9999.99", "c6": "500",
         "c7": "50"}


@pytest.fixture
def history(event_factory):
    """One purchase per customer (c1 two), four logins of c1 (days 0.1, 1, 2, 8.5: the 2nd
    and 3rd are within 7 days of the 1st) and one of c3, in event-time order."""
    events = [event_factory("purchase", customer_id=c, amount=amount, day=n * 0.01)
              for n, (c, amount) in enumerate(SPEND.items())]
    events.append(event_factory("purchase", customer_id="c1", amount="50", day=3))
    events += [event_factory("login", customer_id="c1", day=day) for day in (0.1, 1, 2, 8.5)]
    events.append(event_factory("login", customer_id="c3", day=4))
    return sorted(events, key=lambda e: e.occurred_at)


def test_the_50_percent_holdout_is_counted_per_firing(history):
    held = sorted(c for c in SPEND if in_share(50, "purchase_thanks", c))
    assert held == ["c2", "c4", "c6", "c7"]  # the stable hash: c1, c3, c5 get the message
    result, _ = report(history, guarded_engine(10_000), until=None)
    thanks = result.rules["purchase_thanks"]
    assert (thanks.fired, thanks.customers, thanks.held_out) == (4, 3, 4)  # c1 bought twice
    assert thanks.by_type == {"notification": 4}
    assert thanks.suppressed == {"holdout": 4}


def test_the_frequency_cap_suppresses_within_its_window(history):
    result, actions = report(history, guarded_engine(10_000), until=None)
    nudge = result.rules["login_nudge"]
    # c1: day 0.1 sent, days 1 and 2 capped, day 8.5 sent (8.4 days later); c3: sent.
    assert (nudge.fired, nudge.customers, nudge.held_out) == (3, 2, 0)
    assert nudge.by_type == {"coupon": 3}
    assert nudge.suppressed == {"frequency_cap": 2}
    assert [rule for rule, _, _ in actions["c1"]].count("login_nudge") == 2


def test_report_totals(history):
    result, actions = report(history, guarded_engine(10_000), until=None, bad_lines=3)
    vip = result.rules["vip_upgrade"]
    assert (vip.fired, vip.customers, vip.by_type) == (
        2, 1, {"notification": 1, "profile_update": 1})  # c4 only
    assert list(result.rules) == ["vip_upgrade", "purchase_thanks", "login_nudge"]
    assert (result.events, result.customers, result.actions, result.suppressed) == (
        len(history), 7, 9, 6)
    assert result.bad_lines == 3
    assert result.customers_with_actions == len(actions) == 4  # c1, c3, c4, c5
    assert sorted(actions) == ["c1", "c3", "c4", "c5"]
    assert sum(len(found) for found in actions.values()) == result.actions
    assert all(found == sorted(found) for found in actions.values())
    assert sum(result.segments.values()) == result.customers
    assert sum(result.bands.values()) == result.customers
    assert list(result.bands) == list(BANDS)
    assert result.first_event == history[0].occurred_at.isoformat().replace("+00:00", "Z")
    assert result.at == result.last_event


def test_global_control_is_counted_once_per_firing_and_spares_transactional_rules(
        event_factory):
    two_actions = {"id": "welcome_pack", "trigger": {"on": "purchase"}, "actions": [
        {"type": "notification", "template": "welcome"},
        {"type": "coupon", "value": 10}]}
    receipt = {"id": "receipt", "trigger": {"on": "purchase"},
               "guards": {"transactional": True},
               "actions": [{"type": "notification", "template": "receipt"}]}
    customers = [f"c{n}" for n in range(1, 9)]
    control = [c for c in customers if in_share(50, CONTROL_GROUP, c)]
    assert control == ["c2", "c6", "c7"]
    events = [event_factory("purchase", customer_id=c, day=n * 0.1)
              for n, c in enumerate(customers)]
    result, _ = report(events, engine_of(two_actions, receipt,
                                         guards={"global_control_percent": 50}), until=None)
    welcome = result.rules["welcome_pack"]
    assert (welcome.fired, welcome.customers, welcome.held_out) == (10, 5, 3)
    assert welcome.suppressed == {"global_control": 6}  # two actions per firing
    assert welcome.by_type == {"coupon": 5, "notification": 5}
    assert (result.rules["receipt"].fired, result.rules["receipt"].held_out) == (8, 0)


def test_comparing_vip_thresholds_names_exactly_the_customers_spending_in_between(history):
    comparison = compare(history, guarded_engine(10_000), guarded_engine(500), until=None)
    between = sorted(c for c, spend in SPEND.items() if 500 <= float(spend) < 10_000)
    assert between == ["c2", "c3", "c5", "c6"]
    assert comparison.differing_customers == between
    assert comparison.differing_count == 4
    assert comparison.per_rule == {
        "vip_upgrade": (2, 10, 8),  # c4 in both (one purchase crosses both thresholds)
        "purchase_thanks": (4, 4, 0),
        "login_nudge": (3, 3, 0),
    }
    assert comparison.base.actions == 9
    assert comparison.other.actions == 17


def test_a_comparison_lists_the_first_20_of_the_differing_customers(event_factory):
    events = [event_factory("purchase", customer_id=f"k{n:02d}", amount="600", day=n * 0.01)
              for n in range(25, 0, -1)]
    events.sort(key=lambda e: e.occurred_at)
    comparison = compare(events, engine_of(vip_rule(10_000)), engine_of(vip_rule(500)),
                         until=None)
    assert comparison.differing_count == 25
    assert comparison.differing_customers == [f"k{n:02d}" for n in range(1, 21)]
    assert len(comparison.differing_customers) == DIFFERING_SHOWN
    text = render_comparison(comparison)
    assert "customers whose actions differ: 25 (the first 20 of 25)" in text
    assert "k20" in text
    assert "k21" not in text


def test_identical_packs_differ_nowhere(history):
    comparison = compare(history, guarded_engine(500), guarded_engine(500), until=None)
    assert (comparison.differing_customers, comparison.differing_count) == ([], 0)
    assert all(delta == 0 for _, _, delta in comparison.per_rule.values())
    assert "customers whose actions differ: none" in render_comparison(comparison)


def test_a_rule_only_one_pack_has_counts_zero_in_the_other(history):
    comparison = compare(history, engine_of(THANKS), engine_of(THANKS, NUDGE), until=None)
    assert comparison.per_rule == {"purchase_thanks": (4, 4, 0), "login_nudge": (0, 5, 5)}
    assert comparison.differing_customers == ["c1", "c3"]


# -- segments and score bands at the end --------------------------------------------------


@pytest.mark.parametrize(("score", "band"), [
    (100.0, "good"), (80.0, "good"), (79.99, "average"), (60.0, "average"),
    (59.99, "poor"), (0.0, "poor"), (None, "unscored"),
])
def test_score_bands(score, band):
    assert band_of(score) == band


def test_segments_and_bands_are_taken_at_the_end(event_factory, t0):
    """One purchase: 40 (recency) + 0 (no logins) + 24 (service without ratings) = 64 at
    once; with --until 200 days later, recency has fallen to 0 and R to 1."""
    events = [event_factory("purchase", customer_id="c1", day=0)]
    engine = engine_of(THANKS)
    at_once, _ = report(events, engine, until=None)
    assert at_once.at == rfc3339(t0)
    assert at_once.bands == {"good": 0, "average": 1, "poor": 0, "unscored": 0}
    assert at_once.segments["new"] == 1
    later, _ = report(events, engine, until=t0 + 200 * DAY)
    assert later.at == rfc3339(t0 + 200 * DAY)
    assert later.bands == {"good": 0, "average": 0, "poor": 1, "unscored": 0}
    assert later.segments["hibernating"] == 1
    assert sum(later.segments.values()) == 1


def test_until_leaves_later_events_out(history, t0):
    result, _ = report(history, guarded_engine(10_000), until=t0 + 2.5 * DAY)
    assert result.events == sum(e.occurred_at.timestamp() <= t0 + 2.5 * DAY for e in history)
    assert result.rules["login_nudge"].fired == 1  # c1's day-0.1 coupon only


def test_an_empty_history():
    result, actions = report([], engine_of(THANKS), until=None)
    assert (result.events, result.customers, result.actions, actions) == (0, 0, 0, {})
    assert result.at is None
    text = render_report(result)
    assert "purchase_thanks" in text
    assert "0 events" in text


# -- the demo scenario -------------------------------------------------------------------------


@pytest.fixture
def demo():
    lines = [orjson.dumps(event) for event in demo_events(DEMO_START)]
    events, bad = read_events(lines, now=float("inf"), max_future_hours=24)
    assert bad == []
    return events


def test_the_demo_report_adds_up_to_the_replay(demo, engine):
    result, actions = report(demo, engine, until=None)
    replayed = list(replay(demo, engine))
    assert result.actions == len(replayed) == sum(t.fired for t in result.rules.values())
    for rule_id, tally in result.rules.items():
        mine = [a for a in replayed if a.rule_id == rule_id]
        assert tally.fired == len(mine) == sum(tally.by_type.values())
        assert tally.customers == len({a.customer_id for a in mine})
    assert list(result.rules) == [spec.id for spec in engine.pack.spec.rules]
    assert result.customers == len({e.customer_id for e in demo}) == 23
    assert sum(result.segments.values()) == sum(result.bands.values()) == 23
    assert sorted((c, a) for c, found in actions.items() for _, _, a in found) == sorted(
        (a.customer_id, a.action_id) for a in replayed)


def test_the_demo_with_holdouts_and_a_global_control(demo, engine):
    changed = Engine(pack=make_pack(changes={
        "guards": {"global_control_percent": 20},
        "rules.health_winback.guards": {"holdout_percent": 50},
    }))
    comparison = compare(demo, engine, changed, until=DEMO_START + 61 * DAY)
    base, other = comparison.base, comparison.other
    assert all(t.held_out == 0 and not t.suppressed for t in base.rules.values())
    winback = other.rules["health_winback"]
    assert winback.held_out > 0
    assert set(winback.suppressed) <= {"holdout", "global_control"}
    # Held out: firings; suppressed: actions (3 or 4 per win-back firing).
    assert sum(winback.suppressed.values()) >= 3 * winback.held_out
    transactional = ("ticket_opened_ack", "ticket_closed_survey")
    for rule_id in transactional:
        assert comparison.per_rule[rule_id][2] == 0
    assert comparison.per_rule["health_winback"][2] < 0
    assert 0 < comparison.differing_count <= 23


# -- text and JSON --------------------------------------------------------------------------


def _row(text: str, first: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(first + " ")]
    return re.split(r"\s{2,}", line.strip())


def test_the_text_shows_every_rule_with_the_json_figures(history):
    result, _ = report(history, guarded_engine(10_000), until=None, bad_lines=2)
    text = render_report(result)
    data = to_json(result)
    assert text.startswith(f"churnguard report: {len(history)} events from ")
    assert "7 customers, 9 actions sent, 6 suppressed, 2 bad lines skipped" in text
    for rule_id, figures in data["rules"].items():
        name, fired, customers, held_out, by_type, suppressed = _row(text, rule_id)
        assert name == rule_id
        assert (int(fired), int(customers), int(held_out)) == (
            figures["fired"], figures["customers"], figures["held_out"])
        assert by_type == (", ".join(f"{k} {v}" for k, v in figures["by_type"].items()) or "-")
        assert suppressed == (
            ", ".join(f"{k} {v}" for k, v in figures["suppressed"].items()) or "-")
    assert _row(text, "all rules")[1:4] == [str(data["actions"]),
                                            str(data["customers_with_actions"]), "4"]
    for segment, count in data["segments"].items():
        assert _row(text, segment)[1] == str(count)
    assert _row(text, "good")[1] == str(data["bands"]["good"])
    assert _row(text, "unscored")[1] == str(data["bands"]["unscored"])
    assert data["events"] == len(history)
    assert data["bad_lines"] == 2
    assert orjson.loads(dumps(result)) == data


def test_the_comparison_text_and_json_agree(history):
    comparison = compare(history, guarded_engine(10_000), guarded_engine(500), until=None)
    text = render_comparison(comparison, base_label="old.yaml", other_label="new.yaml")
    data = to_json(comparison)
    assert text.startswith("churnguard comparison: old.yaml → new.yaml\n")
    for rule_id, figures in data["per_rule"].items():
        delta = figures["delta"]
        assert _row(text, rule_id) == [rule_id, str(figures["base"]), str(figures["other"]),
                                       f"{delta:+}" if delta else "0"]
    assert data["per_rule"]["vip_upgrade"] == {"base": 2, "other": 10, "delta": 8}
    assert _row(text, "all rules") == ["all rules", "9", "17", "+8"]
    assert data["differing_customers"] == ["c2", "c3", "c5", "c6"]
    assert data["differing_count"] == 4
    assert "customers whose actions differ: 4\n  c2, c3, c5, c6\n" in text
    assert data["base"] == to_json(comparison.base)
    assert data["other"]["rules"]["vip_upgrade"]["fired"] == 10
    assert orjson.loads(dumps(comparison)) == data


def test_disabled_rules_are_listed_with_zero(demo):
    pack = make_pack(changes={"rules.onboarding_tips.enabled": False})
    result, _ = report(demo, Engine(pack=pack), until=None)
    assert result.rules["onboarding_tips"].fired == 0
    assert not result.rules["onboarding_tips"].enabled
    assert "onboarding_tips (disabled)" in render_report(result)
    assert to_json(result)["rules"]["onboarding_tips"]["enabled"] is False


def test_rules_only_pack_reports_its_rules(history):
    result, _ = report(history, Engine(pack=rules_only(THANKS)), until=None)
    assert list(result.rules) == ["purchase_thanks"]


# -- --since -------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", NOW - 30 * DAY),
    ("12h", NOW - 12 * HOUR),
    ("90m", NOW - 90 * 60),
    (" 7d ", NOW - 7 * DAY),
    ("2026-02-01T00:00:00Z", datetime(2026, 2, 1, tzinfo=UTC).timestamp()),
    ("2026-02-01T01:30:00+01:30", datetime(2026, 2, 1, tzinfo=UTC).timestamp()),
    ("2026-03-01T12:00:00Z", NOW),
    ("9999999d", 0.0),  # before the epoch: everything retained
])
def test_parse_since(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("", "neither a duration nor a timestamp"),
    ("30", "neither a duration nor a timestamp"),
    ("3w", "neither a duration nor a timestamp"),
    ("-5d", "neither a duration nor a timestamp"),
    ("1.5d", "neither a duration nor a timestamp"),
    ("30 d", "neither a duration nor a timestamp"),
    ("yesterday", "neither a duration nor a timestamp"),
    ("2026-02-01", "neither a duration nor a timestamp"),  # no UTC offset
    ("2026-02-01T00:00:00", "neither a duration nor a timestamp"),
    ("0d", "an empty period"),
    ("2026-03-02T00:00:00Z", "in the future"),
])
def test_parse_since_refuses_with_one_line(text, why):
    with pytest.raises(UserError) as caught:
        parse_since(text, NOW)
    message = str(caught.value)
    assert message.startswith(f"backtest: --since {text!r} ")
    assert why in message
    assert "30d, 12h, 90m" in message
    assert "\n" not in message
