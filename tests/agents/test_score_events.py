"""ScoreEvents, the batch handler: per-partition grouping, the cross-topic merge, routing of
outputs to their topics and source partition, dead letters, redelivery and metrics."""

from __future__ import annotations

import hashlib
from unittest.mock import call

import orjson
import pytest

from churnguard import due_index
from churnguard.core.clock import HOUR, rfc3339
from tests.agents.support import T0, TOPICS, actions, batch_of


async def test_one_write_per_partition_with_its_states_and_co_partitioned_outputs(
    score_events, fake, writer, rec, metrics
):
    batch = batch_of(
        rec(TOPICS.purchases, 0, 1000, customer="c1", event_id="e-1", amount="10000"),
        rec(TOPICS.tickets, 0, 2000, customer="c2", event_id="e-2", ticket_id="T-9"),
        rec(TOPICS.purchases, 1, 1000, customer="c3", event_id="e-3"),
        rec(TOPICS.logins, 1, 1500, customer="c3", event_id="e-4"),
    )
    await score_events(batch)

    assert sorted(w.partition for w in fake.writes) == [0, 1]
    # States are read from the record's own partition, one multi-get per partition.
    assert sorted(writer.get_many.call_args_list) == [
        call(0, [b"c1", b"c2", due_index.CENSUS]), call(1, [b"c3", due_index.CENSUS]),
    ]
    [p0] = fake.writes_to(0)
    [p1] = fake.writes_to(1)

    c1, c2, c3 = fake.state(0, "c1"), fake.state(0, "c2"), fake.state(1, "c3")
    assert (c1.order_count, c1.tier, c1.offsets) == (1, "vip", {TOPICS.purchases: 0})
    assert list(c2.open_tickets) == ["T-9"]
    assert (c3.order_count, sum(c3.login_days.values())) == (1, 1)
    assert set(p0.items) == {
        b"c1", b"c2",
        due_index.due_key(c1.next_due, b"c1"), due_index.due_key(c2.next_due, b"c2"),
    }
    assert set(p1.items) == {b"c3", due_index.due_key(c3.next_due, b"c3")}
    # The ticket's 72 h SLA (normal priority) is c2's first due.
    assert c2.next_due == T0 + 72 * HOUR

    # Outputs: same partition as their source, keyed by customer, routed by action type
    # (outcome records, the KPIs' input, too: checked apart).
    outcomes = [o for o in [*p0.outputs, *p1.outputs] if o.topic == TOPICS.outcomes]
    assert {(o.key, o.partition) for o in outcomes} == {(b"c1", 0), (b"c2", 0), (b"c3", 1)}
    p0_outputs = [o for o in p0.outputs if o.topic != TOPICS.outcomes]
    p1_outputs = [o for o in p1.outputs if o.topic != TOPICS.outcomes]
    assert [(o.topic, o.key, o.partition) for o in p0_outputs] == [
        (TOPICS.profile_updates, b"c1", 0),
        (TOPICS.notifications, b"c1", 0),
        (TOPICS.notifications, b"c2", 0),
        (TOPICS.scores, b"c1", 0),
        (TOPICS.scores, b"c2", 0),
    ]
    values = [orjson.loads(o.value) for o in p0_outputs]
    assert [(v.get("rule_id"), v.get("type")) for v in values] == [
        ("vip_upgrade", "profile_update"),
        ("vip_upgrade", "notification"),
        ("ticket_opened_ack", "notification"),
        (None, None),
        (None, None),
    ]
    assert values[2]["payload"]["variables"]["ticket_id"] == "T-9"
    # Two events of c3 changed its score: the batch publishes the latest.
    assert [(o.topic, o.key, o.partition) for o in p1_outputs] == [(TOPICS.scores, b"c3", 1)]
    assert [orjson.loads(o.value)["caused_by"] for o in p1_outputs] == [["e-4"]]

    assert metrics.batches == 1
    assert metrics.batch_events == 4
    assert metrics.batch_seconds > 0
    assert metrics.events_in == {TOPICS.purchases: 2, TOPICS.tickets: 1, TOPICS.logins: 1}
    assert metrics.applied_by_type() == {"purchase": 2, "ticket": 1, "login": 1}


