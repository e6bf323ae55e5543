"""Output records over BatchContext.max_record_bytes are dead-lettered (`output_too_large`),
never sent, and the customer's state stays the one before (issue 16)."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from churnguard import due_index
from churnguard.batch import RECORD_OVERHEAD, BatchContext, process_due, process_partition
from churnguard.core.clock import DAY, HOUR
from churnguard.core.state import CustomerState
from churnguard.metrics import Metrics
from tests.unit.raw_records import TOPICS, Record

LONG = "t-" + "x" * 198  # the longest ticket id




class Store(dict):
    def load(self, keys):
        return [self.get(k) for k in keys]


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def records(raw_factory):
    def make(*specs):
        return [Record(TOPICS.events, 0, offset, spec.get("customer_id", "c1").encode(),
                       raw_factory(type_, **spec))
                for offset, (type_, spec) in enumerate(specs)]

    return make


def sizes(result):
    return [len(o.value) + len(o.key or b"") + RECORD_OVERHEAD for o in result.outputs]


def test_the_default_limit_is_a_megabyte(engine, metrics):
    assert BatchContext.create(engine, TOPICS, metrics, 24).max_record_bytes == 1_000_000


@pytest.fixture
def echo_engine(engine):
    """The default pack plus a rule that copies a custom event's note into a notification."""
    from dataclasses import replace

    from tests.unit.packs import make_pack

    return replace(engine, pack=make_pack(extra_rules=[{
        "id": "echo_note", "trigger": {"on": "custom", "name": "receipt"},
        "actions": [{"type": "notification", "template": "receipt",
                     "variables": {name: f"$event.properties.{name}" for name in "abcd"}}],
    }]))


def test_an_event_whose_action_is_too_large_is_dead_lettered_and_not_applied(
    echo_engine, metrics, records, t0
):
    ctx = BatchContext.create(echo_engine, TOPICS, metrics, 24, max_record_bytes=3_000)
    store = Store()
    big = dict.fromkeys("abcd", "n" * 900)  # ~3.6 KB in the notification
    recs = records(
        ("purchase", {"amount": "10", "hours": 0, "order_id": "o1"}),
        ("custom", {"name": "receipt", "hours": 1, "properties": big}),
        ("custom", {"name": "receipt", "hours": 2, "properties": {"a": "short"}}),
        ("purchase", {"amount": "40", "hours": 2, "order_id": "o4", "customer_id": "c2"}),
    )
    result = process_partition(recs, store.load, ctx, now=t0 + DAY)
    store.update(result.writes)
    [dead] = [orjson.loads(o.value) for o in result.outputs if o.topic == TOPICS.dlq]
    assert dead["kind"] == "output_too_large"
    assert dead["source"] == {"topic": TOPICS.events, "partition": 0, "offset": 1}
    assert "over max_record_bytes 3,000" in dead["reason"]
    assert TOPICS.notifications in dead["reason"]
    assert dead["value_sha256"] == hashlib.sha256(recs[1].value).hexdigest()
    # Nothing of it was sent or applied; the events around it were.
    assert all(size <= 3_000 for size in sizes(result))
    receipts = [orjson.loads(o.value) for o in result.outputs if o.topic == TOPICS.notifications
                and orjson.loads(o.value)["rule_id"] == "echo_note"]
    assert [r["payload"]["variables"] for r in receipts] == [
        {"a": "short", "b": None, "c": None, "d": None}]
    state = CustomerState.from_bytes(store[b"c1"])
    assert len(state.seen) == 2  # the purchase and the short receipt
    assert metrics.dead_letters == {"output_too_large": 1}
    assert metrics.applied_by_type() == {"purchase": 2, "custom": 1}


# A customer whose state is larger than the records a firing sends: its tags are stored
# (about a kilobyte), never sent.
TAGS = [f"{n:02d}" + "t" * 48 for n in range(20)]


@pytest.fixture
def limit(engine, records, t0):
    """A limit that the SLA breach's state with a short ticket id fits in, and its records
    with a 200-char id, but not its state with that id: the state holds the id twice (the
    open ticket and its SLA mark), the task record once."""
    store = Store()
    ctx = BatchContext.create(engine, TOPICS, Metrics(), 24)
    opened = process_partition(
        records(("profile", {"tags": TAGS}),
                ("ticket", {"ticket_id": "t-1", "status": "opened", "priority": "urgent"})),
        store.load, ctx, now=t0 + HOUR)
    store.update(opened.writes)
    [entry] = [k for k in store if k.startswith(due_index.PREFIX)]
    probe = process_due([entry], store.load, ctx, until=t0 + 5 * HOUR, noticed_at=t0 + 5 * HOUR)
    breached = CustomerState.from_bytes(probe.writes[b"c1"])
    assert "t-1" in breached.open_tickets
    assert "ticket_sla_breach:t-1" in breached.marks
    return max([*sizes(probe), len(probe.writes[b"c1"])]) + len(LONG) + 50


def test_an_event_whose_state_would_be_too_large_is_dead_lettered(
    engine, metrics, records, t0
):
    ctx = BatchContext.create(engine, TOPICS, metrics, 24, max_record_bytes=3_000)
    store = Store()
    tags = [f"{n:02d}" + "t" * 98 for n in range(50)]  # 5 KB of tags
    recs = records(
        ("login", {"hours": 0}),
        ("profile", {"tags": tags, "hours": 1}),
        ("login", {"hours": 2}),
    )
    result = process_partition(recs, store.load, ctx, now=t0 + DAY)
    store.update(result.writes)
    [dead] = [orjson.loads(o.value) for o in result.outputs if o.topic == TOPICS.dlq]
    assert dead["kind"] == "output_too_large"
    assert "state" in dead["reason"]
    assert dead["source"]["offset"] == 1
    state = CustomerState.from_bytes(store[b"c1"])
    assert state.tags == []
    assert sum(state.login_days.values()) == 2
    assert len(store[b"c1"]) < 3_000
    assert metrics.dead_letters == {"output_too_large": 1}


