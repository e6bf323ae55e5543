"""replay.run_replay over JSON lines: determinism, bad lines, --until, the demo scenario."""

from __future__ import annotations

import io
import random
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.replay import read_events, run_replay
from churnguard.scenario import bad_records, demo_events

DEMO_START = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


@pytest.fixture
def replay_lines(engine):
    """replay_lines(lines, until=None) -> (actions as dicts, raw output bytes, stderr, result)."""

    def run(lines, *, until=None, engine_=None):
        source = io.BytesIO(b"".join(line + b"\n" for line in lines))
        out, errors = io.BytesIO(), io.StringIO()
        result = run_replay(source, out, errors, engine_ or engine, until=until,
                            max_future_hours=24)
        raw = out.getvalue()
        return [orjson.loads(line) for line in raw.splitlines()], raw, errors.getvalue(), result

    return run


@pytest.fixture
def small_file(raw_factory):
    return [
        raw_factory("profile", customer_id="a", email="a@x.io", day=0),
        raw_factory("purchase", customer_id="a", amount="9000", day=0.5),
        raw_factory("ticket", customer_id="b", ticket_id="T1", status="opened",
                    priority="high", day=1),
        raw_factory("purchase", customer_id="a", amount="1500", day=2),
        raw_factory("ticket", customer_id="b", ticket_id="T1", status="closed",
                    satisfaction=4, day=3),
        raw_factory("purchase", customer_id="b", day=3.5),
        raw_factory("login", customer_id="b", day=40),
    ]


def test_small_file_produces_the_expected_actions(replay_lines, small_file, t0):
    actions, _, errors, (written, bad) = replay_lines(small_file)
    assert errors == ""
    assert (written, bad) == (len(actions), 0)
    # Event-driven actions at their events, timers at their due times, all customers
    # interleaved in time order; nothing after the last event (no --until).
    b_crossing = "2024-03-17T04:44:57Z"  # 40 + 0.3 × 75 = 62.5 from day 3.5 decays below 60
    a_crossing = rfc3339(t0 + 2 * DAY + 15 * DAY + 26_817)  # 64 from day 2: 15.310375 d later
    assert [(a["customer_id"], a["rule_id"], a["type"], a["created_at"]) for a in actions] == [
        ("b", "ticket_opened_ack", "notification", rfc3339(t0 + DAY)),
        ("b", "ticket_sla_breach", "task", rfc3339(t0 + 2 * DAY)),  # high: 24 h, closed day 3
        ("a", "vip_upgrade", "profile_update", rfc3339(t0 + 2 * DAY)),
        ("a", "vip_upgrade", "notification", rfc3339(t0 + 2 * DAY)),
        ("b", "ticket_closed_survey", "notification", rfc3339(t0 + 3 * DAY)),
        ("a", "onboarding_tips", "notification", rfc3339(t0 + 7.5 * DAY)),
        ("b", "onboarding_tips", "notification", rfc3339(t0 + 10.5 * DAY)),
        ("b", "health_winback", "notification", b_crossing),
        ("b", "health_winback", "task", b_crossing),
        ("b", "health_winback", "coupon", b_crossing),
        ("a", "health_winback", "notification", a_crossing),
        ("a", "health_winback", "task", a_crossing),
        ("a", "health_winback", "coupon", a_crossing),
        ("a", "health_winback", "task", a_crossing),  # VIP: the supervisor task
        ("a", "inactive_30d_followup", "task", rfc3339(t0 + 32 * DAY)),
        ("b", "inactive_30d_followup", "task", rfc3339(t0 + 33.5 * DAY)),
    ]
    assert a_crossing == "2024-03-18T19:26:57Z"
    timers = {"ticket_sla_breach", "onboarding_tips", "health_winback", "inactive_30d_followup"}
    assert all((a["caused_by"] == []) == (a["rule_id"] in timers) for a in actions)


def test_replay_is_byte_identical_across_runs(replay_lines, small_file):
    first = replay_lines(small_file)[1]
    second = replay_lines(small_file)[1]
    assert first
    assert first == second


