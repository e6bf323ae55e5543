"""batch.process_partition: validation, DLQ, state loading/writing, routing and metrics."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from churnguard import batch as batch_module
from churnguard import due_index
from churnguard.batch import BatchContext, process_partition
from churnguard.core.clock import DAY, rfc3339
from churnguard.core.state import CustomerState
from churnguard.metrics import Metrics
from tests.unit.raw_records import TOPICS, Record


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def engine(engine_factory):
    # The records lie up to 90 days before the worker's clock (`now`): a backfill horizon
    # beyond that keeps their rules firing (the horizon: tests/unit/test_backfill_horizon.py).
    return engine_factory(changes={"backfill_horizon_hours": 100 * 24})


@pytest.fixture
def ctx(engine, metrics):
    return BatchContext.create(engine, TOPICS, metrics, 24)


@pytest.fixture
def now(t0):
    return t0 + 90 * DAY


class Store:
    """A dict-backed state store; records every multi-get."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.loads: list[list[bytes]] = []

    def load(self, keys: list[bytes]) -> list[bytes | None]:
        self.loads.append(list(keys))
        return [self.data.get(k) for k in keys]


@pytest.fixture
def store():
    return Store()


@pytest.fixture
def records(raw_factory):
    """records((topic, payload-kwargs-or-raw-bytes), …) with consecutive offsets per topic.

    A dict payload is built by raw_factory for the topic's event type; its key defaults to
    the customer id; pass key= in the dict to override (None for no key)."""

    def make(*specs, partition=3, start=0):
        offsets: dict[str, int] = {}
        out = []
        types = TOPICS.inputs()
        for topic, spec in specs:
            offset = offsets.get(topic, start)
            offsets[topic] = offset + 1
            if isinstance(spec, dict):
                fields = dict(spec)
                key = fields.pop("key", fields.get("customer_id", "c1").encode())
                type_ = fields.pop("type_", types[topic] or "purchase")
                value = raw_factory(type_, **fields)
                if types[topic]:
                    data = orjson.loads(value)
                    del data["type"]
                    value = orjson.dumps(data)
            else:
                key, value = b"c1", spec
            out.append(Record(topic, partition, offset, key, value))
        return out

    return make


def run(recs, store, ctx, now):
    result = process_partition(recs, store.load, ctx, now=now)
    store.data.update(result.writes)
    return result


def by_topic(result):
    grouped: dict[str, list[dict]] = {}
    for output in result.outputs:
        grouped.setdefault(output.topic, []).append(orjson.loads(output.value))
    return grouped


# --- dead letters --------------------------------------------------------------------------

def test_bad_record_is_dead_lettered_and_later_good_events_still_apply(
    records, store, ctx, now, metrics
):
    bad_value = b'{"event_id": "x", "customer_id": "c1", "amount": -3'
    recs = records(
        (TOPICS.purchases, {"amount": "10", "day": 1}),
        (TOPICS.purchases, bad_value),
        (TOPICS.purchases, {"amount": "20", "day": 2}),
    )
    result = run(recs, store, ctx, now)
    [dead] = [o for o in result.outputs if o.topic == TOPICS.dlq]
    assert dead.key == b"c1"
    letter = orjson.loads(dead.value)
    assert letter["kind"] == "malformed_json"
    assert letter["reason"]
    assert letter["source"] == {"topic": TOPICS.purchases, "partition": 3, "offset": 1}
    # Not JSON: not kept (it may hold anything), only described.
    assert letter["value_b64"] is None
    assert letter["value_length"] == len(bad_value)
    assert letter["value_sha256"] == hashlib.sha256(bad_value).hexdigest()
    assert base64.b64decode(letter["key_b64"]) == b"c1"
    assert letter["dead_lettered_at"] == rfc3339(now)
    assert letter["contract_version"] == 1
    state = CustomerState.from_bytes(result.writes[b"c1"])
    assert state.order_count == 2
    assert state.spend_e4 == 300_000
    assert metrics.dead_letters == {"malformed_json": 1}
    assert metrics.events_in == {TOPICS.purchases: 3}
    assert metrics.applied_by_type() == {"purchase": 2}


