"""The census (churnguard/census.py): its record, the cursor rule while a baseline scan is
unfinished, the per-customer changes process_partition / process_due report, and what the
worker's /metrics shows of it."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from churnguard import due_index
from churnguard.batch import BatchContext, process_due, process_partition, reindex
from churnguard.census import Census, change, standing, standing_of_raw, totals
from churnguard.core.clock import DAY
from churnguard.core.scoring import BANDS, band_of
from churnguard.core.state import CustomerState
from churnguard.metrics import Metrics
from streams.metrics_export import WorkerCollector, WorkerView, registry_for
from tests.unit.memory_store import MemoryStore
from tests.unit.raw_records import TOPICS, Record


def test_band_of_is_shared_with_the_backtest():
    from churnguard import backtest

    assert backtest.band_of is band_of
    assert backtest.BANDS == BANDS == ("good", "average", "poor", "unscored")
    assert [band_of(s) for s in (80.0, 79.99, 60.0, 59.99, None)] == [
        "good", "average", "average", "poor", "unscored"]


# --- the record -------------------------------------------------------------------------------

def test_the_record_is_the_documented_json_and_reads_back():
    census = Census(Counter({"good": 2, "poor": 1}), Counter({"loyal": 2, "new": 1, "gone": 0}),
                    after=b"c7", done=False)
    raw = census.to_bytes()
    assert orjson.loads(raw) == {
        "band": {"good": 2, "average": 0, "poor": 1},  # every scored band, zero or not
        "segment": {"loyal": 2, "new": 1},  # only segments with customers
        "after": b"c7".hex(),
        "done": False,
    }
    again = Census.from_bytes(raw)
    assert (again.bands(), again.segments(), again.after, again.done) == (
        census.bands(), census.segments(), b"c7", False)
    assert orjson.loads(Census(done=True).to_bytes()) == {
        "band": {"good": 0, "average": 0, "poor": 0}, "segment": {}, "after": None,
        "done": True}


def test_a_customer_never_scored_counts_as_unscored():
    census = Census(done=True)
    unscored = standing(CustomerState(customer_id="x"))
    assert unscored == ("unscored", "unscored")
    census.add(unscored)
    assert census.bands() == {"good": 0, "average": 0, "poor": 0, "unscored": 1}
    assert census.segments() == {"unscored": 1}
    assert standing_of_raw(CustomerState(customer_id="x", score=61.0,
                                         segment="loyal").to_bytes()) == ("average", "loyal")


def test_changes_apply_only_behind_the_cursor_until_done():
    census = Census(Counter({"poor": 2}), Counter({"new": 2}), after=b"c5", done=False)
    applied = census.apply({
        b"c1": (("poor", "new"), ("good", "new")),  # counted by the scan: moves
        b"c5": (None, ("average", "loyal")),  # the cursor itself: counted
        b"c6": (("poor", "new"), ("good", "loyal")),  # ahead: the scan counts its state later
    })
    assert applied
    assert (census.bands(), census.segments()) == (
        {"good": 1, "average": 1, "poor": 1}, {"new": 2, "loyal": 1})
    assert not Census(after=None).apply({b"\x01": (None, ("good", "new"))})
    done = Census(done=True)
    assert done.apply({b"\xfe": (None, ("good", "new"))})
    assert done.bands()["good"] == 1


def test_change_is_none_when_the_standing_stays():
    assert change(("good", "new"), ("good", "new")) is None
    assert change(None, ("good", "new")) == (None, ("good", "new"))
    assert change(("good", "new"), None) == (("good", "new"), None)


def test_totals_count_only_done_partitions_and_say_which_are_pending():
    censuses = {0: Census(Counter({"good": 2}), Counter({"new": 2}), done=True),
                1: Census(Counter({"poor": 5}), Counter({"new": 5}), after=b"x", done=False),
                2: Census(Counter({"good": 1, "poor": 1}), Counter({"loyal": 2}), done=True),
                9: Census(Counter({"good": 100}), done=True)}  # not owned
    result = totals(censuses, [0, 1, 2, 3])
    assert (result.band, result.segment) == (
        {"good": 3, "average": 0, "poor": 1}, {"loyal": 2, "new": 2})
    assert (result.counted, result.pending, result.complete) == ((0, 2), (1, 3), False)
    assert totals(censuses, [0, 2]).complete


@st.composite
def _history(draw: st.DrawFn) -> tuple[dict[bytes, tuple[str, str]], list[object], int]:
    """A store's customers, then a scan in chunks interleaved with writes ("scan" steps, or
    a dict of customer -> new standing, None deleting it), and the chunk size."""
    keys = st.sampled_from([f"c{n:02d}".encode() for n in range(30)])
    standings = st.tuples(st.sampled_from(BANDS[:3]), st.sampled_from(["new", "loyal", "lost"]))
    store = draw(st.dictionaries(keys, standings, max_size=30))
    writes = st.dictionaries(keys, st.none() | standings, min_size=1, max_size=5)
    steps = draw(st.lists(st.just("scan") | writes, max_size=40))
    return store, steps, draw(st.integers(1, 7))


@given(_history())
@settings(max_examples=300, deadline=None)
def test_a_scan_interleaved_with_writes_ends_at_the_recount(
    history: tuple[dict[bytes, tuple[str, str]], list[object], int],
):
    """The cursor rule: whatever the interleaving, once the scan is done the census equals
    a recount of the store — no change lost, none counted twice."""
    store, steps, chunk = history
    census = Census()

    def scan_chunk() -> None:
        ahead = sorted(k for k in store if census.after is None or k > census.after)[:chunk]
        for key in ahead:
            census.add(store[key])
        if ahead:
            census.after = ahead[-1]
        census.done = len(ahead) < chunk

    for step in [*steps, *["scan"] * (len(store) // chunk + 40)]:
        if step == "scan":
            if not census.done:
                scan_chunk()
            continue
        assert isinstance(step, dict)
        changes = {}
        for key, new in step.items():
            moved = change(store.get(key), new)
            if moved is not None:
                changes[key] = moved
            if new is None:
                store.pop(key, None)
            else:
                store[key] = new
        census.apply(changes)
    assert census.done
    assert census.band + Counter() == Counter(band for band, _ in store.values())
    assert census.segment + Counter() == Counter(segment for _, segment in store.values())
    assert all(n >= 0 for n in [*census.band.values(), *census.segment.values()])


# --- the changes the batch shell reports -------------------------------------------------------

@pytest.fixture
def ctx(engine):
    return BatchContext.create(engine, TOPICS, Metrics(), 24)


class Store(MemoryStore):
    def standing(self, key: bytes) -> tuple[str, str]:
        return standing_of_raw(self.data[key])


def _events(raw_factory, *specs: tuple[str, str, dict[str, object]], start: int = 0):
    records = []
    for offset, (topic, customer, fields) in enumerate(specs, start):
        type_ = TOPICS.inputs()[topic]
        data = orjson.loads(raw_factory(type_, customer_id=customer, **fields))
        del data["type"]
        records.append(Record(topic, 0, offset, customer.encode(), orjson.dumps(data)))
    return records


def test_new_customers_and_band_changes_by_events(raw_factory, t0, ctx):
    store = Store()
    first = _events(
        raw_factory,
        (TOPICS.purchases, "a", {"event_id": "a-p"}),
        *[(TOPICS.logins, "a", {"event_id": f"a-l{n}"}) for n in range(7)],
        (TOPICS.purchases, "b", {"event_id": "b-p"}),
        (TOPICS.logins, "c", {"event_id": "c-l"}),
    )
    result = process_partition(first, store.load, ctx, now=t0)
    store.write(result.writes)
    # New customers: nothing before, their written standing after (a: several logins).
    assert result.census == {
        b"a": (None, ("good", "new")),
        b"b": (None, ("average", "new")),
        b"c": (None, ("poor", "prospect")),
    }
    assert {k: store.standing(k) for k in (b"a", b"b", b"c")} == {
        k: after for k, (_, after) in result.census.items()}

    # c's first purchase: poor prospect -> average new; b logs in once more (64 -> 67,
    # still average, same segment): no change for b.
    second = _events(raw_factory, (TOPICS.purchases, "c", {"event_id": "c-p"}),
                     (TOPICS.logins, "b", {"event_id": "b-l"}), start=20)
    result = process_partition(second, store.load, ctx, now=t0)
    store.write(result.writes)
    assert result.census == {b"c": (("poor", "prospect"), ("average", "new"))}
    assert store.standing(b"c") == ("average", "new")

    # A redelivered batch changes nothing.
    assert process_partition(second, store.load, ctx, now=t0).census == {}


def test_a_timer_tick_reports_the_decayed_band(raw_factory, t0, ctx):
    store = Store()
    result = process_partition(_events(raw_factory, (TOPICS.purchases, "b", {})), store.load,
                               ctx, now=t0)
    store.write(result.writes)
    assert store.standing(b"b") == ("average", "new")
    entries = [k for k in store.data if k.startswith(due_index.PREFIX)]
    # Onboarding tips after 7 days: a firing, the score as it was (recency full): no change.
    week = process_due(entries, store.load, ctx, until=t0 + 7 * DAY, noticed_at=t0 + 7 * DAY)
    store.write(week.writes)
    assert week.writes
    assert week.census == {}
    # The score's own decay below 60 (health_winback's threshold, due in closed form).
    entries = [k for k in store.data if k.startswith(due_index.PREFIX)]
    later = process_due(entries, store.load, ctx, until=t0 + 22 * DAY,
                        noticed_at=t0 + 22 * DAY)
    store.write(later.writes)
    assert later.census == {b"b": (("average", "new"), ("poor", "new"))}
    assert store.standing(b"b") == ("poor", "new")


def test_a_reindex_changes_no_census(raw_factory, t0, ctx):
    store = Store()
    store.write(process_partition(_events(raw_factory, (TOPICS.purchases, "b", {})),
                                  store.load, ctx, now=t0).writes)
    result, _ = reindex([b"b"], store.load, ctx)
    assert result.census == {}


# --- /metrics ---------------------------------------------------------------------------------

def _samples(view: WorkerView) -> dict[str, list[tuple[dict[str, str], float]]]:
    collector = WorkerCollector(Metrics(), lambda: view, version="0", contract_version="1")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(
            generate_latest(registry_for(collector)).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_the_band_gauge_and_the_pending_partitions():
    view = WorkerView(offsets=[], timers_pending={}, recovery_remaining={}, store_bytes={},
                      customers={}, customers_by_band={"good": 3, "average": 0, "poor": 1})
    found = _samples(view)
    assert found["churnguard_customers_by_band"] == [
        ({"band": "average"}, 0.0), ({"band": "good"}, 3.0), ({"band": "poor"}, 1.0)]
    assert found["churnguard_census_partitions_pending"] == [({}, 0.0)]
    pending = _samples(WorkerView(offsets=[], timers_pending={}, recovery_remaining={},
                                  store_bytes={}, customers={}, customers_by_band={},
                                  census_pending=2))
    assert "churnguard_customers_by_band" not in pending
    assert pending["churnguard_census_partitions_pending"] == [({}, 2.0)]