def test_replay_output_does_not_depend_on_file_order(replay_lines, small_file):
    shuffled = list(small_file)
    random.Random(3).shuffle(shuffled)
    assert shuffled != small_file
    assert replay_lines(shuffled)[1] == replay_lines(small_file)[1]


def test_output_lines_are_contract_records(replay_lines, small_file):
    actions, raw, *_ = replay_lines(small_file)
    assert raw.endswith(b"\n")
    for action in actions:
        assert list(action) == [
            "action_id", "type", "customer_id", "rule_id", "rule_version", "pack_version",
            "created_at", "caused_by", "health_score", "segment", "payload",
        ]
    [welcome] = [a for a in actions
                 if (a["rule_id"], a["type"]) == ("vip_upgrade", "notification")]
    assert welcome["payload"]["variables"] == {"lifetime_spend": 10_500.0}


def test_bad_lines_are_reported_with_their_line_number(replay_lines, raw_factory):
    lines = [
        raw_factory("ticket", status="opened", day=0),                       # 1
        b'{"type": "ticket", "event_id": ',                                   # 2
        b"",                                                                   # 3 (blank: skipped)
        raw_factory("purchase", amount=-1),                                   # 4
        b'{"type": "refund", "event_id": "x", "customer_id": "c1"}',          # 5
        raw_factory("login", occurred_at="1990-05-05T00:00:00Z"),             # 6
        raw_factory("ticket", status="closed", day=1),                        # 7
    ]
    actions, _, errors, (written, bad) = replay_lines(lines)
    assert bad == 4
    assert len(errors.splitlines()) == 4
    reported = [line.split(":", 2)[:2] for line in errors.splitlines()]
    assert reported == [
        ["line 2", " malformed_json"],
        ["line 4", " invalid_event"],
        ["line 5", " unknown_type"],
        ["line 6", " absurd_timestamp"],
    ]
    assert "amount" in errors.splitlines()[1]
    # The good lines around them are still replayed.
    assert [a["rule_id"] for a in actions] == ["ticket_opened_ack", "ticket_closed_survey"]
    assert written == 2


def test_until_stops_before_later_events(replay_lines, raw_factory, t0):
    lines = [
        raw_factory("ticket", ticket_id="A", status="opened", day=0),
        raw_factory("ticket", ticket_id="B", status="opened", day=2),
        raw_factory("ticket", ticket_id="A", status="closed", day=1),
    ]
    actions, *_ = replay_lines(lines, until=t0 + DAY)
    assert [(a["rule_id"], a["payload"]["variables"]["ticket_id"]) for a in actions] == [
        ("ticket_opened_ack", "A"), ("ticket_closed_survey", "A"),
    ]
    actions, *_ = replay_lines(lines, until=t0 + DAY - 1)
    assert [a["rule_id"] for a in actions] == ["ticket_opened_ack"]
    actions, *_ = replay_lines(lines, until=t0 - HOUR)
    assert actions == []


def test_read_events_sorts_by_event_time_then_line(raw_factory):
    lines = [
        raw_factory("login", event_id="late", day=2),
        raw_factory("login", event_id="tie-1", day=1),
        raw_factory("login", event_id="early", day=0),
        raw_factory("login", event_id="tie-2", day=1),
    ]
    events, bad = read_events(lines, now=DEMO_START + 3650 * DAY, max_future_hours=24)
    assert bad == []
    assert [e.event_id for e in events] == ["early", "tie-1", "tie-2", "late"]


# --- the demo scenario ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_lines():
    return [orjson.dumps(event) for event in demo_events(DEMO_START)]


@pytest.fixture
def demo_actions(replay_lines, demo_lines):
    actions, _, errors, (_, bad) = replay_lines(demo_lines)
    assert (errors, bad) == ("", 0)
    return actions


def _count(actions):
    return Counter((a["customer_id"], a["rule_id"], a["type"]) for a in actions)


def test_demo_vip_upgrades_for_c01_and_c02(demo_actions):
    vip = [a for a in demo_actions if a["rule_id"] == "vip_upgrade"]
    assert sorted((a["customer_id"], a["type"]) for a in vip) == [
        ("c01", "notification"), ("c01", "profile_update"),
        ("c02", "notification"), ("c02", "profile_update"),
    ]
    for action in vip:
        if action["type"] == "profile_update":
            assert action["payload"] == {"set": {"tier": "vip"}, "add_tags": ["vip"]}


