"""Guards: cooldown, max per customer, frequency caps, quiet hours, holdouts and the global
control group — and the suppressed records they leave."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from churnguard.core.clock import DAY, rfc3339
from churnguard.core.guards import CONTROL_GROUP, in_share
from churnguard.core.pack import PackInvalid, build_pack
from churnguard.core.processor import Engine, advance, apply_event
from churnguard.core.state import CustomerState
from churnguard.replay import replay
from tests.unit.packs import default_data, rules_only


def _login_rule(rule_id: str = "hello", *, guards: dict | None = None,
                actions: list | None = None) -> dict:
    return {"id": rule_id, "trigger": {"on": "login"}, "guards": guards or {},
            "actions": actions or [{"type": "notification", "template": rule_id}]}


def _engine(*rules: dict, **pack_guards) -> Engine:
    data = default_data()
    data["rules"] = list(rules)
    data["guards"] = pack_guards
    return Engine(build_pack(data))


class Run:
    """Events through apply_event, keeping actions and suppressed records apart."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.state: CustomerState | None = None
        self.actions: list = []
        self.suppressed: list = []

    def __call__(self, event) -> Run:
        outcome = apply_event(self.state, event, self.engine)
        self.state = outcome.state
        self.actions += outcome.actions
        self.suppressed += outcome.suppressed
        return self

    def advance(self, until: float) -> Run:
        assert self.state is not None
        outcome = advance(self.state, until, self.engine)
        self.actions += outcome.actions
        self.suppressed += outcome.suppressed
        return self


def _logins(event_factory, hours, customer_id="c1"):
    return [event_factory("login", hours=h, customer_id=customer_id) for h in hours]


def test_cooldown_suppresses_a_second_firing_within_the_window(event_factory):
    run = Run(_engine(_login_rule(guards={"cooldown_hours": 24})))
    for event in _logins(event_factory, [0, 1, 23.9, 24, 30]):
        run(event)
    assert [a.created_at for a in run.actions] == [
        event.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        for event in _logins(event_factory, [0, 24])]
    assert [s.reason for s in run.suppressed] == ["cooldown"] * 3
    first = run.suppressed[0]
    assert (first.rule_id, first.type, first.rule_version, first.pack_version) == (
        "hello", "notification", 1, 0)


def test_max_per_customer(event_factory):
    run = Run(_engine(_login_rule(guards={"max_per_customer": 2})))
    for event in _logins(event_factory, range(5)):
        run(event)
    assert len(run.actions) == 2
    assert [s.reason for s in run.suppressed] == ["max_per_customer"] * 3


def test_frequency_cap_across_rules_and_transactional_bypass(event_factory):
    engine = _engine(
        _login_rule("a"), _login_rule("b"),
        _login_rule("service", guards={"transactional": True}),
        frequency_caps=[{"type": "notification", "max": 2, "days": 7}],
    )
    run = Run(engine)
    for event in _logins(event_factory, [0, 24, 24 * 8]):
        run(event)
    fired = [(a.rule_id, a.created_at[:10]) for a in run.actions]
    # Day 0: a and b (2 of 2), service bypasses; day 1: capped but service; day 8: the
    # day-0 sends left the 7-day window.
    assert fired == [("a", "2024-03-01"), ("b", "2024-03-01"), ("service", "2024-03-01"),
                     ("service", "2024-03-02"),
                     ("a", "2024-03-09"), ("b", "2024-03-09"), ("service", "2024-03-09")]
    assert [(s.rule_id, s.reason) for s in run.suppressed] == [
        ("a", "frequency_cap"), ("b", "frequency_cap")]


def test_a_cap_per_channel_counts_only_that_channel(event_factory):
    engine = _engine(
        _login_rule("sms", actions=[{"type": "notification", "template": "t", "channel": "sms"}]),
        _login_rule("mail", actions=[{"type": "notification", "template": "t",
                                      "channel": "email"}]),
        frequency_caps=[{"type": "notification", "channel": "sms", "max": 1, "days": 1}],
    )
    run = Run(engine)
    for event in _logins(event_factory, [0, 1]):
        run(event)
    assert [a.rule_id for a in run.actions] == ["sms", "mail", "mail"]
    assert [(s.rule_id, s.reason) for s in run.suppressed] == [("sms", "frequency_cap")]