@pytest.mark.parametrize(
    ("payload", "kind", "word"),
    [
        ({"amount": "-5"}, "invalid_event", "amount"),
        ({"amount": ...}, "invalid_event", "amount"),
        ({"occurred_at": "1999-01-01T00:00:00Z"}, "absurd_timestamp", "occurred_at"),
        ({"occurred_at": "2024-03-01T00:00:00"}, "invalid_event", "occurred_at"),
        ({"key": None}, "key_mismatch", "key"),
        ({"key": b"c2"}, "key_mismatch", "key"),
    ],
)
def test_each_rejection_kind_is_counted_and_dead_lettered(
    records, store, ctx, now, metrics, payload, kind, word
):
    result = run(records((TOPICS.purchases, payload)), store, ctx, now)
    [dead] = result.outputs
    assert dead.topic == TOPICS.dlq
    letter = orjson.loads(dead.value)
    assert letter["kind"] == kind
    assert word in letter["reason"]
    assert metrics.dead_letters == {kind: 1}
    assert result.writes == {}
    assert store.loads == []  # nothing valid: no state is read


def test_unknown_type_and_tombstone_on_the_combined_topic(records, store, ctx, now, metrics):
    recs = records(
        (TOPICS.events, b'{"type": "refund", "event_id": "r", "customer_id": "c1"}'),
        (TOPICS.events, None),
    )
    result = run(recs, store, ctx, now)
    letters = [orjson.loads(o.value) for o in result.outputs]
    assert [letter["kind"] for letter in letters] == ["unknown_type", "malformed_json"]
    assert letters[1]["value_b64"] is None
    assert letters[1]["source"]["offset"] == 1
    assert metrics.dead_letters == {"unknown_type": 1, "malformed_json": 1}


# --- state loading and writing -------------------------------------------------------------

def test_each_dirty_customer_is_loaded_and_written_once(records, store, ctx, now):
    recs = records(
        (TOPICS.purchases, {"customer_id": "c1", "day": 1}),
        (TOPICS.logins, {"customer_id": "c2", "day": 1}),
        (TOPICS.purchases, {"customer_id": "c2", "day": 2}),
        (TOPICS.logins, {"customer_id": "c1", "day": 2}),
        (TOPICS.events, {"customer_id": "c1", "day": 3, "type_": "login"}),
    )
    result = run(recs, store, ctx, now)
    assert store.loads == [[b"c1", b"c2"]]
    states = sorted(k for k in result.writes if not k.startswith(due_index.PREFIX))
    assert states == [b"c1", b"c2"]
    # Each customer's pending timers are indexed by due time, once.
    entries = [k for k in result.writes if k.startswith(due_index.PREFIX)]
    assert sorted(due_index.customer_of(k) for k in entries) == [b"c1", b"c2"]
    c1 = CustomerState.from_bytes(result.writes[b"c1"])
    c2 = CustomerState.from_bytes(result.writes[b"c2"])
    assert (c1.order_count, sum(c1.login_days.values())) == (1, 2)
    assert (c2.order_count, sum(c2.login_days.values())) == (1, 1)
    assert c1.offsets == {TOPICS.purchases: 0, TOPICS.logins: 1, TOPICS.events: 0}


def test_stored_state_is_continued(records, store, ctx, now):
    run(records((TOPICS.purchases, {"amount": "6000", "day": 1})), store, ctx, now)
    result = run(records((TOPICS.purchases, {"amount": "4000", "day": 2}), start=1),
                 store, ctx, now)
    state = CustomerState.from_bytes(result.writes[b"c1"])
    assert state.order_count == 2
    assert state.spend_e4 == 100_000_000


def test_redelivered_batch_is_applied_once(records, store, ctx, now, metrics):
    batch = records((TOPICS.purchases, {"day": 1}), (TOPICS.tickets, {"day": 1}))
    first = run(batch, store, ctx, now)
    assert [o.topic for o in first.outputs
            if o.topic not in (TOPICS.scores, TOPICS.outcomes)] == [TOPICS.notifications]
    again = run(batch, store, ctx, now)
    assert metrics.duplicates == 2
    assert again.outputs == []
    assert CustomerState.from_bytes(store.data[b"c1"]).order_count == 1


