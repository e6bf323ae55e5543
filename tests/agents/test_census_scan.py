"""The census through the agents (agents/census.py): the record travels in the same write as
the states it counts (batches and timer ticks), a restarted worker reads it without a scan,
a store without one is counted in chunks by the background scan — with batches in between
neither lost nor counted twice — and what the worker publishes per owned partition."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.census import CensusScan
from agents.fire_timers import FireTimers
from agents.locks import PartitionLocks
from agents.score_events import ScoreEvents
from churnguard import due_index
from churnguard.batch import BatchContext
from churnguard.census import Census, standing_of_raw
from churnguard.clocks import ManualClock
from churnguard.core.clock import DAY
from churnguard.engine import build_engine
from churnguard.metrics import Metrics
from streams.settings import Settings
from tests.agents.support import T0, TOPICS, FakeWriter, Records, batch_of

Counts = tuple[dict[str, int], dict[str, int]]


def recount(fake: FakeWriter, partition: int = 0) -> Counts:
    """Bands and segments of every stored state: what the census must say."""
    census = Census(done=True)
    for key, raw in fake.data[partition].items():
        if due_index.FIRST_CUSTOMER <= key < due_index.AFTER_CUSTOMERS:
            census.add(standing_of_raw(raw))
    return census.bands(), census.segments()


def record(fake: FakeWriter, partition: int = 0) -> Census:
    return Census.from_bytes(fake.data[partition][due_index.CENSUS])


def counts(census: Census) -> Counts:
    return census.bands(), census.segments()


@pytest.fixture
def scan(writer, locks, metrics) -> CensusScan:
    return CensusScan(writer, locks, metrics, chunk=10)


def _purchase(rec: Records, customer: str, n: int, partition: int = 0, at: float = T0):
    return rec(TOPICS.purchases, partition, n, customer=customer, event_id=f"{customer}-p{n}",
               order_id=f"o{n}", at=at)


def _logins(rec: Records, customer: str, count: int, first: int, partition: int = 0):
    return [rec(TOPICS.logins, partition, first + n, customer=customer,
                event_id=f"{customer}-l{first + n}") for n in range(count)]


async def test_an_empty_partition_starts_done_and_new_customers_count_in_their_write(
    score_events, scan, fake, metrics, rec
):
    assert await scan.step([0]) == 0
    assert record(fake).done
    assert counts(record(fake)) == ({"good": 0, "average": 0, "poor": 0}, {})
    await score_events(batch_of(_purchase(rec, "a", 1), *_logins(rec, "a", 7, 2),
                                _purchase(rec, "b", 20),
                                *_logins(rec, "c", 1, 30)))
    write = fake.writes[-1]
    assert {b"a", b"b", b"c", due_index.CENSUS} <= set(write.items)  # one write, changelog too
    assert counts(record(fake)) == recount(fake) == (
        {"good": 1, "average": 1, "poor": 1}, {"new": 2, "prospect": 1})
    assert counts(metrics.census[0]) == recount(fake)
    # A batch that moves nothing (a redelivery) writes no census record.
    await score_events(batch_of(_purchase(rec, "b", 20)))
    assert due_index.CENSUS not in fake.writes[-1].items


async def test_band_changes_by_events_and_by_timer_ticks(
    score_events, scan, fake, metrics, rec, clock, timers_factory
):
    await scan.step([0])
    await score_events(batch_of(_purchase(rec, "a", 1), _purchase(rec, "b", 2),
                                *_logins(rec, "c", 1, 3)))
    assert counts(record(fake)) == ({"good": 0, "average": 2, "poor": 1},
                                    {"new": 2, "prospect": 1})
    # By an event: c's first purchase, a's logins (average -> good).
    await score_events(batch_of(_purchase(rec, "c", 10), *_logins(rec, "a", 7, 11)))
    assert counts(record(fake)) == recount(fake) == (
        {"good": 1, "average": 2, "poor": 0}, {"new": 3})
    # By time alone: b's score decays below 60 (health_winback's threshold is its due).
    timers: FireTimers = timers_factory()
    clock.advance_to(T0 + 22 * DAY)
    assert await timers.tick([0]) >= 1
    assert due_index.CENSUS in fake.writes[-1].items
    assert counts(record(fake)) == recount(fake)
    assert record(fake).bands()["poor"] >= 1
    assert counts(metrics.census[0]) == recount(fake)


async def test_a_restarted_worker_reads_the_census_without_a_scan(
    score_events, scan, fake, writer, locks, rec
):
    await scan.step([0])
    await score_events(batch_of(*[_purchase(rec, f"c{n}", n) for n in range(5)]))
    # A new worker on the restored store (the record came with the changelog).
    restarted = Metrics()
    scans = len(fake.scans)
    assert await CensusScan(writer, locks, restarted, chunk=10).step([0]) == 0
    assert len(fake.scans) == scans
    assert counts(restarted.census[0]) == recount(fake) == (
        {"good": 0, "average": 5, "poor": 0}, {"new": 5})


async def _legacy_store(score_events: ScoreEvents, rec: Records, fake: FakeWriter,
                        customers: int) -> list[str]:
    """Customers written with no census record (as before the census existed: without a
    scan, a batch has nothing it may count)."""
    names = [f"c{n:03d}" for n in range(customers)]
    await score_events(batch_of(*[_purchase(rec, c, n) for n, c in enumerate(names)]))
    assert due_index.CENSUS not in fake.data[0]
    return names


async def test_a_store_without_a_census_is_counted_in_chunks_with_batches_in_between(
    score_events, scan, fake, metrics, rec, writer, locks
):
    names = await _legacy_store(score_events, rec, fake, 25)
    assert await scan.step([0]) == 10
    cursor = record(fake)
    assert (cursor.after, cursor.done, sum(cursor.band.values())) == (b"c009", False, 10)
    assert 0 not in {p for p, c in metrics.census.items() if c.done}
    # Between chunks: a counted customer moves (c003: average -> good), one ahead of the
    # cursor moves (c015), a new one behind (c005x) and one ahead (d) appear.
    await score_events(batch_of(*_logins(rec, "c003", 7, 100), *_logins(rec, "c015", 7, 200),
                                _purchase(rec, "c005x", 300), _purchase(rec, "d", 301)))
    behind = record(fake)
    assert behind.bands() == {"good": 1, "average": 10, "poor": 0}  # c003 moved, c005x new
    # A restart between chunks resumes after the cursor.
    resumed = CensusScan(writer, locks, metrics, chunk=10)
    assert await resumed.step([0]) == 10  # c010..c019: c015 counted as it is now (good)
    assert fake.scans[-1][1] == b"c009\x00"
    assert await resumed.step([0]) == 6  # c020..c024 and d: fewer than a chunk, done
    done = record(fake)
    assert done.done
    assert counts(done) == recount(fake) == (
        {"good": 2, "average": 25, "poor": 0}, {"new": 27})
    assert len(names) + 2 == sum(done.band.values())
    assert metrics.census[0].done
    assert counts(metrics.census[0]) == recount(fake)
    # Done: the scan reads the record and counts nothing more.
    scans = len(fake.scans)
    assert await resumed.step([0]) == 0
    assert len(fake.scans) == scans


async def test_a_failed_write_counts_nothing_and_its_retry_counts_once(
    score_events, scan, fake, metrics, rec
):
    await scan.step([0])
    before = counts(record(fake))
    batch = batch_of(_purchase(rec, "a", 1), *_logins(rec, "b", 1, 2))
    fake.fail_next[0] = RuntimeError("changelog produce failed")
    with pytest.raises(RuntimeError):
        await score_events(batch)
    assert counts(record(fake)) == counts(metrics.census[0]) == before
    await score_events(batch)  # read again from the committed offsets
    assert counts(record(fake)) == recount(fake) == (
        {"good": 0, "average": 1, "poor": 1}, {"new": 1, "prospect": 1})
    assert counts(metrics.census[0]) == recount(fake)


async def test_only_owned_partitions_are_published(score_events, scan, fake, metrics, rec):
    await scan.step([0, 1])
    await scan.step([0, 1])
    assert sorted(metrics.census) == [0, 1]
    await score_events(batch_of(_purchase(rec, "x", 1, partition=1)))
    assert await scan.step([1]) == 0
    assert sorted(metrics.census) == [1]
    assert counts(metrics.census[1]) == recount(fake, 1)
    scan.forget()  # revoked: read again once owned
    assert metrics.census == {}
    await scan.step([1])
    assert counts(metrics.census[1]) == recount(fake, 1)


# --- any interleaving ----------------------------------------------------------------------------

_CUSTOMERS = [f"k{n:02d}" for n in range(12)]
_step = st.one_of(
    st.just(("scan",)),
    st.tuples(st.just("purchase"), st.sampled_from(_CUSTOMERS)),
    st.tuples(st.just("logins"), st.sampled_from(_CUSTOMERS), st.integers(1, 8)),
    st.tuples(st.just("tick"), st.integers(1, 40)),
)


@given(legacy=st.lists(st.sampled_from(_CUSTOMERS), unique=True, max_size=12),
       steps=st.lists(_step, max_size=25), chunk=st.integers(1, 5))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_interleaving_of_scan_batches_and_ticks_ends_at_the_recount(
    legacy: list[str], steps: list[tuple[object, ...]], chunk: int
):
    """A store written before the census (`legacy` customers), then the scan's chunks,
    event batches and timer ticks in any order: once the scan is done, the record (and what
    the worker publishes) is the recount of the states."""
    asyncio.run(_interleave(legacy, steps, chunk))


async def _interleave(legacy: list[str], steps: list[tuple[object, ...]], chunk: int) -> None:
    settings_ = Settings()
    metrics = Metrics()
    ctx = BatchContext.create(build_engine(settings_), settings_.topics, metrics, 24)
    fake, locks, clock, rec = FakeWriter(), PartitionLocks(), ManualClock(T0), Records(TOPICS)
    events = ScoreEvents(ctx, fake, locks, clock)  # type: ignore[arg-type]
    timers = FireTimers(ctx, fake, locks, clock, limit=100)  # type: ignore[arg-type]
    scan = CensusScan(fake, locks, metrics, chunk=chunk)  # type: ignore[arg-type]
    n = 0
    if legacy:
        await events(batch_of(*[_purchase(rec, c, i) for i, c in enumerate(legacy)]))
    for step in steps:
        n += 10
        match step:
            case ("scan",):
                await scan.step([0])
            case ("purchase", customer):
                await events(batch_of(_purchase(rec, str(customer), n, at=clock.now())))
            case ("logins", customer, count):
                assert isinstance(count, int)
                await events(batch_of(*_logins(rec, str(customer), count, n)))
            case ("tick", days):
                assert isinstance(days, int)
                clock.advance_to(clock.now() + days * DAY)
                await timers.tick([0])
    while not (0 in metrics.census and metrics.census[0].done):
        await scan.step([0])
    assert counts(record(fake)) == recount(fake)
    assert counts(metrics.census[0]) == recount(fake)