def test_a_timer_firing_whose_state_is_too_large_is_dead_lettered_and_does_not_spin(
    engine, metrics, records, t0, limit
):
    # Opened with the default limit (its ack fits), breaching its SLA with a small one.
    store = Store()
    opened = process_partition(
        records(("profile", {"tags": TAGS}),
                ("ticket", {"ticket_id": LONG, "status": "opened", "priority": "urgent"})),
        store.load, BatchContext.create(engine, TOPICS, Metrics(), 24), now=t0 + HOUR)
    store.update(opened.writes)
    before = store[b"c1"]
    [entry] = [k for k in store if k.startswith(due_index.PREFIX)]
    ctx = BatchContext.create(engine, TOPICS, metrics, 24, max_record_bytes=limit)
    result = process_due([entry], store.load, ctx, until=t0 + 5 * HOUR, noticed_at=t0 + 5 * HOUR)
    [dead] = [orjson.loads(o.value) for o in result.outputs]
    assert dead["kind"] == "output_too_large"
    assert dead["source"] == {"topic": None, "partition": None, "offset": None}
    assert base64.b64decode(dead["key_b64"]) == b"c1"
    assert dead["value_b64"] is None
    assert dead["reason"].startswith("timer due at ")
    assert "state" in dead["reason"]
    assert result.outputs[0].topic == TOPICS.dlq
    # The state is not written; its entry is dropped, so the next tick reads nothing.
    assert result.writes == {entry: None}
    store.update(result.writes)
    assert store[b"c1"] == before
    assert not [k for k in store if k.startswith(due_index.PREFIX) and store[k] is not None]
    assert metrics.dead_letters == {"output_too_large": 1}
    assert metrics.actions == {}


def test_dead_letters_shrink_to_fit_a_small_limit(engine, metrics, t0):
    ctx = BatchContext.create(engine, TOPICS, metrics, 24, max_record_bytes=20_000)
    bad = orjson.dumps({"event_id": "e", "notes": ["x"] * 12_000})
    result = process_partition([Record(TOPICS.events, 0, 0, b"c1", bad)], Store().load, ctx,
                               now=t0)
    [dead] = result.outputs
    assert len(dead.value) < 20_000
    assert orjson.loads(dead.value)["value_truncated"] is True


def test_a_timer_firing_whose_action_is_too_large_is_dead_lettered(engine, metrics, records, t0):
    from dataclasses import replace

    from tests.unit.packs import make_pack

    big = replace(engine, pack=make_pack(extra_rules=[{
        "id": "big_after", "trigger": {"on": "after", "anchor": "first_purchase", "days": 1},
        "actions": [{"type": "notification", "template": "t", "variables": {"text": "x" * 3000}}],
    }]))
    store = Store()
    bought = process_partition(records(("purchase", {"amount": "10"})), store.load,
                               BatchContext.create(big, TOPICS, Metrics(), 24), now=t0)
    store.update(bought.writes)
    before = store[b"c1"]
    assert len(before) < 2_000
    [entry] = [k for k in store if k.startswith(due_index.PREFIX)]
    ctx = BatchContext.create(big, TOPICS, metrics, 24, max_record_bytes=2_500)
    result = process_due([entry], store.load, ctx, until=t0 + 2 * DAY, noticed_at=t0 + 2 * DAY)
    [dead] = [orjson.loads(o.value) for o in result.outputs]
    assert dead["kind"] == "output_too_large"
    assert TOPICS.notifications in dead["reason"]
    assert "over max_record_bytes 2,500" in dead["reason"]
    assert result.writes == {entry: None}
    assert metrics.actions == {}
    assert metrics.dead_letters == {"output_too_large": 1}


def test_a_processing_error_never_quotes_personal_values(engine, metrics, records, t0,
                                                          monkeypatch):
    from churnguard import batch as batch_module

    real = batch_module.apply_event

    def failing(state, event, engine_, **kwargs):
        if event.type == "profile":
            raise ValueError(f"cannot reach {event.email} or {event.phone}")
        return real(state, event, engine_, **kwargs)

    monkeypatch.setattr(batch_module, "apply_event", failing)
    ctx = BatchContext.create(engine, TOPICS, metrics, 24)
    recs = records(("profile", {"email": "ada@example.com", "phone": "+44 20 7946 0000"}))
    result = process_partition(recs, Store().load, ctx, now=t0)
    [dead] = [o.value for o in result.outputs if o.topic == TOPICS.dlq]
    assert b"ada@example.com" not in dead
    assert b"7946" not in dead
    assert orjson.loads(dead)["reason"] == "ValueError: cannot reach [redacted] or [redacted]"


def test_dead_letters_fit_the_smallest_allowed_limit(engine, metrics, t0):
    from streams.settings import Settings

    smallest = Settings.model_fields["max_record_bytes"].metadata[0].ge
    ctx = BatchContext.create(engine, TOPICS, metrics, 24, max_record_bytes=smallest)
    key = "é".encode() * 3000
    value = orjson.dumps({"customer_id": "ü" * 400_000})
    result = process_partition([Record(TOPICS.events, 0, 0, key, value)], Store().load, ctx,
                               now=t0)
    [dead] = result.outputs
    assert ctx.fits(dead.key, dead.value)
