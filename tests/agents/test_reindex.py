"""The due index's re-index after a published pack changes a timer: chunked, resumable
from its cursor, done once per pack version, and stale entries never fire."""

from __future__ import annotations

import orjson
import pytest

from agents.fire_timers import FireTimers
from agents.reindex import Reindex
from churnguard import due_index
from churnguard.core.clock import HOUR
from churnguard.core.pack import build_pack
from churnguard.engine import build_engine
from tests.agents.support import T0, TOPICS, batch_of
from tests.unit.packs import default_data


def _sla_pack(urgent_hours: float, version: int):
    data = default_data()
    data["ticket_sla_hours"]["urgent"] = urgent_hours
    data["version"] = version
    return build_pack(data)


@pytest.fixture
def open_tickets(score_events, rec, clock):
    async def make(count: int, partition: int = 0) -> list[str]:
        customers = [f"c{n:03d}" for n in range(count)]
        records = [rec(TOPICS.tickets, partition, n, customer=c, event_id=f"{c}-t",
                       ticket_id="T", priority="urgent", at=T0)
                   for n, c in enumerate(customers)]
        await score_events(batch_of(*records))
        return customers

    return make


def _dues(fake, partition=0):
    return sorted(due_index.customer_of(k).decode() for k in fake.index(partition)), {
        int.from_bytes(k[len(due_index.PREFIX):len(due_index.PREFIX) + 8], "big") / 1000
        for k in fake.index(partition)}


async def test_a_new_sla_moves_every_entry_in_chunks_and_is_done_once(
    open_tickets, ctx, writer, fake, locks, settings
):
    customers = await open_tickets(25)
    assert _dues(fake) == (customers, {T0 + 4 * HOUR})
    reindex = Reindex(ctx, writer, locks, chunk=10)
    # The shipped pack without a cursor (indexed by an earlier release's, maybe): scanned
    # once, nothing moves; then it is done for that pack.
    assert [await reindex.step([0]) for _ in range(4)] == [10, 10, 5, 0]
    assert _dues(fake) == (customers, {T0 + 4 * HOUR})

    ctx.engine = build_engine(settings, _sla_pack(1, version=1))
    assert [await reindex.step([0]) for _ in range(3)] == [10, 10, 5]
    assert _dues(fake) == (customers, {T0 + HOUR})
    cursor = orjson.loads(fake.data[0][due_index.REINDEX_CURSOR])
    assert cursor == {"pack": ctx.engine.pack.fingerprint, "version": 1,
                      "after": b"c024".hex(), "done": True}
    for customer in customers:
        assert fake.state(0, customer).next_due == T0 + HOUR
    # Done for version 1: no more scans, even by a new Reindex (a restart) reading the cursor.
    scans = len(fake.scans)
    assert await reindex.step([0]) == 0
    assert await Reindex(ctx, writer, locks, chunk=10).step([0]) == 0
    assert len(fake.scans) == scans


async def test_a_restart_resumes_after_the_cursor(open_tickets, ctx, writer, fake, locks,
                                                  settings):
    customers = await open_tickets(25)
    ctx.engine = build_engine(settings, _sla_pack(2, version=1))
    assert await Reindex(ctx, writer, locks, chunk=10).step([0]) == 10
    moved_once = [c for c in customers if fake.state(0, c).next_due == T0 + 2 * HOUR]
    assert moved_once == customers[:10]
    resumed = Reindex(ctx, writer, locks, chunk=10)  # a new worker after a crash
    assert [await resumed.step([0]) for _ in range(2)] == [10, 5]
    first_scan_of_resume = [s for s in fake.scans if s[1] != due_index.PREFIX][1]
    assert first_scan_of_resume[1] == b"c009\x00"
    assert _dues(fake) == (customers, {T0 + 2 * HOUR})


async def test_a_stale_entry_never_fires_under_the_old_terms(open_tickets, ctx, writer, fake,
                                                             locks, clock, settings):
    """SLA 4 h → 8 h: before the re-index gets there, the old entry at 4 h comes due; the
    tick evaluates the running pack, fires nothing and moves the entry to 8 h."""
    [customer] = await open_tickets(1)
    ctx.engine = build_engine(settings, _sla_pack(8, version=1))
    timers = FireTimers(ctx, writer, locks, clock, limit=100)
    clock.advance_to(T0 + 4 * HOUR)
    fake.writes.clear()
    assert await timers.tick([0]) == 1
    assert [o for call in fake.writes for o in call.outputs] == []
    assert _dues(fake) == ([customer], {T0 + 8 * HOUR})
    clock.advance_to(T0 + 8 * HOUR)
    assert await timers.tick([0]) == 1
    [breach] = [orjson.loads(o.value) for call in fake.writes for o in call.outputs
                if o.topic == TOPICS.tasks]
    assert breach["payload"]["details"]["sla_hours"] == 8.0
    assert breach["pack_version"] == 1


def test_the_reindex_benchmark_runs_at_a_tiny_size(monkeypatch, capsys):
    import sys

    from benchmarks import reindex as bench

    monkeypatch.setattr(sys, "argv", ["reindex", "--customers", "40", "--chunk", "16"])
    bench.main()
    assert "re-indexed 40 customers (40 moved)" in capsys.readouterr().out