def test_duplicate_event_id_in_one_batch(records, store, ctx, now, metrics):
    recs = records(
        (TOPICS.purchases, {"event_id": "same", "amount": "10"}),
        (TOPICS.purchases, {"event_id": "same", "amount": "10"}),
    )
    result = run(recs, store, ctx, now)
    assert metrics.duplicates == 1
    assert metrics.applied_by_type() == {"purchase": 1}
    state = CustomerState.from_bytes(result.writes[b"c1"])
    assert state.order_count == 1
    assert state.offsets == {TOPICS.purchases: 1}


# --- outputs -------------------------------------------------------------------------------

def test_actions_are_routed_by_type(records, store, ctx, now, metrics, t0):
    recs = records(
        (TOPICS.profiles, {"day": 0, "account_manager": "am-1", "email": "a@b.c"}),
        (TOPICS.purchases, {"day": 0, "amount": "10000"}),          # vip: profile_update + welcome
        (TOPICS.tickets, {"day": 1, "ticket_id": "T", "status": "opened"}),  # ack
        # Before the login, in due order: the ticket's 72 h SLA breach (day 4), the win-back
        # one second later (the overdue ticket costs 15 service points: 40 + 19.5 < 60; VIP:
        # 4 actions).
        (TOPICS.logins, {"day": 4.5}),
    )
    # Seen live at the login: the dues before it are on time (seen weeks later they expire).
    result = run(recs, store, ctx, t0 + 4.5 * DAY)
    grouped = by_topic(result)
    types = {t: [r["type"] for r in out] for t, out in grouped.items()
             if t not in (TOPICS.scores, TOPICS.outcomes)}
    assert types == {
        TOPICS.profile_updates: ["profile_update"],
        TOPICS.notifications: ["notification"] * 3,
        TOPICS.tasks: ["task"] * 3,
        TOPICS.coupons: ["coupon"],
    }
    assert [r["payload"]["template"] for r in grouped[TOPICS.notifications]] == [
        "vip_welcome", "ticket_acknowledgement", "winback_care",
    ]
    assert [(r["rule_id"], r["payload"]["assignee"], r["created_at"])
            for r in grouped[TOPICS.tasks]] == [
        ("ticket_sla_breach", "support-escalations", rfc3339(t0 + 4 * DAY)),
        ("health_winback", "am-1", rfc3339(t0 + 4 * DAY + 1)),
        ("health_winback", "retention-supervisors", rfc3339(t0 + 4 * DAY + 1)),
    ]
    assert all(o.key == b"c1" for o in result.outputs)
    assert metrics.actions == {
        ("vip_upgrade", "profile_update"): 1,
        ("vip_upgrade", "notification"): 1,
        ("ticket_opened_ack", "notification"): 1,
        ("ticket_sla_breach", "task"): 1,
        ("health_winback", "notification"): 1,
        ("health_winback", "task"): 2,
        ("health_winback", "coupon"): 1,
    }


def test_a_customers_latest_score_of_a_batch_is_published(records, store, ctx, now, metrics,
                                                          t0):
    """Four changes in one batch (the purchase, the win-back's crossing, the inactivity due,
    the login): one record, the latest, which is the state's score after the batch."""
    recs = records((TOPICS.purchases, {"day": 0}), (TOPICS.logins, {"day": 30}))
    result = run(recs, store, ctx, now)
    scores = by_topic(result)[TOPICS.scores]
    assert [(s["at"], s["score"], s["caused_by"]) for s in scores] == [
        (rfc3339(t0 + 30 * DAY), 55.92, ["e-0002"]),
    ]
    assert metrics.score_changes == 4  # all of them counted


def test_each_batch_publishes_its_own_latest_score(records, store, ctx, now, t0):
    first = run(records((TOPICS.purchases, {"day": 0})), store, ctx, now)
    second = run(records((TOPICS.logins, {"day": 30})), store, ctx, now)
    assert [s["score"] for s in by_topic(first)[TOPICS.scores]] == [64.0]
    assert [s["score"] for s in by_topic(second)[TOPICS.scores]] == [55.92]