async def test_metrics_accumulate_over_batches(score_events, rec, metrics):
    await score_events(batch_of(rec(TOPICS.logins, 0, 1, event_id="a")))
    await score_events(batch_of(
        rec(TOPICS.logins, 0, 2, event_id="b"), rec(TOPICS.logins, 3, 2, event_id="c"),
    ))
    assert (metrics.batches, metrics.batch_events) == (2, 3)


async def test_the_clock_is_the_batch_now(score_events, fake, rec, clock):
    """Dead letters are stamped with, and future timestamps judged against, the clock."""
    clock.advance_to(T0 + 100 * HOUR)
    batch = batch_of(
        rec(TOPICS.logins, 0, 1, event_id="ok", at=T0 + 123 * HOUR),       # 23 h ahead
        rec(TOPICS.logins, 0, 2, event_id="ahead", at=T0 + 125 * HOUR),    # 25 h ahead
    )
    await score_events(batch)
    [write] = fake.writes
    [dead] = [o for o in write.outputs if o.topic == TOPICS.dlq]
    letter = orjson.loads(dead.value)
    assert letter["kind"] == "absurd_timestamp"
    assert letter["source"] == {"topic": TOPICS.logins, "partition": 0, "offset": 1}
    assert letter["dead_lettered_at"] == rfc3339(T0 + 100 * HOUR)
    assert fake.state(0, "c1").seen == ["ok"]


# --- ordering --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("open_ts", "close_ts", "expected"),
    [
        (1000, 2000, ["ticket_opened_ack", "ticket_closed_survey"]),
        # Closed first: the late "opened" of a closed ticket does not reopen it (no ack).
        (2000, 1000, ["ticket_closed_survey"]),
    ],
)
async def test_topics_of_a_partition_are_merged_by_record_timestamp(
    score_events, fake, rec, open_ts, close_ts, expected
):
    close = rec(TOPICS.tickets, 2, close_ts, event_id="close", ticket_id="T", status="closed")
    opened = rec(TOPICS.events, 2, open_ts, event_id="open", type_="ticket", ticket_id="T")
    await score_events(batch_of(close, opened))  # the tickets topic comes first in the batch
    [write] = fake.writes
    assert [a["rule_id"] for a in actions(write.outputs)] == expected
    assert all(o.partition == 2 for o in write.outputs)
    state = fake.state(2, "c1")
    assert state.open_tickets == {}
    assert state.closed_tickets == ["T"]
    assert state.offsets == {TOPICS.tickets: 0, TOPICS.events: 0}


async def test_each_topic_keeps_its_offset_order_in_the_merge(score_events, fake, rec, metrics):
    """A topic's records whose timestamps go backwards are still applied in offset order
    (a timestamp sort would apply offset 1 first and then drop offset 0 as redelivered)."""
    first = rec(TOPICS.tickets, 0, 3000, event_id="a", ticket_id="A")   # offset 0
    second = rec(TOPICS.tickets, 0, 1000, event_id="b", ticket_id="B")  # offset 1
    other = rec(TOPICS.events, 0, 2000, event_id="c", type_="ticket", ticket_id="C")
    await score_events(batch_of(first, second, other))
    [write] = fake.writes
    acks = [a["payload"]["variables"]["ticket_id"] for a in actions(write.outputs)]
    assert acks == ["C", "A", "B"]
    assert metrics.duplicates == 0
    state = fake.state(0, "c1")
    assert sorted(state.open_tickets) == ["A", "B", "C"]
    assert state.offsets == {TOPICS.tickets: 1, TOPICS.events: 0}


# --- dead letters ----------------------------------------------------------------------------

