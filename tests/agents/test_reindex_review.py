"""The re-index and the pack switch, reviewed as an SRE: a switch racing a tick and a batch
of the same partition, a batch retried across a switch, a second publish while a re-index
is half done, a rebalance mid re-index, customers created meanwhile, states without a due,
the cursor's key, restarts without a cursor, and what the tick does with the entries a
re-index moves (into the past, or for a rule the customers never had)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from agents.fire_timers import FireTimers
from agents.reindex import Reindex
from churnguard import due_index
from churnguard.core.clock import DAY, HOUR
from churnguard.core.pack import build_pack
from churnguard.core.state import CustomerState
from churnguard.core.validation import Rejected, parse_event
from churnguard.engine import build_engine
from tests.agents.support import RETAINED, T0, TOPICS, actions, batch_of
from tests.unit.packs import default_data


def _pack(version: int, *, sla_urgent: float | None = None, inactivity: float | None = None,
          template: str | None = None, extra_rules: list[dict[str, Any]] | None = None,
          guards: dict[str, Any] | None = None):
    data = default_data()
    data["version"] = version
    if sla_urgent is not None:
        data["ticket_sla_hours"]["urgent"] = sla_urgent
    for rule in data["rules"]:
        if inactivity is not None and rule["id"] == "inactive_30d_followup":
            rule["trigger"]["days"] = inactivity
        if template is not None and rule["id"] == "ticket_opened_ack":
            rule["actions"][0]["template"] = template
    data["rules"] += extra_rules or []
    if guards is not None:
        data["guards"] = guards
    return build_pack(data)


def _outputs(fake) -> list[Any]:
    return [o for call in fake.writes for o in call.outputs]


def _dues(fake, partition: int = 0) -> dict[str, float]:
    found = {}
    for key in fake.index(partition):
        ms = int.from_bytes(key[len(due_index.PREFIX):len(due_index.PREFIX) + 8], "big")
        found[due_index.customer_of(key).decode()] = ms / 1000
    return found


def _cursor(fake, partition: int = 0) -> dict[str, Any]:
    return orjson.loads(fake.data[partition][due_index.REINDEX_CURSOR])


@pytest.fixture
def tickets(score_events, rec):
    """Urgent tickets opened at T0 by `customers` on partition 0 (SLA due at T0 + 4 h)."""
    async def make(customers: list[str], at: float = T0) -> None:
        records = [rec(TOPICS.tickets, 0, int(at * 1000), customer=c, event_id=f"{c}-t{at}",
                       ticket_id=f"T-{c}-{at}", priority="urgent", at=at) for c in customers]
        await score_events(batch_of(*records))

    return make


# --- the switch, a tick and a batch of the same partition -------------------------------------

async def test_a_switch_while_a_tick_is_writing_leaves_each_partition_batch_on_one_pack(
    tickets, score_events, ctx, writer, fake, locks, clock, settings, rec
):
    customers = [f"c{n}" for n in range(5)]
    await tickets(customers)
    timers = FireTimers(ctx, writer, locks, clock, limit=100)
    clock.advance_to(T0 + 5 * HOUR)
    fake.writes.clear()
    gate = fake.hold(0)
    tick = asyncio.create_task(timers.tick([0]))
    await gate.entered.wait()
    # The feed switches while the tick's write is in flight.
    ctx.engine = build_engine(settings, _pack(1, template="ticket_ack_v2", sla_urgent=1))
    more = [rec(TOPICS.tickets, 0, int((T0 + 5 * HOUR) * 1000), customer=c, event_id=f"{c}-2",
                ticket_id=f"U-{c}", priority="urgent", at=T0 + 5 * HOUR) for c in customers]
    batch = asyncio.create_task(score_events(batch_of(*more)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not batch.done()  # waits for the partition's lock
    gate.release.set()
    await tick
    await batch
    [tick_write, batch_write] = fake.writes
    assert {a["pack_version"] for a in actions(tick_write.outputs)} == {0}
    assert {a["rule_id"] for a in actions(tick_write.outputs)} == {"ticket_sla_breach"}
    assert {a["pack_version"] for a in actions(batch_write.outputs)} == {1}
    assert {a["payload"]["template"] for a in actions(batch_write.outputs)
            if a["rule_id"] == "ticket_opened_ack"} == {"ticket_ack_v2"}


async def test_a_batch_retried_across_a_switch_sends_one_packs_actions(
    score_events, ctx, fake, settings, rec
):
    records = [rec(TOPICS.tickets, 0, int(T0 * 1000), customer="c1", event_id="e-1",
                   ticket_id="T1", priority="urgent")]
    fake.fail_next[0] = RuntimeError("the changelog write timed out")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(*records))
    ctx.engine = build_engine(settings, _pack(1, template="ticket_ack_v2"))
    await score_events(batch_of(*records))  # the batch path reads it again
    sent = [a for a in actions(_outputs(fake)) if a["rule_id"] == "ticket_opened_ack"]
    assert len(sent) == 2  # at-least-once: the same action again, under the first pack
    by_id: dict[str, set[tuple[int, str]]] = {}
    for action in sent:
        by_id.setdefault(action["action_id"], set()).add(
            (action["pack_version"], action["payload"]["template"]))
    assert all(len(variants) == 1 for variants in by_id.values()), by_id


# --- re-index: publishes, rebalances, new customers -------------------------------------------

async def test_a_second_publish_while_a_reindex_is_half_done_restarts_for_the_newest(
    tickets, ctx, writer, fake, locks, settings
):
    customers = [f"c{n:03d}" for n in range(25)]
    await tickets(customers)
    reindex = Reindex(ctx, writer, locks, chunk=10)
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=2))
    assert await reindex.step([0]) == 10
    assert _cursor(fake) == {"pack": ctx.engine.pack.fingerprint, "version": 1,
                             "after": b"c009".hex(), "done": False}
    ctx.engine = build_engine(settings, _pack(2, sla_urgent=8))
    assert [await reindex.step([0]) for _ in range(3)] == [10, 10, 5]
    assert set(_dues(fake).values()) == {T0 + 8 * HOUR}
    assert _cursor(fake) == {"pack": ctx.engine.pack.fingerprint, "version": 2,
                             "after": b"c024".hex(), "done": True}
    assert await reindex.step([0]) == 0


async def test_a_switch_while_a_chunk_waits_for_the_lock_is_caught_up(
    tickets, ctx, writer, fake, locks, settings
):
    """The version is read before the partition's lock: a chunk may be computed under the
    newer pack and labelled with the older; the next step must still finish the newer."""
    customers = [f"c{n:03d}" for n in range(12)]
    await tickets(customers)
    reindex = Reindex(ctx, writer, locks, chunk=100)
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=2))
    await locks[0].acquire()
    step = asyncio.create_task(reindex.step([0]))
    await asyncio.sleep(0)
    ctx.engine = build_engine(settings, _pack(2, sla_urgent=6))
    locks[0].release()
    await step
    while await reindex.step([0]):
        pass
    assert set(_dues(fake).values()) == {T0 + 6 * HOUR}
    assert _cursor(fake)["version"] == 2
    assert _cursor(fake)["done"]
    for customer in customers:
        assert fake.state(0, customer).next_due == T0 + 6 * HOUR


async def test_a_rebalance_mid_reindex_resumes_on_the_new_owner_and_back(
    tickets, ctx, writer, fake, locks, settings
):
    customers = [f"c{n:03d}" for n in range(30)]
    await tickets(customers)
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=2))
    first = Reindex(ctx, writer, locks, chunk=10)
    assert await first.step([0]) == 10
    # Partition 0 moves to another worker: same table (restored from the changelog).
    second = Reindex(ctx, writer, locks, chunk=10)
    scans = len(fake.scans)
    assert [await second.step([0]) for _ in range(3)] == [10, 10, 0]
    assert fake.scans[scans][1] == b"c009\x00"
    assert _cursor(fake)["done"]
    # It comes back to the first worker, which still remembers nothing done for it.
    assert await first.step([0]) == 0
    assert set(_dues(fake).values()) == {T0 + 2 * HOUR}


async def test_customers_created_during_the_reindex_and_states_without_a_due(
    tickets, score_events, ctx, writer, fake, locks, settings, rec
):
    customers = [f"c{n:03d}" for n in range(20)]
    await tickets(customers)
    # A customer with no timer under the old pack (a profile without dates): only its data
    # retention is due.
    await score_events(batch_of(rec(TOPICS.profiles, 0, int(T0 * 1000), customer="b-none",
                                    event_id="x", tags=["x"])))
    assert fake.state(0, "b-none").next_due == T0 + RETAINED
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=2, extra_rules=[{
        "id": "after_custom", "trigger": {"on": "after", "anchor": "first_purchase",
                                          "days": 1},
        "actions": [{"type": "notification", "template": "t"}]}]))
    reindex = Reindex(ctx, writer, locks, chunk=10)
    assert await reindex.step([0]) == 10
    # New customers on both sides of the cursor, under the new pack.
    await tickets(["a-new", "z-new"], at=T0 + HOUR)
    while await reindex.step([0]):
        pass
    dues = _dues(fake)
    assert dues["a-new"] == dues["z-new"] == T0 + 3 * HOUR
    assert all(dues[c] == T0 + 2 * HOUR for c in customers)
    assert dues["b-none"] == T0 + RETAINED
    assert fake.state(0, "b-none").next_due == T0 + RETAINED


async def test_a_restart_on_a_published_version_without_a_cursor_reindexes(
    tickets, ctx, writer, fake, locks, settings
):
    """Indexed under the shipped pack, restarted directly on version 1 (published while it
    was down): no cursor, so the partition is re-indexed — the 0-version skip is only for
    the shipped pack."""
    customers = [f"c{n:03d}" for n in range(7)]
    await tickets(customers)
    assert due_index.REINDEX_CURSOR not in fake.data[0]
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=1))
    restarted = Reindex(ctx, writer, locks)
    assert await restarted.step([0]) == 7
    assert set(_dues(fake).values()) == {T0 + HOUR}
    # Back on the shipped pack (a cursor of another pack): its dues again.
    ctx.engine = build_engine(settings)
    assert await Reindex(ctx, writer, locks).step([0]) == 7
    assert set(_dues(fake).values()) == {T0 + 4 * HOUR}


async def test_a_rules_file_edited_under_the_same_version_is_a_new_pack(
    tickets, ctx, writer, fake, locks, settings
):
    """A worker restarted on an edited rules file that kept its version: the fingerprint
    differs, so the partition is re-indexed and the due moves (not left to expire)."""
    customers = [f"c{n:03d}" for n in range(3)]
    await tickets(customers)
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=2))
    while await Reindex(ctx, writer, locks).step([0]):
        pass
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=1))
    assert await Reindex(ctx, writer, locks).step([0]) == 3
    assert set(_dues(fake).values()) == {T0 + HOUR}


async def test_the_cursor_and_index_keys_never_meet_customer_keys(
    tickets, ctx, writer, fake, locks, settings
):
    for customer in ("\x00reindex\x00", "\x00due\x00x", "\x01"):
        raw = orjson.dumps({"type": "login", "event_id": "e", "customer_id": customer,
                            "occurred_at": "2024-03-01T12:00:00Z"})
        assert isinstance(parse_event(raw, "", now=T0, max_future_hours=24), Rejected)
    # The smallest and largest customer keys a producer can send.
    customers = ["!", "~", "\x7f", "zz\U0010ffff"]
    await tickets(customers)
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=3))
    reindex = Reindex(ctx, writer, locks, chunk=2)
    while await reindex.step([0]):
        pass
    assert _dues(fake) == dict.fromkeys(customers, T0 + 3 * HOUR)
    keys = {k for k in fake.data[0] if not k.startswith(b"\x00")}
    assert keys == {c.encode() for c in customers}
    for key in keys:
        CustomerState.from_bytes(fake.data[0][key])


# --- what the tick does with moved entries ----------------------------------------------------

async def test_a_due_the_new_version_puts_past_its_grace_expires_then_the_next_one_fires(
    score_events, ctx, writer, fake, locks, clock, settings, rec, metrics
):
    """docs/rules.md (Customers in flight): inactivity 30 → 2 days for customers silent for
    5: the re-index puts the occurrence 3 days in the past, the tick records it as expired
    (no burst); after their next activity and 2 days of silence they get it."""
    customers = [f"c{n}" for n in range(4)]
    await score_events(batch_of(*[rec(TOPICS.logins, 0, int(T0 * 1000), customer=c,
                                      event_id=f"{c}-l") for c in customers]))
    clock.advance_to(T0 + 5 * DAY)
    ctx.engine = build_engine(settings, _pack(1, inactivity=2))
    reindex = Reindex(ctx, writer, locks)
    while await reindex.step([0]):
        pass
    timers = FireTimers(ctx, writer, locks, clock, limit=100)
    await timers.tick([0])
    assert [a for a in actions(_outputs(fake)) if a["rule_id"] == "inactive_30d_followup"] == []
    assert metrics.timers_expired == len(customers)
    await score_events(batch_of(*[rec(TOPICS.logins, 0, int((T0 + 5 * DAY) * 1000),
                                      customer=c, event_id=f"{c}-l2", at=T0 + 5 * DAY)
                                  for c in customers]))
    clock.advance_to(T0 + 7 * DAY + 60)
    await timers.tick([0])
    follow_ups = [a for a in actions(_outputs(fake)) if a["rule_id"] == "inactive_30d_followup"]
    assert sorted(a["customer_id"] for a in follow_ups) == customers
    assert {(a["pack_version"], a["created_at"]) for a in follow_ups} == {
        (1, "2024-03-08T12:00:00Z")}


async def test_a_new_anniversary_rule_does_not_walk_every_year_since_year_one(
    score_events, ctx, writer, fake, locks, clock, settings, rec, metrics
):
    customers = [f"c{n}" for n in range(20)]
    await score_events(batch_of(*[rec(TOPICS.profiles, 0, int(T0 * 1000), customer=c,
                                      event_id=f"{c}-p", birthday="1990-05-05")
                                  for c in customers]))
    ctx.engine = build_engine(settings, _pack(1, extra_rules=[{
        "id": "birthday_vip", "trigger": {"on": "anniversary", "date": "birthday"},
        "actions": [{"type": "coupon", "value": 20, "kind": "percent"}]}]))
    reindex = Reindex(ctx, writer, locks)
    while await reindex.step([0]):
        pass
    clock.advance_to(T0 + 60)
    started = time.perf_counter()
    await FireTimers(ctx, writer, locks, clock, limit=100).tick([0])
    seconds = time.perf_counter() - started
    assert metrics.timers_expired <= len(customers), (metrics.timers_expired, seconds)
    dues = _dues(fake)
    assert min(dues.values()) > T0, "entries still at the epoch"


async def test_an_unknown_time_zone_in_one_state_does_not_stall_the_partitions_timers(
    score_events, ctx, writer, fake, locks, clock, settings, rec
):
    ctx.engine = build_engine(settings, _pack(0, guards={
        "quiet_hours": {"start": "21:00", "end": "09:00"}}))
    await score_events(batch_of(*[rec(TOPICS.purchases, 0, int(T0 * 1000), customer=c,
                                      event_id=f"{c}-o") for c in ("a-bad", "b-good")]))
    state = fake.state(0, "a-bad")
    state.timezone = "Mars/Base"  # an older state, or another worker's tzdata
    fake.data[0][b"a-bad"] = state.to_bytes()
    clock.advance_to(T0 + 7 * DAY + 60)  # onboarding tips (a notification) due at 7 days
    fake.writes.clear()
    await FireTimers(ctx, writer, locks, clock, limit=100).tick([0])
    tips = [a for a in actions(_outputs(fake)) if a["rule_id"] == "onboarding_tips"]
    assert {a["customer_id"] for a in tips} >= {"b-good"}
