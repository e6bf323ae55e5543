"""A partition batch whose write failed (its outputs may be out) is read again under the pack
that evaluated it, across a publish: in one retry or several, with the switch reaching the
partition at its first batch past the failed one; a partition that comes back past it runs
the running pack; the retried states' dues are indexed under the running pack; and the
partition's tick is held until the failed batch is written."""

from __future__ import annotations

import math
from typing import Any

import pytest
from faust.types import TP
from structlog.testing import capture_logs

from agents.fire_timers import FireTimers
from agents.reindex import Reindex
from churnguard import due_index
from churnguard.core.clock import HOUR
from churnguard.core.pack import build_pack
from churnguard.engine import build_engine
from tests.agents.support import T0, TOPICS, actions, batch_of
from tests.unit.packs import default_data


def _pack(version: int, *, sla_urgent: float | None = None):
    data = default_data()
    data["version"] = version
    if sla_urgent is not None:
        data["ticket_sla_hours"]["urgent"] = sla_urgent
    for rule in data["rules"]:
        if rule["id"] == "ticket_opened_ack":
            rule["actions"][0]["template"] = f"ticket_ack_v{version}"
    return build_pack(data)


def _sent(fake, rule_id: str) -> list[dict[str, Any]]:
    return [a for call in fake.writes for a in actions(call.outputs) if a["rule_id"] == rule_id]


def _one_variant_per_id(sent: list[dict[str, Any]]) -> dict[str, set[Any]]:
    by_id: dict[str, set[Any]] = {}
    for action in sent:
        by_id.setdefault(action["action_id"], set()).add(
            (action["pack_version"], repr(sorted(action["payload"].items()))))
    assert all(len(variants) == 1 for variants in by_id.values()), by_id
    return by_id


def _ticket(rec, customer: str, at: float = T0, ticket: str | None = None):
    return rec(TOPICS.tickets, 0, int(at * 1000), customer=customer,
               event_id=f"{customer}-{ticket or 't'}", ticket_id=ticket or f"T-{customer}",
               priority="urgent", at=at)


async def test_a_retry_in_several_batches_stays_on_the_first_pack_then_switches(
    score_events, ctx, fake, settings, rec
):
    first, second = _ticket(rec, "c1"), _ticket(rec, "c2")
    fake.fail_next[0] = RuntimeError("the changelog write timed out")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(first, second))
    ctx.engine = build_engine(settings, _pack(1))
    with capture_logs() as logs:
        # Read again in two batches (a smaller fetch), the second with a record beyond.
        await score_events(batch_of(first))
        beyond = _ticket(rec, "c3")
        await score_events(batch_of(second, beyond))
    # Past the failed batch: the running pack.
    await score_events(batch_of(_ticket(rec, "c4")))
    acks = _sent(fake, "ticket_opened_ack")
    _one_variant_per_id(acks)
    shipped = "ticket_acknowledgement"  # the shipped pack's template
    assert [(a["customer_id"], a["pack_version"], a["payload"]["template"]) for a in acks] == [
        ("c1", 0, shipped), ("c2", 0, shipped),  # the failed write
        ("c1", 0, shipped),
        ("c2", 0, shipped), ("c3", 0, shipped),
        ("c4", 1, "ticket_ack_v1"),
    ]
    assert [entry["event"] for entry in logs].count("batch_read_again_under_its_pack") == 1


async def test_a_retry_that_fails_again_keeps_the_first_pack(
    score_events, ctx, fake, settings, rec
):
    records = [_ticket(rec, "c1"), _ticket(rec, "c2")]
    fake.fail_next[0] = RuntimeError("timed out")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(*records))
    ctx.engine = build_engine(settings, _pack(1))
    third = _ticket(rec, "c3")
    fake.fail_next[0] = RuntimeError("timed out again")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(*records, third))
    ctx.engine = build_engine(settings, _pack(2))
    await score_events(batch_of(*records))  # shorter than the last attempt
    await score_events(batch_of(third))
    await score_events(batch_of(_ticket(rec, "c5")))
    acks = _sent(fake, "ticket_opened_ack")
    _one_variant_per_id(acks)
    assert {a["customer_id"]: a["pack_version"] for a in acks} == {
        "c1": 0, "c2": 0, "c3": 0, "c5": 2}