def test_quiet_hours_defer_a_notification_with_its_id(event_factory):
    engine = _engine(
        _login_rule(actions=[{"type": "notification", "template": "t"},
                             {"type": "task", "assignee": "q", "title": "call"}]),
        quiet_hours={"start": "21:00", "end": "09:00"},
    )
    late = datetime(2024, 3, 1, 22, 30, tzinfo=UTC)
    run = Run(engine)(event_factory("login", occurred_at=late.isoformat()))
    # The task goes at once; the notification waits for 09:00 the next day.
    assert [a.type for a in run.actions] == ["task"]
    [deferred] = run.suppressed
    assert (deferred.reason, deferred.deferred_to) == (
        "quiet_hours_deferred", "2024-03-02T09:00:00Z")
    assert run.state.next_due == datetime(2024, 3, 2, 9, tzinfo=UTC).timestamp()
    run.advance(datetime(2024, 3, 2, 8, 59, 59, tzinfo=UTC).timestamp())
    assert [a.type for a in run.actions] == ["task"]
    run.advance(datetime(2024, 3, 2, 9, tzinfo=UTC).timestamp())
    [_, sent] = run.actions
    assert sent.action_id == deferred.action_id
    assert sent.created_at == "2024-03-02T09:00:00Z"
    assert run.state.deferred == []


@pytest.mark.parametrize(("local", "zone", "deferred_to"), [
    ("2024-03-01T20:59:00+00:00", None, None),
    ("2024-03-01T21:00:00+00:00", None, "2024-03-02T09:00:00Z"),
    ("2024-03-02T08:59:59+00:00", None, "2024-03-02T09:00:00Z"),
    ("2024-03-02T09:00:00+00:00", None, None),
    # 21:30 UTC is 22:30 in Paris: quiet there until 09:00 Paris = 08:00 UTC.
    ("2024-03-01T21:30:00+00:00", "Europe/Paris", "2024-03-02T08:00:00Z"),
    # 23:00 UTC is 18:00 in New York: not quiet for that customer.
    ("2024-03-01T23:00:00+00:00", "America/New_York", None),
])
def test_quiet_hours_follow_the_customers_time_zone(event_factory, local, zone, deferred_to):
    engine = _engine(_login_rule(), quiet_hours={"start": "21:00", "end": "09:00"})
    run = Run(engine)
    if zone is not None:
        run(event_factory("profile", occurred_at="2024-03-01T00:00:00Z", timezone=zone))
    run(event_factory("login", occurred_at=local))
    assert [s.deferred_to for s in run.suppressed] == ([] if deferred_to is None
                                                       else [deferred_to])
    assert len(run.actions) == (1 if deferred_to is None else 0)


def test_quiet_hours_within_one_day(event_factory):
    engine = _engine(_login_rule(), quiet_hours={"start": "12:00", "end": "14:00"})
    run = Run(engine)(event_factory("login", occurred_at="2024-03-01T13:00:00Z"))
    assert [s.deferred_to for s in run.suppressed] == ["2024-03-01T14:00:00Z"]


def test_deferred_actions_replay_the_same(event_factory, t0):
    engine = _engine(_login_rule(), quiet_hours={"start": "21:00", "end": "09:00"})
    events = [event_factory("login", customer_id=f"c{n}", occurred_at=f"2024-03-01T2{n}:00:00Z")
              for n in range(4)]
    actions = list(replay(events, engine, until=t0 + DAY))
    assert [(a.customer_id, a.created_at) for a in actions] == [
        ("c0", "2024-03-01T20:00:00Z"),
        ("c1", "2024-03-02T09:00:00Z"), ("c2", "2024-03-02T09:00:00Z"),
        ("c3", "2024-03-02T09:00:00Z")]


def test_holdout_membership_is_stable_and_near_the_share(event_factory):
    members = [c for c in (f"c{n}" for n in range(10_000)) if in_share(10, "hello", c)]
    assert 900 < len(members) < 1100
    assert members == [c for c in (f"c{n}" for n in range(10_000)) if in_share(10, "hello", c)]
    # Another rule holds out other customers.
    other = {c for c in (f"c{n}" for n in range(10_000)) if in_share(10, "other", c)}
    assert len(other & set(members)) < 200
    engine = _engine(_login_rule(guards={"holdout_percent": 10}))
    held, treated = members[0], next(c for c in (f"c{n}" for n in range(100))
                                     if c not in members)
    for customer, expected in ((held, "holdout"), (treated, None)):
        run = Run(engine)(event_factory("login", customer_id=customer))
        assert [s.reason for s in run.suppressed] == ([] if expected is None else [expected])
        assert len(run.actions) == (0 if expected else 1)