@pytest.mark.parametrize(
    ("customer", "priority", "hours"),
    [("c03", "urgent", 4), ("c04", "high", 24), ("c05", "low", 168), ("c06", "normal", 72)],
)
def test_demo_ticket_ack_and_survey(demo_actions, customer, priority, hours):
    counts = _count(demo_actions)
    assert counts[(customer, "ticket_opened_ack", "notification")] == 1
    assert counts[(customer, "ticket_closed_survey", "notification")] == 1
    [ack] = [a for a in demo_actions
             if a["customer_id"] == customer and a["rule_id"] == "ticket_opened_ack"]
    variables = ack["payload"]["variables"]
    assert variables["ticket_id"] == f"t-{customer}"
    assert variables["priority"] == priority
    assert variables["expected_resolution_hours"] == hours
    assert ack["payload"]["channel"] == "email"


@pytest.mark.parametrize("customer", ["c07", "c08", "c09"])
def test_demo_winbacks_for_customers_who_stop(demo_actions, customer):
    winback = [a for a in demo_actions
               if a["customer_id"] == customer and a["rule_id"] == "health_winback"]
    assert [a["type"] for a in winback] == ["notification", "task", "coupon"]
    assert winback[0]["health_score"] < 60
    expected = "am-carol" if customer == "c07" else "retention-team"
    assert winback[1]["payload"]["assignee"] == expected


def test_demo_vip_winback_has_the_supervisor_task(demo_actions):
    winback = [a for a in demo_actions
               if a["customer_id"] == "c02" and a["rule_id"] == "health_winback"]
    assert [(a["type"], a["payload"].get("assignee")) for a in winback] == [
        ("notification", None),
        ("task", "am-bob"),
        ("coupon", None),
        ("task", "retention-supervisors"),
    ]
    # Fired by time alone, before c02's day-55 login: the day-8 login leaves the 30-day
    # engagement window at the start of day 38 (61.43 -> 57.95).
    assert {a["created_at"] for a in winback} == {rfc3339(DEMO_START + 38 * DAY)}
    assert {tuple(a["caused_by"]) for a in winback} == {()}
    assert winback[0]["health_score"] == 57.95


def test_demo_redelivered_event_changes_nothing(replay_lines, demo_lines):
    assert demo_lines[-1] == demo_lines[5]
    with_dup = replay_lines(demo_lines)[1]
    without_dup = replay_lines(demo_lines[:-1])[1]
    assert with_dup == without_dup


def test_demo_replay_is_deterministic(replay_lines, demo_lines):
    assert replay_lines(demo_lines)[1] == replay_lines(demo_lines)[1]
    assert demo_events(DEMO_START) == demo_events(DEMO_START)


def test_demo_bad_records_are_all_rejected(replay_lines):
    lines = [value for _, value in bad_records()]
    _, _, errors, (written, bad) = replay_lines(lines)
    assert (written, bad) == (0, 3)
    assert [line.split(":")[1].strip() for line in errors.splitlines()] == [
        "malformed_json", "invalid_event", "unknown_type",
    ]


def test_an_erasure_forgets_the_customer_and_its_timers(replay_lines, raw_factory, t0):
    """As the worker does (tests/unit/test_process_partition.py): the SLA escalation of the
    ticket opened before the erasure never fires; the close after it is a new customer's."""
    erasure = orjson.dumps({"type": "erasure", "event_id": "erasure-1",
                            "customer_id": "c1", "occurred_at": rfc3339(t0 + HOUR)})
    lines = [raw_factory("ticket", ticket_id="A", status="opened", priority="high", day=0),
             erasure]
    kept, *_ = replay_lines(lines[:1], until=t0 + 30 * DAY)
    forgotten, *_ = replay_lines(lines, until=t0 + 30 * DAY)
    assert len(kept) > 1  # acknowledged, then escalated past its SLA
    assert [a["rule_id"] for a in forgotten] == ["ticket_opened_ack"]