async def test_bad_record_is_dead_lettered_in_the_same_write_as_the_good_ones(
    score_events, fake, rec, metrics, clock
):
    bad = b'{"event_id": "x", "customer_id": "c1", "amount": '
    batch = batch_of(
        rec(TOPICS.purchases, 0, 1, event_id="p1", amount="10"),
        rec(TOPICS.purchases, 0, 2, raw=bad),
        rec(TOPICS.purchases, 0, 3, event_id="p2", amount="20", order_id="o-2"),
        # Partition 1 has nothing valid: a write with the dead letter and no table items.
        rec(TOPICS.logins, 1, 1, event_id="l1", customer="c8", key=b"c9"),
    )
    await score_events(batch)  # does not raise

    [p0] = fake.writes_to(0)
    [p1] = fake.writes_to(1)
    [dead] = [o for o in p0.outputs if o.topic == TOPICS.dlq]
    assert p0.outputs[0] is dead  # validation comes before any state is touched
    assert (dead.key, dead.partition) == (b"c1", 0)
    letter = orjson.loads(dead.value)
    assert letter["kind"] == "malformed_json"
    assert letter["source"] == {"topic": TOPICS.purchases, "partition": 0, "offset": 1}
    # Not JSON: not kept (it may hold anything), only described.
    assert letter["value_b64"] is None
    assert letter["value_length"] == len(bad)
    assert letter["value_sha256"] == hashlib.sha256(bad).hexdigest()
    state = fake.state(0, "c1")
    assert (state.order_count, state.spend_e4) == (2, 300_000)
    assert state.offsets == {TOPICS.purchases: 2}
    assert b"c1" in p0.items

    assert p1.items == {}
    [dead1] = p1.outputs
    assert (dead1.topic, dead1.key, dead1.partition) == (TOPICS.dlq, b"c9", 1)
    assert orjson.loads(dead1.value)["kind"] == "key_mismatch"
    assert fake.data[1] == {}

    assert metrics.dead_letters == {"malformed_json": 1, "key_mismatch": 1}
    assert (metrics.batches, metrics.batch_events) == (1, 4)


# --- redelivery ------------------------------------------------------------------------------

async def test_redelivered_batch_produces_nothing_new(score_events, fake, rec, metrics):
    batch = batch_of(
        rec(TOPICS.tickets, 0, 1, event_id="t", ticket_id="T", priority="urgent"),
        rec(TOPICS.purchases, 0, 2, event_id="p", amount="10000"),
    )
    await score_events(batch)
    stored = dict(fake.data[0])
    first = fake.writes[0]
    assert [a["rule_id"] for a in actions(first.outputs)] == [
        "ticket_opened_ack", "vip_upgrade", "vip_upgrade",
    ]
    actions_before = dict(metrics.actions)

    await score_events(batch)  # as after a crash before the offsets were committed
    second = fake.writes[1]
    assert second.outputs == []
    # The state is rewritten unchanged, byte for byte; its due entry does not move.
    assert second.items == {b"c1": stored[b"c1"]}
    assert fake.data[0] == stored
    assert metrics.duplicates == 2
    assert metrics.actions == actions_before


async def test_overlapping_redelivery_applies_only_the_new_records(score_events, fake, rec):
    r0 = rec(TOPICS.logins, 0, 1, event_id="l0")
    r1 = rec(TOPICS.tickets, 0, 2, event_id="t0", ticket_id="A")
    await score_events(batch_of(r0, r1))
    r2 = rec(TOPICS.tickets, 0, 3, event_id="t1", ticket_id="B")
    await score_events(batch_of(r0, r1, r2))
    acks = [a["payload"]["variables"]["ticket_id"] for a in actions(fake.writes[1].outputs)]
    assert acks == ["B"]
    state = fake.state(0, "c1")
    assert state.offsets == {TOPICS.logins: 0, TOPICS.tickets: 1}
    assert sum(state.login_days.values()) == 1


async def test_failed_write_is_redone_with_the_same_action_ids(score_events, fake, rec, metrics):
    """Outputs sent, state not stored (crash in between): the redelivered batch sends the
    same records again (at-least-once, same ids) and then stores the state."""
    batch = batch_of(rec(TOPICS.tickets, 0, 1, event_id="t", ticket_id="T"))
    fake.fail_next[0] = RuntimeError("stored nothing")
    with pytest.raises(RuntimeError, match="stored nothing"):
        await score_events(batch)
    assert fake.data[0] == {}
    assert (metrics.batches, metrics.failed_batches) == (0, 1)

    await score_events(batch)
    failed, redone = fake.writes
    assert redone.outputs == failed.outputs
    assert redone.items == failed.items
    [ack] = actions(redone.outputs)
    assert ack["rule_id"] == "ticket_opened_ack"
    assert fake.state(0, "c1").offsets == {TOPICS.tickets: 0}
    assert metrics.batches == 1