def test_global_control_spares_transactional_rules(event_factory):
    control = next(c for c in (f"c{n}" for n in range(1000)) if in_share(5, CONTROL_GROUP, c))
    engine = _engine(_login_rule("promo"), _login_rule("ack", guards={"transactional": True}),
                     global_control_percent=5)
    run = Run(engine)(event_factory("login", customer_id=control))
    assert [a.rule_id for a in run.actions] == ["ack"]
    assert [(s.rule_id, s.reason) for s in run.suppressed] == [("promo", "global_control")]


def test_a_held_out_profile_update_is_not_applied(event_factory):
    member = next(c for c in (f"c{n}" for n in range(1000)) if in_share(50, "vip", c))
    engine = _engine(_login_rule("vip", guards={"holdout_percent": 50}, actions=[
        {"type": "profile_update", "set": {"tier": "vip"}}]))
    run = Run(engine)(event_factory("login", customer_id=member))
    assert run.state.tier == "standard"
    assert [s.type for s in run.suppressed] == ["profile_update"]


def test_the_default_pack_has_no_guards_and_marks_service_messages():
    pack = rules_only()
    assert pack.guarded is False
    data = default_data()
    transactional = {r["id"] for r in data["rules"] if r.get("guards", {}).get("transactional")}
    assert transactional == {"ticket_opened_ack", "ticket_closed_survey"}


@pytest.mark.parametrize(("guards", "loc", "message"), [
    ({"quiet_hours": {"start": "21:00", "end": "21:00"}}, ("guards", "quiet_hours", "end"),
     "an end other than their start"),
    ({"frequency_caps": [{"type": "sms", "max": 1, "days": 1}]},
     ("guards", "frequency_caps", 0, "type"), "notification"),
    ({"global_control_percent": 101}, ("guards", "global_control_percent"), "100"),
])
def test_bad_pack_guards_are_refused(guards, loc, message):
    data = default_data()
    data["guards"] = guards
    with pytest.raises(PackInvalid) as caught:
        build_pack(data)
    [problem] = caught.value.problems
    assert problem.loc == loc
    assert message in problem.message


def test_state_with_guards_round_trips(event_factory):
    engine = _engine(_login_rule(guards={"cooldown_hours": 1}),
                     frequency_caps=[{"type": "notification", "max": 5, "days": 1}],
                     quiet_hours={"start": "21:00", "end": "09:00"})
    run = Run(engine)(event_factory("login", occurred_at="2024-03-01T22:00:00Z"))
    state = run.state
    assert state.rule_fires
    assert state.sent
    assert state.deferred
    assert CustomerState.from_bytes(state.to_bytes()) == state


def test_an_old_state_without_guard_fields_loads():
    import orjson

    # A JSON state: every state stored before the binary form.
    raw = orjson.loads(CustomerState(customer_id="c1").to_json_bytes())
    for name in ("rule_fires", "sent", "deferred", "timezone"):
        del raw[name]
    state = CustomerState.from_bytes(orjson.dumps(raw))
    assert (state.rule_fires, state.sent, state.deferred, state.timezone) == ({}, [], [], None)


def test_suppressed_and_deferred_for_a_time_driven_rule(event_factory, t0):
    data = default_data()
    data["rules"] = [{"id": "tips", "trigger": {"on": "after", "anchor": "first_purchase",
                                                 "days": 1},
                      "actions": [{"type": "notification", "template": "tips"}]}]
    data["guards"] = {"quiet_hours": {"start": "00:00", "end": "23:59"}}
    engine = Engine(build_pack(data))
    run = Run(engine)(event_factory("purchase", occurred_at="2024-03-01T10:00:00Z"))
    run.advance(t0 + 3 * DAY)
    [sent] = run.actions
    [deferred] = run.suppressed
    assert sent.action_id == deferred.action_id
    assert sent.created_at == rfc3339(datetime(2024, 3, 2, 23, 59, tzinfo=UTC).timestamp())