async def test_a_partition_that_comes_back_past_its_failed_batch_runs_the_running_pack(
    score_events, ctx, fake, settings, rec
):
    """The partition went to another worker, which wrote the failed batch and more, then
    came back: its records start past the failed batch, so nothing of it is pinned."""
    fake.fail_next[0] = RuntimeError("timed out")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(_ticket(rec, "c1")))
    ctx.engine = build_engine(settings, _pack(1))
    _ticket(rec, "c2")  # written by the other owner
    await score_events(batch_of(_ticket(rec, "c3")))
    await score_events(batch_of(_ticket(rec, "c4")))
    assert {a["customer_id"]: a["pack_version"] for a in _sent(fake, "ticket_opened_ack")} == {
        "c1": 0, "c3": 1, "c4": 1}


async def test_another_partition_of_the_failed_batch_is_not_pinned(
    score_events, ctx, fake, settings, rec
):
    ok = rec(TOPICS.tickets, 1, int(T0 * 1000), customer="d1", event_id="d1-t",
             ticket_id="D1", priority="urgent")
    failing = _ticket(rec, "c1")
    fake.fail_next[0] = RuntimeError("timed out")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(failing, ok))
    ctx.engine = build_engine(settings, _pack(1))
    later = rec(TOPICS.tickets, 1, int(T0 * 1000), customer="d2", event_id="d2-t",
                ticket_id="D2", priority="urgent")
    await score_events(batch_of(failing, ok, later))  # partition 1's first record again
    acks = _sent(fake, "ticket_opened_ack")
    _one_variant_per_id(acks)
    assert {a["customer_id"]: a["pack_version"] for a in acks} == {
        "c1": 0, "d1": 0, "d2": 1}


async def test_a_retried_batch_indexes_its_dues_under_the_running_pack(
    score_events, ctx, writer, fake, locks, clock, settings, rec
):
    """The re-index for the new version finished before the retry: the retried state must
    not keep the old pack's SLA due (4 h), or its breach would come 3 h late."""
    await score_events(batch_of(rec(TOPICS.logins, 0, int(T0 * 1000), customer="c1",
                                    event_id="l")))
    ticket = _ticket(rec, "c1")
    fake.fail_next[0] = RuntimeError("timed out")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(ticket))
    ctx.engine = build_engine(settings, _pack(1, sla_urgent=1))
    reindex = Reindex(ctx, writer, locks)
    while await reindex.step([0]):
        pass
    await score_events(batch_of(ticket))
    state = fake.state(0, "c1")
    assert (state.next_due, state.due_pack) == (T0 + HOUR, ctx.engine.pack.fingerprint)
    assert fake.index(0) == [due_index.due_key(T0 + HOUR, b"c1")]
    assert ctx.metrics.timers_pending[0] == 1
    clock.advance_to(T0 + 2 * HOUR)
    await FireTimers(ctx, writer, locks, clock, limit=100).tick([0])
    [breach] = _sent(fake, "ticket_sla_breach")
    assert (breach["pack_version"], breach["created_at"]) == (1, "2024-03-01T13:00:00Z")
    [ack] = {a["action_id"]: a for a in _sent(fake, "ticket_opened_ack")}.values()
    assert ack["pack_version"] == 0


async def test_a_failed_batch_holds_its_partitions_tick_until_it_is_written(
    score_events, ctx, writer, fake, locks, clock, settings, rec
):
    """The failed batch fired c1's SLA breach (due before its event) under the old pack; a
    tick under the new pack before the retry would send the same id with another payload.
    The watermark is the worker's for a lagging input: its newest applied record time."""
    tickets = TP(TOPICS.tickets, 0)

    async def watermark(partition: int) -> float:
        return score_events.applied_until.get(tickets, -math.inf)

    timers = FireTimers(ctx, writer, locks, clock, limit=100, watermark=watermark)
    await score_events(batch_of(_ticket(rec, "c1")))  # SLA due at T0 + 4 h
    later = T0 + 5 * HOUR
    await score_events(batch_of(_ticket(rec, "c2", at=later)))
    clock.advance_to(later + 60)
    failed = _ticket(rec, "c1", at=later, ticket="second")
    fake.fail_next[0] = RuntimeError("timed out")
    with pytest.raises(RuntimeError):
        await score_events(batch_of(failed))
    assert [a["pack_version"] for a in _sent(fake, "ticket_sla_breach")] == [0]
    ctx.engine = build_engine(settings, _pack(1))
    assert await timers.tick([0]) == 0  # held: the failed batch is not written yet
    await score_events(batch_of(failed))
    await timers.tick([0])
    breaches = _sent(fake, "ticket_sla_breach")
    _one_variant_per_id(breaches)
    assert [(a["customer_id"], a["pack_version"]) for a in breaches] == [("c1", 0)] * 2
    assert score_events.applied_until[tickets] == later
