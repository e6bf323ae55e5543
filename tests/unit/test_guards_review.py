"""Guards reviewed as a hostile user and an SRE: determinism between the worker's ticks and
a replay with every guard at once, deferred actions released exactly once (state round
trips, `advance` in pieces, events during quiet hours), quiet hours across the Paris DST
changes, a customer time zone the worker does not know, frequency-cap windows, held-out
thresholds, cooldowns on timers, the control group and what guards keep in the state."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from typing import Any

import pytest

from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.core.guards import CONTROL_GROUP, MAX_DEFERRED, in_share
from churnguard.core.pack import PackInvalid, build_pack
from churnguard.core.processor import Engine, advance, apply_event
from churnguard.core.state import CustomerState
from churnguard.replay import replay
from schemas.events import MODEL_BY_TYPE, Event
from tests.unit.packs import default_data, only_retention_due

_ids = itertools.count()


def _event(kind: str, at: str | float, customer: str = "c1", **fields: Any) -> Event:
    data: dict[str, Any] = {
        "type": kind, "event_id": f"rv-{next(_ids)}", "customer_id": customer,
        "occurred_at": at if isinstance(at, str) else rfc3339(at),
    }
    if kind == "purchase":
        data |= {"order_id": f"o-{next(_ids)}", "amount": "10", "currency": "EUR"}
    if kind == "ticket":
        data |= {"ticket_id": f"t-{next(_ids)}", "status": "opened"}
    data |= fields
    return MODEL_BY_TYPE[kind].model_validate(data)  # type: ignore[return-value]


def _engine(*rules: dict[str, Any], timezone: str = "UTC", **guards: Any) -> Engine:
    data = default_data()
    data["rules"] = list(rules)
    data["guards"] = guards
    data["timezone"] = timezone
    return Engine(build_pack(data))


def _rule(rule_id: str = "hello", on: dict[str, Any] | None = None, *,
          guards: dict[str, Any] | None = None,
          actions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": rule_id, "trigger": on or {"on": "login"}, "guards": guards or {},
            "actions": actions or [{"type": "notification", "template": rule_id}]}


class Run:
    """One customer's events through apply_event (optionally as a live worker would, with
    `noticed_at`), its state serialized between steps as the worker stores it."""

    def __init__(self, engine: Engine, *, round_trip: bool = True) -> None:
        self.engine = engine
        self.raw: bytes | None = None
        self.round_trip = round_trip
        self._state: CustomerState | None = None
        self.actions: list[Any] = []
        self.suppressed: list[Any] = []

    @property
    def state(self) -> CustomerState:
        if self.round_trip:
            assert self.raw is not None
            return CustomerState.from_bytes(self.raw)
        assert self._state is not None
        return self._state

    def _keep(self, state: CustomerState) -> None:
        if self.round_trip:
            self.raw = state.to_bytes()
        else:
            self._state = state

    def __call__(self, event: Event, *, live: bool = False) -> Run:
        state = None if (self.raw is None and self._state is None) else self.state
        noticed = event.occurred_at.timestamp() if live else None
        outcome = apply_event(state, event, self.engine, noticed_at=noticed)
        self._keep(outcome.state)
        self.actions += outcome.actions
        self.suppressed += outcome.suppressed
        return self

    def advance(self, until: float, *, live: bool = False) -> Run:
        state = self.state
        outcome = advance(state, until, self.engine, noticed_at=until if live else None)
        self._keep(state)
        self.actions += outcome.actions
        self.suppressed += outcome.suppressed
        return self


def _ts(text: str) -> float:
    return parse_rfc3339(text)


# --- determinism: a live worker (ticks, noticed_at, stored states) and a replay ---------------

_T0 = _ts("2026-10-20T00:00:00Z")  # the Paris autumn DST change (Oct 25) in the run


def _busy_pack() -> Engine:
    return _engine(
        _rule("hello", guards={"cooldown_hours": 6},
              actions=[{"type": "notification", "template": "hello"}]),
        _rule("thanks", {"on": "purchase"}, guards={"holdout_percent": 30}, actions=[
            {"type": "notification", "template": "thx", "channel": "sms"},
            {"type": "coupon", "value": 5, "kind": "percent", "expires_in_days": 3}]),
        _rule("nudge", {"on": "inactivity", "days": 1}, guards={"max_per_customer": 2}),
        _rule("tips", {"on": "after", "anchor": "first_purchase", "days": 1}),
        _rule("ack", {"on": "ticket_opened"}, guards={"transactional": True}),
        timezone="Europe/Paris",
        frequency_caps=[{"type": "notification", "max": 3, "days": 1},
                        {"type": "notification", "channel": "sms", "max": 1, "days": 1},
                        {"type": "coupon", "max": 1, "days": 2}],
        quiet_hours={"start": "21:00", "end": "08:00"},
        global_control_percent=10,
    )


def _history(seed: int, count: int = 400, customers: int = 10) -> list[Event]:
    rnd = random.Random(seed)
    events = []
    for _ in range(count):
        customer = f"c{rnd.randrange(customers)}"
        at = float(round(_T0 + rnd.uniform(0, 10 * DAY)))
        kind = rnd.choice(["login", "login", "purchase", "ticket", "profile"])
        extra: dict[str, Any] = {}
        if kind == "login":
            extra = {"channel": "web"}
        if kind == "profile":
            extra = {"timezone": rnd.choice(["America/New_York", "Asia/Tokyo", "Europe/Paris"]),
                     "phone": "+33100000000"}
        events.append(_event(kind, at, customer, **extra))
    events.sort(key=lambda e: e.occurred_at.timestamp())
    return events


def _live_worker(events: list[Event], engine: Engine, end: float, tick: float):
    """What the worker does: events applied as they come (noticed_at = their time), a tick
    every `tick` seconds advancing the customers due, states stored as bytes."""
    stored: dict[str, bytes] = {}
    actions: list[Any] = []
    suppressed: list[Any] = []
    moment = _T0

    def ticks(up_to: float) -> None:
        nonlocal moment
        while moment + tick <= up_to:
            moment += tick
            for customer in sorted(stored):
                state = CustomerState.from_bytes(stored[customer])
                if state.next_due is not None and state.next_due <= moment:
                    outcome = advance(state, moment, engine, noticed_at=moment)
                    actions.extend(outcome.actions)
                    suppressed.extend(outcome.suppressed)
                    stored[customer] = state.to_bytes()

    for event in events:
        ticks(event.occurred_at.timestamp())
        raw = stored.get(event.customer_id)
        outcome = apply_event(None if raw is None else CustomerState.from_bytes(raw), event,
                              engine, noticed_at=event.occurred_at.timestamp())
        actions.extend(outcome.actions)
        suppressed.extend(outcome.suppressed)
        stored[event.customer_id] = outcome.state.to_bytes()
    ticks(end)
    return actions, suppressed


def _per_customer(items: list[Any], key) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        grouped[item.customer_id].append(key(item))
    return dict(grouped)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tick", [60.0, 0.7 * HOUR, 5 * HOUR])
def test_a_live_worker_and_a_replay_give_the_same_actions_and_suppressed_records(seed, tick):
    engine = _busy_pack()
    events = _history(seed)
    end = _T0 + 13 * DAY
    replayed_suppressed: list[Any] = []
    replayed = list(replay(events, engine, until=end, suppressed=replayed_suppressed))
    live, live_suppressed = _live_worker(events, engine, end, tick)

    def action(a: Any) -> tuple[Any, ...]:
        return (a.action_id, a.created_at, a.rule_id, a.type, repr(a.payload))

    def stopped(s: Any) -> str:
        return repr(s.to_record())

    assert _per_customer(live, action) == _per_customer(replayed, action)
    assert _per_customer(live_suppressed, stopped) == _per_customer(replayed_suppressed, stopped)
    # Every guard took part.
    assert {s.reason for s in replayed_suppressed} == {
        "global_control", "holdout", "cooldown", "max_per_customer", "frequency_cap",
        "quiet_hours_deferred"}
    # Every deferred action was sent once, with its id.
    sent = [a.action_id for a in replayed]
    for s in replayed_suppressed:
        if s.reason == "quiet_hours_deferred":
            assert sent.count(s.action_id) == 1


# --- deferred actions: exactly once ---------------------------------------------------------

def _quiet_engine(**more: Any) -> Engine:
    return _engine(_rule(), quiet_hours={"start": "21:00", "end": "09:00"}, **more)


@pytest.mark.parametrize("round_trip", [True, False])
def test_a_deferred_action_is_released_once_whatever_the_pieces(round_trip):
    run = Run(_quiet_engine(), round_trip=round_trip)
    run(_event("login", "2026-03-01T22:00:00Z", channel="web"))
    [deferred] = run.suppressed
    for moment in ("2026-03-01T23:00:00Z", "2026-03-02T08:59:59.999Z", "2026-03-02T09:00:00Z",
                   "2026-03-02T09:00:00Z", "2026-03-02T09:00:01Z", "2026-03-05T00:00:00Z"):
        run.advance(_ts(moment), live=True)
    assert [(a.action_id, a.created_at) for a in run.actions] == [
        (deferred.action_id, "2026-03-02T09:00:00Z")]
    assert run.state.deferred == []
    assert only_retention_due(run.engine.pack, run.state)


def test_an_event_during_quiet_hours_neither_releases_nor_duplicates_the_deferred_action():
    run = Run(_quiet_engine())
    run(_event("login", "2026-03-01T22:00:00Z", channel="web"))
    run(_event("profile", "2026-03-01T23:30:00Z", tags=["x"]))
    run(_event("purchase", "2026-03-02T03:00:00Z"))
    assert run.actions == []
    run(_event("login", "2026-03-02T09:30:00Z", channel="web"))
    first = run.suppressed[0]
    assert [(a.action_id, a.created_at) for a in run.actions][:1] == [
        (first.action_id, "2026-03-02T09:00:00Z")]
    assert [a.created_at for a in run.actions] == ["2026-03-02T09:00:00Z",
                                                   "2026-03-02T09:30:00Z"]
    run.advance(_ts("2026-03-03T12:00:00Z"))
    assert len(run.actions) == 2


def test_deferred_actions_beyond_the_limit_are_recorded_and_the_rest_sent_once():
    run = Run(_quiet_engine())
    for minute in range(MAX_DEFERRED + 3):
        run(_event("login", f"2026-03-01T22:{minute:02d}:00Z", channel="web"))
    reasons = [s.reason for s in run.suppressed]
    assert reasons == ["quiet_hours_deferred"] * MAX_DEFERRED + ["frequency_cap"] * 3
    run.advance(_ts("2026-03-02T09:00:00Z"))
    assert len(run.actions) == MAX_DEFERRED
    assert len({a.action_id for a in run.actions}) == MAX_DEFERRED


# --- quiet hours and the Paris DST changes ----------------------------------------------------

@pytest.mark.parametrize(("at", "deferred_to"), [
    # Spring: Mar 29 2026, 02:00 CET -> 03:00 CEST. 22:30 CET -> 09:00 CEST = 07:00 UTC.
    ("2026-03-28T21:30:00Z", "2026-03-29T07:00:00Z"),
    # 08:30 CEST on the change day is 06:30 UTC: quiet until 07:00 UTC.
    ("2026-03-29T06:30:00Z", "2026-03-29T07:00:00Z"),
    # Autumn: Oct 25 2026, 03:00 CEST -> 02:00 CET. 22:30 CEST -> 09:00 CET = 08:00 UTC.
    ("2026-10-24T20:30:00Z", "2026-10-25T08:00:00Z"),
    # 02:30 local, the second time (CET): still quiet until 09:00 CET.
    ("2026-10-25T01:30:00Z", "2026-10-25T08:00:00Z"),
    ("2026-10-25T07:59:59Z", "2026-10-25T08:00:00Z"),
    ("2026-10-25T08:00:00Z", None),
])
def test_overnight_quiet_hours_across_the_paris_dst_changes(at, deferred_to):
    engine = _engine(_rule(), timezone="Europe/Paris",
                     quiet_hours={"start": "21:00", "end": "09:00"})
    run = Run(engine)(_event("login", at, channel="web"))
    assert [s.deferred_to for s in run.suppressed] == ([] if deferred_to is None
                                                       else [deferred_to])


def test_quiet_hours_ending_in_the_repeated_autumn_hour():
    engine = _engine(_rule(), timezone="Europe/Paris",
                     quiet_hours={"start": "22:00", "end": "02:30"})
    run = Run(engine)(_event("login", "2026-10-25T01:10:00Z", channel="web"))  # 02:10 CET
    [deferred] = run.suppressed
    assert deferred.deferred_to is not None
    assert deferred.deferred_to > deferred.created_at, deferred.to_record()
    # One second later (the next tick) it is still 02:10 CET: nothing may go out.
    run.advance(_ts("2026-10-25T01:10:01Z"), live=True)
    assert run.actions == []


def test_quiet_hours_ending_in_the_spring_gap():
    engine = _engine(_rule(), timezone="Europe/Paris",
                     quiet_hours={"start": "01:00", "end": "02:30"})
    run = Run(engine)(_event("login", "2026-03-29T00:30:00Z", channel="web"))  # 01:30 CET
    run(_event("login", "2026-03-29T01:15:00Z", channel="web"))  # 03:15 CEST: not quiet
    [deferred] = run.suppressed
    assert "2026-03-29T01:15:00Z" in [a.created_at for a in run.actions]
    assert deferred.deferred_to is not None
    assert deferred.deferred_to <= "2026-03-29T01:15:00Z", deferred.to_record()


# --- a customer's time zone the worker does not know ----------------------------------------

@pytest.mark.parametrize("zone", ["Mars/Base", "europe/paris", ""])
def test_an_unknown_time_zone_in_an_old_state_falls_back_to_the_packs(zone):
    engine = _engine(_rule(), quiet_hours={"start": "21:00", "end": "09:00"})
    state = CustomerState(customer_id="c1", timezone=zone)
    old = CustomerState.from_bytes(state.to_bytes())
    try:
        outcome = apply_event(old, _event("login", "2026-03-01T22:00:00Z", channel="web"),
                              engine)
    except Exception as exc:
        raise AssertionError(f"the event failed: {type(exc).__name__}: {exc}") from exc
    assert [s.deferred_to for s in outcome.suppressed] == ["2026-03-02T09:00:00Z"]


# --- frequency caps ---------------------------------------------------------------------------

def test_a_deferred_notification_counts_against_the_cap_when_it_is_sent():
    """Deferred from 21:00 to 09:00 with a cap of 1 per 12 h: it counts from 09:00, so the
    one firing at 09:00:01 is capped (not both out within a second)."""
    engine = _engine(_rule(), frequency_caps=[{"type": "notification", "max": 1, "days": 0.5}],
                     quiet_hours={"start": "21:00", "end": "09:00"})
    run = Run(engine)
    run(_event("login", "2026-03-01T21:00:00Z", channel="web"))
    run(_event("login", "2026-03-02T09:00:01Z", channel="web"))
    sent = [_ts(a.created_at) for a in run.actions if a.type == "notification"]
    within_12h = [t for t in sent if t > sent[-1] - 0.5 * DAY]
    assert len(within_12h) <= 1, [a.created_at for a in run.actions]
    assert [s.reason for s in run.suppressed] == ["quiet_hours_deferred", "frequency_cap"]


def test_a_dropped_deferral_does_not_count_against_the_cap():
    engine = _engine(_rule(),
                     frequency_caps=[{"type": "notification", "max": MAX_DEFERRED + 1, "days": 1}],
                     quiet_hours={"start": "21:00", "end": "09:00"})
    run = Run(engine)
    for minute in range(MAX_DEFERRED + 1):
        run(_event("login", f"2026-03-01T22:{minute:02d}:00Z", channel="web"))
    assert run.suppressed[-1].reason == "frequency_cap"  # the 21st: over MAX_DEFERRED
    run.advance(_ts("2026-03-02T09:00:00Z"))
    assert len(run.actions) == MAX_DEFERRED  # 20 sent of a cap of 21 per day
    run(_event("login", "2026-03-02T10:00:00Z", channel="web"))
    assert len(run.actions) == MAX_DEFERRED + 1, [s.reason for s in run.suppressed[-1:]]


def test_the_cap_window_slides_and_is_pruned():
    engine = _engine(_rule(), frequency_caps=[{"type": "notification", "max": 2, "days": 7}])
    run = Run(engine)
    start = _ts("2026-03-01T12:00:00Z")
    for hour in range(0, 24 * 30, 5):
        run(_event("login", start + hour * HOUR, channel="web"))
    created = [_ts(a.created_at) for a in run.actions]
    for moment in created:
        assert len([t for t in created if moment - 7 * DAY < t <= moment]) <= 2
    assert len(created) >= 8  # ~2 per week over 30 days
    state = run.state
    assert len(state.sent) <= 2
    assert all(at > state.clock - 7 * DAY for at, _, _ in state.sent)


def test_sent_keeps_only_what_some_cap_can_still_count():
    engine = _engine(_rule(), frequency_caps=[{"type": "notification", "max": 1, "days": 1},
                                              {"type": "coupon", "max": 1, "days": 366}])
    run = Run(engine)
    start = _ts("2026-01-01T12:00:00Z")
    for day in range(365):
        run(_event("login", start + day * DAY, channel="web"))
    state = run.state
    notifications = [entry for entry in state.sent if entry[1] == "notification"]
    assert len(notifications) <= 1, (len(notifications), len(state.to_bytes()))


def test_a_channel_on_a_cap_of_an_action_without_channels_is_refused():
    data = default_data()
    data["guards"] = {"frequency_caps": [{"type": "task", "channel": "sms", "max": 0,
                                          "days": 1}]}
    try:
        build_pack(data)
    except PackInvalid as exc:
        problems = exc.problems
    else:
        problems = []
    assert any("channel" in str(p.loc) or "channel" in p.message for p in problems), (
        "a cap of tasks by sms channel was accepted (and never applies)")


def test_many_capped_sends_keep_the_state_small():
    engine = _engine(_rule("a"), _rule("b"), _rule("c"),
                     frequency_caps=[{"type": "notification", "max": 3, "days": 7}])
    run = Run(engine)
    start = _ts("2026-03-01T00:00:00Z")
    for n in range(2000):
        run(_event("login", start + n * 600, channel="web"))
    state = run.state
    assert len(state.sent) <= 3
    assert len([s for s in run.suppressed if s.reason == "frequency_cap"]) > 5000
    assert len(state.to_bytes()) < 8192


# --- rule-level guards ------------------------------------------------------------------------

def test_a_held_out_threshold_firing_disarms_and_rearms_like_a_treated_one():
    rule = _rule("tickets", {"on": "threshold", "metric": "open_tickets", "at_least": 1},
                 guards={"holdout_percent": 100})
    run = Run(_engine(rule))
    run(_event("ticket", "2026-03-01T10:00:00Z", ticket_id="A", status="opened"))
    run(_event("ticket", "2026-03-01T10:05:00Z", ticket_id="B", status="opened"))  # still in
    run(_event("ticket", "2026-03-01T11:00:00Z", ticket_id="A", status="closed"))
    run(_event("ticket", "2026-03-01T11:05:00Z", ticket_id="B", status="closed"))  # left
    run(_event("ticket", "2026-03-01T12:00:00Z", ticket_id="C", status="opened"))  # again
    assert run.actions == []
    assert [(s.reason, s.created_at) for s in run.suppressed] == [
        ("holdout", "2026-03-01T10:00:00Z"), ("holdout", "2026-03-01T12:00:00Z")]
    assert "tickets" not in run.state.armed


def test_a_cooldown_on_a_timer_consumes_the_occurrence():
    rule = _rule("nudge", {"on": "inactivity", "days": 1}, guards={"cooldown_hours": 72})
    run = Run(_engine(rule))
    start = _ts("2026-03-01T00:00:00Z")
    run(_event("login", start, channel="web"))
    run.advance(start + 1.25 * DAY)
    run(_event("login", start + 1.5 * DAY, channel="web"))
    run.advance(start + 10 * DAY)  # due at 2.5 d: within the cooldown, consumed
    assert [a.created_at for a in run.actions] == [rfc3339(start + DAY)]
    assert [(s.reason, s.created_at) for s in run.suppressed] == [
        ("cooldown", rfc3339(start + 2.5 * DAY))]
    # Not retried at the end of the cooldown.
    assert only_retention_due(run.engine.pack, run.state)
    run(_event("login", start + 11 * DAY, channel="web"))
    run.advance(start + 13 * DAY)
    assert [a.created_at for a in run.actions][-1] == rfc3339(start + 12 * DAY)


def test_control_and_holdout_shares_are_near_their_percent_and_independent():
    customers = [f"cust-{n}" for n in range(40_000)]
    control = {c for c in customers if in_share(5, CONTROL_GROUP, c)}
    held = {c for c in customers if in_share(10, "winback", c)}
    assert 0.045 < len(control) / len(customers) < 0.055
    assert 0.09 < len(held) / len(customers) < 0.11
    # Independent: the holdout share among control customers is the same ~10 %.
    assert 0.08 < len(held & control) / len(control) < 0.12
    engine = _engine(_rule("winback", guards={"holdout_percent": 10}),
                     global_control_percent=5)
    reasons: dict[str | None, int] = defaultdict(int)
    for customer in customers[:4000]:
        run = Run(engine, round_trip=False)(_event("login", "2026-03-01T12:00:00Z", customer,
                                                   channel="web"))
        reasons[run.suppressed[0].reason if run.suppressed else None] += 1
    assert reasons["global_control"] == len([c for c in customers[:4000] if c in control])
    assert reasons[None] == len([c for c in customers[:4000]
                                 if c not in control and c not in held])


def test_a_rule_named_global_has_a_holdout_independent_of_the_control_group():
    customers = [f"cust-{n}" for n in range(20_000)]
    control = {c for c in customers if in_share(10, CONTROL_GROUP, c)}
    engine = _engine(_rule("global", guards={"holdout_percent": 10}),
                     global_control_percent=10)
    held_treated = 0
    for customer in customers[:3000]:
        if customer in control:
            continue
        run = Run(engine, round_trip=False)(_event("login", "2026-03-01T12:00:00Z", customer,
                                                   channel="web"))
        held_treated += [s.reason for s in run.suppressed] == ["holdout"]
    assert held_treated > 100  # ~10 % of ~2,700 treated customers


def test_rules_without_cooldown_or_max_keep_no_firing_counts():
    engine = _engine(_rule("plain"), _rule("held", guards={"holdout_percent": 50}),
                     _rule("capped", guards={"max_per_customer": 2}))
    run = Run(engine)
    for n in range(50):
        run(_event("login", _ts("2026-03-01T00:00:00Z") + n * HOUR, channel="web"))
    assert set(run.state.rule_fires) == {"capped"}
    # A stopped firing is not counted again: the count stays at the maximum.
    assert run.state.rule_fires["capped"][0] == 2


def test_transactional_rules_bypass_quiet_hours_caps_and_the_control_group_as_documented():
    control = next(c for c in (f"c{n}" for n in range(2000)) if in_share(50, CONTROL_GROUP, c))
    engine = _engine(
        _rule("promo"), _rule("ack", guards={"transactional": True}),
        frequency_caps=[{"type": "notification", "max": 1, "days": 1}],
        quiet_hours={"start": "21:00", "end": "09:00"}, global_control_percent=50)
    run = Run(engine)
    for minute in range(3):
        run(_event("login", f"2026-03-01T22:0{minute}:00Z", control, channel="web"))
    assert [(a.rule_id, a.created_at) for a in run.actions] == [
        ("ack", f"2026-03-01T22:0{m}:00Z") for m in range(3)]
    assert {s.reason for s in run.suppressed} == {"global_control"}
    assert run.state.sent == []  # not counted against the caps
    assert run.state.deferred == []


def test_the_default_pack_with_pack_guards_keeps_service_messages_going():
    data = default_data()
    data["guards"] = {"quiet_hours": {"start": "00:00", "end": "23:59"},
                      "frequency_caps": [{"type": "notification", "max": 0, "days": 1}],
                      "global_control_percent": 100}
    engine = Engine(build_pack(data))
    run = Run(engine)
    run(_event("ticket", "2026-03-01T12:00:00Z", ticket_id="T1", status="opened"))
    run(_event("ticket", "2026-03-01T13:00:00Z", ticket_id="T1", status="closed",
               satisfaction=4))
    assert [a.rule_id for a in run.actions] == ["ticket_opened_ack", "ticket_closed_survey"]


def test_a_deferred_send_beyond_the_cap_window_does_not_stop_an_immediate_one():
    """A cap of 1 per 6 h; a deferral pending 10.5 h ahead (quiet hours): an immediate
    notification now is more than one window away from it, so it goes out."""
    engine = _engine(_rule(), frequency_caps=[{"type": "notification", "max": 1, "days": 0.25}])
    state = CustomerState(customer_id="c1", sent=[(_ts("2026-03-02T09:00:00Z"),
                                                   "notification", "push")])
    run = Run(engine)
    run.raw = state.to_bytes()
    run(_event("login", "2026-03-01T22:30:00Z", channel="web"))
    assert [a.type for a in run.actions] == ["notification"], run.suppressed