def test_action_topics_follow_prefixed_topic_names(engine, metrics, raw_factory, now):
    topics = TOPICS.with_prefix("t1.")
    ctx = BatchContext.create(engine, topics, metrics, 24)
    value = raw_factory("ticket", status="opened")
    result = process_partition([Record(topics.events, 0, 0, b"c1", value)],
                               Store().load, ctx, now=now)
    assert sorted(o.topic for o in result.outputs) == [
        "t1.actions.notifications", "t1.outcomes", "t1.outcomes", "t1.scores",
    ]  # outcomes: the ticket opened, the acknowledgement sent
    assert metrics.events_in == {"t1.events": 1}


def test_score_records_and_counters(records, store, ctx, now, metrics):
    recs = records(
        (TOPICS.purchases, {"day": 0, "amount": "50"}),
        (TOPICS.profiles, {"day": 0, "tags": ["a"]}),   # no score change
        (TOPICS.logins, {"day": 0}),
    )
    result = run(recs, store, ctx, now)
    scores = by_topic(result)[TOPICS.scores]
    assert [s["score"] for s in scores] == [67.0]  # the latest of the batch (64 was first)
    assert [s["segment"] for s in scores] == ["new"]
    assert metrics.score_changes == 2
    assert metrics.events_in == {TOPICS.purchases: 1, TOPICS.profiles: 1, TOPICS.logins: 1}
    assert metrics.applied_by_type() == {"purchase": 1, "profile": 1, "login": 1}
    assert metrics.duplicates == 0
    assert metrics.dead_letters == {}
    snapshot = metrics.snapshot()
    assert snapshot["score_changes"] == 2
    assert snapshot["events_applied"] == {"purchase": 1, "profile": 1, "login": 1}


def test_outputs_keep_the_order_of_the_records(records, store, ctx, now):
    recs = records(
        (TOPICS.tickets, {"day": 0, "ticket_id": "A", "status": "opened"}),
        (TOPICS.tickets, b"garbage"),
        (TOPICS.tickets, {"day": 0.5, "ticket_id": "A", "status": "closed"}),
    )
    result = run(recs, store, ctx, now)
    kinds = [(o.topic, orjson.loads(o.value).get("rule_id")) for o in result.outputs
             if o.topic not in (TOPICS.scores, TOPICS.outcomes)]
    # The DLQ record is emitted during validation, before any state is touched.
    assert kinds == [
        (TOPICS.dlq, None),
        (TOPICS.notifications, "ticket_opened_ack"),
        (TOPICS.notifications, "ticket_closed_survey"),
    ]


# --- a record the core fails on ------------------------------------------------------------

def test_a_record_the_core_fails_on_is_dead_lettered_and_the_partition_goes_on(
    records, store, ctx, now, metrics, monkeypatch
):
    real = batch_module.apply_event

    def failing(state, event, engine, **kwargs):
        if event.event_id == "poison":
            raise ValueError("year 10000 is out of range")
        return real(state, event, engine, **kwargs)

    monkeypatch.setattr(batch_module, "apply_event", failing)
    recs = records(
        (TOPICS.purchases, {"day": 80, "amount": "100", "event_id": "before"}),
        (TOPICS.purchases, {"day": 81, "amount": "200", "event_id": "poison"}),
        (TOPICS.purchases, {"day": 82, "amount": "300", "event_id": "after"}),
    )
    result = run(recs, store, ctx, now)
    [dead] = [orjson.loads(o.value) for o in result.outputs if o.topic == TOPICS.dlq]
    assert dead["kind"] == "processing_error"
    assert dead["reason"] == "ValueError: year 10000 is out of range"
    assert dead["source"]["offset"] == 1
    state = CustomerState.from_bytes(store.data[b"c1"])
    # The events around it are applied once, the failed one not at all.
    assert state.order_count == 2
    assert state.lifetime_spend == 400
    assert state.seen == ["before", "after"]
    assert metrics.applied_by_type() == {"purchase": 2}
    assert metrics.dead_letters == {"processing_error": 1}
    # The retry after the failure counted nothing twice.
    assert sum(metrics.actions.values()) == sum(
        1 for o in result.outputs if o.topic not in (TOPICS.dlq, TOPICS.scores, TOPICS.outcomes))


def test_a_record_the_validator_fails_on_is_dead_lettered_and_the_partition_goes_on(
    records, store, ctx, now, metrics, monkeypatch
):
    """A bug in validation (an exception other than pydantic's ValidationError) must not
    fail the batch: the record is dead-lettered and its neighbours apply."""
    from churnguard.core import validation

    real = validation._ADAPTERS["purchase"]

    class Failing:
        def validate_json(self, raw):
            if b"poison" in raw:
                raise ValueError("unexpected tuple")
            return real.validate_json(raw)

    monkeypatch.setitem(validation._ADAPTERS, "purchase", Failing())
    recs = records(
        (TOPICS.purchases, {"day": 80, "amount": "100", "event_id": "before"}),
        (TOPICS.purchases, {"day": 81, "amount": "200", "event_id": "poison"}),
        (TOPICS.purchases, {"day": 82, "amount": "300", "event_id": "after"}),
    )
    result = run(recs, store, ctx, now)
    [dead] = [orjson.loads(o.value) for o in result.outputs if o.topic == TOPICS.dlq]
    assert dead["kind"] == "invalid_event"
    assert "ValueError: unexpected tuple" in dead["reason"]
    assert dead["source"]["offset"] == 1
    assert CustomerState.from_bytes(store.data[b"c1"]).seen == ["before", "after"]
    assert metrics.dead_letters == {"invalid_event": 1}


# --- erasure -------------------------------------------------------------------------------

def test_an_erasure_deletes_the_state_its_timers_and_its_census_place(
    records, store, ctx, now, t0,
):
    first = run(records((TOPICS.purchases, {"amount": "60", "day": 1}),
                        (TOPICS.tickets, {"day": 2, "status": "opened", "priority": "high"})),
                store, ctx, now)
    state = CustomerState.from_bytes(first.writes[b"c1"])
    assert state.next_due is not None  # the ticket's SLA timer
    due_entry = due_index.due_key(state.next_due, b"c1")
    assert due_entry in store.data
    erasure = orjson.dumps({"type": "erasure", "event_id": "erasure-1", "customer_id": "c1",
                            "occurred_at": rfc3339(t0 + 3 * DAY)})
    forgotten = run(records((TOPICS.events, erasure), start=5), store, ctx, now)
    assert forgotten.writes[b"c1"] is None
    assert forgotten.writes[due_entry] is None
    assert forgotten.census[b"c1"][1] is None
    assert forgotten.new_customers == -1
    assert [o.topic for o in forgotten.outputs] == []  # no score, no action of the erased
    assert ctx.metrics.applied_by_type()["erasure"] == 1
    # A later event of the id starts a fresh customer.
    again = run(records((TOPICS.purchases, {"amount": "30", "day": 4}), start=9), store,
                ctx, now)
    fresh = CustomerState.from_bytes(again.writes[b"c1"])
    assert (fresh.order_count, fresh.open_tickets, again.new_customers) == (1, {}, 1)


def test_an_erasure_in_the_same_batch_forgets_what_came_before_it(records, store, ctx, now,
                                                                   t0):
    erasure = orjson.dumps({"type": "erasure", "event_id": "erasure-1", "customer_id": "c1",
                            "occurred_at": rfc3339(t0 + 3 * DAY)})
    result = run(records((TOPICS.events, orjson.dumps({
        "type": "purchase", "event_id": "p1", "customer_id": "c1", "occurred_at":
        rfc3339(t0 + DAY), "order_id": "o1", "amount": "60", "currency": "EUR"})),
        (TOPICS.events, erasure)), store, ctx, now)
    assert result.writes == {b"c1": None}
    assert result.new_customers == 0
    assert b"c1" not in result.census  # never counted: nothing to take back
    assert TOPICS.scores not in {o.topic for o in result.outputs}
